#include "transport/ofi/ofi_domain.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <rdma/fi_errno.h>
#include <spdlog/spdlog.h>

#include <cstring>

#include "transport/ofi/ofi_connection.h"

namespace pohmelfs::transport::ofi {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kCompletionBatch = 32;
// Sleeps in fi_cq_sread / fi_eq_sread are cut at this, so that Stop is seen.
constexpr int kSleepMs = 100;
// A retired connection whose operations never all complete is freed after this.
constexpr auto kRetireBound = std::chrono::seconds(10);

}  // namespace

std::string SockaddrToUri(const std::string& provider, const void* addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  const auto* sa = static_cast<const sockaddr*>(addr);
  if (sa->sa_family == AF_INET) {
    const auto* a = static_cast<const sockaddr_in*>(addr);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return "ofi+" + provider + "://" + host + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    const auto* a = static_cast<const sockaddr_in6*>(addr);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return "ofi+" + provider + "://[" + host + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  return "ofi+" + provider + "://?";
}

Status FiError(const char* what, int rc) {
  const int err = rc < 0 ? -rc : rc;
  // libfabric's own codes (FI_ETRUNC and up) have no errno: report them as EIO.
  const int code = err > 0 && err < FI_ERRNO_OFFSET ? err : EIO;
  return Status::Error(code, std::string(what) + ": " + fi_strerror(err));
}

OfiMemoryRegion::OfiMemoryRegion(std::shared_ptr<OfiDomain> domain, fid_mr* mr, void* base,
                                 size_t len)
    : domain_(std::move(domain)), mr_(mr), base_(base), len_(len) {}

OfiMemoryRegion::~OfiMemoryRegion() {
  if (mr_) fi_close(&mr_->fid);
}

uint64_t OfiMemoryRegion::key() const {
  return fi_mr_key(mr_);
}

void* OfiMemoryRegion::desc() const {
  return fi_mr_desc(mr_);
}

uint64_t OfiMemoryRegion::RemoteAddress(const void* p) const {
  const auto at = reinterpret_cast<uintptr_t>(p);
  return domain_->virt_addr() ? at : at - reinterpret_cast<uintptr_t>(base_);
}

Result<std::shared_ptr<OfiDomain>> OfiDomain::Open(const std::string& provider, const fi_info* info,
                                                   std::chrono::microseconds spin) {
  std::shared_ptr<OfiDomain> d(new OfiDomain());
  d->provider_ = provider;
  d->spin_ = spin;
  d->virt_addr_ = (info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
  d->prov_key_ = (info->domain_attr->mr_mode & FI_MR_PROV_KEY) != 0;
  d->max_msg_size_ = info->ep_attr->max_msg_size;
  int rc = fi_fabric(info->fabric_attr, &d->fabric_, nullptr);
  if (rc) return FiError("fi_fabric", rc);
  fi_eq_attr eq_attr{};
  eq_attr.wait_obj = FI_WAIT_UNSPEC;
  rc = fi_eq_open(d->fabric_, &eq_attr, &d->eq_, nullptr);
  if (rc) return FiError("fi_eq_open", rc);
  rc = fi_domain(d->fabric_, const_cast<fi_info*>(info), &d->domain_, nullptr);
  if (rc) return FiError("fi_domain", rc);
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_DATA;
  cq_attr.wait_obj = FI_WAIT_UNSPEC;
  cq_attr.size = 4096;
  rc = fi_cq_open(d->domain_, &cq_attr, &d->cq_, nullptr);
  if (rc) return FiError("fi_cq_open", rc);
  d->progress_ = std::thread([raw = d.get()] { raw->ProgressLoop(); });
  d->cm_ = std::thread([raw = d.get()] { raw->CmLoop(); });
  return d;
}

OfiDomain::~OfiDomain() {
  Stop();
  ReapRetired(true);
  if (cq_) fi_close(&cq_->fid);
  if (domain_) fi_close(&domain_->fid);
  if (eq_) fi_close(&eq_->fid);
  if (fabric_) fi_close(&fabric_->fid);
}

void OfiDomain::Stop() {
  if (stop_.exchange(true)) return;
  if (cq_) fi_cq_signal(cq_);
  if (progress_.joinable()) progress_.join();
  if (cm_.joinable()) cm_.join();
  // Closes posted before the stop still run (on this thread), and may post more.
  for (;;) {
    {
      std::lock_guard lk(mu_);
      if (tasks_.empty() && pump_.empty()) break;
    }
    RunTasks();
  }
  ReapRetired(true);
}

void OfiDomain::CloseAll(const Status& why) {
  std::vector<std::shared_ptr<CmHandler>> all;
  {
    std::lock_guard lk(mu_);
    for (const auto& [fid, h] : cm_handlers_) all.push_back(h);
  }
  for (const auto& h : all)
    if (h->on_shutdown) h->on_shutdown(why);
}

Result<fid_mr*> OfiDomain::RegisterRaw(void* addr, size_t len, uint64_t access) {
  fid_mr* mr = nullptr;
  // Without FI_MR_PROV_KEY the application picks the keys: a counter keeps them unique.
  const uint64_t key = prov_key_ ? 0 : next_key_++;
  int rc = fi_mr_reg(domain_, addr, len, access, 0, key, 0, &mr, nullptr);
  if (rc) return FiError("fi_mr_reg", rc);
  return mr;
}

Result<MemoryRegionPtr> OfiDomain::Register(void* addr, size_t len) {
  const auto k = std::make_pair(reinterpret_cast<uintptr_t>(addr), len);
  std::lock_guard lk(mr_mu_);
  if (auto it = mrs_.find(k); it != mrs_.end()) {
    if (auto live = it->second.lock()) return live;
  }
  auto mr = RegisterRaw(addr, len,
                        FI_SEND | FI_RECV | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE);
  if (!mr.ok()) return mr.status();
  MemoryRegionPtr region = std::make_shared<OfiMemoryRegion>(shared_from_this(), *mr, addr, len);
  mrs_[k] = region;
  // Forget expired entries now and then so the map does not grow with dead ranges.
  if (mrs_.size() > 1024) std::erase_if(mrs_, [](const auto& e) { return e.second.expired(); });
  return region;
}

void OfiDomain::Post(std::function<void()> task) {
  {
    std::lock_guard lk(mu_);
    tasks_.push_back(std::move(task));
  }
  fi_cq_signal(cq_);
}

void OfiDomain::AddCm(fid_t fid, CmHandler h) {
  std::lock_guard lk(mu_);
  cm_handlers_[fid] = std::make_shared<CmHandler>(std::move(h));
}

void OfiDomain::RemoveCm(fid_t fid) {
  std::lock_guard lk(mu_);
  cm_handlers_.erase(fid);
}

void OfiDomain::Retire(std::shared_ptr<OfiConnection> conn) {
  Post([this, conn = std::move(conn)]() mutable {
    retired_.push_back({std::move(conn), Clock::now()});
  });
}

void OfiDomain::WantPump(std::shared_ptr<OfiConnection> conn) {
  {
    std::lock_guard lk(mu_);
    pump_.push_back(std::move(conn));
  }
  fi_cq_signal(cq_);
}

void OfiDomain::RunTasks() {
  std::vector<std::function<void()>> tasks;
  std::vector<std::shared_ptr<OfiConnection>> pump;
  {
    std::lock_guard lk(mu_);
    tasks.swap(tasks_);
    pump.swap(pump_);
  }
  for (auto& t : tasks) t();
  for (auto& c : pump) c->Pump();
}

void OfiDomain::ReapRetired(bool all) {
  const auto now = Clock::now();
  std::erase_if(retired_, [&](const Retired& r) {
    return all || r.conn->outstanding() <= 0 || now - r.since > kRetireBound;
  });
}

void OfiDomain::Dispatch(OfiOp* op, size_t len, const Status& st) {
  switch (op->kind) {
    case OfiOp::Kind::kRecv:
      op->conn->OnRecv(op->slot, len, st);
      break;
    case OfiOp::Kind::kSend:
      op->conn->OnSendDone(op->slot, st);
      break;
    case OfiOp::Kind::kRma: {
      std::unique_ptr<OfiOp> own(op);
      own->conn->OnRmaDone();
      if (!st.ok() && own->conn->IsOpen()) own->conn->Close(st);
      if (own->done) own->done(st);
      break;
    }
  }
}

void OfiDomain::ProgressLoop() {
  fi_cq_data_entry ev[kCompletionBatch];
  auto last_busy = Clock::now();
  while (!stop_) {
    RunTasks();
    ssize_t n = fi_cq_read(cq_, ev, kCompletionBatch);
    if (n == -FI_EAGAIN && Clock::now() - last_busy >= spin_) {
      // Idle past the spin budget: sleep until a completion or a signal (Post, Stop).
      ReapRetired(false);
      n = fi_cq_sread(cq_, ev, kCompletionBatch, nullptr, kSleepMs);
    }
    if (n > 0 || n == -FI_EAVAIL) (void)published_.load(std::memory_order_acquire);
    if (n > 0) {
      for (ssize_t i = 0; i < n; i++)
        Dispatch(static_cast<OfiOp*>(ev[i].op_context), ev[i].len, Status::Ok());
      last_busy = Clock::now();
    } else if (n == -FI_EAVAIL) {
      fi_cq_err_entry err{};
      if (fi_cq_readerr(cq_, &err, 0) > 0 && err.op_context) {
        const int code = err.err == FI_ECANCELED ? ECANCELED : err.err;
        Dispatch(static_cast<OfiOp*>(err.op_context), 0, FiError("completion", code ? code : EIO));
      }
      last_busy = Clock::now();
    }
  }
}

void OfiDomain::CmLoop() {
  // A CM entry may carry connection data after it: room for some.
  alignas(fi_eq_cm_entry) uint8_t buf[sizeof(fi_eq_cm_entry) + 256];
  while (!stop_) {
    uint32_t event = 0;
    ssize_t n = fi_eq_sread(eq_, &event, buf, sizeof(buf), kSleepMs, 0);
    if (n == -FI_EAVAIL) {
      fi_eq_err_entry err{};
      if (fi_eq_readerr(eq_, &err, 0) <= 0) continue;
      std::shared_ptr<CmHandler> h;
      {
        std::lock_guard lk(mu_);
        if (auto it = cm_handlers_.find(err.fid); it != cm_handlers_.end()) h = it->second;
      }
      if (h && h->on_shutdown) h->on_shutdown(FiError("connection", err.err ? err.err : EIO));
      continue;
    }
    if (n < static_cast<ssize_t>(sizeof(fi_eq_cm_entry))) continue;  // timeout or short
    auto* e = reinterpret_cast<fi_eq_cm_entry*>(buf);
    std::shared_ptr<CmHandler> h;
    {
      std::lock_guard lk(mu_);
      if (auto it = cm_handlers_.find(e->fid); it != cm_handlers_.end()) h = it->second;
    }
    switch (event) {
      case FI_CONNREQ:
        if (h && h->on_connreq)
          h->on_connreq(e->info);
        else
          fi_freeinfo(e->info);
        break;
      case FI_CONNECTED:
        if (h && h->on_connected) h->on_connected();
        break;
      case FI_SHUTDOWN:
        if (h && h->on_shutdown)
          h->on_shutdown(Status::Error(ECONNRESET, "peer closed the connection"));
        break;
      default:
        break;
    }
  }
}

}  // namespace pohmelfs::transport::ofi
