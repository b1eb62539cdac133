// Cluster fixture: every server in its own network namespace, joined to the test's (root)
// namespace by a veth pair, so a server can be killed, restarted or cut off (link down, netem
// loss) while the FUSE client in the root namespace keeps running. Requires root, ip(8), tc(8).
#pragma once

#include <fcntl.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/integration/fixture.h"

namespace pohmelfs::testing {

inline int Sh(const std::string& cmd) {
  return RunCommand({"/bin/sh", "-c", cmd}, "/dev/null", 30);
}

// kill -9 of *pid (when set) and its exit collected; *pid becomes -1.
inline void KillAndReap(pid_t* pid) {
  if (*pid <= 0) return;
  kill(*pid, SIGKILL);
  int st;
  waitpid(*pid, &st, 0);
  *pid = -1;
}

// A network namespace joined to the root one by a veth pair: root side `veth` with root_addr,
// namespace side `peer` with addr (both /24). Whatever had these names before is removed.
inline bool MakeVethNamespace(const std::string& ns, const std::string& veth,
                              const std::string& peer, const std::string& root_addr,
                              const std::string& addr) {
  return Sh("ip netns del " + ns + " 2>/dev/null; ip link del " + veth + " 2>/dev/null; " +
            "ip netns add " + ns + " && ip link add " + veth + " type veth peer name " + peer +
            " && ip link set " + peer + " netns " + ns + " && ip addr add " + root_addr +
            "/24 dev " + veth + " && ip link set " + veth + " up && ip -n " + ns + " addr add " +
            addr + "/24 dev " + peer + " && ip -n " + ns + " link set " + peer + " up && ip -n " +
            ns + " link set lo up") == 0;
}
inline void RemoveVethNamespace(const std::string& ns, const std::string& veth) {
  Sh("ip link del " + veth + " 2>/dev/null; ip netns del " + ns + " 2>/dev/null");
}

// One namespace with one server; its address is 10.N.I.2, the root side is 10.N.I.1.
class NsServer {
 public:
  NsServer(const fs::path& dir, int index) {
    const std::string tag = std::to_string(getpid() % 10000) + "x" + std::to_string(index);
    ns_ = "pohm" + tag;
    veth_ = "pv" + tag;  // root side; the namespace side is "pn" + tag
    const int net = 100 + getpid() % 100;
    root_addr_ = "10." + std::to_string(net) + "." + std::to_string(index) + ".1";
    addr_ = "10." + std::to_string(net) + "." + std::to_string(index) + ".2";
    export_ = (dir / ("export" + std::to_string(index))).string();
    log_ = (dir / ("server" + std::to_string(index) + ".log")).string();
    fs::create_directories(export_);
    ok_ = MakeVethNamespace(ns_, veth_, "pn" + tag, root_addr_, addr_);
  }
  ~NsServer() {
    Kill();
    RemoveVethNamespace(ns_, veth_);
  }
  bool ok() const { return ok_; }

  // Starts (or restarts) the server; waits, bounded, until it listens.
  bool Start(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {"/usr/sbin/ip",
                                     "netns",
                                     "exec",
                                     ns_,
                                     std::string(POHMELFS_BIN_DIR) + "/pohmelfs-server",
                                     "--export",
                                     export_,
                                     "--listen",
                                     uri(),
                                     "--log-level",
                                     "info"};
    bool has_allow = false;
    for (const auto& e : extra) has_allow |= e.rfind("--allow", 0) == 0;
    if (!has_allow) extra.push_back("--allow-any");  // the namespaces' own private network
    argv.insert(argv.end(), extra.begin(), extra.end());
    const size_t before = ReadFile(log_).size();
    pid_ = Spawn(argv, log_);
    return WaitForLog(log_, "listening on ", before, &pid_) != std::string::npos;
  }
  void Kill() { KillAndReap(&pid_); }
  bool LinkDown() { return Sh("ip link set " + veth_ + " down") == 0; }
  bool LinkUp() { return Sh("ip link set " + veth_ + " up") == 0; }

  std::string uri() const { return "tcp://" + addr_ + ":7000"; }
  const std::string& export_dir() const { return export_; }
  std::string Log() const { return ReadFile(log_); }

 private:
  std::string ns_, veth_, addr_, root_addr_, export_, log_;
  pid_t pid_ = -1;
  bool ok_ = false;
};

// Runs pohmelfsctl with args; returns its exit status and its output.
inline int Ctl(const std::vector<std::string>& args, std::string* out, int timeout_s = 60) {
  char path[] = "/tmp/pohmelfsctl-out-XXXXXX";
  int fd = mkstemp(path);
  if (fd >= 0) close(fd);
  std::vector<std::string> argv = {std::string(POHMELFS_BIN_DIR) + "/pohmelfsctl"};
  argv.insert(argv.end(), args.begin(), args.end());
  int rc = RunCommand(argv, path, timeout_s);
  if (out) *out = ReadFile(path);
  unlink(path);
  return rc;
}

// The digest of an export tree (pohmelfsctl treesum), or the error text.
inline std::string TreeSum(const std::string& dir, bool list = false) {
  std::string out;
  std::vector<std::string> args = {"treesum", dir};
  if (list) args.push_back("--list");
  Ctl(args, &out);
  return out.substr(0, out.rfind("  "));
}

}  // namespace pohmelfs::testing
