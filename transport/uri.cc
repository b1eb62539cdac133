#include "transport/uri.h"

#include <netdb.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>

namespace pohmelfs::transport {

std::string Uri::ToString() const {
  bool v6 = host.find(':') != std::string::npos;
  return scheme + "://" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<Uri> ParseUri(std::string_view text) {
  auto bad = [&](const char* why) {
    return Status::Error(EINVAL, std::string(why) + ": '" + std::string(text) + "'");
  };
  Uri u;
  size_t sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0) return bad("address without scheme://");
  u.scheme = std::string(text.substr(0, sep));
  std::string_view rest = text.substr(sep + 3);
  std::string_view port;
  if (!rest.empty() && rest[0] == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return bad("unclosed '[' in address");
    u.host = std::string(rest.substr(1, close - 1));
    rest = rest.substr(close + 1);
    if (rest.empty() || rest[0] != ':') return bad("address without :port");
    port = rest.substr(1);
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return bad("address without :port");
    u.host = std::string(rest.substr(0, colon));
    if (u.host.find(':') != std::string::npos) return bad("IPv6 address must be in brackets");
    port = rest.substr(colon + 1);
  }
  if (u.host.empty()) return bad("address without host");
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || port.empty() || value > 65535)
    return bad("bad port");
  u.port = static_cast<uint16_t>(value);
  return u;
}

Result<std::vector<sockaddr_storage>> ResolveAddresses(const Uri& uri, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  const std::string port = std::to_string(uri.port);
  int rc = getaddrinfo(uri.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return Status::Error(EHOSTUNREACH, "resolve " + uri.host + ": " + gai_strerror(rc));
  std::vector<sockaddr_storage> out;
  for (auto* ai = res; ai; ai = ai->ai_next) {
    sockaddr_storage ss{};
    std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    out.push_back(ss);
  }
  freeaddrinfo(res);
  return out;
}

socklen_t SockaddrLen(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}

}  // namespace pohmelfs::transport
