#include "client/server_set.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "client/fs_client.h"
#include "client/resync.h"

namespace pohmelfs::client {

using Clock = std::chrono::steady_clock;
using proto::from_le;
using proto::Oid;
using proto::to_le;

const char* StateName(ReplicaState s) {
  switch (s) {
    case ReplicaState::kDown:
      return "down";
    case ReplicaState::kUp:
      return "up";
    case ReplicaState::kSyncing:
      return "syncing";
    case ReplicaState::kStale:
      return "stale";
    case ReplicaState::kSplit:
      return "split-brain";
  }
  return "?";
}

struct ServerSet::Replica {
  explicit Replica(ReplicaSpec s) : spec(std::move(s)) {}
  ReplicaSpec spec;  // GUARDED_BY(ServerSet::mu_)
  std::shared_ptr<RpcClient> rpc;
  ReplicaState state = ReplicaState::kDown;  // GUARDED_BY(mu_)
  bool needs_resync = false;                 // GUARDED_BY(mu_): missed a write some server has
  bool queued = false;                       // GUARDED_BY(mu_): in the resync queue
  std::string note;                          // GUARDED_BY(mu_): why it is in its state
  Oid id;                                    // GUARDED_BY(mu_)
  bool id_known = false;                     // GUARDED_BY(mu_)
  std::set<Oid> marked;  // GUARDED_BY(mu_): peers this server holds markers for, as last seen
  // GUARDED_BY(mu_): objects whose writes it refused or answered differently while syncing,
  // for the resync to look at again (redo_all: a write that names no object, e.g. BATCH).
  std::set<Oid> redo;
  bool redo_all = false;
  std::atomic<uint64_t> reads{0}, writes{0}, errors{0};
  std::atomic<bool> stop{false};
  bool tried = false;  // GUARDED_BY(mu_): the keeper's first connect attempt is over
  std::mutex wake_mu;
  std::condition_variable wake;  // wakes the keeper early
  std::thread keeper;
};

// Writes in flight; Admit and the end of a resync close it to change states in between writes.
class ServerSet::WriteGate {
 public:
  void Enter() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !closed_; });
    active_++;
  }
  void Leave() {
    std::lock_guard lk(mu_);
    if (--active_ == 0) cv_.notify_all();
  }
  void Close() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !closed_; });
    closed_ = true;
    cv_.wait(lk, [&] { return active_ == 0; });
  }
  void Open() {
    std::lock_guard lk(mu_);
    closed_ = false;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int active_ = 0;
  bool closed_ = false;
};

namespace {

// The object ids a request changes, read from its body: every mutating request starts with
// the object (or parent directory) id, and RENAME and LINK carry a second one next.
std::vector<Oid> TouchedOids(uint16_t opcode, std::span<const iovec> payload) {
  uint8_t head[32];
  size_t have = 0;
  for (const auto& v : payload) {
    size_t n = std::min(sizeof(head) - have, v.iov_len);
    std::memcpy(head + have, v.iov_base, n);
    have += n;
    if (have == sizeof(head)) break;
  }
  std::vector<Oid> oids;
  auto at = [&](size_t off) {
    pohmelfs_oid w;
    std::memcpy(&w, head + off, sizeof(w));
    oids.push_back(Oid::FromWire(w));
  };
  if (opcode == POHMELFS_OP_BATCH || have < 16) return oids;
  at(0);
  if ((opcode == POHMELFS_OP_RENAME || opcode == POHMELFS_OP_LINK) && have >= 32) at(16);
  return oids;
}

// The name a marker uses for a server whose id this mount has not learned (it has been down
// since the mount started): derived from its URI, so other mounts of the same config agree.
Oid AliasOf(const std::string& uri) {
  Oid o;
  uint64_t h1 = std::hash<std::string>{}(uri), h2 = std::hash<std::string>{}(uri + "#alias");
  std::memcpy(o.b.data(), &h1, 8);
  std::memcpy(o.b.data() + 8, &h2, 8);
  return o;
}

bool SameStatus(const Result<RpcReply>& a, const Result<RpcReply>& b) {
  return a.ok() && b.ok() && a->status == b->status;
}

}  // namespace

ServerSet::ServerSet(const ServerSetOptions& o) : opts_(o), gate_(std::make_unique<WriteGate>()) {}

ServerSet::~ServerSet() {
  Stop();
}

