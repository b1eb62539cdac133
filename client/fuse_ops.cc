#include "client/fuse_ops.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/xattr.h>

#include <cstring>
#include <mutex>

#include "client/pohmelfs_ioctl.h"

namespace pohmelfs::client {
namespace {

FuseContext* Ctx(fuse_req_t req) {
  return static_cast<FuseContext*>(fuse_req_userdata(req));
}

// Resolves a node id, or replies ESTALE and returns nullopt.
std::optional<Oid> NodeOid(fuse_req_t req, fuse_ino_t ino) {
  auto oid = Ctx(req)->inodes->Get(ino);
  if (!oid) fuse_reply_err(req, ESTALE);
  return oid;
}

struct stat StatFor(const Entry& e, fuse_ino_t ino) {
  struct stat st = e.st;
  st.st_ino = ino;
  return st;
}

// fi->fh of a file opened on the servers at once, or through the metadata queue (its OPEN and
// RELEASE travel there, in order with the create).
constexpr uint64_t kServerOpen = 1;
constexpr uint64_t kQueuedOpen = 2;

// Handles opened through the queue, per object: such an object is not cancelled when it is
// unlinked while open (it must go on working, as an open unlinked file does).
void CountQueuedOpen(FuseContext* c, const Oid& oid, int delta) {
  std::lock_guard lk(c->queued_mu);
  if ((c->queued_opens[oid] += delta) <= 0) c->queued_opens.erase(oid);
}
bool HasQueuedOpens(FuseContext* c, const Oid& oid) {
  std::lock_guard lk(c->queued_mu);
  return c->queued_opens.count(oid) > 0;
}
// New files with at most this much data at close send it with their queued create.
constexpr size_t kQueuedDataMax = 256u << 10;

// How long the kernel may keep an object's attributes: long while a lease covers them.
// The size seen through delayed writes.
void MergeDirty(FuseContext* c, const Oid& oid, struct stat* st) {
  if (!c->cache) return;
  if (auto end = c->cache->DirtyEnd(oid))
    st->st_size = std::max<off_t>(st->st_size, static_cast<off_t>(*end));
}

// With leases on, nothing is cached without one: another client may change it any time.
double AttrTimeout(FuseContext* c, const Oid& oid) {
  if (!c->leases) return c->opts.attr_timeout;
  return c->leases->Held(oid) ? c->opts.lease_timeout : 0;
}

// A lease on oid if leases are on and the authority grants one; an empty guard otherwise
// (the caller then works uncached, as without leases).
LeaseManager::Guard HoldLease(FuseContext* c, const Oid& oid, uint32_t mode) {
  if (!c->leases) return {};
  auto g = c->leases->Hold(oid, mode);
  if (!g.ok()) {
    spdlog::info("no lease on {}: {}; working uncached", oid.Hex(), g.status().ToString());
    return {};
  }
  return std::move(*g);
}

// The entry's timeouts: long when the directory's lease covers the name (remembered, so that a
// break of that lease invalidates it).
void EntryTimeouts(FuseContext* c, fuse_ino_t parent, const char* name, bool parent_leased,
                   fuse_entry_param* p, const Oid& oid) {
  p->attr_timeout = AttrTimeout(c, oid);
  p->entry_timeout = c->leases ? 0 : c->opts.entry_timeout;
  if (!parent_leased) return;
  p->entry_timeout = c->opts.lease_timeout;
  std::lock_guard lk(c->names_mu);
  c->long_names[parent].insert(name);
}

// Replies with a new entry, taking one lookup reference for the kernel.
void ReplyEntry(fuse_req_t req, const Result<Entry>& e, fuse_ino_t parent = 0,
                const char* name = nullptr, bool parent_leased = false) {
  if (!e.ok()) {
    fuse_reply_err(req, e.code());
    return;
  }
  FuseContext* c = Ctx(req);
  fuse_entry_param p{};
  p.ino = c->inodes->Ref(e->oid);
  p.attr = StatFor(*e, p.ino);
  p.attr_timeout = c->opts.attr_timeout;
  p.entry_timeout = c->opts.entry_timeout;
  MergeDirty(c, e->oid, &p.attr);
  if (name) EntryTimeouts(c, parent, name, parent_leased, &p, e->oid);
  if (fuse_reply_entry(req, &p) != 0) c->inodes->Forget(p.ino, 1);  // interrupted
}

void ReplyStatus(fuse_req_t req, const Status& s) {
  fuse_reply_err(req, s.code());
}

void Init(void* userdata, fuse_conn_info* conn) {
  conn->want |= FUSE_CAP_ASYNC_READ | FUSE_CAP_IOCTL_DIR;
  if (static_cast<FuseContext*>(userdata)->leases) {
    // Locks are forwarded to the lease authority, so they hold across clients.
    if (conn->capable & FUSE_CAP_POSIX_LOCKS) conn->want |= FUSE_CAP_POSIX_LOCKS;
    if (conn->capable & FUSE_CAP_FLOCK_LOCKS) conn->want |= FUSE_CAP_FLOCK_LOCKS;
  }
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  // The kernel's own write-back cache is per mount, not per file: it would delay writes to
  // files this client holds no write lease on. Delaying happens here instead, per lease.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  conn->max_write = POHMELFS_IO_MAX;
  // The kernel caps the mount's readahead at this when INIT is answered: a larger read_ahead_kb
  // would silently fall back to it.
  const auto* c = static_cast<FuseContext*>(userdata);
  conn->max_readahead = std::max<unsigned>(POHMELFS_IO_MAX, c->opts.read_ahead_kb * 1024u);
  // libfuse ends the session unless this equals its own max_read (from the same option).
  if (c->opts.max_read != 0) conn->max_read = c->opts.max_read;
}

// Attributes of an object this mount created and has not sent yet, with its delayed size.
// Also those of a directory this mount holds the write lease on: nobody else changes it, and
// its entries change here (TouchDir), so asking the server would only cost a round trip.
std::optional<struct stat> LocalStat(FuseContext* c, const Oid& oid, fuse_ino_t ino) {
  if (!c->meta) return std::nullopt;
  auto e = c->local->Attrs(oid);
  if (!e) return std::nullopt;
  const bool leased_dir = S_ISDIR(e->st.st_mode) && c->leases->Held(oid) == POHMELFS_LEASE_WRITE;
  if (!leased_dir && !c->meta->Pending(oid)) return std::nullopt;
  struct stat st = StatFor(*e, ino);
  MergeDirty(c, oid, &st);
  return st;
}

void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto p = NodeOid(req, parent);
  if (!p) return;
  FuseContext* c = Ctx(req);
  if (std::strlen(name) > POHMELFS_NAME_MAX) return (void)fuse_reply_err(req, ENAMETOOLONG);
  auto g = HoldLease(c, *p, POHMELFS_LEASE_READ);
  // A directory this mount knows completely answers by itself.
  if (c->local && g.mode() == POHMELFS_LEASE_WRITE) {
    if (auto known = c->local->Find(*p, name)) {
      if (!*known) return (void)fuse_reply_err(req, ENOENT);
      if (c->meta->Pending((*known)->oid)) {
        if (auto e = c->local->Attrs((*known)->oid)) return ReplyEntry(req, *e, parent, name, true);
      }
    }
  }
  ReplyEntry(req, c->fs->Lookup(*p, name), parent, name, g.mode() != 0);
}

void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t n) {
  Ctx(req)->inodes->Forget(ino, n);
  fuse_reply_none(req);
}

