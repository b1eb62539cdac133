// Client sessions. A session outlives its connection for a while so that a reconnecting client
// resumes it (HELLO resume_session) and gets the recorded replies of transactions it resends
// instead of having them executed twice.
//
// Thread-safety: all methods are internally locked.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "rdma-server/export_ops.h"
#include "transport/transport.h"

namespace pohmelfs::server {

struct RecordedReply {
  uint32_t status = 0;
  std::vector<uint8_t> payload;
};

class Session final : public OpenHandles {
 public:
  // Recorded replies kept per session; a client never has more transactions outstanding than
  // its credits (256), so this is 16 full windows of resend history.
  static constexpr size_t kReplyHistory = 4096;
  // And at most this many bytes of recorded replies (mutating replies are small; a batch reply
  // is at most one payload).
  static constexpr size_t kReplyHistoryBytes = 16u << 20;

  Session(uint64_t id, ExportStore* store, std::string client)
      : id_(id), store_(store), client_(std::move(client)) {}
  ~Session() override { ReleaseAll(); }

  uint64_t id() const { return id_; }
  const std::string& client() const { return client_; }

  enum class Begin { kNew, kDone, kInProgress };
  // Starts a mutating transaction. kDone fills *recorded; kInProgress means the first copy is
  // still executing and will answer on conn when it finishes.
  Begin BeginTrans(uint64_t trans, const transport::ConnectionPtr& conn, RecordedReply* recorded);
  // Records the reply and returns the connection that should receive it (the newest one the
  // transaction arrived on), or null if that connection is gone.
  transport::ConnectionPtr FinishTrans(uint64_t trans, RecordedReply reply);

  // conn becomes the one server-to-client callbacks (lease breaks) are sent on.
  void Attach(const transport::ConnectionPtr& conn) {
    std::lock_guard lk(mu_);
    connections_++;
    callback_conn_ = conn;
  }
  // The connection callbacks go to, or null when the session has none.
  transport::ConnectionPtr CallbackConnection() {
    std::lock_guard lk(mu_);
    return connections_ > 0 ? callback_conn_.lock() : nullptr;
  }
  void Detach();
  // True when no connection has used the session for longer than timeout.
  bool Expired(std::chrono::steady_clock::time_point now, std::chrono::seconds timeout);

  void Opened(const Oid& oid) override;
  void Released(const Oid& oid) override;
  size_t OpenCount() const override;
  void ReleaseAll();

 private:
  // Forgets the oldest finished transactions beyond the count and byte bounds.
  void TrimLocked();  // REQUIRES: mu_ held
  struct Entry {
    bool done = false;
    RecordedReply reply;
    std::weak_ptr<transport::Connection> conn;
  };
  const uint64_t id_;
  ExportStore* const store_;
  const std::string client_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, Entry> trans_;           // GUARDED_BY(mu_)
  std::deque<uint64_t> order_;                          // GUARDED_BY(mu_)
  size_t recorded_bytes_ = 0;                           // GUARDED_BY(mu_)
  std::unordered_map<Oid, int, proto::OidHash> open_;   // GUARDED_BY(mu_)
  size_t open_total_ = 0;                               // GUARDED_BY(mu_): sum of open_
  int connections_ = 0;                                 // GUARDED_BY(mu_)
  std::weak_ptr<transport::Connection> callback_conn_;  // GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point idle_since_;    // GUARDED_BY(mu_)
};

class SessionTable {
 public:
  explicit SessionTable(ExportStore* store) : store_(store) {}
  std::shared_ptr<Session> Create(const std::string& client);
  std::shared_ptr<Session> Find(uint64_t id);
  // Drops sessions idle longer than timeout (their open handles are released); returns their
  // ids.
  std::vector<uint64_t> Reap(std::chrono::seconds timeout);
  size_t size();

 private:
  ExportStore* const store_;
  std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Session>> sessions_;  // GUARDED_BY(mu_)
};

}  // namespace pohmelfs::server
