// The FUSE low-level operations of pohmelfs-mount: each maps a kernel request onto FsClient
// calls and replies with the result or -errno. Node ids come from InodeTable.
// Thread-safety: called concurrently by libfuse's worker threads.
#pragma once

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 35
#endif
#include <fuse_lowlevel.h>

#include <mutex>

#include "client/fs_client.h"
#include "client/inode_table.h"
#include "client/mount_options.h"
#include "client/server_set.h"

namespace pohmelfs::client {

struct FuseContext {
  FsClient* fs = nullptr;
  ServerSet* servers = nullptr;
  InodeTable* inodes = nullptr;
  MountOptions opts;
  fuse_session* se = nullptr;  // set once the session exists, for notifications
  // The root's last attributes from a server: answered when no server can be asked, so that
  // the mountpoint can still be opened (pohmelfsctl servers) while every server is down.
  std::mutex root_mu;
  struct stat root_st {};   // GUARDED_BY(root_mu)
  bool root_known = false;  // GUARDED_BY(root_mu)
};

const fuse_lowlevel_ops* PohmelfsFuseOps();

}  // namespace pohmelfs::client
