// Transactions over one server connection: every call gets a transaction id unique in the
// session, waits for its reply at most trans_scan_timeout, and is resent (flagged RESENT, same
// id) up to trans_retries times, on a new connection if the old one died. The server answers a
// resent mutating transaction from its reply record, so nothing is applied twice. Credits
// from the server bound the calls in flight.
//
// A call can also be split in two (Begin, then Wait), so that one thread can have the same
// request in flight to several servers at once (replicated writes).
//
// Thread-safety: Call, Begin and Wait may be used from many threads at once; one Transaction
// is used by one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>

#include "crypto/crypto_pool.h"
#include "crypto/keys.h"
#include "proto/codec.h"
#include "transport/transport.h"

namespace pohmelfs::client {

struct RpcOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds trans_scan_timeout{5000};  // wait per attempt
  int trans_retries = 3;                               // resends after the first attempt
  std::string client_name = "pohmelfs";
  // Security (docs/security.md). key: proven in the handshake, and the server must prove it
  // back. crypto_mode: the channel mode asked for (one POHMELFS_CRYPTO_* bit); the server may
  // fall back to none (with a warning) unless crypto_fail_unsupported. crypto_pool: seals and
  // opens large payloads in parallel (borrowed; may be null).
  std::shared_ptr<const crypto::Key> key;
  uint32_t crypto_mode = POHMELFS_CRYPTO_NONE;
  bool crypto_fail_unsupported = false;
  crypto::CryptoPool* crypto_pool = nullptr;
};

// Per-call overrides of RpcOptions.
struct CallOptions {
  int attempts = 0;                              // 0: trans_retries + 1
  std::chrono::milliseconds attempt_timeout{0};  // 0: trans_scan_timeout
  // Return EIO as soon as the connection is lost or cannot be made, instead of reconnecting
  // and resending (a replica set moves on to another server and heals this one later).
  bool fail_fast = false;
};

struct RpcReply {
  uint32_t status = 0;  // 0 or a positive errno from the server
  std::vector<uint8_t> payload;
  // Data left where RMA placed it (READ_RMA): `rma_data` points into a staging buffer that
  // `hold` keeps from being reused; payload is then empty.
  std::shared_ptr<const void> hold;
  std::span<const uint8_t> rma_data;

  // The reply's bytes, wherever they are.
  std::span<const uint8_t> bytes() const {
    return hold ? rma_data : std::span<const uint8_t>(payload);
  }
};

struct RpcCounters {
  std::atomic<uint64_t> calls{0}, resends{0}, reconnects{0}, timeouts{0};
  std::atomic<uint64_t> bytes_out{0}, bytes_in{0};
};

class RpcClient {
 public:
  // Connects and runs the handshake; fails if the server cannot be reached.
  static Result<std::unique_ptr<RpcClient>> Connect(const std::string& uri, const RpcOptions& o);
  // A client that is not connected yet (TryConnect connects it).
  static Result<std::unique_ptr<RpcClient>> Create(const std::string& uri, const RpcOptions& o);
  ~RpcClient();

  // One request in flight. Its payload iovecs are borrowed until Wait returns.
  class Transaction;
  std::unique_ptr<Transaction> Begin(uint16_t opcode, std::span<const iovec> payload,
                                     const CallOptions& co = {});
  Result<RpcReply> Wait(Transaction& t);

  // Sends one request (payload = the iovecs, borrowed for the duration of the call) and waits
  // for its reply. Returns ETIMEDOUT when no reply came after all retries, EIO when the server
  // could not be reached at all; a server-side error arrives as RpcReply::status.
  Result<RpcReply> Call(uint16_t opcode, std::span<const iovec> payload);
  Result<RpcReply> Call(uint16_t opcode, const std::vector<uint8_t>& payload) {
    iovec v{const_cast<uint8_t*>(payload.data()), payload.size()};
    return Call(opcode, std::span<const iovec>(&v, payload.empty() ? 0 : 1));
  }

