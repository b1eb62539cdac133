// Routes a request to its handler, and runs BATCH requests command by command.
#include <spdlog/spdlog.h>

#include "rdma-server/export_ops.h"

namespace pohmelfs::server {

using proto::from_le;
using proto::to_le;

namespace {
using Handler = Status (*)(const OpEnv&, proto::Reader*, proto::Writer*);

Handler HandlerFor(uint16_t opcode) {
  switch (opcode) {
    case POHMELFS_OP_LOOKUP:
      return ops::Lookup;
    case POHMELFS_OP_GETATTR:
      return ops::GetAttr;
    case POHMELFS_OP_SETATTR:
      return ops::SetAttr;
    case POHMELFS_OP_READDIR:
      return ops::ReadDir;
    case POHMELFS_OP_MKDIR:
      return ops::MkDir;
    case POHMELFS_OP_RMDIR:
      return ops::RmDir;
    case POHMELFS_OP_MKNOD:
      return ops::MkNod;
    case POHMELFS_OP_OPEN:
      return ops::Open;
    case POHMELFS_OP_RELEASE:
      return ops::Release;
    case POHMELFS_OP_READ:
      return ops::Read;
    case POHMELFS_OP_WRITE:
      return ops::Write;
    case POHMELFS_OP_READ_RMA:
      return ops::ReadRma;
    case POHMELFS_OP_WRITE_RMA:
      return ops::WriteRma;
    case POHMELFS_OP_FSYNC:
      return ops::Fsync;
    case POHMELFS_OP_UNLINK:
      return ops::Unlink;
    case POHMELFS_OP_RENAME:
      return ops::Rename;
    case POHMELFS_OP_LINK:
      return ops::Link;
    case POHMELFS_OP_SYMLINK:
      return ops::Symlink;
    case POHMELFS_OP_READLINK:
      return ops::ReadLink;
    case POHMELFS_OP_STATFS:
      return ops::StatFs;
    case POHMELFS_OP_GETXATTR:
      return ops::GetXattr;
    case POHMELFS_OP_SETXATTR:
      return ops::SetXattr;
    case POHMELFS_OP_LISTXATTR:
      return ops::ListXattr;
    case POHMELFS_OP_REMOVEXATTR:
      return ops::RemoveXattr;
    case POHMELFS_OP_FALLOCATE:
      return ops::Fallocate;
    case POHMELFS_OP_RMTREE:
      return ops::RmTree;
    case POHMELFS_OP_MKPATH:
      return ops::MkPath;
    case POHMELFS_OP_REPLICA:
      return ops::Replica;
    default:
      return nullptr;
  }
}

Status ExecuteBatch(const OpEnv& env, proto::Reader* r, std::vector<uint8_t>* reply) {
  pohmelfs_batch_req q;
  if (!r->Get(&q)) return ops::Short();
  uint32_t count = from_le(q.count);
  if (count == 0 || count > POHMELFS_BATCH_MAX) return Status::Error(EINVAL, "bad batch count");
  proto::Writer w(reply);
  size_t head = w.size();
  pohmelfs_batch_rep rep{};
  w.Put(rep);
  uint32_t done = 0;
  for (; done < count; done++) {
    pohmelfs_cmd cmd;
    if (!r->Get(&cmd)) return Status::Error(EINVAL, "batch command past end of message");
    uint32_t len = from_le(cmd.length);
    std::string_view body;
    if (!r->Bytes(len, &body) || !r->Skip(POHMELFS_PAD8(len) - len))
      return Status::Error(EINVAL, "batch command body past end of message");
    uint16_t op = from_le(cmd.opcode);
    // Batches carry metadata; bulk reads go alone (their replies are large and, inside a
    // mutating batch, would be kept in the resend record).
    if (op == POHMELFS_OP_READ || op == POHMELFS_OP_READDIR || op == POHMELFS_OP_READ_RMA)
      return Status::Error(EINVAL, "READ and READDIR are not allowed in a batch");
    size_t at = w.size();
    pohmelfs_cmd_rep cr{};
    cr.opcode = to_le(op);
    w.Put(cr);
    size_t body_start = w.size();
    proto::Reader sub(body.data(), body.size());
    Status s = ExecuteOp(env, op, &sub, reply);
    if (!s.ok()) reply->resize(body_start);
    cr.status = to_le(static_cast<uint32_t>(s.code()));
    cr.length = to_le(static_cast<uint32_t>(reply->size() - body_start));
    w.PatchAt(at, cr);
    w.Pad8();
    if (reply->size() > POHMELFS_PAYLOAD_MAX) return Status::Error(E2BIG, "batch reply too large");
    if (!s.ok()) {
      done++;
      break;
    }
  }
  rep.count = to_le(done);
  w.PatchAt(head, rep);
  return Status::Ok();
}

}  // namespace

Status ExecuteOp(const OpEnv& env, uint16_t opcode, proto::Reader* req,
                 std::vector<uint8_t>* reply) {
  Handler h = HandlerFor(opcode);
  if (!h)
    return Status::Error(EOPNOTSUPP,
                         std::string("opcode not allowed here: ") + proto::OpcodeName(opcode));
  // Bytes after a request's fields are ignored, so that a newer client may append fields.
  proto::Writer w(reply);
  return h(env, req, &w);
}

Status ExecuteRequest(const OpEnv& env, uint16_t opcode, proto::Reader* req,
                      std::vector<uint8_t>* reply) {
  if (opcode == POHMELFS_OP_BATCH) return ExecuteBatch(env, req, reply);
  return ExecuteOp(env, opcode, req, reply);
}

}  // namespace pohmelfs::server
