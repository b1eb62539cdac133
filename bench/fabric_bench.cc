// fabric benchmark: an echo server and a client that measures the raw transport (no handshake):
// round-trip latency of small messages, message rate with a window of outstanding messages and
// bandwidth against message size. Bench messages are PING requests numbered by hdr.trans; the
// server answers each with FLAG_REPLY and the same trans, echoing the payload or, when the
// request asks for it, with an empty ack.
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "proto/pohmelfs_proto.h"
#include "transport/transport.h"
#include "transport/uri.h"

namespace pohmelfs::bench {
namespace {

using transport::Connection;
using transport::ConnectionPtr;
using transport::Message;
using transport::Transport;
using transport::Uri;

// Request flag private to the bench's echo protocol: reply with an empty payload.
constexpr uint32_t kFlagAckOnly = 1u << 31;
// Both ends accept 4 MiB messages (above POHMELFS_PAYLOAD_MAX).
constexpr uint32_t kMaxPayload = (4u << 20) + 4096;
constexpr auto kReplyTimeout = std::chrono::seconds(10);
constexpr auto kConnectTimeout = std::chrono::seconds(10);
constexpr size_t kSmall = 64;
constexpr uint64_t kWarmupIters = 200;
constexpr uint64_t kRateWindow = 64;
constexpr uint64_t kBandwidthWindow = 8;
constexpr double kMiB = 1024.0 * 1024.0;

// ---- Echo server -----------------------------------------------------------------------------

void Echo(const ConnectionPtr& conn, Message&& m) {
  if (m.hdr.is_reply()) {
    conn->Close(Status::Error(EPROTO, "echo server got a reply"));
    return;
  }
  proto::Header h;
  h.opcode = m.hdr.opcode;
  h.flags = POHMELFS_FLAG_REPLY;
  h.trans = m.hdr.trans;
  bool echo = m.hdr.opcode == POHMELFS_OP_PING && !(m.hdr.flags & kFlagAckOnly);
  if (m.hdr.opcode != POHMELFS_OP_PING) h.status = EOPNOTSUPP;
  Status s = conn->Send(h, m.payload.data(), echo ? m.payload.size() : 0);
  if (!s.ok() && s.code() != ENOTCONN) spdlog::error("{}: reply: {}", conn->Peer(), s.ToString());
}

// The echo server's context: its transport, which owns the listener and the connections.
class EchoServer {
 public:
  static Result<std::unique_ptr<EchoServer>> Start(const Uri& uri) {
    auto t =
        transport::CreateTransport(uri.scheme, {.loop_threads = 1, .max_payload = kMaxPayload});
    if (!t.ok()) return t.status();
    transport::Handler h;
    h.on_accept = [](const ConnectionPtr& c) { c->SetMaxPayload(kMaxPayload); };
    h.on_message = Echo;
    auto bound = (*t)->Listen(uri, std::move(h));
    if (!bound.ok()) return bound.status();
    return std::make_unique<EchoServer>(std::move(*t), *bound);
  }
  EchoServer(std::unique_ptr<Transport> t, Uri bound)
      : transport_(std::move(t)), bound_(std::move(bound)) {}
  ~EchoServer() { transport_->Shutdown(); }
  const Uri& bound() const { return bound_; }

