// Namespace operations: lookup, attributes, directories, names, links, tree operations.
#include "rdma-server/export_ops.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace pohmelfs::server::ops {

using proto::from_le;
using proto::Reader;
using proto::Writer;

namespace {

// Depth limit of RMTREE: each level holds one directory fd.
constexpr int kMaxTreeDepth = 1024;

struct Dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  uint16_t d_reclen;
  uint8_t d_type;
  char d_name[];
};

Status CheckNewOid(const OpEnv& env, const Oid& oid) {
  if (oid.IsZero() || oid == Oid::Root()) return Status::Error(EINVAL, "reserved object id");
  if (env.store->IsDir(oid).ok()) return Status::Error(EEXIST, "object id in use");
  return Status::Ok();
}

Status ReadNameReq(Reader* r, Oid* parent, std::string* name) {
  pohmelfs_name_req q;
  if (!r->Get(&q)) return Short();
  *parent = Oid::FromWire(q.parent);
  POHMELFS_RETURN_IF_ERROR(proto::GetName(r, from_le(q.name_len), name));
  if (ExportStore::IsHidden(*parent, *name)) return Status::Error(ENOENT, "hidden");
  return Status::Ok();
}

// SETATTR valid bits that change the object (and so add one to its version).
constexpr uint32_t kSetAttrChanges = POHMELFS_SETATTR_MODE | POHMELFS_SETATTR_UID |
                                     POHMELFS_SETATTR_GID | POHMELFS_SETATTR_SIZE |
                                     POHMELFS_SETATTR_ATIME | POHMELFS_SETATTR_MTIME |
                                     POHMELFS_SETATTR_ATIME_NOW | POHMELFS_SETATTR_MTIME_NOW;

