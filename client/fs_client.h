// Typed filesystem calls over a Caller (one server, or a replicated server set): builds each
// request with proto's structs, turns the reply status into a Status and decodes reply bodies
// with bounds checks.
// Thread-safety: as the Caller (many concurrent callers).
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <memory>
#include <string>
#include <vector>

#include "client/caller.h"

namespace pohmelfs::client {

using proto::Oid;

struct Entry {
  Oid oid;
  uint64_t version = 0;  // the object's change counter on the server that answered
  struct stat st {};
};

struct DirEntry {
  std::string name;
  Entry entry;
  uint64_t next_cookie = 0;
};

struct DirPage {
  std::vector<DirEntry> entries;
  bool eof = false;
};

struct SetAttrArgs {
  uint32_t valid = 0;  // POHMELFS_SETATTR_*
  uint32_t mode = 0, uid = 0, gid = 0;
  uint64_t size = 0;
  timespec atime{}, mtime{};
  uint64_t version = 0;  // with POHMELFS_SETATTR_VERSION
};

class FsClient {
 public:
  explicit FsClient(std::shared_ptr<Caller> caller) : caller_(std::move(caller)) {}

  Oid root() const { return caller_->root(); }
  Caller& caller() { return *caller_; }

  Result<Entry> Lookup(const Oid& parent, const std::string& name);
  Result<Entry> GetAttr(const Oid& oid);
  Result<Entry> SetAttr(const Oid& oid, const SetAttrArgs& a);
  Result<DirPage> ReadDir(const Oid& dir, uint64_t cookie, uint32_t max_bytes);
  // Creates take the new object's id: a fresh random one, or (resync) the id it has elsewhere.
  Result<Entry> MkDir(const Oid& parent, const std::string& name, uint32_t mode, uint32_t uid,
                      uint32_t gid, const Oid& new_oid = Oid::Random());
  // With open, a regular file is also opened (release it with Release).
  Result<Entry> MkNod(const Oid& parent, const std::string& name, uint32_t mode, uint64_t rdev,
                      uint32_t uid, uint32_t gid, bool open = false,
                      const Oid& new_oid = Oid::Random());
  // The body of a MKNOD or MKDIR request (create_req and the name).
  static std::vector<uint8_t> CreateBody(const Oid& parent, const std::string& name, uint32_t mode,
                                         uint64_t rdev, uint32_t uid, uint32_t gid, uint32_t flags,
                                         const Oid& new_oid);
  static std::vector<uint8_t> SetAttrBody(const Oid& oid, const SetAttrArgs& a);
  static std::vector<uint8_t> WriteBody(const Oid& oid, uint64_t offset, const void* data,
                                        size_t size);
  // Sends a MKNOD or MKDIR body made by CreateBody.
  Result<Entry> Create(uint16_t opcode, const std::vector<uint8_t>& body) {
    return DecodeEntry(Do(opcode, body));
  }
  Status Unlink(const Oid& parent, const std::string& name);
  Status RmDir(const Oid& parent, const std::string& name);
  Status Rename(const Oid& old_parent, const std::string& old_name, const Oid& new_parent,
                const std::string& new_name, uint32_t flags);
  Result<Entry> Link(const Oid& oid, const Oid& new_parent, const std::string& name);
  Result<Entry> Symlink(const Oid& parent, const std::string& name, const std::string& target,
                        uint32_t uid, uint32_t gid, const Oid& new_oid = Oid::Random());
  Result<std::string> ReadLink(const Oid& oid);
  Result<Entry> Open(const Oid& oid, uint32_t flags);
  Status Release(const Oid& oid);
  // Reads up to size bytes (several requests when size > IO_MAX); short at end of file. Up to
  // IO_MAX, the bytes come back in the reply's own buffer, without a copy.
  // The bytes are the reply's bytes(): often still in the RMA staging buffer they arrived in.
  Result<RpcReply> Read(const Oid& oid, uint64_t offset, size_t size);
  // Writes all of data (several requests when needed). Returns bytes written.
  Result<size_t> Write(const Oid& oid, uint64_t offset, const void* data, size_t size);
  Status Fsync(const Oid& oid, bool datasync);
  Result<struct statvfs> StatFs();
  // size 0 asks for the value's size (returned as the vector's size, contents empty).
  Result<std::vector<uint8_t>> GetXattr(const Oid& oid, const std::string& name, uint32_t size,
                                        uint32_t* value_size);
  Status SetXattr(const Oid& oid, const std::string& name, const void* value, size_t size,
                  uint32_t flags);
  Result<std::vector<uint8_t>> ListXattr(const Oid& oid, uint32_t size, uint32_t* list_size);
  Status RemoveXattr(const Oid& oid, const std::string& name);
  Status Fallocate(const Oid& oid, uint32_t mode, uint64_t offset, uint64_t length);
  // Removes parent/name and everything below it, in one request. Returns objects removed.
  Result<uint64_t> RmTree(const Oid& parent, const std::string& name);
  // Creates parent/"a/b/c" with its missing directories, in one request.
  Result<Entry> MkPath(const Oid& parent, const std::string& path, uint32_t mode, uint32_t uid,
                       uint32_t gid);

 private:
  // Runs the call; a server-side error becomes the returned Status.
  Result<std::vector<uint8_t>> Do(uint16_t opcode, std::span<const iovec> payload);
  Result<std::vector<uint8_t>> Do(uint16_t opcode, const std::vector<uint8_t>& payload);
  static Result<Entry> DecodeEntry(const Result<std::vector<uint8_t>>& reply);

  std::shared_ptr<Caller> caller_;
};

}  // namespace pohmelfs::client