void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; i++) Ctx(req)->inodes->Forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  // A read lease makes a writer elsewhere flush first, so the size and mtime are current.
  auto g = ino == FUSE_ROOT_ID ? LeaseManager::Guard{} : HoldLease(c, *oid, POHMELFS_LEASE_READ);
  if (auto local = LocalStat(c, *oid, ino))
    return (void)fuse_reply_attr(req, &*local, AttrTimeout(c, *oid));
  auto e = c->fs->GetAttr(*oid);
  if (ino == FUSE_ROOT_ID) {
    std::unique_lock lk(c->root_mu);
    if (e.ok()) {
      c->root_st = StatFor(*e, ino);
      c->root_known = true;
    } else if (c->root_known && (e.code() == EIO || e.code() == ETIMEDOUT)) {
      struct stat st = c->root_st;
      lk.unlock();
      return (void)fuse_reply_attr(req, &st, 0);  // no server: keep the mountpoint usable
    }
  }
  if (!e.ok()) return ReplyStatus(req, e.status());
  if (c->meta && S_ISDIR(e->st.st_mode) && g.mode() == POHMELFS_LEASE_WRITE)
    c->local->SetAttrs(*oid, *e);
  struct stat st = StatFor(*e, ino);
  MergeDirty(c, *oid, &st);
  fuse_reply_attr(req, &st, AttrTimeout(c, *oid));
}

void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  SetAttrArgs a;
  if (to_set & FUSE_SET_ATTR_MODE) a.valid |= POHMELFS_SETATTR_MODE, a.mode = attr->st_mode;
  if (to_set & FUSE_SET_ATTR_UID) a.valid |= POHMELFS_SETATTR_UID, a.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) a.valid |= POHMELFS_SETATTR_GID, a.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE)
    a.valid |= POHMELFS_SETATTR_SIZE, a.size = static_cast<uint64_t>(attr->st_size);
  if (to_set & FUSE_SET_ATTR_ATIME) a.valid |= POHMELFS_SETATTR_ATIME, a.atime = attr->st_atim;
  if (to_set & FUSE_SET_ATTR_MTIME) a.valid |= POHMELFS_SETATTR_MTIME, a.mtime = attr->st_mtim;
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) a.valid |= POHMELFS_SETATTR_ATIME_NOW;
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) a.valid |= POHMELFS_SETATTR_MTIME_NOW;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *oid, POHMELFS_LEASE_WRITE);
  // An object not sent yet: its attributes change here and the change joins the queue (a size
  // change goes the synchronous way, after its delayed writes).
  if (c->meta && !(a.valid & POHMELFS_SETATTR_SIZE) && g.mode() == POHMELFS_LEASE_WRITE &&
      c->meta->Pending(*oid)) {
    if (auto e = c->local->Attrs(*oid)) {
      timespec now;
      clock_gettime(CLOCK_REALTIME, &now);
      // "Now" is this moment, not the moment the queue is sent.
      if (a.valid & POHMELFS_SETATTR_ATIME_NOW)
        a.valid = (a.valid & ~POHMELFS_SETATTR_ATIME_NOW) | POHMELFS_SETATTR_ATIME, a.atime = now;
      if (a.valid & POHMELFS_SETATTR_MTIME_NOW)
        a.valid = (a.valid & ~POHMELFS_SETATTR_MTIME_NOW) | POHMELFS_SETATTR_MTIME, a.mtime = now;
      if (a.valid & POHMELFS_SETATTR_MODE)
        e->st.st_mode = (e->st.st_mode & S_IFMT) | (a.mode & 07777);
      if (a.valid & POHMELFS_SETATTR_UID) e->st.st_uid = a.uid;
      if (a.valid & POHMELFS_SETATTR_GID) e->st.st_gid = a.gid;
      if (a.valid & POHMELFS_SETATTR_ATIME) e->st.st_atim = a.atime;
      if (a.valid & POHMELFS_SETATTR_MTIME) e->st.st_mtim = a.mtime;
      if (a.valid & POHMELFS_SETATTR_ATIME_NOW) e->st.st_atim = now;
      if (a.valid & POHMELFS_SETATTR_MTIME_NOW) e->st.st_mtim = now;
      e->st.st_ctim = now;
      c->local->SetAttrs(*oid, *e);
      c->meta->Queue(POHMELFS_OP_SETATTR, *oid, false, FsClient::SetAttrBody(*oid, a));
      struct stat st = StatFor(*e, ino);
      MergeDirty(c, *oid, &st);
      return (void)fuse_reply_attr(req, &st, AttrTimeout(c, *oid));
    }
  }
  if (c->cache) {
    // Delayed writes go first, so that a truncate or a new mtime is not undone by them.
    Status f = c->cache->Flush(*oid);
    if (!f.ok()) return ReplyStatus(req, f);
  }
  auto e = c->fs->SetAttr(*oid, a);
  if (!e.ok()) return ReplyStatus(req, e.status());
  if (c->local && c->local->Attrs(*oid)) c->local->SetAttrs(*oid, *e);
  struct stat st = StatFor(*e, ino);
  fuse_reply_attr(req, &st, AttrTimeout(c, *oid));
}

void ReadLink(fuse_req_t req, fuse_ino_t ino) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  auto t = Ctx(req)->fs->ReadLink(*oid);
  if (!t.ok()) return ReplyStatus(req, t.status());
  fuse_reply_readlink(req, t->c_str());
}

