// Connections over libfabric's reliable datagram endpoints (FI_EP_RDM: tcp;ofi_rxm, shm, and
// the RDM-only providers of other fabrics). An RDM endpoint has no connections: it reaches every
// peer in its address vector. POHMELFS emulates them on tagged messages:
//
//   - Each side of a connection picks a random 62-bit id. Frames sent to a connection are tagged
//     with its id (fi_tsend / fi_trecv), so each connection's framed stream lands in its own
//     pre-posted receive buffers with its own credits, exactly as on a MSG endpoint
//     (framed_connection.h).
//   - Control messages (RdmControl) are tagged with bit 63 plus the receiver's id, 0 being a
//     listener's. Connect: the client sends CONNECT {its id, its address} to the listener; the
//     server adds the address to its address vector, makes the connection, and answers ACCEPT
//     {its id}. Close: CLOSE to the peer's id.
//   - A peer that dies is noticed when an operation towards it fails (the connection then
//     closes), or when it has sent nothing, not even the keepalive every connection sends each
//     kKeepalive, for kPeerTimeout.
//
// A listener's endpoint is shared by every connection it accepted, and the client connections
// of a transport share one endpoint per domain; endpoints live until the transport shuts down
// (the provider does not take an endpoint closed while its completion queue is progressed).
// Ids are random so that a peer cannot guess another connection's tag.
//
// Thread-safety: RdmEndpoint's methods may be called from any thread; control messages are
// handled on the domain's progress thread.
#pragma once

#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "transport/framed/framed_connection.h"
#include "transport/ofi/ofi_domain.h"

namespace pohmelfs::transport::ofi {

// One control message on the wire (little-endian integers).
struct RdmControl {
  static constexpr uint32_t kMagic = 0x504d5244;  // "DRMP"
  static constexpr size_t kMaxName = 128;
  enum Kind : uint16_t { kConnect = 1, kAccept = 2, kClose = 3, kKeepalive = 4 };
  uint32_t magic = kMagic;
  uint16_t kind = 0;
  uint16_t name_len = 0;  // kConnect: bytes of name
  uint64_t sender_id = 0;
  uint8_t name[kMaxName] = {};  // kConnect: the sender's endpoint address
};

class RdmEndpoint : public std::enable_shared_from_this<RdmEndpoint> {
 public:
  static constexpr uint64_t kControlBit = 1ull << 63;

  // Opens an RDM endpoint and its address vector on domain, bound to info's source address
  // (a listener) or to one the provider picks.
  // REQUIRES: not on the domain's progress thread (the endpoint is enabled there).
  static Result<std::shared_ptr<RdmEndpoint>> Open(std::shared_ptr<OfiDomain> domain,
                                                   const fi_info* info);
  ~RdmEndpoint();
  RdmEndpoint(const RdmEndpoint&) = delete;
  RdmEndpoint& operator=(const RdmEndpoint&) = delete;

  fid_ep* ep() const { return ep_; }
  const std::shared_ptr<OfiDomain>& domain() const { return domain_; }
  // This endpoint's address, as the provider gives it (fi_getname).
  const std::vector<uint8_t>& name() const { return name_; }
  // "ofi+PROVIDER://..." for this endpoint's address.
  std::string Uri() const;

  Result<fi_addr_t> Insert(const void* addr);
  void Remove(fi_addr_t addr);

  // Control messages for id go to handler (on the progress thread) until Unlisten.
  using ControlHandler = std::function<void(const RdmControl&)>;
  Status Listen(uint64_t id, ControlHandler handler);
  void Unlisten(uint64_t id);
  // Sends m to the peer's id; `failed` (may be empty) runs if it cannot be delivered.
  Status SendControl(fi_addr_t to, uint64_t to_id, const RdmControl& m,
                     std::function<void(const Status&)> failed = {});

  // A new random connection id (never 0, bit 63 clear).
  static uint64_t NewId();

