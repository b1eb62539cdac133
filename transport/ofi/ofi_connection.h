// One connected libfabric MSG endpoint: the framed message stream and RMA of FramedConnection
// on fi_send / fi_recv / fi_writemsg / fi_readmsg.
#pragma once

#include <rdma/fi_endpoint.h>

#include <memory>
#include <string>

#include "transport/framed/framed_connection.h"
#include "transport/ofi/ofi_domain.h"

namespace pohmelfs::transport::ofi {

class OfiConnection final : public FramedConnection {
 public:
  // ep is owned from here on.
  OfiConnection(std::shared_ptr<OfiDomain> domain, fid_ep* ep, std::string peer, Handler handler,
                uint32_t max_payload, bool accepted);
  ~OfiConnection() override;

  // Binds the endpoint, registers the buffers and posts the receives (before connect/accept).
  Status Setup();
  fid_ep* ep() const { return ep_; }

  Result<MemoryRegionPtr> Register(void* addr, size_t len) override {
    return domain_->Register(addr, len);
  }

 private:
  Status PostRecv(TransferOp* op, void* buf, size_t len) override;
  int PostSend(TransferOp* op, const void* buf, size_t len) override;
  int PostRma(TransferOp* op) override;
  size_t MaxRma() const override { return domain_->max_msg_size(); }
  bool Owns(const MemoryRegion& region) const override;
  void BeginClose() override;
  void EndClose() override;

  const std::shared_ptr<OfiDomain> domain_;
  fid_ep* ep_;
  fid_t ep_fid_;  // for removing the CM route after ep_ is closed
  fid_mr* bufs_mr_ = nullptr;
  void* bufs_desc_ = nullptr;
};

}  // namespace pohmelfs::transport::ofi
