// The connection-management side of the verbs backend: one librdmacm event channel and a
// thread that reads it. Each event is copied and acknowledged before it is handed on, so that
// a handler may destroy its id (rdma_destroy_id waits for unacknowledged events).
//
// Thread-safety: Add and Remove may be called from any thread; routes run on the CM thread.
#pragma once

#include <rdma/rdma_cma.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "proto/status.h"

namespace pohmelfs::transport::verbs {

struct CmEvent {
  rdma_cm_event_type type;
  rdma_cm_id* id;         // for CONNECT_REQUEST, the new id
  rdma_cm_id* listen_id;  // for CONNECT_REQUEST
  int status;
  uint8_t initiator_depth, responder_resources;  // of a CONNECT_REQUEST
};

class VerbsCm {
 public:
  using Route = std::function<void(const CmEvent&)>;

  static Result<std::shared_ptr<VerbsCm>> Open();
  ~VerbsCm();  // stops the thread (the channel goes once every id is destroyed)
  VerbsCm(const VerbsCm&) = delete;
  VerbsCm& operator=(const VerbsCm&) = delete;

  rdma_event_channel* channel() const { return st_->channel; }
  // Events of id (for a listener: its CONNECT_REQUESTs) go to route.
  void Add(rdma_cm_id* id, Route route);
  void Remove(rdma_cm_id* id);
  void Stop();

 private:
  // Shared with the thread: the last connection may be freed by a route on the CM thread, and
  // with it this object, so the thread must not depend on it.
  struct State {
    ~State();
    rdma_event_channel* channel = nullptr;
    std::atomic<bool> stop{false};
    std::mutex mu;
    std::unordered_map<rdma_cm_id*, std::shared_ptr<Route>> routes;  // GUARDED_BY(mu)
  };
  VerbsCm() = default;
  static void Loop(const std::shared_ptr<State>& st);

  std::shared_ptr<State> st_ = std::make_shared<State>();
  std::thread thread_;
};

}  // namespace pohmelfs::transport::verbs
