// How long a polling thread keeps polling after its last event before it sleeps. The budget
// adapts between zero and the configured maximum: it halves each time a spin ran out without
// finding anything (polling was wasted CPU) and doubles each time an event turned up while
// spinning (a sleep and wake-up were saved). With a maximum of zero the thread always sleeps.
#pragma once

#include <algorithm>
#include <chrono>

namespace pohmelfs::transport {

class AdaptiveSpin {
 public:
  using Clock = std::chrono::steady_clock;

  explicit AdaptiveSpin(std::chrono::microseconds max) : max_(max), budget_(max) {}

  // Whether to poll again rather than sleep, last_busy being the time of the last event.
  bool ShouldSpin(Clock::time_point last_busy, Clock::time_point now) const {
    return budget_.count() > 0 && now - last_busy < budget_;
  }
  // An event came while spinning.
  void FoundWhileSpinning() { budget_ = std::min(max_, std::max(kStep, budget_ * 2)); }
  // The spin ran out: the thread goes to sleep.
  void RanOut() { budget_ = budget_ / 2 < kStep ? std::chrono::microseconds(0) : budget_ / 2; }
  // After a sleep that an event ended, spinning is tried again at the smallest budget.
  void WokeUp() {
    if (max_.count() > 0 && budget_.count() == 0) budget_ = std::min(max_, kStep);
  }
  std::chrono::microseconds budget() const { return budget_; }

 private:
  static constexpr std::chrono::microseconds kStep{5};
  const std::chrono::microseconds max_;
  std::chrono::microseconds budget_;
};

}  // namespace pohmelfs::transport
