// One RC queue pair (made through librdmacm): the framed message stream of FramedConnection on
// SEND / RECV with pre-posted receive buffers, and RMA as RDMA WRITE and RDMA READ.
#pragma once

#include <rdma/rdma_cma.h>

#include <atomic>
#include <memory>
#include <string>

#include "transport/framed/framed_connection.h"
#include "transport/verbs/verbs_cm.h"
#include "transport/verbs/verbs_device.h"

namespace pohmelfs::transport::verbs {

class VerbsConnection final : public FramedConnection {
 public:
  // RDMA WRITEs and READs in the send queue at once, besides the frames.
  static constexpr uint32_t kRmaDepth = 64;

  // id is owned from here on (destroyed with its queue pair in the destructor).
  VerbsConnection(std::shared_ptr<VerbsDevice> device, std::shared_ptr<VerbsCm> cm, rdma_cm_id* id,
                  std::string peer, Handler handler, uint32_t max_payload, bool accepted);
  ~VerbsConnection() override;

  // Registers the buffers, creates the queue pair and posts the receives.
  Status Setup();
  rdma_cm_id* id() const { return id_; }
  // Progress thread: a send-queue entry completed.
  void SendQueueSlotFreed() { sq_used_--; }

  Result<MemoryRegionPtr> Register(void* addr, size_t len) override {
    return device_->Register(addr, len);
  }

 private:
  Status PostRecv(TransferOp* op, void* buf, size_t len) override;
  int PostSend(TransferOp* op, const void* buf, size_t len) override;
  int PostRma(TransferOp* op) override;
  size_t MaxRma() const override { return size_t{1} << 30; }
  bool Owns(const MemoryRegion& region) const override;
  void BeginClose() override;
  void EndClose() override;
  // Takes a send-queue entry if one is free.
  bool TakeSendQueueSlot();

  const std::shared_ptr<VerbsDevice> device_;
  const std::shared_ptr<VerbsCm> cm_;
  rdma_cm_id* id_;
  ibv_mr* bufs_mr_ = nullptr;
  bool qp_created_ = false;
  std::atomic<uint32_t> sq_used_{0};
};

}  // namespace pohmelfs::transport::verbs
