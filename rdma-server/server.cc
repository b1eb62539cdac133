#include "rdma-server/server.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <map>

#include "crypto/secure_transport.h"

namespace pohmelfs::server {

using proto::from_le;
using proto::to_le;
using transport::ConnectionPtr;
using transport::Message;

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& o) {
  if (o.listen.empty()) return Status::Error(EINVAL, "no --listen address");
  if (o.allow.empty() && !o.allow_any)
    return Status::Error(EINVAL,
                         "no allow list: give --allow CIDR=rw|ro (repeatable), or --allow-any to "
                         "serve every peer");
  if (o.allow_any) spdlog::warn("--allow-any: every peer that can connect may read and write");
  if (!o.key && o.client_keys_dir.empty())
    spdlog::warn("no --key: clients are not authenticated (only the allow list applies)");
  std::unique_ptr<Server> s(new Server(o));
  s->crypto_pool_ = std::make_unique<crypto::CryptoPool>(std::max(0, o.crypto_threads));
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
      auto created = crypto::CreateSecureTransport(
          uri->scheme, {.loop_threads = o.loop_threads, .spin = o.spin}, s->crypto_pool_.get());
      if (!created.ok()) return created.status();
      t = created->get();
      s->transports_.push_back(std::move(*created));
      by_scheme[uri->scheme] = t;
    }
    Server* self = s.get();
    transport::Handler h;
    h.on_accept = [self](const ConnectionPtr& c) { self->OnAccept(c); };
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
    CloseStalledHandshakes();
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
  if (m.hdr.opcode == POHMELFS_OP_AUTH) {
    HandleAuth(conn, st.get(), m);
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

void Server::OnAccept(const ConnectionPtr& conn) {
  auto st = std::make_shared<ConnState>();
  conn->context = st;
  if (!opts_.allow_any) {
    auto access = opts_.allow.Match(conn->Peer());
    if (!access) {
      // Refused at its HELLO (so that the client is told why), or by the handshake timeout.
      st->refused = true;
      spdlog::warn("{}: not in the allow list; refusing", conn->Peer());
    } else {
      st->read_only = *access == Access::kReadOnly;
      spdlog::info("{}: connected ({} by rule {})", conn->Peer(), st->read_only ? "ro" : "rw",
                   opts_.allow.RuleFor(conn->Peer()));
    }
  } else {
    spdlog::info("{}: connected", conn->Peer());
  }
  std::lock_guard lk(handshaking_mu_);
  handshaking_[conn.get()] = conn;
}

void Server::CloseStalledHandshakes() {
  std::vector<ConnectionPtr> stalled;
  {
    std::lock_guard lk(handshaking_mu_);
    const auto now = std::chrono::steady_clock::now();
    for (auto it = handshaking_.begin(); it != handshaking_.end();) {
      auto c = it->second.lock();
      auto st = c ? std::static_pointer_cast<ConnState>(c->context) : nullptr;
      if (!c || !c->IsOpen() || (st && st->handshake_done)) {
        it = handshaking_.erase(it);
        continue;
      }
      if (st && now - st->accepted > opts_.handshake_timeout) stalled.push_back(c);
      ++it;
    }
  }
  for (const auto& c : stalled) {
    spdlog::warn("{}: no complete handshake within {} ms; closing", c->Peer(),
                 opts_.handshake_timeout.count());
    c->Close(Status::Error(ETIMEDOUT, "handshake timeout"));
  }
}

void Server::Refuse(const ConnectionPtr& conn, const proto::Header& req, int code,
                    const std::string& why) {
  spdlog::warn("{}: {}; refused", conn->Peer(), why);
  Reply(conn, req, static_cast<uint32_t>(code), {});
  conn->Close(Status::Error(code, why));
}

Result<std::optional<crypto::Key>> Server::KeyFor(const std::string& client) {
  if (opts_.client_keys_dir.empty()) return opts_.key;
  // Mounts name themselves NAME:pid; the key is NAME's. With --client-keys a client must
  // prove a key: its own, else the cluster key; never none (fail closed).
  const std::string name = client.substr(0, client.find(':'));
  if (!name.empty() && name.find('/') == std::string::npos && name[0] != '.') {
    std::string path = opts_.client_keys_dir + "/" + name + ".key";
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
      auto k = crypto::LoadKeyFile(path);
      if (!k.ok()) return Status::Error(EACCES, "its key file is unusable: " + k.status().reason());
      return std::optional<crypto::Key>(std::move(*k));
    }
  }
  if (!opts_.key) return Status::Error(EACCES, "no key for client '" + name + "' in --client-keys");
  return opts_.key;
}