 private:
  struct ControlOp;
  // What the endpoint and its posted control operations share: an operation outlives the
  // endpoint when its completion comes late, and then only frees itself.
  struct Core {
    std::mutex mu;
    bool alive = true;                         // GUARDED_BY(mu)
    std::map<uint64_t, ControlOp*> listening;  // GUARDED_BY(mu): posted receive by id
    std::set<ControlOp*> posted;               // GUARDED_BY(mu): held by the provider
  };
  explicit RdmEndpoint(std::shared_ptr<OfiDomain> domain) : domain_(std::move(domain)) {}
  static void OnControlDone(TransferOp* op, size_t len, const Status& st);
  // Posts a control send, again from the progress thread while the provider says EAGAIN (it
  // may be connecting to the peer), until deadline. The retries back off from 1 ms to 64 ms:
  // towards a dead peer every try is a refused connect, which must not spin.
  void TrySend(const std::shared_ptr<std::unique_ptr<ControlOp>>& holder, fi_addr_t to,
               uint64_t to_id, std::chrono::steady_clock::time_point deadline,
               std::chrono::milliseconds backoff = std::chrono::milliseconds(1));
  static constexpr auto kSendBound = std::chrono::seconds(10);
  // A control operation of this endpoint (its buffer registered where the provider wants).
  Result<std::unique_ptr<ControlOp>> NewOp(bool recv);

  const std::shared_ptr<OfiDomain> domain_;
  const std::shared_ptr<Core> core_ = std::make_shared<Core>();
  fid_ep* ep_ = nullptr;
  fid_av* av_ = nullptr;
  std::vector<uint8_t> name_;
};

class RdmConnection final : public FramedConnection {
 public:
  // How often a connection tells its peer it is alive, and how long a silent peer is given.
  static constexpr auto kKeepalive = std::chrono::seconds(2);
  static constexpr auto kPeerTimeout = std::chrono::seconds(10);

  // peer_id: the peer's connection id, or 0 until its ACCEPT (a client).
  RdmConnection(std::shared_ptr<RdmEndpoint> ep, fi_addr_t peer_addr, uint64_t peer_id,
                std::string peer, Handler handler, uint32_t max_payload, bool accepted);
  ~RdmConnection() override;

  // Registers the buffers, posts the receives and listens for control messages.
  Status Setup();
  uint64_t id() const { return id_; }
  fi_addr_t peer_addr() const { return peer_addr_; }

  // Keepalive tick (any thread, about once a second): sends one every kKeepalive, and closes
  // the connection if the peer has been silent for kPeerTimeout. False once closed.
  bool Tick();

  Result<MemoryRegionPtr> Register(void* addr, size_t len) override {
    return ep_->domain()->Register(addr, len);
  }

 private:
  void OnControl(const RdmControl& m);
  Status PostRecv(TransferOp* op, void* buf, size_t len) override;
  int PostSend(TransferOp* op, const void* buf, size_t len) override;
  int PostRma(TransferOp* op) override;
  size_t MaxRma() const override { return ep_->domain()->max_msg_size(); }
  bool Owns(const MemoryRegion& region) const override;
  void BeginClose() override;
  void EndClose() override;
  bool FramesMayArriveOutOfOrder() const override { return true; }
  // The endpoint is shared: what is posted stays posted after the close, until it completes.
  bool MayFreeWithOperationsPosted() const override { return false; }
  void OnFrameReceived() override { last_heard_ns_ = Now(); }
  static int64_t Now();

  const std::shared_ptr<RdmEndpoint> ep_;
  const fi_addr_t peer_addr_;
  const uint64_t id_;
  std::atomic<uint64_t> peer_id_;
  fid_mr* bufs_mr_ = nullptr;
  void* bufs_desc_ = nullptr;
  std::vector<TransferOp*> recv_ops_;     // every receive op posted (for cancelling at close)
  std::atomic<int64_t> last_heard_ns_;    // when the peer's last frame or control message came
  std::atomic<bool> peer_closed_{false};  // the peer sent CLOSE: no CLOSE back
  int64_t last_sent_ns_ = 0;              // Tick only
};

}  // namespace pohmelfs::transport::ofi
