// RpcClient against an in-process server on loopback: calls, bounded failure when the server
// is gone, and reconnect when it comes back on the same address.
#include "client/rpc_client.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "rdma-server/server.h"

namespace pohmelfs::client {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class RpcClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pohmelfs-rpc-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    StartServer("tcp://127.0.0.1:0");
  }
  void TearDown() override {
    server_.reset();
    fs::remove_all(dir_);
  }
  void StartServer(const std::string& uri) {
    server::ServerOptions o;
    o.allow_any = true;
    o.export_dir = dir_.string();
    o.listen = {uri};
    o.workers = 2;
    auto s = server::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(*s);
    uri_ = server_->bound()[0].ToString();
  }
  static RpcOptions Fast() {
    RpcOptions o;
    o.trans_scan_timeout = 300ms;
    o.trans_retries = 2;
    o.connect_timeout = 300ms;
    return o;
  }
  Result<RpcReply> GetAttrRoot(RpcClient* c) {
    pohmelfs_obj_req q{proto::Oid::Root().ToWire()};
    std::vector<uint8_t> b(sizeof(q));
    std::memcpy(b.data(), &q, sizeof(q));
    return c->Call(POHMELFS_OP_GETATTR, b);
  }

  // Runs `threads` callers doing `each` GETATTRs on one client; returns the successful ones.
  int ConcurrentGetAttrs(RpcClient* c, int threads, int each) {
    std::atomic<int> ok{0};
    std::vector<std::thread> ts;
    ts.reserve(threads);
    for (int t = 0; t < threads; t++)
      ts.emplace_back([&] {
        for (int i = 0; i < each; i++)
          if (auto r = GetAttrRoot(c); r.ok() && r->status == 0) ok++;
      });
    for (auto& t : ts) t.join();
    return ok.load();
  }

  fs::path dir_;
  std::unique_ptr<server::Server> server_;
  std::string uri_;
};

TEST_F(RpcClientTest, HandshakeGivesRootAndFeatures) {
  auto c = RpcClient::Connect(uri_, Fast());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->root(), proto::Oid::Root());
  // Everything but RMA, which a tcp connection does not have.
  EXPECT_EQ((*c)->features(), uint64_t{POHMELFS_FEAT_ALL & ~POHMELFS_FEAT_RMA});
  EXPECT_EQ((*c)->RmaConnection(), nullptr);
  auto r = GetAttrRoot(c->get());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 0u);
  EXPECT_EQ(r->payload.size(), sizeof(pohmelfs_attr));
}

TEST_F(RpcClientTest, UnreachableServerIsAnErrorNotAHang) {
  auto c = RpcClient::Connect("tcp://127.0.0.1:1", Fast());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.code(), EIO);
}

TEST_F(RpcClientTest, ServerGoneThenBackOnTheSameAddress) {
  auto c = RpcClient::Connect(uri_, Fast());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(GetAttrRoot(c->get()).ok());
  std::string addr = uri_;
  server_->Stop();
  server_.reset();
  auto start = std::chrono::steady_clock::now();
  auto r = GetAttrRoot(c->get());
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(r.code() == EIO || r.code() == ETIMEDOUT) << r.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);  // (retries + 1) * 300 ms + slack
  StartServer(addr);
  auto again = GetAttrRoot(c->get());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->status, 0u);
}

TEST_F(RpcClientTest, OneCreditStillServesConcurrentCallers) {
  server_.reset();
  server::ServerOptions o;
  o.allow_any = true;
  o.export_dir = dir_.string();
  o.listen = {"tcp://127.0.0.1:0"};
  o.credits = 1;  // the server pauses reading after every request and must resume
  auto s = server::Server::Start(o);
  ASSERT_TRUE(s.ok());
  server_ = std::move(*s);
  auto c = RpcClient::Connect(server_->bound()[0].ToString(), Fast());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ConcurrentGetAttrs(c->get(), 4, 100), 400);
}

TEST_F(RpcClientTest, ManyConcurrentCallsShareOneConnection) {
  auto c = RpcClient::Connect(uri_, Fast());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ConcurrentGetAttrs(c->get(), 8, 200), 1600);
}

TEST_F(RpcClientTest, BeginOnSeveralThenWaitGetsEveryReply) {
  auto a = RpcClient::Connect(uri_, Fast());
  auto b = RpcClient::Connect(uri_, Fast());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)->server_id(), proto::Oid{});  // the export's identity, the same for both
  EXPECT_EQ((*a)->server_id(), (*b)->server_id());
  pohmelfs_obj_req q{proto::Oid::Root().ToWire()};
  iovec v{&q, sizeof(q)};
  std::span<const iovec> payload(&v, 1);
  auto ta = (*a)->Begin(POHMELFS_OP_GETATTR, payload);
  auto tb = (*b)->Begin(POHMELFS_OP_GETATTR, payload);
  EXPECT_EQ((*a)->inflight(), 1u);
  auto ra = (*a)->Wait(*ta);
  auto rb = (*b)->Wait(*tb);
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(ra->payload, rb->payload);
  ta.reset();
  EXPECT_EQ((*a)->inflight(), 0u);  // the transaction held its credit until destroyed
}

TEST_F(RpcClientTest, FailFastReturnsEioAtOnceWhenTheServerIsGone) {
  auto c = RpcClient::Connect(uri_, Fast());
  ASSERT_TRUE(c.ok());
  server_->Stop();
  server_.reset();
  pohmelfs_obj_req q{proto::Oid::Root().ToWire()};
  iovec v{&q, sizeof(q)};
  auto start = std::chrono::steady_clock::now();
  auto t = (*c)->Begin(POHMELFS_OP_GETATTR, std::span<const iovec>(&v, 1),
                       CallOptions{.fail_fast = true});
  auto r = (*c)->Wait(*t);
  EXPECT_EQ(r.code(), EIO) << r.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);  // no resend, no reconnect wait
  EXPECT_FALSE((*c)->connected());
}

}  // namespace
}  // namespace pohmelfs::client