namespace {

// Whether a request would change the export (refused with EROFS for read-only clients).
bool ChangesExport(uint16_t opcode, std::span<const uint8_t> payload) {
  if (opcode == POHMELFS_OP_RELEASE) return false;  // only drops a handle
  if (opcode == POHMELFS_OP_OPEN) {
    proto::Reader r(payload);
    pohmelfs_open_req q;
    if (!r.Get(&q)) return false;  // malformed: the command itself refuses it
    return (from_le(q.flags) & (POHMELFS_OPEN_WRITE | POHMELFS_OPEN_TRUNC)) != 0;
  }
  if (opcode == POHMELFS_OP_REPLICA) {  // markers: listing them is a read
    proto::Reader r(payload);
    pohmelfs_replica_req q;
    return r.Get(&q) && from_le(q.cmd) != POHMELFS_REPLICA_LIST;
  }
  return proto::IsMutating(opcode);
}

// The server's pick among the modes both sides allow: the strongest.
uint32_t PickMode(uint32_t common) {
  for (uint32_t m : {POHMELFS_CRYPTO_AES_256_GCM, POHMELFS_CRYPTO_CHACHA20_POLY1305,
                     POHMELFS_CRYPTO_HMAC_SHA256, POHMELFS_CRYPTO_CRC32C, POHMELFS_CRYPTO_NONE})
    if (common & m) return m;
  return 0;
}

std::string ModeNames(uint32_t mask) {
  std::string out;
  for (uint32_t bit = 1; bit != 0 && bit <= mask; bit <<= 1) {
    if (!(mask & bit)) continue;
    if (!out.empty()) out += ",";
    out += crypto::CryptoModeName(bit);
  }
  return out.empty() ? "nothing" : out;
}

}  // namespace

