#include "client/rpc_client.h"

#include <spdlog/spdlog.h>

#include <cstring>

#include "crypto/handshake_auth.h"
#include "crypto/secure_transport.h"

namespace pohmelfs::client {

using proto::from_le;
using proto::to_le;
using Clock = std::chrono::steady_clock;

RpcClient::RpcClient(transport::Uri uri, std::string text, const RpcOptions& o)
    : uri_(std::move(uri)), uri_text_(std::move(text)), opts_(o) {}

Result<std::unique_ptr<RpcClient>> RpcClient::Create(const std::string& text, const RpcOptions& o) {
  auto uri = transport::ParseUri(text);
  if (!uri.ok()) return uri.status();
  if (o.crypto_mode != POHMELFS_CRYPTO_NONE && crypto::ModeNeedsKey(o.crypto_mode) && !o.key)
    return Status::Error(EINVAL, std::string("crypto=") + crypto::CryptoModeName(o.crypto_mode) +
                                     " needs a key (-o key=FILE)");
  auto t = crypto::CreateSecureTransport(uri->scheme, {.loop_threads = 1}, o.crypto_pool);
  if (!t.ok()) return t.status();
  std::unique_ptr<RpcClient> c(new RpcClient(*uri, text, o));
  c->transport_ = std::move(*t);
  return c;
}

Result<std::unique_ptr<RpcClient>> RpcClient::Connect(const std::string& text,
                                                      const RpcOptions& o) {
  auto c = Create(text, o);
  if (!c.ok()) return c.status();
  POHMELFS_RETURN_IF_ERROR((*c)->TryConnect());
  return c;
}

RpcClient::~RpcClient() {
  {
    std::lock_guard lk(mu_);
    shutting_down_ = true;
  }
  cv_.notify_all();
  transport_->Shutdown();
}

Status RpcClient::TryConnect() {
  return EnsureConnected(true).status();
}

void RpcClient::Disconnect(const Status& why) {
  transport::ConnectionPtr c;
  {
    std::lock_guard lk(mu_);
    c = conn_;
  }
  if (c) c->Close(why);
}

bool RpcClient::connected() {
  std::lock_guard lk(mu_);
  return conn_ && conn_->IsOpen();
}

uint32_t RpcClient::credits() {
  std::lock_guard lk(mu_);
  return credits_;
}

proto::Oid RpcClient::root() {
  std::lock_guard lk(mu_);
  return root_;
}

proto::Oid RpcClient::server_id() {
  std::lock_guard lk(mu_);
  return server_id_;
}

transport::ConnectionPtr RpcClient::RmaConnection() {
  std::lock_guard lk(mu_);
  if (!(features_ & POHMELFS_FEAT_RMA) || !conn_ || !conn_->IsOpen() || !conn_->rma())
    return nullptr;
  return conn_;
}

uint64_t RpcClient::features() {
  std::lock_guard lk(mu_);
  return features_;
}

uint32_t RpcClient::max_payload() {
  std::lock_guard lk(mu_);
  return max_payload_;
}

uint32_t RpcClient::inflight() {
  std::lock_guard lk(mu_);
  return inflight_;
}

void RpcClient::SetOnDisconnect(std::function<void()> f) {
  on_disconnect_ = std::move(f);
}

Result<transport::ConnectionPtr> RpcClient::EnsureConnected(bool may_connect) {
  {
    std::lock_guard lk(mu_);
    if (conn_ && conn_->IsOpen()) return conn_;
    if (shutting_down_) return Status::Error(ESHUTDOWN, "client shutting down");
  }
  if (!may_connect) return Status::Error(EIO, "not connected to " + uri_text_);
  const uint64_t epoch = connect_epoch_.load();
  std::lock_guard reconnect(conn_mu_);
  {
    std::lock_guard lk(mu_);
    if (conn_ && conn_->IsOpen()) return conn_;
    if (shutting_down_) return Status::Error(ESHUTDOWN, "client shutting down");
  }
  // Another caller tried (and failed) while this one waited for the lock: share its result
  // instead of queueing one more connect, so many callers do not multiply the wait.
  if (connect_epoch_.load() != epoch) return last_connect_error_;
  Status s = Reconnect();
  connect_epoch_++;
  if (!s.ok()) {
    last_connect_error_ = s;
    return s;
  }
  std::lock_guard lk(mu_);
  return conn_;
}

Status RpcClient::Reconnect() {
  transport::Handler h;
  h.on_message = [this](const transport::ConnectionPtr&, transport::Message&& m) {
    OnMessage(std::move(m));
  };
  h.on_close = [this](const transport::ConnectionPtr& c, const Status&) { OnClose(c.get()); };
  auto conn = transport_->Connect(uri_, h, opts_.connect_timeout);
  if (!conn.ok()) return Status::Error(EIO, conn.status().reason());
  Status s = Handshake(*conn);
  if (!s.ok()) {
    (*conn)->Close(s);
    return s;
  }
  counters_.reconnects++;
  last_receive_ = Clock::now().time_since_epoch().count();
  std::lock_guard lk(mu_);
  conn_ = *conn;
  cv_.notify_all();
  return Status::Ok();
}

Result<RpcReply> RpcClient::HandshakeCall(const transport::ConnectionPtr& conn, uint16_t opcode,
                                          std::span<const iovec> payload,
                                          const std::function<void()>& after_send) {
  uint64_t trans = next_trans_++;
  auto p = std::make_shared<Pending>();
  p->sent_on = conn.get();
  {
    std::lock_guard lk(mu_);
    pending_[trans] = p;
  }
  proto::Header h;
  h.opcode = opcode;
  h.trans = trans;
  Status s = conn->Send(h, payload);
  if (s.ok() && after_send) after_send();
  std::unique_lock lk(mu_);
  if (s.ok())
    cv_.wait_for(lk, opts_.connect_timeout, [&] { return p->done || p->sent_on == nullptr; });
  pending_.erase(trans);
  if (!s.ok()) return s;
  if (!p->done) {
    if (p->sent_on == nullptr)
      return Status::Error(ECONNRESET, uri_text_ + " closed the connection in the handshake");
    return Status::Error(ETIMEDOUT, "no handshake reply from " + uri_text_);
  }
  return std::move(p->reply);
}

namespace {

// A clear message for a refused handshake.
Status HandshakeRefused(const std::string& server, uint32_t code, bool have_key) {
  std::string why;
  switch (code) {
    case EACCES:
      why = have_key ? "refused our key (not the server's key for this client?)"
                     : "requires a key (mount with -o key=FILE)";
      break;
    case EPERM:
      why = "refused this client (not in its allow list)";
      break;
    case EPROTONOSUPPORT:
      why = "has no protocol version or channel mode in common with this client";
      break;
    default:
      why = "refused the handshake: " + std::string(std::strerror(static_cast<int>(code)));
  }
  return Status::Error(static_cast<int>(code), server + " " + why);
}

}  // namespace

Status RpcClient::Handshake(const transport::ConnectionPtr& conn) {
  const uint32_t offered =
      opts_.crypto_mode | (opts_.crypto_fail_unsupported ? 0u : uint32_t{POHMELFS_CRYPTO_NONE});
  crypto::AuthTranscript t;
  if (opts_.key) {
    auto nonce = crypto::RandomNonce();
    if (!nonce.ok()) return nonce.status();
    t.client_nonce = *nonce;
  }
  pohmelfs_hello_req q{};
  q.version_min = to_le(uint16_t{POHMELFS_PROTO_VERSION_MIN});
  q.version_max = to_le(uint16_t{POHMELFS_PROTO_VERSION_MAX});
  q.max_payload = to_le(uint32_t{POHMELFS_PAYLOAD_MAX});
  // RMA is asked for only where the transport has it (ofi, verbs); tcp keeps data in messages.
  q.features = to_le(conn->rma() ? uint64_t{POHMELFS_FEAT_ALL}
                                 : uint64_t{POHMELFS_FEAT_ALL & ~POHMELFS_FEAT_RMA});
  uint64_t resume;
  {
    std::lock_guard lk(mu_);
    resume = session_;
  }
  q.resume_session = to_le(resume);
  q.credits = to_le(uint32_t{1024});
  q.crypto_modes = to_le(offered);
  const size_t auth_len = opts_.key ? t.client_nonce.size() : 0;
  q.auth_len = to_le(static_cast<uint32_t>(auth_len));
  q.name_len = to_le(static_cast<uint32_t>(opts_.client_name.size()));
  iovec iov[3] = {{&q, sizeof(q)},
                  {t.client_nonce.data(), auth_len},
                  {const_cast<char*>(opts_.client_name.data()), opts_.client_name.size()}};
  auto hello = HandshakeCall(conn, POHMELFS_OP_HELLO, std::span<const iovec>(iov, 3));
  if (!hello.ok()) return hello.status();
  if (hello->status != 0) return HandshakeRefused(uri_text_, hello->status, opts_.key != nullptr);
  auto decoded = proto::DecodeHelloReply(hello->payload);
  if (!decoded.ok()) return Status::Error(EPROTO, decoded.status().reason() + " from " + uri_text_);
  const pohmelfs_hello_rep& rep = decoded->rep;
  const std::string_view auth = decoded->auth;
  const uint32_t mode = from_le(rep.crypto_mode);
  if (mode == 0 || (mode & (mode - 1)) != 0 || !(mode & offered))
    return Status::Error(EPROTO, uri_text_ + " chose a channel mode this client did not offer");
  if (mode != opts_.crypto_mode)
    spdlog::warn("{}: the server does not support channel mode {}; using {}", uri_text_,
                 crypto::CryptoModeName(opts_.crypto_mode), crypto::CryptoModeName(mode));
  if (!(from_le(rep.flags) & POHMELFS_HELLO_AUTH)) {
    // A protected mode is only ever switched on by AUTH: anything else is a forged reply.
    if (mode != POHMELFS_CRYPTO_NONE)
      return Status::Error(EPROTO, uri_text_ + " chose a channel mode without the AUTH step");
    if (opts_.key)
      return Status::Error(EACCES, uri_text_ +
                                       " did not prove the key (it runs without --key?); "
                                       "refusing it");
    return ApplyHelloReply(rep);
  }

  // Mutual authentication and the channel's keys (docs/security.md).
  auto* secure = crypto::AsSecure(conn);
  pohmelfs_hello_rep_auth ra{};
  if (auth.empty()) return Status::Error(EPROTO, "no authentication data from " + uri_text_);
  std::memcpy(&ra, auth.data(), auth.size());
  std::memcpy(t.server_nonce.data(), ra.nonce, t.server_nonce.size());
  t.version = from_le(rep.version);
  t.features = from_le(rep.features);
  t.offered_modes = offered;
  t.chosen_mode = mode;
  t.session = resume;
  t.client_name = opts_.client_name;
  crypto::Proof proof{};
  crypto::SessionKeys keys;  // crc32c without a key: unkeyed
  if (opts_.key) {
    if (auth.size() != sizeof(ra) ||
        !crypto::VerifyProof(crypto::ServerProof(*opts_.key, t), std::span(ra.proof)))
      return Status::Error(EACCES, uri_text_ +
                                       " failed to prove the key (a different key, or the "
                                       "handshake was changed on the way)");
    proof = crypto::ClientProof(*opts_.key, t);
    auto derived = crypto::DeriveSessionKeys(*opts_.key, t);
    if (!derived.ok()) return derived.status();
    keys = *derived;
  } else if (auth.size() != sizeof(ra.nonce) || crypto::ModeNeedsKey(mode)) {
    return Status::Error(EPROTO, uri_text_ + " asked for a key proof this client cannot give");
  }
  std::optional<crypto::ChannelCipher> send;
  if (mode != POHMELFS_CRYPTO_NONE) {
    auto recv = crypto::ChannelCipher::Create(mode, keys.server_to_client);
    if (!recv.ok()) return recv.status();
    auto s = crypto::ChannelCipher::Create(mode, keys.client_to_server);
    if (!s.ok()) return s.status();
    secure->ArmReceive(std::move(*recv));  // before AUTH: the reply to it comes sealed
    send.emplace(std::move(*s));
  }
  iovec piov{proof.data(), opts_.key ? proof.size() : 0};
  // AUTH goes in the clear; everything after it is sealed. Sending it and switching must not
  // be split by another send: nothing else uses this connection before the handshake is done.
  auto auth_reply = HandshakeCall(conn, POHMELFS_OP_AUTH,
                                  std::span<const iovec>(&piov, piov.iov_len ? 1 : 0), [&] {
                                    if (send) secure->StartSending(std::move(*send));
                                  });
  if (!auth_reply.ok()) return auth_reply.status();
  if (auth_reply->status != 0)
    return HandshakeRefused(uri_text_, auth_reply->status, opts_.key != nullptr);
  if (mode != POHMELFS_CRYPTO_NONE && !secure->sealed_seen())
    return Status::Error(EPROTO, uri_text_ + " answered AUTH in the clear on a protected channel");
  auto final_decoded = proto::DecodeHelloReply(auth_reply->payload);
  if (!final_decoded.ok())
    return Status::Error(EPROTO, final_decoded.status().reason() + " from " + uri_text_);
  const pohmelfs_hello_rep& final_rep = final_decoded->rep;
  if (from_le(final_rep.crypto_mode) != mode || from_le(final_rep.features) != t.features)
    return Status::Error(EPROTO, uri_text_ + " changed the agreed parameters in its AUTH reply");
  return ApplyHelloReply(final_rep);
}

Status RpcClient::ApplyHelloReply(const pohmelfs_hello_rep& rep) {
  uint64_t session = from_le(rep.session);
  if (session_ != 0 && session != session_)
    spdlog::warn("{}: server did not resume session {:016x} (restarted?); new session {:016x}",
                 uri_text_, session_, session);
  else if (session_ != 0)
    spdlog::info("{}: resumed session {:016x}", uri_text_, session);
  session_ = session;
  credits_ = std::max<uint32_t>(1, from_le(rep.credits));
  features_ = from_le(rep.features);
  max_payload_ = std::min<uint32_t>(from_le(rep.max_payload), POHMELFS_PAYLOAD_MAX);
  root_ = proto::Oid::FromWire(rep.root);
  server_id_ = proto::Oid::FromWire(rep.server_id);
  read_only_ = (from_le(rep.flags) & POHMELFS_HELLO_READONLY) != 0;
  crypto_mode_ = from_le(rep.crypto_mode);
  return Status::Ok();
}

void RpcClient::SetOnCallback(std::function<void(uint16_t, std::vector<uint8_t>&&)> f) {
  on_callback_ = std::move(f);
}

uint64_t RpcClient::session() {
  std::lock_guard lk(mu_);
  return session_;
}

void RpcClient::OnMessage(transport::Message&& m) {
  counters_.bytes_in += sizeof(pohmelfs_hdr) + m.payload.size();
  last_receive_ = Clock::now().time_since_epoch().count();
  if (!m.hdr.is_reply() && (m.hdr.flags & POHMELFS_FLAG_CALLBACK) && on_callback_) {
    on_callback_(m.hdr.opcode, std::move(m.payload));
    return;
  }
  if (!m.hdr.is_reply()) {
    spdlog::warn("{}: unexpected request {} from server (trans {})", uri_text_,
                 proto::OpcodeName(m.hdr.opcode), m.hdr.trans);
    return;
  }
  std::lock_guard lk(mu_);
  if (m.hdr.credits) credits_ = m.hdr.credits;
  auto it = pending_.find(m.hdr.trans);
  if (it == pending_.end()) return;  // a late reply to a transaction already answered
  it->second->done = true;
  it->second->reply.status = m.hdr.status;
  it->second->reply.payload = std::move(m.payload);
  cv_.notify_all();
}

void RpcClient::OnClose(const transport::Connection* conn) {
  bool was_current = false;
  {
    std::lock_guard lk(mu_);
    if (conn_.get() == conn) {
      spdlog::warn("{}: connection lost", uri_text_);
      conn_.reset();
      was_current = true;
    }
    for (auto& [trans, p] : pending_)
      if (p->sent_on == conn) p->sent_on = nullptr;  // wake its waiter to resend
    cv_.notify_all();
  }
  if (was_current && on_disconnect_) on_disconnect_();
}

bool RpcClient::AcquireCredit(Clock::time_point deadline) {
  std::unique_lock lk(mu_);
  if (!cv_.wait_until(lk, deadline, [&] { return inflight_ < credits_ || shutting_down_; }))
    return false;
  if (shutting_down_) return false;
  inflight_++;
  return true;
}

void RpcClient::ReleaseCredit() {
  std::lock_guard lk(mu_);
  inflight_--;
  cv_.notify_all();
}

RpcClient::Transaction::Transaction(RpcClient* c, uint16_t opcode, std::span<const iovec> payload,
                                    const CallOptions& co)
    : c_(c), opcode_(opcode), payload_(payload) {
  attempts_ = co.attempts > 0 ? co.attempts : c->opts_.trans_retries + 1;
  timeout_ = co.attempt_timeout.count() > 0 ? co.attempt_timeout : c->opts_.trans_scan_timeout;
  fail_fast_ = co.fail_fast;
  for (const auto& v : payload) bytes_ += v.iov_len;
}

RpcClient::Transaction::~Transaction() {
  if (registered_) {
    std::lock_guard lk(c_->mu_);
    c_->pending_.erase(trans_);
  }
  if (has_credit_) c_->ReleaseCredit();
}

std::unique_ptr<RpcClient::Transaction> RpcClient::Begin(uint16_t opcode,
                                                         std::span<const iovec> payload,
                                                         const CallOptions& co) {
  counters_.calls++;
  auto t = std::make_unique<Transaction>(this, opcode, payload, co);
  const auto total_deadline = Clock::now() + t->timeout_ * t->attempts_;
  if (!AcquireCredit(total_deadline)) {
    t->last_ = Status::Error(ETIMEDOUT, "no send credit");
    t->ever_connected_ = true;
    t->attempt_ = t->attempts_;  // Wait returns the error at once
    return t;
  }
  t->has_credit_ = true;
  t->trans_ = next_trans_++;
  {
    std::lock_guard lk(mu_);
    pending_[t->trans_] = t->p_;
  }
  t->registered_ = true;
  SendAttempt(*t);
  return t;
}

void RpcClient::SendAttempt(Transaction& t) {
  t.sent_ = false;
  auto conn = EnsureConnected(!t.fail_fast_);
  t.deadline_ = Clock::now() + t.timeout_;  // a reconnect does not eat the reply window
  if (!conn.ok()) {
    t.last_ = conn.status();
    return;
  }
  t.ever_connected_ = true;
  proto::Header h;
  h.opcode = t.opcode_;
  h.trans = t.trans_;
  h.flags = t.attempt_ > 0 ? POHMELFS_FLAG_RESENT : 0;
  {
    std::lock_guard lk(mu_);
    if (!(*conn)->IsOpen()) {  // closed before OnClose could see this transaction
      t.last_ = Status::Error(EIO, "connection lost");
      return;
    }
    h.session = session_;
    t.p_->sent_on = conn->get();
  }
  if (t.attempt_ > 0) {
    counters_.resends++;
    spdlog::info("{}: trans {}: resending {} (attempt {})", uri_text_, t.trans_,
                 proto::OpcodeName(t.opcode_), t.attempt_ + 1);
  }
  Status s = (*conn)->Send(h, t.payload_);
  counters_.bytes_out += sizeof(pohmelfs_hdr) + t.bytes_;
  if (s.ok())
    t.sent_ = true;
  else
    t.last_ = Status::Error(EIO, "send failed: " + s.reason());
}

Result<RpcReply> RpcClient::Wait(Transaction& t) {
  while (t.attempt_ < t.attempts_) {
    {
      std::unique_lock lk(mu_);
      Pending& p = *t.p_;
      if (t.sent_) {
        cv_.wait_until(lk, t.deadline_,
                       [&] { return p.done || p.sent_on == nullptr || shutting_down_; });
      } else if (!t.fail_fast_) {
        // Not connected: wait out this attempt's period (a reconnect by another call wakes us).
        cv_.wait_until(lk, t.deadline_,
                       [&] { return shutting_down_ || (conn_ && conn_->IsOpen()); });
      }
      if (p.done) return std::move(p.reply);
      if (shutting_down_) return Status::Error(ESHUTDOWN, "client shutting down");
      if (t.sent_ && p.sent_on != nullptr) {
        counters_.timeouts++;
        t.last_ = Status::Error(ETIMEDOUT, "no reply within trans_scan_timeout");
      } else if (t.sent_) {
        t.last_ = Status::Error(EIO, "connection lost");
      }
    }
    if (++t.attempt_ >= t.attempts_) break;
    if (t.fail_fast_ && !t.sent_) break;
    if (t.fail_fast_ && !connected()) break;
    SendAttempt(t);
  }
  if (!t.fail_fast_)
    spdlog::warn("{}: trans {}: {} failed after {} attempts: {}", uri_text_, t.trans_,
                 proto::OpcodeName(t.opcode_), t.attempt_, t.last_.ToString());
  if (t.fail_fast_ && t.last_.code() == EIO) return t.last_;
  return Status::Error(t.ever_connected_ ? ETIMEDOUT : EIO, t.last_.reason());
}

Result<RpcReply> RpcClient::Call(uint16_t opcode, std::span<const iovec> payload) {
  auto t = Begin(opcode, payload);
  return Wait(*t);
}

}  // namespace pohmelfs::client
