// LEASE, LOCK and the LEASE_BREAK callback: the server's side of coherence
// (docs/coherence.md). These requests may wait long for other clients, so they are parked in
// the lease and lock tables instead of holding a worker thread.
#include <fcntl.h>
#include <spdlog/spdlog.h>

#include "rdma-server/server.h"

namespace pohmelfs::server {

using proto::from_le;
using proto::to_le;
using transport::ConnectionPtr;
using transport::Message;

namespace {

constexpr uint64_t kToEnd = UINT64_MAX;

// The object a data-changing request writes to, when it has one.
std::optional<Oid> ChangedObject(uint16_t opcode, std::span<const uint8_t> payload) {
  switch (opcode) {
    case POHMELFS_OP_WRITE:
    case POHMELFS_OP_WRITE_RMA:
    case POHMELFS_OP_SETATTR:
    case POHMELFS_OP_FALLOCATE:
      break;
    default:
      return std::nullopt;
  }
  if (payload.size() < sizeof(pohmelfs_oid)) return std::nullopt;
  pohmelfs_oid w;
  std::memcpy(&w, payload.data(), sizeof(w));
  return Oid::FromWire(w);
}

// Calls fn(index, opcode, body) for the request's command, or for each command of a BATCH in
// order, until fn returns true; returns whether it did. A malformed BATCH ends the walk.
template <typename Fn>
bool AnyCommand(uint16_t opcode, std::span<const uint8_t> payload, Fn fn) {
  if (opcode != POHMELFS_OP_BATCH) return fn(uint32_t{0}, opcode, payload);
  proto::Reader r(payload);
  pohmelfs_batch_req b;
  if (!r.Get(&b)) return false;
  for (uint32_t i = 0; i < from_le(b.count); i++) {
    pohmelfs_cmd c;
    std::string_view body;
    if (!r.Get(&c) || !r.Bytes(POHMELFS_PAD8(from_le(c.length)), &body)) return false;
    if (fn(i, from_le(c.opcode),
           std::span<const uint8_t>{reinterpret_cast<const uint8_t*>(body.data()), body.size()}))
      return true;
  }
  return false;
}

}  // namespace

bool Server::Fenced(Session* session, uint16_t opcode, std::span<const uint8_t> payload) {
  return AnyCommand(opcode, payload, [&](uint32_t, uint16_t op, std::span<const uint8_t> body) {
    auto oid = ChangedObject(op, body);
    return oid && leases_->TakeFence(session->id(), *oid);
  });
}

std::vector<Server::CreateGrant> Server::GrantCreates(Session* session, uint16_t opcode,
                                                      std::span<const uint8_t> payload) {
  std::vector<CreateGrant> granted;
  AnyCommand(opcode, payload, [&](uint32_t index, uint16_t op, std::span<const uint8_t> body) {
    if ((op != POHMELFS_OP_MKNOD && op != POHMELFS_OP_MKDIR) ||
        body.size() < sizeof(pohmelfs_create_req))
      return false;
    pohmelfs_create_req q;
    std::memcpy(&q, body.data(), sizeof(q));
    if (!(from_le(q.flags) & POHMELFS_CREATE_LEASE)) return false;
    const Oid oid = Oid::FromWire(q.new_oid);
    leases_->GrantNew(session->id(), oid);
    granted.push_back({index, oid});
    return false;
  });
  return granted;
}

void Server::DropFailedGrants(Session* session, uint16_t opcode, const Status& s,
                              std::span<const uint8_t> reply,
                              const std::vector<CreateGrant>& granted) {
  if (granted.empty()) return;
  // Index of each executed command -> its status; commands not executed are missing.
  std::vector<uint32_t> status;
  if (s.ok() && opcode != POHMELFS_OP_BATCH) status.push_back(0);
  if (s.ok() && opcode == POHMELFS_OP_BATCH) {
    proto::Reader r(reply);
    pohmelfs_batch_rep rep;
    if (r.Get(&rep)) {
      for (uint32_t i = 0; i < from_le(rep.count); i++) {
        pohmelfs_cmd_rep cr;
        std::string_view body;
        if (!r.Get(&cr) || !r.Bytes(POHMELFS_PAD8(from_le(cr.length)), &body)) break;
        status.push_back(from_le(cr.status));
      }
    }
  }
  for (const auto& g : granted)
    if (g.index >= status.size() || status[g.index] != 0)
      leases_->Release(session->id(), g.oid, POHMELFS_LEASE_NONE);
}

bool Server::SendBreak(uint64_t session, const Oid& oid, uint32_t keep, uint64_t seq) {
  auto s = sessions_->Find(session);
  ConnectionPtr conn = s ? s->CallbackConnection() : nullptr;
  if (!conn) return false;
  pohmelfs_lease_break b{};
  b.oid = oid.ToWire();
  b.keep = to_le(keep);
  b.seq = to_le(seq);
  proto::Header h;
  h.opcode = POHMELFS_OP_LEASE_BREAK;
  h.flags = POHMELFS_FLAG_CALLBACK;
  h.session = session;
  h.trans = next_callback_++;
  iovec v{&b, sizeof(b)};
  Status st = conn->Send(h, std::span<const iovec>(&v, 1));
  if (!st.ok()) return false;
  spdlog::info("{}: session {:016x}: lease break {} on {} (keep {})", conn->Peer(), session,
               h.trans, oid.Hex(), keep);
  return true;
}

void Server::HandleLease(const ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                         Message m) {
  proto::Reader r(m.payload);
  pohmelfs_lease_req q;
  const uint64_t sid = st->session->id();
  if (!r.Get(&q)) {
    Reply(conn, m.hdr, EINVAL, {});
    return Done(conn, st.get());
  }
  const Oid oid = Oid::FromWire(q.oid);
  const uint32_t cmd = from_le(q.cmd), mode = from_le(q.mode);
  if (cmd == POHMELFS_LEASE_RELEASE && mode <= POHMELFS_LEASE_READ) {
    leases_->Release(sid, oid, mode);
    Reply(conn, m.hdr, 0, {});
    return Done(conn, st.get());
  }
  if (cmd != POHMELFS_LEASE_ACQUIRE ||
      (mode != POHMELFS_LEASE_READ && mode != POHMELFS_LEASE_WRITE)) {
    spdlog::warn("{}: trans {}: bad lease request (cmd {}, mode {})", conn->Peer(), m.hdr.trans,
                 cmd, mode);
    Reply(conn, m.hdr, EINVAL, {});
    return Done(conn, st.get());
  }
  // Whether the object exists is seen once, on a worker, when the grant's attributes are
  // read: a missing object's grant is dropped again and the reply is its errno.
  const bool reclaim = (from_le(q.flags) & POHMELFS_LEASE_RECLAIM) != 0;
  auto hdr = m.hdr;
  leases_->Acquire(sid, oid, mode, reclaim,
                   [this, conn, st, hdr, oid](uint32_t status, uint32_t granted, uint64_t seq) {
                     // Completions may run on the table's timer thread: the stat belongs on a
                     // worker.
                     work_->Push([this, conn, st, hdr, oid, status, granted, seq] {
                       std::vector<uint8_t> out;
                       uint32_t result = status;
                       if (result == 0) {
                         proto::Writer w(&out);
                         OpEnv env{store_.get(), st->session.get()};
                         Status s = ops::PutAttrById(env, oid, &w);
                         if (!s.ok()) {
                           // Removed meanwhile: the grant stands (the holder learns of the
                           // removal).
                           result = static_cast<uint32_t>(s.code());
                           leases_->Release(st->session->id(), oid, POHMELFS_LEASE_NONE);
                         } else {
                           pohmelfs_lease_rep rep{};
                           std::memcpy(&rep.attr, out.data(), sizeof(rep.attr));
                           rep.start = 0;
                           rep.length = 0;
                           rep.mode = to_le(granted);
                           rep.seq = to_le(seq);
                           rep.break_ms =
                               to_le(static_cast<uint32_t>(leases_->break_timeout().count()));
                           out.assign(reinterpret_cast<const uint8_t*>(&rep),
                                      reinterpret_cast<const uint8_t*>(&rep) + sizeof(rep));
                         }
                       }
                       Reply(conn, hdr, result, out);
                       Done(conn, st.get());
                     });
                   });
}

void Server::HandleLock(const ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                        Message m) {
  // During a grace period the locks of the previous authority are placed again first. A
  // request too short to tell goes straight on, to be refused.
  proto::Reader r(m.payload);
  pohmelfs_lock_req q;
  if (r.Get(&q) && !(from_le(q.flags) & POHMELFS_LOCK_RECLAIM) &&
      from_le(q.cmd) != POHMELFS_LOCK_GETLK) {
    leases_->AfterGrace(
        [this, conn, st, m = std::move(m)]() mutable { HandleLockNow(conn, st, std::move(m)); });
    return;
  }
  HandleLockNow(conn, st, std::move(m));
}

void Server::HandleLockNow(const ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                           Message m) {
  proto::Reader r(m.payload);
  pohmelfs_lock_req q;
  if (!r.Get(&q)) {
    Reply(conn, m.hdr, EINVAL, {});
    return Done(conn, st.get());
  }
  const Oid oid = Oid::FromWire(q.oid);
  const uint32_t cmd = from_le(q.cmd), type = from_le(q.type), flags = from_le(q.flags);
  const uint64_t start = from_le(q.start), length = from_le(q.length);
  bool valid_type = type == F_RDLCK || type == F_WRLCK || type == F_UNLCK;
  bool valid_cmd =
      cmd == POHMELFS_LOCK_GETLK || cmd == POHMELFS_LOCK_SETLK || cmd == POHMELFS_LOCK_SETLKW;
  if (!valid_type || !valid_cmd || (length != 0 && start + length - 1 < start)) {
    Reply(conn, m.hdr, EINVAL, {});
    return Done(conn, st.get());
  }
  LockRange want;
  want.session = st->session->id();
  want.owner = from_le(q.owner);
  want.flock = (flags & POHMELFS_LOCK_FLOCK) != 0;
  want.type = type;
  want.start = want.flock ? 0 : start;
  want.end = (want.flock || length == 0) ? kToEnd : start + length - 1;
  want.pid = from_le(q.pid);
  if (cmd == POHMELFS_LOCK_GETLK) {
    auto c = locks_->Test(oid, want);
    pohmelfs_lock_rep rep{};
    rep.type = to_le(uint32_t{F_UNLCK});
    if (c) {
      rep.type = to_le(c->type);
      rep.start = to_le(c->start);
      rep.length = to_le(c->end == kToEnd ? 0 : c->end - c->start + 1);
      rep.pid = to_le(c->pid);
    }
    std::vector<uint8_t> out(sizeof(rep));
    std::memcpy(out.data(), &rep, sizeof(rep));
    Reply(conn, m.hdr, 0, out);
    return Done(conn, st.get());
  }
  auto hdr = m.hdr;
  locks_->Set(oid, want, cmd == POHMELFS_LOCK_SETLKW, [this, conn, st, hdr](uint32_t status) {
    Reply(conn, hdr, status, {});
    Done(conn, st.get());
  });
}

}  // namespace pohmelfs::server
