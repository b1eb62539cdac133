#include "transport/verbs/verbs_connection.h"

namespace pohmelfs::transport::verbs {
namespace {

constexpr uint32_t kSendQueueDepth = FramedConnection::kSendSlots + VerbsConnection::kRmaDepth;

}  // namespace

VerbsConnection::VerbsConnection(std::shared_ptr<VerbsDevice> device, std::shared_ptr<VerbsCm> cm,
                                 rdma_cm_id* id, std::string peer, Handler handler,
                                 uint32_t max_payload, bool accepted)
    : FramedConnection(device.get(), std::move(peer), std::move(handler), max_payload, accepted),
      device_(std::move(device)),
      cm_(std::move(cm)),
      id_(id) {}

VerbsConnection::~VerbsConnection() {
  cm_->Remove(id_);
  if (qp_created_) rdma_destroy_qp(id_);
  rdma_destroy_id(id_);
  if (bufs_mr_) ibv_dereg_mr(bufs_mr_);
}

Status VerbsConnection::Setup() {
  auto mr = device_->RegisterRaw(buffers(), kBufferBytes, IBV_ACCESS_LOCAL_WRITE);
  if (!mr.ok()) return mr.status();
  bufs_mr_ = *mr;
  ibv_qp_init_attr attr{};
  attr.send_cq = device_->cq();
  attr.recv_cq = device_->cq();
  attr.qp_type = IBV_QPT_RC;
  attr.sq_sig_all = 1;
  attr.cap.max_send_wr = kSendQueueDepth;
  attr.cap.max_recv_wr = kRecvDepth;
  attr.cap.max_send_sge = 1;
  attr.cap.max_recv_sge = 1;
  if (rdma_create_qp(id_, device_->pd(), &attr) != 0) return Status::FromErrno("rdma_create_qp");
  qp_created_ = true;
  return PostInitialReceives();
}

bool VerbsConnection::TakeSendQueueSlot() {
  uint32_t used = sq_used_.load();
  do {
    if (used >= kSendQueueDepth) return false;
  } while (!sq_used_.compare_exchange_weak(used, used + 1));
  return true;
}

Status VerbsConnection::PostRecv(TransferOp* op, void* buf, size_t len) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(buf), static_cast<uint32_t>(len), bufs_mr_->lkey};
  ibv_recv_wr wr{};
  wr.wr_id = reinterpret_cast<uintptr_t>(op);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  if (int rc = ibv_post_recv(id_->qp, &wr, &bad); rc != 0)
    return Status::Error(rc, "ibv_post_recv");
  return Status::Ok();
}

int VerbsConnection::PostSend(TransferOp* op, const void* buf, size_t len) {
  if (!TakeSendQueueSlot()) return EAGAIN;
  ibv_sge sge{reinterpret_cast<uintptr_t>(buf), static_cast<uint32_t>(len), bufs_mr_->lkey};
  ibv_send_wr wr{};
  wr.wr_id = reinterpret_cast<uintptr_t>(op);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(id_->qp, &wr, &bad);
  if (rc != 0) sq_used_--;
  return rc == ENOMEM ? EAGAIN : rc;
}

bool VerbsConnection::Owns(const MemoryRegion& region) const {
  const auto* r = dynamic_cast<const VerbsMemoryRegion*>(&region);
  return r && r->device() == device_.get();
}

int VerbsConnection::PostRma(TransferOp* op) {
  if (!TakeSendQueueSlot()) return EAGAIN;
  const auto& region = static_cast<const VerbsMemoryRegion&>(*op->local);
  ibv_sge sge{reinterpret_cast<uintptr_t>(op->buf), static_cast<uint32_t>(op->len), region.lkey()};
  ibv_send_wr wr{};
  wr.wr_id = reinterpret_cast<uintptr_t>(op);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = op->kind == TransferOp::Kind::kWrite ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = op->remote.addr;
  wr.wr.rdma.rkey = static_cast<uint32_t>(op->remote.key);
  ibv_send_wr* bad = nullptr;
  PublishOp();  // after the last read of op: the completion may free it at once
  int rc = ibv_post_send(id_->qp, &wr, &bad);
  if (rc != 0) sq_used_--;
  return rc == ENOMEM ? EAGAIN : rc;
}

void VerbsConnection::BeginClose() {
  // Moves the queue pair to the error state: everything posted is flushed back as completions,
  // and the peer sees a disconnect.
  rdma_disconnect(id_);
}

void VerbsConnection::EndClose() {
  cm_->Remove(id_);
}

}  // namespace pohmelfs::transport::verbs