std::chrono::milliseconds ServerSet::CallBound() const {
  return opts_.rpc.trans_scan_timeout * (opts_.rpc.trans_retries + 1);
}

Result<std::shared_ptr<ServerSet>> ServerSet::Start(const std::vector<ReplicaSpec>& specs,
                                                    const ServerSetOptions& o) {
  if (specs.empty()) return Status::Error(EINVAL, "no server given");
  std::shared_ptr<ServerSet> set(new ServerSet(o));
  for (const auto& spec : specs) {
    auto r = set->MakeReplica(spec);
    if (!r.ok()) return r.status();
    std::lock_guard lk(set->mu_);
    set->replicas_.push_back(*r);
  }
  set->resync_thread_ = std::thread([s = set.get()] { s->ResyncLoop(); });
  // Every keeper connects its server at once; wait until each has had its first try.
  for (const auto& r : set->Snapshot()) set->StartKeeper(r);
  const auto deadline = Clock::now() + o.rpc.connect_timeout + std::chrono::milliseconds(500);
  std::unique_lock lk(set->mu_);
  set->cv_.wait_until(lk, deadline, [&] {
    return std::all_of(set->replicas_.begin(), set->replicas_.end(),
                       [](const ReplicaPtr& r) { return r->tried; });
  });
  bool any_up = std::any_of(set->replicas_.begin(), set->replicas_.end(),
                            [](const ReplicaPtr& r) { return r->state == ReplicaState::kUp; });
  if (!any_up) {
    std::string why;
    for (const auto& r : set->replicas_)
      why += (why.empty() ? "" : "; ") + r->spec.uri + ": " + r->note;
    lk.unlock();
    set->Stop();
    return Status::Error(EIO, "no server is usable: " + why);
  }
  return set;
}

void ServerSet::Stop() {
  std::vector<ReplicaPtr> all;
  {
    std::lock_guard lk(mu_);
    if (stopping_ && replicas_.empty()) return;
    stopping_ = true;
    all = replicas_;
  }
  cv_.notify_all();
  cancel_resync_ = true;
  for (const auto& r : all) {
    r->stop = true;
    r->wake.notify_all();
  }
  for (const auto& r : all)
    if (r->keeper.joinable()) r->keeper.join();
  if (resync_thread_.joinable()) resync_thread_.join();
  std::lock_guard lk(mu_);
  replicas_.clear();
}

Result<ServerSet::ReplicaPtr> ServerSet::MakeReplica(const ReplicaSpec& spec) {
  RpcOptions ro = opts_.rpc;
  auto rpc = RpcClient::Create(spec.uri, ro);
  if (!rpc.ok()) return rpc.status();
  auto r = std::make_shared<Replica>(spec);
  r->rpc = std::move(*rpc);
  r->note = "connecting";
  std::weak_ptr<ServerSet> weak_set = weak_from_this();
  std::weak_ptr<Replica> weak_r = r;
  r->rpc->SetOnDisconnect([this, weak_set, weak_r] {
    auto keep_set = weak_set.lock();
    auto rr = weak_r.lock();
    if (keep_set && rr) MarkDown(rr, "connection lost");
  });
  return r;
}

void ServerSet::StartKeeper(const ReplicaPtr& r) {
  r->keeper = std::thread([this, r] { KeeperLoop(r); });
}

void ServerSet::SetState(const ReplicaPtr& r, ReplicaState s, const std::string& note) {
  if (r->state != s)
    spdlog::info("{}: {} -> {}{}{}", r->spec.uri, StateName(r->state), StateName(s),
                 note.empty() ? "" : ": ", note);
  r->state = s;
  r->note = note;
  cv_.notify_all();
}

void ServerSet::MarkDown(const ReplicaPtr& r, const std::string& why) {
  {
    std::lock_guard lk(mu_);
    if (r->state != ReplicaState::kDown) SetState(r, ReplicaState::kDown, why);
  }
  r->rpc->Disconnect(Status::Error(EIO, why));
  r->wake.notify_all();
}

