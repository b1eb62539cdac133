#include "rdma-server/lock_table.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace pohmelfs::server {

namespace {

bool SameOwner(const LockRange& a, const LockRange& b) {
  return a.session == b.session && a.owner == b.owner && a.flock == b.flock;
}

bool Overlap(const LockRange& a, const LockRange& b) {
  return a.start <= b.end && b.start <= a.end;
}

}  // namespace

LockTable::LockTable(std::chrono::milliseconds wait_bound, IsDead is_dead)
    : wait_bound_(wait_bound), is_dead_(std::move(is_dead)) {
  timer_ = std::thread([this] { Run(); });
}

LockTable::~LockTable() {
  Stop();
}

void LockTable::Stop() {
  std::vector<Done> done;
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [oid, f] : files_)
      for (auto& w : f.waiters) done.push_back(std::move(w.done));
    files_.clear();
  }
  cv_.notify_all();
  if (timer_.joinable()) timer_.join();
  for (auto& d : done) d(ESHUTDOWN);
}

const LockRange* LockTable::ConflictLocked(File& f, const LockRange& want) {
  for (auto it = f.locks.begin(); it != f.locks.end();) {
    const LockRange& l = *it;
    bool in_way = !SameOwner(l, want) && l.flock == want.flock && Overlap(l, want) &&
                  (l.type == F_WRLCK || want.type == F_WRLCK);
    if (!in_way) {
      ++it;
      continue;
    }
    if (is_dead_(l.session)) {
      spdlog::info("session {:016x}: dropping its locks, it is gone", l.session);
      uint64_t dead = l.session;
      std::erase_if(f.locks, [dead](const LockRange& x) { return x.session == dead; });
      it = f.locks.begin();
      continue;
    }
    return &l;
  }
  return nullptr;
}

void LockTable::ApplyLocked(File& f, const LockRange& want) {
  if (want.flock) {
    std::erase_if(f.locks, [&](const LockRange& x) { return SameOwner(x, want); });
    if (want.type != F_UNLCK) f.locks.push_back(want);
    return;
  }
  // POSIX: the owner's locks over [start, end] are replaced; the parts outside remain.
  std::vector<LockRange> next;
  next.reserve(f.locks.size() + 2);
  for (const LockRange& l : f.locks) {
    if (!SameOwner(l, want) || !Overlap(l, want)) {
      next.push_back(l);
      continue;
    }
    if (l.start < want.start) {
      LockRange left = l;
      left.end = want.start - 1;
      next.push_back(left);
    }
    if (l.end > want.end) {
      LockRange right = l;
      right.start = want.end + 1;
      next.push_back(right);
    }
  }
  if (want.type != F_UNLCK) next.push_back(want);
  f.locks = std::move(next);
}

std::optional<LockRange> LockTable::Test(const Oid& oid, const LockRange& want) {
  std::lock_guard lk(mu_);
  auto it = files_.find(oid);
  if (it == files_.end()) return std::nullopt;
  const LockRange* c = ConflictLocked(it->second, want);
  if (!c) return std::nullopt;
  return *c;
}

void LockTable::Set(const Oid& oid, const LockRange& want, bool wait, Done done) {
  std::vector<std::pair<Done, uint32_t>> finished;
  {
    std::lock_guard lk(mu_);
    if (stopping_) {
      finished.emplace_back(std::move(done), ESHUTDOWN);
    } else {
      File& f = files_[oid];
      if (want.type == F_UNLCK || !ConflictLocked(f, want)) {
        ApplyLocked(f, want);
        finished.emplace_back(std::move(done), 0);
        WakeLocked(f, &finished);
      } else if (!wait) {
        finished.emplace_back(std::move(done), EAGAIN);
      } else {
        f.waiters.push_back({want, Clock::now() + wait_bound_, std::move(done)});
        cv_.notify_all();
      }
      if (f.locks.empty() && f.waiters.empty()) files_.erase(oid);
    }
  }
  for (auto& [d, status] : finished) d(status);
}

void LockTable::WakeLocked(File& f, std::vector<std::pair<Done, uint32_t>>* done) {
  for (auto it = f.waiters.begin(); it != f.waiters.end();) {
    if (ConflictLocked(f, it->want)) {
      ++it;
      continue;
    }
    ApplyLocked(f, it->want);
    done->emplace_back(std::move(it->done), 0);
    it = f.waiters.erase(it);
  }
}

void LockTable::DropSession(uint64_t session) {
  std::vector<std::pair<Done, uint32_t>> finished;
  {
    std::lock_guard lk(mu_);
    for (auto it = files_.begin(); it != files_.end();) {
      File& f = it->second;
      size_t n = std::erase_if(f.locks, [&](const LockRange& x) { return x.session == session; });
      for (auto w = f.waiters.begin(); w != f.waiters.end();) {
        if (w->want.session == session) {
          finished.emplace_back(std::move(w->done), ESHUTDOWN);
          w = f.waiters.erase(w);
        } else {
          ++w;
        }
      }
      if (n) WakeLocked(f, &finished);
      it = (f.locks.empty() && f.waiters.empty()) ? files_.erase(it) : std::next(it);
    }
  }
  for (auto& [d, status] : finished) d(status);
}

size_t LockTable::Count(const Oid& oid) {
  std::lock_guard lk(mu_);
  auto it = files_.find(oid);
  return it == files_.end() ? 0 : it->second.locks.size();
}

void LockTable::Run() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    auto next = Clock::time_point::max();
    for (const auto& [oid, f] : files_)
      for (const auto& w : f.waiters) next = std::min(next, w.deadline);
    if (next == Clock::time_point::max())
      cv_.wait(lk);
    else
      cv_.wait_until(lk, next);
    if (stopping_) break;
    std::vector<std::pair<Done, uint32_t>> finished;
    const auto now = Clock::now();
    for (auto it = files_.begin(); it != files_.end();) {
      File& f = it->second;
      WakeLocked(f, &finished);  // a dead holder may have made room
      for (auto w = f.waiters.begin(); w != f.waiters.end();) {
        if (w->deadline <= now) {
          finished.emplace_back(std::move(w->done), EINPROGRESS);
          w = f.waiters.erase(w);
        } else {
          ++w;
        }
      }
      it = (f.locks.empty() && f.waiters.empty()) ? files_.erase(it) : std::next(it);
    }
    lk.unlock();
    for (auto& [d, status] : finished) d(status);
    lk.lock();
  }
}

}  // namespace pohmelfs::server
