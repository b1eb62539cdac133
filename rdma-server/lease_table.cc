#include "rdma-server/lease_table.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace pohmelfs::server {

namespace {

bool Conflicts(uint32_t a, uint32_t b) {
  return a == POHMELFS_LEASE_WRITE || b == POHMELFS_LEASE_WRITE;
}

const char* ModeName(uint32_t m) {
  return m == POHMELFS_LEASE_WRITE ? "write" : m == POHMELFS_LEASE_READ ? "read" : "none";
}

}  // namespace

LeaseTable::LeaseTable(const Options& o, SendBreak send_break)
    : opts_(o), send_break_(std::move(send_break)) {
  timer_ = std::thread([this] { Run(); });
}

LeaseTable::~LeaseTable() {
  Stop();
}

void LeaseTable::Stop() {
  std::vector<Completion> done;
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [oid, obj] : objects_)
      for (auto& w : obj.waiters) done.push_back({std::move(w.done), ESHUTDOWN, 0, 0});
    objects_.clear();
  }
  cv_.notify_all();
  if (timer_.joinable()) timer_.join();
  for (auto& c : done) c.done(c.status, c.mode, c.seq);
  std::vector<std::function<void()>> after;
  {
    std::lock_guard lk(mu_);
    after.swap(after_grace_);
  }
  for (auto& f : after) f();
}

void LeaseTable::Acquire(uint64_t session, const Oid& oid, uint32_t mode, bool reclaim, Done done) {
  std::vector<Break> breaks;
  std::vector<Completion> finished;
  {
    std::lock_guard lk(mu_);
    if (stopping_) {
      finished.push_back({std::move(done), ESHUTDOWN, 0, 0});
    } else {
      fenced_.erase({session, oid});
      if (reclaim && !InGraceLocked(Clock::now())) {
        grace_until_ = Clock::now() + opts_.grace;
        spdlog::info("lease reclaim from session {:016x}: grace period of {} ms begins", session,
                     opts_.grace.count());
        cv_.notify_all();
      }
      Object& obj = objects_[oid];
      Waiter w{session, mode, reclaim, std::move(done)};
      // Reclaims go ahead of ordinary waiters: they re-establish what was already granted.
      if (reclaim) {
        auto it = std::find_if(obj.waiters.begin(), obj.waiters.end(),
                               [](const Waiter& x) { return !x.reclaim; });
        obj.waiters.insert(it, std::move(w));
      } else {
        obj.waiters.push_back(std::move(w));
      }
      ServeLocked(oid, &breaks, &finished);
    }
  }
  Finish(breaks, finished);
}

void LeaseTable::ServeLocked(const Oid& oid, std::vector<Break>* breaks,
                             std::vector<Completion>* done) {
  auto oit = objects_.find(oid);
  if (oit == objects_.end()) return;
  Object& obj = oit->second;
  const auto now = Clock::now();
  while (!obj.waiters.empty()) {
    Waiter& w = obj.waiters.front();
    if (!w.reclaim && InGraceLocked(now)) break;  // the timer serves it when grace ends
    auto mine = obj.holders.find(w.session);
    if (mine != obj.holders.end() && mine->second.mode >= w.mode && !mine->second.breaking) {
      done->push_back({std::move(w.done), 0, mine->second.mode, mine->second.seq});
      obj.waiters.erase(obj.waiters.begin());
      continue;
    }
    // The session's own lease is being broken: its RELEASE is on the way and, since a RELEASE
    // does not name the grant it answers, would undo a grant made now. Serve it after that
    // (or after the eviction, if no RELEASE comes).
    if (mine != obj.holders.end() && mine->second.breaking) break;
    bool blocked = false, refused = false;
    for (auto& [sid, h] : obj.holders) {
      if (sid == w.session || !Conflicts(h.mode, w.mode)) continue;
      if (w.reclaim && h.reclaimed) {
        // Two sessions both claim to have held conflicting leases: one of them is wrong, and
        // the first to reclaim keeps it.
        spdlog::warn(
            "lease reclaim by session {:016x} on {} conflicts with session {:016x}'s "
            "reclaim; refused",
            w.session, oid.Hex(), sid);
        refused = true;
        break;
      }
      blocked = true;
      uint32_t keep = (h.mode == POHMELFS_LEASE_WRITE && w.mode == POHMELFS_LEASE_READ)
                          ? POHMELFS_LEASE_READ
                          : POHMELFS_LEASE_NONE;
      if (!h.breaking || keep < h.break_keep) {
        h.breaking = true;
        h.break_keep = keep;
        h.deadline = now + opts_.break_timeout;
        breaks->push_back({sid, oid, keep, h.seq});
        cv_.notify_all();  // a new break deadline for the timer
      }
    }
    if (refused) {
      done->push_back({std::move(w.done), ESTALE, 0, 0});
      obj.waiters.erase(obj.waiters.begin());
      continue;
    }
    if (blocked) break;
    Holder& h = obj.holders[w.session];
    spdlog::debug("session {:016x}: {} lease on {} granted{}", w.session, ModeName(w.mode),
                  oid.Hex(), w.reclaim ? " (reclaim)" : "");
    h.mode = std::max(h.mode, w.mode);
    h.reclaimed = h.reclaimed || w.reclaim;
    h.breaking = false;
    h.seq = next_seq_++;
    done->push_back({std::move(w.done), 0, h.mode, h.seq});
    obj.waiters.erase(obj.waiters.begin());
  }
  if (obj.holders.empty() && obj.waiters.empty()) objects_.erase(oit);
}

