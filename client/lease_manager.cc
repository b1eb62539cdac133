#include "client/lease_manager.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace pohmelfs::client {

using proto::from_le;
using proto::to_le;
using Clock = std::chrono::steady_clock;

LeaseManager::LeaseManager(std::shared_ptr<ServerSet> set, Hooks hooks, Options o)
    : set_(std::move(set)), hooks_(std::move(hooks)), opts_(o) {
  set_->SetCoherenceListener(
      [this](RpcClient* from, uint16_t opcode, std::vector<uint8_t>&& payload) {
        OnCallback(from, opcode, std::move(payload));
      },
      [this] {
        // Called under the server set's lock: only wake the reclaimer.
        std::lock_guard lk(mu_);
        reclaim_wanted_ = true;
        cv_.notify_all();
      });
  if (auto auth = set_->Authority()) {
    last_authority_ = auth.get();
    last_epoch_ = auth->connect_epoch();
  }
  for (int i = 0; i < std::max(1, opts_.break_threads); i++)
    break_threads_.emplace_back([this] { BreakLoop(); });
  reclaimer_ = std::thread([this] { ReclaimLoop(); });
  invalidator_ = std::thread([this] { InvalidatorLoop(); });
}

LeaseManager::~LeaseManager() {
  Stop();
}

void LeaseManager::Stop() {
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  set_->SetCoherenceListener(nullptr, nullptr);
  cv_.notify_all();
  for (auto& t : break_threads_) t.join();
  reclaimer_.join();
  {
    std::lock_guard lk(inval_mu_);
    inval_stopping_ = true;
  }
  inval_cv_.notify_all();
  invalidator_.join();
}

std::shared_ptr<LeaseManager::State> LeaseManager::StateOf(const Oid& oid) {
  std::lock_guard lk(mu_);
  auto& st = states_[oid];
  if (!st) st = std::make_shared<State>();
  return st;
}

bool LeaseManager::CurrentLocked(const State& st, RpcClient* authority) const {
  return st.from != nullptr && st.from == authority && st.from->connect_epoch() == st.from_epoch;
}

uint32_t LeaseManager::Held(const Oid& oid) {
  std::shared_ptr<State> st;
  {
    std::lock_guard lk(mu_);
    auto it = states_.find(oid);
    if (it == states_.end()) return 0;
    st = it->second;
  }
  std::lock_guard lk(st->mu);
  return st->mode;
}

Result<std::optional<Entry>> LeaseManager::AcquireLocked(State* st, const Oid& oid, uint32_t mode,
                                                         bool reclaim) {
  auto auth = set_->Authority();
  if (!auth) return Status::Error(EIO, "no lease authority is up");
  if (!(auth->features() & POHMELFS_FEAT_LEASE))
    return Status::Error(EOPNOTSUPP, "the server grants no leases");
  pohmelfs_lease_req q{};
  q.oid = oid.ToWire();
  q.cmd = to_le(POHMELFS_LEASE_ACQUIRE);
  q.mode = to_le(mode);
  q.flags = to_le(reclaim ? POHMELFS_LEASE_RECLAIM : 0u);
  iovec v{&q, sizeof(q)};
  const uint64_t epoch = auth->connect_epoch();
  auto t = auth->Begin(POHMELFS_OP_LEASE, std::span<const iovec>(&v, 1),
                       CallOptions{.attempts = 1, .attempt_timeout = opts_.acquire_timeout});
  auto reply = auth->Wait(*t);
  if (!reply.ok()) return reply.status();
  if (reply->status != 0)
    return Status::Error(static_cast<int>(reply->status), "lease refused by the authority");
  proto::Reader r(reply->payload);
  pohmelfs_lease_rep rep;
  if (!r.Get(&rep)) return Status::Error(EPROTO, "short lease reply");
  Entry e;
  e.oid = Oid::FromWire(rep.attr.oid);
  e.version = from_le(rep.attr.version);
  proto::AttrToStat(rep.attr, &e.st);
  std::lock_guard lk(st->mu);
  st->mode = from_le(rep.mode);
  // A break of this very grant may have overtaken the reply (they are handled on different
  // threads): the grant then stands only as far as the break left it.
  if (st->BrokenOn(auth.get(), epoch) && from_le(rep.seq) <= st->broken_seq)
    st->mode = std::min(st->mode, st->broken_keep);
  st->from = auth.get();
  st->from_epoch = epoch;
  counters_.grants++;
  return std::optional<Entry>(e);
}

