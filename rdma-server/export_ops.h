// Filesystem operations on the export, one handler per opcode. Each handler decodes its
// request with proto::Reader (every length checked), acts through ExportStore, and appends its
// reply body to `reply`. Errors are returned as Status (positive errno on the wire).
//
// Thread-safety: handlers run concurrently on the server's worker threads; the backing
// filesystem and ExportStore provide the needed atomicity.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "proto/codec.h"
#include "rdma-server/export_store.h"
#include "transport/rma_pool.h"
#include "transport/transport.h"

namespace pohmelfs::crypto {
class CryptoPool;
}

namespace pohmelfs::server {

// Per-session record of open handles (OPEN/RELEASE), released when a session ends.
class OpenHandles {
 public:
  virtual ~OpenHandles() = default;
  virtual void Opened(const Oid& oid) = 0;
  virtual void Released(const Oid& oid) = 0;
  // Handles open now (Opened minus Released).
  virtual size_t OpenCount() const = 0;
};

struct OpEnv {
  ExportStore* store;
  OpenHandles* handles;
  // The request's connection and the server's RMA staging buffers (READ_RMA, WRITE_RMA);
  // null where there are none (tests, connections without RMA).
  transport::Connection* conn = nullptr;
  transport::RmaPool* rma_pool = nullptr;
  // Root squash (pohmelfs-server --root-squash): uid and gid 0 given to new objects or by
  // SETATTR become 65534 (nobody, nogroup).
  bool root_squash = false;
  // Files the session may have open at once; OPEN past it fails with EMFILE.
  uint32_t max_open_handles = UINT32_MAX;
  // The connection's channel mode (POHMELFS_CRYPTO_*): other than none, RMA data must be
  // sealed (crypto/rma_seal.h), with the pool's threads when there is one.
  uint32_t channel_mode = POHMELFS_CRYPTO_NONE;
  crypto::CryptoPool* crypto_pool = nullptr;
};

// The owner an object gets for the uid or gid a client asked for.
inline uint32_t SquashId(const OpEnv& env, uint32_t id) {
  return env.root_squash && id == 0 ? 65534u : id;
}

// Executes one command. REQUIRES: opcode is not HELLO, PING or BATCH.
Status ExecuteOp(const OpEnv& env, uint16_t opcode, proto::Reader* req,
                 std::vector<uint8_t>* reply);

// Executes a request: one command, or a BATCH of commands.
Status ExecuteRequest(const OpEnv& env, uint16_t opcode, proto::Reader* req,
                      std::vector<uint8_t>* reply);

namespace ops {
// Namespace operations (export_ops.cc).
Status Lookup(const OpEnv&, proto::Reader*, proto::Writer*);
Status GetAttr(const OpEnv&, proto::Reader*, proto::Writer*);
Status SetAttr(const OpEnv&, proto::Reader*, proto::Writer*);
Status ReadDir(const OpEnv&, proto::Reader*, proto::Writer*);
Status MkDir(const OpEnv&, proto::Reader*, proto::Writer*);
Status RmDir(const OpEnv&, proto::Reader*, proto::Writer*);
Status MkNod(const OpEnv&, proto::Reader*, proto::Writer*);
Status Unlink(const OpEnv&, proto::Reader*, proto::Writer*);
Status Rename(const OpEnv&, proto::Reader*, proto::Writer*);
Status Link(const OpEnv&, proto::Reader*, proto::Writer*);
Status Symlink(const OpEnv&, proto::Reader*, proto::Writer*);
Status ReadLink(const OpEnv&, proto::Reader*, proto::Writer*);
Status RmTree(const OpEnv&, proto::Reader*, proto::Writer*);
Status MkPath(const OpEnv&, proto::Reader*, proto::Writer*);
// Data, xattr and filesystem operations (export_data_ops.cc).
Status Open(const OpEnv&, proto::Reader*, proto::Writer*);
Status Release(const OpEnv&, proto::Reader*, proto::Writer*);
Status Read(const OpEnv&, proto::Reader*, proto::Writer*);
Status ReadRma(const OpEnv&, proto::Reader*, proto::Writer*);
Status WriteRma(const OpEnv&, proto::Reader*, proto::Writer*);
Status Write(const OpEnv&, proto::Reader*, proto::Writer*);
Status Fsync(const OpEnv&, proto::Reader*, proto::Writer*);
Status StatFs(const OpEnv&, proto::Reader*, proto::Writer*);
Status GetXattr(const OpEnv&, proto::Reader*, proto::Writer*);
Status SetXattr(const OpEnv&, proto::Reader*, proto::Writer*);
Status ListXattr(const OpEnv&, proto::Reader*, proto::Writer*);
Status RemoveXattr(const OpEnv&, proto::Reader*, proto::Writer*);
Status Fallocate(const OpEnv&, proto::Reader*, proto::Writer*);
Status Replica(const OpEnv&, proto::Reader*, proto::Writer*);

// Shared helpers.
Status Short();  // EINVAL: request shorter than its struct
void PutAttr(proto::Writer* w, struct stat st, const Oid& oid, uint64_t version,
             bool index_link_counted);
// Stats oid, reads its version and appends its attr.
Status PutAttrById(const OpEnv& env, const Oid& oid, proto::Writer* w);
}  // namespace ops

}  // namespace pohmelfs::server
