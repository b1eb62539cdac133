#include "transport/ofi/ofi_rdm.h"

#include <rdma/fi_errno.h>
#include <rdma/fi_tagged.h>
#include <spdlog/spdlog.h>
#include <sys/random.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <future>
#include <thread>
#include <vector>

#include "transport/ofi/ofi_post.h"

namespace pohmelfs::transport::ofi {
namespace {

// Posts with a bounded retry while the provider's queue is full (control messages are rare
// and small; the progress thread drains the queue meanwhile).
template <typename Post>
ssize_t PostRetrying(Post post) {
  ssize_t rc = -FI_EAGAIN;
  for (int i = 0; i < 1000 && rc == -FI_EAGAIN; i++) {
    rc = post();
    if (rc == -FI_EAGAIN) std::this_thread::yield();
  }
  return rc;
}

// Room for a control message a receive offers: far more than an RdmControl, because rxm
// mishandles a segmented (SAR) message that does not fit the receive it matches (it then
// unlinks a list entry it never linked, and the sender's send never completes): a garbage
// message of 64 KiB on a listener's control tag did that with an RdmControl-sized receive.
// rxm segments messages up to 8 eager buffers (128 KiB with its defaults); larger ones go by
// rendezvous, whose truncation is reported as an error completion and consumed.
constexpr size_t kControlRecvBytes = 128 * 1024;

}  // namespace

// One control message posted, sending or receiving. Owned by the provider from its post to its
// completion (OnControlDone takes it back).
struct RdmEndpoint::ControlOp : TransferOp {
  std::shared_ptr<Core> core;
  fid_ep* ep = nullptr;
  bool recv = false;
  uint64_t id = 0;                            // recv: the id listened for
  RdmControl msg;                             // send
  std::vector<uint8_t> inbox;                 // recv: kControlRecvBytes
  ControlHandler handler;                     // recv
  std::function<void(const Status&)> failed;  // send
  fid_mr* mr = nullptr;
  ~ControlOp() {
    if (mr) fi_close(&mr->fid);
  }
  void* desc() const { return mr ? fi_mr_desc(mr) : nullptr; }
  // Posts this receive (again). REQUIRES: core->mu held.
  ssize_t PostRecv() {
    return PostRetrying([this] {
      return fi_trecv(ep, inbox.data(), inbox.size(), desc(), FI_ADDR_UNSPEC, kControlBit | id, 0,
                      scratch);
    });
  }
};

Result<std::unique_ptr<RdmEndpoint::ControlOp>> RdmEndpoint::NewOp(bool recv) {
  auto op = std::make_unique<ControlOp>();
  op->core = core_;
  op->ep = ep_;
  op->recv = recv;
  op->on_done = &RdmEndpoint::OnControlDone;
  if (recv) op->inbox.resize(kControlRecvBytes);
  if (domain_->local_mr()) {
    auto mr = recv ? domain_->RegisterRaw(op->inbox.data(), op->inbox.size(), FI_RECV)
                   : domain_->RegisterRaw(&op->msg, sizeof(op->msg), FI_SEND);
    if (!mr.ok()) return mr.status();
    op->mr = *mr;
  }
  return op;
}

uint64_t RdmEndpoint::NewId() {
  uint64_t id = 0;
  while (id == 0) {
    if (getrandom(&id, sizeof(id), 0) != sizeof(id)) id = 0;
    id &= ~kControlBit;
  }
  return id;
}

Result<std::shared_ptr<RdmEndpoint>> RdmEndpoint::Open(std::shared_ptr<OfiDomain> domain,
                                                       const fi_info* info) {
  std::shared_ptr<RdmEndpoint> e(new RdmEndpoint(std::move(domain)));
  fi_av_attr av_attr{};
  av_attr.type = FI_AV_TABLE;
  int rc = fi_av_open(e->domain_->domain(), &av_attr, &e->av_, nullptr);
  if (rc) return FiError("fi_av_open", rc);
  rc = fi_endpoint(e->domain_->domain(), const_cast<fi_info*>(info), &e->ep_, nullptr);
  if (rc) return FiError("fi_endpoint", rc);
  // The domain's progress thread reads the completion queue, which progresses every endpoint
  // bound to it, and rxm does not survive progressing an endpoint bound but not yet enabled:
  // bind and enable on that thread.
  auto bound = std::make_shared<std::promise<Status>>();
  auto result = bound->get_future();
  e->domain_->Post([e, bound] {
    int rc = fi_ep_bind(e->ep_, &e->av_->fid, 0);
    if (rc == 0) rc = fi_ep_bind(e->ep_, &e->domain_->cq()->fid, FI_TRANSMIT | FI_RECV);
    if (rc) return bound->set_value(FiError("fi_ep_bind", rc));
    rc = fi_enable(e->ep_);
    bound->set_value(rc ? FiError("fi_enable", rc) : Status::Ok());
  });
  if (result.wait_for(kSendBound) != std::future_status::ready)
    return Status::Error(ETIMEDOUT, "endpoint setup did not run on the progress thread");
  POHMELFS_RETURN_IF_ERROR(result.get());
  // From here on a failure must not close the enabled endpoint under the progress thread:
  // the last reference is dropped there.
  auto release_there = [&e] {
    e->domain_->Post([doomed = e] {});
    e.reset();
  };
  std::vector<uint8_t> name(RdmControl::kMaxName);
  size_t len = name.size();
  rc = fi_getname(&e->ep_->fid, name.data(), &len);
  if (rc) {
    release_there();
    return FiError("fi_getname", rc);
  }
  name.resize(len);
  e->name_ = std::move(name);
  return e;
}

RdmEndpoint::~RdmEndpoint() {
  {
    std::lock_guard lk(core_->mu);
    core_->alive = false;
    core_->listening.clear();
  }
  // Closing the endpoint ends what is posted on it; a completion still on its way frees its
  // operation (OnControlDone), which no longer finds the endpoint alive.
  // REQUIRES: no other thread reads the domain's completion queue (the provider does not take
  // an endpoint closed while its queue is progressed): the progress thread has stopped, or this
  // runs on it. The transport keeps its endpoints until it has stopped its domains.
  if (ep_) fi_close(&ep_->fid);
  if (av_) fi_close(&av_->fid);
  // Once the progress thread has stopped, no completion will free what was still posted.
  if (!domain_->ProgressStopped()) return;
  std::set<ControlOp*> left;
  {
    std::lock_guard lk(core_->mu);
    left.swap(core_->posted);
  }
  for (ControlOp* op : left) std::default_delete<ControlOp>()(op);
}

std::string RdmEndpoint::Uri() const {
  return AddressToUri(domain_->provider(), domain_->string_addr(), name_.data(), name_.size());
}

Result<fi_addr_t> RdmEndpoint::Insert(const void* addr) {
  fi_addr_t out = FI_ADDR_NOTAVAIL;
  int rc = fi_av_insert(av_, addr, 1, &out, 0, nullptr);
  if (rc != 1) return FiError("fi_av_insert", rc < 0 ? rc : -FI_EINVAL);
  return out;
}

void RdmEndpoint::Remove(fi_addr_t addr) {
  // On the progress thread, like the close (the provider's progress may be using the entry).
  std::weak_ptr<RdmEndpoint> weak = shared_from_this();
  domain_->Post([weak, addr]() mutable {
    if (auto self = weak.lock()) fi_av_remove(self->av_, &addr, 1, 0);
  });
}

Status RdmEndpoint::Listen(uint64_t id, ControlHandler handler) {
  auto op = NewOp(/*recv=*/true);
  if (!op.ok()) return op.status();
  (*op)->id = id;
  (*op)->handler = std::move(handler);
  std::lock_guard lk(core_->mu);
  if (!core_->alive) return Status::Error(ENOTCONN, "endpoint closed");
  domain_->Publish();
  if (const ssize_t rc = (*op)->PostRecv(); rc != 0)
    return FiError("fi_trecv (control)", static_cast<int>(rc));
  core_->listening[id] = op->get();
  core_->posted.insert(op->release());  // the provider holds it until its completion
  return Status::Ok();
}

void RdmEndpoint::Unlisten(uint64_t id) {
  std::lock_guard lk(core_->mu);
  auto it = core_->listening.find(id);
  if (it == core_->listening.end()) return;
  ControlOp* op = it->second;
  core_->listening.erase(it);
  // Its completion (cancelled, or a message that beat the cancel) frees it.
  fi_cancel(&ep_->fid, op->scratch);
}

Status RdmEndpoint::SendControl(fi_addr_t to, uint64_t to_id, const RdmControl& m,
                                std::function<void(const Status&)> failed) {
  auto op = NewOp(/*recv=*/false);
  if (!op.ok()) return op.status();
  (*op)->msg = m;
  (*op)->failed = std::move(failed);
  TrySend(std::make_shared<std::unique_ptr<ControlOp>>(std::move(*op)), to, to_id,
          std::chrono::steady_clock::now() + kSendBound);
  return Status::Ok();
}

void RdmEndpoint::TrySend(const std::shared_ptr<std::unique_ptr<ControlOp>>& holder, fi_addr_t to,
                          uint64_t to_id, std::chrono::steady_clock::time_point deadline,
                          std::chrono::milliseconds backoff) {
  ControlOp* op = holder->get();
  ssize_t rc;
  {
    std::lock_guard lk(core_->mu);
    if (!core_->alive) return;
    void* desc = op->desc();
    domain_->Publish();  // after the last read of op: its completion frees it without the lock
    rc = fi_tsend(ep_, &op->msg, sizeof(op->msg), desc, to, kControlBit | to_id, op->scratch);
    if (rc == 0) {
      // The provider holds it until its completion (OnControlDone), which takes the lock first.
      core_->posted.insert(holder->release());
      return;
    }
  }
  auto fail = [&](const Status& st) {
    if (op->failed) op->failed(st);
  };
  if (rc != -FI_EAGAIN) return fail(FiError("fi_tsend (control)", static_cast<int>(rc)));
  if (domain_->stopping()) return fail(Status::Error(ESHUTDOWN, "transport shut down"));
  if (std::chrono::steady_clock::now() >= deadline)
    return fail(Status::Error(ETIMEDOUT, "control message not taken by the provider in time"));
  // The provider is still setting up its path to the peer, which the progress thread drives:
  // try again from there.
  std::weak_ptr<RdmEndpoint> weak = shared_from_this();
  const auto next = std::min(backoff * 2, std::chrono::milliseconds(64));
  domain_->PostAfter(backoff, [weak, holder, to, to_id, deadline, next] {
    if (auto self = weak.lock()) self->TrySend(holder, to, to_id, deadline, next);
  });
}

void RdmEndpoint::OnControlDone(TransferOp* t, size_t len, const Status& st) {
  std::unique_ptr<ControlOp> op(static_cast<ControlOp*>(t));
  if (!op->recv) {
    {
      std::lock_guard lk(op->core->mu);
      op->core->posted.erase(op.get());
    }
    if (!st.ok() && op->failed) op->failed(st);
    return;
  }
  ControlHandler handler;
  RdmControl m;
  {
    // One hold of the lock: an Unlisten either comes before (nothing is reposted) or after
    // (it cancels the reposted receive).
    std::lock_guard lk(op->core->mu);
    op->core->posted.erase(op.get());
    auto it = op->core->listening.find(op->id);
    if (!op->core->alive || it == op->core->listening.end() || it->second != op.get()) return;
    if (st.code() == ECANCELED) {
      op->core->listening.erase(it);
      return;
    }
    // Any other error (a truncated, oversized message) costs that message only: the receive
    // is posted again, or one bad message would end the listener.
    if (st.ok()) {
      handler = op->handler;
      std::memcpy(&m, op->inbox.data(), std::min(len, sizeof(m)));
    } else {
      spdlog::warn("ofi rdm: control message dropped: {}", st.ToString());
    }
    const ssize_t rc = op->PostRecv();
    if (rc == 0) {
      op->core->posted.insert(op.release());  // posted again
    } else {
      op->core->listening.erase(it);
      spdlog::warn("ofi rdm: reposting a control receive failed: {}",
                   FiError("fi_trecv", static_cast<int>(rc)).ToString());
    }
  }
  if (!st.ok()) return;
  if (len < offsetof(RdmControl, name) || len > sizeof(RdmControl) ||
      m.magic != RdmControl::kMagic || m.name_len > RdmControl::kMaxName ||
      len < offsetof(RdmControl, name) + m.name_len) {
    spdlog::warn("ofi rdm: malformed control message ({} bytes) ignored", len);
    return;
  }
  if (handler) handler(m);
}

RdmConnection::RdmConnection(std::shared_ptr<RdmEndpoint> ep, fi_addr_t peer_addr, uint64_t peer_id,
                             std::string peer, Handler handler, uint32_t max_payload, bool accepted)
    : FramedConnection(ep->domain().get(), std::move(peer), std::move(handler), max_payload,
                       accepted),
      ep_(std::move(ep)),
      peer_addr_(peer_addr),
      id_(RdmEndpoint::NewId()),
      peer_id_(peer_id),
      last_heard_ns_(Now()) {}

RdmConnection::~RdmConnection() {
  if (bufs_mr_) fi_close(&bufs_mr_->fid);
  if (accepted()) ep_->Remove(peer_addr_);
}

int64_t RdmConnection::Now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Status RdmConnection::Setup() {
  auto mr = ep_->domain()->RegisterRaw(buffers(), kBufferBytes, FI_SEND | FI_RECV);
  if (!mr.ok()) return mr.status();
  bufs_mr_ = *mr;
  bufs_desc_ = fi_mr_desc(bufs_mr_);
  std::weak_ptr<RdmConnection> weak = std::static_pointer_cast<RdmConnection>(shared_from_this());
  POHMELFS_RETURN_IF_ERROR(ep_->Listen(id_, [weak](const RdmControl& m) {
    if (auto self = weak.lock()) self->OnControl(m);
  }));
  return PostInitialReceives();
}

void RdmConnection::OnControl(const RdmControl& m) {
  last_heard_ns_ = Now();
  switch (m.kind) {
    case RdmControl::kAccept:
      if (!accepted() && peer_id_.load() == 0 && m.sender_id != 0) {
        peer_id_ = m.sender_id;
        OnEstablished();
      }
      break;
    case RdmControl::kClose:
      peer_closed_ = true;  // it has stopped listening: a CLOSE back would wait there forever
      Close(Status::Error(ECONNRESET, "peer closed the connection"));
      break;
    default:
      break;  // keepalive: being heard is all
  }
}

bool RdmConnection::Tick() {
  if (!IsOpen()) return false;
  const int64_t now = Now();
  const auto timeout = std::chrono::duration_cast<std::chrono::nanoseconds>(kPeerTimeout).count();
  if (now - last_heard_ns_.load() > timeout) {
    Close(
        Status::Error(ETIMEDOUT, "peer silent for " + std::to_string(kPeerTimeout.count()) + " s"));
    return false;
  }
  const uint64_t peer = peer_id_.load();
  const auto every = std::chrono::duration_cast<std::chrono::nanoseconds>(kKeepalive).count();
  if (peer != 0 && now - last_sent_ns_ >= every) {
    last_sent_ns_ = now;
    RdmControl m;
    m.kind = RdmControl::kKeepalive;
    m.sender_id = id_;
    std::weak_ptr<RdmConnection> weak = std::static_pointer_cast<RdmConnection>(shared_from_this());
    (void)ep_->SendControl(peer_addr_, peer, m, [weak](const Status& st) {
      if (auto self = weak.lock()) self->Close(st);
    });
  }
  return true;
}

Status RdmConnection::PostRecv(TransferOp* op, void* buf, size_t len) {
  if (std::find(recv_ops_.begin(), recv_ops_.end(), op) == recv_ops_.end()) recv_ops_.push_back(op);
  ssize_t rc = fi_trecv(ep_->ep(), buf, len, bufs_desc_, FI_ADDR_UNSPEC, id_, 0, op->scratch);
  if (rc) return FiError("fi_trecv", static_cast<int>(rc));
  return Status::Ok();
}

int RdmConnection::PostSend(TransferOp* op, const void* buf, size_t len) {
  return PostResult(
      fi_tsend(ep_->ep(), buf, len, bufs_desc_, peer_addr_, peer_id_.load(), op->scratch));
}

bool RdmConnection::Owns(const MemoryRegion& region) const {
  const auto* r = dynamic_cast<const OfiMemoryRegion*>(&region);
  return r && r->domain() == ep_->domain().get();
}

int RdmConnection::PostRma(TransferOp* op) {
  return PostRmaOp(ep_->ep(), peer_addr_, *ep_->domain(), op, [this] { PublishOp(); });
}

void RdmConnection::BeginClose() {
  const uint64_t peer = peer_id_.load();
  if (peer == 0 || peer_closed_) return;
  RdmControl m;
  m.kind = RdmControl::kClose;
  m.sender_id = id_;
  (void)ep_->SendControl(peer_addr_, peer, m);  // best effort: the peer may be gone
}

void RdmConnection::EndClose() {
  ep_->Unlisten(id_);
  // The receives posted on a shared endpoint end only when cancelled; each cancelled one
  // completes with an error, which FramedConnection counts down before freeing this object.
  for (TransferOp* op : recv_ops_) fi_cancel(&ep_->ep()->fid, op->scratch);
}

}  // namespace pohmelfs::transport::ofi
