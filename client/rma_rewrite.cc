#include "client/rma_rewrite.h"

#include <cstring>

#include "client/iov_util.h"
#include "crypto/rma_seal.h"

namespace pohmelfs::client {

using proto::from_le;
using proto::to_le;

namespace {

// A server may still move data for a request that failed here (timed out, connection lost):
// its buffers are kept out of use this long (longer than a server's RMA bound).
constexpr std::chrono::seconds kHoldAfterFailure{60};

pohmelfs_rma_buf RmaBuf(const transport::MemoryRegion& region, const uint8_t* data, size_t len) {
  pohmelfs_rma_buf b{};
  b.addr = to_le(region.RemoteAddress(data));
  b.key = to_le(region.key());
  b.len = to_le(static_cast<uint32_t>(len));
  return b;
}

void Append(std::vector<uint8_t>* out, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out->insert(out->end(), b, b + n);
}

}  // namespace

RmaWritePlan RmaWritePlan::Prepare(uint16_t opcode, std::span<const iovec> payload,
                                   transport::RmaPool& pool, uint32_t seal_mode,
                                   crypto::CryptoPool* crypto_pool) {
  RmaWritePlan plan;
  plan.opcode_ = opcode;
  plan.original_ = payload;
  // (command index, offset of its write_req in the payload) of each WRITE worth staging.
  std::vector<std::pair<size_t, size_t>> writes;
  if (opcode == POHMELFS_OP_WRITE) {
    writes.emplace_back(0, 0);
  } else if (opcode == POHMELFS_OP_BATCH) {
    pohmelfs_batch_req b;
    if (CopyAt(payload, 0, &b, sizeof(b)) != sizeof(b)) return plan;
    size_t off = sizeof(b);
    for (uint32_t i = 0; i < from_le(b.count); i++) {
      pohmelfs_cmd c;
      if (CopyAt(payload, off, &c, sizeof(c)) != sizeof(c)) return plan;
      if (from_le(c.opcode) == POHMELFS_OP_WRITE) writes.emplace_back(i, off + sizeof(c));
      off += sizeof(c) + POHMELFS_PAD8(from_le(c.length));
    }
  } else {
    return plan;
  }
  for (const auto& [index, at] : writes) {
    pohmelfs_write_req q;
    if (CopyAt(payload, at, &q, sizeof(q)) != sizeof(q)) return RmaWritePlan();
    const size_t size = from_le(q.size);
    if (size < kRmaMinBytes || size > pool.buffer_bytes()) continue;
    auto lease = pool.Acquire(std::chrono::milliseconds(0));
    if (!lease) return RmaWritePlan();  // not enough buffers: send it as it is
    if (CopyAt(payload, at + sizeof(q), lease->data(), size) != size) return RmaWritePlan();
    std::vector<uint8_t> seal;
    if (seal_mode != POHMELFS_CRYPTO_NONE) {
      auto sealed =
          crypto::SealRma(seal_mode, {q.oid, from_le(q.offset), static_cast<uint32_t>(size)},
                          {lease->data(), size}, crypto_pool);
      if (!sealed.ok()) return RmaWritePlan();
      seal = std::move(*sealed);
    }
    plan.staged_.push_back({index, q, std::move(lease), std::move(seal)});
  }
  return plan;
}

Result<RmaWritePlan::Request> RmaWritePlan::For(transport::Connection& conn) {
  transport::Rma* rma = conn.rma();
  if (!rma) return Status::Error(EOPNOTSUPP, "no RMA on this connection");
  // The WRITE_RMA body of staged write s, with conn's key.
  auto rma_req = [&](const Staged& s) -> Result<pohmelfs_write_rma_req> {
    auto region = s.lease->RegionFor(*rma);
    if (!region.ok()) return region.status();
    pohmelfs_write_rma_req r{};
    r.oid = s.req.oid;
    r.offset = s.req.offset;
    r.size = s.req.size;
    r.flags = s.req.flags;
    r.buf = RmaBuf(**region, s.lease->data(), from_le(s.req.size));
    if (!s.seal.empty()) r.flags = to_le(from_le(r.flags) | POHMELFS_RMA_SEALED);
    return r;
  };
  auto out = std::make_unique<std::vector<uint8_t>>();
  uint16_t opcode = POHMELFS_OP_WRITE_RMA;
  if (opcode_ == POHMELFS_OP_WRITE) {
    auto r = rma_req(staged_.front());
    if (!r.ok()) return r.status();
    Append(out.get(), &*r, sizeof(*r));
    Append(out.get(), staged_.front().seal.data(), staged_.front().seal.size());
  } else {
    opcode = POHMELFS_OP_BATCH;
    pohmelfs_batch_req b;
    CopyAt(original_, 0, &b, sizeof(b));
    Append(out.get(), &b, sizeof(b));
    size_t off = sizeof(b), next = 0;
    for (uint32_t i = 0; i < from_le(b.count); i++) {
      pohmelfs_cmd c;
      CopyAt(original_, off, &c, sizeof(c));
      const size_t body = POHMELFS_PAD8(from_le(c.length));
      if (next < staged_.size() && staged_[next].cmd_index == i) {
        const Staged& s = staged_[next++];
        auto r = rma_req(s);
        if (!r.ok()) return r.status();
        const size_t len = sizeof(*r) + s.seal.size();
        pohmelfs_cmd rc{to_le(uint16_t{POHMELFS_OP_WRITE_RMA}), 0,
                        to_le(static_cast<uint32_t>(len))};
        Append(out.get(), &rc, sizeof(rc));
        Append(out.get(), &*r, sizeof(*r));
        Append(out.get(), s.seal.data(), s.seal.size());
        out->resize(out->size() + (POHMELFS_PAD8(len) - len));  // zero padding
      } else {
        const size_t at = out->size();
        out->resize(at + sizeof(c) + body);
        CopyAt(original_, off, out->data() + at, sizeof(c) + body);
      }
      off += sizeof(c) + body;
    }
  }
  auto iov = std::make_unique<iovec>(iovec{out->data(), out->size()});
  Request req{opcode, std::span<const iovec>(iov.get(), 1)};
  built_.push_back(std::move(out));
  iovs_.push_back(std::move(iov));
  return req;
}

size_t RmaWritePlan::staged_bytes() const {
  size_t n = 0;
  for (const auto& s : staged_) n += from_le(s.req.size);
  return n;
}

void RmaWritePlan::HoldAfterFailure() {
  for (auto& s : staged_) s.lease->pool().Hold(s.lease, kHoldAfterFailure);
}

bool ReadByRma(RpcClient& rpc, const pohmelfs_read_req& q, transport::RmaPool& pool,
               const CallOptions& co, Result<RpcReply>* reply) {
  const uint32_t size = from_le(q.size);
  if (size < kRmaMinBytes || size > pool.buffer_bytes()) return false;
  transport::ConnectionPtr conn = rpc.RmaConnection();
  if (!conn) return false;
  auto lease = pool.Acquire(std::chrono::milliseconds(0));
  if (!lease) return false;
  auto region = lease->RegionFor(*conn->rma());
  if (!region.ok()) return false;
  const uint32_t mode = rpc.crypto_mode();
  pohmelfs_read_rma_req r{};
  r.oid = q.oid;
  r.offset = q.offset;
  r.size = q.size;
  r.flags = to_le(mode != POHMELFS_CRYPTO_NONE ? uint32_t{POHMELFS_RMA_SEALED} : 0u);
  r.buf = RmaBuf(**region, lease->data(), pool.buffer_bytes());
  iovec v{&r, sizeof(r)};
  auto t = rpc.Begin(POHMELFS_OP_READ_RMA, std::span<const iovec>(&v, 1), co);
  auto rep = rpc.Wait(*t);
  if (!rep.ok()) {
    pool.Hold(lease, kHoldAfterFailure);
  } else if (rep->status == 0) {
    proto::Reader rd(rep->payload);
    pohmelfs_read_rma_rep rr;
    if (!rd.Get(&rr) || from_le(rr.bytes) > size) {
      *reply = Status::Error(EPROTO, "bad READ_RMA reply");
      return true;
    }
    const uint32_t bytes = from_le(rr.bytes);
    if (from_le(rr.flags) & POHMELFS_RMA_SEALED) {
      std::string_view seal;
      Status s = rd.Bytes(rd.left(), &seal) ? Status::Ok() : Status::Error(EPROTO, "short seal");
      if (s.ok())
        s = crypto::OpenRma(mode == POHMELFS_CRYPTO_NONE ? 0 : mode,
                            {q.oid, from_le(q.offset), bytes}, {lease->data(), bytes}, seal,
                            rpc.crypto_pool());
      if (!s.ok()) {
        *reply = Status::Error(EIO, "READ_RMA data failed its check: " + s.reason());
        return true;
      }
    } else if (mode != POHMELFS_CRYPTO_NONE) {
      *reply = Status::Error(EIO, "unsealed READ_RMA data on a protected channel");
      return true;
    }
    // The caller replies from the staging buffer itself: no copy into the payload.
    rep->rma_data = {lease->data(), bytes};
    rep->hold = std::move(lease);
  }
  *reply = std::move(rep);
  return true;
}

}  // namespace pohmelfs::client
