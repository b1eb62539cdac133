// pohmelfs-server: accepts connections on every listen URI, runs the handshake, and executes
// requests on a worker pool against one export.
// Thread-safety: Start and Stop from one thread; the rest is internal.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "rdma-server/export_store.h"
#include "rdma-server/lease_table.h"
#include "rdma-server/lock_table.h"
#include "rdma-server/session_table.h"
#include "rdma-server/work_queue.h"
#include "transport/transport.h"

namespace pohmelfs::server {

struct ServerOptions {
  std::string export_dir;
  std::vector<std::string> listen;  // URIs
  int workers = 8;                  // threads doing file IO
  int loop_threads = 2;             // transport event loops
  // Most time a network thread keeps polling after its last event before it sleeps (adaptive
  // below that); an idle server sleeps. 0: never poll.
  std::chrono::microseconds spin{50};
  // Requests a client may have in flight; past this the server stops reading from it.
  uint32_t credits = 256;
  std::chrono::seconds session_timeout{120};
  // For tests only: the first N mutating requests are executed and recorded as usual, but
  // their replies are not sent, so that clients must resend them.
  uint32_t test_drop_replies = 0;
  // Coherence (docs/coherence.md): how long a lease holder has to give a lease back before it
  // is evicted, the grace period for reclaims after an authority change, and how long one
  // blocking lock request waits on the server before the client asks again.
  std::chrono::milliseconds lease_break_timeout{5000};
  std::chrono::milliseconds lease_grace{5000};
  std::chrono::milliseconds lock_wait{1000};
};

class Server {
 public:
  static Result<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();
  // Addresses actually bound (real ports when 0 was asked for).
  const std::vector<transport::Uri>& bound() const { return bound_; }
  const Oid& server_id() const { return store_->server_id(); }
  void Stop();

 private:
  struct ConnState {
    std::shared_ptr<Session> session;  // set by HELLO (loop thread), read by workers after
    std::mutex mu;                     // orders pause and resume decisions
    uint32_t inflight = 0;             // GUARDED_BY(mu)
    bool paused = false;               // GUARDED_BY(mu)
  };
  explicit Server(const ServerOptions& o) : opts_(o), drop_replies_(o.test_drop_replies) {}
  void OnMessage(const transport::ConnectionPtr& conn, transport::Message&& m);
  void OnClose(const transport::ConnectionPtr& conn, const Status& why);
  void HandleHello(const transport::ConnectionPtr& conn, ConnState* st,
                   const transport::Message& m);
  void Execute(const transport::ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
               transport::Message m);
  void Reply(const transport::ConnectionPtr& conn, const proto::Header& req, uint32_t status,
             const std::vector<uint8_t>& payload);
  void ReaperLoop();
  // LEASE and LOCK (coherence_ops.cc): answered when granted, maybe much later, so they do
  // not hold a worker while they wait. Each calls Done(st) once it has replied.
  void HandleLease(const transport::ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                   transport::Message m);
  void HandleLock(const transport::ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                  transport::Message m);
  void HandleLockNow(const transport::ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                     transport::Message m);
  bool SendBreak(uint64_t session, const Oid& oid, uint32_t keep, uint64_t seq);
  // Whether a request changes an object the session was evicted from (it then fails with EIO).
  bool Fenced(Session* session, uint16_t opcode, std::span<const uint8_t> payload);
  // Gives the creator a WRITE lease on what a request created with POHMELFS_CREATE_LEASE.
  void GrantCreated(Session* session, uint16_t opcode, std::span<const uint8_t> payload);
  // A request has been answered: frees its credit.
  void Done(const transport::ConnectionPtr& conn, ConnState* st);
  // True (and logged) when the reply to this executed mutating request is to be dropped.
  bool DropReplyForTest(const transport::ConnectionPtr& conn, const proto::Header& req);

  ServerOptions opts_;
  std::atomic<uint32_t> drop_replies_;  // left of opts_.test_drop_replies
  std::unique_ptr<ExportStore> store_;
  // Staging buffers of READ_RMA and WRITE_RMA, one per worker (a worker runs one command at a
  // time).
  std::shared_ptr<transport::RmaPool> rma_pool_;
  std::unique_ptr<SessionTable> sessions_;
  std::unique_ptr<WorkQueue> work_;
  std::unique_ptr<LeaseTable> leases_;
  std::unique_ptr<LockTable> locks_;
  std::atomic<uint64_t> next_callback_{1};
  std::vector<std::unique_ptr<transport::Transport>> transports_;
  std::vector<transport::Uri> bound_;
  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool stopping_ = false;  // GUARDED_BY(reaper_mu_)
  std::thread reaper_;
};

}  // namespace pohmelfs::server
