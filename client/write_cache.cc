#include "client/write_cache.h"

#include <spdlog/spdlog.h>

#include <future>

namespace pohmelfs::client {

using proto::from_le;
using proto::to_le;

namespace {

// One transaction's worth of WRITE commands.
struct Group {
  std::vector<std::pair<uint64_t, std::span<const uint8_t>>> writes;
  size_t bytes = 0;
};

// Room kept in a BATCH payload for its headers.
constexpr size_t kBatchRoom = POHMELFS_PAYLOAD_MAX - POHMELFS_IO_MAX;

}  // namespace

std::shared_ptr<WriteCache::File> WriteCache::FileOf(const Oid& oid, bool create) {
  std::lock_guard lk(mu_);
  auto it = files_.find(oid);
  if (it != files_.end()) return it->second;
  if (!create) return nullptr;
  auto f = std::make_shared<File>();
  files_[oid] = f;
  return f;
}

Status WriteCache::Add(const Oid& oid, uint64_t offset, const void* data, size_t size) {
  auto f = FileOf(oid, true);
  counters_.writes++;
  size_t dirty;
  {
    std::lock_guard lk(f->mu);
    if (!f->error.ok()) {
      Status e = f->error;
      f->error = Status::Ok();
      return e;
    }
    const auto* p = static_cast<const uint8_t*>(data);
    uint64_t start = offset, end = offset + size;
    std::vector<uint8_t> merged;
    // Absorb every extent that overlaps or touches [start, end); new bytes win.
    auto it = f->extents.upper_bound(start);
    if (it != f->extents.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second.size() >= start) it = prev;
    }
    uint64_t new_start = start, new_end = end;
    std::vector<decltype(it)> absorbed;
    for (; it != f->extents.end() && it->first <= end; ++it) {
      new_start = std::min(new_start, it->first);
      new_end = std::max<uint64_t>(new_end, it->first + it->second.size());
      absorbed.push_back(it);
    }
    merged.resize(new_end - new_start);
    size_t old_bytes = 0;
    for (auto& a : absorbed) {
      std::memcpy(merged.data() + (a->first - new_start), a->second.data(), a->second.size());
      old_bytes += a->second.size();
    }
    std::memcpy(merged.data() + (start - new_start), p, size);
    for (auto& a : absorbed) f->extents.erase(a);
    f->extents[new_start] = std::move(merged);
    f->dirty = f->dirty - old_bytes + (new_end - new_start);
    total_ += (new_end - new_start);
    total_ -= old_bytes;
    dirty = f->dirty;
  }
  if (dirty >= opts_.file_threshold || total_.load() >= opts_.total_limit) return Flush(oid);
  return Status::Ok();
}

Status WriteCache::Flush(const Oid& oid) {
  auto f = FileOf(oid, false);
  if (!f) return Status::Ok();
  return FlushFile(oid, f.get(), true);
}

void WriteCache::FlushForBreak(const Oid& oid) {
  auto f = FileOf(oid, false);
  if (f) (void)FlushFile(oid, f.get(), false);
}

Status WriteCache::FlushFile(const Oid& oid, File* f, bool report) {
  std::lock_guard flk(f->flush_mu);
  std::map<uint64_t, std::vector<uint8_t>> extents;
  size_t bytes;
  {
    std::lock_guard lk(f->mu);
    extents.swap(f->extents);
    bytes = f->dirty;
    f->dirty = 0;
    if (extents.empty()) {
      Status e = f->error;
      f->error = Status::Ok();
      return e;
    }
    auto last = std::prev(extents.end());
    f->sending_end = last->first + last->second.size();
  }
  auto sent = Send(oid, extents);
  total_ -= bytes;
  std::lock_guard lk(f->mu);
  f->sending_end.reset();
  if (!sent.ok()) {
    spdlog::warn("flushing {} bytes of {} failed: {}", bytes, oid.Hex(), sent.status().ToString());
    // Reported now to the caller, or kept for the application's next call.
    f->error = report ? Status::Ok() : sent.status();
    return sent.status();
  }
  f->flushed_size = *sent;
  return Status::Ok();
}

