#include "transport/ofi/ofi_connection.h"

#include "transport/ofi/ofi_post.h"

namespace pohmelfs::transport::ofi {

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
  return PostRmaOp(ep_, FI_ADDR_UNSPEC, *domain_, op, [this] { PublishOp(); });
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
