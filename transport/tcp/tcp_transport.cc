#include "transport/tcp/tcp_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>

#include "proto/unique_fd.h"
#include "transport/event_loop.h"

namespace pohmelfs::transport {
namespace {

constexpr size_t kReadChunk = 256 * 1024;
// A connection whose unsent bytes pass the high-water mark stops being read (its peer does not
// read its replies) until they drop under the low-water mark: 32 and 8 maximum-size replies.
constexpr size_t kSendHighWater = 32 * size_t{POHMELFS_PAYLOAD_MAX};
constexpr size_t kSendLowWater = 8 * size_t{POHMELFS_PAYLOAD_MAX};
// Sends gather at most this many iovecs per syscall (well under IOV_MAX).
constexpr int kMaxIov = 64;
// Messages with at least this much left after the first write are streamed from the caller's
// buffers (SendInline) instead of being copied into the queue; the copy cost a 4 MiB message
// as much as the socket did. Below it, copying is cheaper than waiting for the peer.
constexpr size_t kInlineSendMin = 256 * 1024;
constexpr int kInlinePollMs = 10;
constexpr std::chrono::milliseconds kInlineStall{50};
// And at most this long in all, however slowly the peer reads; the rest is then queued.
constexpr std::chrono::milliseconds kInlineMax{500};
// Messages at least this large are received straight into their Message (ReceiveLarge)
// rather than through the read buffer and a copy.
constexpr size_t kDirectReceiveMin = 256 * 1024;

std::string SockaddrToUri(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
    return std::string("tcp://") + host + ":" + std::to_string(port);
  }
  auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
  inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
  port = ntohs(a->sin6_port);
  return std::string("tcp://[") + host + "]:" + std::to_string(port);
}

void TuneSocket(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

class TcpConnection final : public Connection,
                            public Pollable,
                            public std::enable_shared_from_this<TcpConnection> {
 public:
  // accepted: the connection came from a listener, whose side answers requests and so stops
  // reading a peer that does not read its replies. The connecting side always reads (its
  // replies must drain for its own sends to).
  TcpConnection(int fd, EventLoop* loop, Handler handler, std::string peer, uint32_t max_payload,
                bool accepted)
      : fd_(fd),
        loop_(loop),
        handler_(std::move(handler)),
        peer_(std::move(peer)),
        accepted_(accepted),
        max_payload_(max_payload) {
    rbuf_.resize(kReadChunk);
  }
  ~TcpConnection() override {
    if (fd_ >= 0) close(fd_);
  }

  Status Register() { return loop_->Add(fd_, EPOLLIN | EPOLLRDHUP, shared_from_this()); }

  Status Send(const proto::Header& h, std::span<const iovec> payload) override {
    pohmelfs_hdr wire;
    if (Status s = EncodeSendHeader(h, payload, &wire); !s.ok()) return s;
    const size_t total = proto::from_le(wire.length);

    std::unique_lock lk(send_mu_);
    if (closed_) return Status::Error(ENOTCONN, "connection closed");
    size_t sent = 0;
    if (out_.empty() && !inline_sending_) {
      // Fast path: straight from the caller's buffers.
      iovec iov[kMaxIov];
      int n = 0;
      iov[n++] = iovec{&wire, sizeof(wire)};
      for (const auto& v : payload) {
        if (n == kMaxIov) break;
        iov[n++] = v;
      }
      msghdr mh{};
      mh.msg_iov = iov;
      mh.msg_iovlen = static_cast<size_t>(n);
      ssize_t r = sendmsg(fd_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0 && errno != EAGAIN && errno != EINTR) {
        Status s = Status::FromErrno("send");
        CloseLocked(s);
        return s;
      }
      if (r > 0) sent = static_cast<size_t>(r);
      if (sent == sizeof(wire) + total) return Status::Ok();
      // Only the connecting side streams: a server must never let a slow client hold its
      // threads (it queues, and stops reading a client that does not drain its replies).
      if (!accepted_ && sizeof(wire) + total - sent >= kInlineSendMin && !loop_->InLoopThread()) {
        return SendInline(lk, wire, payload, sent);
      }
    }
    // Queue what is left; append to the last chunk so a backlog of small messages is
    // flushed with few iovecs.
    if (out_.empty() || out_.back().data.size() > 1024 * 1024) out_.emplace_back();
    auto& chunk = out_.back().data;
    auto append = [&](const void* p, size_t len) {
      size_t skip = std::min(sent, len);
      sent -= skip;
      auto* c = static_cast<const uint8_t*>(p);
      chunk.insert(chunk.end(), c + skip, c + len);
      queued_ += len - skip;
    };
    append(&wire, sizeof(wire));
    for (const auto& v : payload) append(v.iov_base, v.iov_len);
    // While a sender streams inline it owns the socket; it asks for EPOLLOUT when it is done.
    bool update = !want_write_ && !inline_sending_;
    if (!inline_sending_) want_write_ = true;
    if (accepted_ && !send_full_ && queued_ > kSendHighWater) {
      // The peer does not read what it asked for: stop reading its requests until it does.
      send_full_ = true;
      update = true;
      spdlog::warn("{}: {} bytes of replies unsent (the peer is not reading them); pausing reads",
                   peer_, queued_);
    }
    if (update) UpdateEventsLocked();
    return Status::Ok();
  }

  void PauseReceive() override {
    std::lock_guard lk(send_mu_);
    if (paused_ || closed_) return;
    paused_ = true;
    UpdateEventsLocked();
  }

  void ResumeReceive() override {
    {
      std::lock_guard lk(send_mu_);
      if (!paused_ || closed_) return;
      paused_ = false;
      UpdateEventsLocked();
    }
    // Messages already buffered while paused must be delivered without waiting for new bytes.
    auto self = shared_from_this();
    loop_->Post([self] { self->DeliverBuffered(); });
  }

  void Close(const Status& why) override {
    std::lock_guard lk(send_mu_);
    CloseLocked(why);
  }

  bool IsOpen() const override { return !closed_.load(); }
  const std::string& Peer() const override { return peer_; }
  void SetMaxPayload(uint32_t bytes) override { max_payload_ = bytes; }

  void OnEvents(uint32_t events) override {
    if (events & EPOLLOUT) Flush();
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) ReadAvailable();
  }

 private:
  struct Chunk {
    std::vector<uint8_t> data;
    size_t offset = 0;
  };

  // REQUIRES: send_mu_ held.
  void UpdateEventsLocked() {
    uint32_t ev = EPOLLRDHUP;
    if (!paused_ && !send_full_) ev |= EPOLLIN;
    if (want_write_) ev |= EPOLLOUT;
    (void)loop_->Modify(fd_, ev);
  }

  // REQUIRES: send_mu_ held.
  void CloseLocked(const Status& why) {
    if (closed_.exchange(true)) return;
    close_reason_ = why;
    ::shutdown(fd_, SHUT_RDWR);
    out_.clear();
    queued_ = 0;
    auto self = shared_from_this();
    loop_->Post([self, why] { self->Finish(why); });
  }

  // Loop thread: unregister and tell the layer above, exactly once.
  void Finish(const Status& why) {
    if (finished_) return;
    finished_ = true;
    loop_->Remove(fd_);
    if (handler_.on_close) handler_.on_close(shared_from_this(), why);
    handler_ = Handler{};  // drop references the layer above may hold to us
  }

  // A large message the socket did not take at once: rather than copy the rest into the queue,
  // the sending thread (never the loop thread, and only on the connecting side) keeps writing
  // from the caller's buffers as the peer drains them. Other senders queue behind it meanwhile
  // (inline_sending_). A peer that stops reading for kInlineStall, or is still reading after
  // kInlineMax, gets the rest copied into the queue, as any other message.
  // REQUIRES: lk holds send_mu_, out_ is empty; `sent` bytes of wire+payload are on the socket.
  Status SendInline(std::unique_lock<std::mutex>& lk, const pohmelfs_hdr& wire,
                    std::span<const iovec> payload, size_t sent) {
    inline_sending_ = true;
    lk.unlock();
    std::vector<iovec> rest;
    rest.reserve(payload.size() + 1);
    auto keep = [&](const void* p, size_t len) {
      size_t skip = std::min(sent, len);
      sent -= skip;
      if (len > skip)
        rest.push_back(iovec{static_cast<uint8_t*>(const_cast<void*>(p)) + skip, len - skip});
    };
    keep(&wire, sizeof(wire));
    for (const auto& v : payload) keep(v.iov_base, v.iov_len);
    Status error;
    size_t first = 0;  // rest[first..] is unsent
    const auto started = std::chrono::steady_clock::now();
    auto last_progress = started;
    while (first < rest.size() && !closed_) {
      pollfd pfd{fd_, POLLOUT, 0};
      int pr = poll(&pfd, 1, kInlinePollMs);
      if (pr < 0 && errno != EINTR) {
        error = Status::FromErrno("poll");
        break;
      }
      if (pr <= 0) {
        if (std::chrono::steady_clock::now() - last_progress > kInlineStall) break;
        continue;
      }
      msghdr mh{};
      mh.msg_iov = rest.data() + first;
      mh.msg_iovlen = std::min<size_t>(rest.size() - first, kMaxIov);
      ssize_t r = sendmsg(fd_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        error = Status::FromErrno("send");
        break;
      }
      last_progress = std::chrono::steady_clock::now();
      auto left = static_cast<size_t>(r);
      while (left > 0) {
        iovec& v = rest[first];
        size_t take = std::min(left, v.iov_len);
        v.iov_base = static_cast<uint8_t*>(v.iov_base) + take;
        v.iov_len -= take;
        left -= take;
        if (v.iov_len == 0) ++first;
      }
      if (last_progress - started > kInlineMax) break;  // a slow reader: the rest is queued
    }
    lk.lock();
    inline_sending_ = false;
    if (!error.ok()) {
      CloseLocked(error);
      return error;
    }
    if (closed_) return Status::Error(ENOTCONN, "connection closed");
    if (first < rest.size()) {
      // Stalled: the unsent rest goes first in the queue, ahead of what others queued.
      Chunk c;
      for (size_t i = first; i < rest.size(); ++i) {
        auto* b = static_cast<const uint8_t*>(rest[i].iov_base);
        c.data.insert(c.data.end(), b, b + rest[i].iov_len);
      }
      queued_ += c.data.size();
      out_.push_front(std::move(c));
    }
    if (!out_.empty() && !want_write_) {
      want_write_ = true;
      if (accepted_ && !send_full_ && queued_ > kSendHighWater) send_full_ = true;
      UpdateEventsLocked();
    }
    return Status::Ok();
  }

  void Flush() {
    std::lock_guard lk(send_mu_);
    if (inline_sending_) return;  // it asks for EPOLLOUT again when it is done
    while (!out_.empty() && !closed_) {
      iovec iov[kMaxIov];
      int n = 0;
      for (auto& c : out_) {
        if (n == kMaxIov) break;
        iov[n++] = iovec{c.data.data() + c.offset, c.data.size() - c.offset};
      }
      msghdr mh{};
      mh.msg_iov = iov;
      mh.msg_iovlen = static_cast<size_t>(n);
      ssize_t r = sendmsg(fd_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        CloseLocked(Status::FromErrno("send"));
        return;
      }
      size_t left = static_cast<size_t>(r);
      while (left > 0 && !out_.empty()) {
        auto& c = out_.front();
        size_t take = std::min(left, c.data.size() - c.offset);
        c.offset += take;
        queued_ -= take;
        left -= take;
        if (c.offset == c.data.size()) out_.pop_front();
      }
    }
    bool update = false, resume = false;
    if (send_full_ && queued_ < kSendLowWater) {
      send_full_ = false;
      update = resume = true;
      spdlog::info("{}: the peer reads its replies again; resuming reads", peer_);
    }
    if (out_.empty() && want_write_) {
      want_write_ = false;
      update = true;
    }
    if (update && !closed_) UpdateEventsLocked();
    if (resume) {
      // Requests already buffered while full are delivered without waiting for new bytes.
      auto self = shared_from_this();
      loop_->Post([self] { self->DeliverBuffered(); });
    }
  }

  void ReadAvailable() {
    while (!closed_) {
      if (paused_ || send_full_) break;  // stopped: leave the bytes in the socket
      if (large_) {
        if (!ReceiveLarge()) break;
        continue;
      }
      if (rend_ == rbuf_.size()) {
        // Compact, or grow to hold one whole message.
        if (rstart_ > 0) {
          std::memmove(rbuf_.data(), rbuf_.data() + rstart_, rend_ - rstart_);
          rend_ -= rstart_;
          rstart_ = 0;
        } else {
          rbuf_.resize(rbuf_.size() * 2);
        }
      }
      ssize_t r = recv(fd_, rbuf_.data() + rend_, rbuf_.size() - rend_, MSG_DONTWAIT);
      if (r == 0) {
        Close(Status::Error(ECONNRESET, "peer closed the connection"));
        break;
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) Close(Status::FromErrno("recv"));
        break;
      }
      rend_ += static_cast<size_t>(r);
      if (!DeliverBuffered()) break;
    }
    if (closed_) {
      Status why;
      {
        std::lock_guard lk(send_mu_);
        why = close_reason_;
      }
      Finish(why);
    }
  }

