// libfabric backend (ofi+PROVIDER://host:port): connected MSG endpoints of the provider (tcp and
// sockets here; verbs on InfiniBand and RoCE), messages framed into pre-posted receive buffers
// with credits, and RMA (fi_write / fi_read) on registered memory.
#pragma once

#include <memory>
#include <string>

#include "transport/transport.h"

namespace pohmelfs::transport {

// provider: libfabric's name for it ("tcp", "sockets", "verbs"). Fails with ENOTSUP when the
// provider is not there or has no connected endpoints with RMA.
Result<std::unique_ptr<Transport>> CreateOfiTransport(const std::string& provider,
                                                      const TransportOptions& options);

}  // namespace pohmelfs::transport
