#include "transport/ofi/ofi_connection.h"

#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <spdlog/spdlog.h>

#include <cstring>

namespace pohmelfs::transport::ofi {
namespace {

// An accepted connection whose unsent bytes pass the high-water mark stops taking requests (its
// peer does not read the replies) until they drop under the low-water mark, as on TCP.
constexpr size_t kSendHighWater = 32 * size_t{POHMELFS_PAYLOAD_MAX};
constexpr size_t kSendLowWater = 8 * size_t{POHMELFS_PAYLOAD_MAX};

}  // namespace

OfiConnection::OfiConnection(std::shared_ptr<OfiDomain> domain, fid_ep* ep, std::string peer,
                             Handler handler, uint32_t max_payload, bool accepted)
    : domain_(std::move(domain)),
      ep_(ep),
      peer_(std::move(peer)),
      handler_(std::move(handler)),
      accepted_(accepted),
      max_payload_(max_payload) {}

OfiConnection::~OfiConnection() {
  if (ep_) fi_close(&ep_->fid);
  if (bufs_mr_) fi_close(&bufs_mr_->fid);
}

Status OfiConnection::Setup() {
  bufs_.resize((kRecvDepth + kSendSlots) * kFrameBytes);
  auto mr = domain_->RegisterRaw(bufs_.data(), bufs_.size(), FI_SEND | FI_RECV);
  if (!mr.ok()) return mr.status();
  bufs_mr_ = *mr;
  bufs_desc_ = fi_mr_desc(bufs_mr_);
  int rc = fi_ep_bind(ep_, &domain_->eq()->fid, 0);
  if (rc == 0) rc = fi_ep_bind(ep_, &domain_->cq()->fid, FI_TRANSMIT | FI_RECV);
  if (rc) return FiError("fi_ep_bind", rc);
  rc = fi_enable(ep_);
  if (rc) return FiError("fi_enable", rc);
  recv_ops_.resize(kRecvDepth);
  send_ops_.resize(kSendSlots);
  std::lock_guard lk(mu_);
  for (uint32_t i = 0; i < kSendSlots; i++) {
    send_ops_[i].kind = OfiOp::Kind::kSend;
    send_ops_[i].conn = this;
    send_ops_[i].slot = i;
    free_send_.push_back(i);
  }
  for (uint32_t i = 0; i < kRecvDepth; i++) {
    recv_ops_[i].kind = OfiOp::Kind::kRecv;
    recv_ops_[i].conn = this;
    recv_ops_[i].slot = i;
    if (Status s = PostRecvLocked(i); !s.ok()) return s;
  }
  return Status::Ok();
}

Status OfiConnection::PostRecvLocked(uint32_t slot) {
  domain_->Publish();
  ssize_t rc = fi_recv(ep_, RecvBuf(slot), kFrameBytes, bufs_desc_, 0, &recv_ops_[slot].ctx);
  if (rc) return FiError("fi_recv", static_cast<int>(rc));
  outstanding_++;
  return Status::Ok();
}

void OfiConnection::OnConnected() {
  {
    std::lock_guard lk(mu_);
    connected_ = true;
    established_ = true;
    cv_.notify_all();
    RestartLocked();
    PumpLocked();
  }
  // Frames that came before the CM event are waiting in the stream.
  domain_->Post([self = shared_from_this()] { self->Deliver(); });
}

Status OfiConnection::WaitConnected(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return connected_ || closed_.load(); });
  if (connected_) return Status::Ok();
  if (closed_) return connect_error_;
  Status s = Status::Error(ETIMEDOUT, "connect to " + peer_ + " timed out");
  CloseLocked(s);
  return s;
}

Status OfiConnection::Send(const proto::Header& h, std::span<const iovec> payload) {
  proto::Header hdr = h;
  size_t total = 0;
  for (const auto& v : payload) total += v.iov_len;
  if (total > UINT32_MAX) return Status::Error(EMSGSIZE, "payload too large");
  hdr.length = static_cast<uint32_t>(total);
  pohmelfs_hdr wire;
  proto::EncodeHeader(hdr, &wire);
  std::lock_guard lk(mu_);
  if (closed_) return Status::Error(ENOTCONN, "connection closed");
  const auto* w = reinterpret_cast<const uint8_t*>(&wire);
  out_.insert(out_.end(), w, w + sizeof(wire));
  for (const auto& v : payload) {
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    out_.insert(out_.end(), p, p + v.iov_len);
  }
  PumpLocked();
  if (accepted_ && !send_full_ && out_.size() - out_start_ > kSendHighWater) send_full_ = true;
  return Status::Ok();
}

void OfiConnection::Pump() {
  bool deliver;
  {
    std::lock_guard lk(mu_);
    PumpLocked();
    deliver = RestartLocked();
  }
  if (deliver) Deliver();
}

