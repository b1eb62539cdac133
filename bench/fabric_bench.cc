// fabric benchmark: an echo server and a client that measures the raw transport (no handshake):
// round-trip latency of small messages, message rate with a window of outstanding messages,
// bandwidth against message size and, where the connection has rma(), RMA write and read
// bandwidth against size (fabric_rma.cc). The echo protocol is described in fabric.h.
// Thread-safety: see fabric.h; the server's handlers run on its transport's loop threads.
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/fabric.h"
#include "proto/pohmelfs_proto.h"
#include "transport/transport.h"
#include "transport/uri.h"

namespace pohmelfs::bench::fabric {
namespace {

using transport::Connection;
using transport::ConnectionPtr;
using transport::Message;
using transport::Transport;
using transport::TransportOptions;
using transport::Uri;

constexpr auto kConnectTimeout = std::chrono::seconds(10);
constexpr uint64_t kWarmupIters = 200;
// Messages in flight for the rate and bandwidth tests, fixed so that runs and backends compare
// (8 large messages are 32 MiB in flight at 4 MiB).
constexpr uint64_t kRateWindow = 64;
constexpr uint64_t kBandwidthWindow = 8;

TransportOptions MakeTransportOptions(const FabricOptions& o, bool server) {
  TransportOptions t;
  t.loop_threads = 1;
  t.max_payload = kMaxPayload;
  t.spin = std::chrono::microseconds(server ? o.server_spin_us.value_or(o.spin_us) : o.spin_us);
  return t;
}

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
  Status s;
  if (m.hdr.opcode != POHMELFS_OP_PING) {
    h.status = EOPNOTSUPP;
    s = conn->Send(h, nullptr, 0);
  } else if (m.hdr.flags & (kFlagRmaSetup | kFlagRmaCrc)) {
    std::vector<uint8_t> out;
    h.status = ServeRma(conn, m, &out);
    s = conn->Send(h, out.data(), out.size());
  } else {
    bool echo = !(m.hdr.flags & kFlagAckOnly);
    s = conn->Send(h, m.payload.data(), echo ? m.payload.size() : 0);
  }
  if (!s.ok() && s.code() != ENOTCONN) spdlog::error("{}: reply: {}", conn->Peer(), s.ToString());
}

// The echo server's context: its transport, which owns the listener and the connections.
class EchoServer {
 public:
  static Result<std::unique_ptr<EchoServer>> Start(const Uri& uri, const TransportOptions& topts) {
    auto t = transport::CreateTransport(uri.scheme, topts);
    if (!t.ok()) return t.status();
    transport::Handler h;
    h.on_accept = [](const ConnectionPtr& c) { c->SetMaxPayload(kMaxPayload); };
    h.on_message = Echo;
    // The RMA buffer (context) goes with the connection, not when the transport is freed.
    h.on_close = [](const ConnectionPtr& c, const Status&) { c->context.reset(); };
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

}  // namespace

// ---- Client ----------------------------------------------------------------------------------

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
  bool sending_done = false;  // send_from_caller: the caller has sent its last message
  Clock::time_point start, deadline, last_reply;
  std::vector<Clock::time_point> sent_at;  // indexed by message number % window
  std::vector<uint64_t> latency_ns;
  uint64_t call_trans = 0;  // the Call waiting for its reply; 0: none
  std::optional<Message> call_reply;
};

namespace {

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

// The header of the next message, counted as sent. REQUIRES: c.mu held.
proto::Header NextMessageLocked(ClientCtx& c) {
  proto::Header h;
  h.opcode = POHMELFS_OP_PING;
  h.flags = c.p.ack ? kFlagAckOnly : 0;
  h.trans = c.base_trans + c.sent;
  c.sent_at[c.sent % c.p.window] = Clock::now();
  c.sent++;
  return h;
}

// REQUIRES: c.mu held.
Status SendNextLocked(ClientCtx& c, Connection& conn) {
  return conn.Send(NextMessageLocked(c), c.data, c.p.size);
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

void OnReply(ClientCtx& c, Connection& conn, Message&& m) {
  auto now = Clock::now();
  std::lock_guard lk(c.mu);
  if (!c.active) {
    if (c.call_trans != 0 && m.hdr.trans == c.call_trans && m.hdr.is_reply()) {
      c.call_reply = std::move(m);
      c.cv.notify_all();
    } else if (c.error.ok()) {
      c.error = Status::Error(EPROTO, "reply outside of a run");
    }
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
  if (c.p.send_from_caller) {
    if (c.sending_done && c.received == c.sent) c.done = true;
    c.cv.notify_all();  // the sender waits for room in the window
  } else if (MayRefillLocked(c, now)) {
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

}  // namespace

Result<std::unique_ptr<FabricClient>> FabricClient::Connect(const Uri& uri,
                                                            const TransportOptions& topts) {
  auto t = transport::CreateTransport(uri.scheme, topts);
  if (!t.ok()) return t.status();
  auto ctx = std::make_shared<ClientCtx>();
  transport::Handler h;
  h.on_message = [ctx](const ConnectionPtr& conn, Message&& m) {
    OnReply(*ctx, *conn, std::move(m));
  };
  h.on_close = [ctx](const ConnectionPtr&, const Status& why) { OnClose(*ctx, why); };
  auto conn = (*t)->Connect(uri, std::move(h), kConnectTimeout);
  if (!conn.ok()) return conn.status();
  (*conn)->SetMaxPayload(kMaxPayload);
  return std::make_unique<FabricClient>(std::move(*t), *conn, ctx);
}

FabricClient::FabricClient(std::unique_ptr<Transport> t, ConnectionPtr conn,
                           std::shared_ptr<ClientCtx> ctx)
    : transport_(std::move(t)), conn_(std::move(conn)), ctx_(std::move(ctx)) {}

FabricClient::~FabricClient() {
  transport_->Shutdown();
}

Result<RunResult> FabricClient::Run(const RunParams& p, const uint8_t* data) {
  ClientCtx& c = *ctx_;
  std::unique_lock lk(c.mu);
  if (!c.error.ok()) return c.error;
  StartLocked(p, data);
  if (p.send_from_caller) {
    SendFromCallerLocked(lk);
  } else {
    uint64_t first = p.max_iters ? std::min(p.window, p.max_iters) : p.window;
    for (uint64_t i = 0; i < first && !c.done; i++) {
      if (Status s = SendNextLocked(c, *conn_); !s.ok()) FailLocked(c, std::move(s));
    }
  }
  Status s = WaitLocked(lk);
  c.active = false;
  c.next_trans = c.base_trans + c.sent;
  if (!s.ok()) return s;
  return RunResult{c.received, Seconds(c.start, c.last_reply), std::move(c.latency_ns)};
}

Result<Message> FabricClient::Call(uint32_t flags, const void* payload, size_t len) {
  ClientCtx& c = *ctx_;
  std::unique_lock lk(c.mu);
  if (!c.error.ok()) return c.error;
  proto::Header h;
  h.opcode = POHMELFS_OP_PING;
  h.flags = flags;
  h.trans = c.next_trans++;
  c.call_trans = h.trans;
  c.call_reply.reset();
  if (Status s = conn_->Send(h, payload, len); !s.ok()) return s;
  bool got = c.cv.wait_for(lk, kReplyTimeout, [&] { return c.call_reply || !c.error.ok(); });
  c.call_trans = 0;
  if (!c.error.ok()) return c.error;
  if (!got) return Status::Error(ETIMEDOUT, "no reply to a bench request");
  Message m = std::move(*c.call_reply);
  c.call_reply.reset();
  return m;
}

// REQUIRES: ctx_->mu held.
void FabricClient::StartLocked(const RunParams& p, const uint8_t* data) {
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
  c.sending_done = false;
}

// Keeps the window full from this thread until the run's time or count is used up; sends
// without the lock so that replies are taken in meanwhile.
void FabricClient::SendFromCallerLocked(std::unique_lock<std::mutex>& lk) {
  ClientCtx& c = *ctx_;
  while (!c.done) {
    bool room = c.cv.wait_until(lk, c.last_reply + kReplyTimeout,
                                [&] { return c.done || c.sent - c.received < c.p.window; });
    if (c.done || !room || !MayRefillLocked(c, Clock::now())) break;  // WaitLocked times out
    proto::Header h = NextMessageLocked(c);
    lk.unlock();
    Status s = conn_->Send(h, c.data, c.p.size);
    lk.lock();
    if (!s.ok()) FailLocked(c, std::move(s));
  }
  c.sending_done = true;
  if (c.received == c.sent) c.done = true;
}

// Waits for the run to end; fails when no reply came for kReplyTimeout.
Status FabricClient::WaitLocked(std::unique_lock<std::mutex>& lk) {
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

// ---- Measurements and output -----------------------------------------------------------------

void FillPattern(uint8_t* p, size_t len, uint64_t seed) {
  const auto s = static_cast<uint8_t>(seed * 37 + 1);
  for (size_t i = 0; i < len; i++) p[i] = static_cast<uint8_t>(i * 131 + (i >> 12) + s) | 1;
}

FabricRun::FabricRun(const FabricOptions& options, const Uri& server)
    : o(options),
      backend(server.scheme),
      label(options.label.empty() ? server.scheme : options.label),
      uri(server.ToString()),
      data(std::max<size_t>(options.max_size, kSmall)) {
  FillPattern(data.data(), data.size(), 0);
}

JsonLine FabricRun::Json(std::string_view test) const {
  JsonLine j;
  j.Str("cmd", o.cmd).Str("backend", backend).Str("label", label).Str("uri", uri);
  j.U64("spin_us", o.spin_us);
  if (o.server_spin_us) j.U64("server_spin_us", *o.server_spin_us);
  j.Str("test", test);
  return j;
}

RunParams FabricRun::Params(size_t size, uint64_t window) const {
  RunParams p;
  p.size = size;
  p.window = window;
  p.duration = std::chrono::milliseconds(o.duration_ms);
  p.max_iters = o.iters;
  return p;
}

CsvRow FabricRun::Row(std::string_view test, uint64_t bytes, uint64_t window) const {
  CsvRow row;
  row.label = label;
  row.backend = backend;
  row.spin_us = o.spin_us;
  row.test = std::string(test);
  row.bytes = bytes;
  row.window = window;
  return row;
}

void Emit(const std::string& line) {
  fmt::print("{}\n", line);
  std::fflush(stdout);
}

void PrintBandwidthHeader(const FabricRun& r, std::string_view test, uint64_t window) {
  if (r.o.json) return;
  Emit(fmt::format("# {}, window {}", test, window));
  Emit(fmt::format("{:>9} {:>9} {:>9} {:>10} {:>10} {:>9}", "bytes", "iters", "seconds", "MiB/s",
                   "usec/xfer", "Mxfers/s"));
}

void AddBandwidth(FabricRun& r, std::string_view test, uint64_t window, const BandwidthRow& b) {
  CsvRow row = r.Row(test, b.bytes, window);
  row.iters = b.iters;
  row.seconds = b.seconds;
  row.mib_per_s = b.mib_per_s();
  row.usec_per_xfer = b.usec_per_xfer();
  r.rows.push_back(row);
  if (r.o.json) {
    Emit(r.Json(test)
             .U64("bytes", b.bytes)
             .U64("window", window)
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

namespace {

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
  CsvRow row = r.Row("latency", kSmall, 1);
  row.iters = res->iters;
  row.seconds = res->seconds;
  row.usec_per_xfer = res->seconds * 1e6 / static_cast<double>(std::max<uint64_t>(res->iters, 1));
  row.p50_us = PercentileUs(res->latency_ns, 50);
  row.p99_us = PercentileUs(res->latency_ns, 99);
  r.rows.push_back(row);
  if (r.o.json) {
    Emit(r.Json("latency")
             .U64("bytes", kSmall)
             .U64("iters", row.iters)
             .F64("seconds", row.seconds)
             .F64("p50_us", row.p50_us)
             .F64("p99_us", row.p99_us)
             .str());
  } else {
    Emit(fmt::format("latency   {} B  iters {}  p50 {:.1f} us  p99 {:.1f} us", kSmall, row.iters,
                     row.p50_us, row.p99_us));
  }
  return Status::Ok();
}

Status MeasureRate(FabricRun& r, FabricClient& client) {
  auto res = client.Run(r.Params(kSmall, kRateWindow), r.data.data());
  if (!res.ok()) return res.status();
  double rate = static_cast<double>(res->iters) / res->seconds;
  CsvRow row = r.Row("msg-rate", kSmall, kRateWindow);
  row.iters = res->iters;
  row.seconds = res->seconds;
  row.msgs_per_s = rate;
  row.usec_per_xfer = 1e6 / rate;
  r.rows.push_back(row);
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

// Message bandwidth: the server acknowledges each message with an empty reply.
Status MeasureBandwidth(FabricRun& r, FabricClient& client) {
  PrintBandwidthHeader(r, "msg-bw", kBandwidthWindow);
  for (uint64_t size = r.o.min_size; size <= r.o.max_size; size *= 2) {
    RunParams p = r.Params(size, kBandwidthWindow);
    p.ack = true;
    p.send_from_caller = true;
    auto res = client.Run(p, r.data.data());
    if (!res.ok()) return res.status();
    AddBandwidth(r, "msg-bw", kBandwidthWindow, BandwidthRow{size, res->iters, res->seconds});
  }
  return Status::Ok();
}

Status RunClient(const FabricOptions& o, const Uri& uri) {
  auto client = FabricClient::Connect(uri, MakeTransportOptions(o, false));
  if (!client.ok()) return client.status();
  FabricRun r(o, uri);
  if (!o.json)
    Emit(fmt::format("# backend {}, server {}, spin {} us{}", r.backend, r.uri, o.spin_us,
                     // A remote server's spin is its own.
                     o.connect.empty()
                         ? fmt::format(" (server {} us)", o.server_spin_us.value_or(o.spin_us))
                         : ""));
  for (auto step : {MeasureLatency, MeasureRate, MeasureBandwidth}) {
    if (Status s = step(r, **client); !s.ok()) return s;
  }
  if (!o.no_rma) POHMELFS_RETURN_IF_ERROR(MeasureRma(r, **client));
  if (o.csv.empty()) return Status::Ok();
  POHMELFS_RETURN_IF_ERROR(WriteCsv(o.csv, r.rows));
  if (o.png.empty()) return Status::Ok();
  Status s = PlotCsv(o.csv, o.png, fmt::format("pohmelfs-bench fabric: {}", r.label));
  if (s.code() == ENOENT) {
    // Not a failure of the benchmark: the numbers are in the CSV.
    fmt::print(stderr, "fabric: {}; no PNG\n", s.reason());
    return Status::Ok();
  }
  return s;
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
int RunServer(const Uri& uri, const TransportOptions& topts) {
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
  auto server = EchoServer::Start(uri, topts);
  if (!server.ok()) return Finish(server.status());
  fmt::print("listening {}\n", (*server)->bound().ToString());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  return kExitOk;
}

}  // namespace
}  // namespace pohmelfs::bench::fabric

namespace pohmelfs::bench {

int RunFabric(const FabricOptions& o) {
  using namespace fabric;
  const std::string& text = !o.listen.empty()    ? o.listen
                            : !o.connect.empty() ? o.connect
                                                 : o.loopback;
  auto uri = ParseOrComplain(text);
  if (!uri.ok()) return kExitUsage;
  const TransportOptions server_options = MakeTransportOptions(o, true);
  if (!o.listen.empty()) return RunServer(*uri, server_options);
  if (!o.connect.empty()) return Finish(RunClient(o, *uri));
  auto server = EchoServer::Start(*uri, server_options);
  if (!server.ok()) return Finish(server.status());
  return Finish(RunClient(o, (*server)->bound()));
}

}  // namespace pohmelfs::bench
