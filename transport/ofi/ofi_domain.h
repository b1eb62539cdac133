// One libfabric fabric + domain of the ofi backend, with what its connections share: the event
// queue for connection management (a CM thread reads it), one completion queue for every
// endpoint (the progress engine polls it and sleeps in fi_cq_sread), and the registration
// cache.
//
// A provider whose queues cannot sleep (shm in libfabric 1.17: no wait object, its sread
// yields in a loop) runs in nap mode: the queues are only polled, and where the others sleep
// in the provider the threads take short naps (10 us growing to 1 ms while nothing happens),
// which a Wake or a new post cuts. An idle process then wakes about a thousand times a second (well
// under 1% of a core) instead of spinning one.
//
// Thread-safety: Register, Post and the Add/Remove methods may be called from any thread.
// Completions, posted tasks and message callbacks run on the progress thread; connection
// events (connect requests, established, shutdown) on the CM thread.
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proto/status.h"
#include "transport/framed/progress_engine.h"
#include "transport/framed/registration_cache.h"
#include "transport/rma.h"

namespace pohmelfs::transport::ofi {

// "ofi+tcp://10.0.0.1:7000" for a socket address (IPv4 or IPv6).
std::string SockaddrToUri(const std::string& provider, const void* addr);
// The URI of an endpoint address: a socket address, or for string addresses (FI_ADDR_STR) the
// name server form "fi_ns://HOST:PORT" as "ofi+PROVIDER://HOST:PORT" and any other string as
// "ofi+PROVIDER:" followed by it (a client's own address, only ever logged).
std::string AddressToUri(const std::string& provider, bool string_addr, const void* addr,
                         size_t len);
// "fi_xxx: <libfabric's text>" as a Status with a positive errno.
Status FiError(const char* what, int rc);

class OfiDomain;

// A registration of the domain (see Rma::Register).
class OfiMemoryRegion final : public MemoryRegion {
 public:
  OfiMemoryRegion(std::shared_ptr<OfiDomain> domain, fid_mr* mr, void* base, size_t len);
  ~OfiMemoryRegion() override;
  void* base() const override { return base_; }
  size_t length() const override { return len_; }
  uint64_t key() const override;
  uint64_t RemoteAddress(const void* p) const override;
  void* desc() const;
  const OfiDomain* domain() const { return domain_.get(); }

 private:
  std::shared_ptr<OfiDomain> domain_;
  fid_mr* mr_;
  void* base_;
  size_t len_;
};

class OfiDomain final : public ProgressEngine, public std::enable_shared_from_this<OfiDomain> {
 public:
  // Opens fabric, domain, EQ and CQ from info (not kept) and starts the two threads.
  static Result<std::shared_ptr<OfiDomain>> Open(const std::string& provider, const fi_info* info,
                                                 std::chrono::microseconds spin);
  ~OfiDomain() override;
  OfiDomain(const OfiDomain&) = delete;
  OfiDomain& operator=(const OfiDomain&) = delete;

  const std::string& provider() const { return provider_; }
  fid_fabric* fabric() const { return fabric_; }
  fid_domain* domain() const { return domain_; }
  fid_eq* eq() const { return eq_; }
  fid_cq* cq() const { return cq_; }
  // The provider wants virtual addresses (not offsets) in RMA, and local descriptors.
  bool virt_addr() const { return virt_addr_; }
  // The provider wants local buffers registered and their descriptors passed (FI_MR_LOCAL).
  bool local_mr() const { return local_mr_; }

  // Registration cache (see Rma::Register).
  Result<MemoryRegionPtr> Register(void* addr, size_t len);
  // One registration outside the cache (a connection's own buffers); close it with fi_close.
  Result<fid_mr*> RegisterRaw(void* addr, size_t len, uint64_t access);
  // Largest single message or RMA the provider takes.
  size_t max_msg_size() const { return max_msg_size_; }
  // The provider delivers a send after the writes posted before it (FI_ORDER_SAW).
  bool orders_sends_after_writes() const { return saw_; }
  // Addresses are strings (FI_ADDR_STR: shm's "fi_ns://host:port"), not socket addresses.
  bool string_addr() const { return string_addr_; }

  // CM events for fid (an endpoint or a passive endpoint) go to these.
  struct CmHandler {
    std::function<void(fi_info* info)> on_connreq;  // passive endpoints; owns info
    std::function<void()> on_connected;
    std::function<void(const Status&)> on_shutdown;  // shutdown or CM error
  };
  void AddCm(fid_t fid, CmHandler h);
  void RemoveCm(fid_t fid);

  // Closes every connection of the domain (their on_shutdown handlers).
  void CloseAll(const Status& why);
  // fn runs on the CM thread about once a second until it returns false (RDM keepalives).
  void AddTicker(std::function<bool()> fn);
  // Stops the threads, then runs what they left (the closes) on the caller's thread.
  void Stop();
  bool stopping() const { return stop_.load(); }

 private:
  explicit OfiDomain(std::chrono::microseconds spin) : ProgressEngine(spin) {}
  int PollCompletions() override;
  int WaitForCompletions(int timeout_ms) override;
  void Wake() override;
  void Poked() override;
  int Dispatch(ssize_t n);
  void CmLoop();
  void RunTickers();
  // Nap mode: sleeps up to timeout unless a Wake came since the last nap.
  void Nap(std::chrono::microseconds timeout);

  std::string provider_;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  fid_eq* eq_ = nullptr;
  fid_cq* cq_ = nullptr;
  bool virt_addr_ = true;
  bool prov_key_ = true;
  bool local_mr_ = true;
  size_t max_msg_size_ = 0;
  bool saw_ = false;
  bool string_addr_ = false;
  std::atomic<uint64_t> next_key_{1};
  std::atomic<bool> stop_{false};
  std::thread cm_;
  fi_cq_data_entry events_[32];  // progress thread only

  bool nap_mode_ = false;
  std::chrono::microseconds nap_{0};  // progress thread only: the next nap's length
  bool slack_set_ = false;            // progress thread only
  std::atomic<bool> poked_{false};    // an operation was posted since the last nap
  std::atomic<bool> in_nap_{false};   // the progress thread is (about to be) napping
  std::mutex nap_mu_;
  std::condition_variable nap_cv_;
  bool woken_ = false;  // GUARDED_BY(nap_mu_)

  std::mutex mu_;
  std::unordered_map<fid_t, std::shared_ptr<CmHandler>> cm_handlers_;  // GUARDED_BY(mu_)
  std::vector<std::function<bool()>> tickers_;                         // GUARDED_BY(mu_)

  RegistrationCache registrations_;
};

}  // namespace pohmelfs::transport::ofi