Result<LeaseManager::Guard> LeaseManager::Hold(const Oid& oid, uint32_t mode) {
  auto st = StateOf(oid);
  // A break may slip in between the grant and taking the guard: ask again, within a bound.
  const auto deadline = Clock::now() + opts_.acquire_timeout;
  for (int attempt = 0;; attempt++) {
    Guard g;
    g.use_ = std::shared_lock(st->use);
    auto auth = set_->Authority();
    {
      std::lock_guard lk(st->mu);
      if (st->mode >= mode && CurrentLocked(*st, auth.get())) {
        g.mode_ = st->mode;
        g.was_held_ = attempt == 0;
        return g;
      }
    }
    if (Clock::now() >= deadline) return Status::Error(EAGAIN, "the lease kept being broken");
    // Ask with the guard dropped: a break of this object must be able to run meanwhile.
    g.use_.unlock();
    std::optional<Entry> granted;
    {
      WaitingForGrant waiting(this, st.get());
      std::lock_guard alk(st->acquire_mu);
      bool reclaim;
      uint32_t want = mode;
      {
        std::lock_guard lk(st->mu);
        if (st->mode >= mode && CurrentLocked(*st, auth.get())) continue;  // another thread got it
        reclaim = st->mode > 0 && !CurrentLocked(*st, auth.get());
        if (reclaim) want = std::max(mode, st->mode);
      }
      auto got = AcquireLocked(st.get(), oid, want, reclaim);
      if (!got.ok()) {
        std::lock_guard lk(st->mu);
        if (reclaim) st->mode = 0;
        return got.status();
      }
      granted = *got;
    }
    g.use_.lock();
    std::lock_guard lk(st->mu);
    if (st->mode >= mode) {
      g.mode_ = st->mode;
      g.granted_ = granted;
      return g;
    }
  }
}

void LeaseManager::GrantLocal(const Oid& oid) {
  auto st = StateOf(oid);
  auto auth = set_->Authority();
  if (!auth) return;
  std::lock_guard lk(st->mu);
  st->mode = POHMELFS_LEASE_WRITE;
  // A new object has no other grant: a break already seen from this authority broke this one.
  if (st->BrokenOn(auth.get(), auth->connect_epoch()))
    st->mode = std::min(st->mode, st->broken_keep);
  st->from = auth.get();
  st->from_epoch = auth->connect_epoch();
}

void LeaseManager::OnCallback(RpcClient* from, uint16_t opcode, std::vector<uint8_t>&& payload) {
  if (opcode != POHMELFS_OP_LEASE_BREAK) {
    spdlog::warn("{}: unknown callback {} from the server", from->server(), opcode);
    return;
  }
  proto::Reader r(payload);
  pohmelfs_lease_break b;
  if (!r.Get(&b)) {
    spdlog::warn("{}: short lease break; ignored", from->server());
    return;
  }
  counters_.breaks++;
  std::lock_guard lk(mu_);
  breaks_.push_back(
      {from, from->connect_epoch(), Oid::FromWire(b.oid), from_le(b.keep), from_le(b.seq)});
  cv_.notify_all();
}

void LeaseManager::BreakLoop() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stopping_ || !breaks_.empty(); });
    if (stopping_) return;
    BreakJob job = breaks_.front();
    breaks_.pop_front();
    lk.unlock();
    RunBreak(job);
    lk.lock();
  }
}

void LeaseManager::RunBreak(const BreakJob& job) {
  std::shared_ptr<RpcClient> to = set_->Authority();
  if (to.get() != job.from) to.reset();
  // Made if missing: the break of a create's grant may come before GrantLocal, which must
  // then find it.
  std::shared_ptr<State> st = StateOf(job.oid);
  bool had = false;
  {  // the guards are waited for here; kernel caches are dropped after, without `use` held
    {
      // Recorded first, so that the reply of the grant this breaks, if it is still on its way,
      // does not undo the break. Waiting for that reply instead would deadlock when the
      // break names an older grant (one that came with a create, whose number this client
      // never learns) and the reply awaited is of an upgrade queued behind the request that
      // caused the break.
      std::lock_guard lk(st->mu);
      if (!st->BrokenOn(job.from, job.from_epoch) || job.seq > st->broken_seq) {
        st->broken_from = job.from;
        st->broken_epoch = job.from_epoch;
        st->broken_seq = job.seq;
        st->broken_keep = job.keep;
      } else if (job.seq == st->broken_seq) {
        st->broken_keep = std::min(st->broken_keep, job.keep);
      }
    }
    std::unique_lock use(st->use);  // waits for the guards of this object to end
    {
      std::lock_guard lk(st->mu);
      had = st->mode > job.keep;
    }
    if (had && hooks_.flush) hooks_.flush(job.oid, job.keep);
    std::lock_guard lk(st->mu);
    st->mode = std::min(st->mode, job.keep);
  }
  if (had) InvalidateBounded(job.oid, job.keep, st, opts_.invalidate_max_wait);
  if (!to) {
    spdlog::info(
        "lease break for {} from a server that is no longer the authority; its "
        "caches were dropped",
        job.oid.Hex());
    return;
  }
  Status s = SendRelease(to, job.oid, job.keep);
  if (!s.ok())
    spdlog::warn("{}: release of the lease on {} failed: {}", to->server(), job.oid.Hex(),
                 s.ToString());
}

