// Integration fixture: a real pohmelfs-server process exporting a fresh directory on a
// loopback port, and a real FUSE mount of it made by pohmelfs-mount. Tests then use ordinary
// syscalls on mount() and may look at export() to see what the server stored.
// Requires root and /dev/fuse (CI runs as root).
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#ifndef POHMELFS_BIN_DIR
#error "POHMELFS_BIN_DIR must point at build/bin"
#endif

namespace pohmelfs::testing {

namespace fs = std::filesystem;

// Runs argv, returns the pid. stdout/stderr go to log (appended).
inline pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::fopen(log.c_str(), "a");
    if (f) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Runs argv to completion (bounded by timeout_s); returns its exit status or -1.
inline int RunCommand(const std::vector<std::string>& argv, const std::string& log,
                      int timeout_s = 60) {
  pid_t pid = Spawn(argv, log);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  for (;;) {
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling a child, bounded
  }
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Polls log (bounded: 10 s) until the text after offset `from` contains needle. Returns the
// position of needle, or npos when the process *pid exits first (*pid is then set to -1) or
// the time is up.
inline size_t WaitForLog(const std::string& log, const std::string& needle, size_t from,
                         pid_t* pid) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    std::string text = ReadFile(log);
    size_t at = text.find(needle, from);
    if (at != std::string::npos && text.find('\n', at) != std::string::npos) return at;
    int st;
    if (waitpid(*pid, &st, WNOHANG) == *pid) {
      *pid = -1;
      return std::string::npos;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // log polling, bounded
  }
  return std::string::npos;
}

class ServerProcess {
 public:
  // Starts a server on 127.0.0.1 with a kernel-chosen port; waits (bounded) for its address.
  // The transport is tcp unless POHMELFS_TEST_LISTEN names another listen address (ctest runs
  // the file-system suites again over ofi+tcp that way).
  bool Start(const std::string& export_dir, const std::string& log,
             std::vector<std::string> extra = {}) {
    log_ = log;
    const char* listen = std::getenv("POHMELFS_TEST_LISTEN");
    // Tests serve everyone on loopback unless they bring their own allow list.
    bool has_allow = false;
    for (const auto& e : extra) has_allow |= e.rfind("--allow", 0) == 0;
    if (!has_allow) extra.push_back("--allow-any");
    argv_ = {std::string(POHMELFS_BIN_DIR) + "/pohmelfs-server", "--export", export_dir};
    argv_.insert(argv_.end(), extra.begin(), extra.end());
    return Launch(listen && *listen ? listen : "tcp://127.0.0.1:0");
  }
  // After a stop or a kill: the same export and options, on the address of the last start
  // (so clients reconnect to it); the log goes on in the same file.
  bool Restart() { return Launch(uri_); }
  // SIGTERM, then wait (bounded); returns true if it exited cleanly with status 0.
  bool Stop(int sig = SIGTERM) {
    if (pid_ <= 0) return true;
    kill(pid_, sig);
    int st = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (waitpid(pid_, &st, WNOHANG) != pid_) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &st, 0);
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  bool Alive() const { return pid_ > 0 && kill(pid_, 0) == 0; }
  pid_t pid() const { return pid_; }
  const std::string& uri() const { return uri_; }
  std::string Log() const { return ReadFile(log_); }
  ~ServerProcess() { Stop(SIGKILL); }

