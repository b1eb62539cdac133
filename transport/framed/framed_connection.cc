#include "transport/framed/framed_connection.h"

#include <spdlog/spdlog.h>

#include <cstring>

namespace pohmelfs::transport {
namespace {

// An accepted connection whose unsent bytes pass the high-water mark stops taking requests (its
// peer does not read the replies) until they drop under the low-water mark, as on TCP.
constexpr size_t kSendHighWater = 32 * size_t{POHMELFS_PAYLOAD_MAX};
constexpr size_t kSendLowWater = 8 * size_t{POHMELFS_PAYLOAD_MAX};

}  // namespace

FramedConnection::FramedConnection(ProgressEngine* engine, std::string peer, Handler handler,
                                   uint32_t max_payload, bool accepted)
    : engine_(engine),
      peer_(std::move(peer)),
      handler_(std::move(handler)),
      accepted_(accepted),
      max_payload_(max_payload),
      bufs_(kBufferBytes),
      recv_ops_(kRecvDepth),
      send_ops_(kSendSlots) {
  for (uint32_t i = 0; i < kRecvDepth; i++) {
    recv_ops_[i].kind = TransferOp::Kind::kRecv;
    recv_ops_[i].conn = this;
    recv_ops_[i].slot = i;
  }
  for (uint32_t i = 0; i < kSendSlots; i++) {
    send_ops_[i].kind = TransferOp::Kind::kSend;
    send_ops_[i].conn = this;
    send_ops_[i].slot = i;
    free_send_.push_back(i);
  }
}

Status FramedConnection::PostInitialReceives() {
  std::lock_guard lk(mu_);
  for (uint32_t i = 0; i < kRecvDepth; i++)
    if (Status s = RepostLocked(i); !s.ok()) return s;
  return Status::Ok();
}

Status FramedConnection::RepostLocked(uint32_t slot) {
  engine_->Publish();
  if (Status s = PostRecv(&recv_ops_[slot], RecvBuf(slot), kFrameBytes); !s.ok()) return s;
  outstanding_++;
  return Status::Ok();
}

void FramedConnection::OnEstablished() {
  {
    std::lock_guard lk(mu_);
    if (closed_) return;
    established_locked_ = true;
    established_ = true;
    cv_.notify_all();
    RestartLocked();
    PumpLocked();
  }
  // Frames that came before the connection event are waiting in the stream.
  engine_->Post([self = shared_from_this()] { self->Deliver(); });
}

Status FramedConnection::WaitEstablished(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return established_locked_ || closed_.load(); });
  if (established_locked_) return Status::Ok();
  if (closed_) return close_reason_;
  Status s = Status::Error(ETIMEDOUT, "timed out");
  CloseLocked(s);
  return s;
}

