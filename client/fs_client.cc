#include "client/fs_client.h"

#include <algorithm>
#include <cstring>

namespace pohmelfs::client {

using proto::from_le;
using proto::to_le;
using proto::Writer;

namespace {
uint32_t Len(const std::string& s) {
  return static_cast<uint32_t>(s.size());
}

// GETXATTR and LISTXATTR replies: asked with size 0, a le32 size; else at most size bytes.
Result<std::vector<uint8_t>> SizedReply(Result<std::vector<uint8_t>> reply, uint32_t size,
                                        uint32_t* out_size) {
  if (!reply.ok()) return reply.status();
  if (size == 0) {
    proto::Reader r(*reply);
    uint32_t n;
    if (!r.Get(&n)) return Status::Error(EPROTO, "short xattr size reply");
    *out_size = from_le(n);
    return std::vector<uint8_t>{};
  }
  if (reply->size() > size) return Status::Error(EPROTO, "xattr reply longer than asked");
  *out_size = static_cast<uint32_t>(reply->size());
  return reply;
}

}  // namespace

Result<std::vector<uint8_t>> FsClient::Do(uint16_t opcode, std::span<const iovec> payload) {
  auto r = caller_->Call(opcode, payload);
  if (!r.ok()) return r.status();
  if (r->status != 0) return Status::Error(static_cast<int>(r->status));
  return std::move(r->payload);
}

Result<std::vector<uint8_t>> FsClient::Do(uint16_t opcode, const std::vector<uint8_t>& payload) {
  iovec v{const_cast<uint8_t*>(payload.data()), payload.size()};
  return Do(opcode, std::span<const iovec>(&v, 1));
}

Result<Entry> FsClient::DecodeEntry(const Result<std::vector<uint8_t>>& reply) {
  if (!reply.ok()) return reply.status();
  proto::Reader r(reply.value());
  pohmelfs_attr a;
  if (!r.Get(&a)) return Status::Error(EPROTO, "short attr reply");
  Entry e;
  e.oid = Oid::FromWire(a.oid);
  e.version = from_le(a.version);
  proto::AttrToStat(a, &e.st);
  return e;
}

Result<Entry> FsClient::Lookup(const Oid& parent, const std::string& name) {
  std::vector<uint8_t> b;
  Writer w(&b);
  pohmelfs_name_req q{parent.ToWire(), to_le(Len(name)), 0};
  w.Put(q);
  w.Bytes(name);
  return DecodeEntry(Do(POHMELFS_OP_LOOKUP, b));
}

Result<Entry> FsClient::GetAttr(const Oid& oid) {
  std::vector<uint8_t> b;
  Writer(&b).Put(pohmelfs_obj_req{oid.ToWire()});
  return DecodeEntry(Do(POHMELFS_OP_GETATTR, b));
}

Result<Entry> FsClient::SetAttr(const Oid& oid, const SetAttrArgs& a) {
  return DecodeEntry(Do(POHMELFS_OP_SETATTR, SetAttrBody(oid, a)));
}

std::vector<uint8_t> FsClient::WriteBody(const Oid& oid, uint64_t offset, const void* data,
                                         size_t size) {
  pohmelfs_write_req q{oid.ToWire(), to_le(offset), to_le(static_cast<uint32_t>(size)), 0};
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(q);
  w.Bytes(data, size);
  return b;
}

std::vector<uint8_t> FsClient::SetAttrBody(const Oid& oid, const SetAttrArgs& a) {
  pohmelfs_setattr_req q{};
  q.oid = oid.ToWire();
  q.valid = to_le(a.valid);
  q.mode = to_le(a.mode);
  q.uid = to_le(a.uid);
  q.gid = to_le(a.gid);
  q.size = to_le(a.size);
  q.atime_sec = to_le(static_cast<uint64_t>(a.atime.tv_sec));
  q.atime_nsec = to_le(static_cast<uint32_t>(a.atime.tv_nsec));
  q.mtime_sec = to_le(static_cast<uint64_t>(a.mtime.tv_sec));
  q.mtime_nsec = to_le(static_cast<uint32_t>(a.mtime.tv_nsec));
  q.version = to_le(a.version);
  std::vector<uint8_t> b;
  Writer(&b).Put(q);
  return b;
}

Result<DirPage> FsClient::ReadDir(const Oid& dir, uint64_t cookie, uint32_t max_bytes) {
  pohmelfs_readdir_req q{dir.ToWire(), to_le(cookie), to_le(max_bytes), 0};
  std::vector<uint8_t> b;
  Writer(&b).Put(q);
  auto reply = Do(POHMELFS_OP_READDIR, b);
  if (!reply.ok()) return reply.status();
  proto::Reader r(*reply);
  pohmelfs_readdir_rep rep;
  if (!r.Get(&rep)) return Status::Error(EPROTO, "short readdir reply");
  DirPage page;
  page.eof = from_le(rep.eof) != 0;
  uint32_t count = from_le(rep.count);
  for (uint32_t i = 0; i < count; i++) {
    pohmelfs_dirent de;
    if (!r.Get(&de)) return Status::Error(EPROTO, "short readdir entry");
    uint32_t len = from_le(de.name_len);
    DirEntry e;
    if (!proto::GetName(&r, len, &e.name).ok() || !r.Skip(POHMELFS_PAD8(len) - len))
      return Status::Error(EPROTO, "bad readdir entry name");
    e.entry.oid = Oid::FromWire(de.attr.oid);
    e.entry.version = from_le(de.attr.version);
    proto::AttrToStat(de.attr, &e.entry.st);
    e.next_cookie = from_le(de.next_cookie);
    page.entries.push_back(std::move(e));
  }
  return page;
}

Result<Entry> FsClient::MkDir(const Oid& parent, const std::string& name, uint32_t mode,
                              uint32_t uid, uint32_t gid, const Oid& new_oid) {
  return Create(POHMELFS_OP_MKDIR, CreateBody(parent, name, mode, 0, uid, gid, 0, new_oid));
}

Result<Entry> FsClient::MkNod(const Oid& parent, const std::string& name, uint32_t mode,
                              uint64_t rdev, uint32_t uid, uint32_t gid, bool open,
                              const Oid& new_oid) {
  uint32_t flags = POHMELFS_CREATE_EXCL | (open ? POHMELFS_CREATE_OPEN : 0u);
  return Create(POHMELFS_OP_MKNOD, CreateBody(parent, name, mode, rdev, uid, gid, flags, new_oid));
}

std::vector<uint8_t> FsClient::CreateBody(const Oid& parent, const std::string& name, uint32_t mode,
                                          uint64_t rdev, uint32_t uid, uint32_t gid, uint32_t flags,
                                          const Oid& new_oid) {
  pohmelfs_create_req q{};
  q.parent = parent.ToWire();
  q.new_oid = new_oid.ToWire();
  q.mode = to_le(mode);
  q.uid = to_le(uid);
  q.gid = to_le(gid);
  q.name_len = to_le(Len(name));
  q.rdev = to_le(rdev);
  q.flags = to_le(flags);
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(q);
  w.Bytes(name);
  return b;
}

Status FsClient::Unlink(const Oid& parent, const std::string& name) {
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(pohmelfs_name_req{parent.ToWire(), to_le(Len(name)), 0});
  w.Bytes(name);
  return Do(POHMELFS_OP_UNLINK, b).status();
}

Status FsClient::RmDir(const Oid& parent, const std::string& name) {
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(pohmelfs_name_req{parent.ToWire(), to_le(Len(name)), 0});
  w.Bytes(name);
  return Do(POHMELFS_OP_RMDIR, b).status();
}

Status FsClient::Rename(const Oid& old_parent, const std::string& old_name, const Oid& new_parent,
                        const std::string& new_name, uint32_t flags) {
  pohmelfs_rename_req q{old_parent.ToWire(),  new_parent.ToWire(), to_le(Len(old_name)),
                        to_le(Len(new_name)), to_le(flags),        0};
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(q);
  w.Bytes(old_name);
  w.Bytes(new_name);
  return Do(POHMELFS_OP_RENAME, b).status();
}

Result<Entry> FsClient::Link(const Oid& oid, const Oid& new_parent, const std::string& name) {
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(pohmelfs_link_req{oid.ToWire(), new_parent.ToWire(), to_le(Len(name)), 0});
  w.Bytes(name);
  return DecodeEntry(Do(POHMELFS_OP_LINK, b));
}

Result<Entry> FsClient::Symlink(const Oid& parent, const std::string& name,
                                const std::string& target, uint32_t uid, uint32_t gid,
                                const Oid& new_oid) {
  pohmelfs_symlink_req q{parent.ToWire(), new_oid.ToWire(), to_le(uid),
                         to_le(gid),      to_le(Len(name)), to_le(Len(target))};
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(q);
  w.Bytes(name);
  w.Bytes(target);
  return DecodeEntry(Do(POHMELFS_OP_SYMLINK, b));
}

Result<std::string> FsClient::ReadLink(const Oid& oid) {
  std::vector<uint8_t> b;
  Writer(&b).Put(pohmelfs_obj_req{oid.ToWire()});
  auto reply = Do(POHMELFS_OP_READLINK, b);
  if (!reply.ok()) return reply.status();
  if (reply->size() > POHMELFS_PATH_MAX) return Status::Error(EPROTO, "readlink reply too long");
  return std::string(reply->begin(), reply->end());
}

Result<Entry> FsClient::Open(const Oid& oid, uint32_t flags) {
  std::vector<uint8_t> b;
  Writer(&b).Put(pohmelfs_open_req{oid.ToWire(), to_le(flags), 0});
  return DecodeEntry(Do(POHMELFS_OP_OPEN, b));
}

Status FsClient::Release(const Oid& oid) {
  std::vector<uint8_t> b;
  Writer(&b).Put(pohmelfs_obj_req{oid.ToWire()});
  return Do(POHMELFS_OP_RELEASE, b).status();
}

Result<RpcReply> FsClient::Read(const Oid& oid, uint64_t offset, size_t size) {
  RpcReply data;
  size_t done = 0;
  while (done < size) {
    uint32_t chunk = static_cast<uint32_t>(std::min<size_t>(size - done, POHMELFS_IO_MAX));
    std::vector<uint8_t> b;
    Writer(&b).Put(pohmelfs_read_req{oid.ToWire(), to_le(offset + done), to_le(chunk), 0});
    iovec v{b.data(), b.size()};
    auto reply = caller_->Call(POHMELFS_OP_READ, std::span<const iovec>(&v, 1));
    if (reply.ok() && reply->status != 0) reply = Status::Error(static_cast<int>(reply->status));
    if (!reply.ok()) {
      if (done > 0) break;
      return reply.status();
    }
    const auto got = reply->bytes();
    if (got.size() > chunk) return Status::Error(EPROTO, "read reply longer than asked");
    const bool short_read = got.size() < chunk;
    if (done == 0 && (short_read || chunk == size)) {
      data = std::move(*reply);  // the usual case, one request: no copy
    } else {
      if (done == 0) data.payload.reserve(size);
      data.payload.insert(data.payload.end(), got.begin(), got.end());
    }
    done += got.size();
    if (short_read) break;  // end of file
  }
  return data;
}

Result<size_t> FsClient::Write(const Oid& oid, uint64_t offset, const void* data, size_t size) {
  size_t done = 0;
  while (done < size) {
    uint32_t chunk = static_cast<uint32_t>(std::min<size_t>(size - done, POHMELFS_IO_MAX));
    pohmelfs_write_req q{oid.ToWire(), to_le(offset + done), to_le(chunk), 0};
    iovec iov[2] = {{&q, sizeof(q)},
                    {const_cast<char*>(static_cast<const char*>(data) + done), chunk}};
    auto reply = Do(POHMELFS_OP_WRITE, std::span<const iovec>(iov, 2));
    if (!reply.ok()) {
      if (done > 0) break;
      return reply.status();
    }
    proto::Reader r(*reply);
    pohmelfs_write_rep rep;
    if (!r.Get(&rep)) return Status::Error(EPROTO, "short write reply");
    uint64_t written = from_le(rep.written);
    if (written > chunk) return Status::Error(EPROTO, "write reply claims too much");
    done += written;
    if (written < chunk) break;
  }
  return done;
}

Status FsClient::Fsync(const Oid& oid, bool datasync) {
  std::vector<uint8_t> b;
  Writer(&b).Put(pohmelfs_fsync_req{oid.ToWire(), to_le(uint32_t{datasync}), 0});
  return Do(POHMELFS_OP_FSYNC, b).status();
}

Result<struct statvfs> FsClient::StatFs() {
  auto reply = Do(POHMELFS_OP_STATFS, std::vector<uint8_t>{});
  if (!reply.ok()) return reply.status();
  proto::Reader r(*reply);
  pohmelfs_statfs_rep rep;
  if (!r.Get(&rep)) return Status::Error(EPROTO, "short statfs reply");
  struct statvfs sv {};
  sv.f_bsize = sv.f_frsize = from_le(rep.bsize);
  sv.f_blocks = from_le(rep.blocks);
  sv.f_bfree = from_le(rep.bfree);
  sv.f_bavail = from_le(rep.bavail);
  sv.f_files = from_le(rep.files);
  sv.f_ffree = sv.f_favail = from_le(rep.ffree);
  sv.f_namemax = from_le(rep.namemax);
  return sv;
}

Result<std::vector<uint8_t>> FsClient::GetXattr(const Oid& oid, const std::string& name,
                                                uint32_t size, uint32_t* value_size) {
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(pohmelfs_getxattr_req{oid.ToWire(), to_le(size), to_le(Len(name))});
  w.Bytes(name);
  return SizedReply(Do(POHMELFS_OP_GETXATTR, b), size, value_size);
}

Status FsClient::SetXattr(const Oid& oid, const std::string& name, const void* value, size_t size,
                          uint32_t flags) {
  if (size > POHMELFS_XATTR_SIZE_MAX) return Status::Error(E2BIG);
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(pohmelfs_setxattr_req{oid.ToWire(), to_le(flags), to_le(Len(name)),
                              to_le(static_cast<uint32_t>(size)), 0});
  w.Bytes(name);
  w.Bytes(value, size);
  return Do(POHMELFS_OP_SETXATTR, b).status();
}

Result<std::vector<uint8_t>> FsClient::ListXattr(const Oid& oid, uint32_t size,
                                                 uint32_t* list_size) {
  std::vector<uint8_t> b;
  Writer(&b).Put(pohmelfs_listxattr_req{oid.ToWire(), to_le(size), 0});
  return SizedReply(Do(POHMELFS_OP_LISTXATTR, b), size, list_size);
}

Status FsClient::RemoveXattr(const Oid& oid, const std::string& name) {
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(pohmelfs_removexattr_req{oid.ToWire(), to_le(Len(name)), 0});
  w.Bytes(name);
  return Do(POHMELFS_OP_REMOVEXATTR, b).status();
}

Status FsClient::Fallocate(const Oid& oid, uint32_t mode, uint64_t offset, uint64_t length) {
  std::vector<uint8_t> b;
  Writer(&b).Put(
      pohmelfs_fallocate_req{oid.ToWire(), to_le(offset), to_le(length), to_le(mode), 0});
  return Do(POHMELFS_OP_FALLOCATE, b).status();
}

Result<uint64_t> FsClient::RmTree(const Oid& parent, const std::string& name) {
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(pohmelfs_name_req{parent.ToWire(), to_le(Len(name)), 0});
  w.Bytes(name);
  auto reply = Do(POHMELFS_OP_RMTREE, b);
  if (!reply.ok()) return reply.status();
  proto::Reader r(*reply);
  uint64_t n;
  if (!r.Get(&n)) return Status::Error(EPROTO, "short rmtree reply");
  return from_le(n);
}

Result<Entry> FsClient::MkPath(const Oid& parent, const std::string& path, uint32_t mode,
                               uint32_t uid, uint32_t gid) {
  uint32_t count = static_cast<uint32_t>(std::count(path.begin(), path.end(), '/') + 1);
  if (count > POHMELFS_MKPATH_DEPTH_MAX) return Status::Error(ENAMETOOLONG, "path too deep");
  std::vector<uint8_t> b;
  Writer w(&b);
  w.Put(pohmelfs_mkpath_req{parent.ToWire(), to_le(mode), to_le(uid), to_le(gid), to_le(Len(path)),
                            to_le(count), 0});
  w.Bytes(path);
  for (uint32_t i = 0; i < count; i++) w.Put(Oid::Random().ToWire());
  return DecodeEntry(Do(POHMELFS_OP_MKPATH, b));
}

}  // namespace pohmelfs::client
