// Leases granted by this server as an objects' lease authority (docs/coherence.md).
//
// READ leases go to many sessions at once, a WRITE lease to one. An acquire that conflicts
// with other holders waits: each conflicting holder is sent one break (through the callback
// the server gives) and has break_timeout to give the lease back; one that does not is evicted
// (its leases on the object are dropped, it is fenced: its next change to the object fails)
// and the waiter goes on. Waiters are served first come, first served, so that a stream of
// readers cannot starve a writer.
//
// A reclaim re-takes a lease held from a previous authority. The first reclaim opens a grace
// period; during it only reclaims are granted, and ordinary acquires wait for its end.
//
// Thread-safety: all public methods are thread-safe. Completions and break sends are called
// without the table's lock held, from the calling thread or the table's timer thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "proto/codec.h"

namespace pohmelfs::server {

using proto::Oid;

class LeaseTable {
 public:
  using Clock = std::chrono::steady_clock;
  struct Options {
    std::chrono::milliseconds break_timeout{5000};
    std::chrono::milliseconds grace{5000};
  };
  // Asks session `session` to give back its lease on oid, keeping at most `keep`. Returns
  // false when the session has no connection to send on (the break deadline still runs).
  using SendBreak =
      std::function<bool(uint64_t session, const Oid& oid, uint32_t keep, uint64_t seq)>;
  // The end of an acquire: 0, the granted mode and the grant's number; or an errno.
  using Done = std::function<void(uint32_t status, uint32_t mode, uint64_t seq)>;

  LeaseTable(const Options& o, SendBreak send_break);
  ~LeaseTable();
  LeaseTable(const LeaseTable&) = delete;
  LeaseTable& operator=(const LeaseTable&) = delete;

  // Grants mode (READ or WRITE) on oid to session, now or later; done is called exactly once
  // (also with ESHUTDOWN when the table stops first).
  void Acquire(uint64_t session, const Oid& oid, uint32_t mode, bool reclaim, Done done);
  // A WRITE lease on an object the session has just created (nobody else can hold one yet).
  void GrantNew(uint64_t session, const Oid& oid);
  // Drops the session's lease on oid to `keep` (NONE or READ). Idempotent.
  void Release(uint64_t session, const Oid& oid, uint32_t keep);
  // Drops every lease of a session (it expired or closed for good).
  void DropSession(uint64_t session);
  // True once if the session was evicted from oid since it last acquired it: the caller
  // fails the request with EIO. Cleared by this call.
  bool TakeFence(uint64_t session, const Oid& oid);
  // Runs f now, or when the current grace period ends (on the timer thread).
  void AfterGrace(std::function<void()> f);
  // The mode the session holds on oid (tests and logs).
  uint32_t Held(uint64_t session, const Oid& oid);
  std::chrono::milliseconds break_timeout() const { return opts_.break_timeout; }
  void Stop();

 private:
  struct Holder {
    uint32_t mode = 0;
    bool reclaimed = false;
    bool breaking = false;
    uint32_t break_keep = 0;
    uint64_t seq = 0;  // the latest grant
    Clock::time_point deadline;
  };
  struct Waiter {
    uint64_t session;
    uint32_t mode;
    bool reclaim;
    Done done;
  };
  struct Object {
    std::map<uint64_t, Holder> holders;
    std::vector<Waiter> waiters;  // in arrival order
  };
  struct Break {
    uint64_t session;
    Oid oid;
    uint32_t keep;
    uint64_t seq;
  };
  struct Completion {
    Done done;
    uint32_t status;
    uint32_t mode;
    uint64_t seq = 0;
  };
  // Grants what can be granted on oid and starts the breaks the head waiters need.
  // REQUIRES: mu_ held.
  void ServeLocked(const Oid& oid, std::vector<Break>* breaks, std::vector<Completion>* done);
  void EvictExpiredLocked(std::vector<Break>* breaks, std::vector<Completion>* done);
  bool InGraceLocked(Clock::time_point now) const { return now < grace_until_; }
  void Run();
  void Finish(std::vector<Break>& breaks, std::vector<Completion>& done);

  const Options opts_;
  const SendBreak send_break_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<Oid, Object, proto::OidHash> objects_;  // GUARDED_BY(mu_)
  std::set<std::pair<uint64_t, Oid>> fenced_;                // GUARDED_BY(mu_)
  Clock::time_point grace_until_{};                          // GUARDED_BY(mu_)
  bool stopping_ = false;                                    // GUARDED_BY(mu_)
  std::vector<std::function<void()>> after_grace_;           // GUARDED_BY(mu_)
  uint64_t next_seq_ = 1;                                    // GUARDED_BY(mu_)
  std::thread timer_;
};

}  // namespace pohmelfs::server
