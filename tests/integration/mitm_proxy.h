// A man in the middle for the security tests: a TCP proxy on 127.0.0.1 that forwards whole
// protocol messages between each client and the server, and lets the test record, change,
// drop, hold back or reorder them on the way (an attacker on the network).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "proto/pohmelfs_proto.h"
#include "transport/uri.h"

namespace pohmelfs::testing {

using Frame = std::vector<uint8_t>;  // one message: wire header and payload

// Byte offsets in a frame, for hooks.
inline constexpr size_t kFrameOpcode = offsetof(pohmelfs_hdr, opcode);
inline constexpr size_t kFrameFlags = offsetof(pohmelfs_hdr, flags);
inline constexpr size_t kFramePayload = sizeof(pohmelfs_hdr);

inline uint16_t FrameOpcode(const Frame& f) {
  uint16_t op;
  std::memcpy(&op, f.data() + kFrameOpcode, sizeof(op));
  return op;  // little-endian hosts only, as the tests run
}
inline bool FrameSealed(const Frame& f) {
  uint32_t flags;
  std::memcpy(&flags, f.data() + kFrameFlags, sizeof(flags));
  return (flags & POHMELFS_FLAG_SEALED) != 0;
}

class MitmProxy {
 public:
  // Sees every message of one direction in order (index counts them per connection and
  // direction) and appends what is to be forwarded to out; by default it forwards frame.
  using Hook = std::function<void(size_t index, Frame& frame, std::vector<Frame>* out)>;

  MitmProxy(const std::string& target_uri, Hook to_server, Hook to_client = nullptr)
      : to_server_(std::move(to_server)), to_client_(std::move(to_client)) {
    auto uri = transport::ParseUri(target_uri);
    target_.sin_family = AF_INET;
    target_.sin_port = htons(uri->port);
    inet_pton(AF_INET, uri->host.c_str(), &target_.sin_addr);
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
    listen(listen_fd_, 16);
    socklen_t len = sizeof(sa);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    uri_ = "tcp://127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }

  ~MitmProxy() {
    stop_ = true;
    acceptor_.join();
    {
      std::lock_guard lk(mu_);
      for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : pumps_) t.join();
    for (int fd : fds_) close(fd);
    close(listen_fd_);
  }

  const std::string& uri() const { return uri_; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;  // wakes to see stop_
      int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (connect(server, reinterpret_cast<sockaddr*>(&target_), sizeof(target_)) != 0) {
        close(server);
        close(client);
        continue;
      }
      std::lock_guard lk(mu_);
      fds_.push_back(client);
      fds_.push_back(server);
      pumps_.emplace_back([this, client, server] { Pump(client, server, to_server_); });
      pumps_.emplace_back([this, client, server] { Pump(server, client, to_client_); });
    }
  }

  // Forwards messages from `from` to `to` through hook until either side closes.
  static void Pump(int from, int to, const Hook& hook) {
    for (size_t index = 0;; index++) {
      Frame f(sizeof(pohmelfs_hdr));
      if (!ReadAll(from, f.data(), f.size())) break;
      uint32_t len;
      std::memcpy(&len, f.data() + offsetof(pohmelfs_hdr, length), sizeof(len));
      if (len > 64u << 20) break;
      f.resize(f.size() + len);
      if (!ReadAll(from, f.data() + sizeof(pohmelfs_hdr), len)) break;
      std::vector<Frame> out;
      if (hook) {
        hook(index, f, &out);
      } else {
        out.push_back(std::move(f));
      }
      bool ok = true;
      for (const auto& o : out) ok = ok && WriteAll(to, o.data(), o.size());
      if (!ok) break;
    }
    shutdown(from, SHUT_RDWR);
    shutdown(to, SHUT_RDWR);
  }

  static bool ReadAll(int fd, uint8_t* p, size_t n) {
    while (n > 0) {
      ssize_t r = recv(fd, p, n, 0);
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }
  static bool WriteAll(int fd, const uint8_t* p, size_t n) {
    while (n > 0) {
      ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }

  Hook to_server_, to_client_;
  sockaddr_in target_{};
  int listen_fd_ = -1;
  std::string uri_;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> fds_;            // GUARDED_BY(mu_)
  std::vector<std::thread> pumps_;  // GUARDED_BY(mu_) (joined after the acceptor stops)
};

}  // namespace pohmelfs::testing
