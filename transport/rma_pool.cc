#include "transport/rma_pool.h"

#include <algorithm>

#include "transport/transport.h"

namespace pohmelfs::transport {

std::shared_ptr<RmaPool> RmaPool::Create(size_t buffers, size_t bytes_each) {
  return std::shared_ptr<RmaPool>(new RmaPool(buffers, bytes_each));
}

RmaPool::RmaPool(size_t buffers, size_t bytes_each) : bytes_(bytes_each), slots_(buffers) {
  for (size_t i = 0; i < buffers; i++) {
    slots_[i].data = std::make_unique<uint8_t[]>(bytes_each);
    free_.push_back(i);
  }
}

RmaPool::LeasePtr RmaPool::Acquire(std::chrono::milliseconds wait) {
  std::unique_lock lk(mu_);
  const auto now = std::chrono::steady_clock::now();
  std::erase_if(held_, [&](const Held& h) {
    if (h.until > now) return false;
    free_.push_back(h.slot);
    return true;
  });
  if (!cv_.wait_for(lk, wait, [&] { return !free_.empty(); })) return nullptr;
  const size_t slot = free_.back();
  free_.pop_back();
  return LeasePtr(new Lease(shared_from_this(), slot));
}

void RmaPool::Hold(const LeasePtr& lease, std::chrono::seconds duration) {
  std::lock_guard lk(mu_);
  if (lease->held_) return;
  lease->held_ = true;
  held_.push_back({lease->slot_, std::chrono::steady_clock::now() + duration});
}

void RmaPool::Release(size_t slot) {
  {
    std::lock_guard lk(mu_);
    free_.push_back(slot);
  }
  cv_.notify_one();
}

RmaPool::Lease::~Lease() {
  if (!held_) pool_->Release(slot_);
}

uint8_t* RmaPool::Lease::data() const {
  return pool_->slots_[slot_].data.get();
}

Result<MemoryRegionPtr> RmaPool::Lease::RegionFor(Rma& rma) {
  Slot& s = pool_->slots_[slot_];
  auto region = rma.Register(s.data.get(), pool_->bytes_);
  if (!region.ok()) return region.status();
  // The transport's cache returns the same region while someone holds it: keep it.
  if (std::find(s.regions.begin(), s.regions.end(), *region) == s.regions.end())
    s.regions.push_back(*region);
  return region;
}

Status RmaWriteThenSend(Connection& conn, const RmaPool::LeasePtr& lease, size_t len,
                        RemoteBuffer remote) {
  Rma* rma = conn.rma();
  if (!rma) return Status::Error(EOPNOTSUPP, "the connection has no RMA");
  auto region = lease->RegionFor(*rma);
  if (!region.ok()) return region.status();
  return rma->WriteBeforeNextSend(*region, lease->data(), len, remote,
                                  [lease](const Status&) {});  // holds the buffer until then
}

Status RmaAndWait(Connection& conn, bool write, const RmaPool::LeasePtr& lease, size_t len,
                  RemoteBuffer remote, std::chrono::milliseconds bound) {
  Rma* rma = conn.rma();
  if (!rma) return Status::Error(EOPNOTSUPP, "the connection has no RMA");
  auto region = lease->RegionFor(*rma);
  if (!region.ok()) return region.status();
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Status status;
  };
  auto w = std::make_shared<Wait>();
  RmaDone done = [w, lease](const Status& s) {
    std::lock_guard lk(w->mu);
    w->done = true;
    w->status = s;
    w->cv.notify_all();
  };
  // A write is followed by the reply that tells the peer about it: ordering is enough.
  Status posted =
      write ? rma->WriteBeforeNextSend(*region, lease->data(), len, remote, std::move(done))
            : rma->Read(*region, lease->data(), len, remote, std::move(done));
  if (!posted.ok()) return posted;
  std::unique_lock lk(w->mu);
  if (!w->cv.wait_for(lk, bound, [&] { return w->done; })) {
    lk.unlock();
    conn.Close(Status::Error(ETIMEDOUT, "RMA did not complete in time"));
    return Status::Error(ETIMEDOUT, "RMA did not complete in time");
  }
  return w->status;
}

}  // namespace pohmelfs::transport
