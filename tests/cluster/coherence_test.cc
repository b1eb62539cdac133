// Coherence between two clients, each a FUSE mount whose daemon runs in its own network
// namespace, on the same servers: close-to-open and fsync visibility, directory listings,
// appends under fcntl locks, a client killed or frozen while it holds a write lease with
// delayed writes, the lease authority killed, and the randomized workload on both clients.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <thread>

#include "tests/cluster/cluster.h"
#include "tests/cluster/workload.h"

namespace pohmelfs::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kSeed = 20261130;
constexpr int kBreakMs = 1500;
const std::string kOpts =
    "trans_scan_timeout=2000,trans_retries=2,connect_timeout=1000,keepalive_interval=300,"
    "keepalive_timeout=700";

// A network namespace for one client, joined to the root namespace by a veth pair: the
// client's daemon runs there (nsenter --net, so that its mount stays visible here) and
// reaches the servers, which listen in the root namespace, at the root side's address.
class NsClient {
 public:
  NsClient(const fs::path& dir, int index) {
    const std::string tag = std::to_string(getpid() % 10000) + "c" + std::to_string(index);
    ns_ = "pohm" + tag;
    veth_ = "pv" + tag;
    const int net = 100 + getpid() % 100;
    server_addr_ = "10." + std::to_string(net) + "." + std::to_string(50 + index) + ".1";
    const std::string addr = "10." + std::to_string(net) + "." + std::to_string(50 + index) + ".2";
    mnt_ = (dir / ("mnt" + std::to_string(index))).string();
    log_ = (dir / ("mount" + std::to_string(index) + ".log")).string();
    daemon_log_ = (dir / ("mount" + std::to_string(index) + ".daemon.log")).string();
    fs::create_directories(mnt_);
    ok_ = MakeVethNamespace(ns_, veth_, "pn" + tag, server_addr_, addr);
  }
  ~NsClient() {
    if (mounted_) Unmount(mnt_);
    RemoveVethNamespace(ns_, veth_);
  }
  bool ok() const { return ok_; }
  // The servers (root-namespace ports) as this client reaches them.
  std::string Servers(const std::vector<std::pair<int, int>>& port_prio) const {
    std::string list;
    for (auto [port, prio] : port_prio)
      list += (list.empty() ? "" : ",") + std::string("tcp://") + server_addr_ + ":" +
              std::to_string(port) + "?prio=" + std::to_string(prio);
    return list;
  }
  bool Mount(const std::string& servers, const std::string& extra = "") {
    std::vector<std::string> argv = {"/usr/bin/nsenter",
                                     "--net=/var/run/netns/" + ns_,
                                     std::string(POHMELFS_BIN_DIR) + "/pohmelfs-mount",
                                     servers,
                                     mnt_,
                                     "-o",
                                     kOpts + ",log_level=info,log_file=" + daemon_log_ + extra};
    mounted_ = RunCommand(argv, log_, 60) == 0;
    return mounted_;
  }
  // Kills the daemon (kill -9): the kernel aborts the mount's connection.
  void KillDaemon() {
    pid_t pid = FindMountProcess(mnt_);
    if (pid > 0) kill(pid, SIGKILL);
    for (auto end = Clock::now() + 10s; Clock::now() < end && FindMountProcess(mnt_) > 0;)
      std::this_thread::sleep_for(10ms);  // waiting for a process to die, bounded
  }
  void Signal(int sig) {
    pid_t pid = FindMountProcess(mnt_);
    if (pid > 0) kill(pid, sig);
  }
  const std::string& mnt() const { return mnt_; }
  // What the mount command printed, then the daemon's log.
  std::string Log() const { return ReadFile(log_) + ReadFile(daemon_log_); }
  std::string DaemonLog() const { return ReadFile(daemon_log_); }

 private:
  std::string ns_, veth_, server_addr_, mnt_, log_, daemon_log_;
  bool ok_ = false, mounted_ = false;
};

// A server in the root namespace, listening on every address.
class RootServer {
 public:
  bool Start(const fs::path& dir, int index, int port) {
    export_ = (dir / ("export" + std::to_string(index))).string();
    log_ = (dir / ("server" + std::to_string(index) + ".log")).string();
    fs::create_directories(export_);
    port_ = port;
    std::vector<std::string> argv = {std::string(POHMELFS_BIN_DIR) + "/pohmelfs-server",
                                     "--export",
                                     export_,
                                     "--listen",
                                     "tcp://0.0.0.0:" + std::to_string(port),
                                     "--lease-break-timeout-ms",
                                     std::to_string(kBreakMs),
                                     "--lease-grace-ms",
                                     "1000",
                                     "--lock-wait-ms",
                                     "200",
                                     "--allow-any"};
    pid_ = Spawn(argv, log_);
    return WaitForLog(log_, "listening on ", 0, &pid_) != std::string::npos;
  }
  void Kill() { KillAndReap(&pid_); }
  ~RootServer() { Kill(); }
  int port() const { return port_; }
  const std::string& export_dir() const { return export_; }
  std::string Log() const { return ReadFile(log_); }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string export_, log_;
};

