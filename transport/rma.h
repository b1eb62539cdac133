// One-sided RMA (DESIGN.md item 5), offered by the backends that have it (ofi, later verbs):
// memory is registered once, then written into or read from a peer's registered memory, with a
// completion callback. TCP has none (Connection::rma() is null there): bulk data travels as
// message payload.
//
// Thread-safety: every method may be called from any thread. Completion callbacks run on the
// backend's progress thread and must not block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "proto/status.h"

namespace pohmelfs::transport {

// A registered buffer. A peer addresses bytes in it as (RemoteAddress(p), key()).
class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  virtual void* base() const = 0;
  virtual size_t length() const = 0;
  virtual uint64_t key() const = 0;
  // The address a peer puts in an RMA to reach p (inside this region): p itself or its offset
  // from base(), whichever the provider wants.
  virtual uint64_t RemoteAddress(const void* p) const = 0;
};
using MemoryRegionPtr = std::shared_ptr<MemoryRegion>;

// Where in a peer's registered memory an RMA goes.
struct RemoteBuffer {
  uint64_t addr = 0;
  uint64_t key = 0;
};

using RmaDone = std::function<void(const Status&)>;

// Order: an RMA is posted before every message sent on the connection after the call that
// queued it returned.
class Rma {
 public:
  virtual ~Rma() = default;
  // Registers [addr, addr + len) for local use and for the peer's reads and writes. Cached by
  // range: registering the same range again returns the same region without a new
  // registration; a region is deregistered when the last reference goes.
  virtual Result<MemoryRegionPtr> Register(void* addr, size_t len) = 0;
  // Writes len bytes from src (inside local) to remote; done runs once when the data is in
  // the peer's memory, or with the error (the connection closes on errors).
  virtual Status Write(const MemoryRegionPtr& local, const void* src, size_t len,
                       RemoteBuffer remote, RmaDone done) = 0;
  // A write whose done may run earlier: once any message sent on this connection after done
  // is certain to reach the peer after the data is in its memory. Cheaper where the fabric
  // orders sends after writes (libfabric's FI_ORDER_SAW, verbs RC): one acknowledgement less.
  // The default is Write.
  virtual Status WriteBeforeNextSend(const MemoryRegionPtr& local, const void* src, size_t len,
                                     RemoteBuffer remote, RmaDone done) {
    return Write(local, src, len, remote, std::move(done));
  }
  // Reads len bytes from remote into dst (inside local).
  virtual Status Read(const MemoryRegionPtr& local, void* dst, size_t len, RemoteBuffer remote,
                      RmaDone done) = 0;
};

}  // namespace pohmelfs::transport