Status LeaseManager::SendRelease(const std::shared_ptr<RpcClient>& to, const Oid& oid,
                                 uint32_t keep) {
  pohmelfs_lease_req q{};
  q.oid = oid.ToWire();
  q.cmd = to_le(POHMELFS_LEASE_RELEASE);
  q.mode = to_le(keep);
  iovec v{&q, sizeof(q)};
  auto t = to->Begin(POHMELFS_OP_LEASE, std::span<const iovec>(&v, 1), CallOptions{});
  auto reply = to->Wait(*t);
  if (!reply.ok()) return reply.status();
  if (reply->status != 0) return Status::Error(static_cast<int>(reply->status), "release");
  return Status::Ok();
}

LeaseManager::WaitingForGrant::WaitingForGrant(LeaseManager* m, State* st) : m_(m), st_(st) {
  st_->waiting++;
  Announce();
}

LeaseManager::WaitingForGrant::~WaitingForGrant() {
  st_->waiting--;
  Announce();
}

void LeaseManager::WaitingForGrant::Announce() {
  // Under the lock, so that an invalidation that just checked the count cannot miss it.
  std::lock_guard lk(m_->inval_mu_);
  m_->inval_cv_.notify_all();
}

void LeaseManager::InvalidateBounded(const Oid& oid, uint32_t keep,
                                     const std::shared_ptr<State>& st,
                                     std::chrono::milliseconds max_wait) {
  if (!hooks_.invalidate) return;
  hooks_.invalidate(oid, keep, false);  // attributes at once: a stat must not see old ones
  auto done = std::make_shared<bool>(false);
  std::unique_lock lk(inval_mu_);
  inval_queue_.push_back({oid, keep, st, done});
  inval_cv_.notify_all();
  // Whether this invalidation may be held up by a request that waits for a grant: one of this
  // object, or one of the object whose invalidation runs ahead of this one.
  auto held_up = [&] {
    if (st && st->waiting.load() > 0) return true;
    return inval_running_ != done && inval_running_st_ && inval_running_st_->waiting.load() > 0;
  };
  // Woken by the invalidator and by requests that start or stop waiting for a grant.
  const auto start = Clock::now();
  while (!*done) {
    const auto until = start + (held_up() ? std::min(max_wait, opts_.invalidate_wait) : max_wait);
    if (Clock::now() >= until) break;
    inval_cv_.wait_until(lk, until);
  }
  if (!*done)
    spdlog::info(
        "dropping kernel caches of {} is taking longer than {} ms{}; releasing the lease "
        "meanwhile",
        oid.Hex(),
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count(),
        held_up() ? " while a request waits for a grant" : "");
}

void LeaseManager::InvalidatorLoop() {
  std::unique_lock lk(inval_mu_);
  for (;;) {
    inval_cv_.wait(lk, [&] { return inval_stopping_ || !inval_queue_.empty(); });
    if (inval_stopping_) return;
    InvalJob job = inval_queue_.front();
    inval_queue_.pop_front();
    inval_running_ = job.done;
    inval_running_st_ = job.st;
    inval_cv_.notify_all();  // the jobs behind it look at what it waits for
    lk.unlock();
    hooks_.invalidate(job.oid, job.keep, true);
    lk.lock();
    *job.done = true;
    inval_running_.reset();
    inval_running_st_.reset();
    inval_cv_.notify_all();
  }
}

void LeaseManager::ReclaimLoop() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stopping_ || reclaim_wanted_; });
    if (stopping_) return;
    reclaim_wanted_ = false;
    lk.unlock();
    ReclaimAll();
    lk.lock();
  }
}

