// Replication across servers in separate network namespaces, through a real FUSE mount:
// kill -9 and cut links in the middle of a stream of changes, failover of reads, all servers
// down and back, a server added at run time, resent writes applied once, split brain.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "tests/cluster/cluster.h"
#include "tests/cluster/workload.h"

namespace pohmelfs::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kSeed = 20261122;
// Short bounds so that failures are seen quickly: a call gives up after 3 x 1 s, a silent
// server is declared dead after 300 + 700 ms.
const std::string kOpts =
    "trans_scan_timeout=1000,trans_retries=2,connect_timeout=1000,keepalive_interval=300,"
    "keepalive_timeout=700,attr_timeout=0,entry_timeout=0,leases=0";

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, FUSE)";
    scratch_ = std::make_unique<ScratchDir>(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    mnt_ = (scratch_->path() / "mnt").string();
    mirror_ = (scratch_->path() / "mirror").string();
    fs::create_directories(mnt_);
    fs::create_directories(mirror_);
  }
  void TearDown() override {
    if (mounted_) Unmount(mnt_);
    servers_.clear();
  }
  NsServer& AddServer(std::vector<std::string> extra = {}) {
    servers_.push_back(
        std::make_unique<NsServer>(scratch_->path(), static_cast<int>(servers_.size()) + 1));
    EXPECT_TRUE(servers_.back()->ok()) << "could not set up the namespace";
    EXPECT_TRUE(servers_.back()->Start(std::move(extra))) << servers_.back()->Log();
    return *servers_.back();
  }
  std::string ServerList(const std::string& suffix = "") {
    std::string list;
    for (const auto& s : servers_) list += (list.empty() ? "" : ",") + s->uri() + suffix;
    return list;
  }
  void MountAll(const std::string& list, const std::string& extra = "") {
    const std::string log = (scratch_->path() / "mount.log").string();
    ASSERT_TRUE(Mount(list, mnt_, log, kOpts + extra)) << ReadFile(log);
    mounted_ = true;
  }
  std::string Servers(const std::vector<std::string>& cmd) {
    std::string out;
    std::vector<std::string> args = {"servers", mnt_};
    args.insert(args.end(), cmd.begin(), cmd.end());
    int rc = Ctl(args, &out);
    return rc == 0 ? out : "FAILED(" + std::to_string(rc) + "): " + out;
  }
  // Waits (bounded) until every server of the mount is up, i.e. resynced.
  void WaitAllUp() {
    std::string out = Servers({"wait", "60"});
    ASSERT_EQ(out.find("FAILED"), std::string::npos) << out << Servers({"status"});
  }
  // Every export holds the same tree (ids and versions included), and the mount shows the
  // mirror's tree.
  void ExpectReplicasIdentical() {
    const std::string first = TreeSum(servers_[0]->export_dir());
    for (size_t i = 1; i < servers_.size(); i++) {
      std::string sum = TreeSum(servers_[i]->export_dir());
      EXPECT_EQ(first, sum) << "export " << i + 1 << " differs from export 1:\n--- 1\n"
                            << TreeSum(servers_[0]->export_dir(), true) << "--- " << i + 1 << "\n"
                            << TreeSum(servers_[i]->export_dir(), true);
    }
    EXPECT_EQ(TreeSum(mnt_), TreeSum(mirror_)) << "the mount differs from the mirror:\n"
                                               << TreeSum(mnt_, true) << "--- mirror\n"
                                               << TreeSum(mirror_, true);
  }
  // Runs the workload for `steps` changes; false (with a failure) at the first error.
  bool RunWorkload(Workload* w, int steps) {
    for (int i = 0; i < steps; i++) {
      std::string err = w->Step();
      if (!err.empty()) {
        ADD_FAILURE() << "step " << w->steps() << ": " << err << "\n" << Servers({"status"});
        return false;
      }
    }
    return true;
  }
  // The READS column of a server's row in the status table, or -1.
  static long ReadsOf(const std::string& table, const std::string& uri) {
    auto at = table.find(uri);
    if (at == std::string::npos) return -1;
    std::istringstream line(table.substr(at, table.find('\n', at) - at));
    std::vector<std::string> cols;
    std::string word;
    while (line >> word) cols.push_back(word);
    return cols.size() > 5 ? std::stol(cols[5]) : -1;
  }
  std::string MountLog() { return ReadFile((scratch_->path() / "mount.log").string()); }

  std::unique_ptr<ScratchDir> scratch_;
  std::vector<std::unique_ptr<NsServer>> servers_;
  std::string mnt_, mirror_;
  bool mounted_ = false;
};