void ServerSet::KeeperLoop(const ReplicaPtr& r) {
  auto backoff = std::chrono::milliseconds(100);
  const auto tick = std::min<std::chrono::milliseconds>(opts_.keepalive_interval / 4,
                                                        std::chrono::milliseconds(200));
  auto last_admit = Clock::now();
  auto sleep_for = [&](std::chrono::milliseconds d) {
    std::unique_lock lk(r->wake_mu);
    r->wake.wait_for(lk, d, [&] { return r->stop.load(); });
  };
  while (!r->stop) {
    ReplicaState state;
    {
      std::lock_guard lk(mu_);
      state = r->state;
    }
    if (!r->rpc->connected()) {
      Status s = r->rpc->TryConnect();
      if (!s.ok()) {
        {
          std::lock_guard lk(mu_);
          r->note = s.reason();
          r->tried = true;
          cv_.notify_all();
        }
        sleep_for(backoff);
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(1));
        continue;
      }
      backoff = std::chrono::milliseconds(100);
      Admit(r);
      last_admit = Clock::now();
      std::lock_guard lk(mu_);
      r->tried = true;
      cv_.notify_all();
      continue;
    }
    // Connected by a call (a lone server reconnects itself), or waiting for a good server.
    if (state == ReplicaState::kDown ||
        ((state == ReplicaState::kStale || state == ReplicaState::kSplit) &&
         Clock::now() - last_admit > std::chrono::seconds(1))) {
      Admit(r);
      last_admit = Clock::now();
    }
    if (Clock::now() - r->rpc->last_receive() >= opts_.keepalive_interval) {
      CallOptions co{.attempts = 1, .attempt_timeout = opts_.keepalive_timeout, .fail_fast = true};
      auto t = r->rpc->Begin(POHMELFS_OP_PING, {}, co);
      auto reply = r->rpc->Wait(*t);
      if (!reply.ok() && r->rpc->connected() && !r->stop) {
        spdlog::warn("{}: no answer to keepalive within {} ms; declaring it dead", r->spec.uri,
                     opts_.keepalive_timeout.count());
        r->errors++;
        MarkDown(r, "keepalive timed out");
      }
    }
    sleep_for(tick);
  }
}

Result<std::vector<Oid>> ServerSet::ListMarkers(const ReplicaPtr& r) {
  pohmelfs_replica_req q{};
  q.cmd = to_le(POHMELFS_REPLICA_LIST);
  iovec v{&q, sizeof(q)};
  auto t = r->rpc->Begin(POHMELFS_OP_REPLICA, std::span<const iovec>(&v, 1),
                         CallOptions{.attempts = 1, .fail_fast = true});
  auto reply = r->rpc->Wait(*t);
  if (!reply.ok()) return reply.status();
  if (reply->status != 0) return Status::Error(static_cast<int>(reply->status), "replica list");
  proto::Reader rd(reply->payload);
  pohmelfs_replica_list_rep rep;
  if (!rd.Get(&rep)) return Status::Error(EPROTO, "short replica list");
  uint32_t n = from_le(rep.count);
  if (n > POHMELFS_REPLICA_LIST_MAX) return Status::Error(EPROTO, "replica list too long");
  std::vector<Oid> out;
  for (uint32_t i = 0; i < n; i++) {
    pohmelfs_oid w;
    if (!rd.Get(&w)) return Status::Error(EPROTO, "short replica list");
    out.push_back(Oid::FromWire(w));
  }
  std::lock_guard lk(mu_);
  r->marked = std::set<Oid>(out.begin(), out.end());
  return out;
}

Status ServerSet::MarkerCall(const ReplicaPtr& r, uint32_t cmd, const Oid& peer) {
  pohmelfs_replica_req q{};
  q.cmd = to_le(cmd);
  q.peer = peer.ToWire();
  iovec v{&q, sizeof(q)};
  auto t = r->rpc->Begin(POHMELFS_OP_REPLICA, std::span<const iovec>(&v, 1),
                         CallOptions{.fail_fast = true});
  auto reply = r->rpc->Wait(*t);
  if (!reply.ok()) return reply.status();
  if (reply->status != 0) return Status::Error(static_cast<int>(reply->status), "replica marker");
  std::lock_guard lk(mu_);
  if (cmd == POHMELFS_REPLICA_MARK)
    r->marked.insert(peer);
  else
    r->marked.erase(peer);
  return Status::Ok();
}

