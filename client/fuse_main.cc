// pohmelfs-mount URI MOUNTPOINT [-f] [-o options]: mounts a POHMELFS export with FUSE.
// Without -f it forks; the parent returns only once the child has connected to the server and
// the mount is in place (exit 0), or with the reason it failed (exit 1).
#include <fcntl.h>
#include <poll.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "client/fuse_ops.h"

using namespace pohmelfs;
using namespace pohmelfs::client;

namespace {

// Child -> parent readiness report: "ok\n" or an error message.
void Report(int fd, const std::string& msg) {
  if (fd < 0) return;
  ssize_t n = write(fd, msg.data(), msg.size());
  (void)n;
  close(fd);
}

// The device number ("MAJOR:MINOR") of the mount on mountpoint, from /proc/self/mountinfo:
// a stat() would ask this very daemon, which is not serving requests yet.
std::string MountDevice(const char* mountpoint) {
  char real[PATH_MAX];
  if (!realpath(mountpoint, real)) return "";
  std::ifstream in("/proc/self/mountinfo");
  std::string line, device;
  // Fields: id, parent id, MAJOR:MINOR, root, mount point, ...; the last match is the newest.
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    if (f >> id >> parent >> dev >> root >> point && point == real) device = dev;
  }
  return device;
}

// Sets the kernel readahead of the mount on mountpoint (its backing device info). Failing is
// not fatal: the kernel default stays, and it is logged.
void SetReadAhead(const char* mountpoint, unsigned kb) {
  const std::string dev = MountDevice(mountpoint);
  if (dev.empty()) {
    spdlog::warn("cannot set readahead: {} not found in /proc/self/mountinfo", mountpoint);
    return;
  }
  const std::string path = "/sys/class/bdi/" + dev + "/read_ahead_kb";
  const std::string value = std::to_string(kb);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  const bool ok =
      fd >= 0 && write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size());
  if (!ok) spdlog::warn("cannot set readahead ({}): {}", path, std::strerror(errno));
  if (fd >= 0) close(fd);
}

int WaitForChild(int fd, pid_t child, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  std::string msg;
  char buf[512];
  while (poll(&p, 1, timeout_ms) > 0) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    msg.append(buf, static_cast<size_t>(n));
  }
  if (msg == "ok\n") return 0;
  if (msg.empty()) {
    msg = "the mount process did not report readiness in time";
    kill(child, SIGTERM);
  }
  std::fprintf(stderr, "pohmelfs-mount: %s\n", msg.c_str());
  return 1;
}