// Kill -9 one server while changes stream in; bring it back; the stream never sees an error
// and every replica ends byte-identical.
TEST_F(ClusterTest, TwoServersKillOneMidStreamThenResync) {
  AddServer();
  NsServer& victim = AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  Workload w(mnt_, mirror_, kSeed);
  ASSERT_TRUE(RunWorkload(&w, 60));
  victim.Kill();
  ASSERT_TRUE(RunWorkload(&w, 60));  // degraded: completes on the live server
  EXPECT_NE(Servers({"status"}).find("down"), std::string::npos);
  ASSERT_TRUE(victim.Start()) << victim.Log();
  ASSERT_TRUE(RunWorkload(&w, 30));  // while it comes back and catches up
  ASSERT_NO_FATAL_FAILURE(WaitAllUp());
  ASSERT_TRUE(RunWorkload(&w, 20));
  ExpectReplicasIdentical();
}

TEST_F(ClusterTest, ThreeServersKillOneMidStreamThenResync) {
  AddServer();
  AddServer();
  NsServer& victim = AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  Workload w(mnt_, mirror_, kSeed + 1);
  std::atomic<bool> stop{false}, failed{false};
  std::string err;  // written by the writer, read after join
  std::thread writer([&] {
    while (!stop && err.empty()) err = w.Step();
    failed = !err.empty();
  });
  // Kill while the writer is running (not between two of its calls).
  auto deadline = Clock::now() + 60s;
  auto wait_steps = [&](int n) {
    while (w.steps() < n && Clock::now() < deadline && !failed)
      std::this_thread::sleep_for(1ms);  // polling the step counter, bounded
  };
  wait_steps(40);
  victim.Kill();
  wait_steps(100);
  bool restarted = victim.Start();
  wait_steps(140);
  stop = true;
  writer.join();
  ASSERT_TRUE(restarted) << victim.Log();
  ASSERT_EQ(err, "") << Servers({"status"});
  EXPECT_GE(w.steps(), 140);
  ASSERT_NO_FATAL_FAILURE(WaitAllUp());
  ExpectReplicasIdentical();
}

TEST_F(ClusterTest, CutLinkMidStreamThenResync) {
  AddServer();
  NsServer& victim = AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  Workload w(mnt_, mirror_, kSeed + 2);
  ASSERT_TRUE(RunWorkload(&w, 40));
  ASSERT_TRUE(victim.LinkDown());
  // No RST arrives: only the keepalive (or a write timing out) can tell the server is gone.
  ASSERT_TRUE(RunWorkload(&w, 60));
  EXPECT_NE(Servers({"status"}).find("down"), std::string::npos) << Servers({"status"});
  ASSERT_TRUE(victim.LinkUp());
  ASSERT_NO_FATAL_FAILURE(WaitAllUp());
  ASSERT_TRUE(RunWorkload(&w, 20));
  ExpectReplicasIdentical();
}

TEST_F(ClusterTest, ReadsContinueWhenTheServerBeingReadDies) {
  NsServer& preferred = AddServer();
  AddServer();
  ASSERT_NO_FATAL_FAILURE(
      MountAll(servers_[0]->uri() + "?prio=10," + servers_[1]->uri() + "?prio=1"));
  const std::string path = mnt_ + "/data";
  std::vector<char> data(1 << 20);
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<char>(i * 7 + 3);
  {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ASSERT_EQ(close(fd), 0);
  }
  auto read_all = [&] {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return false;
    std::vector<char> buf(data.size() + 4096);
    ssize_t n = pread(fd, buf.data(), buf.size(), 0);
    close(fd);
    return n == static_cast<ssize_t>(data.size()) &&
           std::memcmp(buf.data(), data.data(), data.size()) == 0;
  };
  for (int i = 0; i < 5; i++) ASSERT_TRUE(read_all());
  std::string before = Servers({"status"});
  preferred.Kill();
  for (int i = 0; i < 20; i++) ASSERT_TRUE(read_all()) << "read " << i << "\n" << MountLog();
  std::string after = Servers({"status"});
  EXPECT_NE(after.find("down"), std::string::npos) << after;
  // The second server now serves the reads: its read counter moved.
  EXPECT_GT(ReadsOf(after, servers_[1]->uri()), ReadsOf(before, servers_[1]->uri()) + 10)
      << before << after;
}

