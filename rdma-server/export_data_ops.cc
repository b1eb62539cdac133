// Data, xattr and filesystem-wide operations (STATFS, REPLICA).
#include <fcntl.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>

#include "crypto/rma_seal.h"
#include "rdma-server/export_ops.h"

namespace pohmelfs::server::ops {

using proto::from_le;
using proto::Reader;
using proto::to_le;
using proto::Writer;

namespace {

// How long READ_RMA and WRITE_RMA wait for a free staging buffer, and for their RMA.
constexpr std::chrono::milliseconds kRmaBufferWait{5000};
constexpr std::chrono::milliseconds kRmaBound{30000};

// Reads up to size bytes at offset (fewer only at end of file); EINTR is retried.
Result<size_t> PreadFull(int fd, uint8_t* out, size_t size, uint64_t offset) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("read");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

bool IsPrivateXattr(const std::string& name) {
  return name.rfind(kPrivateXattrPrefix, 0) == 0;
}

Status GetXattrName(Reader* r, uint32_t len, std::string* name) {
  if (len == 0) return Status::Error(EINVAL, "empty xattr name");
  if (len > POHMELFS_XATTR_NAME_MAX) return Status::Error(ERANGE, "xattr name too long");
  std::string_view v;
  if (!r->Bytes(len, &v)) return Short();
  if (v.find('\0') != std::string_view::npos) return Status::Error(EINVAL, "NUL in xattr name");
  name->assign(v);
  return Status::Ok();
}

// REPLICA LIST: the count, then the marked peers.
Status ListStale(const OpEnv& env, Writer* w) {
  auto peers = env.store->ListStale(POHMELFS_REPLICA_LIST_MAX);
  if (!peers.ok()) return peers.status();
  pohmelfs_replica_list_rep rep{};
  rep.count = to_le(static_cast<uint32_t>(peers->size()));
  w->Put(rep);
  for (const Oid& peer : *peers) w->Put(peer.ToWire());
  return Status::Ok();
}

}  // namespace

Status Open(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_open_req q;
  if (!r->Get(&q)) return Short();
  Oid oid = Oid::FromWire(q.oid);
  uint32_t flags = from_le(q.flags);
  if (env.handles->OpenCount() >= env.max_open_handles)
    return Status::Error(EMFILE, "too many open files in this session");
  // Checked and recorded as open together, so the last-name detach cannot fall in between.
  std::lock_guard object(env.store->ObjectLock(oid));
  auto st = env.store->StatById(oid);
  if (!st.ok()) return st.status();
  if ((flags & POHMELFS_OPEN_TRUNC) && S_ISREG(st->st_mode)) {
    auto fd = env.store->OpenFile(oid);
    if (!fd.ok()) return fd.status();
    if (ftruncate((*fd)->get(), 0) != 0) return Status::FromErrno("truncate");
    POHMELFS_RETURN_IF_ERROR(
        ExportStore::BumpVersionLocked(ExportStore::XattrTarget::OfFd((*fd)->get())));
    st = env.store->StatById(oid);
    if (!st.ok()) return st.status();
  }
  auto version = env.store->VersionById(oid);
  if (!version.ok()) return version.status();
  if (S_ISREG(st->st_mode)) env.handles->Opened(oid);
  PutAttr(w, *st, oid, *version, false);
  return Status::Ok();
}

Status Release(const OpEnv& env, Reader* r, Writer*) {
  pohmelfs_obj_req q;
  if (!r->Get(&q)) return Short();
  env.handles->Released(Oid::FromWire(q.oid));
  return Status::Ok();
}

Status Read(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_read_req q;
  if (!r->Get(&q)) return Short();
  uint32_t size = from_le(q.size);
  uint64_t offset = from_le(q.offset);
  if (size > POHMELFS_IO_MAX) return Status::Error(EINVAL, "read larger than IO_MAX");
  if (offset > static_cast<uint64_t>(INT64_MAX)) return Status::Error(EINVAL, "bad offset");
  auto fd = env.store->OpenFile(Oid::FromWire(q.oid));
  if (!fd.ok()) return fd.status();
  // Read straight into the reply buffer.
  size_t start = w->size();
  w->Grow(size);
  auto done = PreadFull((*fd)->get(), w->At(start), size, offset);
  if (!done.ok()) return done.status();
  w->Truncate(start + *done);
  return Status::Ok();
}

namespace {

// Writes data at offset (or at the end, with POHMELFS_WRITE_APPEND) and replies with
// pohmelfs_write_rep: WRITE and WRITE_RMA.
Status WriteData(const OpEnv& env, const pohmelfs_oid& wire_oid, uint64_t offset, uint32_t flags,
                 std::span<const uint8_t> data, Writer* w) {
  const size_t size = data.size();
  Oid oid = Oid::FromWire(wire_oid);
  auto fd = env.store->OpenFile(oid);
  if (!fd.ok()) return fd.status();
  bool append = flags & POHMELFS_WRITE_APPEND;
  size_t done = 0;
  while (done < size) {
    iovec v{const_cast<uint8_t*>(data.data() + done), size - done};
    ssize_t n =
        append ? pwritev2((*fd)->get(), &v, 1, -1, RWF_APPEND)
               : pwrite((*fd)->get(), v.iov_base, v.iov_len, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done > 0) break;  // report the short write
      return Status::FromErrno("write");
    }
    done += static_cast<size_t>(n);
  }
  POHMELFS_RETURN_IF_ERROR(
      env.store->BumpVersion(oid, ExportStore::XattrTarget::OfFd((*fd)->get())));
  struct stat st;
  if (fstat((*fd)->get(), &st) != 0) return Status::FromErrno("fstat");
  pohmelfs_write_rep rep{};
  rep.written = to_le(static_cast<uint64_t>(done));
  rep.size = to_le(static_cast<uint64_t>(st.st_size));
  w->Put(rep);
  return Status::Ok();
}

// The RMA side of READ_RMA and WRITE_RMA: the connection must have RMA, and the client's
// buffer must hold the transfer.
Status CheckRma(const OpEnv& env, const pohmelfs_rma_buf& buf, uint32_t size) {
  if (!env.conn || !env.conn->rma() || !env.rma_pool)
    return Status::Error(EOPNOTSUPP, "RMA is not available on this connection");
  if (size > POHMELFS_IO_MAX) return Status::Error(EINVAL, "transfer larger than IO_MAX");
  if (from_le(buf.len) < size) return Status::Error(EINVAL, "RMA buffer smaller than the transfer");
  return Status::Ok();
}

}  // namespace