void ServerSet::Admit(const ReplicaPtr& r) {
  std::lock_guard admit(admit_mu_);
  if (!r->rpc->connected()) return;
  const Oid id = r->rpc->server_id();
  // What the newcomer and every up server hold markers for (network calls: no locks held).
  auto own = ListMarkers(r);
  if (!own.ok()) {
    MarkDown(r, "listing its markers failed: " + own.status().reason());
    return;
  }
  std::vector<ReplicaPtr> others;
  for (const auto& g : Snapshot()) {
    if (g == r) continue;
    std::lock_guard lk(mu_);
    if (g->state == ReplicaState::kUp && g->spec.write) others.push_back(g);
  }
  for (const auto& g : others)
    if (!ListMarkers(g).ok()) MarkDown(g, "listing its markers failed");

  gate_->Close();  // decide between writes, so none is in flight with the old states
  {
    std::lock_guard lk(mu_);
    for (const auto& x : replicas_)
      if (x != r && x->id_known && x->id == id && x->state != ReplicaState::kDown) {
        SetState(r, ReplicaState::kSplit, "same export as " + x->spec.uri + " (listed twice?)");
        gate_->Open();
        return;
      }
    r->id = id;
    r->id_known = true;
    if (!r->spec.write) {
      SetState(r, ReplicaState::kUp, "read-only member: never written or resynced by this mount");
      gate_->Open();
      return;
    }
    std::vector<ReplicaPtr> good, holders;
    for (const auto& g : replicas_)
      if (g != r && g->state == ReplicaState::kUp && g->spec.write) good.push_back(g);
    const Oid alias = AliasOf(r->spec.uri);
    for (const auto& g : good)
      if (g->marked.count(id) || g->marked.count(alias)) holders.push_back(g);
    for (const auto& g : holders)
      if (r->marked.count(g->id) || r->marked.count(AliasOf(g->spec.uri))) {
        spdlog::error(
            "{}: split brain with {}: each holds changes the other missed; not using {} until "
            "resolved (pohmelfsctl servers MNT resolve {})",
            r->spec.uri, g->spec.uri, r->spec.uri, r->spec.uri);
        SetState(r, ReplicaState::kSplit, "split brain with " + g->spec.uri);
        gate_->Open();
        return;
      }
    if (!holders.empty()) r->needs_resync = true;
    if (r->needs_resync) {
      if (good.empty()) {
        SetState(r, ReplicaState::kStale, "missed writes; waiting for a server that has them");
      } else {
        SetState(r, ReplicaState::kSyncing, "missed writes; resyncing");
        if (!r->queued) resync_queue_.push_back(r), r->queued = true;
      }
      gate_->Open();
      return;
    }
    // Current. An up server this one holds markers for missed its changes: resync that one.
    for (const auto& g : good)
      if ((r->marked.count(g->id) || r->marked.count(AliasOf(g->spec.uri))) &&
          !g->marked.count(id) && !g->marked.count(alias)) {
        g->needs_resync = true;
        SetState(g, ReplicaState::kSyncing, "missed changes " + r->spec.uri + " has");
        if (!g->queued) resync_queue_.push_back(g), g->queued = true;
      }
    SetState(r, ReplicaState::kUp, "");
  }
  gate_->Open();
}

void ServerSet::ResyncLoop() {
  for (;;) {
    ReplicaPtr r;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !resync_queue_.empty(); });
      if (stopping_) return;
      r = resync_queue_.front();
      resync_queue_.pop_front();
      r->queued = false;
      if (r->state != ReplicaState::kSyncing || r->stop ||
          std::find(replicas_.begin(), replicas_.end(), r) == replicas_.end())
        continue;
    }
    RunResync(r);
  }
}