void LeaseTable::AfterGrace(std::function<void()> f) {
  {
    std::lock_guard lk(mu_);
    if (!stopping_ && InGraceLocked(Clock::now())) {
      after_grace_.push_back(std::move(f));
      return;
    }
  }
  f();
}

void LeaseTable::GrantNew(uint64_t session, const Oid& oid) {
  std::lock_guard lk(mu_);
  if (stopping_) return;
  Object& obj = objects_[oid];
  if (!obj.holders.empty()) return;  // not new after all: the creator must ask
  Holder& h = obj.holders[session];
  h.mode = POHMELFS_LEASE_WRITE;
  h.seq = next_seq_++;
}

void LeaseTable::Release(uint64_t session, const Oid& oid, uint32_t keep) {
  std::vector<Break> breaks;
  std::vector<Completion> finished;
  {
    std::lock_guard lk(mu_);
    auto oit = objects_.find(oid);
    if (oit == objects_.end()) return;
    auto hit = oit->second.holders.find(session);
    if (hit == oit->second.holders.end()) return;
    if (keep == POHMELFS_LEASE_NONE || keep >= hit->second.mode) {
      if (keep == POHMELFS_LEASE_NONE) oit->second.holders.erase(hit);
    } else {
      hit->second.mode = keep;
      hit->second.breaking = false;
    }
    ServeLocked(oid, &breaks, &finished);
  }
  Finish(breaks, finished);
}

void LeaseTable::DropSession(uint64_t session) {
  std::vector<Break> breaks;
  std::vector<Completion> finished;
  {
    std::lock_guard lk(mu_);
    std::vector<Oid> touched;
    for (auto& [oid, obj] : objects_) {
      if (obj.holders.erase(session)) touched.push_back(oid);
      for (auto it = obj.waiters.begin(); it != obj.waiters.end();) {
        if (it->session == session) {
          finished.push_back({std::move(it->done), ESHUTDOWN, 0, 0});
          it = obj.waiters.erase(it);
          touched.push_back(oid);
        } else {
          ++it;
        }
      }
    }
    for (auto it = fenced_.begin(); it != fenced_.end();)
      it = it->first == session ? fenced_.erase(it) : std::next(it);
    for (const auto& oid : touched) ServeLocked(oid, &breaks, &finished);
  }
  Finish(breaks, finished);
}

bool LeaseTable::TakeFence(uint64_t session, const Oid& oid) {
  std::lock_guard lk(mu_);
  return fenced_.erase({session, oid}) > 0;
}

uint32_t LeaseTable::Held(uint64_t session, const Oid& oid) {
  std::lock_guard lk(mu_);
  auto oit = objects_.find(oid);
  if (oit == objects_.end()) return 0;
  auto hit = oit->second.holders.find(session);
  return hit == oit->second.holders.end() ? 0 : hit->second.mode;
}

void LeaseTable::EvictExpiredLocked(std::vector<Break>* breaks, std::vector<Completion>* done) {
  const auto now = Clock::now();
  std::vector<Oid> touched;
  for (auto& [oid, obj] : objects_) {
    for (auto it = obj.holders.begin(); it != obj.holders.end();) {
      Holder& h = it->second;
      if (!h.breaking || h.deadline > now) {
        ++it;
        continue;
      }
      spdlog::warn(
          "session {:016x}: evicted from its {} lease on {}: no release within {} ms "
          "of the break",
          it->first, ModeName(h.mode), oid.Hex(), opts_.break_timeout.count());
      fenced_.insert({it->first, oid});
      if (h.break_keep == POHMELFS_LEASE_NONE) {
        it = obj.holders.erase(it);
      } else {
        h.mode = h.break_keep;
        h.breaking = false;
        ++it;
      }
      touched.push_back(oid);
    }
    if (!obj.waiters.empty() && !InGraceLocked(now)) touched.push_back(oid);
  }
  for (const auto& oid : touched) ServeLocked(oid, breaks, done);
}

void LeaseTable::Run() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    // Wake at the earliest break deadline or at the end of a grace period.
    auto next = Clock::time_point::max();
    if (InGraceLocked(Clock::now())) next = grace_until_;
    for (const auto& [oid, obj] : objects_)
      for (const auto& [sid, h] : obj.holders)
        if (h.breaking) next = std::min(next, h.deadline);
    if (next == Clock::time_point::max())
      cv_.wait(lk);
    else
      cv_.wait_until(lk, next);
    if (stopping_) break;
    std::vector<Break> breaks;
    std::vector<Completion> finished;
    EvictExpiredLocked(&breaks, &finished);
    std::vector<std::function<void()>> after;
    if (!InGraceLocked(Clock::now())) after.swap(after_grace_);
    lk.unlock();
    Finish(breaks, finished);
    for (auto& f : after) f();
    lk.lock();
  }
}

void LeaseTable::Finish(std::vector<Break>& breaks, std::vector<Completion>& done) {
  for (const auto& b : breaks) {
    if (!send_break_(b.session, b.oid, b.keep, b.seq))
      spdlog::info(
          "session {:016x}: not connected; its lease on {} is evicted in {} ms unless "
          "it comes back and releases it",
          b.session, b.oid.Hex(), opts_.break_timeout.count());
  }
  for (auto& c : done) c.done(c.status, c.mode, c.seq);
}

}  // namespace pohmelfs::server
