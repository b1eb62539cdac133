// The client's side of leases (docs/coherence.md): which leases this mount holds, from which
// authority, and what happens when the server breaks one.
//
//  - Hold(oid, mode) returns a guard under which the lease is held: READ lets the caller
//    cache, WRITE also lets it delay changes. Without the lease it asks the authority (the
//    highest-priority up writable server) and waits for the grant.
//  - A LEASE_BREAK from the authority runs on a break thread. It is recorded first: a grant
//    reply that it overtook (numbered no higher than the grant it names) then counts as
//    broken, as does a create's grant recorded after it, so the break never waits for a reply
//    (which the server may hold back until this very break is answered); and the server
//    grants a session nothing new on an object until that session's RELEASE of a break has
//    come. The break then waits for the guards of that object to end, has the owner flush
//    what it delayed (hooks.flush), lowers the lease, asks the owner to drop kernel caches
//    (hooks.invalidate, on the invalidator thread, waited for until done within a bound, or
//    only briefly while a request waits for a grant, so that a kernel page lock held by such
//    a request cannot deadlock the break; see Options), and sends RELEASE.
//  - When the authority changes, or its connection was lost (breaks may have been missed),
//    every lease is reclaimed from the current authority with the RECLAIM flag; kernel caches
//    of reclaimed objects are dropped since a missed break cannot be ruled out. A lease that
//    cannot be reclaimed is lost: hooks.lost tells the owner (its delayed changes now fail).
//
// Leases are kept until broken or until ReleaseAll (unmount): holding them is what makes
// repeated access cheap.
//
// Thread-safety: all public methods are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "client/fs_client.h"
#include "client/server_set.h"

namespace pohmelfs::client {

class LeaseManager {
 public:
  struct Hooks {
    std::function<void(const Oid&, uint32_t keep)> flush;  // delayed changes out now
    // Kernel caches dropped: attributes only (quick, never blocks) or also pages and names.
    std::function<void(const Oid&, uint32_t keep, bool all)> invalidate;
    std::function<void(const Oid&)> lost;  // the lease is gone for good
    std::function<void()> before_reclaim;  // queued changes out before leases are reclaimed
    // After the leases were reclaimed from a new authority (or a reconnected one): locks are
    // placed again there.
    std::function<void()> authority_changed;
  };
  struct Options {
    int break_threads = 4;
    // A break releases the lease once the kernel dropped the object's pages, so that no stale
    // page outlives it, but waits for that at most invalidate_max_wait (a backstop below the
    // servers' default break timeout of 5 s). Dropping pages waits for pages that requests in
    // flight hold locked, and such a request may be waiting for a grant that this very break
    // holds up: while a request of the object (or of the object whose invalidation runs ahead
    // on the single invalidator thread) waits for a grant, wait only invalidate_wait.
    std::chrono::milliseconds invalidate_wait{20};
    std::chrono::milliseconds invalidate_max_wait{1000};
    std::chrono::milliseconds acquire_timeout{30000};  // one ACQUIRE, waiting for others
  };

  // Holds the object's lease (a shared lock on its state) until destroyed.
  class Guard {
   public:
    Guard() = default;
    uint32_t mode() const { return mode_; }
    // The attributes from the grant, when this Hold got a new grant.
    const std::optional<Entry>& granted() const { return granted_; }
    // Whether the lease was already held before this Hold (kernel caches are still valid).
    bool was_held() const { return was_held_; }

   private:
    friend class LeaseManager;
    std::shared_lock<std::shared_mutex> use_;
    uint32_t mode_ = 0;
    bool was_held_ = false;
    std::optional<Entry> granted_;
  };

  LeaseManager(std::shared_ptr<ServerSet> set, Hooks hooks, Options o);
  ~LeaseManager();
  LeaseManager(const LeaseManager&) = delete;
  LeaseManager& operator=(const LeaseManager&) = delete;

  // At least `mode` held on oid while the guard lives. Fails when no authority answers or the
  // server refuses; the caller then works without caching.
  Result<Guard> Hold(const Oid& oid, uint32_t mode);
  // The mode held now (no waiting, no request).
  uint32_t Held(const Oid& oid);
  // Records a WRITE lease the server grants with a create (POHMELFS_CREATE_LEASE).
  void GrantLocal(const Oid& oid);
  // Gives back every lease (flushing first). Used at unmount.
  void ReleaseAll();
  void Stop();

  struct Counters {
    // Grants received, breaks received (handled or queued), leases reclaimed and lost.
    std::atomic<uint64_t> grants{0}, breaks{0}, reclaims{0}, lost{0};
  };
  const Counters& counters() const { return counters_; }