void Server::HandleHello(const ConnectionPtr& conn, ConnState* st, const Message& m) {
  auto hello = proto::DecodeHelloRequest(m.payload);
  if (!hello.ok()) {
    Refuse(conn, m.hdr, EPROTO, hello.status().reason());
    return;
  }
  const pohmelfs_hello_req& q = hello->q;
  const std::string_view auth = hello->auth, name = hello->name;
  std::string client(name);
  if (st->refused) {
    Refuse(conn, m.hdr, EPERM, "client '" + client + "' is not in the allow list");
    return;
  }
  uint16_t lo = std::max<uint16_t>(from_le(q.version_min), POHMELFS_PROTO_VERSION_MIN);
  uint16_t hi = std::min<uint16_t>(from_le(q.version_max), POHMELFS_PROTO_VERSION_MAX);
  if (lo > hi) {
    Refuse(conn, m.hdr, EPROTONOSUPPORT,
           fmt::format("no common protocol version (client {}..{}, server {}..{})",
                       from_le(q.version_min), from_le(q.version_max), POHMELFS_PROTO_VERSION_MIN,
                       POHMELFS_PROTO_VERSION_MAX));
    return;
  }
  if (st->session || st->auth) {
    Reply(conn, m.hdr, EALREADY, {});
    return;
  }
  auto key_for = KeyFor(client);
  if (!key_for.ok()) {
    Refuse(conn, m.hdr, EACCES, "client '" + client + "': " + key_for.status().reason());
    return;
  }
  std::optional<crypto::Key> key = std::move(*key_for);
  constexpr uint32_t kKeyed =
      POHMELFS_CRYPTO_HMAC_SHA256 | POHMELFS_CRYPTO_AES_256_GCM | POHMELFS_CRYPTO_CHACHA20_POLY1305;
  const uint32_t offered = from_le(q.crypto_modes);
  const uint32_t allowed = opts_.crypto_modes & (key ? ~0u : ~kKeyed);
  const uint32_t mode = PickMode(offered & allowed);
  if (mode == 0) {
    Refuse(conn, m.hdr, EPROTONOSUPPORT,
           fmt::format("client '{}' offers channel modes {}, this server allows {}{}", client,
                       ModeNames(offered), ModeNames(allowed),
                       key ? "" : " (the keyed ones need --key)"));
    return;
  }
  uint64_t features = from_le(q.features) & POHMELFS_FEAT_ALL;
  // tcp keeps bulk data in messages. (On a protected channel RMA data is sealed too.)
  if (!conn->rma()) features &= ~POHMELFS_FEAT_RMA;
  const uint64_t resume = from_le(q.resume_session);
  if (!key && mode == POHMELFS_CRYPTO_NONE) {
    CompleteHandshake(conn, st, m.hdr, hi, features, mode, resume, client);
    return;
  }
  if (key && auth.empty()) {
    Refuse(conn, m.hdr, EACCES,
           "client '" + client + "' has no key, and this server requires one (-o key=FILE)");
    return;
  }
  auto pending = std::make_unique<PendingAuth>();
  auto& t = pending->transcript;
  if (!auth.empty()) std::memcpy(t.client_nonce.data(), auth.data(), t.client_nonce.size());
  auto nonce = crypto::RandomNonce();
  if (!nonce.ok()) {
    Refuse(conn, m.hdr, EIO, "no random nonce: " + nonce.status().ToString());
    return;
  }
  t.server_nonce = *nonce;
  t.version = hi;
  t.features = features;
  t.offered_modes = offered;
  t.chosen_mode = mode;
  t.session = resume;
  t.client_name = client;
  pending->key = key;
  pending->resume = resume;
  if (mode != POHMELFS_CRYPTO_NONE) {
    crypto::SessionKeys keys;  // crc32c without a key: unkeyed, the zero keys are unused
    if (key) {
      auto derived = crypto::DeriveSessionKeys(*key, t);
      if (!derived.ok()) {
        Refuse(conn, m.hdr, EIO, "key derivation: " + derived.status().ToString());
        return;
      }
      keys = *derived;
    }
    auto recv = crypto::ChannelCipher::Create(mode, keys.client_to_server);
    auto send = crypto::ChannelCipher::Create(mode, keys.server_to_client);
    if (!recv.ok() || !send.ok()) {
      Refuse(conn, m.hdr, EIO, "channel cipher: " + (recv.ok() ? send : recv).status().ToString());
      return;
    }
    // Armed now, on the receive thread, so that the client's first sealed message (right
    // after its AUTH) opens.
    crypto::AsSecure(conn)->ArmReceive(std::move(*recv));
    pending->send.emplace(std::move(*send));
  }
  pohmelfs_hello_rep rep{};
  rep.version = to_le(hi);
  rep.flags = to_le(uint16_t{POHMELFS_HELLO_AUTH});
  rep.max_payload = to_le(uint32_t{POHMELFS_PAYLOAD_MAX});
  rep.features = to_le(features);
  rep.credits = to_le(opts_.credits);
  rep.crypto_mode = to_le(mode);
  pohmelfs_hello_rep_auth ra{};
  std::memcpy(ra.nonce, t.server_nonce.data(), sizeof(ra.nonce));
  size_t auth_len = sizeof(ra.nonce);
  if (key) {
    crypto::Proof proof = crypto::ServerProof(*key, t);
    std::memcpy(ra.proof, proof.data(), sizeof(ra.proof));
    auth_len = sizeof(ra);
  }
  rep.auth_len = to_le(static_cast<uint32_t>(auth_len));
  std::vector<uint8_t> out(sizeof(rep) + auth_len);
  std::memcpy(out.data(), &rep, sizeof(rep));
  std::memcpy(out.data() + sizeof(rep), &ra, auth_len);
  st->auth = std::move(pending);
  Reply(conn, m.hdr, 0, out);
}

void Server::HandleAuth(const ConnectionPtr& conn, ConnState* st, const Message& m) {
  if (!st->auth || st->session) {
    Refuse(conn, m.hdr, EPROTO, "AUTH outside of a handshake");
    return;
  }
  std::unique_ptr<PendingAuth> pending = std::move(st->auth);
  const auto& t = pending->transcript;
  if (pending->key) {
    if (!crypto::VerifyProof(crypto::ClientProof(*pending->key, t), m.payload)) {
      Refuse(conn, m.hdr, EACCES,
             "client '" + t.client_name + "' does not prove the key (wrong key?)");
      return;
    }
  } else if (!m.payload.empty()) {
    Refuse(conn, m.hdr, EPROTO, "AUTH with a proof nobody asked for");
    return;
  }
  if (pending->send) {
    auto* secure = crypto::AsSecure(conn);
    secure->RequireSealed();
    secure->StartSending(std::move(*pending->send));
  }
  CompleteHandshake(conn, st, m.hdr, t.version, t.features, t.chosen_mode, pending->resume,
                    t.client_name);
}