  // Reads into the large message in progress and delivers it once whole. Returns false when
  // the socket has nothing more for now (or closed).
  bool ReceiveLarge() {
    auto& payload = large_->payload;
    ssize_t r = recv(fd_, payload.data() + large_got_, payload.size() - large_got_, MSG_DONTWAIT);
    if (r == 0) {
      Close(Status::Error(ECONNRESET, "peer closed the connection"));
      return false;
    }
    if (r < 0) {
      if (errno == EINTR) return true;
      if (errno != EAGAIN) Close(Status::FromErrno("recv"));
      return false;
    }
    large_got_ += static_cast<size_t>(r);
    if (large_got_ < payload.size()) return true;
    Message m = std::move(*large_);
    large_.reset();
    if (handler_.on_message) handler_.on_message(shared_from_this(), std::move(m));
    return true;
  }

  // Delivers every whole message in the buffer. Returns false when paused or closed.
  bool DeliverBuffered() {
    while (!closed_) {
      if (paused_ || send_full_) return false;
      size_t have = rend_ - rstart_;
      if (have < sizeof(pohmelfs_hdr)) break;
      pohmelfs_hdr wire;
      std::memcpy(&wire, rbuf_.data() + rstart_, sizeof(wire));
      auto hdr = proto::DecodeHeader(wire, max_payload_);
      if (!hdr.ok()) {
        spdlog::warn("{}: bad message header: {}; closing", peer_, hdr.status().ToString());
        Close(hdr.status());
        return false;
      }
      size_t need = sizeof(wire) + hdr->length;
      if (have < need && hdr->length >= kDirectReceiveMin) {
        // Receive the rest straight into the message (ReceiveLarge).
        large_.emplace();
        large_->hdr = *hdr;
        large_->payload.resize(hdr->length);
        const uint8_t* p = rbuf_.data() + rstart_ + sizeof(wire);
        large_got_ = have - sizeof(wire);
        std::memcpy(large_->payload.data(), p, large_got_);
        rstart_ = rend_ = 0;
        break;
      }
      if (have < need) {
        if (rbuf_.size() - rstart_ < need) {
          std::memmove(rbuf_.data(), rbuf_.data() + rstart_, have);
          rstart_ = 0;
          rend_ = have;
          if (rbuf_.size() < need) rbuf_.resize(need);
        }
        break;
      }
      Message m;
      m.hdr = *hdr;
      const uint8_t* p = rbuf_.data() + rstart_ + sizeof(wire);
      m.payload.assign(p, p + hdr->length);
      rstart_ += need;
      if (handler_.on_message) handler_.on_message(shared_from_this(), std::move(m));
    }
    if (rstart_ == rend_) {
      rstart_ = rend_ = 0;
      // The buffer keeps room for one largest message (they come in streams); it only gives
      // back space when the negotiated maximum was lowered.
      if (rbuf_.size() > sizeof(pohmelfs_hdr) + max_payload_ && rbuf_.size() > kReadChunk) {
        rbuf_.resize(kReadChunk);
        rbuf_.shrink_to_fit();
      }
    }
    return !closed_;
  }

