// One server of a mount's working set, as written on the command line, in a cluster file or in
// a pohmelfsctl command:
//
//   URI[?prio=N][&perm=r|w|rw]      e.g. tcp://n1:7000?prio=10&perm=rw
//
// prio: higher is preferred for reads (default 0); servers of equal priority share reads in
// turn. perm: r (serves reads), w (receives every write), rw (default).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "proto/status.h"

namespace pohmelfs::client {

struct ReplicaSpec {
  std::string uri;  // without the ?options
  int priority = 0;
  bool read = true;
  bool write = true;

  std::string PermString() const;
  std::string ToString() const;  // the spec in the syntax above
};

Result<ReplicaSpec> ParseReplicaSpec(std::string_view text);
// "SPEC,SPEC,...": the mount's source argument.
Result<std::vector<ReplicaSpec>> ParseServerList(std::string_view text);
// A cluster file: one SPEC per line, or "URI prio=N perm=rw" with spaces; '#' starts a comment.
Result<std::vector<ReplicaSpec>> LoadClusterFile(const std::string& path);

}  // namespace pohmelfs::client