// A new object's attributes as the server will make them (times from this clock).
Entry NewEntry(const Oid& oid, uint32_t mode, uint32_t uid, uint32_t gid, uint64_t rdev) {
  Entry e;
  e.oid = oid;
  e.st.st_mode = mode;
  e.st.st_uid = uid;
  e.st.st_gid = gid;
  e.st.st_nlink = S_ISDIR(mode) ? 2 : 1;
  e.st.st_rdev = rdev;
  e.st.st_blksize = 4096;
  e.st.st_size = S_ISDIR(mode) ? 4096 : 0;
  clock_gettime(CLOCK_REALTIME, &e.st.st_mtim);
  e.st.st_atim = e.st.st_ctim = e.st.st_mtim;
  return e;
}

// An entry of dir changed here: the attributes kept for it follow (mtime, ctime, and the link
// count when a subdirectory came or went).
void TouchDir(FuseContext* c, const Oid& dir, int nlink_delta) {
  if (!c->local) return;
  if (auto e = c->local->Attrs(dir)) {
    if (nlink_delta) e->st.st_nlink = nlink_delta > 0 ? e->st.st_nlink + 1 : e->st.st_nlink - 1;
    clock_gettime(CLOCK_REALTIME, &e->st.st_mtim);
    e->st.st_ctim = e->st.st_mtim;
    c->local->SetAttrs(dir, *e);
  }
}

// Creates name in parent. With the parent's write lease and its contents known here, the
// create is queued (no network) and answered at once; otherwise it is sent now. Either way the
// creator takes the new object's write lease with it. *queued tells which happened.
Result<Entry> CreateObject(FuseContext* c, fuse_req_t req, const Oid& parent, const char* name,
                           uint32_t mode, uint64_t rdev, bool parent_write, bool open,
                           bool* queued) {
  const fuse_ctx* who = fuse_req_ctx(req);
  if (std::strlen(name) > POHMELFS_NAME_MAX) return Status::Error(ENAMETOOLONG);
  const bool dir = S_ISDIR(mode);
  const uint16_t opcode = dir ? POHMELFS_OP_MKDIR : POHMELFS_OP_MKNOD;
  const Oid oid = Oid::Random();
  uint32_t flags = dir ? 0 : POHMELFS_CREATE_EXCL;
  if (c->leases) flags |= POHMELFS_CREATE_LEASE;
  *queued = false;
  // Queued creates need the parent's attributes: a set-group-ID directory passes on its group
  // (and, to subdirectories, the bit), as the server's filesystem will.
  const auto parent_attrs = c->meta ? c->local->Attrs(parent) : std::nullopt;
  const bool complete = parent_attrs && parent_write && c->local->IsComplete(parent);
  if (complete) {
    auto known = c->local->Find(parent, name);
    if (known && *known) return Status::Error(EEXIST);
    if (open) flags |= POHMELFS_CREATE_OPEN;
    Entry e = NewEntry(oid, mode, who->uid, who->gid, rdev);
    if (parent_attrs->st.st_mode & S_ISGID) {
      e.st.st_gid = parent_attrs->st.st_gid;
      if (dir) e.st.st_mode |= S_ISGID;
    }
    c->meta->Queue(opcode, oid, true,
                   FsClient::CreateBody(parent, name, mode, rdev, who->uid, who->gid, flags, oid));
    *queued = true;
    c->local->SetAttrs(oid, e);
    c->local->AddEntry(parent, name, oid, mode);
    if (dir) c->local->AddCompleteDir(oid);
    TouchDir(c, parent, dir ? 1 : 0);
    c->leases->GrantLocal(oid);
    return e;
  }
  if (open) flags |= POHMELFS_CREATE_OPEN;
  auto e = c->fs->Create(
      opcode, FsClient::CreateBody(parent, name, mode, rdev, who->uid, who->gid, flags, oid));
  if (!e.ok()) return e;
  if (c->leases) c->leases->GrantLocal(oid);
  if (c->local) {
    c->local->AddEntry(parent, name, oid, mode);  // when parent is known completely
    // A new directory is empty, and its attributes are the reply's: creates in it can be
    // queued from the first one on (its write lease came with the create).
    if (dir && c->meta) c->local->AddCompleteDir(oid), c->local->SetAttrs(oid, *e);
    TouchDir(c, parent, dir ? 1 : 0);
  }
  return e;
}

void MkNod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  auto p = NodeOid(req, parent);
  if (!p) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *p, POHMELFS_LEASE_WRITE);
  bool queued;
  auto e =
      CreateObject(c, req, *p, name, mode, rdev, g.mode() == POHMELFS_LEASE_WRITE, false, &queued);
  ReplyEntry(req, e, parent, name, g.mode() != 0);
}

void MkDir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  auto p = NodeOid(req, parent);
  if (!p) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *p, POHMELFS_LEASE_WRITE);
  bool queued;
  auto e = CreateObject(c, req, *p, name, S_IFDIR | (mode & 07777), 0,
                        g.mode() == POHMELFS_LEASE_WRITE, false, &queued);
  ReplyEntry(req, e, parent, name, g.mode() != 0);
}

// Removes name if it is an object that was never sent: nothing goes to a server. Returns
// whether it was.
bool CancelLocal(FuseContext* c, const Oid& parent, const char* name, bool dir) {
  if (!c->meta) return false;
  auto known = c->local->Find(parent, name);
  if (!known || !*known) return false;
  const Oid oid = (*known)->oid;
  auto e = c->local->Attrs(oid);
  if (!e || S_ISDIR(e->st.st_mode) != dir || HasQueuedOpens(c, oid)) return false;
  if (dir && !c->local->IsEmpty(oid)) return false;
  if (!c->meta->Cancel(oid)) return false;
  c->local->RemoveEntry(parent, name);
  c->local->DropAttrs(oid);
  if (dir) c->local->Forget(oid);
  TouchDir(c, parent, dir ? -1 : 0);
  if (c->cache) c->cache->Discard(oid);
  return true;
}