// The log goes to log_file when one is given, else to syslog in the background (stderr is
// /dev/null there) or to stderr in the foreground.
Status SetLogger(const std::string& log_file, bool background) {
  if (log_file.empty()) {
    spdlog::set_default_logger(
        background ? spdlog::syslog_logger_mt("pohmelfs-mount", "pohmelfs-mount", LOG_PID)
                   : spdlog::stderr_color_mt("pohmelfs-mount"));
    return Status::Ok();
  }
  try {
    auto logger = spdlog::basic_logger_mt("pohmelfs-mount", log_file);
    logger->flush_on(spdlog::level::trace);  // a line is on disk before anything goes wrong
    spdlog::set_default_logger(std::move(logger));
  } catch (const spdlog::spdlog_ex& e) {
    return Status::Error(EIO, std::string("log_file: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  MountOptions o;
  fuse_args args = FUSE_ARGS_INIT(0, nullptr);
  fuse_cmdline_opts co{};
  // libfuse allocates both; free them on every way out of main.
  struct Cleanup {
    fuse_args* args;
    fuse_cmdline_opts* co;
    ~Cleanup() {
      free(co->mountpoint);
      fuse_opt_free_args(args);
    }
  } cleanup{&args, &co};
  if (!ParseMountOptions(argc, argv, &o, &args)) return 2;
  if (o.show_help) {
    PrintMountUsage(argv[0]);
    return 0;
  }
  if (fuse_parse_cmdline(&args, &co) != 0) return 2;
  if (co.show_help || !co.mountpoint) {
    PrintMountUsage(argv[0]);
    return co.show_help ? 0 : 2;
  }
  std::string fsname;  // commas separate FUSE options: escape the ones between servers
  for (char c : o.source) {
    if (c == ',' || c == '\\') fsname += '\\';
    fsname += c;
  }
  std::string fsopts = "-oallow_other,default_permissions,subtype=pohmelfs,fsname=" + fsname;
  fuse_opt_add_arg(&args, fsopts.c_str());

  int report_fd = -1;
  if (!co.foreground) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return 1;
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid > 0) {
      close(p[1]);
      int budget = static_cast<int>(o.connect_timeout_ms) * 2 + 10000;
      return WaitForChild(p[0], pid, budget);
    }
    close(p[0]);
    report_fd = p[1];
    setsid();
  }
  if (Status s = SetLogger(o.log_file, !co.foreground); !s.ok()) {
    std::string msg = "cannot mount " + o.source + ": " + s.reason();
    if (report_fd < 0) std::fprintf(stderr, "pohmelfs-mount: %s\n", msg.c_str());
    Report(report_fd, msg);  // in the background, the parent prints it
    return 1;
  }
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  signal(SIGPIPE, SIG_IGN);

  RpcOptions ro;
  ro.connect_timeout = std::chrono::milliseconds(o.connect_timeout_ms);
  ro.trans_scan_timeout = std::chrono::milliseconds(o.trans_scan_timeout_ms);
  ro.trans_retries = static_cast<int>(o.trans_retries);
  char host[256] = "client";
  gethostname(host, sizeof(host) - 1);
  // NAME:pid; servers with --client-keys look up NAME.key.
  ro.client_name = (o.name.empty() ? std::string(host) : o.name) + ":" + std::to_string(getpid());
  if (!o.key_file.empty()) {
    auto key = crypto::LoadKeyFile(o.key_file);
    if (!key.ok()) {
      std::string msg = "cannot mount " + o.source + ": " + key.status().reason();
      spdlog::error("{}", msg);
      Report(report_fd, msg);
      return 1;
    }
    ro.key = std::make_shared<const crypto::Key>(std::move(*key));
  }
  ro.crypto_mode = o.crypto_mode;
  ro.crypto_fail_unsupported = o.crypto_fail_unsupported;
  crypto::CryptoPool crypto_pool(static_cast<int>(o.crypto_thread_num));
  ro.crypto_pool = &crypto_pool;
  ServerSetOptions so;
  so.rpc = ro;
  so.keepalive_interval = std::chrono::milliseconds(o.keepalive_interval_ms);
  so.keepalive_timeout = std::chrono::milliseconds(o.keepalive_timeout_ms);
  auto set = ServerSet::Start(o.servers, so);
  if (!set.ok()) {
    std::string msg = "cannot mount " + o.source + ": " + set.status().reason();
    spdlog::error("{}", msg);
    Report(report_fd, msg);
    return 1;
  }
  // With write-back, every request goes through the metadata queue (after what it holds).
  std::shared_ptr<MetaQueue> meta;
  std::shared_ptr<Caller> caller = *set;
  if (o.leases && o.writeback) {
    meta = std::make_shared<MetaQueue>(*set, MetaQueue::Options{});
    caller = meta;
  }
  FsClient fs(caller);
  LocalNamespace local;
  InodeTable inodes(fs.root());
  FuseContext ctx;
  ctx.fs = &fs;
  ctx.servers = set->get();
  ctx.inodes = &inodes;
  ctx.opts = o;
  std::unique_ptr<WriteCache> cache;
  std::unique_ptr<LeaseManager> leases;
  if (o.leases) {
    if (o.writeback) {
      WriteCache::Options wo;
      wo.file_threshold = size_t{o.trans_max_pages} * 4096;
      cache = std::make_unique<WriteCache>(caller, wo);
      ctx.cache = cache.get();
      ctx.meta = meta.get();
      ctx.local = &local;
    }
    leases = std::make_unique<LeaseManager>(*set, FuseLeaseHooks(&ctx), LeaseManager::Options{});
    ctx.leases = leases.get();
  }

  if ((*set)->AnyWriterReadOnly()) {
    spdlog::warn("{}: a server lets this client only read (its allow list): mounting read-only",
                 o.source);
    fuse_opt_add_arg(&args, "-oro");
  }
  fuse_session* se = fuse_session_new(&args, PohmelfsFuseOps(), sizeof(fuse_lowlevel_ops), &ctx);
  ctx.se = se;
  if (!se) {
    Report(report_fd, "bad FUSE options (see --help)");
    return 1;
  }
  if (fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, co.mountpoint) != 0) {
    Report(report_fd, std::string("cannot mount on ") + co.mountpoint);
    fuse_session_destroy(se);
    return 1;
  }
  spdlog::info("mounted {} on {}", o.source, co.mountpoint);
  if (o.read_ahead_kb > 0) SetReadAhead(co.mountpoint, o.read_ahead_kb);
  if (report_fd >= 0) {
    Report(report_fd, "ok\n");
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      if (null > 2) close(null);
    }
    if (chdir("/") != 0) spdlog::warn("chdir /: {}", std::strerror(errno));
  }
  fuse_loop_config cfg{};
  cfg.clone_fd = co.clone_fd;
  cfg.max_idle_threads = o.threads;
  int rc = co.singlethread ? fuse_session_loop(se) : fuse_session_loop_mt(se, &cfg);
  fuse_session_unmount(se);
  ctx.se = nullptr;  // no more kernel notifications
  if (cache) {
    Status f = cache->FlushAll();
    if (!f.ok()) spdlog::error("delayed writes lost at unmount: {}", f.ToString());
  }
  if (meta) {
    Status f = meta->Drain();
    if (!f.ok()) spdlog::error("delayed namespace changes failed at unmount: {}", f.ToString());
  }
  if (leases) {
    leases->ReleaseAll();
    leases->Stop();
  }
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  if (meta) meta->Stop();
  (*set)->Stop();
  spdlog::info("unmounted");
  return rc == 0 ? 0 : 1;
}
