// A mount's working set of servers: replicated writes, balanced reads, failover, keepalive,
// resync and run-time changes (docs/architecture.md, "Replication").
//
//  - Writes (every mutating opcode) go to every write-enabled server that is up or catching
//    up, in parallel, and complete when all the up ones answered. The highest-priority answer
//    is the result; an up server that answered differently, or failed, is healed later.
//  - Before a write is acknowledged while some write-enabled server is not up, every server
//    that applied it holds a durable marker naming the one that missed it (REPLICA MARK).
//  - Reads go to one up, read-enabled server of the highest priority, in turn among equals;
//    a failed or timed-out read moves to the next server.
//  - Each server has a keeper thread: it pings an idle connection, declares the server down
//    when it stops answering, reconnects a down one in the background and readmits it: a
//    server that missed writes is resynced (client/resync.h) from an up one before it serves
//    reads again, receiving new writes meanwhile. Markers held both ways are a split brain:
//    reported, and the server is kept out until an operator resolves it.
//
// Thread-safety: all public methods are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "client/caller.h"
#include "client/object_locks.h"
#include "client/replica_spec.h"
#include "transport/rma_pool.h"

namespace pohmelfs::client {

struct ServerSetOptions {
  RpcOptions rpc;
  std::chrono::milliseconds keepalive_interval{1000};  // ping a connection idle this long
  std::chrono::milliseconds keepalive_timeout{1000};   // no answer this long: the server is dead
};

enum class ReplicaState {
  kDown,     // not connected; the keeper reconnects it
  kUp,       // serves reads (if r) and receives writes (if w)
  kSyncing,  // connected, receives writes, being resynced; no reads
  kStale,    // connected but missed writes that no up server can give it; unused until one can
  kSplit,    // holds changes a good server lacks and lacks some of its: unused until resolved
};
const char* StateName(ReplicaState s);

class ServerSet : public Caller, public std::enable_shared_from_this<ServerSet> {
 public:
  // Connects to every server (in parallel, each bounded by connect_timeout). Fails when none
  // could be reached; the unreachable ones are retried in the background.
  static Result<std::shared_ptr<ServerSet>> Start(const std::vector<ReplicaSpec>& specs,
                                                  const ServerSetOptions& o);
  ~ServerSet() override;
  // Stops the keeper and resync threads (also done by the destructor).
  void Stop();

  Result<RpcReply> Call(uint16_t opcode, std::span<const iovec> payload) override;
  proto::Oid root() override { return root_; }

  // Run-time changes (pohmelfsctl). Errors are EINVAL for bad input, ENOENT for an unknown
  // server, EEXIST for a duplicate, EBUSY for removing the last writable server.
  Status Add(const ReplicaSpec& spec);
  Status Remove(const std::string& uri);
  Status Update(const ReplicaSpec& spec);  // new priority and permissions for spec.uri
  // Resyncs the server from an up one even if nothing says it missed a write.
  Status Heal(const std::string& uri);
  // Ends a split brain by declaring `uri` the loser: its divergent changes are overwritten.
  Status Resolve(const std::string& uri);
  // A table: address, state, priority, permissions, in flight, reads, writes, bytes, errors.
  std::string StatusTable();
  // Blocks until every server is up, or the timeout passes. Returns whether all are up.
  bool WaitAllUp(std::chrono::milliseconds timeout);
  // Whether a connected server that receives writes lets this client only read (allow list).
  bool AnyWriterReadOnly();

  // Coherence (client/lease_manager.h). The lease authority is the highest-priority up
  // writable server; null when there is none.
  std::shared_ptr<RpcClient> Authority();
  // Where callbacks from the servers go (from network threads; must not block), and a
  // notification after any server's state changes (without locks held).
  using CallbackSink =
      std::function<void(RpcClient* from, uint16_t opcode, std::vector<uint8_t>&& payload)>;
  void SetCoherenceListener(CallbackSink on_callback, std::function<void()> on_state_change);