// Queues the removal of an object that was sent, when the outcome is known here: the
// directory is known completely, the name is there with the right type, and a directory to
// remove is known to be empty.
bool QueueRemoval(FuseContext* c, const Oid& parent, const char* name, bool dir) {
  if (!c->meta) return false;
  auto known = c->local->Find(parent, name);
  if (!known || !*known) return false;
  const LocalNamespace::Known k = **known;
  if ((k.type == S_IFDIR) != dir) return false;
  if (dir && !c->local->IsEmpty(k.oid)) return false;
  std::vector<uint8_t> body;
  proto::Writer w(&body);
  w.Put(pohmelfs_name_req{parent.ToWire(), proto::to_le(static_cast<uint32_t>(std::strlen(name))),
                          0});
  w.Bytes(name, std::strlen(name));
  c->meta->Queue(dir ? POHMELFS_OP_RMDIR : POHMELFS_OP_UNLINK, parent, false, std::move(body));
  c->local->RemoveEntry(parent, name);
  if (dir) {
    c->local->Forget(k.oid), c->local->DropAttrs(k.oid);
  } else if (auto e = c->local->Attrs(k.oid)) {  // still open here, not sent yet
    if (e->st.st_nlink > 0) e->st.st_nlink--;
    clock_gettime(CLOCK_REALTIME, &e->st.st_ctim);
    c->local->SetAttrs(k.oid, *e);
  }
  TouchDir(c, parent, dir ? -1 : 0);
  return true;
}

void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto p = NodeOid(req, parent);
  if (!p) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *p, POHMELFS_LEASE_WRITE);
  if (g.mode() == POHMELFS_LEASE_WRITE && CancelLocal(c, *p, name, false))
    return (void)fuse_reply_err(req, 0);
  if (g.mode() == POHMELFS_LEASE_WRITE && QueueRemoval(c, *p, name, false))
    return (void)fuse_reply_err(req, 0);
  Status s = c->fs->Unlink(*p, name);
  if (s.ok() && c->local) c->local->RemoveEntry(*p, name), TouchDir(c, *p, 0);
  ReplyStatus(req, s);
}

void RmDir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto p = NodeOid(req, parent);
  if (!p) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *p, POHMELFS_LEASE_WRITE);
  if (g.mode() == POHMELFS_LEASE_WRITE && CancelLocal(c, *p, name, true))
    return (void)fuse_reply_err(req, 0);
  if (g.mode() == POHMELFS_LEASE_WRITE && QueueRemoval(c, *p, name, true))
    return (void)fuse_reply_err(req, 0);
  Status s = c->fs->RmDir(*p, name);
  if (s.ok() && c->local) c->local->RemoveEntry(*p, name), TouchDir(c, *p, -1);
  ReplyStatus(req, s);
}

void Symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  auto p = NodeOid(req, parent);
  if (!p) return;
  if (std::strlen(target) > POHMELFS_PATH_MAX) return (void)fuse_reply_err(req, ENAMETOOLONG);
  const fuse_ctx* who = fuse_req_ctx(req);
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *p, POHMELFS_LEASE_WRITE);
  auto e = c->fs->Symlink(*p, name, target, who->uid, who->gid);
  if (e.ok() && c->local) c->local->AddEntry(*p, name, e->oid, S_IFLNK), TouchDir(c, *p, 0);
  ReplyEntry(req, e, parent, name, g.mode() != 0);
}

void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
            const char* newname, unsigned int flags) {
  auto p = NodeOid(req, parent);
  if (!p) return;
  auto np = NodeOid(req, newparent);
  if (!np) return;
  uint32_t wire = 0;
  if (flags & RENAME_NOREPLACE) wire |= POHMELFS_RENAME_NOREPLACE;
  if (flags & RENAME_EXCHANGE) wire |= POHMELFS_RENAME_EXCHANGE;
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return (void)fuse_reply_err(req, EINVAL);
  // Both directories' leases, taken in id order so that two renames cannot wait on each other.
  FuseContext* c = Ctx(req);
  const Oid& first = *p < *np ? *p : *np;
  const Oid& second = *p < *np ? *np : *p;
  auto g1 = HoldLease(c, first, POHMELFS_LEASE_WRITE);
  LeaseManager::Guard g2;
  if (!(first == second)) g2 = HoldLease(c, second, POHMELFS_LEASE_WRITE);
  Status s = c->fs->Rename(*p, name, *np, newname, wire);
  if (c->local) {  // rename is not followed locally: both directories are asked again
    c->local->Forget(*p);
    c->local->Forget(*np);
    c->local->DropAttrs(*p);
    c->local->DropAttrs(*np);
  }
  ReplyStatus(req, s);
}

void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  auto np = NodeOid(req, newparent);
  if (!np) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *np, POHMELFS_LEASE_WRITE);
  auto e = c->fs->Link(*oid, *np, newname);
  if (e.ok() && c->local)
    c->local->AddEntry(*np, newname, e->oid, e->st.st_mode), TouchDir(c, *np, 0);
  ReplyEntry(req, e, newparent, newname, g.mode() != 0);
}

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  uint32_t flags = 0;
  if ((fi->flags & O_ACCMODE) != O_RDONLY) flags |= POHMELFS_OPEN_WRITE;
  if (fi->flags & O_TRUNC) flags |= POHMELFS_OPEN_TRUNC;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *oid,
                     (flags & POHMELFS_OPEN_WRITE) ? POHMELFS_LEASE_WRITE : POHMELFS_LEASE_READ);
  // A file not sent yet has nothing to open on a server (fh 0: no RELEASE either).
  if (c->meta && !(flags & POHMELFS_OPEN_TRUNC) && c->meta->Pending(*oid)) {
    std::vector<uint8_t> body;
    proto::Writer(&body).Put(pohmelfs_open_req{oid->ToWire(), 0, 0});
    c->meta->Queue(POHMELFS_OP_OPEN, *oid, false, std::move(body));
    CountQueuedOpen(c, *oid, 1);
    fi->fh = kQueuedOpen;
    fi->keep_cache = 1;
    if (fuse_reply_open(req, fi) != 0) CountQueuedOpen(c, *oid, -1);
    return;
  }
  if (c->cache && (flags & POHMELFS_OPEN_TRUNC)) {
    Status f = c->cache->Flush(*oid);
    if (!f.ok()) return ReplyStatus(req, f);
  }
  auto e = c->fs->Open(*oid, flags);
  if (!e.ok()) return ReplyStatus(req, e.status());
  // Close-to-open: cached pages are dropped at open, unless a lease has covered them since
  // they were read (a change elsewhere would have broken it and invalidated them).
  fi->keep_cache = g.mode() != 0 && g.was_held() && !(flags & POHMELFS_OPEN_TRUNC);
  fi->fh = kServerOpen;
  FsClient* fs = c->fs;  // req is gone once replied to
  if (fuse_reply_open(req, fi) != 0) (void)fs->Release(*oid);
}

