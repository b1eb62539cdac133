#include "client/meta_queue.h"

#include <spdlog/spdlog.h>

namespace pohmelfs::client {

using proto::from_le;
using proto::to_le;
using Clock = std::chrono::steady_clock;

MetaQueue::MetaQueue(std::shared_ptr<Caller> inner, Options o)
    : inner_(std::move(inner)), opts_(o) {
  flusher_ = std::thread([this] { FlusherLoop(); });
}

MetaQueue::~MetaQueue() {
  Stop();
}

void MetaQueue::Stop() {
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  flusher_.join();
}

Result<RpcReply> MetaQueue::Call(uint16_t opcode, std::span<const iovec> payload) {
  // Also when the queue is empty: the flusher may be sending what it took from it, and this
  // request must not overtake that. Failures are recorded per object.
  (void)Drain();
  return inner_->Call(opcode, payload);
}

void MetaQueue::Queue(uint16_t opcode, const proto::Oid& oid, bool creates,
                      std::vector<uint8_t> body) {
  bool full;
  {
    std::lock_guard lk(mu_);
    if (queue_.empty()) oldest_ = Clock::now();
    queue_.push_back({opcode, oid, creates, std::move(body)});
    if (creates) pending_.insert(oid);
    full = queue_.size() >= opts_.max_queued;
    if (queue_.size() >= opts_.batch) cv_.notify_all();
  }
  counters_.queued++;
  if (full) (void)Drain();
}

bool MetaQueue::Cancel(const proto::Oid& oid) {
  std::lock_guard lk(mu_);
  if (!pending_.erase(oid)) return false;
  size_t before = queue_.size();
  std::erase_if(queue_, [&](const Cmd& c) { return c.oid == oid; });
  counters_.cancelled += before - queue_.size();
  return true;
}

bool MetaQueue::TakeBackOpen(const proto::Oid& oid) {
  std::lock_guard lk(mu_);
  for (auto it = queue_.rbegin(); it != queue_.rend(); ++it) {
    // A removal after the open may rely on the handle (an open unlinked file): keep it.
    if (it->opcode == POHMELFS_OP_UNLINK || it->opcode == POHMELFS_OP_RMDIR) return false;
    if (!(it->oid == oid)) continue;
    if (it->opcode == POHMELFS_OP_OPEN) {
      queue_.erase(std::next(it).base());
      return true;
    }
    if (it->creates && it->opcode == POHMELFS_OP_MKNOD &&
        it->body.size() >= sizeof(pohmelfs_create_req)) {
      pohmelfs_create_req q;
      std::memcpy(&q, it->body.data(), sizeof(q));
      uint32_t flags = from_le(q.flags);
      if (!(flags & POHMELFS_CREATE_OPEN)) return false;
      q.flags = to_le(flags & ~POHMELFS_CREATE_OPEN);
      std::memcpy(it->body.data(), &q, sizeof(q));
      return true;
    }
  }
  return false;
}

bool MetaQueue::Pending(const proto::Oid& oid) {
  std::lock_guard lk(mu_);
  return pending_.count(oid) > 0;
}

Status MetaQueue::Failed(const proto::Oid& oid) {
  std::lock_guard lk(mu_);
  auto it = failed_.find(oid);
  return it == failed_.end() ? Status::Ok() : it->second;
}

Status MetaQueue::Drain() {
  std::lock_guard slk(send_mu_);
  std::deque<Cmd> cmds;
  {
    std::lock_guard lk(mu_);
    cmds.swap(queue_);
    // Still "pending" until sent: a Cancel now finds nothing to cancel and the caller goes
    // the synchronous way, after this drain.
    for (const auto& c : cmds)
      if (c.creates) pending_.erase(c.oid);
  }
  if (cmds.empty()) return Status::Ok();
  return Send(cmds);
}

Status MetaQueue::Send(std::deque<Cmd>& cmds) {
  Status first = Status::Ok();
  auto fail = [&](const Cmd& c, const Status& why) {
    counters_.failed++;
    spdlog::error("a delayed {} of {} failed on the server: {}; the object is marked failed",
                  proto::OpcodeName(c.opcode), c.oid.Hex(), why.ToString());
    std::lock_guard lk(mu_);
    failed_[c.oid] = why;
    if (first.ok()) first = why;
  };
  while (!cmds.empty()) {
    // One BATCH of up to `batch` commands, within the payload limit.
    std::vector<uint8_t> payload(sizeof(pohmelfs_batch_req));
    size_t n = 0;
    for (; n < cmds.size() && n < opts_.batch; n++) {
      const Cmd& c = cmds[n];
      size_t need = sizeof(pohmelfs_cmd) + POHMELFS_PAD8(c.body.size());
      if (n > 0 && payload.size() + need > POHMELFS_PAYLOAD_MAX) break;
      pohmelfs_cmd h{to_le(c.opcode), 0, to_le(static_cast<uint32_t>(c.body.size()))};
      const auto* hp = reinterpret_cast<const uint8_t*>(&h);
      payload.insert(payload.end(), hp, hp + sizeof(h));
      payload.insert(payload.end(), c.body.begin(), c.body.end());
      payload.resize(payload.size() + POHMELFS_PAD8(c.body.size()) - c.body.size());
    }
    pohmelfs_batch_req b{to_le(static_cast<uint32_t>(n)), 0};
    std::memcpy(payload.data(), &b, sizeof(b));
    counters_.transactions++;
    iovec v{payload.data(), payload.size()};
    auto reply = inner_->Call(POHMELFS_OP_BATCH, std::span<const iovec>(&v, 1));
    size_t done = 0;
    if (!reply.ok() || reply->status != 0) {
      Status why = !reply.ok() ? reply.status()
                               : Status::Error(static_cast<int>(reply->status), "batch refused");
      for (size_t i = 0; i < n; i++) fail(cmds[i], why);
      done = n;
    } else {
      // The server stops at the first failed command: report it, send the rest again.
      proto::Reader r(reply->payload);
      pohmelfs_batch_rep br;
      size_t executed = r.Get(&br) ? from_le(br.count) : 0;
      for (size_t i = 0; i < executed && i < n; i++) {
        pohmelfs_cmd_rep cr;
        std::string_view body;
        if (!r.Get(&cr) || !r.Bytes(POHMELFS_PAD8(from_le(cr.length)), &body)) {
          fail(cmds[i], Status::Error(EPROTO, "short batch reply"));
          continue;
        }
        if (from_le(cr.status) != 0)
          fail(cmds[i], Status::Error(static_cast<int>(from_le(cr.status))));
      }
      done = std::max<size_t>(1, std::min(executed, n));
      counters_.sent += done;
    }
    cmds.erase(cmds.begin(), cmds.begin() + static_cast<std::ptrdiff_t>(done));
  }
  return first;
}

void MetaQueue::FlusherLoop() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    if (queue_.empty()) {
      cv_.wait(lk);
      continue;
    }
    if (queue_.size() < opts_.batch && Clock::now() < oldest_ + opts_.delay) {
      cv_.wait_until(lk, oldest_ + opts_.delay);
      continue;
    }
    lk.unlock();
    (void)Drain();
    lk.lock();
  }
}

}  // namespace pohmelfs::client
