#include "crypto/secure_transport.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

namespace pohmelfs::crypto {
namespace {

using transport::ConnectionPtr;
using transport::Handler;
using transport::Message;

constexpr size_t kMaxTagBytes = 32;  // hmac-sha256

// Segments of a sealed payload of total bytes (body || tags) with tag_bytes per segment, or 0
// when no body length fits.
size_t SegmentsOfSealed(size_t total, size_t tag_bytes) {
  const size_t per = ChannelCipher::kSegmentBytes + tag_bytes;
  size_t n = std::max<size_t>(1, (total + per - 1) / per);
  if (total < n * tag_bytes) return 0;
  return ChannelCipher::SegmentCount(total - n * tag_bytes) == n ? n : 0;
}

}  // namespace

uint32_t SealOverhead(uint32_t max_payload) {
  return static_cast<uint32_t>(ChannelCipher::SegmentCount(max_payload) * kMaxTagBytes);
}

SecureConnection::SecureConnection(ConnectionPtr inner, CryptoPool* pool, uint32_t max_payload)
    : inner_(std::move(inner)), pool_(pool), max_payload_(max_payload) {}

void SecureConnection::SetMaxPayload(uint32_t bytes) {
  std::lock_guard lk(recv_mu_);
  max_payload_ = bytes;
  inner_->SetMaxPayload(recv_ ? bytes + SealOverhead(bytes) : bytes);
}

void SecureConnection::ArmReceive(ChannelCipher cipher) {
  std::lock_guard lk(recv_mu_);
  recv_.emplace(std::move(cipher));
  recv_seq_ = 0;
  inner_->SetMaxPayload(max_payload_ + SealOverhead(max_payload_));
}

void SecureConnection::StartSending(ChannelCipher cipher) {
  std::lock_guard lk(send_mu_);
  send_.emplace(std::move(cipher));
  send_seq_ = 0;
  sealing_ = true;
}

uint32_t SecureConnection::send_mode() const {
  std::lock_guard lk(send_mu_);
  return send_ ? send_->mode() : uint32_t{POHMELFS_CRYPTO_NONE};
}

uint32_t SecureConnection::receive_mode() const {
  std::lock_guard lk(recv_mu_);
  return recv_ ? recv_->mode() : uint32_t{POHMELFS_CRYPTO_NONE};
}

Result<SealedParts> SealMessage(const ChannelCipher& cipher, uint64_t seq, const proto::Header& hdr,
                                std::span<const iovec> payload, CryptoPool* pool) {
  size_t plain_len = 0;
  for (const auto& v : payload) plain_len += v.iov_len;
  const size_t tags_len = cipher.TagsSize(plain_len);
  if (plain_len + tags_len > UINT32_MAX) return Status::Error(EMSGSIZE, "payload too large");
  SealedParts out;
  out.hdr = hdr;
  out.hdr.flags |= POHMELFS_FLAG_SEALED;
  out.hdr.length = static_cast<uint32_t>(plain_len + tags_len);
  pohmelfs_hdr wire;
  proto::EncodeHeader(out.hdr, &wire);
  std::span<const uint8_t> aad(reinterpret_cast<const uint8_t*>(&wire), sizeof(wire));
  out.tags.resize(tags_len);
  out.body_len = cipher.Encrypts() ? plain_len : 0;
  if (out.body_len) out.body = std::make_unique_for_overwrite<uint8_t[]>(out.body_len);
  POHMELFS_RETURN_IF_ERROR(
      cipher.Seal(seq, aad, payload, {out.body.get(), out.body_len}, out.tags, pool));
  return out;
}

Status OpenSealed(const ChannelCipher& cipher, uint64_t seq, uint32_t max_payload,
                  transport::Message* m, CryptoPool* pool) {
  const size_t total = m->payload.size();
  const size_t n = SegmentsOfSealed(total, cipher.TagBytes());
  if (n == 0) return Status::Error(EBADMSG, "sealed message of an impossible length");
  const size_t body_len = total - n * cipher.TagBytes();
  if (body_len > max_payload) return Status::Error(EMSGSIZE, "sealed payload too large");
  pohmelfs_hdr wire;
  proto::EncodeHeader(m->hdr, &wire);
  std::span<const uint8_t> aad(reinterpret_cast<const uint8_t*>(&wire), sizeof(wire));
  std::span<uint8_t> body(m->payload.data(), body_len);
  std::span<const uint8_t> tags(m->payload.data() + body_len, total - body_len);
  POHMELFS_RETURN_IF_ERROR(cipher.Open(seq, aad, body, tags, pool));
  m->payload.resize(body_len);
  m->hdr.flags &= ~POHMELFS_FLAG_SEALED;
  m->hdr.length = static_cast<uint32_t>(body_len);
  return Status::Ok();
}

Status SecureConnection::Send(const proto::Header& hdr, std::span<const iovec> payload) {
  if (!sealing_.load(std::memory_order_acquire)) return inner_->Send(hdr, payload);
  std::lock_guard lk(send_mu_);
  auto sealed = SealMessage(*send_, send_seq_, hdr, payload, pool_);
  if (!sealed.ok()) {
    Close(sealed.status());
    return sealed.status();
  }
  send_seq_++;
  std::vector<iovec> out;
  if (send_->Encrypts()) {
    out.push_back(iovec{sealed->body.get(), sealed->body_len});
  } else {
    out.assign(payload.begin(), payload.end());
  }
  out.push_back(iovec{sealed->tags.data(), sealed->tags.size()});
  return inner_->Send(sealed->hdr, out);
}

Status SecureConnection::Open(Message& m) {
  std::lock_guard lk(recv_mu_);
  if (!(m.hdr.flags & POHMELFS_FLAG_SEALED)) {
    if (require_sealed_) return Status::Error(EBADMSG, "plain message on a protected channel");
    return Status::Ok();
  }
  if (!recv_) return Status::Error(EBADMSG, "sealed message before the handshake");
  POHMELFS_RETURN_IF_ERROR(OpenSealed(*recv_, recv_seq_, max_payload_, &m, pool_));
  recv_seq_++;
  require_sealed_ = true;  // no way back to plain messages
  return Status::Ok();
}

namespace {

// Wraps a backend: every connection it makes or accepts is handed up as a SecureConnection,
// which lives as long as the backend's connection (until its on_close).
class SecureTransport final : public transport::Transport {
 public:
  SecureTransport(std::unique_ptr<transport::Transport> inner, CryptoPool* pool,
                  uint32_t max_payload)
      : inner_(std::move(inner)), pool_(pool), max_payload_(max_payload) {}
  ~SecureTransport() override { inner_->Shutdown(); }

