// One RDMA device (an ibv_context) of the verbs backend, with what its connections share: a
// protection domain, one completion queue for every queue pair, polled by the progress engine
// (which sleeps on the CQ's completion channel when idle), and the registration cache.
//
// Thread-safety: Register and the ProgressEngine methods may be called from any thread;
// completions and message callbacks run on the progress thread.
#pragma once

#include <infiniband/verbs.h>

#include <chrono>
#include <memory>

#include "proto/status.h"
#include "transport/framed/progress_engine.h"
#include "transport/framed/registration_cache.h"
#include "transport/rma.h"

namespace pohmelfs::transport::verbs {

class VerbsDevice;

// A registration of the device (see Rma::Register). Verbs addresses remote memory by virtual
// address and rkey.
class VerbsMemoryRegion final : public MemoryRegion {
 public:
  VerbsMemoryRegion(std::shared_ptr<VerbsDevice> device, ibv_mr* mr)
      : device_(std::move(device)), mr_(mr) {}
  ~VerbsMemoryRegion() override { ibv_dereg_mr(mr_); }
  void* base() const override { return mr_->addr; }
  size_t length() const override { return mr_->length; }
  uint64_t key() const override { return mr_->rkey; }
  uint64_t RemoteAddress(const void* p) const override { return reinterpret_cast<uintptr_t>(p); }
  uint32_t lkey() const { return mr_->lkey; }
  const VerbsDevice* device() const { return device_.get(); }

 private:
  std::shared_ptr<VerbsDevice> device_;
  ibv_mr* mr_;
};

class VerbsDevice final : public ProgressEngine, public std::enable_shared_from_this<VerbsDevice> {
 public:
  static constexpr int kCqDepth = 4096;

  // Allocates the PD, CQ and completion channel on ctx (owned by librdmacm) and starts the
  // progress thread.
  static Result<std::shared_ptr<VerbsDevice>> Open(ibv_context* ctx,
                                                   std::chrono::microseconds spin);
  ~VerbsDevice() override;

  ibv_context* context() const { return ctx_; }
  ibv_pd* pd() const { return pd_; }
  ibv_cq* cq() const { return cq_; }
  // RDMA READs a queue pair may have outstanding as initiator or responder.
  int max_rd_atomic() const { return max_rd_atomic_; }

  Result<MemoryRegionPtr> Register(void* addr, size_t len);
  // A registration outside the cache (a connection's own buffers).
  Result<ibv_mr*> RegisterRaw(void* addr, size_t len, int access);

  void Stop() { StopProgress(); }

 private:
  explicit VerbsDevice(std::chrono::microseconds spin) : ProgressEngine(spin) {}
  int PollCompletions() override;
  int WaitForCompletions(int timeout_ms) override;
  void Wake() override;

  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  int wake_fd_ = -1;
  int max_rd_atomic_ = 1;
  RegistrationCache registrations_;
};

}  // namespace pohmelfs::transport::verbs