Status Write(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_write_req q;
  if (!r->Get(&q)) return Short();
  uint32_t size = from_le(q.size);
  uint64_t offset = from_le(q.offset);
  if (size > POHMELFS_IO_MAX) return Status::Error(EINVAL, "write larger than IO_MAX");
  if (offset > static_cast<uint64_t>(INT64_MAX) - size) return Status::Error(EFBIG, "bad offset");
  std::string_view data;
  if (!r->Bytes(size, &data)) return Status::Error(EINVAL, "write data past end of message");
  return WriteData(env, q.oid, offset, from_le(q.flags),
                   {reinterpret_cast<const uint8_t*>(data.data()), data.size()}, w);
}

Status WriteRma(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_write_rma_req q;
  if (!r->Get(&q)) return Short();
  const uint32_t size = from_le(q.size);
  const uint64_t offset = from_le(q.offset);
  const uint32_t flags = from_le(q.flags);
  POHMELFS_RETURN_IF_ERROR(CheckRma(env, q.buf, size));
  if (offset > static_cast<uint64_t>(INT64_MAX) - size) return Status::Error(EFBIG, "bad offset");
  const bool sealed = flags & POHMELFS_RMA_SEALED;
  if (!sealed && env.channel_mode != POHMELFS_CRYPTO_NONE)
    return Status::Error(EPERM, "unsealed RMA data on a protected channel");
  std::string_view seal;
  if (sealed && !r->Bytes(r->left(), &seal)) return Short();
  auto lease = env.rma_pool->Acquire(kRmaBufferWait);
  if (!lease) return Status::Error(ENOBUFS, "no RMA buffer free");
  // Pull the data from the client's registered buffer, check it, then write it as WRITE does.
  POHMELFS_RETURN_IF_ERROR(transport::RmaAndWait(
      *env.conn, false, lease, size, {from_le(q.buf.addr), from_le(q.buf.key)}, kRmaBound));
  if (sealed) {
    const uint32_t expect = env.channel_mode == POHMELFS_CRYPTO_NONE ? 0 : env.channel_mode;
    POHMELFS_RETURN_IF_ERROR(crypto::OpenRma(expect, {q.oid, offset, size}, {lease->data(), size},
                                             seal, env.crypto_pool));
  }
  return WriteData(env, q.oid, offset, flags & ~POHMELFS_RMA_SEALED, {lease->data(), size}, w);
}

