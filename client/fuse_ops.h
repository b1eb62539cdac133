// The FUSE low-level operations of pohmelfs-mount: each maps a kernel request onto FsClient
// calls and replies with the result or -errno. Node ids come from InodeTable.
// Thread-safety: called concurrently by libfuse's worker threads.
#pragma once

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 35
#endif
#include <fuse_lowlevel.h>

#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>

#include "client/fs_client.h"
#include "client/inode_table.h"
#include "client/lease_manager.h"
#include "client/local_namespace.h"
#include "client/meta_queue.h"
#include "client/mount_options.h"
#include "client/server_set.h"
#include "client/write_cache.h"

namespace pohmelfs::client {

struct FuseContext {
  FsClient* fs = nullptr;
  ServerSet* servers = nullptr;
  InodeTable* inodes = nullptr;
  LeaseManager* leases = nullptr;   // null with -o leases=0
  WriteCache* cache = nullptr;      // null with -o writeback=0 or leases=0
  MetaQueue* meta = nullptr;        // likewise: delayed namespace changes
  LocalNamespace* local = nullptr;  // likewise: what this mount knows by itself
  MountOptions opts;
  std::atomic<fuse_session*> se{nullptr};  // set once the session exists, for notifications
  // The root's last attributes from a server: answered when no server can be asked, so that
  // the mountpoint can still be opened (pohmelfsctl servers) while every server is down.
  std::mutex root_mu;
  struct stat root_st {};   // GUARDED_BY(root_mu)
  bool root_known = false;  // GUARDED_BY(root_mu)
  // Names the kernel was told to keep for long (a lease on their directory), per directory
  // node: what a break of that directory's lease invalidates.
  std::mutex names_mu;
  std::unordered_map<uint64_t, std::set<std::string>> long_names;  // GUARDED_BY(names_mu)
  std::mutex queued_mu;
  std::unordered_map<Oid, int, proto::OidHash> queued_opens;  // GUARDED_BY(queued_mu)
  // The lock requests that placed this mount's locks, in order, per object: replayed to a new
  // lease authority after a failover (an unlock of a whole file by its owner forgets them), and
  // the files whose close must send an unlock.
  std::mutex locked_mu;
  struct HeldLock {
    uint64_t owner;
    uint32_t type, flags, pid;
    uint64_t start, length;
  };
  std::unordered_map<Oid, std::vector<HeldLock>, proto::OidHash> held_locks;  // locked_mu
};

// The lease hooks of a mount: flush delayed writes, drop kernel caches, note a lost lease.
LeaseManager::Hooks FuseLeaseHooks(FuseContext* ctx);

const fuse_lowlevel_ops* PohmelfsFuseOps();

}  // namespace pohmelfs::client