  Result<transport::Uri> Listen(const transport::Uri& uri, Handler h) override {
    return inner_->Listen(uri, Wrap(h));
  }

  Result<ConnectionPtr> Connect(const transport::Uri& uri, Handler h,
                                std::chrono::milliseconds timeout) override {
    auto c = inner_->Connect(uri, Wrap(h), timeout);
    if (!c.ok()) return c.status();
    return ConnectionPtr(SecureOf(*c));
  }

  void Shutdown() override { inner_->Shutdown(); }

 private:
  // Kept in the backend connection's context: the wrapper, until the connection closes.
  struct Link {
    std::shared_ptr<SecureConnection> secure;
    bool closed = false;
  };

  std::shared_ptr<SecureConnection> SecureOf(const ConnectionPtr& inner) {
    std::lock_guard lk(mu_);
    auto link = std::static_pointer_cast<Link>(inner->context);
    if (!link) {
      link = std::make_shared<Link>();
      inner->context = link;
    }
    if (link->secure) return link->secure;
    auto s = std::make_shared<SecureConnection>(inner, pool_, max_payload_);
    if (!link->closed) link->secure = s;  // a closed one is not kept (nothing would free it)
    return s;
  }

  void Unlink(const ConnectionPtr& inner) {
    std::lock_guard lk(mu_);
    auto link = std::static_pointer_cast<Link>(inner->context);
    if (!link) return;
    link->closed = true;
    link->secure.reset();  // breaks the cycle inner -> link -> secure -> inner
  }

  Handler Wrap(const Handler& h) {
    Handler w;
    if (h.on_accept) {
      w.on_accept = [this, f = h.on_accept](const ConnectionPtr& inner) { f(SecureOf(inner)); };
    }
    w.on_message = [this, f = h.on_message](const ConnectionPtr& inner, Message&& m) {
      auto s = SecureOf(inner);
      if (Status st = s->Open(m); !st.ok()) {
        spdlog::warn("{}: trans {}: {}: {}; closing", inner->Peer(), m.hdr.trans,
                     proto::OpcodeName(m.hdr.opcode), st.ToString());
        inner->Close(st);
        return;
      }
      if (f) f(s, std::move(m));
    };
    w.on_close = [this, f = h.on_close](const ConnectionPtr& inner, const Status& why) {
      if (f) f(SecureOf(inner), why);
      Unlink(inner);
    };
    return w;
  }

  const std::unique_ptr<transport::Transport> inner_;
  CryptoPool* const pool_;
  const uint32_t max_payload_;
  std::mutex mu_;  // orders Link creation and unlinking
};

}  // namespace

Result<std::unique_ptr<transport::Transport>> CreateSecureTransport(
    const std::string& scheme, transport::TransportOptions options, CryptoPool* pool) {
  auto inner = transport::CreateTransport(scheme, options);
  if (!inner.ok()) return inner.status();
  return std::unique_ptr<transport::Transport>(
      std::make_unique<SecureTransport>(std::move(*inner), pool, options.max_payload));
}

}  // namespace pohmelfs::crypto