void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  auto p = NodeOid(req, parent);
  if (!p) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *p, POHMELFS_LEASE_WRITE);
  bool queued;
  auto e = CreateObject(c, req, *p, name, S_IFREG | (mode & 07777), 0,
                        g.mode() == POHMELFS_LEASE_WRITE, true, &queued);
  if (!e.ok()) return ReplyStatus(req, e.status());
  fi->fh = queued ? kQueuedOpen : kServerOpen;
  if (queued) CountQueuedOpen(c, e->oid, 1);
  fuse_entry_param ep{};
  ep.ino = c->inodes->Ref(e->oid);
  ep.attr = StatFor(*e, ep.ino);
  EntryTimeouts(c, parent, name, g.mode() != 0, &ep, e->oid);
  if (fuse_reply_create(req, &ep, fi) != 0) {
    c->inodes->Forget(ep.ino, 1);
    if (!queued) return (void)c->fs->Release(e->oid);
    std::vector<uint8_t> body;
    proto::Writer(&body).Put(pohmelfs_obj_req{e->oid.ToWire()});
    c->meta->Queue(POHMELFS_OP_RELEASE, e->oid, false, std::move(body));
    CountQueuedOpen(c, e->oid, -1);
  }
}

void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  // Reading takes a read lease: a writer elsewhere flushes first, and its next write breaks
  // this lease and drops the pages read here.
  auto g = HoldLease(c, *oid, POHMELFS_LEASE_READ);
  if (c->cache && c->cache->DirtyEnd(*oid)) {
    Status f = c->cache->Flush(*oid);  // reads see this client's delayed writes
    if (!f.ok()) return ReplyStatus(req, f);
  }
  auto data = c->fs->Read(*oid, static_cast<uint64_t>(off), size);
  if (!data.ok()) return ReplyStatus(req, data.status());
  const auto bytes = data->bytes();
  fuse_reply_buf(req, reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void Write(fuse_req_t req, fuse_ino_t ino, const char* data, size_t size, off_t off,
           fuse_file_info*) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  if (c->cache) {
    auto g = HoldLease(c, *oid, POHMELFS_LEASE_WRITE);
    if (g.mode() == POHMELFS_LEASE_WRITE) {
      Status s = c->cache->Add(*oid, static_cast<uint64_t>(off), data, size);
      if (!s.ok()) return ReplyStatus(req, s);
      return (void)fuse_reply_write(req, size);
    }
    Status e = c->cache->TakeError(*oid);
    if (!e.ok()) return ReplyStatus(req, e);
  }
  auto n = c->fs->Write(*oid, static_cast<uint64_t>(off), data, size);
  if (!n.ok()) return ReplyStatus(req, n.status());
  fuse_reply_write(req, *n);
}

// One LOCK request to the lease authority.
Result<RpcReply> LockCall(FuseContext* c, const Oid& oid, uint32_t cmd, uint32_t type,
                          uint64_t owner, uint64_t start, uint64_t length, uint32_t flags,
                          uint32_t pid) {
  auto auth = c->servers->Authority();
  if (!auth) return Status::Error(EIO, "no lock authority is up");
  pohmelfs_lock_req q{};
  q.oid = oid.ToWire();
  q.owner = proto::to_le(owner);
  q.start = proto::to_le(start);
  q.length = proto::to_le(length);
  q.cmd = proto::to_le(cmd);
  q.type = proto::to_le(type);
  q.flags = proto::to_le(flags);
  q.pid = proto::to_le(pid);
  iovec v{&q, sizeof(q)};
  return auth->Call(POHMELFS_OP_LOCK, std::span<const iovec>(&v, 1));
}

// Remembers a lock request that succeeded, for a replay after failover.
void NoteLock(FuseContext* c, const Oid& oid, const FuseContext::HeldLock& l) {
  std::lock_guard lk(c->locked_mu);
  auto& v = c->held_locks[oid];
  if (l.type == F_UNLCK && l.start == 0 && l.length == 0) {
    std::erase_if(v, [&](const FuseContext::HeldLock& x) {
      return x.owner == l.owner &&
             (x.flags & POHMELFS_LOCK_FLOCK) == (l.flags & POHMELFS_LOCK_FLOCK);
    });
  } else {
    v.push_back(l);
  }
  if (v.empty()) c->held_locks.erase(oid);
}

// Places this mount's locks again with a new authority. One that cannot be placed (another
// client took it meanwhile) is lost, and said so.
void ReplayLocks(FuseContext* c) {
  std::unordered_map<Oid, std::vector<FuseContext::HeldLock>, proto::OidHash> all;
  {
    std::lock_guard lk(c->locked_mu);
    all = c->held_locks;
  }
  for (const auto& [oid, v] : all) {
    for (const auto& l : v) {
      auto r = LockCall(c, oid, POHMELFS_LOCK_SETLK, l.type, l.owner, l.start, l.length,
                        l.flags | POHMELFS_LOCK_RECLAIM, l.pid);
      if (!r.ok() || r->status != 0)
        spdlog::error("a lock on {} could not be placed again after the failover ({}): it is lost",
                      oid.Hex(),
                      r.ok() ? std::strerror(static_cast<int>(r->status)) : r.status().ToString());
    }
  }
  if (!all.empty())
    spdlog::info("locks of {} files placed again with the new authority", all.size());
}

void Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  FuseContext* c = Ctx(req);
  auto oid = c->inodes->Get(ino);
  if (!oid) return (void)fuse_reply_err(req, 0);
  Status s = c->meta ? c->meta->Failed(*oid) : Status::Ok();
  if (s.ok() && c->cache && c->meta && c->meta->Pending(*oid)) {
    // A small new file that no server has yet: its data joins the queued create, in the same
    // batches (fsync sends it all). Close-to-open still holds: another client's open breaks
    // the directory's or the file's lease, and a break sends the queue first.
    if (auto small = c->cache->TakeSmall(*oid, kQueuedDataMax)) {
      if (!small->empty()) {  // the size and mtime shown here now come from the queue's data
        if (auto e = c->local->Attrs(*oid)) {
          auto last = std::prev(small->end());
          e->st.st_size =
              std::max<off_t>(e->st.st_size, static_cast<off_t>(last->first + last->second.size()));
          clock_gettime(CLOCK_REALTIME, &e->st.st_mtim);
          e->st.st_ctim = e->st.st_mtim;
          c->local->SetAttrs(*oid, *e);
        }
      }
      for (const auto& [off, bytes] : *small) {
        for (size_t done = 0; done < bytes.size(); done += POHMELFS_IO_MAX) {
          size_t n = std::min<size_t>(bytes.size() - done, POHMELFS_IO_MAX);
          c->meta->Queue(POHMELFS_OP_WRITE, *oid, false,
                         FsClient::WriteBody(*oid, off + done, bytes.data() + done, n));
        }
      }
    }
  }
  if (s.ok() && c->cache) s = c->cache->Flush(*oid);  // on every replica before close ends
  bool locked;
  {
    std::lock_guard lk(c->locked_mu);
    locked = c->held_locks.count(*oid) > 0;
  }
  if (locked) {  // close drops the POSIX locks of this owner, as fcntl locks do
    (void)LockCall(c, *oid, POHMELFS_LOCK_SETLK, F_UNLCK, fi->lock_owner, 0, 0, 0, 0);
    NoteLock(c, *oid, {fi->lock_owner, F_UNLCK, 0, 0, 0, 0});
  }
  ReplyStatus(req, s);
}

