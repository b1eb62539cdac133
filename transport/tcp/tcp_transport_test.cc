// The TCP backend against itself on loopback: ordering, small and large messages, batching
// of queued sends, backpressure, peer death, oversize rejection, IPv6.
#include "transport/tcp/tcp_transport.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <random>

namespace pohmelfs::transport {
namespace {

using namespace std::chrono_literals;

// Collects messages and close events delivered to one side.
struct Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Message> msgs;
  int closes = 0;
  std::atomic<int> echoed{0};
  ConnectionPtr accepted;

  Handler MakeHandler(bool echo) {
    Handler h;
    h.on_accept = [this](const ConnectionPtr& c) {
      std::lock_guard lk(mu);
      accepted = c;
    };
    h.on_message = [this, echo](const ConnectionPtr& c, Message&& m) {
      if (echo) {
        proto::Header r = m.hdr;
        r.flags |= POHMELFS_FLAG_REPLY;
        (void)c->Send(r, m.payload.data(), m.payload.size());
        echoed++;
        return;
      }
      std::lock_guard lk(mu);
      msgs.push_back(std::move(m));
      cv.notify_all();
    };
    h.on_close = [this](const ConnectionPtr&, const Status&) {
      std::lock_guard lk(mu);
      closes++;
      cv.notify_all();
    };
    return h;
  }

  bool WaitFor(size_t n, std::chrono::milliseconds t = 10s) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, t, [&] { return msgs.size() >= n; });
  }
  bool WaitClosed(std::chrono::milliseconds t = 10s) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, t, [&] { return closes > 0; });
  }
};

class TcpTransportTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    server_ = CreateTcpTransport({.loop_threads = 2});
    client_ = CreateTcpTransport({.loop_threads = 1});
    auto uri = ParseUri(GetParam());
    ASSERT_TRUE(uri.ok());
    auto bound = server_->Listen(*uri, server_inbox_.MakeHandler(true));
    ASSERT_TRUE(bound.ok()) << bound.status().ToString();
    addr_ = *bound;
    auto c = client_->Connect(addr_, client_inbox_.MakeHandler(false), 5s);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    conn_ = *c;
  }
  void TearDown() override {
    client_->Shutdown();
    server_->Shutdown();
  }

  static proto::Header Req(uint64_t trans) {
    proto::Header h;
    h.opcode = POHMELFS_OP_PING;
    h.trans = trans;
    return h;
  }

  std::unique_ptr<Transport> server_, client_;
  Inbox server_inbox_, client_inbox_;
  Uri addr_;
  ConnectionPtr conn_;
};

TEST_P(TcpTransportTest, SmallMessagesArriveInOrder) {
  constexpr int kCount = 5000;
  for (int i = 0; i < kCount; i++) {
    uint32_t v = static_cast<uint32_t>(i);
    ASSERT_TRUE(conn_->Send(Req(i), &v, sizeof(v)).ok());
  }
  ASSERT_TRUE(client_inbox_.WaitFor(kCount));
  for (int i = 0; i < kCount; i++) {
    const Message& m = client_inbox_.msgs[i];
    EXPECT_EQ(m.hdr.trans, static_cast<uint64_t>(i));
    EXPECT_TRUE(m.hdr.is_reply());
    ASSERT_EQ(m.payload.size(), 4u);
    uint32_t v;
    std::memcpy(&v, m.payload.data(), 4);
    EXPECT_EQ(v, static_cast<uint32_t>(i));
  }
}

TEST_P(TcpTransportTest, LargeScatterGatherMessagesKeepEveryByte) {
  std::mt19937 rng(1234);
  std::vector<std::vector<uint8_t>> sent;
  for (int i = 0; i < 20; i++) {
    // Three iovecs of different sizes, up to the payload limit in total.
    size_t sizes[3] = {rng() % 1000, rng() % (512 * 1024), rng() % (512 * 1024)};
    std::vector<uint8_t> parts[3];
    iovec iov[3];
    std::vector<uint8_t> whole;
    for (int k = 0; k < 3; k++) {
      parts[k].resize(sizes[k]);
      for (auto& b : parts[k]) b = static_cast<uint8_t>(rng());
      iov[k] = {parts[k].data(), parts[k].size()};
      whole.insert(whole.end(), parts[k].begin(), parts[k].end());
    }
    ASSERT_TRUE(conn_->Send(Req(i), std::span<const iovec>(iov, 3)).ok());
    sent.push_back(std::move(whole));
  }
  ASSERT_TRUE(client_inbox_.WaitFor(sent.size()));
  for (size_t i = 0; i < sent.size(); i++) EXPECT_EQ(client_inbox_.msgs[i].payload, sent[i]) << i;
}

