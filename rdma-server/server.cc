#include "rdma-server/server.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <atomic>
#include <map>

namespace pohmelfs::server {

using proto::from_le;
using proto::to_le;
using transport::ConnectionPtr;
using transport::Message;

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& o) {
  if (o.listen.empty()) return Status::Error(EINVAL, "no --listen address");
  std::unique_ptr<Server> s(new Server(o));
  umask(0);  // modes arrive already masked by the client
  auto store = ExportStore::Open(o.export_dir);
  if (!store.ok()) return store.status();
  s->store_ = std::move(*store);
  s->sessions_ = std::make_unique<SessionTable>(s->store_.get());
  s->work_ = std::make_unique<WorkQueue>(std::max(1, o.workers));
  s->rma_pool_ = transport::RmaPool::Create(std::max(1, o.workers), POHMELFS_IO_MAX);
  {
    Server* self = s.get();
    s->leases_ = std::make_unique<LeaseTable>(
        LeaseTable::Options{.break_timeout = o.lease_break_timeout, .grace = o.lease_grace},
        [self](uint64_t session, const Oid& oid, uint32_t keep, uint64_t seq) {
          return self->SendBreak(session, oid, keep, seq);
        });
    s->locks_ = std::make_unique<LockTable>(o.lock_wait, [self](uint64_t session) {
      auto sess = self->sessions_->Find(session);
      return !sess || sess->Expired(std::chrono::steady_clock::now(),
                                    std::chrono::duration_cast<std::chrono::seconds>(
                                        self->opts_.lease_break_timeout));
    });
  }

  std::map<std::string, transport::Transport*> by_scheme;
  for (const auto& text : o.listen) {
    auto uri = transport::ParseUri(text);
    if (!uri.ok()) return uri.status();
    transport::Transport* t = by_scheme[uri->scheme];
    if (!t) {
      auto created =
          transport::CreateTransport(uri->scheme, {.loop_threads = o.loop_threads, .spin = o.spin});
      if (!created.ok()) return created.status();
      t = created->get();
      s->transports_.push_back(std::move(*created));
      by_scheme[uri->scheme] = t;
    }
    Server* self = s.get();
    transport::Handler h;
    h.on_accept = [](const ConnectionPtr& c) {
      c->context = std::make_shared<ConnState>();
      spdlog::info("{}: connected", c->Peer());
    };
    h.on_message = [self](const ConnectionPtr& c, Message&& m) {
      self->OnMessage(c, std::move(m));
    };
    h.on_close = [self](const ConnectionPtr& c, const Status& why) { self->OnClose(c, why); };
    auto bound = t->Listen(*uri, h);
    if (!bound.ok()) return bound.status();
    spdlog::info("listening on {}", bound->ToString());
    s->bound_.push_back(*bound);
  }
  if (o.test_drop_replies)
    spdlog::warn("test mode: the replies to the first {} mutating requests will be dropped",
                 o.test_drop_replies);
  s->reaper_ = std::thread([self = s.get()] { self->ReaperLoop(); });
  return s;
}

Server::~Server() {
  Stop();
}

