// fabric benchmark, RMA part: the server's registered buffer (RMA_SETUP, RMA_CRC requests of
// the echo protocol in fabric.h) and the client's sweep of RMA writes, then reads, with a window
// of operations in flight for --duration-ms per size.
//
// Data check, every size: before a write run the client fills its buffer with a pattern of its
// own for that size; after the run it asks the server for the CRC32C of the bytes written and
// compares it with its own. Before a read run it zeroes its buffer; after the run it compares
// the CRC of what it read with the server's CRC of the same range. Both times it also checks
// that the page after the range did not change. A broken RMA therefore fails the benchmark
// instead of producing a fast number.
//
// Thread-safety: completions run on the transport's progress thread and post the next operation
// from there, so the window stays full without waking the measuring thread.
#include <endian.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "bench/fabric.h"
#include "crypto/checksum.h"
#include "proto/codec.h"

namespace pohmelfs::bench::fabric {
namespace {

using transport::ConnectionPtr;
using transport::MemoryRegionPtr;
using transport::Message;
using transport::RemoteBuffer;
using transport::Rma;

// RMA operations in flight: as many as the message bandwidth test's messages, so that the
// sweeps compare like with like (fabtests' rma_bw and perftest's ib_write_bw go deeper for
// small sizes, so small RMAs are latency bound here).
constexpr uint64_t kRmaWindow = 8;
// The page after an RMA's range, checked unchanged.
constexpr size_t kGuardBytes = 4096;
// The server's buffer pattern; the client's write patterns use seeds 1 to 64.
constexpr uint64_t kServerSeed = 200;

// The server's RMA state of one connection (its Connection::context).
struct ServerRma {
  std::vector<uint8_t> buf;
  MemoryRegionPtr mr;  // declared after buf: deregistered before buf is freed
};

// The client's registered buffer. Shared with every operation's completion, so that it outlives
// operations still in flight when a run gives up on them.
struct LocalBuffer {
  std::vector<uint8_t> buf;
  MemoryRegionPtr mr;
};

struct RmaParams {
  bool write = true;
  size_t size = 0;
  RemoteBuffer remote;
  std::chrono::milliseconds duration{200};
  uint64_t max_iters = 0;  // 0: bounded by time only
};

// One run: a window of writes (or reads) of the same bytes to the same place.
struct RmaRunCtx {
  RmaRunCtx(Rma* r, std::shared_ptr<LocalBuffer> l, const RmaParams& p)
      : rma(r), local(std::move(l)), p(p) {}
  Rma* const rma;
  const std::shared_ptr<LocalBuffer> local;
  const RmaParams p;

  std::mutex mu;
  std::condition_variable cv;
  // All below GUARDED_BY(mu).
  Status error;
  uint64_t posted = 0, completed = 0, failed = 0;
  Clock::time_point start, deadline, last;