  const int fd_;
  EventLoop* const loop_;
  Handler handler_;  // loop thread only
  const std::string peer_;
  const bool accepted_;
  std::atomic<uint32_t> max_payload_;

  std::mutex send_mu_;
  std::atomic<bool> closed_{false};
  // Written under send_mu_; read without it on the loop thread before each delivery.
  std::atomic<bool> paused_{false};
  Status close_reason_;      // GUARDED_BY(send_mu_), set once by CloseLocked
  bool want_write_ = false;  // GUARDED_BY(send_mu_)
  // GUARDED_BY(send_mu_): a thread is in SendInline, writing to the socket without the lock.
  bool inline_sending_ = false;
  std::deque<Chunk> out_;  // GUARDED_BY(send_mu_)
  size_t queued_ = 0;      // GUARDED_BY(send_mu_): bytes in out_ not yet sent
  // Written under send_mu_; read without it on the loop thread: reading stopped until out_
  // drains.
  std::atomic<bool> send_full_{false};

  // Receive state: loop thread only.
  std::vector<uint8_t> rbuf_;
  size_t rstart_ = 0, rend_ = 0;
  std::optional<Message> large_;  // a large message being received in place
  size_t large_got_ = 0;          // its payload bytes received so far
  bool finished_ = false;
};

