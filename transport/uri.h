// Transport addresses: SCHEME://HOST:PORT, with IPv6 hosts in brackets (tcp://[::1]:7000).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "proto/status.h"

namespace pohmelfs::transport {

struct Uri {
  std::string scheme;  // "tcp", later "ofi+tcp", "verbs"
  std::string host;    // without brackets
  uint16_t port = 0;

  std::string ToString() const;
};

// Parses "scheme://host:port". Port 0 is allowed (listen on any port).
Result<Uri> ParseUri(std::string_view text);

// The stream-socket addresses of uri's host and port (getaddrinfo; passive: for listening),
// in getaddrinfo's order. EHOSTUNREACH with the resolver's reason when there are none.
Result<std::vector<sockaddr_storage>> ResolveAddresses(const Uri& uri, bool passive);
// The length of an AF_INET or AF_INET6 address held in ss.
socklen_t SockaddrLen(const sockaddr_storage& ss);

}  // namespace pohmelfs::transport
