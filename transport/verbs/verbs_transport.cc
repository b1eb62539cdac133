#include "transport/verbs/verbs_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include "transport/verbs/verbs_cm.h"
#include "transport/verbs/verbs_connection.h"
#include "transport/verbs/verbs_device.h"

namespace pohmelfs::transport {
namespace {

using verbs::CmEvent;
using verbs::VerbsCm;
using verbs::VerbsConnection;
using verbs::VerbsDevice;

std::string AddrToUri(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (sa && sa->sa_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return std::string("verbs://") + host + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (sa && sa->sa_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return std::string("verbs://[") + host + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  return "verbs://?";
}

const char* EventName(rdma_cm_event_type t) {
  return rdma_event_str(t);
}

// What a connecting thread waits for: the address and route resolutions.
struct ConnectWait {
  std::mutex mu;
  std::condition_variable cv;
  bool addr = false, route = false;
  Status error;
  std::shared_ptr<VerbsConnection> conn;  // set once the queue pair exists

  bool Wait(bool ConnectWait::*flag, std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lk(mu);
    return cv.wait_until(lk, deadline, [&] { return this->*flag || !error.ok(); }) && error.ok();
  }
};

class VerbsTransport final : public Transport {
 public:
  VerbsTransport(std::shared_ptr<VerbsCm> cm, const TransportOptions& o)
      : cm_(std::move(cm)), max_payload_(o.max_payload), spin_(o.spin) {}
  ~VerbsTransport() override { Shutdown(); }

  Result<Uri> Listen(const Uri& uri, Handler handler) override {
    auto addrs = ResolveAddresses(uri, true);
    if (!addrs.ok()) return addrs.status();
    sockaddr_storage* addr = &addrs->front();
    rdma_cm_id* lid = nullptr;
    if (rdma_create_id(cm_->channel(), &lid, nullptr, RDMA_PS_TCP) != 0)
      return Status::FromErrno("rdma_create_id");
    if (rdma_bind_addr(lid, reinterpret_cast<sockaddr*>(addr)) != 0 || rdma_listen(lid, 128) != 0) {
      Status s = Status::FromErrno(("listen on " + uri.ToString()).c_str());
      rdma_destroy_id(lid);
      return s;
    }
    if (!lid->verbs) {
      // Bound to a wildcard address: fine for librdmacm, but no device is known yet.
      spdlog::info("{}: listening on every RDMA device", uri.ToString());
    }
    Uri bound = uri;
    bound.port = ntohs(rdma_get_src_port(lid));
    cm_->Add(lid, [this, handler](const CmEvent& ev) {
      if (ev.type == RDMA_CM_EVENT_CONNECT_REQUEST) Accept(ev, handler);
    });
    std::lock_guard lk(mu_);
    listeners_.push_back(lid);
    return bound;
  }

  Result<ConnectionPtr> Connect(const Uri& uri, Handler handler,
                                std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto dsts = ResolveAddresses(uri, false);
    if (!dsts.ok()) return dsts.status();
    sockaddr_storage* dst = &dsts->front();
    rdma_cm_id* id = nullptr;
    if (rdma_create_id(cm_->channel(), &id, nullptr, RDMA_PS_TCP) != 0)
      return Status::FromErrno("rdma_create_id");
    auto wait = std::make_shared<ConnectWait>();
    cm_->Add(id, [wait](const CmEvent& ev) {
      std::shared_ptr<VerbsConnection> conn;
      {
        std::lock_guard lk(wait->mu);
        switch (ev.type) {
          case RDMA_CM_EVENT_ADDR_RESOLVED:
            wait->addr = true;
            break;
          case RDMA_CM_EVENT_ROUTE_RESOLVED:
            wait->route = true;
            break;
          case RDMA_CM_EVENT_ESTABLISHED:
            conn = wait->conn;
            break;
          default:  // errors, rejection, disconnect
            wait->error =
                Status::Error(ev.status < 0 ? -ev.status : ECONNREFUSED, EventName(ev.type));
            conn = wait->conn;
            break;
        }
        wait->cv.notify_all();
      }
      if (!conn) return;
      if (ev.type == RDMA_CM_EVENT_ESTABLISHED)
        conn->OnEstablished();
      else
        conn->Close(Status::Error(ECONNRESET, std::string("peer: ") + EventName(ev.type)));
    });
    const int ms = static_cast<int>(std::max<int64_t>(1, timeout.count()));
    auto fail = [&](const Status& s) -> Status {
      std::shared_ptr<VerbsConnection> conn;
      {
        std::lock_guard lk(wait->mu);
        conn = wait->conn;
      }
      if (conn) {
        conn->Close(s);  // it owns the id now
      } else {
        cm_->Remove(id);
        rdma_destroy_id(id);
      }
      return Status::Error(s.code(), "connect to " + uri.ToString() + ": " + s.reason());
    };
    if (rdma_resolve_addr(id, nullptr, reinterpret_cast<sockaddr*>(dst), ms) != 0)
      return fail(Status::FromErrno("rdma_resolve_addr"));
    if (!wait->Wait(&ConnectWait::addr, deadline))
      return fail(wait->error.ok() ? Status::Error(ETIMEDOUT, "address resolution timed out")
                                   : wait->error);
    auto device = GetDevice(id->verbs);
    if (!device.ok()) return fail(device.status());
    auto conn = std::make_shared<VerbsConnection>(*device, cm_, id, uri.ToString(),
                                                  std::move(handler), max_payload_, false);
    {
      std::lock_guard lk(wait->mu);
      wait->conn = conn;
    }
    if (Status s = conn->Setup(); !s.ok()) return fail(s);
    if (rdma_resolve_route(id, ms) != 0) return fail(Status::FromErrno("rdma_resolve_route"));
    if (!wait->Wait(&ConnectWait::route, deadline))
      return fail(wait->error.ok() ? Status::Error(ETIMEDOUT, "route resolution timed out")
                                   : wait->error);
    rdma_conn_param param{};
    param.initiator_depth = static_cast<uint8_t>((*device)->max_rd_atomic());
    param.responder_resources = static_cast<uint8_t>((*device)->max_rd_atomic());
    param.retry_count = 7;
    param.rnr_retry_count = 7;
    if (rdma_connect(id, &param) != 0) return fail(Status::FromErrno("rdma_connect"));
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    Status s = conn->WaitEstablished(std::max(left, std::chrono::milliseconds(1)));
    if (!s.ok()) {
      std::lock_guard lk(wait->mu);
      if (!wait->error.ok()) s = wait->error;
    }
    if (!s.ok()) return fail(s);
    return ConnectionPtr(conn);
  }

  void Shutdown() override {
    std::vector<rdma_cm_id*> listeners;
    std::map<ibv_context*, std::shared_ptr<VerbsDevice>> devices;
    std::vector<std::weak_ptr<VerbsConnection>> conns;
    {
      std::lock_guard lk(mu_);
      if (shut_) return;
      shut_ = true;
      listeners.swap(listeners_);
      devices.swap(devices_);
      conns.swap(accepted_);
    }
    for (rdma_cm_id* lid : listeners) {
      cm_->Remove(lid);
      rdma_destroy_id(lid);
    }
    for (auto& w : conns)
      if (auto c = w.lock()) c->Close(Status::Error(ESHUTDOWN, "transport shut down"));
    for (auto& [ctx, d] : devices) d->Stop();
  }

 private:
  Result<std::shared_ptr<VerbsDevice>> GetDevice(ibv_context* ctx) {
    if (!ctx) return Status::Error(ENODEV, "no RDMA device for this address");
    std::lock_guard lk(mu_);
    if (shut_) return Status::Error(ESHUTDOWN, "transport shut down");
    if (auto it = devices_.find(ctx); it != devices_.end()) return it->second;
    auto d = VerbsDevice::Open(ctx, spin_);
    if (!d.ok()) return d.status();
    devices_[ctx] = *d;
    return *d;
  }

  // CM thread: a connection request on a listener.
  void Accept(const CmEvent& ev, const Handler& handler) {
    rdma_cm_id* id = ev.id;
    const std::string peer = AddrToUri(rdma_get_peer_addr(id));
    auto device = GetDevice(id->verbs);
    if (!device.ok()) {
      spdlog::warn("{}: refusing connection: {}", peer, device.status().ToString());
      rdma_reject(id, nullptr, 0);
      rdma_destroy_id(id);
      return;
    }
    auto conn =
        std::make_shared<VerbsConnection>(*device, cm_, id, peer, handler, max_payload_, true);
    if (Status s = conn->Setup(); !s.ok()) {
      spdlog::warn("{}: refusing connection: {}", peer, s.ToString());
      rdma_reject(id, nullptr, 0);
      conn->Close(s);
      return;
    }
    // The route holds the connection until it is closed (EndClose removes the route).
    cm_->Add(id, [conn, on_accept = handler.on_accept](const CmEvent& e) {
      if (e.type == RDMA_CM_EVENT_ESTABLISHED) {
        if (on_accept) on_accept(conn);
        if (conn->IsOpen()) conn->OnEstablished();
      } else if (e.type == RDMA_CM_EVENT_DISCONNECTED || e.type == RDMA_CM_EVENT_REJECTED ||
                 e.type == RDMA_CM_EVENT_CONNECT_ERROR || e.type == RDMA_CM_EVENT_UNREACHABLE ||
                 e.type == RDMA_CM_EVENT_DEVICE_REMOVAL) {
        conn->Close(Status::Error(ECONNRESET, std::string("peer: ") + EventName(e.type)));
      }
    });
    {
      std::lock_guard lk(mu_);
      std::erase_if(accepted_, [](const auto& w) { return w.expired(); });
      accepted_.push_back(conn);
    }
    rdma_conn_param param{};
    param.initiator_depth =
        std::min<uint8_t>(ev.initiator_depth, static_cast<uint8_t>((*device)->max_rd_atomic()));
    param.responder_resources =
        std::min<uint8_t>(ev.responder_resources, static_cast<uint8_t>((*device)->max_rd_atomic()));
    param.rnr_retry_count = 7;
    if (rdma_accept(id, &param) != 0) conn->Close(Status::FromErrno("rdma_accept"));
  }

  const std::shared_ptr<VerbsCm> cm_;
  const uint32_t max_payload_;
  const std::chrono::microseconds spin_;
  std::mutex mu_;
  std::map<ibv_context*, std::shared_ptr<VerbsDevice>> devices_;  // GUARDED_BY(mu_)
  std::vector<rdma_cm_id*> listeners_;                            // GUARDED_BY(mu_)
  std::vector<std::weak_ptr<VerbsConnection>> accepted_;          // GUARDED_BY(mu_)
  bool shut_ = false;                                             // GUARDED_BY(mu_)
};

}  // namespace

Result<std::unique_ptr<Transport>> CreateVerbsTransport(const TransportOptions& options) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list) ibv_free_device_list(list);
  if (n <= 0)
    return Status::Error(ENOTSUP, "verbs: no RDMA device on this host (ibv_get_device_list)");
  auto cm = VerbsCm::Open();
  if (!cm.ok()) return cm.status();
  return std::unique_ptr<Transport>(std::make_unique<VerbsTransport>(*cm, options));
}

}  // namespace pohmelfs::transport
