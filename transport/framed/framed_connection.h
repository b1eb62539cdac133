// A connection of a message-and-RMA backend (ofi, verbs) carrying pohmelfs messages.
//
// Messages are a byte stream cut into frames of at most kFrameBytes, sent from registered
// buffers into receive buffers the peer posted in advance (small messages sent together share
// a frame). Each frame starts with an 8-byte frame header giving back receive credits: a side
// may have at most kRecvDepth frames outstanding at its peer, keeps the last credit for a
// credit-only frame, and a receiver that stops reposting (paused, or a peer that does not read
// its replies) stops its peer. The header also numbers the frame, so that frames that complete
// out of order (reliable datagram endpoints) are put back in order. Messages are reassembled
// from the stream as on TCP. RMA
// operations wait in a queue while the backend's send queue is full.
//
// A backend supplies the posting of receives, sends and RMA, the close, and registration; it
// reports every completion to Complete on its progress thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "transport/framed/progress_engine.h"
#include "transport/transport.h"

namespace pohmelfs::transport {

class FramedConnection;

// One posted operation. The first member is scratch space a backend may hand to its library
// (libfabric's FI_CONTEXT2 mode writes an fi_context2, eight pointers, there).
struct TransferOp {
  void* scratch[8] = {};
  enum class Kind : uint8_t { kRecv, kSend, kWrite, kRead } kind = Kind::kRecv;
  FramedConnection* conn = nullptr;
  uint32_t slot = 0;  // kRecv, kSend: the frame buffer
  // kWrite, kRead
  void* buf = nullptr;
  size_t len = 0;
  RemoteBuffer remote;
  MemoryRegionPtr local;  // stays registered until the completion
  RmaDone done;
  bool before_next_send = false;  // kWrite: done may run once later sends are ordered after it
  // An operation of the backend's own (not a connection's): its completion goes here instead of
  // to conn.
  void (*on_done)(TransferOp* op, size_t len, const Status& st) = nullptr;
};

class FramedConnection : public Connection,
                         public Rma,
                         public std::enable_shared_from_this<FramedConnection> {
 public:
  static constexpr size_t kFrameBytes = 64 * 1024;
  static constexpr uint32_t kRecvDepth = 32;
  static constexpr uint32_t kSendSlots = 32;
  static constexpr size_t kBufferBytes = (kRecvDepth + kSendSlots) * kFrameBytes;

  ~FramedConnection() override = default;

  // Connection
  Status Send(const proto::Header& hdr, std::span<const iovec> payload) final;
  void PauseReceive() final;
  void ResumeReceive() final;
  void Close(const Status& why) final;
  bool IsOpen() const final { return !closed_.load(); }
  const std::string& Peer() const final { return peer_; }
  void SetMaxPayload(uint32_t bytes) final { max_payload_ = bytes; }
  Rma* rma() final { return this; }

  // Rma (Register is the backend's)
  Status Write(const MemoryRegionPtr& local, const void* src, size_t len, RemoteBuffer remote,
               RmaDone done) final;
  Status Read(const MemoryRegionPtr& local, void* dst, size_t len, RemoteBuffer remote,
              RmaDone done) final;
  Status WriteBeforeNextSend(const MemoryRegionPtr& local, const void* src, size_t len,
                             RemoteBuffer remote, RmaDone done) final;

  // The connection is up (any thread): delivery may start.
  void OnEstablished();
  // Client side: waits (bounded) for OnEstablished or a close.
  Status WaitEstablished(std::chrono::milliseconds timeout);

  // Progress thread: one completion of op (len: bytes received for kRecv).
  void Complete(TransferOp* op, size_t len, const Status& st);
  // Progress thread: pushes queued frames and RMA after the backend's queue had been full.
  void Pump();
  // Operations posted and not yet completed (the engine frees a retired connection at 0).
  int outstanding() const { return outstanding_.load(); }
  // Whether this object may be freed with operations still posted once the retire bound has
  // passed: true when EndClose closed an endpoint of its own (nothing more will complete),
  // false on an endpoint shared with other connections (it is then kept until they complete,
  // or until the engine stops).
  virtual bool MayFreeWithOperationsPosted() const { return true; }

 protected:
  FramedConnection(ProgressEngine* engine, std::string peer, Handler handler, uint32_t max_payload,
                   bool accepted);

  bool accepted() const { return accepted_; }
  // The frame buffers, kBufferBytes, for the backend to register before PostInitialReceives.
  uint8_t* buffers() { return bufs_.data(); }
  // Posts every receive buffer (before connect or accept).
  Status PostInitialReceives();

  // Orders what this thread did before (writing an op, reading it) before the progress
  // thread's handling of its completion (ProgressEngine::Publish). PostRma calls it after its
  // last access to the op, just before posting; sends and receives are published for them.
  void PublishOp() { engine_->Publish(); }

  // Backend hooks, called with the connection's lock held and never once it is closed:
  virtual Status PostRecv(TransferOp* op, void* buf, size_t len) = 0;
  // 0, EAGAIN (the queue is full: Pump is asked for) or an errno.
  virtual int PostSend(TransferOp* op, const void* buf, size_t len) = 0;
  virtual int PostRma(TransferOp* op) = 0;
  // Largest single RMA.
  virtual size_t MaxRma() const = 0;
  // Whether region came from this connection's Register (so the backend can use it).
  virtual bool Owns(const MemoryRegion& region) const = 0;
  // Starts closing: tell the peer, make the backend flush what is posted (lock held).
  virtual void BeginClose() = 0;
  // Progress thread, after the layer above was told: release what the endpoint holds that can
  // go now (the rest goes in the destructor, once every completion is in).
  virtual void EndClose() = 0;
  // Whether frames may complete out of the order they were sent (reliable datagram endpoints):
  // their sequence numbers are then checked and used to put them back in order. Connected
  // endpoints deliver in order (and peers from before the numbering send 0 there).
  virtual bool FramesMayArriveOutOfOrder() const { return false; }
  // Progress thread: a frame from the peer arrived (liveness).
  virtual void OnFrameReceived() {}

 private:
  struct FrameHeader {
    uint32_t credits;  // receive buffers the sender reposted since its last frame
    uint32_t seq;      // the frame's number on this connection (from 0, wrapping)
  };
  static constexpr size_t kBodyBytes = kFrameBytes - sizeof(FrameHeader);

  uint8_t* RecvBuf(uint32_t slot) { return bufs_.data() + slot * kFrameBytes; }
  uint8_t* SendBuf(uint32_t slot) { return bufs_.data() + (kRecvDepth + slot) * kFrameBytes; }
  // REQUIRES: mu_ held.
  Status RepostLocked(uint32_t slot);
  void PumpLocked();
  void PumpRmaLocked();
  bool SendFrameLocked(bool credit_only);
  bool RestartLocked();  // reposts held buffers once delivery may go on; returns whether it may
  void CloseLocked(const Status& why);
  bool Stopped() const { return paused_ || send_full_ || !established_; }
  Status QueueRma(std::unique_ptr<TransferOp> op);
  Status QueueRma(TransferOp::Kind kind, const MemoryRegionPtr& local, void* buf, size_t len,
                  RemoteBuffer remote, RmaDone done, bool before_next_send);
  // Progress thread.
  void OnRecv(uint32_t slot, size_t len, const Status& st);
  void OnSendDone(uint32_t slot, const Status& st);
  void OnRmaDone(TransferOp* op, const Status& st);
  void Deliver();
  void Finish(const Status& why);

  ProgressEngine* const engine_;
  const std::string peer_;
  Handler handler_;  // progress thread only (the CM thread only before delivery starts)
  const bool accepted_;
  std::atomic<uint32_t> max_payload_;

  std::vector<uint8_t> bufs_;  // kRecvDepth receive then kSendSlots send frames
  std::vector<TransferOp> recv_ops_, send_ops_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> closed_{false};
  bool established_locked_ = false;  // GUARDED_BY(mu_)
  Status close_reason_;              // GUARDED_BY(mu_)
  std::vector<uint8_t> out_;         // GUARDED_BY(mu_): message bytes not yet in a frame,
  size_t out_start_ = 0;             // GUARDED_BY(mu_)  from here
  std::vector<uint32_t> free_send_;  // GUARDED_BY(mu_)
  uint32_t credits_ = kRecvDepth;    // GUARDED_BY(mu_): frames the peer can take now
  uint32_t owed_ = 0;                // GUARDED_BY(mu_): reposted, not yet told to the peer
  uint32_t send_seq_ = 0;            // GUARDED_BY(mu_): the next frame's number
  std::vector<uint32_t> held_;       // GUARDED_BY(mu_): received, not reposted (stopped)
  std::deque<std::unique_ptr<TransferOp>> rma_queue_;  // GUARDED_BY(mu_)
  std::atomic<bool> paused_{false}, send_full_{false}, established_{false};
  std::atomic<int> outstanding_{0};

  // Progress thread only.
  std::vector<uint8_t> stream_;
  size_t stream_start_ = 0;
  uint32_t recv_seq_ = 0;  // the next frame's number to add to stream_
  std::map<uint32_t, std::pair<uint32_t, size_t>> early_;  // frames ahead of it: slot, length
  bool finished_ = false;
};

}  // namespace pohmelfs::transport
