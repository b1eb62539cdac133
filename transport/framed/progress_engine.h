// The progress thread of a polling backend (ofi, verbs). It runs tasks posted from other
// threads, polls the backend's completion queue, keeps polling for a spin budget after the last
// completion (a busy peer is answered without a sleep and a wake-up per message), then sleeps
// in the backend's wait (fi_cq_sread, a verbs completion channel) so that an idle process costs
// no CPU. It also keeps closed connections alive until the backend has reported all their
// posted operations, so that no completion points at freed memory.
//
// Thread-safety: Post, WantPump, Retire and Publish may be called from any thread; everything
// else runs on the progress thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace pohmelfs::transport {

class FramedConnection;

class ProgressEngine {
 public:
  explicit ProgressEngine(std::chrono::microseconds spin) : spin_(spin) {}
  virtual ~ProgressEngine() = default;
  ProgressEngine(const ProgressEngine&) = delete;
  ProgressEngine& operator=(const ProgressEngine&) = delete;

  // Runs task on the progress thread.
  void Post(std::function<void()> task);
  // Runs task on the progress thread once delay has passed (a retry that must not spin).
  void PostAfter(std::chrono::milliseconds delay, std::function<void()> task);
  // Asks the progress thread to push conn's queued work (the backend's queue was full).
  void WantPump(std::shared_ptr<FramedConnection> conn);
  // Keeps a closed connection until its operations are all reported, or for a bounded time.
  void Retire(std::shared_ptr<FramedConnection> conn);
  // Called before posting an operation: orders the writes to it before the progress thread's
  // reading of its completion in a way tools (ThreadSanitizer) can see; the backend's own path
  // from post to completion may go through the kernel or a device.
  void Publish() {
    published_.fetch_add(1, std::memory_order_release);
    if (poke_on_publish_) Poked();
  }
  // The progress thread has been joined: no completion will be dispatched any more.
  bool ProgressStopped() const { return joined_.load(); }

 protected:
  void StartProgress();
  // Joins the thread, then runs what it left (closes may post more) and frees the retired.
  void StopProgress();
  // Implementations call this after reading completions and before dispatching them.
  void AcquirePublished() { (void)published_.load(std::memory_order_acquire); }
  // Before StartProgress: every Publish (every post, from any thread) also calls Poked, for a
  // backend that must be told of new work because it cannot sleep in its library.
  void PokeOnPublish() { poke_on_publish_ = true; }
  virtual void Poked() {}

  // Dispatches the completions that are there (FramedConnection::Complete); returns how many.
  virtual int PollCompletions() = 0;
  // Sleeps until completions may be there, a Wake, or timeout_ms; dispatches any it got.
  virtual int WaitForCompletions(int timeout_ms) = 0;
  // Ends a WaitForCompletions early (from any thread).
  virtual void Wake() = 0;

 private:
  void Loop();
  void RunTasks();
  void ReapRetired(bool all);
  // How long the thread may sleep before a delayed task is due (at most max_ms).
  int SleepBudgetMs(int max_ms);

  const std::chrono::microseconds spin_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> joined_{false};
  std::atomic<uint64_t> published_{0};
  bool poke_on_publish_ = false;  // set before the thread starts
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::function<void()>> tasks_;  // GUARDED_BY(mu_)
  struct Delayed {
    std::chrono::steady_clock::time_point due;
    std::function<void()> task;
  };
  std::vector<Delayed> delayed_;                         // GUARDED_BY(mu_)
  std::vector<std::shared_ptr<FramedConnection>> pump_;  // GUARDED_BY(mu_)
  struct Retired {
    std::shared_ptr<FramedConnection> conn;
    std::chrono::steady_clock::time_point since;
  };
  std::vector<Retired> retired_;  // progress thread only (or StopProgress after the join)
};

}  // namespace pohmelfs::transport