std::string Slurp(const std::string& path) {
  return ReadFile(path);
}

bool WriteAll(int fd, const std::string& s) {
  return write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size());
}

class CoherenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, FUSE)";
    scratch_ = std::make_unique<ScratchDir>(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
    servers_.clear();
  }
  // n servers (the first has the highest priority) and two clients mounting them all.
  void StartAll(int n, const std::string& extra = "") {
    std::vector<std::pair<int, int>> ports;
    const int base = 17000 + (getpid() % 500) * 8;
    for (int i = 0; i < n; i++) {
      servers_.push_back(std::make_unique<RootServer>());
      ASSERT_TRUE(servers_.back()->Start(scratch_->path(), i + 1, base + i))
          << servers_.back()->Log();
      ports.emplace_back(base + i, n - i);
    }
    a_ = std::make_unique<NsClient>(scratch_->path(), 1);
    b_ = std::make_unique<NsClient>(scratch_->path(), 2);
    ASSERT_TRUE(a_->ok() && b_->ok()) << "could not set up the client namespaces";
    ASSERT_TRUE(a_->Mount(a_->Servers(ports), extra)) << a_->Log();
    ASSERT_TRUE(b_->Mount(b_->Servers(ports), extra)) << b_->Log();
    // Each daemon logs to its own file (log_file=), which failure messages below print.
    ASSERT_NE(a_->DaemonLog().find("mounted "), std::string::npos) << a_->Log();
    ASSERT_NE(b_->DaemonLog().find("mounted "), std::string::npos) << b_->Log();
  }
  std::string A(const std::string& rel) { return a_->mnt() + "/" + rel; }
  std::string B(const std::string& rel) { return b_->mnt() + "/" + rel; }

  std::unique_ptr<ScratchDir> scratch_;
  std::vector<std::unique_ptr<RootServer>> servers_;
  std::unique_ptr<NsClient> a_, b_;
};

