#include "client/server_set.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "client/fs_client.h"
#include "client/iov_util.h"
#include "client/resync.h"
#include "client/rma_rewrite.h"

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
  ReplicaSpec spec;  // GUARDED_BY(ServerSet::mu_), except spec.uri which never changes
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
  std::atomic<uint64_t> rma_bytes{0};  // data moved by RMA instead of in messages
  std::atomic<bool> stop{false};
  bool tried = false;       // GUARDED_BY(mu_): the keeper's first connect attempt is over
  uint64_t epoch = 0;       // GUARDED_BY(mu_): state changes so far
  bool force_full = false;  // GUARDED_BY(mu_): next resync copies every object (heal, resolve)
  uint64_t marker_gen = 0;  // GUARDED_BY(mu_): changes made to `marked` by MarkerCall
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

// The object ids one command changes, read from its body: every mutating command starts with
// the object (or parent directory) id, and RENAME and LINK carry a second one next.
void CommandOids(uint16_t opcode, std::span<const uint8_t> body, std::vector<Oid>* oids) {
  auto at = [&](size_t off) {
    pohmelfs_oid w;
    std::memcpy(&w, body.data() + off, sizeof(w));
    oids->push_back(Oid::FromWire(w));
  };
  if (body.size() < 16) return;
  at(0);
  if ((opcode == POHMELFS_OP_RENAME || opcode == POHMELFS_OP_LINK) && body.size() >= 32) at(16);
}

