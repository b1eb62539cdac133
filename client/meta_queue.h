// Namespace changes made under a directory's write lease, applied locally by the caller and
// sent later, many commands to a BATCH transaction (POHMELFS's metadata write-back;
// docs/coherence.md).
//
// MetaQueue is also the Caller every other request goes through: a request is sent only after
// everything queued before it (Drain), so the servers see changes in the order the
// application made them. A background flusher sends the queue once it holds `batch` commands
// or its oldest command is `delay` old.
//
// A queued create that is cancelled before it is sent (its file was removed again) costs no
// network traffic at all. A queued command that fails on the server was already reported as
// done to the application: the object is marked failed (Failed) and the error logged.
//
// Thread-safety: all public methods are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "client/caller.h"

namespace pohmelfs::client {

class MetaQueue : public Caller {
 public:
  struct Options {
    size_t batch = POHMELFS_BATCH_MAX;
    std::chrono::milliseconds delay{5};
    // Past this, queueing sends first (about 150 bytes each: 64 Ki commands are ~10 MiB).
    size_t max_queued = 65536;
  };
  struct Counters {
    std::atomic<uint64_t> queued{0}, cancelled{0}, sent{0}, transactions{0}, failed{0};
  };

  MetaQueue(std::shared_ptr<Caller> inner, Options o);
  ~MetaQueue() override;
  // Stops the background flusher; what is still queued stays until Drain.
  void Stop();

  // Every other request: after what is queued.
  Result<RpcReply> Call(uint16_t opcode, std::span<const iovec> payload) override;
  proto::Oid root() override { return inner_->root(); }

  // Queues one command (body = the request struct and its tail) that changes `oid`; `creates`
  // says the command creates it.
  void Queue(uint16_t opcode, const proto::Oid& oid, bool creates, std::vector<uint8_t> body);
  // Drops every queued command of oid if its create is still queued; true when it was (the
  // object never reached a server).
  bool Cancel(const proto::Oid& oid);
  // A handle of oid opened through the queue is closed again before the open was sent: the
  // open is taken back (the create's CREATE_OPEN flag or a queued OPEN) instead of queueing a
  // RELEASE. False when it was sent already, or when a removal queued after it needs the
  // handle to keep the object alive.
  bool TakeBackOpen(const proto::Oid& oid);
  // Created here and not sent yet.
  bool Pending(const proto::Oid& oid);
  // Sends everything queued; returns the first failure of this drain.
  Status Drain();
  // The error a queued command of oid met on the server, if any (kept).
  Status Failed(const proto::Oid& oid);
  const Counters& counters() const { return counters_; }

 private:
  struct Cmd {
    uint16_t opcode;
    proto::Oid oid;
    bool creates;
    std::vector<uint8_t> body;
  };
  // Sends cmds in BATCH transactions. REQUIRES: send_mu_ held.
  Status Send(std::deque<Cmd>& cmds);
  void FlusherLoop();

  const std::shared_ptr<Caller> inner_;
  const Options opts_;
  Counters counters_;
  std::mutex send_mu_;  // one sender at a time, in queue order
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Cmd> queue_;                                          // GUARDED_BY(mu_)
  std::unordered_set<proto::Oid, proto::OidHash> pending_;         // GUARDED_BY(mu_)
  std::unordered_map<proto::Oid, Status, proto::OidHash> failed_;  // GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point oldest_;                   // GUARDED_BY(mu_)
  bool stopping_ = false;                                          // GUARDED_BY(mu_)
  std::thread flusher_;
};

}  // namespace pohmelfs::client
