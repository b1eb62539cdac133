// FUSE node ids <-> object ids, with the kernel's lookup counts. A node id is derived from the
// 128-bit object id (so st_ino is stable across forget and remount); the rare collision gets a
// counter-based id. Entries are dropped when the kernel forgets them, so the table is bounded
// by what the kernel caches, and no file descriptor is held per inode.
// Thread-safety: internally locked.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "proto/codec.h"

namespace pohmelfs::client {

class InodeTable {
 public:
  static constexpr uint64_t kRootId = 1;  // FUSE_ROOT_ID

  explicit InodeTable(const proto::Oid& root);
  // The node id for oid, adding `refs` lookups (0: only find or assign the id).
  uint64_t Ref(const proto::Oid& oid, uint64_t refs = 1);
  // The st_ino to report for oid without taking a reference (plain readdir).
  uint64_t InoFor(const proto::Oid& oid);
  // The node id the kernel knows oid by, if it knows it.
  std::optional<uint64_t> Find(const proto::Oid& oid);
  void Forget(uint64_t nodeid, uint64_t n);
  std::optional<proto::Oid> Get(uint64_t nodeid);
  size_t size();

 private:
  static uint64_t Derive(const proto::Oid& oid);
  struct Node {
    proto::Oid oid;
    uint64_t lookups = 0;
  };
  std::mutex mu_;
  std::unordered_map<uint64_t, Node> nodes_;                         // GUARDED_BY(mu_)
  std::unordered_map<proto::Oid, uint64_t, proto::OidHash> by_oid_;  // GUARDED_BY(mu_)
  uint64_t next_fallback_ = 1ull << 63;                              // GUARDED_BY(mu_)
};

}  // namespace pohmelfs::client
