// POSIX byte-range locks and flock locks held through this server (the lease authority).
//
// A lock owner is (session, owner): the client's lock owner within one session. POSIX locks
// of one owner merge and split as fcntl's do; flock locks cover the whole file and live apart
// from POSIX locks, as on Linux. A blocked SETLKW waits at most wait_bound and then fails with
// EINPROGRESS (the client asks again), so no request holds a server thread or a reply slot
// for long. Locks whose session is gone (is_dead says so) are dropped when they are in the way.
//
// Thread-safety: all public methods are thread-safe; completions run without the lock held.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "proto/codec.h"

namespace pohmelfs::server {

using proto::Oid;

struct LockRange {
  uint64_t session = 0;
  uint64_t owner = 0;
  bool flock = false;
  uint32_t type = 0;  // F_RDLCK or F_WRLCK
  uint64_t start = 0;
  uint64_t end = 0;  // inclusive; UINT64_MAX: to the end of the file
  uint32_t pid = 0;
};

class LockTable {
 public:
  using Clock = std::chrono::steady_clock;
  using IsDead = std::function<bool(uint64_t session)>;
  using Done = std::function<void(uint32_t status)>;

  LockTable(std::chrono::milliseconds wait_bound, IsDead is_dead);
  ~LockTable();
  LockTable(const LockTable&) = delete;
  LockTable& operator=(const LockTable&) = delete;

  // The first lock in the way of `want`, or nullopt.
  std::optional<LockRange> Test(const Oid& oid, const LockRange& want);
  // Places (or with type F_UNLCK removes) a lock. With wait, a conflict parks the request until
  // it can be placed or wait_bound passes (EINPROGRESS); without, it fails with EAGAIN.
  // done is called exactly once.
  void Set(const Oid& oid, const LockRange& want, bool wait, Done done);
  // Drops every lock of a session.
  void DropSession(uint64_t session);
  size_t Count(const Oid& oid);
  void Stop();

 private:
  struct Waiter {
    LockRange want;
    Clock::time_point deadline;
    Done done;
  };
  struct File {
    std::vector<LockRange> locks;
    std::list<Waiter> waiters;
  };
  // REQUIRES: mu_ held. Drops the locks of dead sessions that are in the way first.
  const LockRange* ConflictLocked(File& f, const LockRange& want);
  void ApplyLocked(File& f, const LockRange& want);
  // Places what waiters can now place. REQUIRES: mu_ held.
  void WakeLocked(File& f, std::vector<std::pair<Done, uint32_t>>* done);
  void Run();

  const std::chrono::milliseconds wait_bound_;
  const IsDead is_dead_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<Oid, File, proto::OidHash> files_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                                // GUARDED_BY(mu_)
  std::thread timer_;
};

}  // namespace pohmelfs::server