  uint64_t in_flight() const { return posted - completed - failed; }
  // Every posted operation is back (and the run did start, or failed to).
  bool finished() const { return in_flight() == 0 && (posted > 0 || !error.ok()); }
  bool MayPost(Clock::time_point now) const {
    return error.ok() && (p.max_iters == 0 || posted < p.max_iters) && now < deadline;
  }
};

void OnRmaDone(const std::shared_ptr<RmaRunCtx>& c, const Status& s);

// REQUIRES: c->mu held.
Status PostLocked(const std::shared_ptr<RmaRunCtx>& c) {
  auto done = [c](const Status& s) { OnRmaDone(c, s); };
  uint8_t* buf = c->local->buf.data();
  Status s = c->p.write ? c->rma->Write(c->local->mr, buf, c->p.size, c->p.remote, std::move(done))
                        : c->rma->Read(c->local->mr, buf, c->p.size, c->p.remote, std::move(done));
  if (s.ok()) c->posted++;  // a refused post never calls done
  return s;
}

void OnRmaDone(const std::shared_ptr<RmaRunCtx>& c, const Status& s) {
  auto now = Clock::now();
  std::lock_guard lk(c->mu);
  if (!s.ok()) {
    c->failed++;
    if (c->error.ok()) c->error = s;
  } else {
    c->completed++;
    c->last = now;
    if (c->MayPost(now)) {
      if (Status ps = PostLocked(c); !ps.ok()) c->error = ps;
    }
  }
  if (c->finished()) c->cv.notify_all();
}

struct RmaResult {
  uint64_t iters = 0;
  double seconds = 0;
};

Result<RmaResult> RunRma(Rma* rma, const std::shared_ptr<LocalBuffer>& local, const RmaParams& p) {
  auto c = std::make_shared<RmaRunCtx>(rma, local, p);
  std::unique_lock lk(c->mu);
  c->start = c->last = Clock::now();
  c->deadline = c->start + p.duration;
  uint64_t first = p.max_iters ? std::min(kRmaWindow, p.max_iters) : kRmaWindow;
  for (uint64_t i = 0; i < first && c->error.ok(); i++) {
    if (Status s = PostLocked(c); !s.ok()) c->error = s;
  }
  while (!c->finished()) {
    if (c->cv.wait_until(lk, c->last + kReplyTimeout, [&] { return c->finished(); })) break;
    if (Clock::now() >= c->last + kReplyTimeout) {
      return Status::Error(ETIMEDOUT, fmt::format("RMA: no completion within {} s ({} in flight)",
                                                  kReplyTimeout.count(), c->in_flight()));
    }
  }
  if (!c->error.ok()) return c->error;
  return RmaResult{c->completed, Seconds(c->start, c->last)};
}

Result<Message> CheckedCall(FabricClient& client, uint32_t flags, const void* payload, size_t len) {
  auto m = client.Call(flags, payload, len);
  if (!m.ok()) return m.status();
  if (m->hdr.status != 0)
    return Status::Error(static_cast<int>(m->hdr.status), "the server refused an RMA request");
  return m;
}

Result<uint32_t> RemoteCrc(FabricClient& client, uint64_t offset, uint64_t len) {
  std::vector<uint8_t> req;
  proto::Writer(&req).Put(RmaRangeWire{htole64(offset), htole64(len)});
  auto m = CheckedCall(client, kFlagRmaCrc, req.data(), req.size());
  if (!m.ok()) return m.status();
  RmaCrcWire w{};
  proto::Reader rd(m->payload);
  if (!rd.Get(&w) || rd.remaining() != 0) return Status::Error(EPROTO, "bad RMA CRC reply");
  return le32toh(w.crc32c);
}

struct RemoteInfo {
  uint64_t addr = 0;
  uint64_t key = 0;
  uint64_t len = 0;
};

Result<RemoteInfo> SetupRemote(FabricClient& client) {
  auto m = CheckedCall(client, kFlagRmaSetup, nullptr, 0);
  if (!m.ok()) return m.status();
  RmaInfoWire w{};
  proto::Reader rd(m->payload);
  if (!rd.Get(&w) || rd.remaining() != 0) return Status::Error(EPROTO, "bad RMA setup reply");
  return RemoteInfo{le64toh(w.addr), le64toh(w.key), le64toh(w.len)};
}

// The data check of one run (see the top of the file). guard_crc: the page after the range,
// read before the run.
Status CheckRun(FabricClient& client, const LocalBuffer& local, const RmaParams& p,
                uint32_t guard_crc) {
  auto remote = RemoteCrc(client, 0, p.size);
  if (!remote.ok()) return remote.status();
  const uint32_t mine = crypto::Crc32c(local.buf.data(), p.size);
  const char* test = p.write ? "rma-write" : "rma-read";
  if (*remote != mine) {
    return Status::Error(EIO, fmt::format("{} of {} bytes: data check failed (CRC32C {:08x} on "
                                          "the server, {:08x} here)",
                                          test, p.size, *remote, mine));
  }
  auto guard = RemoteCrc(client, p.size, kGuardBytes);
  if (!guard.ok()) return guard.status();
  if (*guard != guard_crc)
    return Status::Error(
        EIO, fmt::format("{} of {} bytes changed the bytes after its range", test, p.size));
  return Status::Ok();
}

}  // namespace

uint32_t ServeRma(const ConnectionPtr& conn, const Message& m, std::vector<uint8_t>* out) {
  Rma* rma = conn->rma();
  if (!rma) return EOPNOTSUPP;
  auto* st = static_cast<ServerRma*>(conn->context.get());
  if (m.hdr.flags & kFlagRmaSetup) {
    if (!st) {
      auto fresh = std::make_shared<ServerRma>();
      fresh->buf.resize(kRmaBufferBytes);
      FillPattern(fresh->buf.data(), fresh->buf.size(), kServerSeed);
      auto mr = rma->Register(fresh->buf.data(), fresh->buf.size());
      if (!mr.ok()) {
        spdlog::error("{}: RMA buffer: {}", conn->Peer(), mr.status().ToString());
        return static_cast<uint32_t>(mr.code());
      }
      fresh->mr = *mr;
      st = fresh.get();
      conn->context = std::move(fresh);
    }
    const uint64_t addr = st->mr->RemoteAddress(st->buf.data());
    proto::Writer(out).Put(RmaInfoWire{htole64(addr), htole64(st->mr->key()),
                                       htole64(static_cast<uint64_t>(st->buf.size()))});
    return 0;
  }
  if (!st) return ENOENT;
  RmaRangeWire w{};
  proto::Reader rd(m.payload);
  if (!rd.Get(&w) || rd.remaining() != 0) return EINVAL;
  const uint64_t offset = le64toh(w.offset), len = le64toh(w.len);
  if (offset > st->buf.size() || len > st->buf.size() - offset) return ERANGE;
  proto::Writer(out).Put(RmaCrcWire{htole32(crypto::Crc32c(st->buf.data() + offset, len)), 0});
  return 0;
}

Status MeasureRma(FabricRun& r, FabricClient& client) {
  Rma* rma = client.conn().rma();
  if (!rma) {
    const std::string why = r.backend + " has no one-sided RMA (Connection::rma() is null)";
    if (r.o.json)
      Emit(r.Json("rma").Str("skipped", why).str());
    else
      Emit("# rma: skipped, " + why);
    return Status::Ok();
  }
  auto info = SetupRemote(client);
  if (!info.ok()) return info.status();
  if (info->len < r.o.max_size + kGuardBytes)
    return Status::Error(EPROTO, fmt::format("the server's RMA buffer is {} bytes", info->len));
  auto local = std::make_shared<LocalBuffer>();
  local->buf.resize(r.o.max_size);
  auto mr = rma->Register(local->buf.data(), local->buf.size());
  if (!mr.ok()) return mr.status();
  local->mr = *mr;

  for (bool write : {true, false}) {
    const char* test = write ? "rma-write" : "rma-read";
    PrintBandwidthHeader(r, test, kRmaWindow);
    uint64_t seed = 1;
    for (uint64_t size = r.o.min_size; size <= r.o.max_size; size *= 2, seed++) {
      RmaParams p;
      p.write = write;
      p.size = size;
      p.remote = RemoteBuffer{info->addr, info->key};
      p.duration = std::chrono::milliseconds(r.o.duration_ms);
      p.max_iters = r.o.iters;
      if (write)
        FillPattern(local->buf.data(), size, seed);
      else
        std::memset(local->buf.data(), 0, size);
      auto guard = RemoteCrc(client, size, kGuardBytes);
      if (!guard.ok()) return guard.status();
      auto res = RunRma(rma, local, p);
      if (!res.ok()) return res.status();
      POHMELFS_RETURN_IF_ERROR(CheckRun(client, *local, p, *guard));
      AddBandwidth(r, test, kRmaWindow, BandwidthRow{size, res->iters, res->seconds});
    }
  }
  return Status::Ok();
}

}  // namespace pohmelfs::bench::fabric