Status ReadRma(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_read_rma_req q;
  if (!r->Get(&q)) return Short();
  const uint32_t size = from_le(q.size);
  const uint64_t offset = from_le(q.offset);
  POHMELFS_RETURN_IF_ERROR(CheckRma(env, q.buf, size));
  if (offset > static_cast<uint64_t>(INT64_MAX)) return Status::Error(EINVAL, "bad offset");
  auto fd = env.store->OpenFile(Oid::FromWire(q.oid));
  if (!fd.ok()) return fd.status();
  auto lease = env.rma_pool->Acquire(kRmaBufferWait);
  if (!lease) return Status::Error(ENOBUFS, "no RMA buffer free");
  auto read = PreadFull((*fd)->get(), lease->data(), size, offset);
  if (!read.ok()) return read.status();
  const size_t done = *read;
  // Sealed on a protected channel, or when the client asks (it then checks what it gets).
  const uint32_t mode = env.channel_mode != POHMELFS_CRYPTO_NONE ? env.channel_mode
                        : (from_le(q.flags) & POHMELFS_RMA_SEALED)
                            ? uint32_t{POHMELFS_CRYPTO_CRC32C}
                            : uint32_t{POHMELFS_CRYPTO_NONE};
  std::vector<uint8_t> seal;
  if (mode != POHMELFS_CRYPTO_NONE) {
    auto sealed = crypto::SealRma(mode, {q.oid, offset, static_cast<uint32_t>(done)},
                                  {lease->data(), done}, env.crypto_pool);
    if (!sealed.ok()) return sealed.status();
    seal = std::move(*sealed);
  }
  // Place the data in the client's buffer; the reply, sent after this returns, reaches the
  // client after the data and says how much there is.
  if (done > 0)
    POHMELFS_RETURN_IF_ERROR(transport::RmaWriteThenSend(
        *env.conn, lease, done, {from_le(q.buf.addr), from_le(q.buf.key)}));
  pohmelfs_read_rma_rep rep{};
  rep.bytes = to_le(static_cast<uint32_t>(done));
  rep.flags = to_le(seal.empty() ? 0u : uint32_t{POHMELFS_RMA_SEALED});
  w->Put(rep);
  if (!seal.empty()) w->Bytes(seal.data(), seal.size());
  return Status::Ok();
}

