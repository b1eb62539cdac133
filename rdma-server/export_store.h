// The export: an ordinary directory tree plus a hidden index that maps object ids to objects.
//
// On disk (DESIGN.md item 1):
//   EXPORT/.pohmelfs/ids/<hex>   hard link to every non-directory object (files, symlinks,
//                                fifos, sockets, devices)
//   EXPORT/.pohmelfs/dirs/<hex>  symlink whose target records "<parent-hex>/<name>" of every
//                                directory (the root records "/")
//   EXPORT/.pohmelfs/server-id   16 random bytes written at the first start: the export's
//                                identity (HELLO server_id)
//   EXPORT/.pohmelfs/stale/<hex> empty file per peer server marked stale (REPLICA MARK)
//   trusted.pohmelfs.id          xattr on every object: its 16-byte id
//   trusted.pohmelfs.version     xattr: the object's change counter, 8 bytes little-endian
//                                (absent means 0)
// An object found without an id (created on the server by hand) gets a fresh one when first
// looked up. Every access below the export goes through a directory fd obtained from the root
// fd with openat2(RESOLVE_BENEATH) and single, validated names, so no name, id or symlink can
// reach outside the export.
//
// Thread-safety: all methods may be called concurrently; the fd caches are internally locked.
#pragma once

#include <sys/stat.h>

#include <array>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "proto/codec.h"
#include "proto/status.h"
#include "proto/unique_fd.h"

namespace pohmelfs::server {

using proto::Oid;
using SharedFd = std::shared_ptr<UniqueFd>;

inline constexpr char kIdXattr[] = "trusted.pohmelfs.id";
inline constexpr char kVersionXattr[] = "trusted.pohmelfs.version";
inline constexpr char kHiddenDir[] = ".pohmelfs";
inline constexpr char kPrivateXattrPrefix[] = "trusted.pohmelfs.";

// openat2 with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS: path cannot leave dirfd's subtree.
int OpenBeneath(int dirfd, const std::string& path, uint64_t flags);

// A bounded LRU of id -> fd. Evicted fds close when their last user drops them.
class FdCache {
 public:
  explicit FdCache(size_t capacity) : capacity_(capacity) {}
  SharedFd Get(const Oid& oid);
  void Put(const Oid& oid, SharedFd fd);
  void Erase(const Oid& oid);

 private:
  using Entry = std::pair<Oid, SharedFd>;
  size_t capacity_;
  std::mutex mu_;
  std::list<Entry> lru_;                                                       // GUARDED_BY(mu_)
  std::unordered_map<Oid, std::list<Entry>::iterator, proto::OidHash> index_;  // GUARDED_BY(mu_)
};

class ExportStore {
 public:
  // Opens (and on first use initialises) the export at dir.
  static Result<std::unique_ptr<ExportStore>> Open(const std::string& dir);

  int root_fd() const { return root_.get(); }
  int ids_fd() const { return ids_.get(); }
  // This export's identity, stable across restarts (EXPORT/.pohmelfs/server-id).
  const Oid& server_id() const { return server_id_; }

  // True when name may not be created, looked up or removed in directory parent: the hidden
  // index folder in the root.
  static bool IsHidden(const Oid& parent, const std::string& name) {
    return parent == Oid::Root() && name == kHiddenDir;
  }

  // An O_PATH fd of the directory oid (ENOENT if gone, ENOTDIR if not a directory).
  Result<SharedFd> OpenDir(const Oid& oid);
  // An fd for IO on the regular file oid (O_RDWR, or O_RDONLY where writing is refused).
  Result<SharedFd> OpenFile(const Oid& oid);
  // Whether oid is a directory (looks at the index).
  Result<bool> IsDir(const Oid& oid);

  // lstat of any object by id. For non-directories nlink excludes the index link.
  Result<struct stat> StatById(const Oid& oid);
  // lstat of dirfd/name with the same nlink adjustment.
  Result<struct stat> StatAt(int dirfd, const std::string& name);

  // The id of dirfd/name; assigns and indexes one if the object has none. parent is the id of
  // dirfd (recorded for directories).
  Result<Oid> IdOf(int dirfd, const std::string& name, const struct stat& st, const Oid& parent);
  // Only reads the id (ENODATA when there is none).
  Result<Oid> ReadId(int dirfd, const std::string& name);

