#include "transport/ofi/ofi_transport.h"

#include <rdma/fi_errno.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "transport/ofi/ofi_connection.h"
#include "transport/ofi/ofi_domain.h"
#include "transport/ofi/ofi_rdm.h"

namespace pohmelfs::transport {
namespace {

using ofi::FiError;
using ofi::OfiConnection;
using ofi::OfiDomain;
using ofi::RdmConnection;
using ofi::RdmControl;
using ofi::RdmEndpoint;

constexpr uint32_t kFiVersion = FI_VERSION(1, 9);

// Frees an fi_info list when it goes out of scope.
struct InfoDeleter {
  void operator()(fi_info* i) const { fi_freeinfo(i); }
};
using InfoPtr = std::unique_ptr<fi_info, InfoDeleter>;

// What the backend asks of a provider: connected (MSG) endpoints with messages and RMA, or
// reliable datagram (RDM) ones with tagged messages and RMA, on which connections are emulated
// (ofi_rdm.h).
InfoPtr Hints(const std::string& provider, bool rdm) {
  InfoPtr hints(fi_allocinfo());
  if (!hints) return hints;
  hints->caps = rdm ? FI_TAGGED | FI_RMA : FI_MSG | FI_RMA;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;  // every operation's context is an fi_context2
  hints->ep_attr->type = rdm ? FI_EP_RDM : FI_EP_MSG;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->fabric_attr->prov_name = strdup(provider.c_str());
  return hints;
}

Result<InfoPtr> GetInfo(const std::string& provider, const Uri& uri, bool listen, bool rdm) {
  InfoPtr hints = Hints(provider, rdm);
  if (!hints) return Status::Error(ENOMEM, "fi_allocinfo");
  const std::string port = std::to_string(uri.port);
  fi_info* info = nullptr;
  int rc = fi_getinfo(kFiVersion, uri.host.c_str(), port.c_str(), listen ? FI_SOURCE : 0,
                      hints.get(), &info);
  if (rc == -FI_ENODATA)
    return Status::Error(ENOTSUP, "libfabric provider '" + provider + "' has no " +
                                      (rdm ? "RDM" : "connected") + " endpoints with RMA for " +
                                      uri.ToString());
  if (rc) return FiError(("fi_getinfo " + uri.ToString()).c_str(), rc);
  return InfoPtr(info);
}

class OfiTransport final : public Transport {
 public:
  OfiTransport(std::string provider, bool rdm, const TransportOptions& o)
      : provider_(std::move(provider)), rdm_(rdm), max_payload_(o.max_payload), spin_(o.spin) {}
  ~OfiTransport() override { Shutdown(); }

  Result<Uri> Listen(const Uri& uri, Handler handler) override {
    if (rdm_) return ListenRdm(uri, handler);
    auto info = GetInfo(provider_, uri, true, false);
    if (!info.ok()) return info.status();
    auto domain = GetDomain(info->get());
    if (!domain.ok()) return domain.status();
    fid_pep* pep = nullptr;
    int rc = fi_passive_ep((*domain)->fabric(), info->get(), &pep, nullptr);
    if (rc) return FiError("fi_passive_ep", rc);
    rc = fi_pep_bind(pep, &(*domain)->eq()->fid, 0);
    if (rc == 0) rc = fi_listen(pep);
    if (rc) {
      fi_close(&pep->fid);
      return FiError(("listen on " + uri.ToString()).c_str(), rc);
    }
    sockaddr_storage bound{};
    size_t len = sizeof(bound);
    rc = fi_getname(&pep->fid, &bound, &len);
    if (rc) {
      fi_close(&pep->fid);
      return FiError("fi_getname", rc);
    }
    std::weak_ptr<OfiDomain> weak = *domain;
    OfiDomain::CmHandler cm;
    cm.on_connreq = [this, weak, pep, handler](fi_info* req) {
      if (auto d = weak.lock()) Accept(d, pep, req, handler);
    };
    (*domain)->AddCm(&pep->fid, std::move(cm));
    {
      std::lock_guard lk(mu_);
      peps_.push_back({pep, *domain});
    }
    return ParseUri(ofi::SockaddrToUri(provider_, &bound));
  }

