#include "rdma-server/allow_list.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace pohmelfs::server {
namespace {

struct Address {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};
};

std::optional<Address> ParseAddress(std::string_view text) {
  std::string s(text);
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  Address a;
  if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) return a;
  if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) != 1) return std::nullopt;
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(a.bytes.data(), kMapped, sizeof(kMapped)) == 0) {
    std::memmove(a.bytes.data(), a.bytes.data() + 12, 4);  // an IPv4 peer on a v6 socket
    std::memset(a.bytes.data() + 4, 0, 12);
    return a;
  }
  a.v6 = true;
  return a;
}

// The host of a peer URI ("scheme://host:port", "scheme://[v6]:port") or the text itself.
// A shared-memory peer ("ofi+shm:fi_shm://PID:..."; only processes of this node can reach
// shared memory) is matched as the IPv4 loopback address.
std::string_view HostOf(std::string_view peer) {
  if (peer.starts_with("ofi+shm:")) return "127.0.0.1";
  auto scheme_end = peer.find("://");
  if (scheme_end == std::string_view::npos) return peer;
  peer.remove_prefix(scheme_end + 3);
  if (!peer.empty() && peer.front() == '[') {
    auto close = peer.find(']');
    return close == std::string_view::npos ? peer : peer.substr(0, close + 1);
  }
  auto colon = peer.rfind(':');
  return colon == std::string_view::npos ? peer : peer.substr(0, colon);
}

bool PrefixMatches(const std::array<uint8_t, 16>& net, const std::array<uint8_t, 16>& a,
                   int prefix) {
  int full = prefix / 8, rest = prefix % 8;
  if (std::memcmp(net.data(), a.data(), static_cast<size_t>(full)) != 0) return false;
  if (rest == 0) return true;
  auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (net[static_cast<size_t>(full)] & mask) == (a[static_cast<size_t>(full)] & mask);
}

}  // namespace

Result<AllowRule> AllowRule::Parse(std::string_view text) {
  auto bad = [&](const char* why) {
    return Status::Error(EINVAL, "bad --allow '" + std::string(text) + "': " + why +
                                     " (expected CIDR=ro or CIDR=rw, e.g. 10.0.0.0/8=rw)");
  };
  AllowRule r;
  r.text = std::string(text);
  auto eq = text.rfind('=');
  if (eq == std::string_view::npos) return bad("no =ro or =rw");
  std::string_view perm = text.substr(eq + 1), cidr = text.substr(0, eq);
  if (perm == "rw") {
    r.access = Access::kReadWrite;
  } else if (perm == "ro") {
    r.access = Access::kReadOnly;
  } else {
    return bad("permission must be ro or rw");
  }
  std::string_view host = cidr;
  std::optional<int> prefix;
  if (auto slash = cidr.find('/'); slash != std::string_view::npos) {
    host = cidr.substr(0, slash);
    std::string_view p = cidr.substr(slash + 1);
    int v = -1;
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (ec != std::errc() || end != p.data() + p.size()) return bad("prefix is not a number");
    prefix = v;
  }
  auto addr = ParseAddress(host);
  if (!addr) return bad("not an IPv4 or IPv6 address");
  const int max = addr->v6 ? 128 : 32;
  r.v6 = addr->v6;
  r.prefix = prefix.value_or(max);
  if (r.prefix < 0 || r.prefix > max) return bad("prefix out of range");
  r.addr = addr->bytes;
  // Clear the host bits, so that 10.1.2.3/8 means 10.0.0.0/8.
  for (int bit = r.prefix; bit < max; bit++)
    r.addr[static_cast<size_t>(bit / 8)] &= static_cast<uint8_t>(~(0x80 >> (bit % 8)));
  return r;
}

const AllowRule* AllowList::Best(std::string_view peer) const {
  auto addr = ParseAddress(HostOf(peer));
  if (!addr) return nullptr;
  const AllowRule* best = nullptr;
  for (const auto& r : rules_) {
    if (r.v6 != addr->v6 || !PrefixMatches(r.addr, addr->bytes, r.prefix)) continue;
    if (!best || r.prefix > best->prefix ||
        (r.prefix == best->prefix && r.access == Access::kReadWrite))
      best = &r;
  }
  return best;
}

std::optional<Access> AllowList::Match(std::string_view peer) const {
  const AllowRule* r = Best(peer);
  if (!r) return std::nullopt;
  return r->access;
}

std::string AllowList::RuleFor(std::string_view peer) const {
  const AllowRule* r = Best(peer);
  return r ? r->text : std::string();
}

}  // namespace pohmelfs::server
