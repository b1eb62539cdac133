#include "transport/ofi/ofi_domain.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <rdma/fi_errno.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>

#include <cstring>

#include "transport/framed/framed_connection.h"

namespace pohmelfs::transport::ofi {
namespace {

// fi_eq_sread is cut at this, so that Stop is seen.
constexpr int kCmSleepMs = 100;
constexpr auto kTickEvery = std::chrono::seconds(1);
// Nap mode: the progress thread's first nap after activity, and the longest.
constexpr std::chrono::microseconds kFirstNap{10};
constexpr std::chrono::microseconds kLongestNap{1000};

// Whether a completion queue can be waited on without spinning.
bool CqCanSleep(fid_cq* cq) {
  enum fi_wait_obj wait = FI_WAIT_UNSPEC;
  const int rc = fi_control(&cq->fid, FI_GETWAITOBJ, &wait);
  return !(rc == -FI_ENOSYS || (rc == 0 && (wait == FI_WAIT_YIELD || wait == FI_WAIT_NONE)));
}

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

std::string AddressToUri(const std::string& provider, bool string_addr, const void* addr,
                         size_t len) {
  if (!string_addr) return SockaddrToUri(provider, addr);
  std::string s(static_cast<const char*>(addr), strnlen(static_cast<const char*>(addr), len));
  constexpr std::string_view kNs = "fi_ns://";
  if (s.starts_with(kNs)) return "ofi+" + provider + "://" + s.substr(kNs.size());
  return "ofi+" + provider + ":" + s;
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
  std::shared_ptr<OfiDomain> d(new OfiDomain(spin));
  d->provider_ = provider;
  d->virt_addr_ = (info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
  d->prov_key_ = (info->domain_attr->mr_mode & FI_MR_PROV_KEY) != 0;
  d->local_mr_ = (info->domain_attr->mr_mode & FI_MR_LOCAL) != 0;
  d->max_msg_size_ = info->ep_attr->max_msg_size;
  d->saw_ = (info->tx_attr->msg_order & FI_ORDER_SAW) != 0;
  d->string_addr_ = info->addr_format == FI_ADDR_STR;
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
  // An idle process must sleep: a provider whose completion queue can only be waited on by
  // spinning (shm in libfabric 1.17: FI_GETWAITOBJ is not implemented, and its fi_cq_sread and
  // fi_eq_sread yield in a loop) is polled with naps instead.
  if (!CqCanSleep(d->cq_)) {
    fi_close(&d->cq_->fid);
    d->cq_ = nullptr;
    cq_attr.wait_obj = FI_WAIT_NONE;
    rc = fi_cq_open(d->domain_, &cq_attr, &d->cq_, nullptr);
    if (rc) return FiError("fi_cq_open (no wait object)", rc);
    d->nap_mode_ = true;
    d->nap_ = kFirstNap;
    d->PokeOnPublish();
    spdlog::info(
        "ofi+{}: the provider's queues cannot sleep; polling them with naps of {} to {} us",
        provider, kFirstNap.count(), kLongestNap.count());
  }
  d->StartProgress();
  d->cm_ = std::thread([raw = d.get()] { raw->CmLoop(); });
  return d;
}

OfiDomain::~OfiDomain() {
  Stop();
  if (cq_) fi_close(&cq_->fid);
  if (domain_) fi_close(&domain_->fid);
  if (eq_) fi_close(&eq_->fid);
  if (fabric_) fi_close(&fabric_->fid);
}

void OfiDomain::Stop() {
  {
    std::lock_guard lk(nap_mu_);  // a napping thread sees it at once
    stop_ = true;
  }
  nap_cv_.notify_all();
  if (cm_.joinable()) cm_.join();
  StopProgress();
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
  return registrations_.Get(addr, len, [this](void* a, size_t n) -> Result<MemoryRegionPtr> {
    auto mr = RegisterRaw(
        a, n, FI_SEND | FI_RECV | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE);
    if (!mr.ok()) return mr.status();
    return MemoryRegionPtr(std::make_shared<OfiMemoryRegion>(shared_from_this(), *mr, a, n));
  });
}

void OfiDomain::AddCm(fid_t fid, CmHandler h) {
  std::lock_guard lk(mu_);
  cm_handlers_[fid] = std::make_shared<CmHandler>(std::move(h));
}

void OfiDomain::RemoveCm(fid_t fid) {
  std::lock_guard lk(mu_);
  cm_handlers_.erase(fid);
}

void OfiDomain::Wake() {
  if (nap_mode_) {
    {
      std::lock_guard lk(nap_mu_);
      woken_ = true;
    }
    nap_cv_.notify_all();
    return;
  }
  if (cq_) fi_cq_signal(cq_);
}

// Any thread, after posting: what was posted (a request, say) is likely to be answered soon,
// so the naps start short again; a nap in progress ends.
void OfiDomain::Poked() {
  poked_ = true;
  if (in_nap_) Wake();
}

void OfiDomain::Nap(std::chrono::microseconds timeout) {
  // in_nap_ is set before poked_ is looked at, both sequentially consistent: a post either
  // sees in_nap_ and wakes the nap, or came before it and is seen by the predicate.
  in_nap_ = true;
  {
    std::unique_lock lk(nap_mu_);
    // Not stop_: the CM thread is joined before the progress thread, which StopProgress wakes.
    nap_cv_.wait_for(lk, timeout, [this] { return woken_ || poked_.load(); });
    woken_ = false;
  }
  in_nap_ = false;
}

int OfiDomain::Dispatch(ssize_t n) {
  if (n > 0) {
    AcquirePublished();
    for (ssize_t i = 0; i < n; i++) {
      auto* op = static_cast<TransferOp*>(events_[i].op_context);
      if (op->on_done)
        op->on_done(op, events_[i].len, Status::Ok());
      else
        op->conn->Complete(op, events_[i].len, Status::Ok());
    }
    return static_cast<int>(n);
  }
  if (n == -FI_EAVAIL) {
    fi_cq_err_entry err{};
    if (fi_cq_readerr(cq_, &err, 0) > 0 && err.op_context) {
      AcquirePublished();
      auto* op = static_cast<TransferOp*>(err.op_context);
      const Status st = FiError("completion", err.err ? err.err : EIO);
      if (op->on_done)
        op->on_done(op, 0, st);
      else
        op->conn->Complete(op, 0, st);
    }
    return 1;
  }
  return 0;  // -FI_EAGAIN, or a timeout of fi_cq_sread
}

int OfiDomain::PollCompletions() {
  const int n = Dispatch(fi_cq_read(cq_, events_, std::size(events_)));
  if (n > 0 && nap_mode_) nap_ = kFirstNap;
  return n;
}

int OfiDomain::WaitForCompletions(int timeout_ms) {
  if (!nap_mode_)
    return Dispatch(fi_cq_sread(cq_, events_, std::size(events_), nullptr, timeout_ms));
  // The provider progresses only when polled: poll, nap, poll again. Each quiet round doubles
  // the nap, so a busy period is answered within tens of microseconds and an idle one costs a
  // wake-up a millisecond.
  if (!slack_set_) {
    // Naps of tens of microseconds mean nothing with the default 50 us of timer slack.
    (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    slack_set_ = true;
  }
  if (poked_.exchange(false)) nap_ = kFirstNap;
  const std::chrono::microseconds budget = std::chrono::milliseconds(timeout_ms);
  Nap(std::min(nap_, budget));
  const int n = PollCompletions();
  if (n == 0 && !poked_) nap_ = std::min(nap_ * 2, kLongestNap);
  return n;
}

void OfiDomain::AddTicker(std::function<bool()> fn) {
  std::lock_guard lk(mu_);
  tickers_.push_back(std::move(fn));
}

void OfiDomain::RunTickers() {
  std::vector<std::function<bool()>> run;
  {
    std::lock_guard lk(mu_);
    run.swap(tickers_);
  }
  std::erase_if(run, [](const std::function<bool()>& f) { return !f(); });
  std::lock_guard lk(mu_);
  run.insert(run.end(), std::make_move_iterator(tickers_.begin()),
             std::make_move_iterator(tickers_.end()));
  tickers_.swap(run);
}

void OfiDomain::CmLoop() {
  // A CM entry may carry connection data after it: room for some.
  alignas(fi_eq_cm_entry) uint8_t buf[sizeof(fi_eq_cm_entry) + 256];
  auto last_tick = std::chrono::steady_clock::now();
  while (!stop_) {
    if (auto now = std::chrono::steady_clock::now(); now - last_tick >= kTickEvery) {
      last_tick = now;
      RunTickers();
    }
    uint32_t event = 0;
    ssize_t n;
    if (nap_mode_) {
      n = fi_eq_read(eq_, &event, buf, sizeof(buf), 0);
      if (n < 0 && n != -FI_EAVAIL) {  // nothing there (or an error that would repeat)
        std::unique_lock lk(nap_mu_);
        nap_cv_.wait_for(lk, std::chrono::milliseconds(kCmSleepMs),
                         [this] { return stop_.load(); });
        continue;
      }
    } else {
      n = fi_eq_sread(eq_, &event, buf, sizeof(buf), kCmSleepMs, 0);
    }
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