 private:
  bool Launch(const std::string& listen) {
    size_t from = ReadFile(log_).size();  // this start's "listening on" line is after it
    std::vector<std::string> argv = argv_;
    argv.insert(argv.end(), {"--listen", listen});
    pid_ = Spawn(argv, log_);
    size_t at = WaitForLog(log_, "listening on ", from, &pid_);
    if (at == std::string::npos) return false;
    std::string text = ReadFile(log_);
    uri_ = text.substr(at + 13, text.find('\n', at) - at - 13);
    return true;
  }
  pid_t pid_ = -1;
  std::string uri_;
  std::string log_;
  std::vector<std::string> argv_;  // everything but --listen
};

inline bool Mount(const std::string& uri, const std::string& mnt, const std::string& log,
                  const std::string& opts = "") {
  std::vector<std::string> argv = {std::string(POHMELFS_BIN_DIR) + "/pohmelfs-mount", uri, mnt};
  if (!opts.empty()) {
    argv.push_back("-o");
    argv.push_back(opts);
  }
  return RunCommand(argv, log, 60) == 0;
}

inline void Unmount(const std::string& mnt) {
  if (RunCommand({"/usr/bin/fusermount3", "-u", mnt}, "/dev/null", 30) != 0)
    umount2(mnt.c_str(), MNT_DETACH);
}

// Open descriptors of a process.
inline size_t CountFds(pid_t pid) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != fs::directory_iterator(); it.increment(ec))
    n++;
  return n;
}

// The pohmelfs-mount process serving mountpoint, or -1.
inline pid_t FindMountProcess(const std::string& mountpoint) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = ReadFile(e.path().string() + "/cmdline");
    if (cmd.find("pohmelfs-mount") != std::string::npos &&
        cmd.find(mountpoint) != std::string::npos)
      return std::stoi(name);
  }
  return -1;
}

// A scratch directory under the build tree's tmp, removed at the end.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name) {
    path_ = fs::temp_directory_path() / ("pohmelfs-test-" + name + "-" + std::to_string(getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A server of its own on a fresh export, for a test that mounts, kills or restarts it itself.
struct StandaloneServer {
  explicit StandaloneServer(const std::string& name) : scratch(name) {
    fs::create_directories(scratch.path() / "export");
    fs::create_directories(scratch.path() / "mnt");
    started = server.Start(export_dir(), (scratch.path() / "server.log").string());
  }
  std::string export_dir() const { return (scratch.path() / "export").string(); }
  std::string mnt() const { return (scratch.path() / "mnt").string(); }
  std::string log(const std::string& name) const { return (scratch.path() / name).string(); }

  ScratchDir scratch;
  ServerProcess server;
  bool started = false;
};

// One server plus one mount for a whole test suite.
class MountedTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir(::testing::UnitTest::GetInstance()->current_test_suite()->name());
    fs::create_directories(scratch_->path() / "export");
    fs::create_directories(scratch_->path() / "mnt");
    server_ = new ServerProcess();
    ASSERT_TRUE(server_->Start(export_dir(), (scratch_->path() / "server.log").string()))
        << server_->Log();
    ASSERT_TRUE(Mount(server_->uri(), mount_dir(), (scratch_->path() / "mount.log").string(),
                      MountOptions()))
        << ReadFile((scratch_->path() / "mount.log").string());
  }
  static void TearDownTestSuite() {
    Unmount(mount_dir());
    if (server_) {
      EXPECT_TRUE(server_->Stop()) << "server did not exit cleanly on SIGTERM";
    }
    delete server_;
    server_ = nullptr;
    delete scratch_;
    scratch_ = nullptr;
  }
  static std::string MountOptions() { return "trans_scan_timeout=3000,trans_retries=1"; }
  static std::string export_dir() { return (scratch_->path() / "export").string(); }
  static std::string mount_dir() { return (scratch_->path() / "mnt").string(); }
  static std::string M(const std::string& rel) { return mount_dir() + "/" + rel; }
  // A path in the export, as the server holds it: the mount's delayed changes are sent first
  // (fsync of a directory sends everything the mount has queued).
  static std::string E(const std::string& rel) {
    int fd = open(mount_dir().c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
      (void)fsync(fd);
      close(fd);
    }
    return export_dir() + "/" + rel;
  }

  static inline ScratchDir* scratch_ = nullptr;
  static inline ServerProcess* server_ = nullptr;
};

}  // namespace pohmelfs::testing