 private:
  std::unique_ptr<Transport> transport_;
  Uri bound_;
};

// ---- Client ----------------------------------------------------------------------------------

struct RunParams {
  size_t size = kSmall;
  uint64_t window = 1;
  bool ack = false;  // the server replies with an empty payload
  bool record_latency = false;
  std::chrono::milliseconds duration{200};  // no new message after this
  uint64_t max_iters = 0;                   // 0: bounded by time only
};

struct RunResult {
  uint64_t iters = 0;
  double seconds = 0;
  std::vector<uint64_t> latency_ns;  // when recorded, one per message
};

// The state of one client connection. Replies are handled on the transport's loop thread, which
// sends the next message at once, so the window stays full without waking the measuring thread.
struct ClientCtx {
  std::mutex mu;
  std::condition_variable cv;
  // All below GUARDED_BY(mu).
  Status error;  // the first one, sticky
  bool active = false;
  bool done = false;
  RunParams p;
  const uint8_t* data = nullptr;
  uint64_t next_trans = 1;
  uint64_t base_trans = 1;  // trans of the run's first message
  uint64_t sent = 0, received = 0;
  Clock::time_point start, deadline, last_reply;
  std::vector<Clock::time_point> sent_at;  // indexed by message number % window
  std::vector<uint64_t> latency_ns;
};

// REQUIRES: c.mu held.
void FailLocked(ClientCtx& c, Status s) {
  if (c.error.ok()) c.error = std::move(s);
  c.done = true;
  c.cv.notify_all();
}

// REQUIRES: c.mu held.
bool MayRefillLocked(const ClientCtx& c, Clock::time_point now) {
  return (c.p.max_iters == 0 || c.sent < c.p.max_iters) && now < c.deadline;
}

// REQUIRES: c.mu held.
Status SendNextLocked(ClientCtx& c, Connection& conn) {
  proto::Header h;
  h.opcode = POHMELFS_OP_PING;
  h.flags = c.p.ack ? kFlagAckOnly : 0;
  h.trans = c.base_trans + c.sent;
  c.sent_at[c.sent % c.p.window] = Clock::now();
  c.sent++;
  return conn.Send(h, c.data, c.p.size);
}

// Replies come back in order: one connection, and the server answers in arrival order.
Status CheckReply(const ClientCtx& c, const Message& m) {
  if (!m.hdr.is_reply() || m.hdr.opcode != POHMELFS_OP_PING)
    return Status::Error(EPROTO, fmt::format("not a ping reply (opcode {})", m.hdr.opcode));
  if (m.hdr.status != 0)
    return Status::Error(static_cast<int>(m.hdr.status), "the server answered with an error");
  uint64_t want = c.base_trans + c.received;
  if (m.hdr.trans != want)
    return Status::Error(EPROTO,
                         fmt::format("reply {} out of order, expected {}", m.hdr.trans, want));
  size_t len = c.p.ack ? 0 : c.p.size;
  if (m.payload.size() != len || (len > 0 && std::memcmp(m.payload.data(), c.data, len) != 0))
    return Status::Error(EPROTO, fmt::format("reply {}: bad payload ({} bytes, expected {})",
                                             m.hdr.trans, m.payload.size(), len));
  return Status::Ok();
}

void OnReply(ClientCtx& c, Connection& conn, const Message& m) {
  auto now = Clock::now();
  std::lock_guard lk(c.mu);
  if (!c.active) {
    if (c.error.ok()) c.error = Status::Error(EPROTO, "reply outside of a run");
    return;
  }
  if (c.done) return;  // the run failed; late replies do not matter
  if (Status s = CheckReply(c, m); !s.ok()) return FailLocked(c, std::move(s));
  if (c.p.record_latency) {
    auto rtt = now - c.sent_at[c.received % c.p.window];
    c.latency_ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(rtt).count());
  }
  c.received++;
  c.last_reply = now;
  if (MayRefillLocked(c, now)) {
    if (Status s = SendNextLocked(c, conn); !s.ok()) FailLocked(c, std::move(s));
  } else if (c.received == c.sent) {
    c.done = true;
    c.cv.notify_all();
  }
}

void OnClose(ClientCtx& c, const Status& why) {
  std::lock_guard lk(c.mu);
  FailLocked(
      c, Status::Error(why.ok() ? ECONNRESET : why.code(), "connection closed: " + why.ToString()));
}

// One connection to an echo server, with its own transport.
class FabricClient {
 public:
  static Result<std::unique_ptr<FabricClient>> Connect(const Uri& uri) {
    auto t =
        transport::CreateTransport(uri.scheme, {.loop_threads = 1, .max_payload = kMaxPayload});
    if (!t.ok()) return t.status();
    auto ctx = std::make_shared<ClientCtx>();
    transport::Handler h;
    h.on_message = [ctx](const ConnectionPtr& conn, Message&& m) { OnReply(*ctx, *conn, m); };
    h.on_close = [ctx](const ConnectionPtr&, const Status& why) { OnClose(*ctx, why); };
    auto conn = (*t)->Connect(uri, std::move(h), kConnectTimeout);
    if (!conn.ok()) return conn.status();
    (*conn)->SetMaxPayload(kMaxPayload);
    return std::make_unique<FabricClient>(std::move(*t), *conn, ctx);
  }
  FabricClient(std::unique_ptr<Transport> t, ConnectionPtr conn, std::shared_ptr<ClientCtx> ctx)
      : transport_(std::move(t)), conn_(std::move(conn)), ctx_(std::move(ctx)) {}
  ~FabricClient() { transport_->Shutdown(); }