void ServerSet::RunResync(const ReplicaPtr& r) {
  ReplicaPtr g;
  {
    std::lock_guard lk(mu_);
    for (const auto& x : replicas_)
      if (x != r && x->state == ReplicaState::kUp && x->spec.write &&
          (!g || x->spec.priority > g->spec.priority))
        g = x;
    if (!g) {
      SetState(r, ReplicaState::kStale, "missed writes; waiting for a server that has them");
      return;
    }
  }
  spdlog::info("{}: resync from {} started", r->spec.uri, g->spec.uri);
  const auto start = Clock::now();
  FsClient good(std::make_shared<SingleServer>(g->rpc, CallOptions{.fail_fast = true}));
  FsClient stale(std::make_shared<SingleServer>(r->rpc, CallOptions{.fail_fast = true}));
  ResyncStats stats;
  {
    std::lock_guard lk(mu_);
    r->redo.clear();
    r->redo_all = false;
  }
  Resyncer resyncer(good, stale, locks_, cancel_resync_, &stats);
  Status s = resyncer.FullSync();
  // Writes that went past the sync while it ran: look at their objects again, until none are
  // left with writes stopped (the gate stays closed for the bookkeeping below).
  auto take_redo = [&](bool* all) {
    std::lock_guard lk(mu_);
    std::vector<Oid> v(r->redo.begin(), r->redo.end());
    *all = r->redo_all;
    r->redo.clear();
    r->redo_all = false;
    return v;
  };
  constexpr int kMaxRedoRounds = 64;
  bool closed = false;
  for (int round = 0; s.ok(); round++) {
    bool all = false;
    auto redo = take_redo(&all);
    if (redo.empty() && !all) {
      gate_->Close();
      redo = take_redo(&all);
      if (redo.empty() && !all) {
        closed = true;
        break;
      }
      gate_->Open();
    }
    if (round == kMaxRedoRounds) {
      s = Status::Error(EAGAIN, "writes keep overtaking the resync");
      break;
    }
    s = all ? resyncer.FullSync() : resyncer.Redo(redo);
  }
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  if (!s.ok()) {
    if (closed) gate_->Open();
    spdlog::warn("{}: resync from {} failed after {} ms: {}", r->spec.uri, g->spec.uri, ms,
                 s.ToString());
    std::lock_guard lk(mu_);
    if (r->state == ReplicaState::kSyncing)
      SetState(r, ReplicaState::kStale, "resync failed: " + s.reason());
    return;
  }
  // Between writes (the gate is closed): the newcomer now has everything good has, so it
  // holds the same markers, and nobody needs to remember that it missed anything.
  Status fin = Status::Ok();
  auto gm = ListMarkers(g);
  if (!gm.ok()) fin = gm.status();
  Oid rid;
  const Oid ralias = AliasOf(r->spec.uri);
  std::vector<std::pair<ReplicaPtr, Oid>> clears;
  {
    std::lock_guard lk(mu_);
    rid = r->id;
    for (const auto& x : replicas_)
      if (x != r && x->state != ReplicaState::kDown)
        for (const Oid& name : {rid, ralias})
          if (x->marked.count(name)) clears.emplace_back(x, name);
  }
  for (const auto& [x, name] : clears)
    if (fin.ok()) fin = MarkerCall(x, POHMELFS_REPLICA_CLEAR, name);
  auto rm = fin.ok() ? ListMarkers(r) : Result<std::vector<Oid>>(fin);
  if (rm.ok()) {
    std::set<Oid> want(gm->begin(), gm->end());
    want.erase(rid);
    want.erase(ralias);
    for (const auto& p : *rm)
      if (fin.ok() && !want.count(p)) fin = MarkerCall(r, POHMELFS_REPLICA_CLEAR, p);
    for (const auto& p : want)
      if (fin.ok() && !std::count(rm->begin(), rm->end(), p))
        fin = MarkerCall(r, POHMELFS_REPLICA_MARK, p);
  } else {
    fin = rm.status();
  }
  {
    std::lock_guard lk(mu_);
    if (!fin.ok()) {
      if (r->state == ReplicaState::kSyncing)
        SetState(r, ReplicaState::kStale, "resync bookkeeping failed: " + fin.reason());
    } else if (r->state == ReplicaState::kSyncing) {
      r->needs_resync = false;
      SetState(r, ReplicaState::kUp,
               fmt::format("resynced from {} in {} ms: {} dirs, {} objects, {} created, {} "
                           "removed, {} copied, {} bytes, {} passes",
                           g->spec.uri, ms, stats.dirs, stats.objects, stats.created, stats.removed,
                           stats.copied, stats.bytes, stats.passes));
    }
  }
  gate_->Open();
}

void ServerSet::EnsureMarked(std::vector<ReplicaPtr>* holders,
                             const std::vector<ReplicaPtr>& missed) {
  for (auto it = holders->begin(); it != holders->end();) {
    const ReplicaPtr& h = *it;
    Status s = Status::Ok();
    for (const auto& m : missed) {
      Oid mid;
      bool need;
      {
        std::lock_guard lk(mu_);
        mid = m->id_known ? m->id : AliasOf(m->spec.uri);
        need = !h->marked.count(mid);
      }
      if (!need) continue;
      s = MarkerCall(h, POHMELFS_REPLICA_MARK, mid);
      if (!s.ok()) break;
      spdlog::info("{}: now records that {} missed writes", h->spec.uri, m->spec.uri);
    }
    if (s.ok()) {
      ++it;
    } else {
      h->errors++;
      MarkDown(h, "recording a missed write failed: " + s.reason());
      it = holders->erase(it);
    }
  }
}

