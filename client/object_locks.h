// Striped reader-writer locks keyed by object id, inside one client. Requests that change an
// object hold its stripe shared while they travel to the replicas; resync holds it exclusive
// while it compares and copies that object, so that a copy never interleaves with a write and
// leaves the two replicas with different bytes.
// Thread-safety: thread-safe.
#pragma once

#include <algorithm>
#include <array>
#include <shared_mutex>
#include <vector>

#include "proto/codec.h"

namespace pohmelfs::client {

class ObjectLocks {
 public:
  static constexpr size_t kStripes = 1024;

  // Shared locks on the stripes of `oids` (deduplicated, taken in stripe order).
  class Shared {
   public:
    Shared(ObjectLocks* l, const std::vector<proto::Oid>& oids) : l_(l) {
      for (const auto& o : oids) stripes_.push_back(Stripe(o));
      std::sort(stripes_.begin(), stripes_.end());
      stripes_.erase(std::unique(stripes_.begin(), stripes_.end()), stripes_.end());
      for (size_t s : stripes_) l_->mu_[s].lock_shared();
    }
    ~Shared() {
      for (size_t s : stripes_) l_->mu_[s].unlock_shared();
    }
    Shared(const Shared&) = delete;
    Shared& operator=(const Shared&) = delete;

   private:
    ObjectLocks* l_;
    std::vector<size_t> stripes_;
  };

  std::unique_lock<std::shared_mutex> Exclusive(const proto::Oid& oid) {
    return std::unique_lock(mu_[Stripe(oid)]);
  }

 private:
  static size_t Stripe(const proto::Oid& oid) { return proto::OidHash{}(oid) % kStripes; }
  std::array<std::shared_mutex, kStripes> mu_;
};

}  // namespace pohmelfs::client
