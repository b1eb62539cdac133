// Bulk data by RMA (DESIGN.md item 5) for requests that go to servers on RMA-capable
// connections (FEAT_RMA): a WRITE, or a BATCH holding WRITEs, has its data copied once into
// registered staging buffers, and each replica gets the request rewritten with WRITE_RMA
// commands that name those buffers with the keys of its own connection; every replica then
// pulls the same bytes with an RDMA READ, so N replicas cost one copy on the client. A READ
// becomes a READ_RMA: the server RDMA-writes the data into a staging buffer.
//
// Small transfers stay in the message (a round trip for the RMA costs more than the copy).
//
// On a protected channel the staged bytes are sealed (crypto/rma_seal.h): encrypted in place
// with a fresh key per buffer that travels, with the tags, in each replica's sealed request;
// read data comes back sealed and is checked before it is used.
#pragma once

#include <sys/uio.h>

#include <memory>
#include <span>
#include <vector>

#include "client/rpc_client.h"
#include "crypto/crypto_pool.h"
#include "transport/rma_pool.h"
#include "transport/transport.h"

namespace pohmelfs::client {

// Smallest WRITE or READ that moves by RMA.
constexpr size_t kRmaMinBytes = 32 * 1024;

class RmaWritePlan {
 public:
  // Stages the data of every WRITE of at least kRmaMinBytes in the request, sealed in
  // seal_mode unless it is none. The plan is empty (send the request as it is) when there is
  // none, or not enough buffers are free at once, or sealing fails.
  static RmaWritePlan Prepare(uint16_t opcode, std::span<const iovec> payload,
                              transport::RmaPool& pool, uint32_t seal_mode = POHMELFS_CRYPTO_NONE,
                              crypto::CryptoPool* crypto_pool = nullptr);
  bool empty() const { return staged_.empty(); }
  // Data bytes staged (moved by RMA for each replica that takes the rewritten request).
  size_t staged_bytes() const;

  // The request for one connection: WRITE_RMA commands naming the staged buffers with conn's
  // keys. The bytes live in the plan until it is destroyed. On failure (a registration), send
  // the original request instead.
  struct Request {
    uint16_t opcode;
    std::span<const iovec> payload;
  };
  Result<Request> For(transport::Connection& conn);
  // A replica's call failed: its server may still read the buffers, so they stay out of use
  // for a while.
  void HoldAfterFailure();

 private:
  struct Staged {
    size_t cmd_index;  // the command within a BATCH (0 for a lone WRITE)
    pohmelfs_write_req req;
    transport::RmaPool::LeasePtr lease;
    std::vector<uint8_t> seal;  // pohmelfs_rma_seal and tags; empty when not sealed
  };
  uint16_t opcode_ = 0;
  std::span<const iovec> original_;
  std::vector<Staged> staged_;
  std::vector<std::unique_ptr<std::vector<uint8_t>>> built_;  // one per For call
  std::vector<std::unique_ptr<iovec>> iovs_;
};

// READ as READ_RMA on rpc when it has RMA and the read is large enough: fills reply with what
// a READ returns (the data as payload). Returns false when the plain READ should be sent. On
// a protected channel the data must come sealed, and is checked.
bool ReadByRma(RpcClient& rpc, const pohmelfs_read_req& q, transport::RmaPool& pool,
               const CallOptions& co, Result<RpcReply>* reply);

}  // namespace pohmelfs::client
