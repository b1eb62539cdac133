// A small pool of threads that spreads independent pieces of one job (the 64 KiB segments of a
// large message, channel_cipher.h) over several cores, so that sealing a 1 MiB write is not
// bound to one core's AES or HMAC speed.
//
// Thread-safety: ParallelFor may be called from several threads at once; the jobs share the
// pool's threads (first come, first helped) and every caller also works on its own job, so a
// job always progresses even when the pool threads are busy elsewhere.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace pohmelfs::crypto {

class CryptoPool {
 public:
  // threads: pool threads besides the callers; 0 runs every job inline in the caller.
  explicit CryptoPool(int threads);
  // Waits for the pool threads to finish what they are running and joins them.
  // REQUIRES: no ParallelFor is running.
  ~CryptoPool();
  CryptoPool(const CryptoPool&) = delete;
  CryptoPool& operator=(const CryptoPool&) = delete;

  // Runs fn(0) ... fn(n - 1), each exactly once, on the pool threads and the calling thread,
  // and returns when all have returned. fn is borrowed until then.
  // REQUIRES: fn does not throw; calls for different indexes are safe to run concurrently.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);

  int threads() const { return static_cast<int>(threads_.size()); }

 private:
  // One ParallelFor call. Shared with the pool threads, which may still hold it (and touch its
  // counters, never fn) for a moment after the caller has returned.
  struct Job {
    const std::function<void(size_t)>* fn = nullptr;
    size_t n = 0;
    std::atomic<size_t> next{0};  // the next index to claim
    std::atomic<size_t> done{0};  // indexes finished
    std::mutex mu;
    std::condition_variable finished;
  };

  // Claims and runs indexes of job until none is left.
  static void Work(Job& job);
  void ThreadMain();

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;  // GUARDED_BY(mu_); jobs with indexes to claim
  bool stop_ = false;                       // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace pohmelfs::crypto
