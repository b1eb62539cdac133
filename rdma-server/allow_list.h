// The export's allow list: which client networks may connect, and whether they may change the
// export. Rules are CIDR=ro or CIDR=rw (IPv4 or IPv6); a peer takes the most specific rule that
// contains its address (the longest prefix; rw over ro on a tie), and a peer no rule contains
// is refused. IPv4 peers that reach an IPv6 socket (::ffff:a.b.c.d) match IPv4 rules; peers on
// shared memory (ofi+shm, this node only) match as 127.0.0.1.
//
// Thread-safety: immutable after parsing; Match is const.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/status.h"

namespace pohmelfs::server {

enum class Access { kReadOnly, kReadWrite };

struct AllowRule {
  bool v6 = false;
  std::array<uint8_t, 16> addr{};  // network address, host bits cleared (v4: first 4 bytes)
  int prefix = 0;
  Access access = Access::kReadOnly;
  std::string text;  // as given, for logs

  // "10.0.0.0/8=rw", "fd00::/64=ro", "192.168.1.7=ro" (a single host).
  static Result<AllowRule> Parse(std::string_view text);
};

class AllowList {
 public:
  AllowList() = default;
  explicit AllowList(std::vector<AllowRule> rules) : rules_(std::move(rules)) {}

  // The access of a peer given as a host address ("10.1.2.3", "::1") or a peer URI
  // ("tcp://10.1.2.3:4000", "ofi+tcp://[fd00::1]:7000"); nullopt: refused (no rule, or an
  // address that does not parse).
  std::optional<Access> Match(std::string_view peer) const;
  // The rule that decided Match, for logs ("" when refused).
  std::string RuleFor(std::string_view peer) const;
  bool empty() const { return rules_.empty(); }

 private:
  const AllowRule* Best(std::string_view peer) const;
  std::vector<AllowRule> rules_;
};

}  // namespace pohmelfs::server