 private:
  struct State {
    std::shared_mutex use;      // shared by guards, exclusive while a break runs
    std::mutex acquire_mu;      // one ACQUIRE at a time (never held by a break)
    std::mutex mu;              // the fields below; never held across a request
    uint32_t mode = 0;          // GUARDED_BY(mu)
    RpcClient* from = nullptr;  // GUARDED_BY(mu): the authority that granted it
    uint64_t from_epoch = 0;    // GUARDED_BY(mu): its connect_epoch at the grant
    // Requests of this object waiting for a grant (they may hold kernel page locks). Changes
    // are announced on inval_cv_.
    std::atomic<int> waiting{0};
    // The latest break seen (GUARDED_BY(mu)): the grant it named, the mode it left, and the
    // authority connection it came on. A grant reply numbered no higher was broken already.
    uint64_t broken_seq = 0;
    uint32_t broken_keep = 0;
    RpcClient* broken_from = nullptr;
    uint64_t broken_epoch = 0;
    // Whether the latest break came on this connection of that authority. REQUIRES: mu held.
    bool BrokenOn(const RpcClient* c, uint64_t epoch) const {
      return broken_from == c && broken_epoch == epoch;
    }
  };
  struct BreakJob {
    RpcClient* from;
    uint64_t from_epoch;
    Oid oid;
    uint32_t keep;
    uint64_t seq;
  };
  // Counts a request among those waiting for a grant of st's object while it lives.
  class WaitingForGrant {
   public:
    WaitingForGrant(LeaseManager* m, State* st);
    ~WaitingForGrant();
    WaitingForGrant(const WaitingForGrant&) = delete;
    WaitingForGrant& operator=(const WaitingForGrant&) = delete;

   private:
    void Announce();
    LeaseManager* const m_;
    State* const st_;
  };
  std::shared_ptr<State> StateOf(const Oid& oid);
  // Sends ACQUIRE (or a reclaim) to the current authority and records the grant.
  // REQUIRES: st->acquire_mu held, st->mu not held.
  Result<std::optional<Entry>> AcquireLocked(State* st, const Oid& oid, uint32_t mode,
                                             bool reclaim);
  // Whether the lease's grant still stands with the current authority. REQUIRES: st->mu held.
  bool CurrentLocked(const State& st, RpcClient* authority) const;
  void OnCallback(RpcClient* from, uint16_t opcode, std::vector<uint8_t>&& payload);
  void BreakLoop();
  void RunBreak(const BreakJob& job);
  // Drops kernel caches of oid (st: its state, if any), waiting for that at most max_wait, or
  // invalidate_wait while a request of the object waits for a grant.
  void InvalidateBounded(const Oid& oid, uint32_t keep, const std::shared_ptr<State>& st,
                         std::chrono::milliseconds max_wait);
  void InvalidatorLoop();
  void ReclaimLoop();
  void ReclaimAll();
  Status SendRelease(const std::shared_ptr<RpcClient>& to, const Oid& oid, uint32_t keep);

  const std::shared_ptr<ServerSet> set_;
  const Hooks hooks_;
  const Options opts_;
  Counters counters_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<Oid, std::shared_ptr<State>, proto::OidHash> states_;  // GUARDED_BY(mu_)
  std::deque<BreakJob> breaks_;                                             // GUARDED_BY(mu_)
  bool reclaim_wanted_ = false;                                             // GUARDED_BY(mu_)
  bool stopping_ = false;                                                   // GUARDED_BY(mu_)
  std::vector<std::thread> break_threads_;
  std::thread reclaimer_;
  RpcClient* last_authority_ = nullptr;  // used by the reclaimer thread only
  uint64_t last_epoch_ = 0;              // likewise

  // The invalidator: one job at a time; a job that blocks only delays later invalidations.
  struct InvalJob {
    Oid oid;
    uint32_t keep;
    std::shared_ptr<State> st;   // its state (may be null): whether requests of it wait
    std::shared_ptr<bool> done;  // GUARDED_BY(inval_mu_)
  };
  std::mutex inval_mu_;
  std::condition_variable inval_cv_;
  std::deque<InvalJob> inval_queue_;  // GUARDED_BY(inval_mu_)
  bool inval_stopping_ = false;       // GUARDED_BY(inval_mu_)
  // The job the invalidator runs now (its done flag and state), for the jobs queued behind it.
  std::shared_ptr<bool> inval_running_;      // GUARDED_BY(inval_mu_)
  std::shared_ptr<State> inval_running_st_;  // GUARDED_BY(inval_mu_)
  std::thread invalidator_;
};

}  // namespace pohmelfs::client
