// Memory registrations kept by address range (register once, reuse): the same range asked
// again returns the same region while anyone still holds it; a region is deregistered when the
// last reference goes.
//
// Thread-safety: Get may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "transport/rma.h"

namespace pohmelfs::transport {

class RegistrationCache {
 public:
  using Make = std::function<Result<MemoryRegionPtr>(void* addr, size_t len)>;

  Result<MemoryRegionPtr> Get(void* addr, size_t len, const Make& make) {
    const auto key = std::make_pair(reinterpret_cast<uintptr_t>(addr), len);
    std::lock_guard lk(mu_);
    if (auto it = regions_.find(key); it != regions_.end()) {
      if (auto live = it->second.lock()) return live;
    }
    auto made = make(addr, len);
    if (!made.ok()) return made.status();
    regions_[key] = *made;
    // Forget dead ranges now and then so that the map does not grow without bound.
    if (regions_.size() > 1024)
      std::erase_if(regions_, [](const auto& e) { return e.second.expired(); });
    return *made;
  }

 private:
  std::mutex mu_;
  std::map<std::pair<uintptr_t, size_t>, std::weak_ptr<MemoryRegion>> regions_;  // GUARDED_BY(mu_)
};

}  // namespace pohmelfs::transport
