// LeaseManager against an in-process server on loopback, with two sessions (two mounts' worth
// of ServerSet and LeaseManager): breaks whose order against grant replies is forced.
#include "client/lease_manager.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <set>

#include "rdma-server/server.h"

namespace pohmelfs::client {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Polls cond until it holds or 10 s pass (for state that has no notification to wait on).
template <typename F>
bool Eventually(F cond) {
  for (auto end = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < end;
       std::this_thread::sleep_for(1ms))
    if (cond()) return true;
  return cond();
}

// A gate the test opens once; waits on it are bounded.
class Gate {
 public:
  void Open() {
    std::lock_guard lk(mu_);
    open_ = true;
    cv_.notify_all();
  }
  bool WaitFor(std::chrono::milliseconds d) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, d, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

// A hook of one object that blocks (as the kernel does on a page that a request holds
// locked) until the test lets it go. Shared with the hooks, so that it outlives a test that
// fails early (LetGo opens it then).
struct Blocker {
  Gate entered, may_go;
  std::atomic<bool> done{false};
  void Watch(const Oid& oid) {
    std::lock_guard lk(mu);
    watched = oid;
  }
  // Called by the hook: blocks if oid is the watched one.
  void Run(const Oid& oid) {
    {
      std::lock_guard lk(mu);
      if (!(oid == watched)) return;
    }
    entered.Open();
    may_go.WaitFor(10s);
    done = true;
  }

 private:
  std::mutex mu;
  Oid watched;
};

// Opens the blocker when the test ends, however it ends.
struct LetGo {
  std::shared_ptr<Blocker> b;
  ~LetGo() { b->may_go.Open(); }
};

class LeaseManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pohmelfs-lease-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    server::ServerOptions o;
    o.allow_any = true;
    o.export_dir = dir_.string();
    o.listen = {"tcp://127.0.0.1:0"};
    o.workers = 2;
    // Long enough that no eviction ends a stuck break before the test sees it stuck.
    o.lease_break_timeout = 60s;
    auto s = server::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(*s);
  }
  void TearDown() override {
    for (auto& m : managers_) m->Stop();
    for (auto& s : sets_) s->Stop();
    server_.reset();
    fs::remove_all(dir_);
  }
  std::shared_ptr<ServerSet> Connect() {
    ServerSetOptions so;
    so.keepalive_interval = 60s;  // no pings in flight beside the test's requests
    so.keepalive_timeout = 60s;
    ReplicaSpec spec;
    spec.uri = server_->bound()[0].ToString();
    auto set = ServerSet::Start({spec}, so);
    EXPECT_TRUE(set.ok()) << set.status().ToString();
    if (!set.ok()) return nullptr;
    sets_.push_back(*set);
    return *set;
  }
  LeaseManager* Manager(const std::shared_ptr<ServerSet>& set, LeaseManager::Hooks hooks,
                        int break_threads) {
    LeaseManager::Options lo;
    lo.break_threads = break_threads;
    lo.acquire_timeout = 5s;  // a stuck acquire fails the test within this
    // No backstop in the tests' time: a break waits for its page drop unless a request waits.
    lo.invalidate_max_wait = 60s;
    managers_.push_back(std::make_unique<LeaseManager>(set, std::move(hooks), lo));
    return managers_.back().get();
  }
  // Creates name in the root with CREATE_LEASE, as a mount does: the creator holds the new
  // file's WRITE lease without ever learning the grant's number.
  Oid CreateLeased(const std::shared_ptr<ServerSet>& set, LeaseManager* leases,
                   const std::string& name) {
    FsClient fs(set);
    const Oid oid = Oid::Random();
    auto e = fs.Create(POHMELFS_OP_MKNOD,
                       FsClient::CreateBody(fs.root(), name, S_IFREG | 0644, 0, 0, 0,
                                            POHMELFS_CREATE_EXCL | POHMELFS_CREATE_LEASE, oid));
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    leases->GrantLocal(oid);
    return oid;
  }

  // Two sessions; A created `file` and its hook for dropping pages blocks on `inval`.
  struct PageDropSetup {
    std::shared_ptr<Blocker> inval = std::make_shared<Blocker>();
    LeaseManager* a = nullptr;
    LeaseManager* b = nullptr;
    Oid file;
  };
  void StartPageDrop(PageDropSetup* t) {
    auto set_a = Connect(), set_b = Connect();
    ASSERT_TRUE(set_a && set_b);
    LeaseManager::Hooks hooks_a;
    hooks_a.invalidate = [inval = t->inval](const Oid& oid, uint32_t, bool all) {
      if (all) inval->Run(oid);  // pages and names; attributes go at once
    };
    t->a = Manager(set_a, hooks_a, 1);
    t->b = Manager(set_b, {}, 1);
    t->file = CreateLeased(set_a, t->a, "file");
    t->inval->Watch(t->file);
  }

  fs::path dir_;
  std::unique_ptr<server::Server> server_;
  std::vector<std::shared_ptr<ServerSet>> sets_;
  std::vector<std::unique_ptr<LeaseManager>> managers_;
};