void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  FuseContext* c = Ctx(req);
  if (auto oid = c->inodes->Get(ino)) {
    if (fi->flock_release) {
      (void)LockCall(c, *oid, POHMELFS_LOCK_SETLK, F_UNLCK, fi->lock_owner, 0, 0,
                     POHMELFS_LOCK_FLOCK, 0);
      NoteLock(c, *oid, {fi->lock_owner, F_UNLCK, POHMELFS_LOCK_FLOCK, 0, 0, 0});
    }
    if (fi->fh == kQueuedOpen) {
      // Opened and closed before anything was sent: the servers need not hear of the handle.
      if (!c->meta->TakeBackOpen(*oid)) {
        std::vector<uint8_t> body;
        proto::Writer(&body).Put(pohmelfs_obj_req{oid->ToWire()});
        c->meta->Queue(POHMELFS_OP_RELEASE, *oid, false, std::move(body));
      }
      CountQueuedOpen(c, *oid, -1);
    } else {
      (void)c->fs->Release(*oid);
    }
  }
  fuse_reply_err(req, 0);
}

void Fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info*) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  if (c->cache) {
    Status f = c->cache->Flush(*oid);
    if (!f.ok()) return ReplyStatus(req, f);
  }
  ReplyStatus(req, c->fs->Fsync(*oid, datasync != 0));
}

void GetLk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  uint64_t start = static_cast<uint64_t>(lock->l_start);
  uint64_t len = static_cast<uint64_t>(lock->l_len);
  auto r = LockCall(Ctx(req), *oid, POHMELFS_LOCK_GETLK, static_cast<uint32_t>(lock->l_type),
                    fi->lock_owner, start, len, 0, static_cast<uint32_t>(lock->l_pid));
  if (!r.ok()) return ReplyStatus(req, r.status());
  if (r->status) return (void)fuse_reply_err(req, static_cast<int>(r->status));
  proto::Reader rd(r->payload);
  pohmelfs_lock_rep rep;
  if (!rd.Get(&rep)) return (void)fuse_reply_err(req, EPROTO);
  struct flock out = *lock;
  out.l_type = static_cast<short>(proto::from_le(rep.type));
  if (out.l_type != F_UNLCK) {
    out.l_whence = SEEK_SET;
    out.l_start = static_cast<off_t>(proto::from_le(rep.start));
    out.l_len = static_cast<off_t>(proto::from_le(rep.length));
    out.l_pid = static_cast<pid_t>(proto::from_le(rep.pid));
  }
  fuse_reply_lock(req, &out);
}

// Places or removes a lock; with wait, asks again each time the server's bound passes, until
// it is placed or the caller is interrupted.
int SetLock(fuse_req_t req, const Oid& oid, uint32_t type, uint64_t owner, uint64_t start,
            uint64_t len, uint32_t flags, uint32_t pid, bool wait) {
  FuseContext* c = Ctx(req);
  for (;;) {
    auto r = LockCall(c, oid, wait ? POHMELFS_LOCK_SETLKW : POHMELFS_LOCK_SETLK, type, owner, start,
                      len, flags, pid);
    if (!r.ok()) return r.code();
    if (r->status != EINPROGRESS) return static_cast<int>(r->status);
    if (fuse_req_interrupted(req)) return EINTR;
  }
}

void SetLk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock, int sleep) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  FuseContext::HeldLock l{fi->lock_owner,
                          static_cast<uint32_t>(lock->l_type),
                          0,
                          static_cast<uint32_t>(lock->l_pid),
                          static_cast<uint64_t>(lock->l_start),
                          static_cast<uint64_t>(lock->l_len)};
  int err = SetLock(req, *oid, l.type, l.owner, l.start, l.length, 0, l.pid, sleep != 0);
  if (err == 0) NoteLock(c, *oid, l);
  fuse_reply_err(req, err);
}

void Flock(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, int op) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  uint32_t type = (op & LOCK_UN) ? F_UNLCK : (op & LOCK_EX) ? F_WRLCK : F_RDLCK;
  int err = SetLock(req, *oid, type, fi->lock_owner, 0, 0, POHMELFS_LOCK_FLOCK, 0,
                    !(op & LOCK_NB) && type != F_UNLCK);
  if (err == 0) NoteLock(Ctx(req), *oid, {fi->lock_owner, type, POHMELFS_LOCK_FLOCK, 0, 0, 0});
  fuse_reply_err(req, err);
}

// Directory stream of one opendir. FUSE offsets are positions in the stream: 0 is ".", 1 is
// "..", 2.. are the server's entries; the server's own cookies stay inside this struct.
struct DirHandle {
  std::mutex mu;
  uint64_t base = 2;  // stream position of page[0]
  std::vector<DirEntry> page;
  uint64_t cookie = 0;  // server cookie after the last entry of page
  bool eof = false;

  void Rewind() {
    base = 2;
    page.clear();
    cookie = 0;
    eof = false;
  }
};

constexpr uint32_t kReadDirBytes = 64 * 1024;

void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  // A read lease on the directory: a change by another client breaks it, and the break drops
  // what the kernel cached of the listing.
  auto g = HoldLease(Ctx(req), *oid, POHMELFS_LEASE_READ);
  fi->cache_readdir = g.mode() != 0;
  fi->keep_cache = g.mode() != 0 && g.was_held();
  auto h = std::make_unique<DirHandle>();
  fi->fh = reinterpret_cast<uint64_t>(h.get());
  if (fuse_reply_open(req, fi) == 0) (void)h.release();  // owned by the kernel's handle now
}

