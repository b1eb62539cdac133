// Transport addresses: SCHEME://HOST:PORT, with IPv6 hosts in brackets (tcp://[::1]:7000).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

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

}  // namespace pohmelfs::transport