  Result<ConnectionPtr> Connect(const Uri& uri, Handler handler,
                                std::chrono::milliseconds timeout) override {
    if (rdm_) return ConnectRdm(uri, std::move(handler), timeout);
    auto info = GetInfo(provider_, uri, false, false);
    if (!info.ok()) return info.status();
    auto domain = GetDomain(info->get());
    if (!domain.ok()) return domain.status();
    fid_ep* ep = nullptr;
    int rc = fi_endpoint((*domain)->domain(), info->get(), &ep, nullptr);
    if (rc) return FiError("fi_endpoint", rc);
    auto conn = std::make_shared<OfiConnection>(*domain, ep, uri.ToString(), std::move(handler),
                                                max_payload_, false);
    if (Status s = conn->Setup(); !s.ok()) return s;
    Track(*domain, conn, nullptr);
    rc = fi_connect(ep, (*info)->dest_addr, nullptr, 0);
    if (rc) {
      Status s = FiError(("connect to " + uri.ToString()).c_str(), rc);
      conn->Close(s);
      return s;
    }
    Status s = conn->WaitEstablished(timeout);
    if (!s.ok()) return Status::Error(s.code(), "connect to " + uri.ToString() + ": " + s.reason());
    return ConnectionPtr(conn);
  }

  void Shutdown() override {
    std::vector<Pep> peps;
    std::map<std::string, std::shared_ptr<OfiDomain>> domains;
    std::vector<std::shared_ptr<RdmEndpoint>> listeners;
    std::map<const OfiDomain*, std::shared_ptr<RdmEndpoint>> clients;
    std::set<std::shared_ptr<RdmConnection>> rdm_conns;
    {
      std::lock_guard ck(client_mu_);  // no client endpoint is being opened
      std::lock_guard lk(mu_);
      if (shut_) return;
      shut_ = true;
      peps.swap(peps_);
      domains.swap(domains_);
      listeners.swap(rdm_listeners_);
      clients.swap(rdm_clients_);
      rdm_conns.swap(rdm_conns_);
    }
    for (auto& p : peps) {
      p.domain->RemoveCm(&p.pep->fid);
      fi_close(&p.pep->fid);
    }
    for (auto& l : listeners) l->Unlisten(0);
    for (const auto& c : rdm_conns) c->Close(Status::Error(ESHUTDOWN, "transport shut down"));
    for (auto& [name, d] : domains) {
      d->CloseAll(Status::Error(ESHUTDOWN, "transport shut down"));
      d->Stop();
    }
    // RDM endpoints close now that nothing progresses them (ofi_rdm.h); one still used by a
    // connection the layer above holds closes when that goes.
    listeners.clear();
    clients.clear();
  }

 private:
  struct Pep {
    fid_pep* pep;
    std::shared_ptr<OfiDomain> domain;
  };

  // One domain per (fabric, domain) name: connections on it share registrations.
  Result<std::shared_ptr<OfiDomain>> GetDomain(const fi_info* info) {
    const std::string key = std::string(info->fabric_attr->name ? info->fabric_attr->name : "") +
                            "/" + (info->domain_attr->name ? info->domain_attr->name : "");
    std::lock_guard lk(mu_);
    if (shut_) return Status::Error(ESHUTDOWN, "transport shut down");
    if (auto it = domains_.find(key); it != domains_.end()) return it->second;
    auto d = OfiDomain::Open(provider_, info, spin_);
    if (!d.ok()) return d.status();
    domains_[key] = *d;
    return *d;
  }

  // Routes the endpoint's CM events to conn; the handler holds conn until it is finished.
  // on_accept (listeners) runs on the CM thread before any message is delivered.
  void Track(const std::shared_ptr<OfiDomain>& domain, const std::shared_ptr<OfiConnection>& conn,
             const std::function<void(const ConnectionPtr&)>& on_accept) {
    OfiDomain::CmHandler cm;
    cm.on_connected = [conn, on_accept] {
      if (on_accept) on_accept(conn);
      if (conn->IsOpen()) conn->OnEstablished();
    };
    cm.on_shutdown = [conn](const Status& why) { conn->Close(why); };
    domain->AddCm(&conn->ep()->fid, std::move(cm));
  }

  // CM thread: a connection request on a listener.
  void Accept(const std::shared_ptr<OfiDomain>& domain, fid_pep* pep, fi_info* req,
              const Handler& handler) {
    InfoPtr info(req);
    const std::string peer = ofi::SockaddrToUri(provider_, info->dest_addr);
    fid_ep* ep = nullptr;
    int rc = fi_endpoint(domain->domain(), info.get(), &ep, nullptr);
    if (rc) {
      spdlog::warn("{}: refusing connection: {}", peer, FiError("fi_endpoint", rc).ToString());
      fi_reject(pep, info->handle, nullptr, 0);
      return;
    }
    auto conn = std::make_shared<OfiConnection>(domain, ep, peer, handler, max_payload_, true);
    if (Status s = conn->Setup(); !s.ok()) {
      spdlog::warn("{}: refusing connection: {}", peer, s.ToString());
      fi_reject(pep, info->handle, nullptr, 0);
      return;
    }
    Track(domain, conn, handler.on_accept);
    rc = fi_accept(ep, nullptr, 0);
    if (rc) conn->Close(FiError("fi_accept", rc));
  }