void ReleaseDir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  std::unique_ptr<DirHandle> h(reinterpret_cast<DirHandle*>(fi->fh));
  fuse_reply_err(req, 0);
}

// Fills buf (resized to what was used) under the handle's lock. Returns 0 or an errno.
// The caller replies after the lock is dropped: once the reply is out, the kernel may release
// the handle at once.
int FillDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, bool plus,
            std::vector<char>& buf) {
  auto oid = Ctx(req)->inodes->Get(ino);
  if (!oid) return ESTALE;
  FuseContext* c = Ctx(req);
  auto* h = reinterpret_cast<DirHandle*>(fi->fh);
  std::lock_guard lk(h->mu);
  uint64_t pos = static_cast<uint64_t>(off);
  if (pos < h->base && pos >= 2) h->Rewind();  // seek backwards: restart the stream
  buf.resize(size);
  size_t used = 0;
  auto add = [&](const char* name, const struct stat& st, uint64_t next, const Entry* e) -> bool {
    size_t left = size - used;
    if (!plus) {
      struct stat with_ino = st;
      if (e) with_ino.st_ino = c->inodes->InoFor(e->oid);  // readdir drops d_ino 0
      size_t need = fuse_add_direntry(req, buf.data() + used, left, name, &with_ino,
                                      static_cast<off_t>(next));
      if (need > left) return false;
      used += need;
      return true;
    }
    fuse_entry_param p{};
    p.attr = st;
    if (e) {
      p.ino = c->inodes->Ref(e->oid, 0);
      p.attr.st_ino = p.ino;
      MergeDirty(c, e->oid, &p.attr);
      EntryTimeouts(c, ino, name, c->leases && c->leases->Held(*oid), &p, e->oid);
    }
    size_t need =
        fuse_add_direntry_plus(req, buf.data() + used, left, name, &p, static_cast<off_t>(next));
    if (need > left) {
      if (e) c->inodes->Forget(p.ino, 0);  // drop the id if nothing else references it
      return false;
    }
    if (e) c->inodes->Ref(e->oid, 1);  // the kernel takes a lookup reference per entry
    used += need;
    return true;
  };
  struct stat dot {};
  dot.st_mode = S_IFDIR;
  if (pos == 0) {
    dot.st_ino = ino;
    if (!add(".", dot, 1, nullptr)) return buf.resize(used), 0;
    pos = 1;
  }
  if (pos == 1) {
    dot.st_ino = FUSE_ROOT_ID;  // not the real parent, but readdir callers drop d_ino 0
    if (!add("..", dot, 2, nullptr)) return buf.resize(used), 0;
    pos = 2;
    if (h->base != 2) h->Rewind();
  }
  for (;;) {
    if (pos >= h->base + h->page.size()) {
      if (h->eof) break;
      h->base += h->page.size();
      auto page = c->fs->ReadDir(*oid, h->cookie, kReadDirBytes);
      if (!page.ok()) {
        if (used > 0) break;
        return page.code();
      }
      h->page = std::move(page->entries);
      h->eof = page->eof;
      if (!h->page.empty()) h->cookie = h->page.back().next_cookie;
      continue;
    }
    const DirEntry& d = h->page[pos - h->base];
    struct stat st = d.entry.st;
    if (!add(d.name.c_str(), st, pos + 1, &d.entry)) break;
    pos++;
  }
  buf.resize(used);
  return 0;
}

void DoReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
               bool plus) {
  std::vector<char> buf;
  int err = FillDir(req, ino, size, off, fi, plus, buf);
  if (err != 0) return (void)fuse_reply_err(req, err);
  fuse_reply_buf(req, buf.data(), buf.size());
}

void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  DoReadDir(req, ino, size, off, fi, false);
}

void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  DoReadDir(req, ino, size, off, fi, true);
}

void FsyncDir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info*) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  ReplyStatus(req, Ctx(req)->fs->Fsync(*oid, datasync != 0));
}

void StatFs(fuse_req_t req, fuse_ino_t) {
  auto sv = Ctx(req)->fs->StatFs();
  if (!sv.ok()) return ReplyStatus(req, sv.status());
  fuse_reply_statfs(req, &*sv);
}

void SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
              int flags) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *oid, POHMELFS_LEASE_WRITE);  // others' cached answers are broken
  if (c->local) c->local->ForgetXattrs(*oid);
  ReplyStatus(req, c->fs->SetXattr(*oid, name, value, size, static_cast<uint32_t>(flags)));
}

// Under a lease, "no such attribute" answers are kept: the kernel asks for security.capability
// before every write, and a round trip each time would cost more than the write.
void GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *oid, POHMELFS_LEASE_READ);
  if (c->meta && c->meta->Pending(*oid)) return (void)fuse_reply_err(req, ENODATA);  // new
  if (g.mode() != 0 && c->local && c->local->XattrAbsent(*oid, name))
    return (void)fuse_reply_err(req, ENODATA);
  uint32_t n = 0;
  auto v = c->fs->GetXattr(
      *oid, name, static_cast<uint32_t>(std::min<size_t>(size, POHMELFS_XATTR_SIZE_MAX)), &n);
  if (!v.ok()) {
    if (v.code() == ENODATA && g.mode() != 0 && c->local) c->local->NoteXattrAbsent(*oid, name);
    return ReplyStatus(req, v.status());
  }
  if (size == 0) return (void)fuse_reply_xattr(req, n);
  fuse_reply_buf(req, reinterpret_cast<const char*>(v->data()), v->size());
}

void ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  if (c->meta && c->meta->Pending(*oid))  // new: nothing to list
    return size == 0 ? (void)fuse_reply_xattr(req, 0) : (void)fuse_reply_buf(req, nullptr, 0);
  uint32_t n = 0;
  auto v = c->fs->ListXattr(
      *oid, static_cast<uint32_t>(std::min<size_t>(size, POHMELFS_XATTR_SIZE_MAX)), &n);
  if (!v.ok()) return ReplyStatus(req, v.status());
  if (size == 0) return (void)fuse_reply_xattr(req, n);
  fuse_reply_buf(req, reinterpret_cast<const char*>(v->data()), v->size());
}

void RemoveXattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  FuseContext* c = Ctx(req);
  auto g = HoldLease(c, *oid, POHMELFS_LEASE_WRITE);
  if (c->local) c->local->ForgetXattrs(*oid);
  ReplyStatus(req, c->fs->RemoveXattr(*oid, name));
}

