#include "client/inode_table.h"

#include <cstring>

namespace pohmelfs::client {

InodeTable::InodeTable(const proto::Oid& root) {
  nodes_[kRootId] = Node{root, 1};  // never forgotten
  by_oid_[root] = kRootId;
}

uint64_t InodeTable::Ref(const proto::Oid& oid, uint64_t refs) {
  std::lock_guard lk(mu_);
  auto it = by_oid_.find(oid);
  if (it != by_oid_.end()) {
    nodes_[it->second].lookups += refs;
    return it->second;
  }
  uint64_t id = Derive(oid);
  if (id <= kRootId || nodes_.count(id)) {
    do {
      id = next_fallback_++;
    } while (nodes_.count(id));
  }
  nodes_[id] = Node{oid, refs};
  by_oid_[oid] = id;
  return id;
}

uint64_t InodeTable::Derive(const proto::Oid& oid) {
  uint64_t a, b;
  std::memcpy(&a, oid.b.data(), 8);
  std::memcpy(&b, oid.b.data() + 8, 8);
  return (a ^ b) & ~(1ull << 63);
}

uint64_t InodeTable::InoFor(const proto::Oid& oid) {
  std::lock_guard lk(mu_);
  auto it = by_oid_.find(oid);
  return it != by_oid_.end() ? it->second : Derive(oid);
}

std::optional<uint64_t> InodeTable::Find(const proto::Oid& oid) {
  std::lock_guard lk(mu_);
  auto it = by_oid_.find(oid);
  if (it == by_oid_.end()) return std::nullopt;
  return it->second;
}

void InodeTable::Forget(uint64_t nodeid, uint64_t n) {
  if (nodeid == kRootId) return;
  std::lock_guard lk(mu_);
  auto it = nodes_.find(nodeid);
  if (it == nodes_.end()) return;
  if (it->second.lookups > n) {
    it->second.lookups -= n;
    return;
  }
  by_oid_.erase(it->second.oid);
  nodes_.erase(it);
}

std::optional<proto::Oid> InodeTable::Get(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  auto it = nodes_.find(nodeid);
  if (it == nodes_.end()) return std::nullopt;
  return it->second.oid;
}

size_t InodeTable::size() {
  std::lock_guard lk(mu_);
  return nodes_.size();
}

}  // namespace pohmelfs::client
