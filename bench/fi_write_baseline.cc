// fi-write-baseline: the smallest libfabric RMA write bandwidth loop, as the baseline of the
// fabric benchmark's rma-write test on the same provider. One process, two connected MSG
// endpoints, each in its own fabric and domain (as the two transports of
// `pohmelfs-bench fabric --loopback`): the main thread keeps a window of fi_write calls from a
// registered buffer to the peer's registered buffer going for --duration-ms per size and reads
// its completion queue; a second thread reads the target's completion queue, which is what
// progresses the target side on providers with manual progress (tcp). Both threads either poll
// (--comp spin, fabtests' default) or sleep in fi_cq_sread until a completion (--comp sread). No
// framing, no credits, no registration cache, no callbacks. Each size's data is compared with the
// target's buffer.
//
// Usage: fi-write-baseline [--provider tcp] [--min-size 4096] [--max-size 4194304] [--window 8]
//        [--duration-ms 500] [--delivery-complete] [--comp spin|sread] [--csv FILE]
// Thread-safety: the two threads use separate endpoints, domains and completion queues.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <sys/socket.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"

namespace pohmelfs::bench {
namespace {

constexpr uint32_t kFiVersion = FI_VERSION(1, 9);
constexpr auto kConnectTimeout = std::chrono::seconds(10);
constexpr auto kCheckTimeout = std::chrono::seconds(10);
constexpr double kMiB = 1024.0 * 1024.0;

struct Options {
  std::string provider = "tcp";
  std::string host = "127.0.0.1";
  std::string label;
  std::string csv;
  std::string comp = "spin";
  uint64_t min_size = 4096;
  uint64_t max_size = 4u << 20;
  uint64_t window = 8;
  uint64_t duration_ms = 500;
  bool delivery_complete = false;
};

template <typename T>
struct FidCloser {
  void operator()(T* f) const {
    if (f) fi_close(&f->fid);
  }
};
template <typename T>
using FidPtr = std::unique_ptr<T, FidCloser<T>>;

struct InfoDeleter {
  void operator()(fi_info* i) const { fi_freeinfo(i); }
};
using InfoPtr = std::unique_ptr<fi_info, InfoDeleter>;

Status FiError(const char* what, ssize_t rc) {
  const int err = static_cast<int>(rc < 0 ? -rc : rc);
  return Status::Error(err > 0 && err < FI_ERRNO_OFFSET ? err : EIO,
                       std::string(what) + ": " + fi_strerror(err));
}

#define FI_CHECK(call)                   \
  do {                                   \
    ssize_t _rc = (call);                \
    if (_rc) return FiError(#call, _rc); \
  } while (0)

Result<InfoPtr> GetInfo(const Options& o, const char* node, const char* service, uint64_t flags) {
  InfoPtr hints(fi_allocinfo());
  if (!hints) return Status::Error(ENOMEM, "fi_allocinfo");
  // The same hints as the ofi backend (transport/ofi/ofi_transport.cc), so that both get the
  // same provider configuration.
  hints->caps = FI_MSG | FI_RMA;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_MSG;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->fabric_attr->prov_name = strdup(o.provider.c_str());
  fi_info* info = nullptr;
  FI_CHECK(fi_getinfo(kFiVersion, node, service, flags, hints.get(), &info));
  return InfoPtr(info);
}

// One side: fabric, domain, event queue, completion queue and (later) its endpoint.
// Members are closed in reverse order: the registration and endpoint before the queues and the
// domain, the buffer freed last.
struct Side {
  std::vector<uint8_t> buf;
  FidPtr<fid_fabric> fabric;
  FidPtr<fid_domain> domain;
  FidPtr<fid_eq> eq;
  FidPtr<fid_cq> cq;
  FidPtr<fid_pep> pep;  // the target's listener
  FidPtr<fid_ep> ep;
  FidPtr<fid_mr> mr;
  bool virt_addr = true;
  bool connected = false;
};

Status OpenSide(const fi_info* info, Side* s) {
  fid_fabric* fabric = nullptr;
  FI_CHECK(fi_fabric(info->fabric_attr, &fabric, nullptr));
  s->fabric.reset(fabric);
  fi_eq_attr eq_attr{};
  eq_attr.wait_obj = FI_WAIT_UNSPEC;
  fid_eq* eq = nullptr;
  FI_CHECK(fi_eq_open(fabric, &eq_attr, &eq, nullptr));
  s->eq.reset(eq);
  fid_domain* domain = nullptr;
  FI_CHECK(fi_domain(fabric, const_cast<fi_info*>(info), &domain, nullptr));
  s->domain.reset(domain);
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_CONTEXT;
  cq_attr.wait_obj = FI_WAIT_UNSPEC;
  fid_cq* cq = nullptr;
  FI_CHECK(fi_cq_open(domain, &cq_attr, &cq, nullptr));
  s->cq.reset(cq);
  s->virt_addr = (info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
  return Status::Ok();
}

Status OpenEndpoint(const fi_info* info, Side* s) {
  fid_ep* ep = nullptr;
  FI_CHECK(fi_endpoint(s->domain.get(), const_cast<fi_info*>(info), &ep, nullptr));
  s->ep.reset(ep);
  FI_CHECK(fi_ep_bind(ep, &s->eq->fid, 0));
  FI_CHECK(fi_ep_bind(ep, &s->cq->fid, FI_TRANSMIT | FI_RECV));
  FI_CHECK(fi_enable(ep));
  return Status::Ok();
}

Status Register(Side* s, size_t len, uint64_t access, uint64_t key) {
  s->buf.assign(len, 0);
  fid_mr* mr = nullptr;
  FI_CHECK(fi_mr_reg(s->domain.get(), s->buf.data(), len, access, 0, key, 0, &mr, nullptr));
  s->mr.reset(mr);
  return Status::Ok();
}

// Reads one event of s->eq without blocking: the target accepts a connection request, either
// side notes FI_CONNECTED. Both event queues are polled in turn, so that neither side's
// connection manager waits for the other.
Status PollCm(Side* s, Side* target_for_accept) {
  alignas(fi_eq_cm_entry) uint8_t buf[sizeof(fi_eq_cm_entry) + 256];
  uint32_t event = 0;
  ssize_t n = fi_eq_read(s->eq.get(), &event, buf, sizeof(buf), 0);
  if (n == -FI_EAGAIN) return Status::Ok();
  if (n == -FI_EAVAIL) {
    fi_eq_err_entry err{};
    fi_eq_readerr(s->eq.get(), &err, 0);
    return FiError("connection", err.err ? err.err : EIO);
  }
  if (n < 0) return FiError("fi_eq_read", n);
  auto* e = reinterpret_cast<fi_eq_cm_entry*>(buf);
  if (event == FI_CONNREQ && target_for_accept) {
    InfoPtr req(e->info);
    POHMELFS_RETURN_IF_ERROR(OpenEndpoint(req.get(), target_for_accept));
    FI_CHECK(fi_accept(target_for_accept->ep.get(), nullptr, 0));
  } else if (event == FI_CONNECTED) {
    s->connected = true;
  }
  return Status::Ok();
}

Status Connect(const Options& o, Side* target, Side* initiator) {
  auto tinfo = GetInfo(o, o.host.c_str(), "0", FI_SOURCE);
  if (!tinfo.ok()) return tinfo.status();
  POHMELFS_RETURN_IF_ERROR(OpenSide(tinfo->get(), target));
  fid_pep* pep = nullptr;
  FI_CHECK(fi_passive_ep(target->fabric.get(), tinfo->get(), &pep, nullptr));
  target->pep.reset(pep);
  FI_CHECK(fi_pep_bind(pep, &target->eq->fid, 0));
  FI_CHECK(fi_listen(pep));
  sockaddr_storage bound{};
  size_t len = sizeof(bound);
  FI_CHECK(fi_getname(&pep->fid, &bound, &len));
  const uint16_t port =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  auto iinfo = GetInfo(o, o.host.c_str(), std::to_string(port).c_str(), 0);
  if (!iinfo.ok()) return iinfo.status();
  POHMELFS_RETURN_IF_ERROR(OpenSide(iinfo->get(), initiator));
  POHMELFS_RETURN_IF_ERROR(OpenEndpoint(iinfo->get(), initiator));
  FI_CHECK(fi_connect(initiator->ep.get(), (*iinfo)->dest_addr, nullptr, 0));
  const auto deadline = Clock::now() + kConnectTimeout;
  while (!(target->connected && initiator->connected)) {
    if (Clock::now() > deadline) return Status::Error(ETIMEDOUT, "connect timed out");
    POHMELFS_RETURN_IF_ERROR(PollCm(target, target));
    POHMELFS_RETURN_IF_ERROR(PollCm(initiator, nullptr));
  }
  return Status::Ok();
}

struct SizeResult {
  uint64_t iters = 0;
  double seconds = 0;
};

// The measured loop: a window of writes of buf[0, size) to the target's buf[0, size).
Result<SizeResult> WriteLoop(const Options& o, Side* in, const Side& target, size_t size) {
  std::vector<fi_context2> ctx(o.window);
  void* desc = fi_mr_desc(in->mr.get());
  const uint64_t raddr = target.virt_addr ? reinterpret_cast<uint64_t>(target.buf.data()) : 0;
  const uint64_t key = fi_mr_key(target.mr.get());
  uint64_t posted = 0, completed = 0;
  auto post = [&](fi_context2* c) -> ssize_t {
    if (!o.delivery_complete)
      return fi_write(in->ep.get(), in->buf.data(), size, desc, 0, raddr, key, c);
    iovec iov{in->buf.data(), size};
    fi_rma_iov rma{raddr, size, key};
    fi_msg_rma msg{};
    msg.msg_iov = &iov;
    msg.desc = &desc;
    msg.iov_count = 1;
    msg.rma_iov = &rma;
    msg.rma_iov_count = 1;
    msg.context = c;
    return fi_writemsg(in->ep.get(), &msg, FI_COMPLETION | FI_DELIVERY_COMPLETE);
  };
  std::vector<fi_context2*> idle;
  idle.reserve(ctx.size());
  for (auto& c : ctx) idle.push_back(&c);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::milliseconds(o.duration_ms);
  auto last = start;
  fi_cq_entry ev[16];
  for (;;) {
    const bool more = Clock::now() < deadline;
    while (more && !idle.empty()) {
      ssize_t rc = post(idle.back());
      if (rc == -FI_EAGAIN) break;
      if (rc) return FiError("fi_write", rc);
      idle.pop_back();
      posted++;
    }
    if (!more && completed == posted) break;
    ssize_t n = o.comp == "sread" ? fi_cq_sread(in->cq.get(), ev, 16, nullptr, 100)
                                  : fi_cq_read(in->cq.get(), ev, 16);
    if (n > 0) {
      for (ssize_t i = 0; i < n; i++) idle.push_back(static_cast<fi_context2*>(ev[i].op_context));
      completed += static_cast<uint64_t>(n);
      last = Clock::now();
    } else if (n == -FI_EAVAIL) {
      fi_cq_err_entry err{};
      fi_cq_readerr(in->cq.get(), &err, 0);
      return FiError("write completion", err.err ? err.err : EIO);
    } else if (n != -FI_EAGAIN && n != -FI_ETIMEDOUT) {
      return FiError("fi_cq_read", n);
    }
  }
  return SizeResult{completed, Seconds(start, last)};
}

// Fills buf[0, size) with a pattern of its own for this size.
void Fill(std::vector<uint8_t>& buf, size_t size, uint64_t seed) {
  for (size_t i = 0; i < size; i++)
    buf[i] = static_cast<uint8_t>((i * 131 + (i >> 12) + seed * 37) | 1);
}

// After a transmit-complete write the data may still be on its way: wait (bounded) until the
// target's bytes match.
Status CheckTarget(const Side& in, const Side& target, size_t size) {
  const auto deadline = Clock::now() + kCheckTimeout;
  while (std::memcmp(in.buf.data(), target.buf.data(), size) != 0) {
    if (Clock::now() > deadline)
      return Status::Error(EIO, fmt::format("data check failed for {} bytes", size));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return Status::Ok();
}

Status Run(const Options& o) {
  Side target, in;
  POHMELFS_RETURN_IF_ERROR(Connect(o, &target, &in));
  POHMELFS_RETURN_IF_ERROR(Register(&target, o.max_size, FI_REMOTE_WRITE | FI_REMOTE_READ, 1));
  POHMELFS_RETURN_IF_ERROR(Register(&in, o.max_size, FI_WRITE | FI_READ, 2));
  // The target's progress: its completion queue has no entries for RMA it is the target of,
  // but reading it drives the provider's receive side. Stopped and joined at scope end.
  std::jthread progress([&](const std::stop_token& stop) {
    fi_cq_entry ev[16];
    while (!stop.stop_requested()) {
      if (o.comp == "sread")
        (void)fi_cq_sread(target.cq.get(), ev, 16, nullptr, 100);
      else
        (void)fi_cq_read(target.cq.get(), ev, 16);
    }
  });
  const std::string label =
      !o.label.empty() ? o.label : (o.delivery_complete ? "fi_write-dc" : "fi_write");
  fmt::print("# {}: provider {}, window {}, {} completion, completions by {}\n", label, o.provider,
             o.window, o.delivery_complete ? "delivery" : "default", o.comp);
  fmt::print("{:>9} {:>9} {:>9} {:>10} {:>10}\n", "bytes", "iters", "seconds", "MiB/s",
             "usec/xfer");
  std::vector<CsvRow> rows;
  Status status;
  uint64_t seed = 1;
  for (uint64_t size = o.min_size; size <= o.max_size && status.ok(); size *= 2, seed++) {
    Fill(in.buf, size, seed);
    auto r = WriteLoop(o, &in, target, size);
    if (!r.ok()) {
      status = r.status();
      break;
    }
    status = CheckTarget(in, target, size);
    CsvRow row;
    row.label = label;
    row.backend = "ofi+" + o.provider;
    row.test = "rma-write";
    row.bytes = size;
    row.window = o.window;
    row.iters = r->iters;
    row.seconds = r->seconds;
    row.mib_per_s = static_cast<double>(size * r->iters) / kMiB / r->seconds;
    row.usec_per_xfer = r->seconds * 1e6 / static_cast<double>(std::max<uint64_t>(r->iters, 1));
    rows.push_back(row);
    fmt::print("{:>9} {:>9} {:>9.3f} {:>10.1f} {:>10.2f}\n", size, row.iters, row.seconds,
               row.mib_per_s, row.usec_per_xfer);
    std::fflush(stdout);
  }
  progress.request_stop();
  progress.join();
  if (status.ok() && !o.csv.empty()) status = WriteCsv(o.csv, rows);
  return status;
}

}  // namespace
}  // namespace pohmelfs::bench

int main(int argc, char** argv) try {
  using namespace pohmelfs::bench;
  Options o;
  CLI::App app{"fi-write-baseline: minimal libfabric fi_write bandwidth loop (one process)"};
  app.add_option("--provider", o.provider, "libfabric provider")->capture_default_str();
  app.add_option("--host", o.host, "address both endpoints use")->capture_default_str();
  app.add_option("--min-size", o.min_size, "smallest write")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30));
  app.add_option("--max-size", o.max_size, "largest write")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30));
  app.add_option("--window", o.window, "writes in flight")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1024}));
  app.add_option("--duration-ms", o.duration_ms, "time per size")->capture_default_str();
  app.add_flag("--delivery-complete", o.delivery_complete,
               "complete a write once it is in the target's memory (as the ofi backend does)");
  app.add_option("--comp", o.comp,
                 "completion waits of both sides: spin (fi_cq_read) or sread (sleep)")
      ->capture_default_str()
      ->check(CLI::IsMember({"spin", "sread"}));
  app.add_option("--csv", o.csv, "write the rows (pohmelfs-bench fabric's CSV format) to FILE");
  app.add_option("--label", o.label, "label of the rows (default: fi_write or fi_write-dc)");
  CLI11_PARSE(app, argc, argv);
  if (o.min_size > o.max_size) {
    fmt::print(stderr, "fi-write-baseline: --min-size is larger than --max-size\n");
    return kExitUsage;
  }
  pohmelfs::Status s = Run(o);
  if (s.ok()) return kExitOk;
  fmt::print(stderr, "fi-write-baseline: {}\n", s.ToString());
  return kExitError;
} catch (const std::exception& e) {
  std::fprintf(stderr, "fi-write-baseline: %s\n", e.what());
  return 1;
}
