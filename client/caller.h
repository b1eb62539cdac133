// Something that carries one request to the servers and brings back one reply: a single
// server's RpcClient, or a ServerSet that replicates and balances over several.
#pragma once

#include <sys/uio.h>

#include <span>

#include "client/rpc_client.h"

namespace pohmelfs::client {

class Caller {
 public:
  virtual ~Caller() = default;
  // A server-side error arrives as RpcReply::status; a failed Status means no server answered.
  virtual Result<RpcReply> Call(uint16_t opcode, std::span<const iovec> payload) = 0;
  virtual proto::Oid root() = 0;
};

// One server, as it is: used to talk to a single replica (resync, tests).
class SingleServer : public Caller {
 public:
  explicit SingleServer(std::shared_ptr<RpcClient> rpc, CallOptions co = {})
      : rpc_(std::move(rpc)), co_(co) {}
  Result<RpcReply> Call(uint16_t opcode, std::span<const iovec> payload) override {
    auto t = rpc_->Begin(opcode, payload, co_);
    return rpc_->Wait(*t);
  }
  proto::Oid root() override { return rpc_->root(); }

 private:
  std::shared_ptr<RpcClient> rpc_;
  CallOptions co_;
};

}  // namespace pohmelfs::client