std::vector<ServerSet::ReplicaPtr> ServerSet::Snapshot() {
  std::lock_guard lk(mu_);
  return replicas_;
}

bool ServerSet::WaitForUp(bool want_write, Clock::time_point deadline) {
  std::unique_lock lk(mu_);
  return cv_.wait_until(lk, deadline, [&] {
    return stopping_ || std::any_of(replicas_.begin(), replicas_.end(), [&](const ReplicaPtr& r) {
             return r->state == ReplicaState::kUp && (want_write ? r->spec.write : r->spec.read);
           });
  }) && !stopping_;
}

Result<RpcReply> ServerSet::Call(uint16_t opcode, std::span<const iovec> payload) {
  return proto::IsMutating(opcode) ? Write(opcode, payload) : Read(opcode, payload);
}

Result<RpcReply> ServerSet::Read(uint16_t opcode, std::span<const iovec> payload) {
  const auto deadline = Clock::now() + CallBound();
  std::set<Replica*> tried;
  Status last = Status::Error(EIO, "no readable server is up");
  for (;;) {
    // Up, readable servers of the highest priority first; equals take turns.
    std::vector<ReplicaPtr> cands;
    {
      std::lock_guard lk(mu_);
      for (const auto& r : replicas_)
        if (r->state == ReplicaState::kUp && r->spec.read && !tried.count(r.get()))
          cands.push_back(r);
    }
    if (cands.empty()) {
      if (Clock::now() >= deadline) return last;
      tried.clear();  // every server failed once: wait for one to come (back) up, then retry
      if (!WaitForUp(false, deadline)) return last;
      continue;
    }
    std::stable_sort(cands.begin(), cands.end(), [](const ReplicaPtr& a, const ReplicaPtr& b) {
      return a->spec.priority > b->spec.priority;
    });
    size_t equal = 1;
    while (equal < cands.size() && cands[equal]->spec.priority == cands[0]->spec.priority) equal++;
    const ReplicaPtr& r = cands[read_turn_++ % equal];
    auto t = r->rpc->Begin(opcode, payload, CallOptions{.attempts = 1, .fail_fast = true});
    auto reply = r->rpc->Wait(*t);
    if (reply.ok()) {
      r->reads++;
      return reply;
    }
    r->errors++;
    last = reply.status();
    tried.insert(r.get());
    spdlog::info("{}: {} failed ({}); trying another server", r->spec.uri,
                 proto::OpcodeName(opcode), last.ToString());
    if (!r->rpc->connected())
      MarkDown(r, "connection lost during " + std::string(proto::OpcodeName(opcode)));
    if (Clock::now() >= deadline) return last;
  }
}

