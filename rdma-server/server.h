// pohmelfs-server: accepts connections on every listen URI, runs the handshake, and executes
// requests on a worker pool against one export.
// Thread-safety: Start and Stop from one thread; the rest is internal.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "crypto/channel_cipher.h"
#include "crypto/crypto_pool.h"
#include "crypto/handshake_auth.h"
#include "crypto/keys.h"
#include "rdma-server/allow_list.h"
#include "rdma-server/export_store.h"
#include "rdma-server/lease_table.h"
#include "rdma-server/lock_table.h"
#include "rdma-server/session_table.h"
#include "rdma-server/work_queue.h"
#include "transport/transport.h"

namespace pohmelfs::server {

struct ServerOptions {
  std::string export_dir;
  std::vector<std::string> listen;  // URIs
  int workers = 8;                  // threads doing file IO
  int loop_threads = 2;             // transport event loops
  // Most time a network thread keeps polling after its last event before it sleeps (adaptive
  // below that); an idle server sleeps. 0: never poll.
  std::chrono::microseconds spin{50};
  // Requests a client may have in flight; past this the server stops reading from it.
  uint32_t credits = 256;
  std::chrono::seconds session_timeout{120};
  // For tests only: the first N mutating requests are executed and recorded as usual, but
  // their replies are not sent, so that clients must resend them.
  uint32_t test_drop_replies = 0;
  // Coherence (docs/coherence.md): how long a lease holder has to give a lease back before it
  // is evicted, the grace period for reclaims after an authority change, and how long one
  // blocking lock request waits on the server before the client asks again.
  std::chrono::milliseconds lease_break_timeout{5000};
  std::chrono::milliseconds lease_grace{5000};
  std::chrono::milliseconds lock_wait{1000};

  // Security (docs/security.md). key: clients must prove it in the handshake; client_keys_dir:
  // NAME.key there is the key of the client named NAME (its -o name, else its host name),
  // used instead of key. crypto_modes: the channel modes (POHMELFS_CRYPTO_*) this server
  // agrees to; the keyed ones only with a key.
  std::optional<crypto::Key> key;
  std::string client_keys_dir;
  uint32_t crypto_modes = POHMELFS_CRYPTO_NONE | POHMELFS_CRYPTO_CRC32C |
                          POHMELFS_CRYPTO_HMAC_SHA256 | POHMELFS_CRYPTO_AES_256_GCM |
                          POHMELFS_CRYPTO_CHACHA20_POLY1305;
  int crypto_threads = 0;  // threads sealing and opening large payloads in parallel
  // Who may connect; allow_any serves everyone read-write (Start refuses neither).
  AllowList allow;
  bool allow_any = false;
  bool root_squash = false;  // objects created or chowned as uid/gid 0 get 65534
  // A connection that has not finished its handshake after this long is closed.
  std::chrono::milliseconds handshake_timeout{10000};
  // Files one session may have open at once (OPEN past it fails with EMFILE).
  uint32_t max_open_handles = 65536;
};

class Server {
 public:
  static Result<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();
  // Addresses actually bound (real ports when 0 was asked for).
  const std::vector<transport::Uri>& bound() const { return bound_; }
  const Oid& server_id() const { return store_->server_id(); }
  void Stop();

