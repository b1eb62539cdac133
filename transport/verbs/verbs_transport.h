// Verbs backend (verbs://host:port): rdma-core's libibverbs and librdmacm. RC queue pairs made
// by the RDMA connection manager; messages as SEND/RECV into pre-posted receive buffers with
// credits; RMA as RDMA WRITE and RDMA READ; completion queues polled by a progress thread that
// sleeps on a completion channel when idle.
#pragma once

#include <memory>

#include "transport/transport.h"

namespace pohmelfs::transport {

// Fails with ENOTSUP when the host has no RDMA device.
Result<std::unique_ptr<Transport>> CreateVerbsTransport(const TransportOptions& options);

}  // namespace pohmelfs::transport