  // RDM: a listener's endpoint, shared by the connections it accepts; CONNECTs come to id 0.
  Result<Uri> ListenRdm(const Uri& given, const Handler& handler) {
    Uri uri = given;
    auto info = GetInfo(provider_, uri, true, true);
    if (!info.ok()) return info.status();
    if ((*info)->addr_format == FI_ADDR_STR && uri.port == 0) {
      // A name (shm's "fi_ns://host:port"), not a socket: nothing picks a free port for us.
      uri.port = PickNamePort(uri.host);
      info = GetInfo(provider_, uri, true, true);
      if (!info.ok()) return info.status();
    }
    auto domain = GetDomain(info->get());
    if (!domain.ok()) return domain.status();
    auto ep = RdmEndpoint::Open(*domain, info->get());
    if (!ep.ok())
      return Status::Error(ep.code(), "listen on " + uri.ToString() + ": " + ep.status().reason());
    {
      // Kept until shutdown even if what follows fails: an enabled endpoint is closed only
      // once the progress thread has stopped.
      std::lock_guard lk(mu_);
      rdm_listeners_.push_back(*ep);
    }
    std::weak_ptr<RdmEndpoint> weak = *ep;
    POHMELFS_RETURN_IF_ERROR((*ep)->Listen(0, [this, weak, handler](const RdmControl& m) {
      if (auto e = weak.lock(); e && m.kind == RdmControl::kConnect) AcceptRdm(e, m, handler);
    }));
    return ParseUri((*ep)->Uri());
  }

  // A port for a name-addressed listener asked for port 0: from this process's id and a
  // counter, so that listeners of one process never collide, and those of others rarely.
  // A name whose shared-memory file exists is skipped: it belongs to a live listener, or to
  // one that was killed and left its region behind (a reused process id would pick it again).
  uint16_t PickNamePort(const std::string& host) {
    static std::atomic<uint32_t> next{0};
    uint16_t port = 0;
    for (int tries = 0; tries < 64; tries++) {
      const uint32_t n = static_cast<uint32_t>(getpid()) * 131u + next++;
      port = static_cast<uint16_t>(20000 + n % 40000);
      const std::string file = "/dev/shm/" + host + ":" + std::to_string(port);
      if (access(file.c_str(), F_OK) != 0) break;
    }
    return port;
  }

  // Progress thread: a CONNECT on a listener.
  void AcceptRdm(const std::shared_ptr<RdmEndpoint>& ep, const RdmControl& m,
                 const Handler& handler) {
    if (m.name_len == 0 || m.sender_id == 0 || (m.sender_id & RdmEndpoint::kControlBit)) {
      spdlog::warn("ofi rdm: malformed CONNECT ignored");
      return;
    }
    if (ep->domain()->string_addr() &&
        strnlen(reinterpret_cast<const char*>(m.name), m.name_len) == m.name_len) {
      spdlog::warn("ofi rdm: CONNECT with an unterminated address ignored");
      return;
    }
    const std::string peer =
        ofi::AddressToUri(provider_, ep->domain()->string_addr(), m.name, m.name_len);
    auto addr = ep->Insert(m.name);
    if (!addr.ok()) {
      spdlog::warn("{}: refusing connection: {}", peer, addr.status().ToString());
      return;
    }
    auto conn =
        std::make_shared<RdmConnection>(ep, *addr, m.sender_id, peer, handler, max_payload_, true);
    if (Status s = conn->Setup(); !s.ok()) {
      spdlog::warn("{}: refusing connection: {}", peer, s.ToString());
      conn->Close(s);
      return;
    }
    if (!TrackRdm(ep->domain(), conn)) return;
    if (handler.on_accept) handler.on_accept(conn);
    if (!conn->IsOpen()) return;  // refused by the layer above
    RdmControl accept;
    accept.kind = RdmControl::kAccept;
    accept.sender_id = conn->id();
    std::weak_ptr<RdmConnection> weak = conn;
    Status s = ep->SendControl(*addr, m.sender_id, accept, [weak](const Status& st) {
      if (auto c = weak.lock()) c->Close(st);
    });
    if (!s.ok()) {
      conn->Close(s);
      return;
    }
    if (conn->IsOpen()) conn->OnEstablished();
  }