  // Sends p.window messages of data[0, p.size), then one more per reply until the time or
  // iteration bound is reached, and waits for the last reply.
  Result<RunResult> Run(const RunParams& p, const uint8_t* data) {
    ClientCtx& c = *ctx_;
    std::unique_lock lk(c.mu);
    if (!c.error.ok()) return c.error;
    StartLocked(p, data);
    uint64_t first = p.max_iters ? std::min(p.window, p.max_iters) : p.window;
    for (uint64_t i = 0; i < first && !c.done; i++) {
      if (Status s = SendNextLocked(c, *conn_); !s.ok()) FailLocked(c, std::move(s));
    }
    Status s = WaitLocked(lk);
    c.active = false;
    c.next_trans = c.base_trans + c.sent;
    if (!s.ok()) return s;
    return RunResult{c.received, Seconds(c.start, c.last_reply), std::move(c.latency_ns)};
  }

 private:
  // REQUIRES: ctx_->mu held.
  void StartLocked(const RunParams& p, const uint8_t* data) {
    ClientCtx& c = *ctx_;
    c.p = p;
    c.data = data;
    c.base_trans = c.next_trans;
    c.sent = c.received = 0;
    c.start = c.last_reply = Clock::now();
    c.deadline = c.start + p.duration;
    c.sent_at.assign(p.window, c.start);
    c.latency_ns.clear();
    c.active = true;
    c.done = false;
  }

  // Waits for the run to end; fails when no reply came for kReplyTimeout.
  Status WaitLocked(std::unique_lock<std::mutex>& lk) {
    ClientCtx& c = *ctx_;
    while (!c.done) {
      if (c.cv.wait_until(lk, c.last_reply + kReplyTimeout, [&] { return c.done; })) break;
      if (Clock::now() >= c.last_reply + kReplyTimeout) {
        return Status::Error(ETIMEDOUT, fmt::format("no reply within {} s ({} of {} answered)",
                                                    kReplyTimeout.count(), c.received, c.sent));
      }
    }
    return c.error;
  }

  std::unique_ptr<Transport> transport_;
  ConnectionPtr conn_;
  std::shared_ptr<ClientCtx> ctx_;
};

// ---- Measurements and output -----------------------------------------------------------------

struct BandwidthRow {
  uint64_t bytes = 0;
  uint64_t iters = 0;
  double seconds = 0;
  double mib_per_s() const { return static_cast<double>(bytes * iters) / kMiB / seconds; }
  double usec_per_xfer() const { return seconds * 1e6 / static_cast<double>(iters); }
  double mxfers_per_s() const { return static_cast<double>(iters) / seconds / 1e6; }
};

struct LatencyRow {
  uint64_t iters = 0;
  double seconds = 0;
  double p50_us = 0;
  double p99_us = 0;
};

std::vector<uint8_t> MakePayload(size_t size) {
  std::vector<uint8_t> data(size);
  for (size_t i = 0; i < size; i++) data[i] = static_cast<uint8_t>(i * 131 + (i >> 12));
  return data;
}

// The context of one client run: options, payload buffer and the results so far.
struct FabricRun {
  FabricRun(const FabricOptions& options, const Uri& server)
      : o(options),
        backend(server.scheme),
        uri(server.ToString()),
        data(MakePayload(std::max<size_t>(options.max_size, kSmall))) {}

