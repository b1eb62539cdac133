// One epoll event-loop thread. Backends whose connections expose a pollable fd (TCP sockets,
// and later completion channels) register them here, so one loop serves any of them.
//
// Thread-safety: Add, Modify, Remove and Post may be called from any thread. Pollable
// callbacks and posted tasks run on the loop thread only.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "proto/status.h"

namespace pohmelfs::transport {

class Pollable {
 public:
  virtual ~Pollable() = default;
  virtual void OnEvents(uint32_t events) = 0;
};

class EventLoop {
 public:
  // spin: how long to keep polling (epoll_wait without sleeping) after the last event, at most
  // (see AdaptiveSpin); 0 sleeps at once.
  explicit EventLoop(std::string name, std::chrono::microseconds spin = {});
  ~EventLoop();  // stops and joins the thread; registered objects are dropped
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // The loop keeps obj alive until Remove(fd).
  Status Add(int fd, uint32_t events, std::shared_ptr<Pollable> obj);
  Status Modify(int fd, uint32_t events);
  void Remove(int fd);
  void Post(std::function<void()> task);
  bool InLoopThread() const { return std::this_thread::get_id() == thread_.get_id(); }
  // Runs fn on every registered object (on the loop thread) and waits; used by Shutdown.
  void ForEachAndWait(const std::function<void(const std::shared_ptr<Pollable>&)>& fn);
  void Stop();

 private:
  void Run();
  void Wake();

  std::string name_;
  const std::chrono::microseconds spin_;
  int epfd_ = -1;
  int wakefd_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::function<void()>> tasks_;                    // GUARDED_BY(mu_)
  std::unordered_map<int, std::shared_ptr<Pollable>> objects_;  // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace pohmelfs::transport
