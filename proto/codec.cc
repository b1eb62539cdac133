#include "proto/codec.h"

#include <openssl/rand.h>

namespace pohmelfs::proto {

Oid Oid::Root() {
  Oid o;
  o.b[15] = 1;
  return o;
}

Oid Oid::Random() {
  Oid o;
  while (o.IsZero() || o == Root()) {
    if (RAND_bytes(o.b.data(), static_cast<int>(o.b.size())) != 1) std::abort();
  }
  return o;
}

Oid Oid::FromWire(const pohmelfs_oid& w) {
  Oid o;
  std::memcpy(o.b.data(), w.bytes, 16);
  return o;
}

pohmelfs_oid Oid::ToWire() const {
  pohmelfs_oid w;
  std::memcpy(w.bytes, b.data(), 16);
  return w;
}

std::string Oid::Hex() const {
  static const char kDigits[] = "0123456789abcdef";
  std::string s(32, '0');
  for (size_t i = 0; i < 16; i++) {
    s[2 * i] = kDigits[b[i] >> 4];
    s[2 * i + 1] = kDigits[b[i] & 15];
  }
  return s;
}

bool Oid::FromHex(std::string_view hex, Oid* out) {
  if (hex.size() != 32) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < 16; i++) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->b[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

bool Oid::IsZero() const {
  for (auto c : b)
    if (c != 0) return false;
  return true;
}

void EncodeHeader(const Header& h, pohmelfs_hdr* out) {
  out->magic = to_le(uint32_t{POHMELFS_MAGIC});
  out->version = to_le(h.version);
  out->opcode = to_le(h.opcode);
  out->flags = to_le(h.flags);
  out->length = to_le(h.length);
  out->session = to_le(h.session);
  out->trans = to_le(h.trans);
  out->status = to_le(h.status);
  out->credits = to_le(h.credits);
}

Result<Header> DecodeHeader(const pohmelfs_hdr& in, uint32_t max_payload) {
  if (from_le(in.magic) != POHMELFS_MAGIC) return Status::Error(EPROTO, "bad magic");
  Header h;
  h.version = from_le(in.version);
  if (h.version < POHMELFS_PROTO_VERSION_MIN || h.version > POHMELFS_PROTO_VERSION_MAX)
    return Status::Error(EPROTONOSUPPORT,
                         "unsupported protocol version " + std::to_string(h.version));
  h.opcode = from_le(in.opcode);
  h.flags = from_le(in.flags);
  h.length = from_le(in.length);
  if (h.length > max_payload)
    return Status::Error(EMSGSIZE, "payload of " + std::to_string(h.length) + " bytes");
  h.session = from_le(in.session);
  h.trans = from_le(in.trans);
  h.status = from_le(in.status);
  h.credits = from_le(in.credits);
  return h;
}

const char* OpcodeName(uint16_t op) {
  switch (op) {
    case POHMELFS_OP_HELLO:
      return "hello";
    case POHMELFS_OP_PING:
      return "ping";
    case POHMELFS_OP_BATCH:
      return "batch";
    case POHMELFS_OP_LOOKUP:
      return "lookup";
    case POHMELFS_OP_GETATTR:
      return "getattr";
    case POHMELFS_OP_SETATTR:
      return "setattr";
    case POHMELFS_OP_READDIR:
      return "readdir";
    case POHMELFS_OP_MKDIR:
      return "mkdir";
    case POHMELFS_OP_RMDIR:
      return "rmdir";
    case POHMELFS_OP_MKNOD:
      return "mknod";
    case POHMELFS_OP_OPEN:
      return "open";
    case POHMELFS_OP_RELEASE:
      return "release";
    case POHMELFS_OP_READ:
      return "read";
    case POHMELFS_OP_WRITE:
      return "write";
    case POHMELFS_OP_FSYNC:
      return "fsync";
    case POHMELFS_OP_UNLINK:
      return "unlink";
    case POHMELFS_OP_RENAME:
      return "rename";
    case POHMELFS_OP_LINK:
      return "link";
    case POHMELFS_OP_SYMLINK:
      return "symlink";
    case POHMELFS_OP_READLINK:
      return "readlink";
    case POHMELFS_OP_STATFS:
      return "statfs";
    case POHMELFS_OP_GETXATTR:
      return "getxattr";
    case POHMELFS_OP_SETXATTR:
      return "setxattr";
    case POHMELFS_OP_LISTXATTR:
      return "listxattr";
    case POHMELFS_OP_REMOVEXATTR:
      return "removexattr";
    case POHMELFS_OP_FALLOCATE:
      return "fallocate";
    case POHMELFS_OP_RMTREE:
      return "rmtree";
    case POHMELFS_OP_MKPATH:
      return "mkpath";
    case POHMELFS_OP_REPLICA:
      return "replica";
    case POHMELFS_OP_LEASE:
      return "lease";
    case POHMELFS_OP_LEASE_BREAK:
      return "lease_break";
    case POHMELFS_OP_LOCK:
      return "lock";
    case POHMELFS_OP_READ_RMA:
      return "read_rma";
    case POHMELFS_OP_WRITE_RMA:
      return "write_rma";
    case POHMELFS_OP_AUTH:
      return "auth";
    default:
      return "unknown";
  }
}

Result<HelloRequest> DecodeHelloRequest(std::span<const uint8_t> payload) {
  Reader r(payload);
  HelloRequest h;
  if (!r.Get(&h.q) || !r.Bytes(from_le(h.q.auth_len), &h.auth) ||
      !r.Bytes(from_le(h.q.name_len), &h.name))
    return Status::Error(EPROTO, "malformed HELLO: lengths past the end of the message");
  if (h.name.size() > 256) return Status::Error(EPROTO, "malformed HELLO: client name too long");
  if (!h.auth.empty() && h.auth.size() != sizeof(pohmelfs_hello_auth))
    return Status::Error(EPROTO, "malformed HELLO: authentication data of a wrong size");
  return h;
}

Result<HelloReply> DecodeHelloReply(std::span<const uint8_t> payload) {
  Reader r(payload);
  HelloReply h;
  if (!r.Get(&h.rep) || !r.Bytes(from_le(h.rep.auth_len), &h.auth))
    return Status::Error(EPROTO, "short handshake reply");
  if (!h.auth.empty() && h.auth.size() != sizeof(pohmelfs_hello_rep_auth::nonce) &&
      h.auth.size() != sizeof(pohmelfs_hello_rep_auth))
    return Status::Error(EPROTO, "malformed authentication data in the handshake reply");
  return h;
}

bool IsMutating(uint16_t op) {
  switch (op) {
    case POHMELFS_OP_SETATTR:
    case POHMELFS_OP_MKDIR:
    case POHMELFS_OP_RMDIR:
    case POHMELFS_OP_MKNOD:
    case POHMELFS_OP_OPEN:     // O_TRUNC, and the open handle
    case POHMELFS_OP_RELEASE:  // drops a handle: must not run twice
    case POHMELFS_OP_WRITE:
    case POHMELFS_OP_WRITE_RMA:
    case POHMELFS_OP_UNLINK:
    case POHMELFS_OP_RENAME:
    case POHMELFS_OP_LINK:
    case POHMELFS_OP_SYMLINK:
    case POHMELFS_OP_SETXATTR:
    case POHMELFS_OP_REMOVEXATTR:
    case POHMELFS_OP_FALLOCATE:
    case POHMELFS_OP_RMTREE:
    case POHMELFS_OP_MKPATH:
    case POHMELFS_OP_BATCH:
      return true;
    default:
      return false;
  }
}

Status GetName(Reader* r, uint32_t len, std::string* out) {
  if (len == 0) return Status::Error(EINVAL, "empty name");
  if (len > POHMELFS_NAME_MAX) return Status::Error(ENAMETOOLONG, "name too long");
  std::string_view v;
  if (!r->Bytes(len, &v)) return Status::Error(EINVAL, "name past end of message");
  if (v == "." || v == "..") return Status::Error(EINVAL, "dot name");
  if (v.find('/') != std::string_view::npos || v.find('\0') != std::string_view::npos)
    return Status::Error(EINVAL, "name with '/' or NUL");
  out->assign(v);
  return Status::Ok();
}

Status GetPath(Reader* r, uint32_t len, std::string* out) {
  if (len == 0) return Status::Error(ENOENT, "empty path");
  if (len > POHMELFS_PATH_MAX) return Status::Error(ENAMETOOLONG, "path too long");
  std::string_view v;
  if (!r->Bytes(len, &v)) return Status::Error(EINVAL, "path past end of message");
  if (v.find('\0') != std::string_view::npos) return Status::Error(EINVAL, "path with NUL");
  out->assign(v);
  return Status::Ok();
}

void FillAttr(const struct stat& st, const Oid& oid, uint64_t version, pohmelfs_attr* a) {
  std::memset(a, 0, sizeof(*a));
  a->oid = oid.ToWire();
  a->size = to_le(static_cast<uint64_t>(st.st_size));
  a->blocks = to_le(static_cast<uint64_t>(st.st_blocks));
  a->version = to_le(version);
  a->rdev = to_le(static_cast<uint64_t>(st.st_rdev));
  a->atime_sec = to_le(static_cast<uint64_t>(st.st_atim.tv_sec));
  a->mtime_sec = to_le(static_cast<uint64_t>(st.st_mtim.tv_sec));
  a->ctime_sec = to_le(static_cast<uint64_t>(st.st_ctim.tv_sec));
  a->atime_nsec = to_le(static_cast<uint32_t>(st.st_atim.tv_nsec));
  a->mtime_nsec = to_le(static_cast<uint32_t>(st.st_mtim.tv_nsec));
  a->ctime_nsec = to_le(static_cast<uint32_t>(st.st_ctim.tv_nsec));
  a->mode = to_le(static_cast<uint32_t>(st.st_mode));
  a->uid = to_le(static_cast<uint32_t>(st.st_uid));
  a->gid = to_le(static_cast<uint32_t>(st.st_gid));
  a->nlink = to_le(static_cast<uint32_t>(st.st_nlink));
  a->blksize = to_le(static_cast<uint32_t>(st.st_blksize));
}

void AttrToStat(const pohmelfs_attr& a, struct stat* st) {
  std::memset(st, 0, sizeof(*st));
  st->st_size = static_cast<off_t>(from_le(a.size));
  st->st_blocks = static_cast<blkcnt_t>(from_le(a.blocks));
  st->st_rdev = static_cast<dev_t>(from_le(a.rdev));
  st->st_atim.tv_sec = static_cast<time_t>(from_le(a.atime_sec));
  st->st_mtim.tv_sec = static_cast<time_t>(from_le(a.mtime_sec));
  st->st_ctim.tv_sec = static_cast<time_t>(from_le(a.ctime_sec));
  st->st_atim.tv_nsec = from_le(a.atime_nsec);
  st->st_mtim.tv_nsec = from_le(a.mtime_nsec);
  st->st_ctim.tv_nsec = from_le(a.ctime_nsec);
  st->st_mode = from_le(a.mode);
  st->st_uid = from_le(a.uid);
  st->st_gid = from_le(a.gid);
  st->st_nlink = from_le(a.nlink);
  st->st_blksize = from_le(a.blksize);
}

}  // namespace pohmelfs::proto