TEST_F(ClusterTest, ReadsRotateAmongServersOfEqualPriority) {
  AddServer();
  AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  ASSERT_EQ(mkdir((mnt_ + "/d").c_str(), 0755), 0);
  struct stat st;
  for (int i = 0; i < 100; i++) ASSERT_EQ(stat((mnt_ + "/d").c_str(), &st), 0);
  std::string table = Servers({"status"});
  for (const auto& s : servers_)
    EXPECT_GE(ReadsOf(table, s->uri()), 30) << "reads not shared:\n" << table;
}

TEST_F(ClusterTest, AllServersDownFailsWithinTheBoundAndRecovers) {
  NsServer& a = AddServer();
  NsServer& b = AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  ASSERT_EQ(mkdir((mnt_ + "/before").c_str(), 0755), 0);
  a.Kill();
  b.Kill();
  struct stat st;
  auto start = Clock::now();
  int rc = stat((mnt_ + "/before").c_str(), &st);
  int err = errno;
  auto took = Clock::now() - start;
  EXPECT_EQ(rc, -1);
  EXPECT_TRUE(err == EIO || err == ETIMEDOUT) << std::strerror(err);
  EXPECT_LT(took, 10s);  // bound: 3 x trans_scan_timeout (1 s) plus slack
  start = Clock::now();
  rc = mkdir((mnt_ + "/during").c_str(), 0755);
  err = errno;
  EXPECT_EQ(rc, -1);
  EXPECT_TRUE(err == EIO || err == ETIMEDOUT) << std::strerror(err);
  EXPECT_LT(Clock::now() - start, 10s);
  ASSERT_TRUE(a.Start()) << a.Log();
  ASSERT_TRUE(b.Start()) << b.Log();
  ASSERT_NO_FATAL_FAILURE(WaitAllUp());
  EXPECT_EQ(stat((mnt_ + "/before").c_str(), &st), 0) << std::strerror(errno);
  EXPECT_EQ(mkdir((mnt_ + "/after").c_str(), 0755), 0) << std::strerror(errno);
  EXPECT_EQ(TreeSum(a.export_dir()), TreeSum(b.export_dir()));
}

TEST_F(ClusterTest, ServerAddedAtRunTimeIsSyncedBeforeItServes) {
  AddServer();
  AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  Workload w(mnt_, mirror_, kSeed + 3);
  ASSERT_TRUE(RunWorkload(&w, 80));
  NsServer& third = AddServer();
  std::string out = Servers({"add", third.uri() + "?prio=5&perm=rw"});
  ASSERT_EQ(out.find("FAILED"), std::string::npos) << out;
  ASSERT_TRUE(RunWorkload(&w, 20));
  ASSERT_NO_FATAL_FAILURE(WaitAllUp());
  ExpectReplicasIdentical();
  // Changing priority and permissions at run time, then removing it.
  out = Servers({"set", third.uri() + "?prio=1&perm=r"});
  ASSERT_EQ(out.find("FAILED"), std::string::npos) << out;
  std::string table = Servers({"status"});
  EXPECT_NE(table.find(" r "), std::string::npos) << table;
  out = Servers({"remove", third.uri()});
  ASSERT_EQ(out.find("FAILED"), std::string::npos) << out;
  EXPECT_EQ(Servers({"status"}).find(third.uri()), std::string::npos);
}

TEST_F(ClusterTest, ResentWritesAreAppliedOnce) {
  // The server drops its first 5 replies to changes: the client resends each (same
  // transaction id), and the server answers from its record instead of applying it again.
  AddServer({"--test-drop-replies", "5"});
  AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  ASSERT_EQ(mkdir((mnt_ + "/a").c_str(), 0755), 0) << std::strerror(errno);
  ASSERT_EQ(rename((mnt_ + "/a").c_str(), (mnt_ + "/b").c_str()), 0) << std::strerror(errno);
  int fd = open((mnt_ + "/b/f").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND, 0644);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(write(fd, "abc", 3), 3);
  ASSERT_EQ(write(fd, "def", 3), 3);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(ReadFile(mnt_ + "/b/f"), "abcdef");
  auto count = [](const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) n++;
    return n;
  };
  const std::string log = servers_[0]->Log();
  EXPECT_EQ(count(log, "dropping reply"), 5) << log;
  EXPECT_EQ(count(log, "answered from the reply record"), 5) << log;
  EXPECT_EQ(Servers({"status"}).find("syncing"), std::string::npos);
  ASSERT_NO_FATAL_FAILURE(WaitAllUp());
  EXPECT_EQ(TreeSum(servers_[0]->export_dir()), TreeSum(servers_[1]->export_dir()));
  EXPECT_EQ(ReadFile(servers_[0]->export_dir() + "/b/f"), "abcdef");
}