class TcpListener final : public Pollable {
 public:
  TcpListener(int fd, std::function<void()> on_readable)
      : fd_(fd), on_readable_(std::move(on_readable)) {}
  ~TcpListener() override { close(fd_); }
  void OnEvents(uint32_t) override { on_readable_(); }
  int fd() const { return fd_; }

 private:
  int fd_;
  std::function<void()> on_readable_;
};

class TcpTransport final : public Transport {
 public:
  explicit TcpTransport(const TransportOptions& o) : max_payload_(o.max_payload) {
    int n = std::max(1, o.loop_threads);
    for (int i = 0; i < n; i++) loops_.push_back(std::make_unique<EventLoop>("tcp-loop", o.spin));
  }
  ~TcpTransport() override { Shutdown(); }

  Result<Uri> Listen(const Uri& uri, Handler handler) override {
    auto addrs = ResolveAddresses(uri, true);
    if (!addrs.ok()) return addrs.status();
    const sockaddr_storage& ss = addrs->front();
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::FromErrno("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<const sockaddr*>(&ss), SockaddrLen(ss)) != 0 ||
        listen(fd, 512) != 0) {
      Status s = Status::FromErrno(("listen on " + uri.ToString()).c_str());
      close(fd);
      return s;
    }
    sockaddr_storage bound{};
    socklen_t blen = sizeof(bound);
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
    auto parsed = ParseUri(SockaddrToUri(bound));
    auto listener = std::make_shared<TcpListener>(fd, [this, fd, handler] { Accept(fd, handler); });
    Status s = loops_[0]->Add(fd, EPOLLIN, listener);
    if (!s.ok()) return s;
    std::lock_guard lk(mu_);
    listeners_.push_back(fd);
    return parsed;
  }