Status Fsync(const OpEnv& env, Reader* r, Writer*) {
  pohmelfs_fsync_req q;
  if (!r->Get(&q)) return Short();
  Oid oid = Oid::FromWire(q.oid);
  auto is_dir = env.store->IsDir(oid);
  if (!is_dir.ok()) return is_dir.status();
  if (*is_dir) {
    auto d = env.store->OpenDir(oid);
    if (!d.ok()) return d.status();
    UniqueFd fd(openat((*d)->get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid() || fsync(fd.get()) != 0) return Status::FromErrno("fsync directory");
    return Status::Ok();
  }
  auto fd = env.store->OpenFile(oid);
  if (!fd.ok()) return fd.status();
  int rc = from_le(q.datasync) ? fdatasync((*fd)->get()) : fsync((*fd)->get());
  if (rc != 0) return Status::FromErrno("fsync");
  return Status::Ok();
}

Status StatFs(const OpEnv& env, Reader*, Writer* w) {
  struct statvfs sv;
  UniqueFd root(openat(env.store->root_fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid() || fstatvfs(root.get(), &sv) != 0) return Status::FromErrno("statfs");
  pohmelfs_statfs_rep rep{};
  rep.blocks = to_le(static_cast<uint64_t>(sv.f_blocks));
  rep.bfree = to_le(static_cast<uint64_t>(sv.f_bfree));
  rep.bavail = to_le(static_cast<uint64_t>(sv.f_bavail));
  rep.files = to_le(static_cast<uint64_t>(sv.f_files));
  rep.ffree = to_le(static_cast<uint64_t>(sv.f_ffree));
  rep.bsize = to_le(static_cast<uint32_t>(sv.f_frsize ? sv.f_frsize : sv.f_bsize));
  rep.namemax = to_le(uint32_t{POHMELFS_NAME_MAX});
  w->Put(rep);
  return Status::Ok();
}

Status GetXattr(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_getxattr_req q;
  if (!r->Get(&q)) return Short();
  std::string name;
  POHMELFS_RETURN_IF_ERROR(GetXattrName(r, from_le(q.name_len), &name));
  if (IsPrivateXattr(name)) return Status::Error(ENODATA);
  auto t = env.store->XattrPath(Oid::FromWire(q.oid));
  if (!t.ok()) return t.status();
  uint32_t size = std::min<uint32_t>(from_le(q.size), POHMELFS_XATTR_SIZE_MAX);
  std::vector<uint8_t> buf(size);
  ssize_t n = t->Get(name.c_str(), size ? buf.data() : nullptr, size);
  if (n < 0) return Status::FromErrno("getxattr");
  if (size == 0) {
    w->Put(to_le(static_cast<uint32_t>(n)));
  } else {
    w->Bytes(buf.data(), static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status SetXattr(const OpEnv& env, Reader* r, Writer*) {
  pohmelfs_setxattr_req q;
  if (!r->Get(&q)) return Short();
  std::string name;
  POHMELFS_RETURN_IF_ERROR(GetXattrName(r, from_le(q.name_len), &name));
  uint32_t len = from_le(q.value_len);
  if (len > POHMELFS_XATTR_SIZE_MAX) return Status::Error(E2BIG, "xattr value too large");
  std::string_view value;
  if (!r->Bytes(len, &value)) return Short();
  uint32_t flags = from_le(q.flags);
  if (flags & ~uint32_t{XATTR_CREATE | XATTR_REPLACE}) return Status::Error(EINVAL, "xattr flags");
  if (IsPrivateXattr(name)) return Status::Error(EPERM, "reserved xattr");
  Oid oid = Oid::FromWire(q.oid);
  auto t = env.store->XattrPath(oid);
  if (!t.ok()) return t.status();
  if (t->Set(name.c_str(), value.data(), len, static_cast<int>(flags)) != 0)
    return Status::FromErrno("setxattr");
  return env.store->BumpVersion(oid, *t);
}

Status ListXattr(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_listxattr_req q;
  if (!r->Get(&q)) return Short();
  auto t = env.store->XattrPath(Oid::FromWire(q.oid));
  if (!t.ok()) return t.status();
  std::vector<char> buf(POHMELFS_XATTR_SIZE_MAX);
  ssize_t n = t->List(buf.data(), buf.size());
  if (n < 0) return Status::FromErrno("listxattr");
  std::string out;
  for (ssize_t i = 0; i < n;) {
    std::string name(buf.data() + i);
    i += static_cast<ssize_t>(name.size()) + 1;
    if (!IsPrivateXattr(name)) {
      out += name;
      out.push_back('\0');
    }
  }
  uint32_t size = from_le(q.size);
  if (size == 0) {
    w->Put(to_le(static_cast<uint32_t>(out.size())));
  } else {
    if (out.size() > size) return Status::Error(ERANGE);
    w->Bytes(out);
  }
  return Status::Ok();
}

Status RemoveXattr(const OpEnv& env, Reader* r, Writer*) {
  pohmelfs_removexattr_req q;
  if (!r->Get(&q)) return Short();
  std::string name;
  POHMELFS_RETURN_IF_ERROR(GetXattrName(r, from_le(q.name_len), &name));
  if (IsPrivateXattr(name)) return Status::Error(EPERM, "reserved xattr");
  Oid oid = Oid::FromWire(q.oid);
  auto t = env.store->XattrPath(oid);
  if (!t.ok()) return t.status();
  if (t->Remove(name.c_str()) != 0) return Status::FromErrno("removexattr");
  return env.store->BumpVersion(oid, *t);
}

Status Fallocate(const OpEnv& env, Reader* r, Writer*) {
  pohmelfs_fallocate_req q;
  if (!r->Get(&q)) return Short();
  uint64_t off = from_le(q.offset), len = from_le(q.length);
  if (off > static_cast<uint64_t>(INT64_MAX) || len > static_cast<uint64_t>(INT64_MAX) - off)
    return Status::Error(EFBIG, "bad range");
  Oid oid = Oid::FromWire(q.oid);
  auto fd = env.store->OpenFile(oid);
  if (!fd.ok()) return fd.status();
  if (fallocate((*fd)->get(), static_cast<int>(from_le(q.mode)), static_cast<off_t>(off),
                static_cast<off_t>(len)) != 0)
    return Status::FromErrno("fallocate");
  return env.store->BumpVersion(oid, ExportStore::XattrTarget::OfFd((*fd)->get()));
}

Status Replica(const OpEnv& env, Reader* r, Writer* w) {
  pohmelfs_replica_req q;
  if (!r->Get(&q)) return Short();
  uint32_t cmd = from_le(q.cmd);
  Oid peer = Oid::FromWire(q.peer);
  if ((cmd == POHMELFS_REPLICA_MARK || cmd == POHMELFS_REPLICA_CLEAR) && peer.IsZero())
    return Status::Error(EINVAL, "zero peer id");
  switch (cmd) {
    case POHMELFS_REPLICA_MARK:
      return env.store->MarkStale(peer);
    case POHMELFS_REPLICA_CLEAR:
      return env.store->ClearStale(peer);
    case POHMELFS_REPLICA_LIST:
      return ListStale(env, w);
    default:
      return Status::Error(EINVAL, "unknown replica command");
  }
}

}  // namespace pohmelfs::server::ops
