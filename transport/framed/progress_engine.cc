#include "transport/framed/progress_engine.h"

#include <algorithm>

#include "transport/adaptive_spin.h"
#include "transport/framed/framed_connection.h"

namespace pohmelfs::transport {
namespace {

using Clock = std::chrono::steady_clock;
// Sleeps are cut at this, so that a stop is seen without a wake-up.
constexpr int kSleepMs = 100;
// A retired connection whose operations never all complete is freed after this.
constexpr auto kRetireBound = std::chrono::seconds(10);

}  // namespace

void ProgressEngine::StartProgress() {
  thread_ = std::thread([this] { Loop(); });
}

void ProgressEngine::StopProgress() {
  if (stop_.exchange(true)) return;
  Wake();
  if (thread_.joinable()) thread_.join();
  joined_ = true;
  // What is left runs here, delayed tasks (retries) at once: they find the backend stopping and
  // fail, and what their failure posts (a close) runs too.
  for (;;) {
    {
      std::lock_guard lk(mu_);
      if (tasks_.empty() && pump_.empty() && delayed_.empty()) break;
      for (auto& d : delayed_) tasks_.push_back(std::move(d.task));
      delayed_.clear();
    }
    RunTasks();
  }
  ReapRetired(true);
}

void ProgressEngine::Post(std::function<void()> task) {
  {
    std::lock_guard lk(mu_);
    tasks_.push_back(std::move(task));
  }
  Wake();
}

void ProgressEngine::PostAfter(std::chrono::milliseconds delay, std::function<void()> task) {
  {
    std::lock_guard lk(mu_);
    delayed_.push_back({Clock::now() + delay, std::move(task)});
  }
  Wake();  // the thread may be asleep for longer than delay
}

void ProgressEngine::WantPump(std::shared_ptr<FramedConnection> conn) {
  {
    std::lock_guard lk(mu_);
    pump_.push_back(std::move(conn));
  }
  Wake();
}

void ProgressEngine::Retire(std::shared_ptr<FramedConnection> conn) {
  Post([this, conn = std::move(conn)]() mutable {
    retired_.push_back({std::move(conn), Clock::now()});
  });
}

void ProgressEngine::RunTasks() {
  std::vector<std::function<void()>> tasks;
  std::vector<std::shared_ptr<FramedConnection>> pump;
  {
    std::lock_guard lk(mu_);
    tasks.swap(tasks_);
    pump.swap(pump_);
    if (!delayed_.empty()) {
      const auto now = Clock::now();
      auto due = std::partition(delayed_.begin(), delayed_.end(),
                                [&](const Delayed& d) { return d.due > now; });
      for (auto it = due; it != delayed_.end(); ++it) tasks.push_back(std::move(it->task));
      delayed_.erase(due, delayed_.end());
    }
  }
  for (auto& t : tasks) t();
  for (auto& c : pump) c->Pump();
}

void ProgressEngine::ReapRetired(bool all) {
  const auto now = Clock::now();
  std::erase_if(retired_, [&](const Retired& r) {
    return all || r.conn->outstanding() <= 0 ||
           (now - r.since > kRetireBound && r.conn->MayFreeWithOperationsPosted());
  });
}

int ProgressEngine::SleepBudgetMs(int max_ms) {
  std::lock_guard lk(mu_);
  if (delayed_.empty()) return max_ms;
  auto first = std::min_element(delayed_.begin(), delayed_.end(),
                                [](const Delayed& a, const Delayed& b) { return a.due < b.due; });
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(first->due - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, max_ms));
}

void ProgressEngine::Loop() {
  AdaptiveSpin spin(spin_);
  auto last_busy = Clock::now();
  bool spinning = false;  // polled without finding anything since the last event
  while (!stop_) {
    RunTasks();
    int n = PollCompletions();
    if (n > 0) {
      if (spinning) spin.FoundWhileSpinning();
      spinning = false;
      last_busy = Clock::now();
      continue;
    }
    if (spin.ShouldSpin(last_busy, Clock::now())) {
      spinning = true;
      continue;
    }
    if (spinning) spin.RanOut();
    spinning = false;
    ReapRetired(false);
    n = WaitForCompletions(SleepBudgetMs(kSleepMs));
    if (n > 0) {
      spin.WokeUp();
      last_busy = Clock::now();
    }
  }
}

}  // namespace pohmelfs::transport