  // Connects now if not connected (bounded by connect_timeout).
  Status TryConnect();
  // Closes the connection (calls in flight on it see a lost connection).
  void Disconnect(const Status& why);
  bool connected();
  // Time of the last message received from the server (or of the connect).
  std::chrono::steady_clock::time_point last_receive() const {
    return std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(last_receive_.load()));
  }
  uint32_t inflight();
  // Requests the server lets this client have in flight at once (from the last handshake).
  uint32_t credits();
  // Called (from a network thread, without locks held) when a connection is lost.
  void SetOnDisconnect(std::function<void()> f);
  // Called (from a network thread, without locks held; it must not block) for each callback
  // message from the server (POHMELFS_FLAG_CALLBACK, e.g. LEASE_BREAK). Set before connecting.
  void SetOnCallback(std::function<void(uint16_t opcode, std::vector<uint8_t>&& payload)> f);
  // The server's session id from the last handshake (0 before): a new value means the server
  // forgot the old session (it restarted), and with it every lease and lock.
  uint64_t session();
  // Connects made so far: a change means the connection was lost in between, and callbacks
  // sent meanwhile may have been missed.
  uint64_t connect_epoch() const { return connect_epoch_.load(); }

  // What the last handshake said (a reconnect may change them, e.g. a restarted server).
  proto::Oid root();
  proto::Oid server_id();
  uint64_t features();
  // The server lets this client only read (its allow list says ro).
  bool read_only() const { return read_only_.load(); }
  // The channel mode of the last handshake (POHMELFS_CRYPTO_*).
  uint32_t crypto_mode() const { return crypto_mode_.load(); }
  crypto::CryptoPool* crypto_pool() const { return opts_.crypto_pool; }
  // The current connection when the server granted FEAT_RMA on it (bulk data may move by
  // RMA), else null.
  transport::ConnectionPtr RmaConnection();
  uint32_t max_payload();
  const std::string& server() const { return uri_text_; }
  const RpcCounters& counters() const { return counters_; }

 private:
  struct Pending {
    bool done = false;
    RpcReply reply;
    transport::Connection* sent_on = nullptr;  // identity only, never dereferenced
  };

  RpcClient(transport::Uri uri, std::string text, const RpcOptions& o);
  // Returns the live connection, reconnecting (with handshake) if needed.
  Result<transport::ConnectionPtr> EnsureConnected(bool may_connect);
  // Sends the transaction's current attempt (reconnecting first when allowed).
  void SendAttempt(Transaction& t);
  // Connects and runs the handshake. REQUIRES: conn_mu_ held.
  Status Reconnect();
  Status Handshake(const transport::ConnectionPtr& conn);
  // One handshake request (HELLO, AUTH) on conn, waited for within connect_timeout;
  // after_send runs right after it is sent (AUTH switches the channel to sealed there).
  Result<RpcReply> HandshakeCall(const transport::ConnectionPtr& conn, uint16_t opcode,
                                 std::span<const iovec> payload,
                                 const std::function<void()>& after_send = nullptr);
  // Checks and applies a complete HELLO (or AUTH) reply.
  Status ApplyHelloReply(const pohmelfs_hello_rep& rep);
  void OnMessage(transport::Message&& m);
  void OnClose(const transport::Connection* conn);
  bool AcquireCredit(std::chrono::steady_clock::time_point deadline);
  void ReleaseCredit();

  const transport::Uri uri_;
  const std::string uri_text_;
  const RpcOptions opts_;
  std::unique_ptr<transport::Transport> transport_;
  proto::Oid root_;        // GUARDED_BY(mu_)
  proto::Oid server_id_;   // GUARDED_BY(mu_)
  uint64_t features_ = 0;  // GUARDED_BY(mu_)
  std::atomic<bool> read_only_{false};
  std::atomic<uint32_t> crypto_mode_{POHMELFS_CRYPTO_NONE};
  std::atomic<int64_t> last_receive_{0};
  std::function<void()> on_disconnect_;  // set before the first connect
  std::function<void(uint16_t, std::vector<uint8_t>&&)> on_callback_;  // likewise
  uint32_t max_payload_ = POHMELFS_PAYLOAD_MAX;                        // GUARDED_BY(mu_)
  RpcCounters counters_;
  std::atomic<uint64_t> next_trans_{1};

  std::mutex conn_mu_;                      // serialises reconnects
  std::atomic<uint64_t> connect_epoch_{0};  // connect attempts made
  Status last_connect_error_;               // GUARDED_BY(conn_mu_)
  std::mutex mu_;
  std::condition_variable cv_;
  transport::ConnectionPtr conn_;                                   // GUARDED_BY(mu_)
  uint64_t session_ = 0;                                            // GUARDED_BY(mu_)
  uint32_t credits_ = 16;                                           // GUARDED_BY(mu_)
  uint32_t inflight_ = 0;                                           // GUARDED_BY(mu_)
  std::unordered_map<uint64_t, std::shared_ptr<Pending>> pending_;  // GUARDED_BY(mu_)
  bool shutting_down_ = false;                                      // GUARDED_BY(mu_)
};

// One transaction: its id, its pending slot and its send credit, held until destroyed.
class RpcClient::Transaction {
 public:
  Transaction(RpcClient* c, uint16_t opcode, std::span<const iovec> payload, const CallOptions& co);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

 private:
  friend class RpcClient;
  RpcClient* c_;
  const uint16_t opcode_;
  const std::span<const iovec> payload_;
  size_t bytes_ = 0;
  int attempts_ = 1;
  std::chrono::milliseconds timeout_{0};
  bool fail_fast_ = false;
  uint64_t trans_ = 0;
  std::shared_ptr<Pending> p_ = std::make_shared<Pending>();
  bool has_credit_ = false, registered_ = false;
  int attempt_ = 0;
  bool sent_ = false;  // the current attempt went out on a connection
  bool ever_connected_ = false;
  std::chrono::steady_clock::time_point deadline_;
  Status last_ = Status::Error(ETIMEDOUT, "no reply");
};

}  // namespace pohmelfs::client