// Stats dirfd/name after a create and appends its attr.
Status ReplyCreated(const OpEnv&, int dirfd, const std::string& name, const Oid& oid, Writer* w) {
  struct stat st;
  if (fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return Status::FromErrno("stat");
  auto version = ExportStore::VersionAt(dirfd, name);
  if (!version.ok()) return version.status();
  PutAttr(w, st, oid, *version, true);
  return Status::Ok();
}

// After SETATTR applied its changes to oid (a directory when dirfd is set): sets the version
// given with SETATTR_VERSION, or adds one when anything was changed.
Status SetAttrVersion(const OpEnv& env, const Oid& oid, const SharedFd& dirfd,
                      const pohmelfs_setattr_req& q) {
  uint32_t valid = from_le(q.valid);
  if (!(valid & (kSetAttrChanges | POHMELFS_SETATTR_VERSION))) return Status::Ok();
  auto t = dirfd ? ExportStore::DirXattrs(dirfd) : env.store->IndexXattrs(oid);
  if (valid & POHMELFS_SETATTR_VERSION) return env.store->SetVersion(oid, t, from_le(q.version));
  return env.store->BumpVersion(oid, t);
}

// Drops the index entry of what was at dirfd/name, after it was removed or replaced.
void Detach(const OpEnv& env, const Oid& oid, bool is_dir) {
  if (is_dir)
    env.store->DetachDir(oid);
  else
    env.store->MaybeDetachFile(oid);
}

Result<uint64_t> RemoveTree(const OpEnv& env, int parentfd, const std::string& name, int depth);

// Removes every entry of the directory open as dirfd. Names are collected first: removing
// entries under a getdents cursor would skip some.
Result<uint64_t> EmptyDir(const OpEnv& env, int dirfd, int depth) {
  std::vector<std::string> names;
  // On the heap: this function recurses once per directory level.
  std::vector<uint64_t> storage(32 * 1024 / sizeof(uint64_t));
  char* buf = reinterpret_cast<char*>(storage.data());
  for (;;) {
    long n = syscall(SYS_getdents64, dirfd, buf, storage.size() * sizeof(uint64_t));
    if (n < 0) return Status::FromErrno("getdents");
    if (n == 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<Dirent64*>(buf + off);
      off += d->d_reclen;
      std::string nm = d->d_name;
      if (nm != "." && nm != "..") names.push_back(std::move(nm));
    }
  }
  uint64_t removed = 0;
  for (const auto& nm : names) {
    auto r = RemoveTree(env, dirfd, nm, depth + 1);
    if (!r.ok()) return r;
    removed += *r;
  }
  return removed;
}

Result<uint64_t> RemoveTree(const OpEnv& env, int parentfd, const std::string& name, int depth) {
  if (depth > kMaxTreeDepth) return Status::Error(ELOOP, "tree too deep");
  struct stat st;
  if (fstatat(parentfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    return Status::FromErrno("stat");
  auto oid = env.store->ReadId(parentfd, name);
  uint64_t removed = 0;
  if (S_ISDIR(st.st_mode)) {
    UniqueFd d(OpenBeneath(parentfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
    if (!d.valid()) return Status::FromErrno("open directory");
    auto r = EmptyDir(env, d.get(), depth);
    if (!r.ok()) return r;
    removed = *r;
  }
  if (unlinkat(parentfd, name.c_str(), S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) != 0)
    return Status::FromErrno("remove");
  if (oid.ok()) Detach(env, *oid, S_ISDIR(st.st_mode));
  return removed + 1;
}

// New objects take the caller's uid and gid, except that in a set-group-ID directory they keep
// the directory's group, which the backing filesystem already gave them (POSIX).
Status ChownNew(int dirfd, const std::string& name, uint32_t uid, uint32_t gid) {
  struct stat dir;
  if (fstat(dirfd, &dir) != 0) return Status::FromErrno("stat parent");
  gid_t g = (dir.st_mode & S_ISGID) ? static_cast<gid_t>(-1) : gid;
  if (fchownat(dirfd, name.c_str(), uid, g, AT_SYMLINK_NOFOLLOW) != 0)
    return Status::FromErrno("chown");
  return Status::Ok();
}

// A create request (MKDIR, MKNOD) decoded and checked, with its parent directory open.
struct NewEntry {
  pohmelfs_create_req q;
  std::string name;
  Oid parent, oid;
  SharedFd dir;
};

Status BeginCreate(const OpEnv& env, Reader* r, NewEntry* e) {
  if (!r->Get(&e->q)) return Short();
  POHMELFS_RETURN_IF_ERROR(proto::GetName(r, from_le(e->q.name_len), &e->name));
  e->parent = Oid::FromWire(e->q.parent);
  e->oid = Oid::FromWire(e->q.new_oid);
  if (ExportStore::IsHidden(e->parent, e->name)) return Status::Error(EPERM, "reserved name");
  POHMELFS_RETURN_IF_ERROR(CheckNewOid(env, e->oid));
  auto dfd = env.store->OpenDir(e->parent);
  if (!dfd.ok()) return dfd.status();
  e->dir = *dfd;
  return Status::Ok();
}

// Gives a just-created dirfd/name its owner and id; removes it again if that fails.
Status FinishCreate(const OpEnv& env, int dirfd, const std::string& name, bool is_dir,
                    const Oid& oid, const Oid& parent, uint32_t uid, uint32_t gid) {
  Status s = ChownNew(dirfd, name, SquashId(env, uid), SquashId(env, gid));
  if (s.ok()) s = env.store->Attach(dirfd, name, is_dir, oid, parent);
  if (!s.ok()) unlinkat(dirfd, name.c_str(), is_dir ? AT_REMOVEDIR : 0);
  return s;
}

}  // namespace

Status Short() {
  return Status::Error(EINVAL, "request shorter than its struct");
}

void PutAttr(Writer* w, struct stat st, const Oid& oid, uint64_t version, bool index_link_counted) {
  if (index_link_counted && !S_ISDIR(st.st_mode) && st.st_nlink > 0) st.st_nlink--;
  pohmelfs_attr a;
  proto::FillAttr(st, oid, version, &a);
  w->Put(a);
}

Status PutAttrById(const OpEnv& env, const Oid& oid, Writer* w) {
  auto st = env.store->StatById(oid);
  if (!st.ok()) return st.status();
  auto version = env.store->VersionById(oid);
  if (!version.ok()) return version.status();
  PutAttr(w, *st, oid, *version, false);
  return Status::Ok();
}

Status Lookup(const OpEnv& env, Reader* r, Writer* w) {
  Oid parent;
  std::string name;
  POHMELFS_RETURN_IF_ERROR(ReadNameReq(r, &parent, &name));
  auto dfd = env.store->OpenDir(parent);
  if (!dfd.ok()) return dfd.status();
  auto st = env.store->StatAt((*dfd)->get(), name);
  if (!st.ok()) return st.status();
  auto oid = env.store->IdOf((*dfd)->get(), name, *st, parent);
  if (!oid.ok()) return oid.status();
  return ReplyCreated(env, (*dfd)->get(), name, *oid, w);
}

Status GetAttr(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_obj_req q;
  if (!r->Get(&q)) return Short();
  return PutAttrById(env, Oid::FromWire(q.oid), w);
}

Status SetAttr(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_setattr_req q;
  if (!r->Get(&q)) return Short();
  Oid oid = Oid::FromWire(q.oid);
  uint32_t valid = from_le(q.valid);
  auto is_dir = env.store->IsDir(oid);
  if (!is_dir.ok()) return is_dir.status();
  SharedFd dirfd;
  if (*is_dir) {
    auto d = env.store->OpenDir(oid);
    if (!d.ok()) return d.status();
    dirfd = *d;
  }
  // Non-directories are reached through their index link, directories through their fd.
  const int at_fd = *is_dir ? dirfd->get() : env.store->ids_fd();
  const std::string at_name = *is_dir ? std::string() : oid.Hex();
  const int at_flags = *is_dir ? AT_EMPTY_PATH : AT_SYMLINK_NOFOLLOW;

  if (valid & POHMELFS_SETATTR_SIZE) {
    if (*is_dir) return Status::Error(EISDIR, "truncate a directory");
    auto fd = env.store->OpenFile(oid);
    if (!fd.ok()) return fd.status();
    if (ftruncate((*fd)->get(), static_cast<off_t>(from_le(q.size))) != 0)
      return Status::FromErrno("truncate");
  }
  if (valid & POHMELFS_SETATTR_MODE) {
    // chmod has no "don't follow" form on Linux 6.1: pin the object with an O_PATH fd first, so
    // that a name swapped for a symlink meanwhile cannot redirect the chmod.
    UniqueFd pinned;
    if (!*is_dir) {
      pinned = UniqueFd(OpenBeneath(at_fd, at_name, O_PATH | O_NOFOLLOW));
      if (!pinned.valid()) return Status::FromErrno("open object");
    }
    const int obj_fd = *is_dir ? at_fd : pinned.get();
    struct stat st;
    if (fstat(obj_fd, &st) != 0) return Status::FromErrno("stat");
    if (!S_ISLNK(st.st_mode)) {
      if (chmod(ExportStore::FdPath(obj_fd).c_str(), from_le(q.mode) & 07777) != 0)
        return Status::FromErrno("chmod");
    }
  }
  if (valid & (POHMELFS_SETATTR_UID | POHMELFS_SETATTR_GID)) {
    uid_t uid =
        (valid & POHMELFS_SETATTR_UID) ? SquashId(env, from_le(q.uid)) : static_cast<uid_t>(-1);
    gid_t gid =
        (valid & POHMELFS_SETATTR_GID) ? SquashId(env, from_le(q.gid)) : static_cast<gid_t>(-1);
    if (fchownat(at_fd, at_name.c_str(), uid, gid, at_flags) != 0)
      return Status::FromErrno("chown");
  }
  if (valid & (POHMELFS_SETATTR_ATIME | POHMELFS_SETATTR_MTIME | POHMELFS_SETATTR_ATIME_NOW |
               POHMELFS_SETATTR_MTIME_NOW)) {
    timespec ts[2];
    ts[0].tv_nsec = ts[1].tv_nsec = UTIME_OMIT;
    if (valid & POHMELFS_SETATTR_ATIME) {
      ts[0].tv_sec = static_cast<time_t>(from_le(q.atime_sec));
      ts[0].tv_nsec = from_le(q.atime_nsec);
    }
    if (valid & POHMELFS_SETATTR_MTIME) {
      ts[1].tv_sec = static_cast<time_t>(from_le(q.mtime_sec));
      ts[1].tv_nsec = from_le(q.mtime_nsec);
    }
    if (valid & POHMELFS_SETATTR_ATIME_NOW) ts[0].tv_nsec = UTIME_NOW;
    if (valid & POHMELFS_SETATTR_MTIME_NOW) ts[1].tv_nsec = UTIME_NOW;
    if (ts[0].tv_nsec != UTIME_OMIT && ts[0].tv_nsec != UTIME_NOW && ts[0].tv_nsec >= 1000000000)
      return Status::Error(EINVAL, "bad nanoseconds");
    if (ts[1].tv_nsec != UTIME_OMIT && ts[1].tv_nsec != UTIME_NOW && ts[1].tv_nsec >= 1000000000)
      return Status::Error(EINVAL, "bad nanoseconds");
    int rc = *is_dir ? utimensat(AT_FDCWD, ExportStore::FdPath(at_fd).c_str(), ts, 0)
                     : utimensat(at_fd, at_name.c_str(), ts, AT_SYMLINK_NOFOLLOW);
    if (rc != 0) return Status::FromErrno("utimens");
  }
  POHMELFS_RETURN_IF_ERROR(SetAttrVersion(env, oid, dirfd, q));
  return PutAttrById(env, oid, w);
}

Status ReadDir(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_readdir_req q;
  if (!r->Get(&q)) return Short();
  Oid dir = Oid::FromWire(q.dir);
  uint32_t max = std::min<uint32_t>(from_le(q.max_bytes), POHMELFS_READDIR_MAX);
  auto pfd = env.store->OpenDir(dir);
  if (!pfd.ok()) return pfd.status();
  UniqueFd d(openat((*pfd)->get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d.valid()) return Status::FromErrno("open directory");
  if (lseek(d.get(), static_cast<off_t>(from_le(q.cookie)), SEEK_SET) < 0)
    return Status::FromErrno("seek directory");

  size_t start = w->size();
  pohmelfs_readdir_rep rep{};
  w->Put(rep);
  uint32_t count = 0, eof = 0;
  size_t used = sizeof(rep);
  alignas(8) char buf[32 * 1024];
  bool full = false;
  while (!full) {
    long n = syscall(SYS_getdents64, d.get(), buf, sizeof(buf));
    if (n < 0) return Status::FromErrno("getdents");
    if (n == 0) {
      eof = 1;
      break;
    }
    for (long off = 0; off < n;) {
      auto* e = reinterpret_cast<Dirent64*>(buf + off);
      off += e->d_reclen;
      std::string name = e->d_name;
      if (name == "." || name == ".." || ExportStore::IsHidden(dir, name)) continue;
      size_t need = sizeof(pohmelfs_dirent) + POHMELFS_PAD8(name.size());
      if (used + need > max) {
        if (count == 0) return Status::Error(EINVAL, "readdir buffer too small");
        full = true;
        break;
      }
      struct stat st;
      if (fstatat(d.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // raced away
      auto oid = env.store->IdOf(d.get(), name, st, dir);
      if (!oid.ok()) continue;
      if (fstatat(d.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      auto version = ExportStore::VersionAt(d.get(), name);
      if (!version.ok()) continue;
      pohmelfs_dirent de{};
      if (!S_ISDIR(st.st_mode) && st.st_nlink > 0) st.st_nlink--;
      proto::FillAttr(st, *oid, *version, &de.attr);
      de.next_cookie = proto::to_le(static_cast<uint64_t>(e->d_off));
      de.name_len = proto::to_le(static_cast<uint32_t>(name.size()));
      w->Put(de);
      w->Bytes(name);
      w->Pad8();
      used += need;
      count++;
    }
  }
  rep.count = proto::to_le(count);
  rep.eof = proto::to_le(eof);
  w->PatchAt(start, rep);  // the header went out before the entries were counted
  return Status::Ok();
}

Status MkDir(const OpEnv& env, Reader* r, Writer* w) {
  NewEntry e;
  POHMELFS_RETURN_IF_ERROR(BeginCreate(env, r, &e));
  int fd = e.dir->get();
  if (mkdirat(fd, e.name.c_str(), from_le(e.q.mode) & 07777) != 0)
    return Status::FromErrno("mkdir");
  POHMELFS_RETURN_IF_ERROR(
      FinishCreate(env, fd, e.name, true, e.oid, e.parent, from_le(e.q.uid), from_le(e.q.gid)));
  return ReplyCreated(env, fd, e.name, e.oid, w);
}

Status MkNod(const OpEnv& env, Reader* r, Writer* w) {
  NewEntry e;
  POHMELFS_RETURN_IF_ERROR(BeginCreate(env, r, &e));
  if ((from_le(e.q.flags) & POHMELFS_CREATE_OPEN) &&
      env.handles->OpenCount() >= env.max_open_handles)
    return Status::Error(EMFILE, "too many open files in this session");
  int fd = e.dir->get();
  mode_t mode = from_le(e.q.mode);
  UniqueFd created;  // regular files: the new file itself
  switch (mode & S_IFMT) {
    case S_IFREG: {
      created = UniqueFd(openat(
          fd, e.name.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, mode & 07777));
      if (!created.valid()) return Status::FromErrno("create");
      break;
    }
    case S_IFIFO:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFSOCK:
      if (mknodat(fd, e.name.c_str(), mode, static_cast<dev_t>(from_le(e.q.rdev))) != 0)
        return Status::FromErrno("mknod");
      break;
    default:
      return Status::Error(EINVAL, "bad file type for mknod");
  }
  POHMELFS_RETURN_IF_ERROR(
      FinishCreate(env, fd, e.name, false, e.oid, e.parent, from_le(e.q.uid), from_le(e.q.gid)));
  // The chown above clears set-user/group-ID bits; give the file the mode it was created with.
  if (created.valid() && (mode & (S_ISUID | S_ISGID)) && fchmod(created.get(), mode & 07777) != 0)
    return Status::FromErrno("chmod");
  if ((from_le(e.q.flags) & POHMELFS_CREATE_OPEN) && S_ISREG(mode)) env.handles->Opened(e.oid);
  return ReplyCreated(env, fd, e.name, e.oid, w);
}

Status Unlink(const OpEnv& env, Reader* r, Writer*) {
  Oid parent;
  std::string name;
  POHMELFS_RETURN_IF_ERROR(ReadNameReq(r, &parent, &name));
  auto dfd = env.store->OpenDir(parent);
  if (!dfd.ok()) return dfd.status();
  int fd = (*dfd)->get();
  auto oid = env.store->ReadId(fd, name);
  if (unlinkat(fd, name.c_str(), 0) != 0) return Status::FromErrno("unlink");
  if (oid.ok()) env.store->MaybeDetachFile(*oid);
  return Status::Ok();
}

Status RmDir(const OpEnv& env, Reader* r, Writer*) {
  Oid parent;
  std::string name;
  POHMELFS_RETURN_IF_ERROR(ReadNameReq(r, &parent, &name));
  auto dfd = env.store->OpenDir(parent);
  if (!dfd.ok()) return dfd.status();
  int fd = (*dfd)->get();
  auto oid = env.store->ReadId(fd, name);
  if (unlinkat(fd, name.c_str(), AT_REMOVEDIR) != 0) return Status::FromErrno("rmdir");
  if (oid.ok()) env.store->DetachDir(*oid);
  return Status::Ok();
}

Status Rename(const OpEnv& env, Reader* r, Writer*) {
  pohmelfs_rename_req q;
  if (!r->Get(&q)) return Short();
  std::string oname, nname;
  POHMELFS_RETURN_IF_ERROR(proto::GetName(r, from_le(q.old_len), &oname));
  POHMELFS_RETURN_IF_ERROR(proto::GetName(r, from_le(q.new_len), &nname));
  Oid op = Oid::FromWire(q.old_parent), np = Oid::FromWire(q.new_parent);
  if (ExportStore::IsHidden(op, oname) || ExportStore::IsHidden(np, nname))
    return Status::Error(EPERM, "reserved name");
  uint32_t flags = from_le(q.flags);
  if (flags & ~(POHMELFS_RENAME_NOREPLACE | POHMELFS_RENAME_EXCHANGE))
    return Status::Error(EINVAL, "unknown rename flags");
  unsigned sys_flags = 0;
  if (flags & POHMELFS_RENAME_NOREPLACE) sys_flags |= RENAME_NOREPLACE;
  if (flags & POHMELFS_RENAME_EXCHANGE) sys_flags |= RENAME_EXCHANGE;

  auto ofd = env.store->OpenDir(op);
  if (!ofd.ok()) return ofd.status();
  auto nfd = env.store->OpenDir(np);
  if (!nfd.ok()) return nfd.status();
  int o = (*ofd)->get(), n = (*nfd)->get();
  auto sst = env.store->StatAt(o, oname);
  if (!sst.ok()) return sst.status();
  auto soid = env.store->IdOf(o, oname, *sst, op);
  if (!soid.ok()) return soid.status();
  struct stat dst;
  bool dst_exists = fstatat(n, nname.c_str(), &dst, AT_SYMLINK_NOFOLLOW) == 0;
  Result<Oid> doid = Status::Error(ENOENT);
  if (dst_exists) doid = env.store->IdOf(n, nname, dst, np);

  // A directory's record must follow its renames in the same order: one directory rename at a
  // time (they are rare next to file operations).
  bool dirs = S_ISDIR(sst->st_mode) || (dst_exists && S_ISDIR(dst.st_mode));
  std::unique_lock<std::mutex> serial;
  if (dirs) serial = std::unique_lock(env.store->DirRenameLock());
  if (renameat2(o, oname.c_str(), n, nname.c_str(), sys_flags) != 0)
    return Status::FromErrno("rename");
  auto record = [&](const Oid& id, const Oid& parent, const std::string& name) {
    Status s = env.store->RecordDirMove(id, parent, name);
    if (!s.ok())
      spdlog::error("export: directory {} renamed to '{}' but its record was not updated: {}",
                    id.Hex(), name, s.ToString());
  };
  if (S_ISDIR(sst->st_mode)) record(*soid, np, nname);
  if (dst_exists && doid.ok() && !(*doid == *soid)) {
    if (flags & POHMELFS_RENAME_EXCHANGE) {
      if (S_ISDIR(dst.st_mode)) record(*doid, op, oname);
    } else {
      Detach(env, *doid, S_ISDIR(dst.st_mode));
    }
  }
  return Status::Ok();
}

Status Link(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_link_req q;
  if (!r->Get(&q)) return Short();
  std::string name;
  POHMELFS_RETURN_IF_ERROR(proto::GetName(r, from_le(q.name_len), &name));
  Oid oid = Oid::FromWire(q.oid), np = Oid::FromWire(q.new_parent);
  if (ExportStore::IsHidden(np, name)) return Status::Error(EPERM, "reserved name");
  auto is_dir = env.store->IsDir(oid);
  if (!is_dir.ok()) return is_dir.status();
  if (*is_dir) return Status::Error(EPERM, "hard link to a directory");
  auto nfd = env.store->OpenDir(np);
  if (!nfd.ok()) return nfd.status();
  std::lock_guard object(env.store->ObjectLock(oid));
  if (linkat(env.store->ids_fd(), oid.Hex().c_str(), (*nfd)->get(), name.c_str(), 0) != 0)
    return Status::FromErrno("link");
  return ReplyCreated(env, (*nfd)->get(), name, oid, w);
}

Status Symlink(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_symlink_req q;
  if (!r->Get(&q)) return Short();
  std::string name, target;
  POHMELFS_RETURN_IF_ERROR(proto::GetName(r, from_le(q.name_len), &name));
  POHMELFS_RETURN_IF_ERROR(proto::GetPath(r, from_le(q.target_len), &target));
  Oid parent = Oid::FromWire(q.parent), oid = Oid::FromWire(q.new_oid);
  if (ExportStore::IsHidden(parent, name)) return Status::Error(EPERM, "reserved name");
  POHMELFS_RETURN_IF_ERROR(CheckNewOid(env, oid));
  auto dfd = env.store->OpenDir(parent);
  if (!dfd.ok()) return dfd.status();
  int fd = (*dfd)->get();
  // The target is stored, never followed by the server.
  if (symlinkat(target.c_str(), fd, name.c_str()) != 0) return Status::FromErrno("symlink");
  POHMELFS_RETURN_IF_ERROR(
      FinishCreate(env, fd, name, false, oid, parent, from_le(q.uid), from_le(q.gid)));
  return ReplyCreated(env, fd, name, oid, w);
}

Status ReadLink(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_obj_req q;
  if (!r->Get(&q)) return Short();
  char buf[POHMELFS_PATH_MAX + 1];
  ssize_t n = readlinkat(env.store->ids_fd(), Oid::FromWire(q.oid).Hex().c_str(), buf, sizeof(buf));
  if (n < 0) return Status::FromErrno("readlink");
  if (static_cast<size_t>(n) > POHMELFS_PATH_MAX) return Status::Error(ENAMETOOLONG);
  w->Bytes(buf, static_cast<size_t>(n));
  return Status::Ok();
}

Status RmTree(const OpEnv& env, Reader* r, Writer* w) {
  Oid parent;
  std::string name;
  POHMELFS_RETURN_IF_ERROR(ReadNameReq(r, &parent, &name));
  auto dfd = env.store->OpenDir(parent);
  if (!dfd.ok()) return dfd.status();
  auto removed = RemoveTree(env, (*dfd)->get(), name, 0);
  if (!removed.ok()) return removed.status();
  w->Put(proto::to_le(static_cast<uint64_t>(*removed)));
  return Status::Ok();
}

Status MkPath(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_mkpath_req q;
  if (!r->Get(&q)) return Short();
  std::string path;
  POHMELFS_RETURN_IF_ERROR(proto::GetPath(r, from_le(q.path_len), &path));
  uint32_t count = from_le(q.count);
  if (count == 0 || count > POHMELFS_MKPATH_DEPTH_MAX)
    return Status::Error(EINVAL, "bad mkpath component count");
  std::vector<std::string> parts;
  for (size_t pos = 0; pos <= path.size();) {
    size_t slash = path.find('/', pos);
    if (slash == std::string::npos) slash = path.size();
    std::string part = path.substr(pos, slash - pos);
    if (part.empty() || part == "." || part == "..")
      return Status::Error(EINVAL, "bad mkpath component");
    if (part.size() > POHMELFS_NAME_MAX) return Status::Error(ENAMETOOLONG);
    parts.push_back(std::move(part));
    pos = slash + 1;
  }
  if (parts.size() != count) return Status::Error(EINVAL, "mkpath component count mismatch");
  std::vector<Oid> oids(count);
  for (auto& o : oids) {
    pohmelfs_oid wo;
    if (!r->Get(&wo)) return Short();
    o = Oid::FromWire(wo);
  }
  Oid cur = Oid::FromWire(q.parent);
  auto curfd = env.store->OpenDir(cur);
  if (!curfd.ok()) return curfd.status();
  SharedFd fd = *curfd;
  struct stat st {};
  for (uint32_t i = 0; i < count; i++) {
    const std::string& part = parts[i];
    if (ExportStore::IsHidden(cur, part)) return Status::Error(EPERM, "reserved name");
    Oid next;
    if (fstatat(fd->get(), part.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (!S_ISDIR(st.st_mode)) return Status::Error(ENOTDIR, "mkpath through a non-directory");
      auto id = env.store->IdOf(fd->get(), part, st, cur);
      if (!id.ok()) return id.status();
      next = *id;
    } else {
      POHMELFS_RETURN_IF_ERROR(CheckNewOid(env, oids[i]));
      if (mkdirat(fd->get(), part.c_str(), from_le(q.mode) & 07777) == 0) {
        POHMELFS_RETURN_IF_ERROR(
            FinishCreate(env, fd->get(), part, true, oids[i], cur, from_le(q.uid), from_le(q.gid)));
        next = oids[i];
      } else if (errno != EEXIST) {
        return Status::FromErrno("mkdir");
      }
      // Created by us, or by someone else just now: look at what is there.
      if (fstatat(fd->get(), part.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        return Status::FromErrno("stat");
      if (!S_ISDIR(st.st_mode)) return Status::Error(ENOTDIR, "mkpath through a non-directory");
      if (next.IsZero()) {
        auto id = env.store->IdOf(fd->get(), part, st, cur);
        if (!id.ok()) return id.status();
        next = *id;
      }
    }
    int nfd = OpenBeneath(fd->get(), part, O_PATH | O_DIRECTORY | O_NOFOLLOW);
    if (nfd < 0) return Status::FromErrno("open directory");
    fd = std::make_shared<UniqueFd>(nfd);
    cur = next;
  }
  auto version = ExportStore::ReadVersion(ExportStore::DirXattrs(fd));
  if (!version.ok()) return version.status();
  PutAttr(w, st, cur, *version, true);
  return Status::Ok();
}

}  // namespace pohmelfs::server::ops