TEST_F(CoherenceTest, CloseToOpenFsyncAndStat) {
  StartAll(2);
  // Close-to-open: written and closed on A, read on B.
  {
    int fd = open(A("f").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(WriteAll(fd, "first version\n"));
    ASSERT_EQ(close(fd), 0);
  }
  EXPECT_EQ(Slurp(B("f")), "first version\n");
  // Both open: B reads once (caching the page), A writes and fsyncs, B sees it.
  int rfd = open(B("f").c_str(), O_RDONLY);
  ASSERT_GE(rfd, 0);
  char buf[64] = {};
  ASSERT_EQ(pread(rfd, buf, sizeof(buf), 0), 14);
  int wfd = open(A("f").c_str(), O_WRONLY);
  ASSERT_GE(wfd, 0);
  ASSERT_EQ(pwrite(wfd, "FIRST", 5, 0), 5);
  ASSERT_EQ(pwrite(wfd, "tail\n", 5, 14), 5);
  ASSERT_EQ(fsync(wfd), 0);
  std::memset(buf, 0, sizeof(buf));
  ASSERT_EQ(pread(rfd, buf, sizeof(buf), 0), 19);
  EXPECT_EQ(std::string(buf, 19), "FIRST version\ntail\n");
  // Stat on B sees A's size and mtime.
  struct stat sa {
  }, sb{};
  ASSERT_EQ(fstat(wfd, &sa), 0);
  ASSERT_EQ(stat(B("f").c_str(), &sb), 0);
  EXPECT_EQ(sb.st_size, 19);
  EXPECT_EQ(sb.st_size, sa.st_size);
  EXPECT_EQ(sb.st_mtim.tv_sec, sa.st_mtim.tv_sec);
  EXPECT_EQ(sb.st_mtim.tv_nsec, sa.st_mtim.tv_nsec);
  close(wfd);
  close(rfd);
  // The data is on both replicas after close.
  for (const auto& s : servers_) EXPECT_EQ(Slurp(s->export_dir() + "/f"), "FIRST version\ntail\n");
}

TEST_F(CoherenceTest, ListingSeesCreateAndRemove) {
  StartAll(1);
  ASSERT_EQ(mkdir(A("d").c_str(), 0755), 0);
  auto list = [](const std::string& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  };
  EXPECT_TRUE(list(A("d")).empty());
  EXPECT_TRUE(list(B("d")).empty());
  ASSERT_EQ(close(open(B("d/new").c_str(), O_CREAT | O_WRONLY, 0644)), 0);
  EXPECT_EQ(list(A("d")), std::vector<std::string>{"new"});
  struct stat st {};
  EXPECT_EQ(stat(A("d/new").c_str(), &st), 0);
  ASSERT_EQ(unlink(A("d/new").c_str()), 0);
  EXPECT_TRUE(list(B("d")).empty());
  EXPECT_NE(stat(B("d/new").c_str(), &st), 0);
}

TEST_F(CoherenceTest, AppendsUnderFcntlLockAddUp) {
  StartAll(2);
  ASSERT_EQ(close(open(A("log").c_str(), O_CREAT | O_WRONLY, 0644)), 0);
  constexpr int kRounds = 40;
  constexpr size_t kRecord = 32;
  auto appender = [&](const std::string& path, char tag, std::string* err) {
    for (int i = 0; i < kRounds && err->empty(); i++) {
      int fd = open(path.c_str(), O_RDWR);
      if (fd < 0) return void(*err = "open: " + std::string(strerror(errno)));
      struct flock fl {};
      fl.l_type = F_WRLCK;
      fl.l_whence = SEEK_SET;
      if (fcntl(fd, F_SETLKW, &fl) != 0) *err = "lock: " + std::string(strerror(errno));
      struct stat st {};
      if (err->empty() && fstat(fd, &st) != 0) *err = "fstat";
      std::string rec(kRecord - 1, tag);
      rec += '\n';
      if (err->empty() &&
          pwrite(fd, rec.data(), rec.size(), st.st_size) != static_cast<ssize_t>(rec.size()))
        *err = "pwrite: " + std::string(strerror(errno));
      if (err->empty() && fsync(fd) != 0) *err = "fsync: " + std::string(strerror(errno));
      fl.l_type = F_UNLCK;
      if (fcntl(fd, F_SETLK, &fl) != 0 && err->empty()) *err = "unlock";
      close(fd);
    }
  };
  std::string ea, eb;
  std::thread ta(appender, A("log"), 'a', &ea), tb(appender, B("log"), 'b', &eb);
  ta.join();
  tb.join();
  ASSERT_EQ(ea, "") << a_->Log() << servers_[0]->Log();
  ASSERT_EQ(eb, "") << b_->Log() << servers_[0]->Log();
  const std::string all = Slurp(A("log"));
  ASSERT_EQ(all.size(), 2 * kRounds * kRecord)
      << all << a_->Log() << b_->Log() << servers_[0]->Log();
  EXPECT_EQ(std::count(all.begin(), all.end(), 'a'), kRounds * (kRecord - 1));
  EXPECT_EQ(std::count(all.begin(), all.end(), 'b'), kRounds * (kRecord - 1));
  EXPECT_EQ(Slurp(B("log")), all);
  // flock is exclusive across clients too, and dropped at close.
  int fa = open(A("log").c_str(), O_RDONLY), fb = open(B("log").c_str(), O_RDONLY);
  ASSERT_EQ(flock(fa, LOCK_EX | LOCK_NB), 0);
  EXPECT_NE(flock(fb, LOCK_EX | LOCK_NB), 0);
  EXPECT_EQ(errno, EWOULDBLOCK);
  close(fa);
  // FUSE drops an flock with the file's RELEASE, which the kernel sends after close returns:
  // wait for it with a blocking flock, bounded by an alarm (EINTR if it never comes).
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  sigaction(SIGALRM, &sa, nullptr);  // no SA_RESTART: the alarm interrupts flock
  alarm(10);
  EXPECT_EQ(flock(fb, LOCK_EX), 0) << strerror(errno);
  alarm(0);
  close(fb);
}

TEST_F(CoherenceTest, KilledWriterLosesOnlyUnflushedData) {
  StartAll(1);
  int fd = open(A("w").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(WriteAll(fd, "flushed\n"));
  ASSERT_EQ(fsync(fd), 0);
  ASSERT_TRUE(WriteAll(fd, "delayed and lost\n"));  // still on A only, under its write lease
  a_->KillDaemon();
  close(fd);
  const auto t0 = Clock::now();
  EXPECT_EQ(Slurp(B("w")), "flushed\n");
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  EXPECT_GE(waited.count(), kBreakMs / 2) << "B got the lease without waiting for the bound";
  EXPECT_LT(waited.count(), 10000);
  EXPECT_NE(servers_[0]->Log().find("evicted from its write lease"), std::string::npos)
      << servers_[0]->Log();
  // B now writes freely.
  int bfd = open(B("w").c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(bfd, 0);
  ASSERT_TRUE(WriteAll(bfd, "b\n"));
  ASSERT_EQ(close(bfd), 0);
  EXPECT_EQ(Slurp(servers_[0]->export_dir() + "/w"), "flushed\nb\n");
}

TEST_F(CoherenceTest, FrozenWriterIsEvictedAndSeesAnError) {
  StartAll(1);
  int fd = open(A("z").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(WriteAll(fd, "kept\n"));
  ASSERT_EQ(fsync(fd), 0);
  ASSERT_TRUE(WriteAll(fd, "late\n"));
  a_->Signal(SIGSTOP);
  EXPECT_EQ(Slurp(B("z")), "kept\n");  // after A's eviction
  a_->Signal(SIGCONT);
  // A's delayed write must not land on top of what B may now do: A's next call fails.
  EXPECT_NE(fsync(fd), 0);
  close(fd);
  EXPECT_EQ(Slurp(servers_[0]->export_dir() + "/z"), "kept\n");
}

TEST_F(CoherenceTest, AuthorityKilledBothClientsContinue) {
  StartAll(2);
  int fa = open(A("fa").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  int fb = open(B("fb").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(fa, 0);
  ASSERT_GE(fb, 0);
  ASSERT_TRUE(WriteAll(fa, "a1\n"));
  ASSERT_TRUE(WriteAll(fb, "b1\n"));
  ASSERT_EQ(fsync(fa), 0);
  ASSERT_TRUE(WriteAll(fb, "b2\n"));  // delayed across the failover
  // A holds an fcntl lock across the failover: it is placed again with the new authority.
  int la = open(A("lk").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(la, 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  ASSERT_EQ(fcntl(la, F_SETLK, &fl), 0);
  servers_[0]->Kill();  // the authority (highest priority)
  ASSERT_TRUE(WriteAll(fa, "a2\n"));
  ASSERT_EQ(close(fa), 0);
  ASSERT_EQ(close(fb), 0);
  EXPECT_EQ(Slurp(B("fa")), "a1\na2\n");
  EXPECT_EQ(Slurp(A("fb")), "b1\nb2\n");
  EXPECT_EQ(Slurp(servers_[1]->export_dir() + "/fa"), "a1\na2\n");
  EXPECT_EQ(Slurp(servers_[1]->export_dir() + "/fb"), "b1\nb2\n");
  int lb = open(B("lk").c_str(), O_RDWR);
  ASSERT_GE(lb, 0);
  struct flock fb2 {};
  fb2.l_type = F_WRLCK;
  fb2.l_whence = SEEK_SET;
  EXPECT_EQ(fcntl(lb, F_SETLK, &fb2), -1) << "A's lock did not survive the failover";
  EXPECT_TRUE(errno == EAGAIN || errno == EACCES) << strerror(errno);
  close(la);  // drops A's lock
  EXPECT_EQ(fcntl(lb, F_SETLK, &fb2), 0) << strerror(errno);
  close(lb);
  // Leases work with the new authority: a listing on one sees a create on the other.
  ASSERT_EQ(close(open(A("after").c_str(), O_CREAT | O_WRONLY, 0644)), 0);
  struct stat st {};
  EXPECT_EQ(stat(B("after").c_str(), &st), 0);
}

TEST_F(CoherenceTest, RandomWorkloadsOnDisjointSubtrees) {
  StartAll(2);
  ASSERT_EQ(mkdir(A("a").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(B("b").c_str(), 0755), 0);
  const std::string ma = (scratch_->path() / "mirror-a").string();
  const std::string mb = (scratch_->path() / "mirror-b").string();
  fs::create_directories(ma);
  fs::create_directories(mb);
  std::string ea, eb;
  auto run = [](const std::string& root, const std::string& mirror, uint32_t seed,
                std::string* err) {
    Workload w(root, mirror, seed);
    for (int i = 0; i < 300 && err->empty(); i++) *err = w.Step();
  };
  std::thread ta(run, A("a"), ma, kSeed, &ea), tb(run, B("b"), mb, kSeed + 1, &eb);
  ta.join();
  tb.join();
  ASSERT_EQ(ea, "") << a_->Log() << servers_[0]->Log();
  ASSERT_EQ(eb, "") << b_->Log() << servers_[0]->Log();
  EXPECT_EQ(TreeSum(A("a")), TreeSum(ma)) << TreeSum(A("a"), true) << "--- mirror\n"
                                          << TreeSum(ma, true);
  EXPECT_EQ(TreeSum(B("b")), TreeSum(mb));
  // Each client sees the other's subtree as it is.
  EXPECT_EQ(TreeSum(B("a")), TreeSum(ma));
  EXPECT_EQ(TreeSum(A("b")), TreeSum(mb));
}

}  // namespace
}  // namespace pohmelfs::testing