Result<RpcReply> ServerSet::Write(uint16_t opcode, std::span<const iovec> payload) {
  ObjectLocks::Shared objects(&locks_, TouchedOids(opcode, payload));
  const auto deadline = Clock::now() + CallBound();
  std::vector<ReplicaPtr> targets;
  std::vector<ReplicaState> states;
  for (;;) {
    if (!WaitForUp(true, deadline)) return Status::Error(EIO, "no writable server is up");
    gate_->Enter();
    targets.clear();
    states.clear();
    {
      std::lock_guard lk(mu_);
      for (const auto& r : replicas_)
        if (r->spec.write && (r->state == ReplicaState::kUp || r->state == ReplicaState::kSyncing))
          targets.push_back(r);
      std::stable_sort(targets.begin(), targets.end(),
                       [](const ReplicaPtr& a, const ReplicaPtr& b) {
                         return a->spec.priority > b->spec.priority;
                       });
      for (const auto& r : targets) states.push_back(r->state);
    }
    if (std::count(states.begin(), states.end(), ReplicaState::kUp) > 0) break;
    gate_->Leave();
  }
  struct GateGuard {
    WriteGate* g;
    ~GateGuard() { g->Leave(); }
  } gate_guard{gate_.get()};

  // A lone server reconnects and resends by itself (its session keeps resends exactly-once);
  // with company, a server that fails is dropped at once and healed later.
  CallOptions co;
  co.fail_fast = targets.size() > 1;
  std::vector<std::unique_ptr<RpcClient::Transaction>> ts;
  ts.reserve(targets.size());
  for (const auto& r : targets) ts.push_back(r->rpc->Begin(opcode, payload, co));
  std::vector<Result<RpcReply>> rs;
  rs.reserve(targets.size());
  for (size_t i = 0; i < targets.size(); i++) rs.push_back(targets[i]->rpc->Wait(*ts[i]));

  int primary = -1;
  for (size_t i = 0; i < targets.size() && primary < 0; i++)
    if (states[i] == ReplicaState::kUp && rs[i].ok()) primary = static_cast<int>(i);
  if (primary < 0) {
    for (size_t i = 0; i < targets.size(); i++) {
      targets[i]->errors++;
      if (states[i] == ReplicaState::kUp && !targets[i]->rpc->connected())
        MarkDown(targets[i], "write failed: " + rs[i].status().reason());
    }
    for (size_t i = 0; i < targets.size(); i++)
      if (states[i] == ReplicaState::kUp) return rs[i].status();
    return Status::Error(EIO, "no server applied the write");
  }
  std::vector<ReplicaPtr> holders{targets[primary]}, missed;
  for (size_t i = 0; i < targets.size(); i++) {
    if (static_cast<int>(i) == primary) continue;
    const ReplicaPtr& r = targets[i];
    if (states[i] == ReplicaState::kSyncing) {
      // Its resync covers this write, unless the resync already went past the object: have
      // it look again at whatever this write touched.
      if (!SameStatus(rs[i], rs[primary])) {
        auto touched = TouchedOids(opcode, payload);
        std::lock_guard lk(mu_);
        r->redo.insert(touched.begin(), touched.end());
        if (touched.empty()) r->redo_all = true;
      }
      if (!rs[i].ok() && !r->rpc->connected()) MarkDown(r, "write failed while resyncing");
      continue;
    }
    if (!rs[i].ok()) {
      r->errors++;
      missed.push_back(r);
      MarkDown(r, "write failed: " + rs[i].status().reason());
    } else if (!SameStatus(rs[i], rs[primary])) {
      spdlog::warn("{}: {} answered {} where {} answered {}; resyncing it", r->spec.uri,
                   proto::OpcodeName(opcode), rs[i]->status, targets[primary]->spec.uri,
                   rs[primary]->status);
      r->errors++;
      missed.push_back(r);
      std::lock_guard lk(mu_);
      r->needs_resync = true;
      SetState(r, ReplicaState::kSyncing, "answered a write differently");
      if (!r->queued) resync_queue_.push_back(r), r->queued = true;
    } else {
      holders.push_back(r);
    }
  }
  // Every writable server that did not apply this must be named by those that did, before
  // the write is acknowledged.
  {
    std::lock_guard lk(mu_);
    for (const auto& r : replicas_)
      if (r->spec.write && r->state != ReplicaState::kUp &&
          std::find(holders.begin(), holders.end(), r) == holders.end() &&
          std::find(missed.begin(), missed.end(), r) == missed.end())
        missed.push_back(r);
    for (const auto& r : missed) r->needs_resync = true;
  }
  if (!missed.empty()) EnsureMarked(&holders, missed);
  if (holders.empty()) return Status::Error(EIO, "no server could record the write durably");
  for (const auto& h : holders) h->writes++;
  return std::move(rs[primary]);
}

ServerSet::ReplicaPtr ServerSet::Find(const std::string& uri) {
  for (const auto& r : replicas_)
    if (r->spec.uri == uri) return r;
  return nullptr;
}

Status ServerSet::Add(const ReplicaSpec& spec) {
  auto r = MakeReplica(spec);
  if (!r.ok()) return r.status();
  {
    std::lock_guard lk(mu_);
    if (Find(spec.uri)) return Status::Error(EEXIST, spec.uri + " is already in the set");
    // It has none of this mount's data yet as far as anyone knows: resync before reads.
    (*r)->needs_resync = true;
    replicas_.push_back(*r);
  }
  spdlog::info("{}: added to the working set ({})", spec.uri, spec.ToString());
  StartKeeper(*r);
  return Status::Ok();
}