  Result<ConnectionPtr> ConnectRdm(const Uri& uri, Handler handler,
                                   std::chrono::milliseconds timeout) {
    auto info = GetInfo(provider_, uri, false, true);
    if (!info.ok()) return info.status();
    auto domain = GetDomain(info->get());
    if (!domain.ok()) return domain.status();
    auto ep = ClientEndpoint(*domain, info->get());
    if (!ep.ok()) return ep.status();
    auto addr = (*ep)->Insert((*info)->dest_addr);
    if (!addr.ok()) return addr.status();
    auto conn = std::make_shared<RdmConnection>(*ep, *addr, 0, uri.ToString(), std::move(handler),
                                                max_payload_, false);
    if (Status s = conn->Setup(); !s.ok()) {
      conn->Close(s);
      return s;
    }
    if (!TrackRdm(*domain, conn)) return Status::Error(ESHUTDOWN, "transport shut down");
    RdmControl req;
    req.kind = RdmControl::kConnect;
    req.sender_id = conn->id();
    const auto& name = (*ep)->name();
    req.name_len = static_cast<uint16_t>(name.size());
    std::memcpy(req.name, name.data(), name.size());
    std::weak_ptr<RdmConnection> weak = conn;
    Status s = (*ep)->SendControl(*addr, 0, req, [weak](const Status& st) {
      if (auto c = weak.lock()) c->Close(st);
    });
    if (s.ok()) s = conn->WaitEstablished(timeout);
    if (!s.ok()) {
      conn->Close(s);
      return Status::Error(s.code(), "connect to " + uri.ToString() + ": " + s.reason());
    }
    return ConnectionPtr(conn);
  }

  // The endpoint this transport's client connections on domain share (opened on first use).
  Result<std::shared_ptr<RdmEndpoint>> ClientEndpoint(const std::shared_ptr<OfiDomain>& domain,
                                                      const fi_info* info) {
    // Opening waits for the progress thread, which may itself wait for mu_ (TrackRdm): only
    // client_mu_, which that thread never takes, is held meanwhile.
    std::lock_guard ck(client_mu_);
    {
      std::lock_guard lk(mu_);
      if (shut_) return Status::Error(ESHUTDOWN, "transport shut down");
      if (auto it = rdm_clients_.find(domain.get()); it != rdm_clients_.end()) return it->second;
    }
    auto ep = RdmEndpoint::Open(domain, info);
    if (!ep.ok()) return ep.status();
    std::lock_guard lk(mu_);
    // Shutdown takes client_mu_ before it empties the map: it has not run yet.
    rdm_clients_[domain.get()] = *ep;
    return *ep;
  }

  // Holds conn while it is open (nothing else may: an RDM connection has no endpoint of its own
  // to keep it), closes it at Shutdown and gives it keepalive ticks. False (conn closed) after
  // Shutdown.
  bool TrackRdm(const std::shared_ptr<OfiDomain>& domain,
                const std::shared_ptr<RdmConnection>& conn) {
    {
      std::lock_guard lk(mu_);
      if (shut_) {
        conn->Close(Status::Error(ESHUTDOWN, "transport shut down"));
        return false;
      }
      rdm_conns_.insert(conn);
    }
    std::weak_ptr<RdmConnection> weak = conn;
    domain->AddTicker([this, weak] {
      auto c = weak.lock();
      if (c && c->Tick()) return true;
      std::lock_guard lk(mu_);
      if (c) rdm_conns_.erase(c);  // closed: the progress engine keeps it until it is drained
      return false;
    });
    return true;
  }

  const std::string provider_;
  const bool rdm_;
  const uint32_t max_payload_;
  const std::chrono::microseconds spin_;
  std::mutex client_mu_;  // serializes opening client endpoints (taken before mu_)
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<OfiDomain>> domains_;             // GUARDED_BY(mu_)
  std::vector<Pep> peps_;                                                 // GUARDED_BY(mu_)
  std::vector<std::shared_ptr<RdmEndpoint>> rdm_listeners_;               // GUARDED_BY(mu_)
  std::map<const OfiDomain*, std::shared_ptr<RdmEndpoint>> rdm_clients_;  // GUARDED_BY(mu_)
  std::set<std::shared_ptr<RdmConnection>> rdm_conns_;                    // GUARDED_BY(mu_)
  bool shut_ = false;                                                     // GUARDED_BY(mu_)
};

}  // namespace

Result<std::unique_ptr<Transport>> CreateOfiTransport(const std::string& provider,
                                                      const TransportOptions& options) {
  // Probe once so that a missing provider is a clear error at creation, not at first use.
  // Connected endpoints are preferred; a provider with only reliable datagram ones (tcp;ofi_rxm,
  // shm) gets emulated connections.
  for (bool rdm : {false, true}) {
    InfoPtr hints = Hints(provider, rdm);
    if (!hints) return Status::Error(ENOMEM, "fi_allocinfo");
    fi_info* info = nullptr;
    if (fi_getinfo(kFiVersion, nullptr, nullptr, 0, hints.get(), &info) == 0) {
      fi_freeinfo(info);
      return std::unique_ptr<Transport>(std::make_unique<OfiTransport>(provider, rdm, options));
    }
  }
  return Status::Error(ENOTSUP, "libfabric provider '" + provider +
                                    "' is not available with RMA on connected or reliable "
                                    "datagram endpoints");
}

}  // namespace pohmelfs::transport
