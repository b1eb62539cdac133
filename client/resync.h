// Brings one replica (stale) up to date from another (good), over the ordinary protocol:
// namespace (names, object ids, hard links, deletions), data, attributes and xattrs. Objects
// whose versions already agree are skipped, so a replica that missed a few writes costs a walk
// of the tree plus a copy of what changed.
//
// Runs while the mount keeps writing to both replicas: every directory is reconciled, and
// every object copied, under that object's exclusive ObjectLocks stripe, so no write of this
// client interleaves with a copy. A directory whose new id is still used elsewhere on the
// stale replica (a directory moved while it was down) is finished by a later pass.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "client/fs_client.h"
#include "client/object_locks.h"

namespace pohmelfs::client {

struct ResyncStats {
  uint64_t dirs = 0, objects = 0, created = 0, removed = 0, copied = 0, bytes = 0;
  int passes = 0;
};

// REQUIRES: both clients talk to servers of the same export tree (same root id).
class Resyncer {
 public:
  // With force, every object is copied even where the versions agree (after a split brain
  // the same version may stand for different contents).
  Resyncer(FsClient& good, FsClient& stale, ObjectLocks& locks, const std::atomic<bool>& cancel,
           ResyncStats* stats, bool force = false)
      : good_(good), stale_(stale), locks_(locks), cancel_(cancel), st_(stats), force_(force) {}

  // Walks the whole tree, again while entries had to be left for a later pass.
  Status FullSync();
  // Looks again at objects that writes made during the sync may have left behind (a write the
  // stale replica refused because the sync had not created its target yet): each directory is
  // reconciled again, each other object compared again.
  Status Redo(const std::vector<Oid>& oids);

 private:
  Result<int> Pass();
  Status Walk(std::deque<Oid> dirs);
  Status ReconcileDir(const Oid& dir, std::vector<std::pair<Entry, bool>>* children);
  Status CreateLike(const Oid& dir, const std::string& name, const Entry& ge);
  Status SyncObject(const Oid& oid, bool created);
  Status CopyData(const Oid& oid, uint64_t size);
  Status CopyXattrs(const Oid& oid);

  FsClient& good_;
  FsClient& stale_;
  ObjectLocks& locks_;
  const std::atomic<bool>& cancel_;
  ResyncStats* st_;
  const bool force_;
  int deferred_ = 0;
};

}  // namespace pohmelfs::client