void LeaseManager::ReclaimAll() {
  auto auth = set_->Authority();
  if (!auth) return;  // a later state change brings one
  if (hooks_.before_reclaim) hooks_.before_reclaim();
  std::vector<std::pair<Oid, std::shared_ptr<State>>> all;
  {
    std::lock_guard lk(mu_);
    for (const auto& [oid, st] : states_) all.emplace_back(oid, st);
  }
  std::vector<std::pair<Oid, std::shared_ptr<State>>> reclaimed;
  for (auto& [oid, st] : all) {
    std::lock_guard alk(st->acquire_mu);
    uint32_t mode;
    {
      std::lock_guard lk(st->mu);
      if (st->mode == 0 || CurrentLocked(*st, auth.get())) continue;
      mode = st->mode;
    }
    auto got = AcquireLocked(st.get(), oid, mode, true);
    if (got.ok()) {
      counters_.reclaims++;
      spdlog::info("{}: reclaimed the {} lease on {}", auth->server(),
                   mode == POHMELFS_LEASE_WRITE ? "write" : "read", oid.Hex());
      reclaimed.emplace_back(oid, st);
    } else {
      counters_.lost++;
      {
        std::lock_guard lk(st->mu);
        st->mode = 0;
      }
      spdlog::warn("{}: could not reclaim the lease on {}: {}", auth->server(), oid.Hex(),
                   got.status().ToString());
      if (hooks_.lost) hooks_.lost(oid);
    }
  }
  // A break may have been missed while there was no authority: drop kernel caches (without
  // the states' locks, which requests waiting in the kernel may need).
  // No release follows, so nothing waits for these: the short bound for each.
  for (const auto& [oid, st] : reclaimed)
    InvalidateBounded(oid, POHMELFS_LEASE_NONE, st, opts_.invalidate_wait);
  const bool changed = last_authority_ != auth.get() || last_epoch_ != auth->connect_epoch();
  last_authority_ = auth.get();
  last_epoch_ = auth->connect_epoch();
  if (changed && hooks_.authority_changed) hooks_.authority_changed();
}

void LeaseManager::ReleaseAll() {
  std::vector<std::pair<Oid, std::shared_ptr<State>>> all;
  {
    std::lock_guard lk(mu_);
    for (const auto& [oid, st] : states_) all.emplace_back(oid, st);
  }
  auto auth = set_->Authority();
  std::vector<Oid> to_release;
  for (auto& [oid, st] : all) {
    std::unique_lock use(st->use);
    {
      std::lock_guard lk(st->mu);
      if (st->mode == 0) continue;
    }
    if (hooks_.flush) hooks_.flush(oid, POHMELFS_LEASE_NONE);
    std::lock_guard lk(st->mu);
    if (auth && CurrentLocked(*st, auth.get())) to_release.push_back(oid);
    st->mode = 0;
  }
  if (to_release.empty()) return;
  // Thousands of leases may be held (every file this mount created): send the releases in
  // windows instead of one round trip each, once, and give up at the first lost connection:
  // the server then drops them itself when the session's break deadline passes.
  // A transaction keeps its send credit until destroyed: a window larger than the credits
  // would wait for itself.
  const size_t window_size = std::clamp<size_t>(auth->credits(), 1, 64);
  CallOptions once;
  once.attempts = 1;
  once.fail_fast = true;
  size_t released = 0;
  for (size_t at = 0; at < to_release.size(); at += window_size) {
    const size_t n = std::min(window_size, to_release.size() - at);
    std::vector<pohmelfs_lease_req> reqs(n);
    std::vector<iovec> iovs(n);
    std::vector<std::unique_ptr<RpcClient::Transaction>> window;
    window.reserve(n);
    for (size_t i = 0; i < n; i++) {
      reqs[i].oid = to_release[at + i].ToWire();
      reqs[i].cmd = to_le(POHMELFS_LEASE_RELEASE);
      reqs[i].mode = to_le(POHMELFS_LEASE_NONE);
      iovs[i] = {&reqs[i], sizeof(reqs[i])};
      window.push_back(auth->Begin(POHMELFS_OP_LEASE, std::span<const iovec>(&iovs[i], 1), once));
    }
    Status failed = Status::Ok();
    for (auto& t : window) {
      auto reply = auth->Wait(*t);
      if (reply.ok())
        released++;
      else if (failed.ok())
        failed = reply.status();
    }
    if (!failed.ok()) {
      spdlog::warn(
          "{}: releasing leases at unmount stopped after {} of {}: {}; the server drops "
          "the rest when this session's break deadline passes",
          auth->server(), released, to_release.size(), failed.ToString());
      return;
    }
  }
}

}  // namespace pohmelfs::client
