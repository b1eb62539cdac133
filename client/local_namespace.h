// What a mount knows on its own about directories it created under a write lease: their whole
// contents (so a lookup there needs no server), and the attributes of objects it created and
// has not sent yet (client/meta_queue.h). Forgotten when the directory's lease is broken.
// Thread-safety: internally locked.
#pragma once

#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>

#include "client/fs_client.h"

namespace pohmelfs::client {

class LocalNamespace {
 public:
  struct Known {
    Oid oid;
    uint32_t type = 0;  // S_IFMT bits
  };
  // dir's every entry is known from now on (it is new, or empty).
  void AddCompleteDir(const Oid& dir) {
    std::lock_guard lk(mu_);
    dirs_[dir];
  }
  // nullopt: dir is not known completely. Otherwise the entry, or nullopt inside when there
  // is no such name.
  std::optional<std::optional<Known>> Find(const Oid& dir, const std::string& name) {
    std::lock_guard lk(mu_);
    auto d = dirs_.find(dir);
    if (d == dirs_.end()) return std::nullopt;
    auto e = d->second.find(name);
    if (e == d->second.end()) return std::optional<Known>{};
    return std::optional<Known>{e->second};
  }
  bool IsComplete(const Oid& dir) {
    std::lock_guard lk(mu_);
    return dirs_.count(dir) > 0;
  }
  bool IsEmpty(const Oid& dir) {
    std::lock_guard lk(mu_);
    auto d = dirs_.find(dir);
    return d != dirs_.end() && d->second.empty();
  }
  void AddEntry(const Oid& dir, const std::string& name, const Oid& oid, uint32_t mode) {
    std::lock_guard lk(mu_);
    auto d = dirs_.find(dir);
    if (d != dirs_.end()) d->second[name] = Known{oid, mode & S_IFMT};
  }
  void RemoveEntry(const Oid& dir, const std::string& name) {
    std::lock_guard lk(mu_);
    auto d = dirs_.find(dir);
    if (d != dirs_.end()) d->second.erase(name);
  }
  void Forget(const Oid& dir) {
    std::lock_guard lk(mu_);
    dirs_.erase(dir);
  }
  // After a change this mount does not follow name by name (MKPATH, RMTREE).
  void ForgetAll() {
    std::lock_guard lk(mu_);
    dirs_.clear();
    attrs_.clear();
  }

  void SetAttrs(const Oid& oid, const Entry& e) {
    std::lock_guard lk(mu_);
    attrs_[oid] = e;
  }
  std::optional<Entry> Attrs(const Oid& oid) {
    std::lock_guard lk(mu_);
    auto it = attrs_.find(oid);
    if (it == attrs_.end()) return std::nullopt;
    return it->second;
  }
  void DropAttrs(const Oid& oid) {
    std::lock_guard lk(mu_);
    attrs_.erase(oid);
  }

  // Extended attributes known to be absent (asked under a lease).
  void NoteXattrAbsent(const Oid& oid, const std::string& name) {
    std::lock_guard lk(mu_);
    absent_xattrs_[oid].insert(name);
  }
  bool XattrAbsent(const Oid& oid, const std::string& name) {
    std::lock_guard lk(mu_);
    auto it = absent_xattrs_.find(oid);
    return it != absent_xattrs_.end() && it->second.count(name) > 0;
  }
  void ForgetXattrs(const Oid& oid) {
    std::lock_guard lk(mu_);
    absent_xattrs_.erase(oid);
  }

 private:
  std::mutex mu_;
  std::unordered_map<Oid, std::unordered_map<std::string, Known>, proto::OidHash>
      dirs_;                                                                      // GUARDED_BY(mu_)
  std::unordered_map<Oid, Entry, proto::OidHash> attrs_;                          // GUARDED_BY(mu_)
  std::unordered_map<Oid, std::set<std::string>, proto::OidHash> absent_xattrs_;  // GUARDED_BY(mu_)
};

}  // namespace pohmelfs::client
