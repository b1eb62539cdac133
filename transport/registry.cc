// Backends by URI scheme.
#include "transport/ofi/ofi_transport.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/transport.h"
#include "transport/verbs/verbs_transport.h"

namespace pohmelfs::transport {

Result<std::unique_ptr<Transport>> CreateTransport(const std::string& scheme,
                                                   const TransportOptions& options) {
  if (scheme == "tcp") return CreateTcpTransport(options);
  if (scheme.starts_with("ofi+") && scheme.size() > 4)
    return CreateOfiTransport(scheme.substr(4), options);
  if (scheme == "verbs") return CreateVerbsTransport(options);
  return Status::Error(
      ENOTSUP, "transport '" + scheme + "' is not available (known: tcp, ofi+PROVIDER, verbs)");
}

}  // namespace pohmelfs::transport
