#include "transport/verbs/verbs_cm.h"

#include <fcntl.h>
#include <poll.h>

namespace pohmelfs::transport::verbs {
namespace {

// poll() on the channel is cut at this, so that Stop is seen.
constexpr int kSleepMs = 100;

}  // namespace

Result<std::shared_ptr<VerbsCm>> VerbsCm::Open() {
  std::shared_ptr<VerbsCm> cm(new VerbsCm());
  cm->st_->channel = rdma_create_event_channel();
  if (!cm->st_->channel) return Status::FromErrno("rdma_create_event_channel");
  fcntl(cm->st_->channel->fd, F_SETFL, fcntl(cm->st_->channel->fd, F_GETFL) | O_NONBLOCK);
  cm->thread_ = std::thread([st = cm->st_] { Loop(st); });
  return cm;
}

VerbsCm::State::~State() {
  if (channel) rdma_destroy_event_channel(channel);
}

VerbsCm::~VerbsCm() {
  Stop();
}

void VerbsCm::Stop() {
  st_->stop = true;
  if (!thread_.joinable()) return;
  if (thread_.get_id() == std::this_thread::get_id())
    thread_.detach();  // freed by a route on the CM thread: the loop ends on its own
  else
    thread_.join();
}

void VerbsCm::Add(rdma_cm_id* id, Route route) {
  std::lock_guard lk(st_->mu);
  st_->routes[id] = std::make_shared<Route>(std::move(route));
}

void VerbsCm::Remove(rdma_cm_id* id) {
  std::lock_guard lk(st_->mu);
  st_->routes.erase(id);
}

void VerbsCm::Loop(const std::shared_ptr<State>& st) {
  while (!st->stop) {
    pollfd p{st->channel->fd, POLLIN, 0};
    if (poll(&p, 1, kSleepMs) <= 0) continue;
    rdma_cm_event* raw = nullptr;
    if (rdma_get_cm_event(st->channel, &raw) != 0) continue;
    CmEvent ev{raw->event,
               raw->id,
               raw->listen_id,
               raw->status,
               raw->param.conn.initiator_depth,
               raw->param.conn.responder_resources};
    rdma_ack_cm_event(raw);
    std::shared_ptr<Route> route;
    {
      std::lock_guard lk(st->mu);
      rdma_cm_id* key = ev.type == RDMA_CM_EVENT_CONNECT_REQUEST ? ev.listen_id : ev.id;
      if (auto it = st->routes.find(key); it != st->routes.end()) route = it->second;
    }
    if (route) {
      (*route)(ev);
    } else if (ev.type == RDMA_CM_EVENT_CONNECT_REQUEST) {
      rdma_reject(ev.id, nullptr, 0);  // a listener being closed
      rdma_destroy_id(ev.id);
    }
  }
}

}  // namespace pohmelfs::transport::verbs