 private:
  // Between a HELLO answered with POHMELFS_HELLO_AUTH and the AUTH that completes it.
  struct PendingAuth {
    crypto::AuthTranscript transcript;
    std::optional<crypto::Key> key;
    std::optional<crypto::ChannelCipher> send;  // the server's side, started by AUTH
    uint64_t resume = 0;
  };
  struct ConnState {
    std::chrono::steady_clock::time_point accepted = std::chrono::steady_clock::now();
    bool refused = false;    // outside the allow list: HELLO gets EPERM (loop thread only)
    bool read_only = false;  // an ro rule: every change gets EROFS (set before HELLO)
    std::unique_ptr<PendingAuth> auth;        // loop thread only
    std::atomic<bool> handshake_done{false};  // set with session; read by the reaper
    std::shared_ptr<Session> session;         // set by HELLO (loop thread), read by workers after
    std::mutex mu;                            // orders pause and resume decisions
    uint32_t inflight = 0;                    // GUARDED_BY(mu)
    bool paused = false;                      // GUARDED_BY(mu)
  };
  explicit Server(const ServerOptions& o) : opts_(o), drop_replies_(o.test_drop_replies) {}
  void OnMessage(const transport::ConnectionPtr& conn, transport::Message&& m);
  void OnClose(const transport::ConnectionPtr& conn, const Status& why);
  void OnAccept(const transport::ConnectionPtr& conn);
  void HandleHello(const transport::ConnectionPtr& conn, ConnState* st,
                   const transport::Message& m);
  void HandleAuth(const transport::ConnectionPtr& conn, ConnState* st, const transport::Message& m);
  // Starts or resumes the session and sends the final HELLO (or AUTH) reply.
  void CompleteHandshake(const transport::ConnectionPtr& conn, ConnState* st,
                         const proto::Header& req, uint16_t version, uint64_t features,
                         uint32_t mode, uint64_t resume, const std::string& client);
  // Replies with an error and closes: the handshake failed.
  void Refuse(const transport::ConnectionPtr& conn, const proto::Header& req, int code,
              const std::string& why);
  // The key client must prove: NAME.key from client_keys_dir (client is NAME or NAME:pid),
  // else the cluster key.
  // EACCES (fail closed) when --client-keys is set and neither key is usable.
  Result<std::optional<crypto::Key>> KeyFor(const std::string& client);
  void CloseStalledHandshakes();
  void Execute(const transport::ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
               transport::Message m);
  void Reply(const transport::ConnectionPtr& conn, const proto::Header& req, uint32_t status,
             const std::vector<uint8_t>& payload);
  void ReaperLoop();
  // LEASE and LOCK (coherence_ops.cc): answered when granted, maybe much later, so they do
  // not hold a worker while they wait. Each calls Done(st) once it has replied.
  void HandleLease(const transport::ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                   transport::Message m);
  void HandleLock(const transport::ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                  transport::Message m);
  void HandleLockNow(const transport::ConnectionPtr& conn, const std::shared_ptr<ConnState>& st,
                     transport::Message m);
  bool SendBreak(uint64_t session, const Oid& oid, uint32_t keep, uint64_t seq);
  // Whether a request changes an object the session was evicted from (it then fails with EIO).
  bool Fenced(Session* session, uint16_t opcode, std::span<const uint8_t> payload);
  // CREATE_LEASE: the WRITE lease of each new object is granted before the create runs (so
  // that a client that finds the new object and asks for its lease breaks the creator's), and
  // dropped again for the creates that failed or did not run.
  struct CreateGrant {
    uint32_t index;  // of the command in its BATCH (0 alone)
    Oid oid;
  };
  std::vector<CreateGrant> GrantCreates(Session* session, uint16_t opcode,
                                        std::span<const uint8_t> payload);
  void DropFailedGrants(Session* session, uint16_t opcode, const Status& s,
                        std::span<const uint8_t> reply, const std::vector<CreateGrant>& granted);
  // A request has been answered: frees its credit.
  void Done(const transport::ConnectionPtr& conn, ConnState* st);
  // True (and logged) when the reply to this executed mutating request is to be dropped.
  bool DropReplyForTest(const transport::ConnectionPtr& conn, const proto::Header& req);

  ServerOptions opts_;
  std::atomic<uint32_t> drop_replies_;  // left of opts_.test_drop_replies
  std::unique_ptr<ExportStore> store_;
  // Staging buffers of READ_RMA and WRITE_RMA, one per worker (a worker runs one command at a
  // time).
  std::shared_ptr<transport::RmaPool> rma_pool_;
  std::unique_ptr<crypto::CryptoPool> crypto_pool_;
  std::unique_ptr<SessionTable> sessions_;
  std::unique_ptr<WorkQueue> work_;
  std::unique_ptr<LeaseTable> leases_;
  std::unique_ptr<LockTable> locks_;
  std::atomic<uint64_t> next_callback_{1};
  std::vector<std::unique_ptr<transport::Transport>> transports_;
  std::vector<transport::Uri> bound_;
  // Connections still in their handshake (closed by the reaper past handshake_timeout).
  std::mutex handshaking_mu_;
  std::map<transport::Connection*, std::weak_ptr<transport::Connection>>
      handshaking_;  // GUARDED_BY(handshaking_mu_)
  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool stopping_ = false;  // GUARDED_BY(reaper_mu_)
  std::thread reaper_;
};

}  // namespace pohmelfs::server
