// A pool of equal staging buffers for RMA (bulk data of READ_RMA and WRITE_RMA on both sides),
// allocated once. A buffer is registered with a connection's transport the first time it is
// used there, and the registration is kept with the buffer, so every later use on that
// transport (every replica's connection, when they share it) costs no registration.
//
// Thread-safety: Acquire may be called from any thread; a Lease is used by one thread at a
// time (its holder, then the RMA completion it was handed to).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "transport/rma.h"

namespace pohmelfs::transport {

class Connection;

class RmaPool : public std::enable_shared_from_this<RmaPool> {
 public:
  class Lease;
  using LeasePtr = std::shared_ptr<Lease>;

  static std::shared_ptr<RmaPool> Create(size_t buffers, size_t bytes_each);

  // A free buffer, waiting at most `wait` for one; null when none came free in time.
  LeasePtr Acquire(std::chrono::milliseconds wait);
  // Keeps lease out of use for `duration` (a peer may still move data in or out of it).
  void Hold(const LeasePtr& lease, std::chrono::seconds duration);
  size_t buffer_bytes() const { return bytes_; }

  class Lease {
   public:
    ~Lease();  // gives the buffer back
    uint8_t* data() const;
    // The buffer's registration on rma's transport (registered on first use there).
    Result<MemoryRegionPtr> RegionFor(Rma& rma);
    RmaPool& pool() const { return *pool_; }

   private:
    friend class RmaPool;
    Lease(std::shared_ptr<RmaPool> pool, size_t slot) : pool_(std::move(pool)), slot_(slot) {}
    std::shared_ptr<RmaPool> pool_;
    size_t slot_;
    bool held_ = false;  // handed to RmaPool::Hold: not given back on destruction
  };

 private:
  RmaPool(size_t buffers, size_t bytes_each);
  void Release(size_t slot);

  struct Slot {
    std::unique_ptr<uint8_t[]> data;
    std::vector<MemoryRegionPtr> regions;  // one per transport it was used on
  };
  const size_t bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> slots_;
  std::vector<size_t> free_;  // GUARDED_BY(mu_)
  struct Held {
    size_t slot;
    std::chrono::steady_clock::time_point until;
  };
  std::vector<Held> held_;  // GUARDED_BY(mu_)
};

// Runs one RMA (a write of len bytes from the lease's buffer, or a read into it) and waits
// for its completion, at most `bound` (a write's completion means that a message sent next on
// the connection reaches the peer after the data: Rma::WriteBeforeNextSend); the lease is held
// until the completion even if the wait gives up (ETIMEDOUT; the connection is then closed so the
// operation is flushed).
Status RmaAndWait(Connection& conn, bool write, const RmaPool::LeasePtr& lease, size_t len,
                  RemoteBuffer remote, std::chrono::milliseconds bound);

// Posts an RMA write of len bytes from the lease's buffer and returns without waiting: a
// message sent next on the connection (the reply that announces the data) reaches the peer
// after the data. The lease is held until the write completes; an error closes the
// connection.
Status RmaWriteThenSend(Connection& conn, const RmaPool::LeasePtr& lease, size_t len,
                        RemoteBuffer remote);

}  // namespace pohmelfs::transport