  Result<ConnectionPtr> Connect(const Uri& uri, Handler handler,
                                std::chrono::milliseconds timeout) override {
    auto addrs = ResolveAddresses(uri, false);
    if (!addrs.ok()) return addrs.status();
    Status last = Status::Error(EHOSTUNREACH, "no address for " + uri.host);
    for (const auto& ss : *addrs) {
      int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) return Status::FromErrno("socket");
      int rc = connect(fd, reinterpret_cast<const sockaddr*>(&ss), SockaddrLen(ss));
      if (rc != 0 && errno == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        rc = poll(&p, 1, static_cast<int>(timeout.count()));
        if (rc == 0) {
          errno = ETIMEDOUT;
          rc = -1;
        } else if (rc > 0) {
          int err = 0;
          socklen_t len = sizeof(err);
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
          errno = err;
          rc = err == 0 ? 0 : -1;
        }
      }
      if (rc != 0) {
        last = Status::FromErrno(("connect to " + uri.ToString()).c_str());
        close(fd);
        continue;
      }
      TuneSocket(fd);
      auto conn = std::make_shared<TcpConnection>(fd, NextLoop(), std::move(handler),
                                                  SockaddrToUri(ss), max_payload_, false);
      Status s = conn->Register();
      if (!s.ok()) return s;
      return ConnectionPtr(conn);
    }
    return last;
  }

  void Shutdown() override {
    std::vector<int> listeners;
    {
      std::lock_guard lk(mu_);
      if (shut_) return;
      shut_ = true;
      listeners.swap(listeners_);
    }
    for (int fd : listeners) loops_[0]->Remove(fd);
    for (auto& loop : loops_) {
      loop->ForEachAndWait([](const std::shared_ptr<Pollable>& p) {
        if (auto* c = dynamic_cast<TcpConnection*>(p.get()))
          c->Close(Status::Error(ESHUTDOWN, "transport shut down"));
      });
    }
    for (auto& loop : loops_) loop->Stop();
  }

 private:
  EventLoop* NextLoop() { return loops_[next_++ % loops_.size()].get(); }

  // Out of descriptors: the pending connection would keep the listener readable and the loop
  // spinning. Use the reserve descriptor to accept and close it at once.
  void ShedConnection(int lfd) {
    reserve_.reset();
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) close(fd);
    reserve_ = UniqueFd(open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (shed_++ % 1000 == 0)
      spdlog::warn("out of file descriptors: refused {} connection(s)", shed_.load());
  }

  void Accept(int lfd, const Handler& handler) {
    for (;;) {
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      int fd = accept4(lfd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno == EMFILE || errno == ENFILE) {
          ShedConnection(lfd);
          continue;
        }
        if (errno != EAGAIN) spdlog::warn("accept: {}", std::strerror(errno));
        return;
      }
      TuneSocket(fd);
      auto conn = std::make_shared<TcpConnection>(fd, NextLoop(), handler, SockaddrToUri(ss),
                                                  max_payload_, true);
      if (handler.on_accept) handler.on_accept(conn);
      if (!conn->IsOpen()) continue;  // refused by on_accept
      Status s = conn->Register();
      if (!s.ok()) spdlog::warn("{}: register: {}", conn->Peer(), s.ToString());
    }
  }

  const uint32_t max_payload_;
  UniqueFd reserve_{open("/dev/null", O_RDONLY | O_CLOEXEC)};  // loop 0 only
  std::atomic<uint64_t> shed_{0};
  std::vector<std::unique_ptr<EventLoop>> loops_;
  std::atomic<size_t> next_{0};
  std::mutex mu_;
  std::vector<int> listeners_;  // GUARDED_BY(mu_)
  bool shut_ = false;           // GUARDED_BY(mu_)
};

}  // namespace

std::unique_ptr<Transport> CreateTcpTransport(const TransportOptions& options) {
  return std::make_unique<TcpTransport>(options);
}

}  // namespace pohmelfs::transport