  const FabricOptions& o;
  std::string backend;
  std::string uri;
  std::vector<uint8_t> data;
  LatencyRow latency;
  std::vector<BandwidthRow> bandwidth;

  JsonLine Json(std::string_view test) const {
    JsonLine j;
    j.Str("cmd", o.cmd).Str("backend", backend).Str("uri", uri).Str("test", test);
    return j;
  }
  RunParams Params(size_t size, uint64_t window) const {
    RunParams p;
    p.size = size;
    p.window = window;
    p.duration = std::chrono::milliseconds(o.duration_ms);
    p.max_iters = o.iters;
    return p;
  }
};

void Emit(const std::string& line) {
  fmt::print("{}\n", line);
  std::fflush(stdout);
}

// Nearest-rank percentile of sorted samples, in microseconds.
double PercentileUs(const std::vector<uint64_t>& sorted, double pct) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<size_t>(std::ceil(pct / 100.0 * static_cast<double>(sorted.size())));
  return static_cast<double>(sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1]) / 1e3;
}

Status MeasureLatency(FabricRun& r, FabricClient& client) {
  RunParams warm = r.Params(kSmall, 1);
  warm.max_iters = kWarmupIters;
  warm.duration = std::chrono::seconds(10);
  if (auto w = client.Run(warm, r.data.data()); !w.ok()) return w.status();
  RunParams p = r.Params(kSmall, 1);
  p.record_latency = true;
  auto res = client.Run(p, r.data.data());
  if (!res.ok()) return res.status();
  std::sort(res->latency_ns.begin(), res->latency_ns.end());
  r.latency = LatencyRow{res->iters, res->seconds, PercentileUs(res->latency_ns, 50),
                         PercentileUs(res->latency_ns, 99)};
  const LatencyRow& l = r.latency;
  if (r.o.json) {
    Emit(r.Json("latency")
             .U64("bytes", kSmall)
             .U64("iters", l.iters)
             .F64("seconds", l.seconds)
             .F64("p50_us", l.p50_us)
             .F64("p99_us", l.p99_us)
             .str());
  } else {
    Emit(fmt::format("latency   {} B  iters {}  p50 {:.1f} us  p99 {:.1f} us", kSmall, l.iters,
                     l.p50_us, l.p99_us));
  }
  return Status::Ok();
}

Status MeasureRate(FabricRun& r, FabricClient& client) {
  auto res = client.Run(r.Params(kSmall, kRateWindow), r.data.data());
  if (!res.ok()) return res.status();
  double rate = static_cast<double>(res->iters) / res->seconds;
  if (r.o.json) {
    Emit(r.Json("msg-rate")
             .U64("bytes", kSmall)
             .U64("window", kRateWindow)
             .U64("iters", res->iters)
             .F64("seconds", res->seconds)
             .F64("msgs_per_s", rate)
             .str());
  } else {
    Emit(fmt::format("msg-rate  {} B  window {}  iters {}  seconds {:.3f}  {:.0f} msgs/s", kSmall,
                     kRateWindow, res->iters, res->seconds, rate));
  }
  return Status::Ok();
}

void PrintBandwidth(const FabricRun& r, const BandwidthRow& b) {
  if (r.o.json) {
    Emit(r.Json("bandwidth")
             .U64("bytes", b.bytes)
             .U64("window", kBandwidthWindow)
             .U64("iters", b.iters)
             .F64("seconds", b.seconds)
             .F64("mib_per_s", b.mib_per_s())
             .F64("usec_per_xfer", b.usec_per_xfer())
             .F64("mxfers_per_s", b.mxfers_per_s())
             .str());
  } else {
    Emit(fmt::format("{:>9} {:>9} {:>9.3f} {:>10.1f} {:>10.2f} {:>9.4f}", b.bytes, b.iters,
                     b.seconds, b.mib_per_s(), b.usec_per_xfer(), b.mxfers_per_s()));
  }
}