 private:
  struct Replica;
  using ReplicaPtr = std::shared_ptr<Replica>;
  class WriteGate;

  explicit ServerSet(const ServerSetOptions& o);
  Result<ReplicaPtr> MakeReplica(const ReplicaSpec& spec);
  void StartKeeper(const ReplicaPtr& r);
  void KeeperLoop(const ReplicaPtr& r);
  // Decides what a freshly connected server becomes (up, syncing, stale or split).
  void Admit(const ReplicaPtr& r);
  // Admit's decision, between writes. REQUIRES: the write gate closed, mu_ not held.
  void Decide(const ReplicaPtr& r, const proto::Oid& id);
  // Whether holder is known to hold a marker naming peer (by id or by URI alias).
  // REQUIRES: mu_ held.
  bool Marks(const ReplicaPtr& holder, const ReplicaPtr& peer);
  void OnDisconnected(const Replica* raw);
  bool OtherUpWriter(const ReplicaPtr& r);  // REQUIRES: mu_ held
  void MarkDown(const ReplicaPtr& r, const std::string& why);
  void SetState(const ReplicaPtr& r, ReplicaState s, const std::string& note);  // REQUIRES: mu_
  void ResyncLoop();
  void RunResync(const ReplicaPtr& r);
  Result<std::vector<proto::Oid>> ListMarkers(const ReplicaPtr& r);
  Status MarkerCall(const ReplicaPtr& r, uint32_t cmd, const proto::Oid& peer,
                    const CallOptions& co = {.fail_fast = true});
  // Makes sure every holder durably names every server in `missed`; drops holders that fail.
  void EnsureMarked(std::vector<ReplicaPtr>* holders, const std::vector<ReplicaPtr>& missed);

  Result<RpcReply> Read(uint16_t opcode, std::span<const iovec> payload);
  Result<RpcReply> Write(uint16_t opcode, std::span<const iovec> payload);
  std::vector<ReplicaPtr> Snapshot();
  ReplicaPtr Find(const std::string& uri);  // REQUIRES: mu_
  bool WaitForUp(bool want_write, std::chrono::steady_clock::time_point deadline);
  std::chrono::milliseconds CallBound() const;

  const ServerSetOptions opts_;
  const proto::Oid root_ = proto::Oid::Root();
  ObjectLocks locks_;
  std::atomic<uint64_t> read_turn_{0};

  std::mutex mu_;
  std::condition_variable cv_;           // state changes
  std::vector<ReplicaPtr> replicas_;     // GUARDED_BY(mu_), in the order given
  std::deque<ReplicaPtr> resync_queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                // GUARDED_BY(mu_)
  // GUARDED_BY(mu_): since when calls have found no up readable / writable server.
  std::optional<std::chrono::steady_clock::time_point> no_reader_since_, no_writer_since_;
  std::mutex admit_mu_;              // one admission decision at a time
  std::unique_ptr<WriteGate> gate_;  // closed while states change between writes
  // Staging buffers for bulk data by RMA (rma_rewrite.h); made at the first RMA-capable use.
  transport::RmaPool& RmaStaging();
  std::once_flag rma_once_;
  std::shared_ptr<transport::RmaPool> rma_pool_;
  std::atomic<bool> cancel_resync_{false};
  std::thread resync_thread_;
  std::mutex listener_mu_;
  CallbackSink on_callback_;               // GUARDED_BY(listener_mu_)
  std::function<void()> on_state_change_;  // GUARDED_BY(listener_mu_)
};

// The text commands of `pohmelfsctl servers` (client/pohmelfs_ioctl.h): status, add SERVER,
// remove URI, set SERVER, heal URI, resolve URI, wait MS. Returns the text to show.
Result<std::string> RunServersCommand(ServerSet& set, const std::string& command);

}  // namespace pohmelfs::client
