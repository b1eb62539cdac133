// A fixed pool of worker threads draining one FIFO of tasks. The server's file IO blocks, so
// it runs here rather than on the transport's event-loop threads.
// Thread-safety: Push may be called from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pohmelfs::server {

class WorkQueue {
 public:
  explicit WorkQueue(int threads) {
    for (int i = 0; i < threads; i++) threads_.emplace_back([this] { Run(); });
  }
  ~WorkQueue() { Stop(); }

  void Push(std::function<void()> task) {
    {
      std::lock_guard lk(mu_);
      if (stop_) return;
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

  // Finishes queued tasks, then joins. Idempotent.
  void Stop() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // GUARDED_BY(mu_)
  bool stop_ = false;                        // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace pohmelfs::server