void Server::CompleteHandshake(const ConnectionPtr& conn, ConnState* st, const proto::Header& req,
                               uint16_t version, uint64_t features, uint32_t mode, uint64_t resume,
                               const std::string& client) {
  std::shared_ptr<Session> session = resume ? sessions_->Find(resume) : nullptr;
  if (session && session->client() != client) {
    // Session ids are not secret (they travel in headers): only the client that started a
    // session may resume it.
    spdlog::warn(
        "{}: client '{}' asked to resume session {:016x} of client '{}'; refused, new "
        "session",
        conn->Peer(), client, session->id(), session->client());
    session = nullptr;
  }
  if (session) {
    spdlog::info("{}: client '{}' resumed session {:016x} (channel {})", conn->Peer(), client,
                 session->id(), crypto::CryptoModeName(mode));
  } else {
    session = sessions_->Create(client);
    spdlog::info("{}: client '{}' started session {:016x}{} (channel {})", conn->Peer(), client,
                 session->id(), resume ? " (the one it asked to resume is gone)" : "",
                 crypto::CryptoModeName(mode));
  }
  session->Attach(conn);
  st->session = session;
  st->handshake_done = true;

  pohmelfs_hello_rep rep{};
  rep.version = to_le(version);
  rep.flags = to_le(static_cast<uint16_t>(st->read_only ? POHMELFS_HELLO_READONLY : 0));
  rep.max_payload = to_le(uint32_t{POHMELFS_PAYLOAD_MAX});
  rep.features = to_le(features);
  rep.session = to_le(session->id());
  rep.credits = to_le(opts_.credits);
  rep.crypto_mode = to_le(mode);
  rep.root = Oid::Root().ToWire();
  rep.server_id = store_->server_id().ToWire();
  std::vector<uint8_t> out(sizeof(rep));
  std::memcpy(out.data(), &rep, sizeof(rep));
  Reply(conn, req, 0, out);
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
    OpEnv env{store_.get(),
              session,
              conn.get(),
              rma_pool_.get(),
              opts_.root_squash,
              opts_.max_open_handles,
              crypto::AsSecure(conn)->send_mode(),
              crypto_pool_.get()};
    Status s = Status::Ok();
    if (st->read_only && ChangesExport(h.opcode, m.payload)) {
      s = Status::Error(EROFS, "this client may only read (allow list)");
    } else if (Fenced(session, h.opcode, m.payload)) {
      s = Status::Error(EIO, "the session lost its lease on the object (evicted)");
    } else {
      const auto granted = GrantCreates(session, h.opcode, m.payload);
      s = ExecuteRequest(env, h.opcode, &r, &reply);
      DropFailedGrants(session, h.opcode, s, reply, granted);
    }
    if (!s.ok()) {
      reply.clear();
      // Protocol violations are worth a line; ordinary errors (ENOENT...) are not.
      if (s.code() == EINVAL || s.code() == EPROTO || s.code() == EOPNOTSUPP || s.code() == EIO)
        spdlog::warn("{}: trans {}: {}: {}", conn->Peer(), h.trans, proto::OpcodeName(h.opcode),
                     s.ToString());
    }
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
  {
    std::lock_guard lk(handshaking_mu_);
    handshaking_.erase(conn.get());
  }
  if (st && st->auth && st->auth->key) {
    // The client saw our proof fail (its key differs) or gave up: say so here too.
    spdlog::warn("{}: client '{}' left before proving the key (a different key?)", conn->Peer(),
                 st->auth->transcript.client_name);
  }
  if (st && st->session) {
    st->session->Detach();
    spdlog::info("{}: disconnected ({}); session {:016x} kept for {}s", conn->Peer(),
                 why.ToString(), st->session->id(), opts_.session_timeout.count());
  } else {
    spdlog::info("{}: disconnected ({})", conn->Peer(), why.ToString());
  }
}

}  // namespace pohmelfs::server
