#include "rdma-server/export_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <spdlog/spdlog.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>

namespace pohmelfs::server {
namespace {

// Directory records nest one per level; deeper than this is treated as a corrupt index.
constexpr int kMaxDepth = 4096;

constexpr char kServerIdFile[] = "server-id";
constexpr char kStaleDir[] = "stale";

// fsync of the directory dirfd (which may be an O_PATH fd), so that entries just created or
// removed in it are durable.
Status SyncDir(int dirfd) {
  UniqueFd d(openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d.valid() || fsync(d.get()) != 0) return Status::FromErrno("sync directory");
  return Status::Ok();
}

Result<Oid> ReadServerId(int hidden) {
  UniqueFd fd(openat(hidden, kServerIdFile, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open .pohmelfs/server-id");
  uint8_t buf[17];  // one more than an id, to notice a longer file
  ssize_t n = pread(fd.get(), buf, sizeof(buf), 0);
  if (n < 0) return Status::FromErrno("read .pohmelfs/server-id");
  Oid id;
  if (n == 16) std::memcpy(id.b.data(), buf, 16);
  if (id.IsZero()) return Status::Error(EIO, "corrupt .pohmelfs/server-id (16 bytes expected)");
  return id;
}

// Writes a fresh id to a temporary file, syncs it and renames it into place, unless a
// concurrent start got there first (then that id stands); syncs the directory after.
Status CreateServerId(int hidden) {
  std::string tmp = std::string(kServerIdFile) + ".tmp" + std::to_string(getpid());
  unlinkat(hidden, tmp.c_str(), 0);
  UniqueFd fd(
      openat(hidden, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::FromErrno("create .pohmelfs/server-id");
  Oid id = Oid::Random();
  Status s;
  errno = 0;  // a short write sets none (FromErrno then says EIO)
  if (write(fd.get(), id.b.data(), id.b.size()) != static_cast<ssize_t>(id.b.size()) ||
      fsync(fd.get()) != 0) {
    s = Status::FromErrno("write .pohmelfs/server-id");
  } else if (renameat2(hidden, tmp.c_str(), hidden, kServerIdFile, RENAME_NOREPLACE) == 0) {
    spdlog::info("export: created server id {}", id.Hex());
  } else if (errno != EEXIST) {
    s = Status::FromErrno("rename .pohmelfs/server-id");
  }
  unlinkat(hidden, tmp.c_str(), 0);  // still there when the rename did not happen
  if (!s.ok()) return s;
  return SyncDir(hidden);
}

Status WriteVersion(const ExportStore::XattrTarget& t, uint64_t version) {
  if (version == 0) {  // absent means 0: keep replicas that never changed an object identical
    if (t.Remove(kVersionXattr) != 0 && errno != ENODATA)
      return Status::FromErrno("remove version");
    return Status::Ok();
  }
  uint64_t le = proto::to_le(version);
  if (t.Set(kVersionXattr, &le, sizeof(le), 0) != 0) return Status::FromErrno("set version");
  return Status::Ok();
}

}  // namespace

int OpenBeneath(int dirfd, const std::string& path, uint64_t flags) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  return static_cast<int>(syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof(how)));
}

SharedFd FdCache::Get(const Oid& oid) {
  std::lock_guard lk(mu_);
  auto it = index_.find(oid);
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

void FdCache::Put(const Oid& oid, SharedFd fd) {
  std::lock_guard lk(mu_);
  auto it = index_.find(oid);
  if (it != index_.end()) {
    it->second->second = std::move(fd);
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  lru_.emplace_front(oid, std::move(fd));
  index_[oid] = lru_.begin();
  if (lru_.size() > capacity_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

void FdCache::Erase(const Oid& oid) {
  std::lock_guard lk(mu_);
  auto it = index_.find(oid);
  if (it == index_.end()) return;
  lru_.erase(it->second);
  index_.erase(it);
}

std::string ExportStore::FdPath(int fd) {
  return "/proc/self/fd/" + std::to_string(fd);
}
std::string ExportStore::FdPath(int fd, const std::string& name) {
  return FdPath(fd) + "/" + name;
}

Result<std::unique_ptr<ExportStore>> ExportStore::Open(const std::string& dir) {
  std::unique_ptr<ExportStore> s(new ExportStore());
  Status st = s->Init(dir);
  if (!st.ok()) return st;
  return s;
}

Status ExportStore::Init(const std::string& dir) {
  root_ = UniqueFd(open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root_.valid()) return Status::FromErrno(("open export " + dir).c_str());
  auto mkdir_open = [](int parent, const char* name, UniqueFd* out) -> Status {
    if (mkdirat(parent, name, 0700) != 0 && errno != EEXIST)
      return Status::FromErrno((std::string("mkdir ") + name).c_str());
    *out = UniqueFd(openat(parent, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!out->valid()) return Status::FromErrno((std::string("open ") + name).c_str());
    return Status::Ok();
  };
  Status s = mkdir_open(root_.get(), kHiddenDir, &hidden_);
  if (s.ok()) s = mkdir_open(hidden_.get(), "ids", &ids_);
  if (s.ok()) s = mkdir_open(hidden_.get(), "dirs", &dirs_);
  if (s.ok()) s = mkdir_open(hidden_.get(), kStaleDir, &stale_);
  if (s.ok()) s = LoadServerId();
  if (!s.ok()) return s;

  Oid root = Oid::Root();
  std::string rp = FdPath(root_.get());
  if (setxattr(rp.c_str(), kIdXattr, root.b.data(), root.b.size(), 0) != 0)
    return Status::FromErrno(
        "set trusted.pohmelfs.id on the export root (the server must run as root on a "
        "filesystem with trusted xattrs)");
  if (symlinkat("/", dirs_.get(), root.Hex().c_str()) != 0 && errno != EEXIST)
    return Status::FromErrno("record the root directory");
  SweepOrphans();
  return Status::Ok();
}

Status ExportStore::LoadServerId() {
  auto id = ReadServerId(hidden_.get());
  if (id.code() == ENOENT) {
    POHMELFS_RETURN_IF_ERROR(CreateServerId(hidden_.get()));
    id = ReadServerId(hidden_.get());
  }
  if (!id.ok()) return id.status();
  server_id_ = *id;
  return Status::Ok();
}

void ExportStore::SweepOrphans() {
  int fd = openat(ids_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  DIR* d = fdopendir(fd);
  if (!d) {
    close(fd);
    return;
  }
  size_t removed = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    struct stat st;
    if (fstatat(ids_.get(), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_nlink == 1 &&
        unlinkat(ids_.get(), e->d_name, 0) == 0)
      removed++;
  }
  closedir(d);
  if (removed) spdlog::info("export: removed {} orphaned objects left by an earlier run", removed);
}

Result<SharedFd> ExportStore::OpenDir(const Oid& oid) {
  return ResolveDir(oid, 0);
}

Result<SharedFd> ExportStore::ResolveDir(const Oid& oid, int depth) {
  if (depth > kMaxDepth) return Status::Error(ELOOP, "directory index too deep");
  if (SharedFd fd = dir_cache_.Get(oid)) return fd;
  if (oid == Oid::Root()) {
    int fd = fcntl(root_.get(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return Status::FromErrno("dup root");
    auto shared = std::make_shared<UniqueFd>(fd);
    dir_cache_.Put(oid, shared);
    return shared;
  }
  std::string hex = oid.Hex();
  char buf[POHMELFS_NAME_MAX + 64];
  ssize_t n = readlinkat(dirs_.get(), hex.c_str(), buf, sizeof(buf));
  if (n < 0) {
    if (errno == ENOENT) {
      struct stat st;
      if (fstatat(ids_.get(), hex.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0)
        return Status::Error(ENOTDIR, "not a directory");
      return Status::Error(ENOENT, "no such object");
    }
    return Status::FromErrno("read directory record");
  }
  std::string rec(buf, static_cast<size_t>(n));
  size_t slash = rec.find('/');
  Oid parent;
  if (slash != 32 || !Oid::FromHex(rec.substr(0, 32), &parent))
    return Status::Error(EIO, "corrupt directory record for " + hex);
  std::string name = rec.substr(33);
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    return Status::Error(EIO, "corrupt directory record for " + hex);
  auto pfd = ResolveDir(parent, depth + 1);
  if (!pfd.ok())
    return pfd.status().code() == ENOTDIR ? Status::Error(EIO, "bad record") : pfd.status();
  int fd = OpenBeneath((*pfd)->get(), name, O_PATH | O_DIRECTORY | O_NOFOLLOW);
  if (fd < 0) return Status::Error(errno == ENOTDIR ? ENOENT : errno, "open directory " + hex);
  auto shared = std::make_shared<UniqueFd>(fd);
  // The record may be stale if the tree was changed behind the server's back.
  uint8_t id[16];
  if (getxattr(FdPath(fd).c_str(), kIdXattr, id, sizeof(id)) != 16 ||
      std::memcmp(id, oid.b.data(), 16) != 0)
    return Status::Error(ENOENT, "stale directory record for " + hex);
  dir_cache_.Put(oid, shared);
  return shared;
}

Result<SharedFd> ExportStore::OpenFile(const Oid& oid) {
  if (SharedFd fd = file_cache_.Get(oid)) return fd;
  std::string hex = oid.Hex();
  // Pin the inode without opening it, check that it is a regular file, then open that same
  // inode for IO: a device node (or a name swapped for one) is never opened, so no driver's
  // open runs on a client's behalf.
  UniqueFd pinned(OpenBeneath(ids_.get(), hex, O_PATH | O_NOFOLLOW));
  int fd = -1;
  if (pinned.valid()) {
    struct stat st;
    if (fstat(pinned.get(), &st) != 0) return Status::FromErrno("stat object");
    if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, "not a regular file");
    std::string path = FdPath(pinned.get());
    fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0 && (errno == EACCES || errno == EROFS || errno == ETXTBSY || errno == EPERM))
      fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0) {
    if (errno == ENOENT) {
      struct stat st;
      if (fstatat(dirs_.get(), hex.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0)
        return Status::Error(EISDIR, "is a directory");
      return Status::Error(ENOENT, "no such object");
    }
    if (errno == ELOOP) return Status::Error(EINVAL, "not a regular file");
    return Status::FromErrno("open object");
  }
  auto shared = std::make_shared<UniqueFd>(fd);
  file_cache_.Put(oid, shared);
  return shared;
}

Result<bool> ExportStore::IsDir(const Oid& oid) {
  if (oid == Oid::Root()) return true;
  std::string hex = oid.Hex();
  struct stat st;
  if (fstatat(dirs_.get(), hex.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return true;
  if (fstatat(ids_.get(), hex.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return false;
  return Status::Error(ENOENT, "no such object");
}

Result<struct stat> ExportStore::StatById(const Oid& oid) {
  struct stat st;
  if (oid == Oid::Root() || fstatat(ids_.get(), oid.Hex().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    auto fd = OpenDir(oid);
    if (!fd.ok()) return fd.status();
    if (fstat((*fd)->get(), &st) != 0) return Status::FromErrno("fstat");
    return st;
  }
  if (st.st_nlink > 0) st.st_nlink--;  // the index link
  return st;
}

Result<struct stat> ExportStore::StatAt(int dirfd, const std::string& name) {
  struct stat st;
  if (fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return Status::FromErrno("stat");
  return st;
}

Result<Oid> ExportStore::ReadId(int dirfd, const std::string& name) {
  Oid oid;
  ssize_t n = lgetxattr(FdPath(dirfd, name).c_str(), kIdXattr, oid.b.data(), oid.b.size());
  if (n == 16) return oid;
  if (n >= 0) return Status::Error(EIO, "corrupt id xattr on " + name);
  return Status::FromErrno("read id");
}

Result<Oid> ExportStore::IdOf(int dirfd, const std::string& name, const struct stat& st,
                              const Oid& parent) {
  auto id = ReadId(dirfd, name);
  if (id.ok() || id.code() != ENODATA) return id;
  Oid oid = Oid::Random();
  std::string path = FdPath(dirfd, name);
  if (lsetxattr(path.c_str(), kIdXattr, oid.b.data(), oid.b.size(), XATTR_CREATE) != 0) {
    if (errno == EEXIST) return ReadId(dirfd, name);  // a concurrent lookup won: use its id
    return Status::FromErrno("set id xattr");
  }
  Status s = Index(dirfd, name, S_ISDIR(st.st_mode), oid, parent);
  if (!s.ok()) return s;
  spdlog::info("export: assigned id {} to existing object '{}'", oid.Hex(), name);
  return oid;
}

Status ExportStore::Attach(int dirfd, const std::string& name, bool is_dir, const Oid& oid,
                           const Oid& parent) {
  std::string path = FdPath(dirfd, name);
  if (lsetxattr(path.c_str(), kIdXattr, oid.b.data(), oid.b.size(), 0) != 0)
    return Status::FromErrno("set id xattr");
  return Index(dirfd, name, is_dir, oid, parent);
}

Status ExportStore::Index(int dirfd, const std::string& name, bool is_dir, const Oid& oid,
                          const Oid& parent) {
  if (is_dir) return RecordDirMove(oid, parent, name);
  if (linkat(dirfd, name.c_str(), ids_.get(), oid.Hex().c_str(), 0) != 0)
    return Status::FromErrno("index object");
  return Status::Ok();
}

Status ExportStore::RecordDirMove(const Oid& oid, const Oid& new_parent,
                                  const std::string& new_name) {
  std::string hex = oid.Hex();
  std::string target = new_parent.Hex() + "/" + new_name;
  std::string tmp =
      hex + ".tmp" + std::to_string(std::hash<std::thread::id>()(std::this_thread::get_id()));
  unlinkat(dirs_.get(), tmp.c_str(), 0);
  if (symlinkat(target.c_str(), dirs_.get(), tmp.c_str()) != 0)
    return Status::FromErrno("record directory");
  if (renameat(dirs_.get(), tmp.c_str(), dirs_.get(), hex.c_str()) != 0) {
    Status s = Status::FromErrno("record directory");
    unlinkat(dirs_.get(), tmp.c_str(), 0);
    return s;
  }
  return Status::Ok();
}

void ExportStore::DetachDir(const Oid& oid) {
  unlinkat(dirs_.get(), oid.Hex().c_str(), 0);
  dir_cache_.Erase(oid);
}

void ExportStore::MaybeDetachFile(const Oid& oid) {
  std::lock_guard object(ObjectLock(oid));
  std::string hex = oid.Hex();
  struct stat st;
  if (fstatat(ids_.get(), hex.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_nlink > 1) return;
  std::lock_guard lk(open_mu_);
  if (open_count_.count(oid)) {
    orphans_[oid] = true;
    return;
  }
  unlinkat(ids_.get(), hex.c_str(), 0);
  file_cache_.Erase(oid);
}

void ExportStore::Opened(const Oid& oid) {
  std::lock_guard lk(open_mu_);
  open_count_[oid]++;
}

void ExportStore::Released(const Oid& oid) {
  bool orphan = false;
  {
    std::lock_guard lk(open_mu_);
    auto it = open_count_.find(oid);
    if (it == open_count_.end()) return;
    if (--it->second > 0) return;
    open_count_.erase(it);
    orphan = orphans_.erase(oid) > 0;
  }
  if (orphan) MaybeDetachFile(oid);
}

ssize_t ExportStore::XattrTarget::Get(const char* name, void* value, size_t size) const {
  if (fd >= 0) return fgetxattr(fd, name, value, size);
  return follow ? getxattr(path.c_str(), name, value, size)
                : lgetxattr(path.c_str(), name, value, size);
}

int ExportStore::XattrTarget::Set(const char* name, const void* value, size_t size,
                                  int flags) const {
  if (fd >= 0) return fsetxattr(fd, name, value, size, flags);
  return follow ? setxattr(path.c_str(), name, value, size, flags)
                : lsetxattr(path.c_str(), name, value, size, flags);
}

ssize_t ExportStore::XattrTarget::List(char* list, size_t size) const {
  if (fd >= 0) return flistxattr(fd, list, size);
  return follow ? listxattr(path.c_str(), list, size) : llistxattr(path.c_str(), list, size);
}

int ExportStore::XattrTarget::Remove(const char* name) const {
  if (fd >= 0) return fremovexattr(fd, name);
  return follow ? removexattr(path.c_str(), name) : lremovexattr(path.c_str(), name);
}

Result<ExportStore::XattrTarget> ExportStore::XattrPath(const Oid& oid) {
  auto dir = IsDir(oid);
  if (!dir.ok()) return dir.status();
  if (!*dir) return IndexXattrs(oid);
  auto fd = OpenDir(oid);
  if (!fd.ok()) return fd.status();
  return DirXattrs(*fd);
}

ExportStore::XattrTarget ExportStore::DirXattrs(SharedFd dir) {
  std::string path = FdPath(dir->get());
  return XattrTarget::OfPath(std::move(path), true, std::move(dir));
}

ExportStore::XattrTarget ExportStore::IndexXattrs(const Oid& oid) const {
  return XattrTarget::OfPath(FdPath(ids_.get(), oid.Hex()), false);
}

Result<uint64_t> ExportStore::ReadVersion(const XattrTarget& t) {
  uint64_t le = 0;
  ssize_t n = t.Get(kVersionXattr, &le, sizeof(le));
  if (n < 0) return errno == ENODATA ? Result<uint64_t>(0) : Status::FromErrno("read version");
  if (n != sizeof(le)) return Status::Error(EIO, "corrupt version xattr");
  return proto::from_le(le);
}

Result<uint64_t> ExportStore::VersionAt(int dirfd, const std::string& name) {
  return ReadVersion(XattrTarget::OfPath(FdPath(dirfd, name), false));
}

Result<uint64_t> ExportStore::VersionById(const Oid& oid) {
  if (!(oid == Oid::Root())) {
    auto v = ReadVersion(IndexXattrs(oid));
    if (v.code() != ENOENT) return v;
  }
  auto fd = OpenDir(oid);  // not indexed as a non-directory: a directory, or nothing
  if (!fd.ok()) return fd.status();
  return ReadVersion(DirXattrs(*fd));
}

Status ExportStore::BumpVersion(const Oid& oid, const XattrTarget& t) {
  std::lock_guard object(ObjectLock(oid));
  return BumpVersionLocked(t);
}

Status ExportStore::BumpVersionLocked(const XattrTarget& t) {
  auto v = ReadVersion(t);
  if (!v.ok()) return v.status();
  return WriteVersion(t, *v + 1);
}

Status ExportStore::SetVersion(const Oid& oid, const XattrTarget& t, uint64_t version) {
  std::lock_guard object(ObjectLock(oid));
  return WriteVersion(t, version);
}

Status ExportStore::MarkStale(const Oid& peer) {
  std::string hex = peer.Hex();
  UniqueFd fd(openat(stale_.get(), hex.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid() || fsync(fd.get()) != 0) return Status::FromErrno("create stale marker");
  POHMELFS_RETURN_IF_ERROR(SyncDir(stale_.get()));
  spdlog::info("export: replica {} marked stale", hex);
  return Status::Ok();
}

Status ExportStore::ClearStale(const Oid& peer) {
  std::string hex = peer.Hex();
  bool was_marked = unlinkat(stale_.get(), hex.c_str(), 0) == 0;
  if (!was_marked && errno != ENOENT) return Status::FromErrno("remove stale marker");
  if (was_marked) POHMELFS_RETURN_IF_ERROR(SyncDir(stale_.get()));
  spdlog::info("export: replica {} cleared{}", hex, was_marked ? "" : " (was not marked)");
  return Status::Ok();
}

Result<std::vector<Oid>> ExportStore::ListStale(size_t max) {
  int fd = openat(stale_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("open stale markers");
  std::unique_ptr<DIR, int (*)(DIR*)> d(fdopendir(fd), closedir);
  if (!d) {
    Status s = Status::FromErrno("open stale markers");
    close(fd);
    return s;
  }
  std::vector<Oid> peers;
  while (dirent* e = readdir(d.get())) {
    Oid peer;
    if (Oid::FromHex(e->d_name, &peer) && !peer.IsZero()) peers.push_back(peer);
  }
  std::sort(peers.begin(), peers.end(), [](const Oid& a, const Oid& b) { return a.b < b.b; });
  if (peers.size() > max) peers.resize(max);
  return peers;
}

}  // namespace pohmelfs::server