void Server::Stop() {
  {
    std::lock_guard lk(reaper_mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  reaper_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  if (leases_) leases_->Stop();
  if (locks_) locks_->Stop();
  for (auto& t : transports_) t->Shutdown();
  if (work_) work_->Stop();
}

void Server::ReaperLoop() {
  std::unique_lock lk(reaper_mu_);
  while (!stopping_) {
    reaper_cv_.wait_for(lk, std::chrono::seconds(1));
    if (stopping_) break;
    lk.unlock();
    auto gone = sessions_->Reap(opts_.session_timeout);
    for (uint64_t id : gone) {
      leases_->DropSession(id);
      locks_->DropSession(id);
    }
    if (!gone.empty()) spdlog::info("expired {} idle sessions", gone.size());
    lk.lock();
  }
}

void Server::Reply(const ConnectionPtr& conn, const proto::Header& req, uint32_t status,
                   const std::vector<uint8_t>& payload) {
  proto::Header h;
  h.opcode = req.opcode;
  h.flags = POHMELFS_FLAG_REPLY;
  h.session = req.session;
  h.trans = req.trans;
  h.status = status;
  h.credits = opts_.credits;
  Status s = conn->Send(h, payload.data(), status == 0 ? payload.size() : 0);
  if (!s.ok())
    spdlog::debug("{}: trans {}: reply not sent: {}", conn->Peer(), req.trans, s.ToString());
}

void Server::OnMessage(const ConnectionPtr& conn, Message&& m) {
  auto st = std::static_pointer_cast<ConnState>(conn->context);
  if (!st) {
    conn->Close(Status::Error(EPROTO, "no connection state"));
    return;
  }
  if (m.hdr.is_reply()) {
    spdlog::warn("{}: trans {}: unexpected reply from a client; closing", conn->Peer(),
                 m.hdr.trans);
    conn->Close(Status::Error(EPROTO, "reply from client"));
    return;
  }
  if (m.hdr.opcode == POHMELFS_OP_HELLO) {
    HandleHello(conn, st.get(), m);
    return;
  }
  if (!st->session) {
    spdlog::warn("{}: trans {}: {} before HELLO; closing", conn->Peer(), m.hdr.trans,
                 proto::OpcodeName(m.hdr.opcode));
    Reply(conn, m.hdr, EPROTO, {});
    conn->Close(Status::Error(EPROTO, "request before handshake"));
    return;
  }
  if (m.hdr.opcode == POHMELFS_OP_PING) {
    Reply(conn, m.hdr, 0, {});
    return;
  }
  {
    std::lock_guard lk(st->mu);
    if (++st->inflight >= opts_.credits && !st->paused) {
      st->paused = true;
      conn->PauseReceive();
      spdlog::warn("{}: {} requests in flight; pausing reads", conn->Peer(), st->inflight);
    }
  }
  if (m.hdr.opcode == POHMELFS_OP_LEASE) return HandleLease(conn, st, std::move(m));
  if (m.hdr.opcode == POHMELFS_OP_LOCK) return HandleLock(conn, st, std::move(m));
  work_->Push([this, conn, st, m = std::move(m)]() mutable { Execute(conn, st, std::move(m)); });
}

void Server::HandleHello(const ConnectionPtr& conn, ConnState* st, const Message& m) {
  proto::Reader r(m.payload);
  pohmelfs_hello_req q;
  std::string_view auth, name;
  if (!r.Get(&q) || !r.Bytes(from_le(q.auth_len), &auth) || !r.Bytes(from_le(q.name_len), &name) ||
      name.size() > 256) {
    spdlog::warn("{}: malformed HELLO; closing", conn->Peer());
    Reply(conn, m.hdr, EPROTO, {});
    conn->Close(Status::Error(EPROTO, "malformed hello"));
    return;
  }
  uint16_t lo = std::max<uint16_t>(from_le(q.version_min), POHMELFS_PROTO_VERSION_MIN);
  uint16_t hi = std::min<uint16_t>(from_le(q.version_max), POHMELFS_PROTO_VERSION_MAX);
  if (lo > hi) {
    spdlog::warn("{}: no common protocol version (client {}..{}); closing", conn->Peer(),
                 from_le(q.version_min), from_le(q.version_max));
    Reply(conn, m.hdr, EPROTONOSUPPORT, {});
    conn->Close(Status::Error(EPROTONOSUPPORT, "version"));
    return;
  }
  if (st->session) {
    Reply(conn, m.hdr, EALREADY, {});
    return;
  }
  std::string client(name);
  uint64_t resume = from_le(q.resume_session);
  std::shared_ptr<Session> session = resume ? sessions_->Find(resume) : nullptr;
  if (session) {
    spdlog::info("{}: client '{}' resumed session {:016x}", conn->Peer(), client, session->id());
  } else {
    session = sessions_->Create(client);
    spdlog::info("{}: client '{}' started session {:016x}{}", conn->Peer(), client, session->id(),
                 resume ? " (the one it asked to resume is gone)" : "");
  }
  session->Attach(conn);
  st->session = session;

  pohmelfs_hello_rep rep{};
  rep.version = to_le(hi);
  rep.max_payload = to_le(uint32_t{POHMELFS_PAYLOAD_MAX});
  uint64_t features = from_le(q.features) & POHMELFS_FEAT_ALL;
  if (!conn->rma()) features &= ~POHMELFS_FEAT_RMA;  // tcp: bulk data stays in messages
  rep.features = to_le(features);
  rep.session = to_le(session->id());
  rep.credits = to_le(opts_.credits);
  rep.crypto_mode = to_le(uint32_t{POHMELFS_CRYPTO_NONE});
  rep.root = Oid::Root().ToWire();
  rep.server_id = store_->server_id().ToWire();
  std::vector<uint8_t> out(sizeof(rep));
  std::memcpy(out.data(), &rep, sizeof(rep));
  Reply(conn, m.hdr, 0, out);
}

void Server::Execute(const ConnectionPtr& conn, const std::shared_ptr<ConnState>& st, Message m) {
  Session* session = st->session.get();
  const proto::Header& h = m.hdr;
  bool mutating = proto::IsMutating(h.opcode);
  bool answered = false;
  if (mutating) {
    RecordedReply rec;
    switch (session->BeginTrans(h.trans, conn, &rec)) {
      case Session::Begin::kDone:
        spdlog::info("{}: trans {}: resent {} answered from the reply record", conn->Peer(),
                     h.trans, proto::OpcodeName(h.opcode));
        Reply(conn, h, rec.status, rec.payload);
        answered = true;
        break;
      case Session::Begin::kInProgress:
        answered = true;  // the running copy answers
        break;
      case Session::Begin::kNew:
        break;
    }
  }
  if (!answered) {
    std::vector<uint8_t> reply;
    proto::Reader r(m.payload);
    OpEnv env{store_.get(), session, conn.get(), rma_pool_.get()};
    Status s = Fenced(session, h.opcode, m.payload)
                   ? Status::Error(EIO, "the session lost its lease on the object (evicted)")
                   : ExecuteRequest(env, h.opcode, &r, &reply);
    if (!s.ok()) {
      reply.clear();
      // Protocol violations are worth a line; ordinary errors (ENOENT...) are not.
      if (s.code() == EINVAL || s.code() == EPROTO || s.code() == EOPNOTSUPP || s.code() == EIO)
        spdlog::warn("{}: trans {}: {}: {}", conn->Peer(), h.trans, proto::OpcodeName(h.opcode),
                     s.ToString());
    }
    if (s.ok()) GrantCreated(session, h.opcode, m.payload);
    ConnectionPtr target = conn;
    if (mutating) target = session->FinishTrans(h.trans, {static_cast<uint32_t>(s.code()), reply});
    if (mutating && DropReplyForTest(conn, h)) target = nullptr;
    if (target) Reply(target, h, static_cast<uint32_t>(s.code()), reply);
  }
  Done(conn, st.get());
}

void Server::Done(const ConnectionPtr& conn, ConnState* st) {
  std::lock_guard lk(st->mu);
  st->inflight--;
  // Resume once half the credits are free again (at zero when there is only one).
  if (st->paused && st->inflight < (opts_.credits + 1) / 2) {
    st->paused = false;
    conn->ResumeReceive();
  }
}

bool Server::DropReplyForTest(const ConnectionPtr& conn, const proto::Header& req) {
  uint32_t left = drop_replies_.load();
  while (left > 0 && !drop_replies_.compare_exchange_weak(left, left - 1)) {
  }
  if (left == 0) return false;
  spdlog::warn("{}: dropping reply to trans {} (test)", conn->Peer(), req.trans);
  return true;
}

void Server::OnClose(const ConnectionPtr& conn, const Status& why) {
  auto st = std::static_pointer_cast<ConnState>(conn->context);
  if (st && st->session) {
    st->session->Detach();
    spdlog::info("{}: disconnected ({}); session {:016x} kept for {}s", conn->Peer(),
                 why.ToString(), st->session->id(), opts_.session_timeout.count());
  } else {
    spdlog::info("{}: disconnected ({})", conn->Peer(), why.ToString());
  }
}

}  // namespace pohmelfs::server
