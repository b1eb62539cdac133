// A raw protocol peer for integration tests: a blocking socket that speaks bytes, not the
// protocol, so that the test decides exactly what goes out (malformed frames included) and sees
// every reply as it comes back.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/codec.h"
#include "transport/uri.h"

namespace pohmelfs::testing {

struct RawReply {
  proto::Header hdr;
  std::vector<uint8_t> payload;
};

class RawPeer {
 public:
  explicit RawPeer(const std::string& uri_text) {
    auto uri = transport::ParseUri(uri_text);
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uri->port);
    inet_pton(AF_INET, uri->host.c_str(), &sa.sin_addr);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
  }
  ~RawPeer() { close(fd_); }
  RawPeer(const RawPeer&) = delete;
  RawPeer& operator=(const RawPeer&) = delete;
  bool connected() const { return connected_; }

  void SendBytes(const void* p, size_t n) { ASSERT_EQ(send(fd_, p, n, MSG_NOSIGNAL), (ssize_t)n); }

  // claimed_len: the header's length when it should lie about the payload.
  void Send(uint16_t opcode, const std::vector<uint8_t>& payload, uint64_t trans,
            uint32_t claimed_len = UINT32_MAX, uint32_t flags = 0) {
    proto::Header h;
    h.opcode = opcode;
    h.flags = flags;
    h.trans = trans;
    h.length = claimed_len == UINT32_MAX ? static_cast<uint32_t>(payload.size()) : claimed_len;
    pohmelfs_hdr wire;
    proto::EncodeHeader(h, &wire);
    std::vector<uint8_t> all(sizeof(wire));
    std::memcpy(all.data(), &wire, sizeof(wire));
    all.insert(all.end(), payload.begin(), payload.end());
    send(fd_, all.data(), all.size(), MSG_NOSIGNAL);
  }

  // The next reply, or nullopt if the connection was closed (or nothing came in timeout_ms).
  std::optional<RawReply> Recv(int timeout_ms = 10000) {
    pohmelfs_hdr wire;
    if (!ReadExact(&wire, sizeof(wire), timeout_ms)) return std::nullopt;
    auto h = proto::DecodeHeader(wire, POHMELFS_PAYLOAD_MAX);
    if (!h.ok()) return std::nullopt;
    RawReply r{*h, std::vector<uint8_t>(h->length)};
    if (!ReadExact(r.payload.data(), r.payload.size(), 10000)) return std::nullopt;
    return r;
  }

  // True when the server closed the connection (within 10 s).
  bool ClosedByPeer() {
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 10000) <= 0) return false;
      char buf[4096];
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return true;  // EOF or reset
    }
  }

  std::optional<RawReply> Hello() {
    pohmelfs_hello_req q{};
    q.version_min = proto::to_le(uint16_t{POHMELFS_PROTO_VERSION_MIN});
    q.version_max = proto::to_le(uint16_t{POHMELFS_PROTO_VERSION_MAX});
    q.max_payload = proto::to_le(uint32_t{POHMELFS_PAYLOAD_MAX});
    q.crypto_modes = proto::to_le(uint32_t{POHMELFS_CRYPTO_NONE});
    Send(POHMELFS_OP_HELLO, Bytes(q), 1);
    return Recv();
  }

  template <typename T>
  static std::vector<uint8_t> Bytes(const T& s, std::string_view tail = {}) {
    std::vector<uint8_t> b(sizeof(T));
    std::memcpy(b.data(), &s, sizeof(T));
    b.insert(b.end(), tail.begin(), tail.end());
    return b;
  }

 private:
  bool ReadExact(void* p, size_t n, int timeout_ms) {
    auto* c = static_cast<uint8_t*>(p);
    while (n > 0) {
      pollfd pf{fd_, POLLIN, 0};
      if (poll(&pf, 1, timeout_ms) <= 0) return false;
      ssize_t r = recv(fd_, c, n, 0);
      if (r <= 0) return false;
      c += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }
  int fd_ = -1;
  bool connected_ = false;
};

}  // namespace pohmelfs::testing