void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
               fuse_file_info*) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  if (Ctx(req)->cache) {
    Status f = Ctx(req)->cache->Flush(*oid);  // delayed writes come before the allocation
    if (!f.ok()) return ReplyStatus(req, f);
  }
  ReplyStatus(
      req, Ctx(req)->fs->Fallocate(*oid, static_cast<uint32_t>(mode), static_cast<uint64_t>(offset),
                                   static_cast<uint64_t>(length)));
}

// The server-set control channel: one text command in, text out.
void ServersIoctl(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  if (in_bufsz < sizeof(pohmelfs_ioc_ctl) || out_bufsz < sizeof(pohmelfs_ioc_ctl))
    return (void)fuse_reply_err(req, EINVAL);
  if (fuse_req_ctx(req)->uid != 0) return (void)fuse_reply_err(req, EPERM);
  const auto* in = static_cast<const pohmelfs_ioc_ctl*>(in_buf);
  size_t len = strnlen(in->text, sizeof(in->text));
  if (len == sizeof(in->text)) return (void)fuse_reply_err(req, EINVAL);
  auto out = std::make_unique<pohmelfs_ioc_ctl>();
  auto text = RunServersCommand(*Ctx(req)->servers, std::string(in->text, len));
  if (!text.ok()) return ReplyStatus(req, text.status());
  std::snprintf(out->text, sizeof(out->text), "%s", text->c_str());
  fuse_reply_ioctl(req, 0, out.get(), sizeof(*out));
}

void Ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void*, fuse_file_info*, unsigned flags,
           const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  auto oid = NodeOid(req, ino);
  if (!oid) return;
  if (!(flags & FUSE_IOCTL_DIR)) return (void)fuse_reply_err(req, ENOTTY);
  if (cmd == POHMELFS_IOC_SERVERS) return ServersIoctl(req, in_buf, in_bufsz, out_bufsz);
  if (cmd != POHMELFS_IOC_RMTREE && cmd != POHMELFS_IOC_MKPATH)
    return (void)fuse_reply_err(req, ENOTTY);
  if (in_bufsz < sizeof(pohmelfs_ioc_path)) return (void)fuse_reply_err(req, EINVAL);
  const auto* arg = static_cast<const pohmelfs_ioc_path*>(in_buf);
  size_t len = strnlen(arg->path, sizeof(arg->path));
  if (len == 0 || len == sizeof(arg->path)) return (void)fuse_reply_err(req, EINVAL);
  std::string path(arg->path, len);
  FuseContext* c = Ctx(req);
  const fuse_ctx* who = fuse_req_ctx(req);
  if (who->uid != 0)
    return (void)fuse_reply_err(req, EPERM);  // bypasses per-entry permission checks
  Status s;
  if (c->local) c->local->ForgetAll();  // tree commands change directories wholesale
  if (cmd == POHMELFS_IOC_RMTREE) {
    s = c->fs->RmTree(*oid, path).status();
    if (s.ok()) fuse_lowlevel_notify_inval_entry(c->se, ino, path.c_str(), len);
  } else {
    s = c->fs->MkPath(*oid, path, 0755, who->uid, who->gid).status();
  }
  if (c->local) c->local->ForgetAll();
  if (!s.ok()) return ReplyStatus(req, s);
  fuse_reply_ioctl(req, 0, nullptr, 0);
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops o{};
  o.init = Init;
  o.lookup = Lookup;
  o.forget = Forget;
  o.forget_multi = ForgetMulti;
  o.getattr = GetAttr;
  o.setattr = SetAttr;
  o.readlink = ReadLink;
  o.mknod = MkNod;
  o.mkdir = MkDir;
  o.unlink = Unlink;
  o.rmdir = RmDir;
  o.symlink = Symlink;
  o.rename = Rename;
  o.link = Link;
  o.open = Open;
  o.create = Create;
  o.read = Read;
  o.write = Write;
  o.flush = Flush;
  o.release = Release;
  o.fsync = Fsync;
  o.opendir = OpenDir;
  o.readdir = ReadDir;
  o.readdirplus = ReadDirPlus;
  o.releasedir = ReleaseDir;
  o.fsyncdir = FsyncDir;
  o.statfs = StatFs;
  o.setxattr = SetXattr;
  o.getxattr = GetXattr;
  o.listxattr = ListXattr;
  o.removexattr = RemoveXattr;
  o.fallocate = Fallocate;
  o.ioctl = Ioctl;
  o.getlk = GetLk;
  o.setlk = SetLk;
  o.flock = Flock;
  return o;
}();

}  // namespace

LeaseManager::Hooks FuseLeaseHooks(FuseContext* c) {
  LeaseManager::Hooks h;
  h.flush = [c](const Oid& oid, uint32_t keep) {
    // Everything queued goes first: another client is about to look at what it changed.
    if (c->meta) (void)c->meta->Drain();
    if (c->cache) c->cache->FlushForBreak(oid);
    if (c->local && keep != POHMELFS_LEASE_WRITE) {
      c->local->Forget(oid);
      c->local->DropAttrs(oid);
      if (keep == POHMELFS_LEASE_NONE) c->local->ForgetXattrs(oid);
    }
  };
  h.before_reclaim = [c] {
    if (c->meta) (void)c->meta->Drain();
  };
  h.authority_changed = [c] { ReplayLocks(c); };
  h.invalidate = [c](const Oid& oid, uint32_t keep, bool all) {
    if (keep == POHMELFS_LEASE_READ || !c->se) return;  // caches stay valid under a read lease
    auto ino = c->inodes->Find(oid);
    if (!ino) return;
    fuse_lowlevel_notify_inval_inode(c->se, *ino, all ? 0 : -1, 0);
    if (!all) return;
    std::set<std::string> names;
    {
      std::lock_guard lk(c->names_mu);
      auto it = c->long_names.find(*ino);
      if (it != c->long_names.end()) {
        names.swap(it->second);
        c->long_names.erase(it);
      }
    }
    for (const auto& n : names) fuse_lowlevel_notify_inval_entry(c->se, *ino, n.c_str(), n.size());
  };
  h.lost = [c](const Oid& oid) {
    if (c->cache) c->cache->Fail(oid, Status::Error(EIO, "the lease on the file was lost"));
  };
  return h;
}

const fuse_lowlevel_ops* PohmelfsFuseOps() {
  return &kOps;
}

}  // namespace pohmelfs::client