// A holds the READ lease that is left of its create grant; B asks for WRITE and A, a moment
// later, asks to upgrade: the server breaks A's lease (naming the create's grant, whose number
// A never saw) and queues A's upgrade behind B. A must answer the break while its own acquire
// is in flight, or neither request can go on.
TEST_F(LeaseManagerTest, BreakOfACreateGrantIsAnsweredWhileAnUpgradeWaitsBehindIt) {
  auto set_a = Connect(), set_b = Connect();
  ASSERT_TRUE(set_a && set_b);
  // A's only break thread is held inside the flush of another object's break until the test
  // has A's upgrade in flight: so A sees the file's break only while it is acquiring.
  auto flush = std::make_shared<Blocker>();
  LetGo let_go{flush};
  LeaseManager::Hooks hooks_a;
  hooks_a.flush = [flush](const Oid& oid, uint32_t) { flush->Run(oid); };
  LeaseManager* a = Manager(set_a, hooks_a, 1);
  LeaseManager* b = Manager(set_b, {}, 4);
  const Oid file = CreateLeased(set_a, a, "file");
  const Oid other = CreateLeased(set_a, a, "other");
  flush->Watch(other);

  // B reads the file: A is broken to READ (its break thread is free yet).
  ASSERT_TRUE(b->Hold(file, POHMELFS_LEASE_READ).ok());
  EXPECT_EQ(a->Held(file), POHMELFS_LEASE_READ);
  // B reads the other object: A's break thread stops in that flush.
  auto b_other =
      std::async(std::launch::async, [&] { return b->Hold(other, POHMELFS_LEASE_READ).ok(); });
  ASSERT_TRUE(flush->entered.WaitFor(10s));
  // B asks for WRITE on the file: the break reaches A and waits for the thread.
  const uint64_t breaks_before = a->counters().breaks;
  auto b_write = std::async(std::launch::async, [&] {
    auto g = b->Hold(file, POHMELFS_LEASE_WRITE);
    return g.ok() ? g->mode() : 0u;
  });
  ASSERT_TRUE(Eventually([&] { return a->counters().breaks > breaks_before; }));
  // A asks for WRITE too: the server queues it behind B's request.
  auto auth_a = set_a->Authority();
  ASSERT_TRUE(auth_a);
  ASSERT_EQ(auth_a->inflight(), 0u);
  auto a_write = std::async(std::launch::async, [&] {
    auto g = a->Hold(file, POHMELFS_LEASE_WRITE);
    return g.ok() ? g->mode() : 0u;
  });
  ASSERT_TRUE(Eventually([&] { return auth_a->inflight() == 1; }));
  flush->may_go.Open();

  EXPECT_TRUE(b_other.get());
  EXPECT_EQ(b_write.get(), POHMELFS_LEASE_WRITE);
  EXPECT_EQ(a_write.get(), POHMELFS_LEASE_WRITE);  // after B's lease was broken in turn
  // Whichever was granted last holds it now (a Hold whose grant was broken before it took
  // its guard asks again), and the other nothing.
  const std::set<uint32_t> held{a->Held(file), b->Held(file)};
  EXPECT_EQ(held, (std::set<uint32_t>{POHMELFS_LEASE_NONE, POHMELFS_LEASE_WRITE}));
  EXPECT_EQ(a->counters().lost, 0u);
  EXPECT_EQ(b->counters().lost, 0u);
}

// The lease is given back only once the kernel dropped the pages read under it: another
// client's grant waits for that.
TEST_F(LeaseManagerTest, BreakReleasesOnlyOnceKernelPagesAreDropped) {
  PageDropSetup t;
  LetGo let_go{t.inval};
  ASSERT_NO_FATAL_FAILURE(StartPageDrop(&t));
  const std::shared_ptr<Blocker> inval = t.inval;
  LeaseManager* b = t.b;
  const Oid file = t.file;
  auto b_read = std::async(std::launch::async, [&] {
    auto g = b->Hold(file, POHMELFS_LEASE_READ);
    return g.ok() && inval->done.load();  // granted, and only after A's pages were dropped
  });
  ASSERT_TRUE(inval->entered.WaitFor(10s));
  // Not granted while A's pages are still being dropped.
  EXPECT_EQ(b_read.wait_for(300ms), std::future_status::timeout);
  inval->may_go.Open();
  EXPECT_TRUE(b_read.get());
}

// But a request of the object that waits for a grant may hold the very page the kernel waits
// for: the break then gives the lease back after a short wait, and both requests go on.
TEST_F(LeaseManagerTest, BreakDoesNotWaitForPagesWhileARequestWaitsForAGrant) {
  PageDropSetup t;
  LetGo let_go{t.inval};
  ASSERT_NO_FATAL_FAILURE(StartPageDrop(&t));
  const std::shared_ptr<Blocker> inval = t.inval;
  LeaseManager* a = t.a;
  LeaseManager* b = t.b;
  const Oid file = t.file;
  auto b_read = std::async(std::launch::async, [&] {
    auto g = b->Hold(file, POHMELFS_LEASE_READ);
    return g.ok() ? g->mode() : 0u;
  });
  ASSERT_TRUE(inval->entered.WaitFor(10s));
  // A write on A (which in the kernel holds its pages locked) waits for a WRITE grant.
  auto a_write = std::async(std::launch::async, [&] {
    auto g = a->Hold(file, POHMELFS_LEASE_WRITE);
    return g.ok() ? g->mode() : 0u;
  });
  // Granted (after B's READ, which the break let through) while the pages were still being
  // dropped.
  EXPECT_EQ(a_write.get(), POHMELFS_LEASE_WRITE);
  EXPECT_FALSE(inval->done.load());
  // The write is done, so the kernel gets the page it waited for. B, whose READ was broken
  // again by A's WRITE, then reads.
  inval->may_go.Open();
  EXPECT_EQ(b_read.get(), POHMELFS_LEASE_READ);
}

}  // namespace
}  // namespace pohmelfs::client