// The object ids a request changes; for a BATCH, those of each of its commands. Only the
// headers are read from the payload: a batch of writes is not copied.
std::vector<Oid> TouchedOids(uint16_t opcode, std::span<const iovec> payload) {
  std::vector<Oid> oids;
  uint8_t head[32];
  if (opcode != POHMELFS_OP_BATCH) {
    CommandOids(opcode, {head, CopyAt(payload, 0, head, sizeof(head))}, &oids);
    return oids;
  }
  pohmelfs_batch_req b;
  if (CopyAt(payload, 0, &b, sizeof(b)) != sizeof(b)) return oids;
  size_t off = sizeof(b);
  for (uint32_t i = 0; i < proto::from_le(b.count); i++) {
    pohmelfs_cmd c;
    if (CopyAt(payload, off, &c, sizeof(c)) != sizeof(c)) break;
    const size_t len = proto::from_le(c.length);
    const size_t got = CopyAt(payload, off + sizeof(c), head, std::min(len, sizeof(head)));
    if (got < std::min(len, sizeof(head))) break;
    CommandOids(proto::from_le(c.opcode), {head, got}, &oids);
    off += sizeof(c) + POHMELFS_PAD8(len);
  }
  std::sort(oids.begin(), oids.end());
  oids.erase(std::unique(oids.begin(), oids.end()), oids.end());
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
  // Runs on the connection's network thread: it must not own the Replica (its last reference
  // would destroy the RpcClient on its own thread) nor close anything (the connection is
  // closed already, and a newer one may exist by now).
  std::weak_ptr<ServerSet> weak_set = weak_from_this();
  Replica* raw = r.get();
  RpcClient* from = r->rpc.get();
  r->rpc->SetOnCallback([weak_set, from](uint16_t opcode, std::vector<uint8_t>&& payload) {
    auto set = weak_set.lock();
    if (!set) return;
    CallbackSink sink;
    {
      std::lock_guard lk(set->listener_mu_);
      sink = set->on_callback_;
    }
    if (sink) sink(from, opcode, std::move(payload));
  });
  r->rpc->SetOnDisconnect([weak_set, raw] {
    if (auto set = weak_set.lock()) set->OnDisconnected(raw);
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
  if (r->state != s) r->epoch++;
  if (s == ReplicaState::kUp) {  // the outage, if any, is over
    if (r->spec.read) no_reader_since_.reset();
    if (r->spec.write) no_writer_since_.reset();
  }
  r->state = s;
  r->note = note;
  cv_.notify_all();
  std::function<void()> notify;
  {
    std::lock_guard lk(listener_mu_);
    notify = on_state_change_;
  }
  // Called under mu_: the listener only wakes its own thread.
  if (notify) notify();
}

std::shared_ptr<RpcClient> ServerSet::Authority() {
  std::lock_guard lk(mu_);
  ReplicaPtr best;
  for (const auto& r : replicas_)
    if (r->state == ReplicaState::kUp && r->spec.write &&
        (!best || r->spec.priority > best->spec.priority))
      best = r;
  return best ? best->rpc : nullptr;
}

void ServerSet::SetCoherenceListener(CallbackSink on_callback,
                                     std::function<void()> on_state_change) {
  std::lock_guard lk(listener_mu_);
  on_callback_ = std::move(on_callback);
  on_state_change_ = std::move(on_state_change);
}

void ServerSet::OnDisconnected(const Replica* raw) {
  std::lock_guard lk(mu_);
  for (const auto& r : replicas_)
    if (r.get() == raw) {
      if (r->state != ReplicaState::kDown) SetState(r, ReplicaState::kDown, "connection lost");
      r->wake.notify_all();
    }
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
      const auto pinged_at = Clock::now();
      auto t = r->rpc->Begin(POHMELFS_OP_PING, {}, co);
      auto reply = r->rpc->Wait(*t);
      // A late ping on a connection that kept receiving is a busy server, not a dead one:
      // declaring it dead would move this mount's reads, locks and leases elsewhere while
      // other mounts stay on it.
      if (!reply.ok() && r->rpc->connected() && !r->stop && r->rpc->last_receive() <= pinged_at) {
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
  uint64_t gen;
  {
    std::lock_guard lk(mu_);
    gen = r->marker_gen;
  }
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
  if (r->marker_gen == gen)  // else a MARK or CLEAR overtook this listing: keep its result
    r->marked = std::set<Oid>(out.begin(), out.end());
  return out;
}

Status ServerSet::MarkerCall(const ReplicaPtr& r, uint32_t cmd, const Oid& peer,
                             const CallOptions& co) {
  pohmelfs_replica_req q{};
  q.cmd = to_le(cmd);
  q.peer = peer.ToWire();
  iovec v{&q, sizeof(q)};
  auto t = r->rpc->Begin(POHMELFS_OP_REPLICA, std::span<const iovec>(&v, 1), co);
  auto reply = r->rpc->Wait(*t);
  if (!reply.ok()) return reply.status();
  if (reply->status != 0) return Status::Error(static_cast<int>(reply->status), "replica marker");
  std::lock_guard lk(mu_);
  if (cmd == POHMELFS_REPLICA_MARK)
    r->marked.insert(peer);
  else
    r->marked.erase(peer);
  r->marker_gen++;
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
  Decide(r, id);
  gate_->Open();
}

void ServerSet::Decide(const ReplicaPtr& r, const Oid& id) {
  std::lock_guard lk(mu_);
  if (r->state == ReplicaState::kSplit) return;  // until the operator resolves it
  for (const auto& x : replicas_)
    if (x != r && x->id_known && x->id == id && x->state != ReplicaState::kDown) {
      SetState(r, ReplicaState::kSplit, "same export as " + x->spec.uri + " (listed twice?)");
      return;
    }
  r->id = id;
  r->id_known = true;
  if (!r->spec.write) {
    SetState(r, ReplicaState::kUp, "read-only member: never written or resynced by this mount");
    return;
  }
  std::vector<ReplicaPtr> good;
  for (const auto& g : replicas_)
    if (g != r && g->state == ReplicaState::kUp && g->spec.write) good.push_back(g);
  bool missed = false;
  for (const auto& g : good) missed = missed || Marks(g, r);
  if (missed) {
    // It missed changes an up server has. If it also has changes that every up server
    // missed, no source can bring it up to date without losing some: a split brain. (An up
    // server it holds no marker for has all of its changes: that one is the source.)
    const bool unique_changes =
        std::all_of(good.begin(), good.end(), [&](const ReplicaPtr& g) { return Marks(r, g); });
    if (unique_changes) {
      const ReplicaPtr& peer =
          *std::find_if(good.begin(), good.end(), [&](const ReplicaPtr& g) { return Marks(g, r); });
      spdlog::error(
          "{}: split brain with {}: each holds changes the other missed; not using {} until "
          "resolved (pohmelfsctl servers MNT resolve {})",
          r->spec.uri, peer->spec.uri, r->spec.uri, r->spec.uri);
      SetState(r, ReplicaState::kSplit, "split brain with " + peer->spec.uri);
      return;
    }
    r->needs_resync = true;
  }
  if (r->needs_resync) {
    if (good.empty()) {
      SetState(r, ReplicaState::kStale, "missed writes; waiting for a server that has them");
    } else {
      SetState(r, ReplicaState::kSyncing, "missed writes; resyncing");
      if (!r->queued) resync_queue_.push_back(r), r->queued = true;
    }
    return;
  }
  // Current. An up server this one holds markers for missed its changes: resync that one.
  for (const auto& g : good)
    if (Marks(r, g) && !Marks(g, r)) {
      g->needs_resync = true;
      SetState(g, ReplicaState::kSyncing, "missed changes " + r->spec.uri + " has");
      if (!g->queued) resync_queue_.push_back(g), g->queued = true;
    }
  SetState(r, ReplicaState::kUp, "");
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

bool ServerSet::Marks(const ReplicaPtr& holder, const ReplicaPtr& peer) {
  return (peer->id_known && holder->marked.count(peer->id)) ||
         holder->marked.count(AliasOf(peer->spec.uri));
}

void ServerSet::RunResync(const ReplicaPtr& r) {
  ReplicaPtr g;
  uint64_t r_epoch = 0, g_epoch = 0;
  bool force = false;
  {
    std::lock_guard lk(mu_);
    // The source: an up writable server of the highest priority that does not miss changes
    // this one has (it would hold no marker for it then).
    for (const auto& x : replicas_)
      if (x != r && x->state == ReplicaState::kUp && x->spec.write && !Marks(r, x) &&
          (!g || x->spec.priority > g->spec.priority))
        g = x;
    if (!g) {
      SetState(r, ReplicaState::kStale, "missed writes; waiting for a server that has them");
      return;
    }
    r_epoch = r->epoch;
    g_epoch = g->epoch;
    force = r->force_full;
    r->redo.clear();
    r->redo_all = false;
  }
  spdlog::info("{}: resync from {} started{}", r->spec.uri, g->spec.uri,
               force ? " (every object copied)" : "");
  const auto start = Clock::now();
  FsClient good(std::make_shared<SingleServer>(g->rpc, CallOptions{.fail_fast = true}));
  FsClient stale(std::make_shared<SingleServer>(r->rpc, CallOptions{.fail_fast = true}));
  ResyncStats stats;
  Resyncer resyncer(good, stale, locks_, cancel_resync_, &stats, force);
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
  // After kOpenRounds rounds with writes flowing, the rest is done with writes paused, so the
  // resync always ends.
  constexpr int kOpenRounds = 8;
  bool closed = false;
  for (int round = 0; s.ok(); round++) {
    bool all = false;
    auto redo = take_redo(&all);
    if (!closed && (round >= kOpenRounds || (redo.empty() && !all))) {
      gate_->Close();  // no write is in flight from here on
      closed = true;
      bool more_all = false;
      auto more = take_redo(&more_all);
      redo.insert(redo.end(), more.begin(), more.end());
      all = all || more_all;
    }
    if (redo.empty() && !all) break;
    s = all ? resyncer.FullSync() : resyncer.Redo(redo);
  }
  if (s.ok()) {  // both must have kept their states all along, or writes may have gone past
    std::lock_guard lk(mu_);
    if (r->epoch != r_epoch || g->epoch != g_epoch || r->state != ReplicaState::kSyncing ||
        g->state != ReplicaState::kUp)
      s = Status::Error(EAGAIN, "a server changed state during the resync");
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
  // holds the same markers, and nobody needs to remember that it missed anything. One
  // attempt per call: writes are waiting.
  const CallOptions once{.attempts = 1, .fail_fast = true};
  Status fin = Status::Ok();
  Oid rid;
  const Oid ralias = AliasOf(r->spec.uri);
  std::vector<ReplicaPtr> others;
  {
    std::lock_guard lk(mu_);
    rid = r->id;
    for (const auto& x : replicas_)
      if (x != r && x->state != ReplicaState::kDown && x->spec.write) others.push_back(x);
  }
  for (const auto& x : others)
    for (const Oid& name : {rid, ralias}) {
      Status c = MarkerCall(x, POHMELFS_REPLICA_CLEAR, name, once);
      if (!c.ok() && x == g) fin = c;  // the others are rechecked when they are next admitted
    }
  auto gm = fin.ok() ? ListMarkers(g) : Result<std::vector<Oid>>(fin);
  auto rm = gm.ok() ? ListMarkers(r) : Result<std::vector<Oid>>(gm.status());
  if (rm.ok()) {
    std::set<Oid> want(gm->begin(), gm->end());
    want.erase(rid);
    want.erase(ralias);
    for (const auto& p : *rm)
      if (fin.ok() && !want.count(p)) fin = MarkerCall(r, POHMELFS_REPLICA_CLEAR, p, once);
    for (const auto& p : want)
      if (fin.ok() && !std::count(rm->begin(), rm->end(), p))
        fin = MarkerCall(r, POHMELFS_REPLICA_MARK, p, once);
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
      r->force_full = false;
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

bool ServerSet::AnyWriterReadOnly() {
  for (const auto& r : Snapshot()) {
    bool writer;
    {
      std::lock_guard lk(mu_);
      writer = r->spec.write;
    }
    if (writer && r->rpc && r->rpc->session() != 0 && r->rpc->read_only()) return true;
  }
  return false;
}

std::vector<ServerSet::ReplicaPtr> ServerSet::Snapshot() {
  std::lock_guard lk(mu_);
  return replicas_;
}

bool ServerSet::WaitForUp(bool want_write, Clock::time_point deadline) {
  std::unique_lock lk(mu_);
  auto usable = [&] {
    return stopping_ || std::any_of(replicas_.begin(), replicas_.end(), [&](const ReplicaPtr& r) {
             return r->state == ReplicaState::kUp && (want_write ? r->spec.write : r->spec.read);
           });
  };
  if (usable()) return !stopping_;
  // The first calls of an outage wait (a restart is ridden out); once one bound has passed
  // with no usable server, calls fail at once until one is back, instead of each waiting.
  auto& since = want_write ? no_writer_since_ : no_reader_since_;
  const auto now = Clock::now();
  if (!since) since = now;
  const auto until = std::min(deadline, *since + CallBound());
  if (now >= until) return false;
  return cv_.wait_until(lk, until, usable) && !stopping_;
}

Result<RpcReply> ServerSet::Call(uint16_t opcode, std::span<const iovec> payload) {
  // FSYNC changes nothing but must reach every replica that holds the data.
  return proto::IsMutating(opcode) || opcode == POHMELFS_OP_FSYNC ? Write(opcode, payload)
                                                                  : Read(opcode, payload);
}

Result<RpcReply> ServerSet::Read(uint16_t opcode, std::span<const iovec> payload) {
  const auto deadline = Clock::now() + CallBound();
  std::set<Replica*> tried;
  Status last = Status::Error(EIO, "no readable server is up");
  for (;;) {
    // Up, readable servers of the highest priority; equals take turns.
    std::vector<ReplicaPtr> best;
    {
      std::lock_guard lk(mu_);
      int top = 0;
      for (const auto& r : replicas_) {
        if (r->state != ReplicaState::kUp || !r->spec.read || tried.count(r.get())) continue;
        if (best.empty() || r->spec.priority > top) {
          best.clear();
          top = r->spec.priority;
        }
        if (r->spec.priority == top) best.push_back(r);
      }
    }
    if (best.empty()) {
      if (Clock::now() >= deadline) return last;
      tried.clear();  // every server failed once: wait for one to come (back) up, then retry
      if (!WaitForUp(false, deadline)) return last;
      continue;
    }
    const ReplicaPtr r = best[read_turn_++ % best.size()];
    const CallOptions co{.attempts = 1, .fail_fast = true};
    Result<RpcReply> reply = Status::Error(EIO, "not sent");
    pohmelfs_read_req rq;
    const bool by_rma = opcode == POHMELFS_OP_READ && r->rpc->RmaConnection() &&
                        CopyAt(payload, 0, &rq, sizeof(rq)) == sizeof(rq) &&
                        ReadByRma(*r->rpc, rq, RmaStaging(), co, &reply);
    if (!by_rma) {
      auto t = r->rpc->Begin(opcode, payload, co);
      reply = r->rpc->Wait(*t);
    }
    if (reply.ok()) {
      r->reads++;
      if (by_rma) r->rma_bytes += reply->bytes().size();
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
  const std::vector<Oid> touched = TouchedOids(opcode, payload);
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
  // Object locks after the gate: a resync that closed the gate may take them exclusively.
  ObjectLocks::Shared objects(&locks_, touched);

  // A lone server reconnects and resends by itself (its session keeps resends exactly-once);
  // with company, a server that fails is dropped at once and healed later.
  CallOptions co;
  co.fail_fast = targets.size() > 1;
  // Bulk data by RMA to the replicas whose connections have it: staged once for all of them.
  const bool any_rma = std::any_of(targets.begin(), targets.end(),
                                   [](const ReplicaPtr& r) { return r->rpc->RmaConnection(); });
  RmaWritePlan plan;
  if (any_rma)
    plan = RmaWritePlan::Prepare(opcode, payload, RmaStaging(), opts_.rpc.crypto_mode,
                                 opts_.rpc.crypto_pool);
  std::vector<std::unique_ptr<RpcClient::Transaction>> ts;
  ts.reserve(targets.size());
  for (const auto& r : targets) {
    RmaWritePlan::Request req{opcode, payload};
    if (!plan.empty()) {
      if (auto conn = r->rpc->RmaConnection()) {
        auto rewritten = plan.For(*conn);
        if (rewritten.ok()) {
          req = *rewritten;
          r->rma_bytes += plan.staged_bytes();
        }
      }
    }
    ts.push_back(r->rpc->Begin(req.opcode, req.payload, co));
  }
  std::vector<Result<RpcReply>> rs;
  rs.reserve(targets.size());
  for (size_t i = 0; i < targets.size(); i++) rs.push_back(targets[i]->rpc->Wait(*ts[i]));
  if (!plan.empty() &&
      std::any_of(rs.begin(), rs.end(), [](const Result<RpcReply>& r) { return !r.ok(); }))
    plan.HoldAfterFailure();

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
      // Its resync covers this write, unless the resync already went past the object, or the
      // write moved a not yet synced object into a directory it went past: have it look
      // again at whatever this write touched, whether or not the write worked there.
      {
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

transport::RmaPool& ServerSet::RmaStaging() {
  // 16 buffers of IO_MAX: the write-back cache keeps 4 batches in flight, reads are one at a
  // time per FUSE thread; when none is free a request simply carries its data.
  std::call_once(rma_once_, [&] { rma_pool_ = transport::RmaPool::Create(16, POHMELFS_IO_MAX); });
  return *rma_pool_;
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
    if (stopping_) return Status::Error(ESHUTDOWN, "unmounting");
    if (Find(spec.uri)) return Status::Error(EEXIST, spec.uri + " is already in the set");
    // It has none of this mount's data yet as far as anyone knows: resync before reads.
    (*r)->needs_resync = true;
    replicas_.push_back(*r);
    StartKeeper(*r);  // under mu_, so that Stop() sees and joins it
  }
  spdlog::info("{}: added to the working set ({})", spec.uri, spec.ToString());
  return Status::Ok();
}

// Whether a server other than r is up and writable. REQUIRES: mu_ held.
bool ServerSet::OtherUpWriter(const ReplicaPtr& r) {
  return std::any_of(replicas_.begin(), replicas_.end(), [&](const ReplicaPtr& x) {
    return x != r && x->spec.write && x->state == ReplicaState::kUp;
  });
}

Status ServerSet::Remove(const std::string& uri) {
  ReplicaPtr r;
  gate_->Close();  // between writes, and checked where nothing can change it
  {
    std::lock_guard lk(mu_);
    r = Find(uri);
    Status refuse = Status::Ok();
    if (!r)
      refuse = Status::Error(ENOENT, uri + " is not in the set");
    else if (r->spec.write && !OtherUpWriter(r))
      refuse = Status::Error(EBUSY, "no other writable server is up to date");
    if (!refuse.ok()) {
      gate_->Open();
      return refuse;
    }
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
    Status refuse = Status::Ok();
    if (!r)
      refuse = Status::Error(ENOENT, spec.uri + " is not in the set");
    else if (r->spec.write && !spec.write && !OtherUpWriter(r))
      refuse = Status::Error(EBUSY, "no other writable server is up to date");
    if (!refuse.ok()) {
      gate_->Open();
      return refuse;
    }
    bool gains_write = spec.write && !r->spec.write;
    r->spec.priority = spec.priority;  // the URI never changes: it is read without the lock
    r->spec.read = spec.read;
    r->spec.write = spec.write;
    if (gains_write) {  // it was not written: bring it up to date before it counts
      r->needs_resync = true;
      if (r->state == ReplicaState::kUp) SetState(r, ReplicaState::kDown, "became writable");
    }
    cv_.notify_all();
  }
  gate_->Open();
  r->wake.notify_all();
  spdlog::info("{}: now {}", spec.uri, spec.ToString());
  return Status::Ok();
}

Status ServerSet::Heal(const std::string& uri) {
  std::lock_guard lk(mu_);
  ReplicaPtr r = Find(uri);
  if (!r) return Status::Error(ENOENT, uri + " is not in the set");
  if (!r->spec.write) return Status::Error(EINVAL, uri + " is read-only: never resynced");
  if (!OtherUpWriter(r))
    return Status::Error(EBUSY, "no other up writable server to resync " + uri + " from");
  r->needs_resync = true;
  r->force_full = true;
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
  r->force_full = true;  // equal versions may hide different contents after a split
  SetState(r, ReplicaState::kDown, "split brain resolved; resyncing");
  r->wake.notify_all();
  return Status::Ok();
}

std::string ServerSet::StatusTable() {
  std::ostringstream out;
  out << fmt::format(
      "{:<28} {:<11} {:>5} {:<4} {:>8} {:>10} {:>10} {:>12} {:>12} {:>12} {:>7}  {}\n", "SERVER",
      "STATE", "PRIO", "PERM", "INFLIGHT", "READS", "WRITES", "BYTES_OUT", "BYTES_IN", "RMA_BYTES",
      "ERRORS", "NOTE");
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
    out << fmt::format(
        "{:<28} {:<11} {:>5} {:<4} {:>8} {:>10} {:>10} {:>12} {:>12} {:>12} {:>7}  {}\n",
        r->spec.uri, state, prio, perm, r->rpc->inflight(), r->reads.load(), r->writes.load(),
        c.bytes_out.load(), c.bytes_in.load(), r->rma_bytes.load(),
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