TEST_F(ClusterTest, SplitBrainIsDetectedAndReported) {
  NsServer& a = AddServer();
  NsServer& b = AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  ASSERT_EQ(mkdir((mnt_ + "/common").c_str(), 0755), 0);
  b.Kill();
  ASSERT_EQ(mkdir((mnt_ + "/only-on-a").c_str(), 0755), 0);  // a records that b missed it
  Unmount(mnt_);
  mounted_ = false;
  a.Kill();
  ASSERT_TRUE(b.Start());
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));  // only b is up: this mount writes to b alone
  ASSERT_EQ(mkdir((mnt_ + "/only-on-b").c_str(), 0755), 0);
  ASSERT_TRUE(a.Start());
  // a comes back holding changes b lacks, and b holds changes a lacks: neither may be picked.
  auto deadline = Clock::now() + 30s;
  std::string table;
  while (Clock::now() < deadline) {
    table = Servers({"status"});
    if (table.find("split-brain") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);  // polling the status table, bounded
  }
  EXPECT_NE(table.find("split-brain"), std::string::npos) << table << MountLog();
  EXPECT_TRUE(fs::exists(a.export_dir() + "/only-on-a"));
  EXPECT_TRUE(fs::exists(b.export_dir() + "/only-on-b"));
  // The operator declares a the loser: it is resynced from b.
  std::string out = Servers({"resolve", a.uri()});
  ASSERT_EQ(out.find("FAILED"), std::string::npos) << out;
  ASSERT_NO_FATAL_FAILURE(WaitAllUp());
  EXPECT_EQ(TreeSum(a.export_dir()), TreeSum(b.export_dir()));
  EXPECT_FALSE(fs::exists(a.export_dir() + "/only-on-a"));
}

TEST_F(ClusterTest, AServerThatMissedWritesNeverServesAlone) {
  // b misses a write that only a has; then a dies and b comes back alone. Serving from b
  // would hide an acknowledged write: b must stay out (stale) until a is back to resync it.
  NsServer& a = AddServer();
  NsServer& b = AddServer();
  ASSERT_NO_FATAL_FAILURE(MountAll(ServerList()));
  b.Kill();
  ASSERT_EQ(mkdir((mnt_ + "/acked-on-a-only").c_str(), 0755), 0);
  a.Kill();
  ASSERT_TRUE(b.Start()) << b.Log();
  auto deadline = Clock::now() + 30s;
  std::string table;
  while (Clock::now() < deadline) {
    table = Servers({"status"});
    if (table.find("stale") != std::string::npos) break;
    std::this_thread::sleep_for(50ms);  // polling the status table, bounded
  }
  ASSERT_NE(table.find("stale"), std::string::npos) << table;
  struct stat st;
  errno = 0;
  EXPECT_EQ(stat((mnt_ + "/acked-on-a-only").c_str(), &st), -1);  // not ENOENT from b
  EXPECT_TRUE(errno == EIO || errno == ETIMEDOUT) << std::strerror(errno);
  ASSERT_TRUE(a.Start()) << a.Log();
  ASSERT_NO_FATAL_FAILURE(WaitAllUp());
  EXPECT_EQ(stat((mnt_ + "/acked-on-a-only").c_str(), &st), 0);
  EXPECT_TRUE(fs::exists(b.export_dir() + "/acked-on-a-only"));
  EXPECT_EQ(TreeSum(a.export_dir()), TreeSum(b.export_dir()));
}

TEST_F(ClusterTest, ClusterFileWithAWriteOnlyServer) {
  AddServer();
  AddServer();
  const std::string conf = (scratch_->path() / "cluster.conf").string();
  {
    std::ofstream f(conf);
    f << "# test cluster\n"
      << servers_[0]->uri() << "  prio=5  perm=rw\n"
      << servers_[1]->uri() << "  perm=w   # backup: written, never read\n";
  }
  ASSERT_NO_FATAL_FAILURE(MountAll("test-cluster", ",cluster=" + conf));
  Workload w(mnt_, mirror_, kSeed + 4);
  ASSERT_TRUE(RunWorkload(&w, 40));
  const std::string table = Servers({"status"});
  EXPECT_GT(ReadsOf(table, servers_[0]->uri()), 0) << table;
  EXPECT_EQ(ReadsOf(table, servers_[1]->uri()), 0) << table;
  EXPECT_NE(table.find(" w "), std::string::npos) << table;
  ExpectReplicasIdentical();
}

}  // namespace
}  // namespace pohmelfs::testing