void OfiConnection::PumpLocked() {
  if (closed_) return;
  // Data frames keep one credit back for a credit-only frame, so that two sides that both
  // wait for credits can always tell each other about freed buffers.
  while (out_.size() > out_start_ && credits_ >= 2 && !free_send_.empty())
    if (!SendFrameLocked(false)) return;
  if (owed_ >= kRecvDepth / 2 && credits_ >= 1 && !free_send_.empty()) {
    if (!SendFrameLocked(true)) return;
  }
  while (!rma_queue_.empty()) {
    RmaArgs& a = rma_args_.front();
    OfiOp* op = rma_queue_.front().get();
    iovec iov{a.buf, a.len};
    fi_rma_iov rma{a.remote.addr, a.len, a.remote.key};
    fi_msg_rma msg{};
    msg.msg_iov = &iov;
    msg.desc = &a.desc;
    msg.iov_count = 1;
    msg.rma_iov = &rma;
    msg.rma_iov_count = 1;
    msg.context = &op->ctx;
    // A write completes when the data is in the peer's memory (a bad key is then reported
    // here), not when it left this host.
    domain_->Publish();
    ssize_t rc = a.write ? fi_writemsg(ep_, &msg, FI_COMPLETION | FI_DELIVERY_COMPLETE)
                         : fi_readmsg(ep_, &msg, FI_COMPLETION);
    if (rc == -FI_EAGAIN) {
      domain_->WantPump(shared_from_this());
      return;
    }
    std::unique_ptr<OfiOp> own = std::move(rma_queue_.front());
    rma_queue_.pop_front();
    rma_args_.pop_front();
    if (rc) {
      Status s = FiError(a.write ? "fi_write" : "fi_read", static_cast<int>(rc));
      RmaDone done = std::move(own->done);
      CloseLocked(s);
      // Its callback runs on the progress thread like any completion.
      domain_->Post([done = std::move(done), s] {
        if (done) done(s);
      });
      return;
    }
    outstanding_++;
    (void)own.release();  // the completion owns it now
  }
}

bool OfiConnection::SendFrameLocked(bool credit_only) {
  const uint32_t slot = free_send_.back();
  uint8_t* b = SendBuf(slot);
  FrameHeader fh{owed_, 0};
  const size_t body = credit_only ? 0 : std::min(kBodyBytes, out_.size() - out_start_);
  std::memcpy(b, &fh, sizeof(fh));
  if (body) std::memcpy(b + sizeof(fh), out_.data() + out_start_, body);
  domain_->Publish();
  ssize_t rc = fi_send(ep_, b, sizeof(fh) + body, bufs_desc_, 0, &send_ops_[slot].ctx);
  if (rc == -FI_EAGAIN) {
    domain_->WantPump(shared_from_this());  // the provider's queue is full: after progress
    return false;
  }
  if (rc) {
    CloseLocked(FiError("fi_send", static_cast<int>(rc)));
    return false;
  }
  free_send_.pop_back();
  outstanding_++;
  owed_ = 0;
  credits_--;
  out_start_ += body;
  if (out_start_ == out_.size()) {
    out_.clear();
    out_start_ = 0;
  } else if (out_start_ > (1u << 20) && out_start_ > out_.size() / 2) {
    out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(out_start_));
    out_start_ = 0;
  }
  if (send_full_ && out_.size() - out_start_ < kSendLowWater) send_full_ = false;
  return true;
}

bool OfiConnection::RestartLocked() {
  if (closed_ || Stopped()) return false;
  for (uint32_t slot : held_) {
    if (Status s = PostRecvLocked(slot); !s.ok()) {
      CloseLocked(s);
      return false;
    }
    owed_++;
  }
  const bool had = !held_.empty();
  held_.clear();
  if (had) PumpLocked();  // tell the peer about the reposted buffers
  return true;
}

void OfiConnection::OnSendDone(uint32_t slot, const Status& st) {
  outstanding_--;
  bool deliver;
  {
    std::lock_guard lk(mu_);
    free_send_.push_back(slot);
    if (!st.ok()) {
      CloseLocked(st);
      return;
    }
    PumpLocked();
    deliver = RestartLocked();  // the send may have ended a send_full_ stop
  }
  if (deliver) Deliver();
}

void OfiConnection::OnRecv(uint32_t slot, size_t len, const Status& st) {
  outstanding_--;
  if (closed_) return;
  if (!st.ok()) {
    Close(st);
    return;
  }
  if (len < sizeof(FrameHeader) || len > kFrameBytes) {
    Close(Status::Error(EPROTO, "bad frame length " + std::to_string(len)));
    return;
  }
  FrameHeader fh;
  std::memcpy(&fh, RecvBuf(slot), sizeof(fh));
  const uint8_t* body = RecvBuf(slot) + sizeof(fh);
  stream_.insert(stream_.end(), body, body + (len - sizeof(fh)));
  bool deliver;
  {
    std::lock_guard lk(mu_);
    if (fh.credits > kRecvDepth - credits_) {
      CloseLocked(Status::Error(EPROTO, "peer returned more credits than it had"));
      return;
    }
    credits_ += fh.credits;
    held_.push_back(slot);
    deliver = RestartLocked();
    PumpLocked();
  }
  if (deliver) Deliver();
}

