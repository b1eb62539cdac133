// TCP backend: non-blocking sockets on epoll event loops, scatter-gather sends straight from
// the caller's buffers when the socket takes them, and coalescing of queued messages so that a
// backlog of small messages leaves in one syscall.
#pragma once

#include <memory>

#include "transport/transport.h"

namespace pohmelfs::transport {

std::unique_ptr<Transport> CreateTcpTransport(const TransportOptions& options);

}  // namespace pohmelfs::transport
