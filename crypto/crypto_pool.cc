#include "crypto/crypto_pool.h"

#include <algorithm>

namespace pohmelfs::crypto {

CryptoPool::CryptoPool(int threads) {
  threads_.reserve(static_cast<size_t>(std::max(threads, 0)));
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { ThreadMain(); });
}

CryptoPool::~CryptoPool() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void CryptoPool::Work(Job& job) {
  for (;;) {
    size_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.n) return;
    (*job.fn)(i);
    // acq_rel: the caller that sees done == n also sees everything fn wrote.
    if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.n) {
      // Under the job's mutex, so the caller cannot miss the wakeup between its check and its
      // wait.
      std::lock_guard<std::mutex> l(job.mu);
      job.finished.notify_all();
    }
  }
}

void CryptoPool::ThreadMain() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> l(mu_);
      wake_.wait(l, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to help with
      job = queue_.front();
    }
    Work(*job);
    // Every index is claimed: nobody else needs to find this job any more.
    std::lock_guard<std::mutex> l(mu_);
    auto it = std::find(queue_.begin(), queue_.end(), job);
    if (it != queue_.end()) queue_.erase(it);
  }
}

void CryptoPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (threads_.empty() || n == 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back(job);
  }
  // Wake no more threads than there are indexes for them to take (the caller takes one too).
  if (n - 1 >= threads_.size()) {
    wake_.notify_all();
  } else {
    for (size_t i = 0; i + 1 < n; ++i) wake_.notify_one();
  }
  Work(*job);
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = std::find(queue_.begin(), queue_.end(), job);
    if (it != queue_.end()) queue_.erase(it);
  }
  std::unique_lock<std::mutex> l(job->mu);
  job->finished.wait(l, [&] { return job->done.load(std::memory_order_acquire) == n; });
}

}  // namespace pohmelfs::crypto
