#include "rdma-server/session_table.h"

#include <openssl/rand.h>

namespace pohmelfs::server {

Session::Begin Session::BeginTrans(uint64_t trans, const transport::ConnectionPtr& conn,
                                   RecordedReply* recorded) {
  std::lock_guard lk(mu_);
  auto it = trans_.find(trans);
  if (it != trans_.end()) {
    if (it->second.done) {
      *recorded = it->second.reply;
      return Begin::kDone;
    }
    it->second.conn = conn;
    return Begin::kInProgress;
  }
  trans_[trans].conn = conn;
  order_.push_back(trans);
  TrimLocked();
  return Begin::kNew;
}

transport::ConnectionPtr Session::FinishTrans(uint64_t trans, RecordedReply reply) {
  std::lock_guard lk(mu_);
  auto it = trans_.find(trans);
  if (it == trans_.end()) return nullptr;
  it->second.done = true;
  it->second.reply = std::move(reply);
  recorded_bytes_ += it->second.reply.payload.size();
  auto conn = it->second.conn.lock();
  TrimLocked();
  return conn;
}

void Session::TrimLocked() {
  while (order_.size() > kReplyHistory || recorded_bytes_ > kReplyHistoryBytes) {
    auto old = trans_.find(order_.front());
    if (old != trans_.end() && !old->second.done) break;  // never forget a running one
    if (old != trans_.end()) {
      recorded_bytes_ -= old->second.reply.payload.size();
      trans_.erase(old);
    }
    order_.pop_front();
  }
}

void Session::Detach() {
  std::lock_guard lk(mu_);
  if (--connections_ == 0) idle_since_ = std::chrono::steady_clock::now();
}

bool Session::Expired(std::chrono::steady_clock::time_point now, std::chrono::seconds timeout) {
  std::lock_guard lk(mu_);
  return connections_ == 0 && now - idle_since_ > timeout;
}

void Session::Opened(const Oid& oid) {
  {
    std::lock_guard lk(mu_);
    open_[oid]++;
    open_total_++;
  }
  store_->Opened(oid);
}

void Session::Released(const Oid& oid) {
  {
    std::lock_guard lk(mu_);
    auto it = open_.find(oid);
    if (it == open_.end()) return;  // not opened in this session: ignore
    open_total_--;
    if (--it->second == 0) open_.erase(it);
  }
  store_->Released(oid);
}

size_t Session::OpenCount() const {
  std::lock_guard lk(mu_);
  return open_total_;
}

void Session::ReleaseAll() {
  std::unordered_map<Oid, int, proto::OidHash> open;
  {
    std::lock_guard lk(mu_);
    open.swap(open_);
    open_total_ = 0;
  }
  for (auto& [oid, n] : open)
    for (int i = 0; i < n; i++) store_->Released(oid);
}

std::shared_ptr<Session> SessionTable::Create(const std::string& client) {
  std::lock_guard lk(mu_);
  uint64_t id = 0;
  while (id == 0 || sessions_.count(id)) {
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&id), sizeof(id)) != 1) std::abort();
  }
  auto s = std::make_shared<Session>(id, store_, client);
  sessions_[id] = s;
  return s;
}

std::shared_ptr<Session> SessionTable::Find(uint64_t id) {
  std::lock_guard lk(mu_);
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : it->second;
}

std::vector<uint64_t> SessionTable::Reap(std::chrono::seconds timeout) {
  auto now = std::chrono::steady_clock::now();
  std::vector<std::shared_ptr<Session>> dead;
  {
    std::lock_guard lk(mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second->Expired(now, timeout)) {
        dead.push_back(it->second);
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::vector<uint64_t> ids;
  ids.reserve(dead.size());
  for (const auto& s : dead) ids.push_back(s->id());
  return ids;  // the sessions are released as `dead` goes out of scope
}

size_t SessionTable::size() {
  std::lock_guard lk(mu_);
  return sessions_.size();
}

}  // namespace pohmelfs::server
