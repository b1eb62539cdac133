#include "transport/verbs/verbs_device.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "transport/framed/framed_connection.h"
#include "transport/verbs/verbs_connection.h"

namespace pohmelfs::transport::verbs {
namespace {

constexpr int kPollBatch = 32;

Status WcStatus(const ibv_wc& wc) {
  switch (wc.status) {
    case IBV_WC_SUCCESS:
      return Status::Ok();
    case IBV_WC_WR_FLUSH_ERR:
      return Status::Error(ECANCELED, "operation flushed (connection closing)");
    case IBV_WC_REM_ACCESS_ERR:
    case IBV_WC_LOC_PROT_ERR:
      return Status::Error(EACCES, ibv_wc_status_str(wc.status));
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR:
      return Status::Error(ETIMEDOUT, ibv_wc_status_str(wc.status));
    default:
      return Status::Error(EIO, ibv_wc_status_str(wc.status));
  }
}

}  // namespace

Result<std::shared_ptr<VerbsDevice>> VerbsDevice::Open(ibv_context* ctx,
                                                       std::chrono::microseconds spin) {
  std::shared_ptr<VerbsDevice> d(new VerbsDevice(spin));
  d->ctx_ = ctx;
  ibv_device_attr attr{};
  if (ibv_query_device(ctx, &attr) == 0) d->max_rd_atomic_ = std::clamp(attr.max_qp_rd_atom, 1, 16);
  d->pd_ = ibv_alloc_pd(ctx);
  if (!d->pd_) return Status::FromErrno("ibv_alloc_pd");
  d->channel_ = ibv_create_comp_channel(ctx);
  if (!d->channel_) return Status::FromErrno("ibv_create_comp_channel");
  // Non-blocking, so that a wake-up between poll() and ibv_get_cq_event cannot block.
  fcntl(d->channel_->fd, F_SETFL, fcntl(d->channel_->fd, F_GETFL) | O_NONBLOCK);
  d->cq_ = ibv_create_cq(ctx, kCqDepth, nullptr, d->channel_, 0);
  if (!d->cq_) return Status::FromErrno("ibv_create_cq");
  d->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (d->wake_fd_ < 0) return Status::FromErrno("eventfd");
  d->StartProgress();
  return d;
}

VerbsDevice::~VerbsDevice() {
  StopProgress();
  if (cq_) ibv_destroy_cq(cq_);
  if (channel_) ibv_destroy_comp_channel(channel_);
  if (pd_) ibv_dealloc_pd(pd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

Result<ibv_mr*> VerbsDevice::RegisterRaw(void* addr, size_t len, int access) {
  ibv_mr* mr = ibv_reg_mr(pd_, addr, len, access);
  if (!mr) return Status::FromErrno("ibv_reg_mr");
  return mr;
}

Result<MemoryRegionPtr> VerbsDevice::Register(void* addr, size_t len) {
  return registrations_.Get(addr, len, [this](void* a, size_t n) -> Result<MemoryRegionPtr> {
    auto mr = RegisterRaw(
        a, n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
    if (!mr.ok()) return mr.status();
    return MemoryRegionPtr(std::make_shared<VerbsMemoryRegion>(shared_from_this(), *mr));
  });
}

int VerbsDevice::PollCompletions() {
  ibv_wc wc[kPollBatch];
  const int n = ibv_poll_cq(cq_, kPollBatch, wc);
  if (n <= 0) return 0;
  AcquirePublished();
  for (int i = 0; i < n; i++) {
    auto* op = reinterpret_cast<TransferOp*>(static_cast<uintptr_t>(wc[i].wr_id));
    if (op->kind != TransferOp::Kind::kRecv)
      static_cast<VerbsConnection*>(op->conn)->SendQueueSlotFreed();
    op->conn->Complete(op, wc[i].byte_len, WcStatus(wc[i]));
  }
  return n;
}

int VerbsDevice::WaitForCompletions(int timeout_ms) {
  // Arm the notification, then look once more: a completion that came in between would not
  // wake the channel.
  if (ibv_req_notify_cq(cq_, 0) != 0) return 0;
  if (int n = PollCompletions(); n > 0) return n;
  pollfd fds[2] = {{channel_->fd, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  if (poll(fds, 2, timeout_ms) > 0) {
    if (fds[0].revents & POLLIN) {
      ibv_cq* ev_cq = nullptr;
      void* ev_ctx = nullptr;
      if (ibv_get_cq_event(channel_, &ev_cq, &ev_ctx) == 0) ibv_ack_cq_events(ev_cq, 1);
    }
    if (fds[1].revents & POLLIN) {
      uint64_t v;
      (void)!read(wake_fd_, &v, sizeof(v));
    }
  }
  return PollCompletions();
}

void VerbsDevice::Wake() {
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

}  // namespace pohmelfs::transport::verbs
