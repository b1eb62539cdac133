#include "transport/ofi/ofi_transport.h"

#include <rdma/fi_errno.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cstring>
#include <map>
#include <mutex>

#include "transport/ofi/ofi_connection.h"
#include "transport/ofi/ofi_domain.h"

namespace pohmelfs::transport {
namespace {

using ofi::FiError;
using ofi::OfiConnection;
using ofi::OfiDomain;

constexpr uint32_t kFiVersion = FI_VERSION(1, 9);

// Frees an fi_info list when it goes out of scope.
struct InfoDeleter {
  void operator()(fi_info* i) const { fi_freeinfo(i); }
};
using InfoPtr = std::unique_ptr<fi_info, InfoDeleter>;

Result<InfoPtr> GetInfo(const std::string& provider, const Uri& uri, bool listen) {
  InfoPtr hints(fi_allocinfo());
  if (!hints) return Status::Error(ENOMEM, "fi_allocinfo");
  hints->caps = FI_MSG | FI_RMA;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;  // every operation's context is an fi_context2
  hints->ep_attr->type = FI_EP_MSG;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->fabric_attr->prov_name = strdup(provider.c_str());
  const std::string port = std::to_string(uri.port);
  fi_info* info = nullptr;
  int rc = fi_getinfo(kFiVersion, uri.host.c_str(), port.c_str(), listen ? FI_SOURCE : 0,
                      hints.get(), &info);
  if (rc == -FI_ENODATA)
    return Status::Error(ENOTSUP, "libfabric provider '" + provider +
                                      "' has no connected endpoints with RMA for " +
                                      uri.ToString());
  if (rc) return FiError(("fi_getinfo " + uri.ToString()).c_str(), rc);
  return InfoPtr(info);
}

class OfiTransport final : public Transport {
 public:
  OfiTransport(std::string provider, const TransportOptions& o)
      : provider_(std::move(provider)), max_payload_(o.max_payload), spin_(o.spin) {}
  ~OfiTransport() override { Shutdown(); }

  Result<Uri> Listen(const Uri& uri, Handler handler) override {
    auto info = GetInfo(provider_, uri, true);
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
    auto info = GetInfo(provider_, uri, false);
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
    {
      std::lock_guard lk(mu_);
      if (shut_) return;
      shut_ = true;
      peps.swap(peps_);
      domains.swap(domains_);
    }
    for (auto& p : peps) {
      p.domain->RemoveCm(&p.pep->fid);
      fi_close(&p.pep->fid);
    }
    for (auto& [name, d] : domains) {
      d->CloseAll(Status::Error(ESHUTDOWN, "transport shut down"));
      d->Stop();
    }
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

  const std::string provider_;
  const uint32_t max_payload_;
  const std::chrono::microseconds spin_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<OfiDomain>> domains_;  // GUARDED_BY(mu_)
  std::vector<Pep> peps_;                                      // GUARDED_BY(mu_)
  bool shut_ = false;                                          // GUARDED_BY(mu_)
};

}  // namespace

Result<std::unique_ptr<Transport>> CreateOfiTransport(const std::string& provider,
                                                      const TransportOptions& options) {
  // Probe once so that a missing provider is a clear error at creation, not at first use.
  InfoPtr hints(fi_allocinfo());
  hints->caps = FI_MSG | FI_RMA;
  hints->ep_attr->type = FI_EP_MSG;
  hints->fabric_attr->prov_name = strdup(provider.c_str());
  fi_info* info = nullptr;
  int rc = fi_getinfo(kFiVersion, nullptr, nullptr, 0, hints.get(), &info);
  if (rc) {
    return Status::Error(ENOTSUP, "libfabric provider '" + provider +
                                      "' is not available with connected endpoints and RMA (" +
                                      fi_strerror(-rc) + ")");
  }
  fi_freeinfo(info);
  return std::unique_ptr<Transport>(std::make_unique<OfiTransport>(provider, options));
}

}  // namespace pohmelfs::transport
