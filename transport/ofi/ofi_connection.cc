#include "transport/ofi/ofi_connection.h"

#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

namespace pohmelfs::transport::ofi {
namespace {

// libfabric's negative return of a post as 0, EAGAIN or a positive errno.
int PostResult(ssize_t rc) {
  if (rc == 0) return 0;
  if (rc == -FI_EAGAIN) return EAGAIN;
  const int err = static_cast<int>(-rc);
  return err > 0 && err < FI_ERRNO_OFFSET ? err : EIO;
}

}  // namespace

OfiConnection::OfiConnection(std::shared_ptr<OfiDomain> domain, fid_ep* ep, std::string peer,
                             Handler handler, uint32_t max_payload, bool accepted)
    : FramedConnection(domain.get(), std::move(peer), std::move(handler), max_payload, accepted),
      domain_(std::move(domain)),
      ep_(ep),
      ep_fid_(&ep->fid) {}

OfiConnection::~OfiConnection() {
  if (ep_) fi_close(&ep_->fid);
  if (bufs_mr_) fi_close(&bufs_mr_->fid);
}

Status OfiConnection::Setup() {
  auto mr = domain_->RegisterRaw(buffers(), kBufferBytes, FI_SEND | FI_RECV);
  if (!mr.ok()) return mr.status();
  bufs_mr_ = *mr;
  bufs_desc_ = fi_mr_desc(bufs_mr_);
  int rc = fi_ep_bind(ep_, &domain_->eq()->fid, 0);
  if (rc == 0) rc = fi_ep_bind(ep_, &domain_->cq()->fid, FI_TRANSMIT | FI_RECV);
  if (rc) return FiError("fi_ep_bind", rc);
  rc = fi_enable(ep_);
  if (rc) return FiError("fi_enable", rc);
  return PostInitialReceives();
}

Status OfiConnection::PostRecv(TransferOp* op, void* buf, size_t len) {
  ssize_t rc = fi_recv(ep_, buf, len, bufs_desc_, 0, op->scratch);
  if (rc) return FiError("fi_recv", static_cast<int>(rc));
  return Status::Ok();
}

int OfiConnection::PostSend(TransferOp* op, const void* buf, size_t len) {
  return PostResult(fi_send(ep_, buf, len, bufs_desc_, 0, op->scratch));
}

bool OfiConnection::Owns(const MemoryRegion& region) const {
  const auto* r = dynamic_cast<const OfiMemoryRegion*>(&region);
  return r && r->domain() == domain_.get();
}

int OfiConnection::PostRma(TransferOp* op) {
  void* desc = static_cast<const OfiMemoryRegion&>(*op->local).desc();
  iovec iov{op->buf, op->len};
  fi_rma_iov rma{op->remote.addr, op->len, op->remote.key};
  fi_msg_rma msg{};
  msg.msg_iov = &iov;
  msg.desc = &desc;
  msg.iov_count = 1;
  msg.rma_iov = &rma;
  msg.rma_iov_count = 1;
  msg.context = op->scratch;
  const bool read = op->kind == TransferOp::Kind::kRead;
  // A write completes when the data is in the peer's memory (a bad key is then reported
  // here), not when it left this host; unless later sends are all it must precede and the
  // provider orders sends after writes.
  const uint64_t when = op->before_next_send && domain_->orders_sends_after_writes()
                            ? FI_TRANSMIT_COMPLETE
                            : FI_DELIVERY_COMPLETE;
  PublishOp();  // after the last read of op: the completion may free it at once
  return PostResult(read ? fi_readmsg(ep_, &msg, FI_COMPLETION)
                         : fi_writemsg(ep_, &msg, FI_COMPLETION | when));
}

void OfiConnection::BeginClose() {
  fi_shutdown(ep_, 0);
}

void OfiConnection::EndClose() {
  domain_->RemoveCm(ep_fid_);
  // Closing the endpoint makes the provider drop (or flush as cancelled) what is posted on it;
  // the buffers stay with this object until the engine frees it.
  fi_close(&ep_->fid);
  ep_ = nullptr;
}

}  // namespace pohmelfs::transport::ofi