Result<uint64_t> WriteCache::Send(const Oid& oid,
                                  const std::map<uint64_t, std::vector<uint8_t>>& extents) {
  // Cut the extents into IO_MAX pieces and pack them into transactions.
  std::vector<Group> groups(1);
  for (const auto& [off, bytes] : extents) {
    for (size_t done = 0; done < bytes.size();) {
      size_t n = std::min<size_t>(bytes.size() - done, POHMELFS_IO_MAX);
      Group* g = &groups.back();
      size_t need = n + sizeof(pohmelfs_cmd) + sizeof(pohmelfs_write_req) + 8;
      if (!g->writes.empty() && (g->writes.size() >= POHMELFS_BATCH_MAX ||
                                 g->bytes + need > POHMELFS_IO_MAX + kBatchRoom / 2)) {
        groups.emplace_back();
        g = &groups.back();
      }
      g->writes.emplace_back(off + done, std::span<const uint8_t>(bytes.data() + done, n));
      g->bytes += need;
      done += n;
    }
  }
  auto send_group = [this, &oid](const Group& g) -> Result<uint64_t> {
    std::vector<pohmelfs_write_req> reqs(g.writes.size());
    std::vector<pohmelfs_cmd> cmds(g.writes.size());
    std::vector<iovec> iov;
    pohmelfs_batch_req b{to_le(static_cast<uint32_t>(g.writes.size())), 0};
    static const uint8_t kZeros[8] = {};
    const bool batch = g.writes.size() > 1;
    if (batch) iov.push_back({&b, sizeof(b)});
    for (size_t i = 0; i < g.writes.size(); i++) {
      const auto& [off, data] = g.writes[i];
      reqs[i] = {oid.ToWire(), to_le(off), to_le(static_cast<uint32_t>(data.size())), 0};
      size_t len = sizeof(reqs[i]) + data.size();
      if (batch) {
        cmds[i] = {to_le(uint16_t{POHMELFS_OP_WRITE}), 0, to_le(static_cast<uint32_t>(len))};
        iov.push_back({&cmds[i], sizeof(cmds[i])});
      }
      iov.push_back({&reqs[i], sizeof(reqs[i])});
      iov.push_back({const_cast<uint8_t*>(data.data()), data.size()});
      if (batch && POHMELFS_PAD8(len) != len)
        iov.push_back({const_cast<uint8_t*>(kZeros), POHMELFS_PAD8(len) - len});
    }
    counters_.transactions++;
    counters_.commands += g.writes.size();
    auto reply =
        caller_->Call(batch ? POHMELFS_OP_BATCH : POHMELFS_OP_WRITE, std::span<const iovec>(iov));
    if (!reply.ok()) return reply.status();
    if (reply->status != 0)
      return Status::Error(static_cast<int>(reply->status), "write-back refused by the server");
    proto::Reader r(reply->payload);
    uint64_t size = 0;
    auto one = [&](proto::Reader* rr, size_t expect) -> Status {
      pohmelfs_write_rep rep;
      if (!rr->Get(&rep)) return Status::Error(EPROTO, "short write reply");
      if (from_le(rep.written) != expect) return Status::Error(ENOSPC, "short write-back");
      size = from_le(rep.size);
      return Status::Ok();
    };
    if (!batch) {
      Status s = one(&r, g.writes[0].second.size());
      if (!s.ok()) return s;
    } else {
      pohmelfs_batch_rep br;
      if (!r.Get(&br)) return Status::Error(EPROTO, "short batch reply");
      if (from_le(br.count) != g.writes.size())
        return Status::Error(EPROTO, "batch reply of the wrong length");
      for (size_t i = 0; i < g.writes.size(); i++) {
        pohmelfs_cmd_rep cr;
        std::string_view body;
        if (!r.Get(&cr) || !r.Bytes(POHMELFS_PAD8(from_le(cr.length)), &body))
          return Status::Error(EPROTO, "short batch reply");
        if (from_le(cr.status) != 0)
          return Status::Error(static_cast<int>(from_le(cr.status)), "write-back refused");
        proto::Reader br2(
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
        Status s = one(&br2, g.writes[i].second.size());
        if (!s.ok()) return s;
      }
    }
    for (const auto& w : g.writes) counters_.bytes += w.second.size();
    return size;
  };
  // Up to flush_parallel transactions in flight; the size reported last (highest offsets
  // come last, so it is the largest) is the file's size.
  uint64_t size = 0;
  Status first = Status::Ok();
  for (size_t i = 0; i < groups.size();) {
    std::vector<std::future<Result<uint64_t>>> inflight;
    size_t n = std::min<size_t>(groups.size() - i, std::max(1, opts_.flush_parallel));
    for (size_t k = 1; k < n; k++)
      inflight.push_back(std::async(std::launch::async, send_group, std::cref(groups[i + k])));
    auto r0 = send_group(groups[i]);
    if (!r0.ok() && first.ok()) first = r0.status();
    if (r0.ok()) size = std::max(size, *r0);
    for (auto& fu : inflight) {
      auto r = fu.get();
      if (!r.ok() && first.ok()) first = r.status();
      if (r.ok()) size = std::max(size, *r);
    }
    i += n;
  }
  if (!first.ok()) return first;
  return size;
}

Status WriteCache::FlushAll() {
  std::vector<std::pair<Oid, std::shared_ptr<File>>> all;
  {
    std::lock_guard lk(mu_);
    for (const auto& [oid, f] : files_) all.emplace_back(oid, f);
  }
  Status first = Status::Ok();
  for (auto& [oid, f] : all) {
    Status s = FlushFile(oid, f.get(), true);
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

std::optional<std::map<uint64_t, std::vector<uint8_t>>> WriteCache::TakeSmall(const Oid& oid,
                                                                              size_t max_bytes) {
  auto f = FileOf(oid, false);
  if (!f) return std::map<uint64_t, std::vector<uint8_t>>{};
  std::lock_guard flk(f->flush_mu);
  std::lock_guard lk(f->mu);
  if (f->dirty > max_bytes) return std::nullopt;
  std::map<uint64_t, std::vector<uint8_t>> out;
  out.swap(f->extents);
  total_ -= f->dirty;
  f->dirty = 0;
  return out;
}

void WriteCache::Discard(const Oid& oid) {
  std::shared_ptr<File> f;
  {
    std::lock_guard lk(mu_);
    auto it = files_.find(oid);
    if (it == files_.end()) return;
    f = it->second;
    files_.erase(it);
  }
  std::lock_guard lk(f->mu);
  total_ -= f->dirty;
  f->extents.clear();
  f->dirty = 0;
}

void WriteCache::Fail(const Oid& oid, const Status& why) {
  auto f = FileOf(oid, false);
  if (!f) return;
  std::lock_guard lk(f->mu);
  if (f->extents.empty()) return;
  spdlog::warn("{}: {} bytes of delayed writes are lost: {}", oid.Hex(), f->dirty, why.ToString());
  total_ -= f->dirty;
  f->extents.clear();
  f->dirty = 0;
  f->error = why;
}

Status WriteCache::TakeError(const Oid& oid) {
  auto f = FileOf(oid, false);
  if (!f) return Status::Ok();
  std::lock_guard lk(f->mu);
  Status e = f->error;
  f->error = Status::Ok();
  return e;
}

std::optional<uint64_t> WriteCache::DirtyEnd(const Oid& oid) {
  auto f = FileOf(oid, false);
  if (!f) return std::nullopt;
  std::lock_guard lk(f->mu);
  if (f->extents.empty()) return f->sending_end;
  auto last = std::prev(f->extents.end());
  return std::max(last->first + last->second.size(), f->sending_end.value_or(0));
}

std::optional<uint64_t> WriteCache::FlushedSize(const Oid& oid) {
  auto f = FileOf(oid, false);
  if (!f) return std::nullopt;
  std::lock_guard lk(f->mu);
  return f->flushed_size;
}

}  // namespace pohmelfs::client
