#include "transport/event_loop.h"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <cstring>

#include "transport/adaptive_spin.h"

namespace pohmelfs::transport {

EventLoop::EventLoop(std::string name, std::chrono::microseconds spin)
    : name_(std::move(name)), spin_(spin) {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd_ < 0 || wakefd_ < 0) {
    spdlog::critical("{}: epoll/eventfd: {}", name_, std::strerror(errno));
    std::abort();
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wakefd_;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev);
  thread_ = std::thread([this] { Run(); });
}

EventLoop::~EventLoop() {
  Stop();
  {
    std::lock_guard lk(mu_);
    objects_.clear();
  }
  close(epfd_);
  close(wakefd_);
}

void EventLoop::Stop() {
  if (stop_.exchange(true)) {
    if (thread_.joinable() && !InLoopThread()) thread_.join();
    return;
  }
  Wake();
  if (thread_.joinable() && !InLoopThread()) thread_.join();
}

Status EventLoop::Add(int fd, uint32_t events, std::shared_ptr<Pollable> obj) {
  {
    std::lock_guard lk(mu_);
    objects_[fd] = std::move(obj);
  }
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    Status s = Status::FromErrno("epoll_ctl add");
    std::lock_guard lk(mu_);
    objects_.erase(fd);
    return s;
  }
  return Status::Ok();
}

Status EventLoop::Modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) != 0) return Status::FromErrno("epoll_ctl mod");
  return Status::Ok();
}

void EventLoop::Remove(int fd) {
  epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
  std::shared_ptr<Pollable> keep;  // released outside the lock
  std::lock_guard lk(mu_);
  auto it = objects_.find(fd);
  if (it != objects_.end()) {
    keep = std::move(it->second);
    objects_.erase(it);
  }
}

void EventLoop::Post(std::function<void()> task) {
  {
    std::lock_guard lk(mu_);
    tasks_.push_back(std::move(task));
  }
  Wake();
}

void EventLoop::Wake() {
  uint64_t one = 1;
  ssize_t n = write(wakefd_, &one, sizeof(one));
  (void)n;  // EAGAIN means a wakeup is already pending
}

void EventLoop::ForEachAndWait(const std::function<void(const std::shared_ptr<Pollable>&)>& fn) {
  std::mutex done_mu;
  std::condition_variable done_cv;
  bool done = false;
  auto body = [&] {
    std::vector<std::shared_ptr<Pollable>> all;
    {
      std::lock_guard lk(mu_);
      for (auto& [fd, obj] : objects_) all.push_back(obj);
    }
    for (auto& obj : all) fn(obj);
    std::lock_guard lk(done_mu);
    done = true;
    done_cv.notify_all();
  };
  if (InLoopThread() || stop_) {
    body();
    return;
  }
  Post(body);
  std::unique_lock lk(done_mu);
  // Bounded: the loop runs posted tasks promptly unless it has been stopped.
  done_cv.wait_for(lk, std::chrono::seconds(10), [&] { return done; });
}

void EventLoop::Run() {
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  AdaptiveSpin spin(spin_);
  auto last_busy = AdaptiveSpin::Clock::now();
  bool spinning = false;
  while (!stop_) {
    // Poll without sleeping for the spin budget after the last event, then block.
    const bool poll_only = spin.ShouldSpin(last_busy, AdaptiveSpin::Clock::now());
    if (!poll_only && spinning) spin.RanOut();
    int n = epoll_wait(epfd_, events, kMaxEvents, poll_only ? 0 : -1);
    if (n > 0) {
      if (poll_only && spinning) spin.FoundWhileSpinning();
      if (!poll_only) spin.WokeUp();
      last_busy = AdaptiveSpin::Clock::now();
    }
    spinning = poll_only && n <= 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::error("{}: epoll_wait: {}", name_, std::strerror(errno));
      break;
    }
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd == wakefd_) {
        uint64_t v;
        while (read(wakefd_, &v, sizeof(v)) > 0) {
        }
        continue;
      }
      std::shared_ptr<Pollable> obj;
      {
        std::lock_guard lk(mu_);
        auto it = objects_.find(fd);
        if (it != objects_.end()) obj = it->second;
      }
      if (obj) obj->OnEvents(events[i].events);
    }
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard lk(mu_);
      tasks.swap(tasks_);
    }
    for (auto& t : tasks) t();
  }
  // Run what was posted before the stop so no close callback is lost.
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard lk(mu_);
    tasks.swap(tasks_);
  }
  for (auto& t : tasks) t();
}

}  // namespace pohmelfs::transport
