// Backends by URI scheme. Later backends (ofi+*, verbs) add a branch here, compiled in when
// their library was found.
#include "transport/tcp/tcp_transport.h"
#include "transport/transport.h"

namespace pohmelfs::transport {

Result<std::unique_ptr<Transport>> CreateTransport(const std::string& scheme,
                                                   const TransportOptions& options) {
  if (scheme == "tcp") return CreateTcpTransport(options);
  return Status::Error(ENOTSUP, "transport '" + scheme + "' is not available (known: tcp)");
}

}  // namespace pohmelfs::transport