TEST_P(TcpTransportTest, ConcurrentSendersLoseNothing) {
  constexpr int kThreads = 4, kPer = 500;
  std::vector<std::thread> ts;
  ts.reserve(kThreads);
  for (int t = 0; t < kThreads; t++) {
    ts.emplace_back([&, t] {
      std::vector<uint8_t> payload(3000 + t, static_cast<uint8_t>(t));
      for (int i = 0; i < kPer; i++)
        ASSERT_TRUE(conn_->Send(Req(t * kPer + i), payload.data(), payload.size()).ok());
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_TRUE(client_inbox_.WaitFor(kThreads * kPer));
  std::vector<int> last(kThreads, -1);
  for (const auto& m : client_inbox_.msgs) {
    int t = static_cast<int>(m.hdr.trans / kPer), i = static_cast<int>(m.hdr.trans % kPer);
    EXPECT_EQ(m.payload.size(), static_cast<size_t>(3000 + t));
    EXPECT_GT(i, last[t]);  // each sender's messages stay in order
    last[t] = i;
  }
}

TEST_P(TcpTransportTest, PausedReceiverHoldsMessagesUntilResumed) {
  conn_->PauseReceive();
  for (int i = 0; i < 10; i++) ASSERT_TRUE(conn_->Send(Req(i), "x", 1).ok());
  // Nothing may be delivered while paused: wait for a bounded time and expect none.
  EXPECT_FALSE(client_inbox_.WaitFor(1, 300ms));
  conn_->ResumeReceive();
  EXPECT_TRUE(client_inbox_.WaitFor(10));
}

TEST_P(TcpTransportTest, APeerThatDoesNotReadStopsBeingRead) {
  // The client stops reading its replies but keeps sending 1 MiB requests: the server's
  // replies pile up, and past its high-water mark it must stop reading the client instead of
  // queueing without bound.
  conn_->PauseReceive();
  constexpr int kCount = 100;  // 100 MiB, about three times the high-water mark
  std::vector<uint8_t> mib(1 << 20, 0x5a);
  for (int i = 0; i < kCount; i++) ASSERT_TRUE(conn_->Send(Req(i), mib.data(), mib.size()).ok());
  // Wait (bounded) until the server stops making progress.
  int last = -1;
  for (int rounds = 0; rounds < 100 && server_inbox_.echoed.load() != last; rounds++) {
    last = server_inbox_.echoed.load();
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_LT(server_inbox_.echoed.load(), kCount);
  conn_->ResumeReceive();
  ASSERT_TRUE(client_inbox_.WaitFor(kCount, 30s));
  EXPECT_EQ(server_inbox_.echoed.load(), kCount);
}

TEST_P(TcpTransportTest, PeerCloseIsReportedAndSendFails) {
  ASSERT_TRUE(conn_->Send(Req(1), "x", 1).ok());
  ASSERT_TRUE(client_inbox_.WaitFor(1));
  ConnectionPtr accepted;
  {
    std::lock_guard lk(server_inbox_.mu);
    accepted = server_inbox_.accepted;
  }
  ASSERT_TRUE(accepted);
  accepted->Close(Status::Error(ECONNRESET, "test"));
  ASSERT_TRUE(client_inbox_.WaitClosed());
  EXPECT_FALSE(conn_->IsOpen());
  EXPECT_EQ(conn_->Send(Req(2), "x", 1).code(), ENOTCONN);
}

TEST_P(TcpTransportTest, OversizeMessageClosesTheConnection) {
  ConnectionPtr accepted;
  ASSERT_TRUE(conn_->Send(Req(1), "x", 1).ok());
  ASSERT_TRUE(client_inbox_.WaitFor(1));
  {
    std::lock_guard lk(server_inbox_.mu);
    accepted = server_inbox_.accepted;
  }
  accepted->SetMaxPayload(100);
  std::vector<uint8_t> big(101);
  ASSERT_TRUE(conn_->Send(Req(2), big.data(), big.size()).ok());
  EXPECT_TRUE(client_inbox_.WaitClosed());
}

TEST_P(TcpTransportTest, ReconnectAfterClose) {
  conn_->Close(Status::Error(ECONNRESET, "test"));
  ASSERT_TRUE(client_inbox_.WaitClosed());
  auto c = client_->Connect(addr_, client_inbox_.MakeHandler(false), 5s);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Send(Req(9), "y", 1).ok());
  ASSERT_TRUE(client_inbox_.WaitFor(1));
  EXPECT_EQ(client_inbox_.msgs[0].hdr.trans, 9u);
}

INSTANTIATE_TEST_SUITE_P(Loopback, TcpTransportTest,
                         ::testing::Values("tcp://127.0.0.1:0", "tcp://[::1]:0"));

TEST(TcpTransport, ConnectToClosedPortFails) {
  auto t = CreateTcpTransport({});
  auto c = t->Connect(*ParseUri("tcp://127.0.0.1:1"), Handler{}, 2s);
  EXPECT_FALSE(c.ok());
}

TEST(TcpTransport, UnknownSchemeIsAClearError) {
  auto t = CreateTransport("carrier-pigeon", {});
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.code(), ENOTSUP);
}

}  // namespace
}  // namespace pohmelfs::transport