void OfiConnection::Deliver() {
  while (!closed_ && !Stopped()) {
    const size_t have = stream_.size() - stream_start_;
    if (have < sizeof(pohmelfs_hdr)) break;
    pohmelfs_hdr wire;
    std::memcpy(&wire, stream_.data() + stream_start_, sizeof(wire));
    auto hdr = proto::DecodeHeader(wire, max_payload_);
    if (!hdr.ok()) {
      spdlog::warn("{}: bad message header: {}; closing", peer_, hdr.status().ToString());
      Close(hdr.status());
      break;
    }
    const size_t need = sizeof(wire) + hdr->length;
    if (have < need) break;
    Message m;
    m.hdr = *hdr;
    const uint8_t* p = stream_.data() + stream_start_ + sizeof(wire);
    m.payload.assign(p, p + hdr->length);
    stream_start_ += need;
    if (handler_.on_message) handler_.on_message(shared_from_this(), std::move(m));
  }
  if (stream_start_ == stream_.size()) {
    stream_.clear();
    stream_start_ = 0;
  } else if (stream_start_ > 0) {
    stream_.erase(stream_.begin(), stream_.begin() + static_cast<std::ptrdiff_t>(stream_start_));
    stream_start_ = 0;
  }
}

void OfiConnection::PauseReceive() {
  paused_ = true;
}

void OfiConnection::ResumeReceive() {
  {
    std::lock_guard lk(mu_);
    if (!paused_ || closed_) return;
    paused_ = false;
    if (!RestartLocked()) return;
  }
  domain_->Post([self = shared_from_this()] { self->Deliver(); });
}

void OfiConnection::Close(const Status& why) {
  std::lock_guard lk(mu_);
  CloseLocked(why);
}

void OfiConnection::CloseLocked(const Status& why) {
  if (closed_.exchange(true)) return;
  close_reason_ = why;
  connect_error_ = why;
  cv_.notify_all();
  fi_shutdown(ep_, 0);
  out_.clear();
  out_start_ = 0;
  domain_->Post([self = shared_from_this(), why] { self->Finish(why); });
}

void OfiConnection::Finish(const Status& why) {
  if (finished_) return;
  finished_ = true;
  domain_->RemoveCm(&ep_->fid);
  std::vector<std::unique_ptr<OfiOp>> dropped;
  {
    std::lock_guard lk(mu_);
    // Closing the endpoint makes the provider drop (or flush as cancelled) what is posted on
    // it; the buffers stay alive with this object until the domain frees it.
    fi_close(&ep_->fid);
    ep_ = nullptr;
    for (auto& op : rma_queue_) dropped.push_back(std::move(op));
    rma_queue_.clear();
    rma_args_.clear();
  }
  for (auto& op : dropped)
    if (op->done) op->done(Status::Error(ENOTCONN, "connection closed: " + why.reason()));
  if (handler_.on_close) handler_.on_close(shared_from_this(), why);
  handler_ = Handler{};  // drop references the layer above may hold to us
  domain_->Retire(shared_from_this());
}

Result<MemoryRegionPtr> OfiConnection::Register(void* addr, size_t len) {
  return domain_->Register(addr, len);
}

Status OfiConnection::PostRma(std::unique_ptr<OfiOp> op, bool write, void* buf, size_t len,
                              void* desc, RemoteBuffer remote) {
  if (len > domain_->max_msg_size())
    return Status::Error(EMSGSIZE, "RMA of " + std::to_string(len) + " bytes is over the limit");
  std::lock_guard lk(mu_);
  if (closed_) return Status::Error(ENOTCONN, "connection closed");
  rma_queue_.push_back(std::move(op));
  rma_args_.push_back({write, buf, len, desc, remote});
  PumpLocked();
  return Status::Ok();
}

Status OfiConnection::Write(const MemoryRegionPtr& local, const void* src, size_t len,
                            RemoteBuffer remote, RmaDone done) {
  auto* region = dynamic_cast<OfiMemoryRegion*>(local.get());
  if (!region) return Status::Error(EINVAL, "region not registered with this transport");
  auto op = std::make_unique<OfiOp>();
  op->kind = OfiOp::Kind::kRma;
  op->conn = this;
  op->done = std::move(done);
  op->keep = local;
  return PostRma(std::move(op), true, const_cast<void*>(src), len, region->desc(), remote);
}

Status OfiConnection::Read(const MemoryRegionPtr& local, void* dst, size_t len, RemoteBuffer remote,
                           RmaDone done) {
  auto* region = dynamic_cast<OfiMemoryRegion*>(local.get());
  if (!region) return Status::Error(EINVAL, "region not registered with this transport");
  auto op = std::make_unique<OfiOp>();
  op->kind = OfiOp::Kind::kRma;
  op->conn = this;
  op->done = std::move(done);
  op->keep = local;
  return PostRma(std::move(op), false, dst, len, region->desc(), remote);
}

}  // namespace pohmelfs::transport::ofi