  // Records a new object: sets its id xattr and adds its index entry.
  Status Attach(int dirfd, const std::string& name, bool is_dir, const Oid& oid, const Oid& parent);
  // Adds the index entry of an object whose id xattr is set.
  Status Index(int dirfd, const std::string& name, bool is_dir, const Oid& oid, const Oid& parent);
  // Updates a directory's record after a rename.
  Status RecordDirMove(const Oid& oid, const Oid& new_parent, const std::string& new_name);
  // Drops the index entry of a removed directory.
  void DetachDir(const Oid& oid);
  // Drops the index link of a non-directory whose last name is gone, unless it is open
  // (then it is dropped at the last Release).
  void MaybeDetachFile(const Oid& oid);

  // Serialises index changes of one object (LINK and OPEN against the last-name detach) and the
  // read-modify-write of its version.
  std::mutex& ObjectLock(const Oid& oid) { return object_locks_[proto::OidHash()(oid) % kLocks]; }
  // Serialises directory renames with the update of their records.
  std::mutex& DirRenameLock() { return dir_rename_mu_; }

  // Open handles, so that an unlinked but open file stays readable until its last release.
  void Opened(const Oid& oid);
  void Released(const Oid& oid);

  // "/proc/self/fd/N" or "/proc/self/fd/N/name": paths for the xattr and chmod calls that have
  // no *at form on Linux 6.1; N is an fd below the export and name a validated component.
  static std::string FdPath(int fd);
  static std::string FdPath(int fd, const std::string& name);
  // Where an object's xattrs are read and written: a path (l* calls unless follow), or an fd
  // open for IO (f* calls).
  struct XattrTarget {
    std::string path;
    bool follow;  // use getxattr (directories) rather than lgetxattr
    SharedFd keep;
    int fd;  // >= 0: use the f* calls on this fd; path is unused

    static XattrTarget OfPath(std::string path, bool follow, SharedFd keep = nullptr) {
      return {std::move(path), follow, std::move(keep), -1};
    }
    static XattrTarget OfFd(int fd) { return {{}, false, nullptr, fd}; }
    ssize_t Get(const char* name, void* value, size_t size) const;
    int Set(const char* name, const void* value, size_t size, int flags) const;
    ssize_t List(char* list, size_t size) const;
    int Remove(const char* name) const;
  };
  // Any object by id (looks at the index to tell directories).
  Result<XattrTarget> XattrPath(const Oid& oid);
  // A directory by its fd.
  static XattrTarget DirXattrs(SharedFd dir);
  // A non-directory by its index link.
  XattrTarget IndexXattrs(const Oid& oid) const;

  // Object versions (kVersionXattr). Every successful change to an object's data, attributes or
  // xattrs adds one; a directory's entries are not part of its version.
  static Result<uint64_t> ReadVersion(const XattrTarget& t);
  // The version of dirfd/name (not following a symlink), or of the object oid.
  static Result<uint64_t> VersionAt(int dirfd, const std::string& name);
  Result<uint64_t> VersionById(const Oid& oid);
  // Adds one to the version of oid (whose xattrs t reaches) under ObjectLock(oid).
  Status BumpVersion(const Oid& oid, const XattrTarget& t);
  // The same for a caller that holds ObjectLock(oid).
  static Status BumpVersionLocked(const XattrTarget& t);
  // Sets the version of oid to exactly version (SETATTR_VERSION), under ObjectLock(oid).
  Status SetVersion(const Oid& oid, const XattrTarget& t, uint64_t version);

  // Stale-replica markers (REPLICA), durable when these return. Clearing an absent marker
  // succeeds.
  Status MarkStale(const Oid& peer);
  Status ClearStale(const Oid& peer);
  // The marked peers in id order, at most max of them; names that are not ids are ignored.
  Result<std::vector<Oid>> ListStale(size_t max);

 private:
  ExportStore() = default;
  Status Init(const std::string& dir);
  Status LoadServerId();
  void SweepOrphans();
  Result<SharedFd> ResolveDir(const Oid& oid, int depth);

  UniqueFd root_, hidden_, ids_, dirs_, stale_;
  Oid server_id_;
  FdCache dir_cache_{4096};
  FdCache file_cache_{1024};
  static constexpr size_t kLocks = 64;
  std::array<std::mutex, kLocks> object_locks_;
  std::mutex dir_rename_mu_;
  std::mutex open_mu_;
  std::unordered_map<Oid, int, proto::OidHash> open_count_;  // GUARDED_BY(open_mu_)
  std::unordered_map<Oid, bool, proto::OidHash> orphans_;    // GUARDED_BY(open_mu_)
};

}  // namespace pohmelfs::server