Status ServerSet::Remove(const std::string& uri) {
  ReplicaPtr r;
  {
    std::lock_guard lk(mu_);
    r = Find(uri);
    if (!r) return Status::Error(ENOENT, uri + " is not in the set");
    size_t writers = std::count_if(replicas_.begin(), replicas_.end(),
                                   [](const ReplicaPtr& x) { return x->spec.write; });
    if (r->spec.write && writers == 1)
      return Status::Error(EBUSY, "cannot remove the last writable server");
  }
  gate_->Close();
  {
    std::lock_guard lk(mu_);
    replicas_.erase(std::find(replicas_.begin(), replicas_.end(), r));
    cv_.notify_all();
  }
  gate_->Open();
  r->stop = true;
  r->wake.notify_all();
  if (r->keeper.joinable()) r->keeper.join();
  r->rpc->Disconnect(Status::Error(ESHUTDOWN, "removed from the set"));
  spdlog::info("{}: removed from the working set", uri);
  return Status::Ok();
}

Status ServerSet::Update(const ReplicaSpec& spec) {
  ReplicaPtr r;
  gate_->Close();
  {
    std::lock_guard lk(mu_);
    r = Find(spec.uri);
    if (!r) {
      gate_->Open();
      return Status::Error(ENOENT, spec.uri + " is not in the set");
    }
    bool gains_write = spec.write && !r->spec.write;
    r->spec = spec;
    if (gains_write) {  // it was not written: bring it up to date before it counts
      r->needs_resync = true;
      if (r->state == ReplicaState::kUp) SetState(r, ReplicaState::kDown, "became writable");
    }
    cv_.notify_all();
  }
  gate_->Open();
  if (r->state == ReplicaState::kDown) r->wake.notify_all();
  spdlog::info("{}: now {}", spec.uri, spec.ToString());
  return Status::Ok();
}

Status ServerSet::Heal(const std::string& uri) {
  std::lock_guard lk(mu_);
  ReplicaPtr r = Find(uri);
  if (!r) return Status::Error(ENOENT, uri + " is not in the set");
  r->needs_resync = true;
  if (r->state == ReplicaState::kUp) SetState(r, ReplicaState::kDown, "resync requested");
  r->wake.notify_all();
  return Status::Ok();
}

Status ServerSet::Resolve(const std::string& uri) {
  ReplicaPtr r;
  {
    std::lock_guard lk(mu_);
    r = Find(uri);
    if (!r) return Status::Error(ENOENT, uri + " is not in the set");
    if (r->state != ReplicaState::kSplit)
      return Status::Error(EINVAL, uri + " is not in split brain");
  }
  auto own = ListMarkers(r);
  if (!own.ok()) return own.status();
  for (const auto& p : *own) POHMELFS_RETURN_IF_ERROR(MarkerCall(r, POHMELFS_REPLICA_CLEAR, p));
  spdlog::warn("{}: split brain resolved by the operator: its own changes will be overwritten",
               uri);
  std::lock_guard lk(mu_);
  r->needs_resync = true;
  SetState(r, ReplicaState::kDown, "split brain resolved; resyncing");
  r->wake.notify_all();
  return Status::Ok();
}

std::string ServerSet::StatusTable() {
  std::ostringstream out;
  out << fmt::format("{:<28} {:<11} {:>5} {:<4} {:>8} {:>10} {:>10} {:>12} {:>12} {:>7}  {}\n",
                     "SERVER", "STATE", "PRIO", "PERM", "INFLIGHT", "READS", "WRITES", "BYTES_OUT",
                     "BYTES_IN", "ERRORS", "NOTE");
  for (const auto& r : Snapshot()) {
    std::string state, note, perm;
    int prio;
    {
      std::lock_guard lk(mu_);
      state = StateName(r->state);
      note = r->note;
      perm = r->spec.PermString();
      prio = r->spec.priority;
    }
    const auto& c = r->rpc->counters();
    out << fmt::format("{:<28} {:<11} {:>5} {:<4} {:>8} {:>10} {:>10} {:>12} {:>12} {:>7}  {}\n",
                       r->spec.uri, state, prio, perm, r->rpc->inflight(), r->reads.load(),
                       r->writes.load(), c.bytes_out.load(), c.bytes_in.load(),
                       r->errors.load() + c.timeouts.load(), note);
  }
  return out.str();
}

bool ServerSet::WaitAllUp(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] {
    return std::all_of(replicas_.begin(), replicas_.end(),
                       [](const ReplicaPtr& r) { return r->state == ReplicaState::kUp; });
  });
}

}  // namespace pohmelfs::client
