// pingpong benchmark: the smallest thing that does a TCP round trip, as the baseline of the
// fabric benchmark's latency. One blocking socket with TCP_NODELAY; the client writes --size
// bytes and reads them back, one message at a time, and times each round trip; the server
// writes back whatever it reads. No framing, no event loop, no threads on the client side.
// Thread-safety: the loopback mode runs the server on its own thread with its own socket.
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "proto/unique_fd.h"
#include "transport/uri.h"

namespace pohmelfs::bench {
namespace {

using transport::ResolveAddresses;
using transport::SockaddrLen;
using transport::Uri;

constexpr uint64_t kWarmupIters = 200;
constexpr size_t kEchoChunk = 64 * 1024;

Status TcpOnly(const Uri& uri) {
  if (uri.scheme == "tcp") return Status::Ok();
  return Status::Error(EINVAL, "pingpong: only tcp://HOST:PORT addresses, not " + uri.scheme);
}

Status NoDelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
    return Status::FromErrno("setsockopt TCP_NODELAY");
  return Status::Ok();
}

// Listens on uri; *port is the bound port.
Result<UniqueFd> Listen(const Uri& uri, uint16_t* port) {
  if (Status s = TcpOnly(uri); !s.ok()) return s;
  auto addrs = ResolveAddresses(uri, true);
  if (!addrs.ok()) return addrs.status();
  const sockaddr_storage& a = addrs->front();
  UniqueFd fd(::socket(a.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status::FromErrno("socket");
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a), SockaddrLen(a)) != 0)
    return Status::FromErrno("bind");
  if (::listen(fd.get(), 4) != 0) return Status::FromErrno("listen");
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return Status::FromErrno("getsockname");
  *port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return fd;
}

Result<UniqueFd> Connect(const Uri& uri) {
  if (Status s = TcpOnly(uri); !s.ok()) return s;
  auto addrs = ResolveAddresses(uri, false);
  if (!addrs.ok()) return addrs.status();
  const sockaddr_storage& a = addrs->front();
  UniqueFd fd(::socket(a.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status::FromErrno("socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&a), SockaddrLen(a)) != 0)
    return Status::FromErrno(("connect " + uri.ToString()).c_str());
  if (Status s = NoDelay(fd.get()); !s.ok()) return s;
  return fd;
}

Status WriteAll(int fd, const uint8_t* p, size_t len) {
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("write");
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status ReadAll(int fd, uint8_t* p, size_t len) {
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("read");
    if (n == 0) return Status::Error(ECONNRESET, "the peer closed the connection");
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Writes back what it reads until the peer closes.
void Echo(UniqueFd conn) {
  if (Status s = NoDelay(conn.get()); !s.ok()) {
    fmt::print(stderr, "pingpong: {}\n", s.ToString());
    return;
  }
  std::vector<uint8_t> buf(kEchoChunk);
  for (;;) {
    ssize_t n = ::read(conn.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    if (!WriteAll(conn.get(), buf.data(), static_cast<size_t>(n)).ok()) return;
  }
}

Result<UniqueFd> Accept(int listener) {
  for (;;) {
    int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return UniqueFd(fd);
    if (errno != EINTR) return Status::FromErrno("accept");
  }
}

Status Measure(const PingPongOptions& o, const Uri& uri) {
  auto fd = Connect(uri);
  if (!fd.ok()) return fd.status();
  std::vector<uint8_t> out(o.size), in(o.size);
  for (size_t i = 0; i < out.size(); i++) out[i] = static_cast<uint8_t>(i * 131 + 1);
  auto round_trip = [&]() -> Status {
    POHMELFS_RETURN_IF_ERROR(WriteAll(fd->get(), out.data(), out.size()));
    return ReadAll(fd->get(), in.data(), in.size());
  };
  for (uint64_t i = 0; i < kWarmupIters; i++) POHMELFS_RETURN_IF_ERROR(round_trip());
  if (in != out) return Status::Error(EIO, "pingpong: the echo differs from what was sent");
  std::vector<uint64_t> lat;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::milliseconds(o.duration_ms);
  auto now = start;
  do {
    auto t0 = Clock::now();
    POHMELFS_RETURN_IF_ERROR(round_trip());
    now = Clock::now();
    lat.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(now - t0).count());
  } while (now < deadline && (o.iters == 0 || lat.size() < o.iters));
  std::sort(lat.begin(), lat.end());
  CsvRow row;
  row.label = o.label;
  row.backend = "socket";
  row.test = "latency";
  row.bytes = o.size;
  row.iters = lat.size();
  row.seconds = Seconds(start, now);
  row.usec_per_xfer = row.seconds * 1e6 / static_cast<double>(lat.size());
  row.p50_us = PercentileUs(lat, 50);
  row.p99_us = PercentileUs(lat, 99);
  if (o.json) {
    fmt::print("{}\n", JsonLine()
                           .Str("cmd", o.cmd)
                           .Str("backend", "socket")
                           .Str("label", o.label)
                           .Str("uri", uri.ToString())
                           .Str("test", "latency")
                           .U64("bytes", o.size)
                           .U64("iters", row.iters)
                           .F64("seconds", row.seconds)
                           .F64("p50_us", row.p50_us)
                           .F64("p99_us", row.p99_us)
                           .str());
  } else {
    fmt::print("# pingpong, blocking socket, server {}\n", uri.ToString());
    fmt::print("latency   {} B  iters {}  p50 {:.1f} us  p99 {:.1f} us\n", o.size, row.iters,
               row.p50_us, row.p99_us);
  }
  std::fflush(stdout);
  return o.csv.empty() ? Status::Ok() : WriteCsv(o.csv, {row});
}

int Finish(const Status& s) {
  if (s.ok()) return kExitOk;
  fmt::print(stderr, "pingpong: {}\n", s.ToString());
  return kExitError;
}

// Serves one client at a time until killed.
int Serve(const Uri& uri) {
  // A shell starts background jobs with SIGINT ignored: make it stop the server as usual.
  ::signal(SIGINT, SIG_DFL);
  uint16_t port = 0;
  auto listener = Listen(uri, &port);
  if (!listener.ok()) return Finish(listener.status());
  Uri bound = uri;
  bound.port = port;
  fmt::print("listening {}\n", bound.ToString());
  std::fflush(stdout);
  for (;;) {
    auto conn = Accept(listener->get());
    if (!conn.ok()) return Finish(conn.status());
    Echo(std::move(*conn));
  }
}

}  // namespace

int RunPingPong(const PingPongOptions& o) {
  const std::string& text = !o.listen.empty()    ? o.listen
                            : !o.connect.empty() ? o.connect
                                                 : o.loopback;
  auto uri = transport::ParseUri(text);
  if (!uri.ok()) {
    fmt::print(stderr, "pingpong: {}\n", uri.status().reason());
    return kExitUsage;
  }
  if (!o.listen.empty()) return Serve(*uri);
  if (!o.connect.empty()) return Finish(Measure(o, *uri));
  uint16_t port = 0;
  auto listener = Listen(*uri, &port);
  if (!listener.ok()) return Finish(listener.status());
  Uri bound = *uri;
  bound.port = port;
  // The server thread ends when the client's socket closes (at the end of Measure).
  std::jthread server([fd = listener->get()] {
    if (auto conn = Accept(fd); conn.ok()) Echo(std::move(*conn));
  });
  Status s = Measure(o, bound);
  if (!s.ok()) ::shutdown(listener->get(), SHUT_RDWR);  // the client may not have connected
  return Finish(s);
}

}  // namespace pohmelfs::bench
