// One connected libfabric MSG endpoint carrying pohmelfs messages, and RMA on it.
//
// Messages are a byte stream cut into frames of at most kFrameBytes, sent from registered
// buffers into receive buffers the peer posted in advance (small messages sent together share
// a frame). Each frame starts with an 8-byte frame header giving back receive credits: a side
// may have at most kRecvDepth frames outstanding at its peer, keeps the last credit for a
// credit-only frame, and a receiver that stops reposting (paused, or a peer that does not read
// its replies) stops its peer. Messages are reassembled from the stream as on TCP.
#pragma once

#include <rdma/fi_endpoint.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport/ofi/ofi_domain.h"
#include "transport/transport.h"

namespace pohmelfs::transport::ofi {

class OfiConnection final : public Connection,
                            public Rma,
                            public std::enable_shared_from_this<OfiConnection> {
 public:
  static constexpr size_t kFrameBytes = 64 * 1024;
  static constexpr uint32_t kRecvDepth = 32;
  static constexpr uint32_t kSendSlots = 32;

  // ep is owned from here on (closed by Finish).
  OfiConnection(std::shared_ptr<OfiDomain> domain, fid_ep* ep, std::string peer, Handler handler,
                uint32_t max_payload, bool accepted);
  ~OfiConnection() override;

  // Binds the endpoint, registers the buffers and posts the receives (before connect/accept).
  Status Setup();
  // CM thread: the connection is up; delivery may start.
  void OnConnected();
  // Client side: waits (bounded) for OnConnected or a CM error.
  Status WaitConnected(std::chrono::milliseconds timeout);
  fid_ep* ep() const { return ep_; }

  // Connection
  Status Send(const proto::Header& hdr, std::span<const iovec> payload) override;
  void PauseReceive() override;
  void ResumeReceive() override;
  void Close(const Status& why) override;
  bool IsOpen() const override { return !closed_.load(); }
  const std::string& Peer() const override { return peer_; }
  void SetMaxPayload(uint32_t bytes) override { max_payload_ = bytes; }
  Rma* rma() override { return this; }

  // Rma
  Result<MemoryRegionPtr> Register(void* addr, size_t len) override;
  Status Write(const MemoryRegionPtr& local, const void* src, size_t len, RemoteBuffer remote,
               RmaDone done) override;
  Status Read(const MemoryRegionPtr& local, void* dst, size_t len, RemoteBuffer remote,
              RmaDone done) override;

  // Progress thread.
  void OnRecv(uint32_t slot, size_t len, const Status& st);
  void OnSendDone(uint32_t slot, const Status& st);
  void OnRmaDone() { outstanding_--; }
  void Pump();
  // Operations posted and not yet completed (the domain frees a retired connection at 0).
  int outstanding() const { return outstanding_.load(); }

 private:
  struct FrameHeader {
    uint32_t credits;  // receive buffers the sender reposted since its last frame
    uint32_t reserved;
  };
  static constexpr size_t kBodyBytes = kFrameBytes - sizeof(FrameHeader);

  uint8_t* RecvBuf(uint32_t slot) { return bufs_.data() + slot * kFrameBytes; }
  uint8_t* SendBuf(uint32_t slot) { return bufs_.data() + (kRecvDepth + slot) * kFrameBytes; }
  // REQUIRES: mu_ held.
  Status PostRecvLocked(uint32_t slot);
  void PumpLocked();
  // Reposts held receive buffers once delivery may go on. Returns whether it may.
  bool RestartLocked();
  bool SendFrameLocked(bool credit_only);
  void CloseLocked(const Status& why);
  bool Stopped() const { return paused_ || send_full_ || !established_; }
  // Progress thread: hands every whole message in the stream to the layer above.
  void Deliver();
  void Finish(const Status& why);
  Status PostRma(std::unique_ptr<OfiOp> op, bool write, void* buf, size_t len, void* desc,
                 RemoteBuffer remote);

  const std::shared_ptr<OfiDomain> domain_;
  fid_ep* ep_;
  const std::string peer_;
  Handler handler_;  // progress thread only (and the CM thread before delivery starts)
  const bool accepted_;
  std::atomic<uint32_t> max_payload_;

  std::vector<uint8_t> bufs_;  // kRecvDepth receive then kSendSlots send frames
  fid_mr* bufs_mr_ = nullptr;
  void* bufs_desc_ = nullptr;
  std::vector<OfiOp> recv_ops_, send_ops_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> closed_{false};
  bool connected_ = false;           // GUARDED_BY(mu_)
  Status connect_error_;             // GUARDED_BY(mu_)
  Status close_reason_;              // GUARDED_BY(mu_)
  std::vector<uint8_t> out_;         // GUARDED_BY(mu_): message bytes not yet in a frame, from
  size_t out_start_ = 0;             // GUARDED_BY(mu_)
  std::vector<uint32_t> free_send_;  // GUARDED_BY(mu_)
  uint32_t credits_ = kRecvDepth;    // GUARDED_BY(mu_): frames the peer can take now
  uint32_t owed_ = 0;                // GUARDED_BY(mu_): reposted, not yet told to the peer
  std::vector<uint32_t> held_;       // GUARDED_BY(mu_): received, not reposted (stopped)
  std::deque<std::unique_ptr<OfiOp>> rma_queue_;  // GUARDED_BY(mu_): waiting for the provider
  struct RmaArgs {
    bool write;
    void* buf;
    size_t len;
    void* desc;
    RemoteBuffer remote;
  };
  std::deque<RmaArgs> rma_args_;  // GUARDED_BY(mu_), parallel to rma_queue_
  std::atomic<bool> paused_{false}, send_full_{false}, established_{false};
  std::atomic<int> outstanding_{0};

  // Progress thread only.
  std::vector<uint8_t> stream_;
  size_t stream_start_ = 0;
  bool finished_ = false;
};

}  // namespace pohmelfs::transport::ofi