Status MeasureBandwidth(FabricRun& r, FabricClient& client) {
  if (!r.o.json)
    Emit(fmt::format("{:>9} {:>9} {:>9} {:>10} {:>10} {:>9}", "bytes", "iters", "seconds", "MiB/s",
                     "usec/xfer", "Mxfers/s"));
  for (uint64_t size = r.o.min_size; size <= r.o.max_size; size *= 2) {
    RunParams p = r.Params(size, kBandwidthWindow);
    p.ack = true;
    auto res = client.Run(p, r.data.data());
    if (!res.ok()) return res.status();
    r.bandwidth.push_back(BandwidthRow{size, res->iters, res->seconds});
    PrintBandwidth(r, r.bandwidth.back());
  }
  return Status::Ok();
}

Status WriteCsv(const FabricRun& r) {
  std::ofstream out(r.o.csv, std::ios::trunc);
  out << "backend,bytes,iters,seconds,mib_per_s,usec_per_xfer\n";
  for (const auto& b : r.bandwidth) {
    out << fmt::format("{},{},{},{:.6f},{:.3f},{:.3f}\n", r.backend, b.bytes, b.iters, b.seconds,
                       b.mib_per_s(), b.usec_per_xfer());
  }
  // Latency rows: backend "<backend>-latency-p50|p99"; usec_per_xfer holds the percentile.
  const LatencyRow& l = r.latency;
  double mibps = static_cast<double>(kSmall * l.iters) / kMiB / l.seconds;
  for (auto [name, us] : {std::pair{"p50", l.p50_us}, std::pair{"p99", l.p99_us}}) {
    out << fmt::format("{}-latency-{},{},{},{:.6f},{:.3f},{:.3f}\n", r.backend, name, kSmall,
                       l.iters, l.seconds, mibps, us);
  }
  out.close();
  if (!out) return Status::Error(EIO, "write " + r.o.csv);
  return Status::Ok();
}

Status RunClient(const FabricOptions& o, const Uri& uri) {
  auto client = FabricClient::Connect(uri);
  if (!client.ok()) return client.status();
  FabricRun r(o, uri);
  if (!o.json) Emit(fmt::format("# backend {}, server {}", r.backend, r.uri));
  for (auto step : {MeasureLatency, MeasureRate, MeasureBandwidth}) {
    if (Status s = step(r, **client); !s.ok()) return s;
  }
  return o.csv.empty() ? Status::Ok() : WriteCsv(r);
}

Result<Uri> ParseOrComplain(const std::string& text) {
  auto uri = transport::ParseUri(text);
  if (!uri.ok()) fmt::print(stderr, "fabric: {}\n", uri.status().reason());
  return uri;
}

int Finish(const Status& s) {
  if (s.ok()) return kExitOk;
  spdlog::error("fabric: {}", s.ToString());
  return kExitError;
}

// Serves until SIGINT or SIGTERM.
int RunServer(const Uri& uri) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  // Blocked before the loop threads start, so that they inherit the mask and sigwait gets them.
  // A shell starts background jobs with SIGINT ignored, and an ignored signal is discarded
  // even when blocked: restore the default action first.
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGTERM, SIG_DFL);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  auto server = EchoServer::Start(uri);
  if (!server.ok()) return Finish(server.status());
  fmt::print("listening {}\n", (*server)->bound().ToString());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  return kExitOk;
}

}  // namespace

int RunFabric(const FabricOptions& o) {
  const std::string& text = !o.listen.empty()    ? o.listen
                            : !o.connect.empty() ? o.connect
                                                 : o.loopback;
  auto uri = ParseOrComplain(text);
  if (!uri.ok()) return kExitUsage;
  if (!o.listen.empty()) return RunServer(*uri);
  if (!o.connect.empty()) return Finish(RunClient(o, *uri));
  auto server = EchoServer::Start(*uri);
  if (!server.ok()) return Finish(server.status());
  return Finish(RunClient(o, (*server)->bound()));
}

}  // namespace pohmelfs::bench