Status FramedConnection::Send(const proto::Header& h, std::span<const iovec> payload) {
  pohmelfs_hdr wire;
  if (Status s = EncodeSendHeader(h, payload, &wire); !s.ok()) return s;
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

void FramedConnection::Pump() {
  bool deliver;
  {
    std::lock_guard lk(mu_);
    PumpLocked();
    deliver = RestartLocked();
  }
  if (deliver) Deliver();
}

void FramedConnection::PumpLocked() {
  if (closed_) return;
  // RMA first: a message sent after an RMA was queued is posted after it (rma.h), so that a
  // reply can follow the data it describes without waiting for the RMA's completion.
  PumpRmaLocked();
  if (closed_) return;
  // Data frames keep one credit back for a credit-only frame, so that two sides that both
  // wait for credits can always tell each other about freed buffers.
  while (rma_queue_.empty() && out_.size() > out_start_ && credits_ >= 2 && !free_send_.empty())
    if (!SendFrameLocked(false)) return;
  if (owed_ >= kRecvDepth / 2 && credits_ >= 1 && !free_send_.empty()) (void)SendFrameLocked(true);
}

void FramedConnection::PumpRmaLocked() {
  while (!rma_queue_.empty()) {
    TransferOp* op = rma_queue_.front().get();
    const int rc = PostRma(op);
    if (rc == EAGAIN) {
      engine_->WantPump(shared_from_this());
      return;
    }
    std::unique_ptr<TransferOp> own = std::move(rma_queue_.front());
    rma_queue_.pop_front();
    if (rc != 0) {
      Status s = Status::Error(
          rc, op->kind == TransferOp::Kind::kWrite ? "RMA write failed" : "RMA read failed");
      CloseLocked(s);
      // Its callback runs on the progress thread like any completion.
      engine_->Post([done = std::move(own->done), s] {
        if (done) done(s);
      });
      return;
    }
    outstanding_++;
    (void)own.release();  // the completion owns it now
  }
}

bool FramedConnection::SendFrameLocked(bool credit_only) {
  const uint32_t slot = free_send_.back();
  uint8_t* b = SendBuf(slot);
  FrameHeader fh{owed_, send_seq_};
  const size_t body = credit_only ? 0 : std::min(kBodyBytes, out_.size() - out_start_);
  std::memcpy(b, &fh, sizeof(fh));
  if (body) std::memcpy(b + sizeof(fh), out_.data() + out_start_, body);
  engine_->Publish();
  const int rc = PostSend(&send_ops_[slot], b, sizeof(fh) + body);
  if (rc == EAGAIN) {
    engine_->WantPump(shared_from_this());  // the backend's queue is full: after progress
    return false;
  }
  if (rc != 0) {
    CloseLocked(Status::Error(rc, "send failed"));
    return false;
  }
  free_send_.pop_back();
  outstanding_++;
  send_seq_++;
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

bool FramedConnection::RestartLocked() {
  if (closed_ || Stopped()) return false;
  for (uint32_t slot : held_) {
    if (Status s = RepostLocked(slot); !s.ok()) {
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

void FramedConnection::Complete(TransferOp* op, size_t len, const Status& st) {
  switch (op->kind) {
    case TransferOp::Kind::kRecv:
      OnRecv(op->slot, len, st);
      break;
    case TransferOp::Kind::kSend:
      OnSendDone(op->slot, st);
      break;
    case TransferOp::Kind::kWrite:
    case TransferOp::Kind::kRead:
      OnRmaDone(op, st);
      break;
  }
}

void FramedConnection::OnRmaDone(TransferOp* op, const Status& st) {
  std::unique_ptr<TransferOp> own(op);
  outstanding_--;
  if (!st.ok()) Close(st);
  if (own->done) own->done(st);
}

void FramedConnection::OnSendDone(uint32_t slot, const Status& st) {
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

void FramedConnection::OnRecv(uint32_t slot, size_t len, const Status& st) {
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
  OnFrameReceived();
  // Frames complete in the order they were sent on a connected endpoint, but not always on a
  // reliable datagram one (a large message may finish after a later small one): there a frame
  // that comes early waits, in its buffer, for those before it.
  if (!FramesMayArriveOutOfOrder()) fh.seq = recv_seq_;
  const uint32_t ahead = fh.seq - recv_seq_;
  if (ahead >= kRecvDepth || early_.count(fh.seq)) {
    Close(Status::Error(EPROTO, "frame out of sequence"));
    return;
  }
  early_[fh.seq] = {slot, len};
  bool deliver = false;
  for (auto it = early_.find(recv_seq_); it != early_.end(); it = early_.find(recv_seq_)) {
    const auto [s, n] = it->second;
    early_.erase(it);
    recv_seq_++;
    FrameHeader h;
    std::memcpy(&h, RecvBuf(s), sizeof(h));
    const uint8_t* body = RecvBuf(s) + sizeof(h);
    stream_.insert(stream_.end(), body, body + (n - sizeof(h)));
    std::lock_guard lk(mu_);
    if (h.credits > kRecvDepth - credits_) {
      CloseLocked(Status::Error(EPROTO, "peer returned more credits than it had"));
      return;
    }
    credits_ += h.credits;
    held_.push_back(s);
    deliver = RestartLocked();
    PumpLocked();
  }
  if (deliver) Deliver();
}

void FramedConnection::Deliver() {
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

void FramedConnection::PauseReceive() {
  paused_ = true;
}

void FramedConnection::ResumeReceive() {
  {
    std::lock_guard lk(mu_);
    if (!paused_ || closed_) return;
    paused_ = false;
    if (!RestartLocked()) return;
  }
  engine_->Post([self = shared_from_this()] { self->Deliver(); });
}

void FramedConnection::Close(const Status& why) {
  std::lock_guard lk(mu_);
  CloseLocked(why);
}

void FramedConnection::CloseLocked(const Status& why) {
  if (closed_.exchange(true)) return;
  close_reason_ = why;
  cv_.notify_all();
  BeginClose();
  out_.clear();
  out_start_ = 0;
  engine_->Post([self = shared_from_this(), why] { self->Finish(why); });
}

void FramedConnection::Finish(const Status& why) {
  if (finished_) return;
  finished_ = true;
  std::deque<std::unique_ptr<TransferOp>> dropped;
  {
    std::lock_guard lk(mu_);
    dropped.swap(rma_queue_);
  }
  EndClose();
  for (auto& op : dropped)
    if (op->done) op->done(Status::Error(ENOTCONN, "connection closed: " + why.reason()));
  if (handler_.on_close) handler_.on_close(shared_from_this(), why);
  handler_ = Handler{};  // drop references the layer above may hold to us
  engine_->Retire(shared_from_this());
}

Status FramedConnection::QueueRma(std::unique_ptr<TransferOp> op) {
  if (!op->local || !Owns(*op->local))
    return Status::Error(EINVAL, "RMA buffer not registered with this transport");
  if (op->len > MaxRma())
    return Status::Error(EMSGSIZE,
                         "RMA of " + std::to_string(op->len) + " bytes is over the limit");
  std::lock_guard lk(mu_);
  if (closed_) return Status::Error(ENOTCONN, "connection closed");
  rma_queue_.push_back(std::move(op));
  PumpLocked();
  return Status::Ok();
}

Status FramedConnection::QueueRma(TransferOp::Kind kind, const MemoryRegionPtr& local, void* buf,
                                  size_t len, RemoteBuffer remote, RmaDone done,
                                  bool before_next_send) {
  auto op = std::make_unique<TransferOp>();
  op->kind = kind;
  op->conn = this;
  op->buf = buf;
  op->len = len;
  op->remote = remote;
  op->local = local;
  op->done = std::move(done);
  op->before_next_send = before_next_send;
  return QueueRma(std::move(op));
}

Status FramedConnection::Write(const MemoryRegionPtr& local, const void* src, size_t len,
                               RemoteBuffer remote, RmaDone done) {
  return QueueRma(TransferOp::Kind::kWrite, local, const_cast<void*>(src), len, remote,
                  std::move(done), false);
}

Status FramedConnection::WriteBeforeNextSend(const MemoryRegionPtr& local, const void* src,
                                             size_t len, RemoteBuffer remote, RmaDone done) {
  return QueueRma(TransferOp::Kind::kWrite, local, const_cast<void*>(src), len, remote,
                  std::move(done), true);
}

Status FramedConnection::Read(const MemoryRegionPtr& local, void* dst, size_t len,
                              RemoteBuffer remote, RmaDone done) {
  return QueueRma(TransferOp::Kind::kRead, local, dst, len, remote, std::move(done), false);
}

}  // namespace pohmelfs::transport
