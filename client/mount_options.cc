#include "client/mount_options.h"

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "crypto/keys.h"

namespace pohmelfs::client {
namespace {

struct RawOptions {
  unsigned trans_scan_timeout;
  unsigned trans_retries;
  unsigned connect_timeout;
  double attr_timeout;
  double entry_timeout;
  unsigned max_write;
  unsigned max_read;
  unsigned threads;
  unsigned keepalive_interval;
  unsigned keepalive_timeout;
  unsigned leases;
  double lease_timeout;
  unsigned writeback;
  unsigned trans_max_pages;
  unsigned read_ahead_kb;
  char* cluster;
  char* log_level;
  char* log_file;
  char* key;
  char* crypto;
  char* name;
  int crypto_fail_unsupported;
  unsigned crypto_thread_num;
  int show_help;
  int nonopt_seen;
  char* source;
};

#define POHMELFS_OPT(t, p) \
  { t, offsetof(RawOptions, p), 1 }
const fuse_opt kSpec[] = {
    POHMELFS_OPT("trans_scan_timeout=%u", trans_scan_timeout),
    POHMELFS_OPT("trans_retries=%u", trans_retries),
    POHMELFS_OPT("connect_timeout=%u", connect_timeout),
    POHMELFS_OPT("attr_timeout=%lf", attr_timeout),
    POHMELFS_OPT("entry_timeout=%lf", entry_timeout), POHMELFS_OPT("max_write=%u", max_write),
    POHMELFS_OPT("max_read=%u", max_read),
    // libfuse must see max_read too: it checks it against what Init answers.
    FUSE_OPT_KEY("max_read=", FUSE_OPT_KEY_KEEP), POHMELFS_OPT("threads=%u", threads),
    POHMELFS_OPT("log_level=%s", log_level), POHMELFS_OPT("log_file=%s", log_file),
    POHMELFS_OPT("keepalive_interval=%u", keepalive_interval),
    POHMELFS_OPT("keepalive_timeout=%u", keepalive_timeout), POHMELFS_OPT("cluster=%s", cluster),
    POHMELFS_OPT("leases=%u", leases), POHMELFS_OPT("lease_timeout=%lf", lease_timeout),
    POHMELFS_OPT("writeback=%u", writeback), POHMELFS_OPT("trans_max_pages=%u", trans_max_pages),
    POHMELFS_OPT("read_ahead_kb=%u", read_ahead_kb), POHMELFS_OPT("key=%s", key),
    POHMELFS_OPT("crypto=%s", crypto), POHMELFS_OPT("name=%s", name),
    POHMELFS_OPT("crypto_fail_unsupported", crypto_fail_unsupported),
    POHMELFS_OPT("crypto_thread_num=%u", crypto_thread_num), POHMELFS_OPT("-h", show_help),
    POHMELFS_OPT("--help", show_help),
    // Options mount(8) and fstab pass that mean nothing to a FUSE filesystem.
    FUSE_OPT_KEY("defaults", FUSE_OPT_KEY_DISCARD), FUSE_OPT_KEY("auto", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("noauto", FUSE_OPT_KEY_DISCARD), FUSE_OPT_KEY("user", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("users", FUSE_OPT_KEY_DISCARD), FUSE_OPT_KEY("_netdev", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("nofail", FUSE_OPT_KEY_DISCARD), FUSE_OPT_END};

int OptProc(void* data, const char* arg, int key, fuse_args*) {
  auto* raw = static_cast<RawOptions*>(data);
  if (key == FUSE_OPT_KEY_NONOPT && !raw->nonopt_seen) {
    raw->nonopt_seen = 1;
    raw->source = strdup(arg);
    return 0;  // the server list is ours; the next non-option (mountpoint) goes to libfuse
  }
  if (key == FUSE_OPT_KEY_OPT && std::strncmp(arg, "x-", 2) == 0) return 0;  // fstab comments
  return 1;
}

}  // namespace

void PrintMountUsage(const char* prog) {
  std::printf(
      "usage: %s SERVER[,SERVER...] MOUNTPOINT [-f] [-d] [-o option[,option...]]\n"
      "  SERVER: URI[?prio=N][&perm=r|w|rw], URI is tcp://host:port or tcp://[ipv6]:port;\n"
      "          higher prio serves reads first (0), perm says whether it serves reads and\n"
      "          receives writes (rw)\n"
      "options:\n"
      "  cluster=FILE           read the servers from FILE, one SERVER per line (the SERVER\n"
      "                         argument is then only a name for the mount table)\n"
      "  keepalive_interval=MS  ping a server idle this long (1000)\n"
      "  keepalive_timeout=MS   a server silent this long after a ping is down (1000)\n"
      "  trans_scan_timeout=MS  wait this long for a reply before resending (5000)\n"
      "  trans_retries=N        resends before a call fails with ETIMEDOUT/EIO (3)\n"
      "  connect_timeout=MS     bound on one connection attempt (5000)\n"
      "  attr_timeout=S         seconds the kernel caches attributes (1.0)\n"
      "  entry_timeout=S        seconds the kernel caches names (1.0)\n"
      "  max_write=BYTES        largest write request, at most 1048576 (1048576)\n"
      "  max_read=BYTES         largest read request the kernel sends, at least 4096 (no\n"
      "                         limit: readahead and reads of up to 1 MiB are one request)\n"
      "  leases=0|1             coherent caching under leases from the servers (1)\n"
      "  lease_timeout=S        seconds the kernel caches names and attributes while a lease\n"
      "                         is held (60); without one, attr_timeout and entry_timeout\n"
      "  writeback=0|1          delay writes under a write lease and send them in batches (1)\n"
      "  trans_max_pages=N      4 KiB pages of delayed writes per file before they are sent\n"
      "                         (2048)\n"
      "  read_ahead_kb=N        kernel readahead of the mount, KiB (1024; 0: the kernel's)\n"
      "  threads=N              FUSE worker threads kept idle at most (16)\n"
      "  key=FILE               cluster key (pohmelfsctl keygen): prove it to the servers and\n"
      "                         make them prove it back\n"
      "  crypto=MODE            channel protection: none, crc32c, hmac-sha256, aes-256-gcm,\n"
      "                         chacha20-poly1305 (none); the last three need key=FILE\n"
      "  crypto_fail_unsupported  fail the mount when a server cannot do crypto=MODE (else it\n"
      "                         falls back to none with a warning)\n"
      "  crypto_thread_num=N    threads sealing and opening large payloads in parallel (0)\n"
      "  name=NAME              this client's name in the servers' logs, and the name of its\n"
      "                         own key on servers with --client-keys (the host name)\n"
      "  log_level=LEVEL        trace, debug, info, warn, error (warn)\n"
      "  log_file=FILE          log to FILE (appended, each line written at once) instead of\n"
      "                         syslog (in the background) or stderr (with -f)\n"
      "  and the usual FUSE mount options (ro, allow_other, ...)\n",
      prog);
}

bool ParseMountOptions(int argc, char** argv, MountOptions* out, fuse_args* args) {
  RawOptions raw{};
  raw.trans_scan_timeout = out->trans_scan_timeout_ms;
  raw.trans_retries = out->trans_retries;
  raw.connect_timeout = out->connect_timeout_ms;
  raw.attr_timeout = out->attr_timeout;
  raw.entry_timeout = out->entry_timeout;
  raw.max_write = out->max_write;
  raw.max_read = out->max_read;
  raw.threads = out->threads;
  raw.keepalive_interval = out->keepalive_interval_ms;
  raw.keepalive_timeout = out->keepalive_timeout_ms;
  raw.leases = out->leases;
  raw.lease_timeout = out->lease_timeout;
  raw.writeback = out->writeback;
  raw.trans_max_pages = out->trans_max_pages;
  raw.read_ahead_kb = out->read_ahead_kb;
  *args = FUSE_ARGS_INIT(argc, argv);
  if (fuse_opt_parse(args, &raw, kSpec, OptProc) != 0) return false;
  if (raw.show_help) {
    out->show_help = true;
    return true;
  }
  if (!raw.source) {
    PrintMountUsage(argv[0]);
    return false;
  }
  out->source = raw.source;
  std::free(raw.source);
  auto servers = raw.cluster ? LoadClusterFile(raw.cluster) : ParseServerList(out->source);
  std::free(raw.cluster);
  if (!servers.ok()) {
    std::fprintf(stderr, "pohmelfs-mount: %s\n", servers.status().reason().c_str());
    return false;
  }
  out->servers = std::move(*servers);
  if (raw.log_level) {
    out->log_level = raw.log_level;
    std::free(raw.log_level);
  }
  if (raw.log_file) {
    // Absolute: the daemon changes its directory to / once in the background.
    std::error_code ec;
    auto path = std::filesystem::absolute(raw.log_file, ec);
    std::free(raw.log_file);
    if (ec || path.empty()) {
      std::fprintf(stderr, "pohmelfs-mount: log_file: %s\n", ec.message().c_str());
      return false;
    }
    out->log_file = path.string();
  }
  if (raw.trans_scan_timeout == 0 || raw.connect_timeout == 0 || raw.keepalive_interval < 10 ||
      raw.keepalive_timeout < 10 || raw.max_write < 4096 || raw.max_write > (1u << 20) ||
      (raw.max_read != 0 && raw.max_read < 4096) || raw.threads == 0 || raw.attr_timeout < 0 ||
      raw.entry_timeout < 0 || raw.leases > 1 || raw.writeback > 1 || raw.lease_timeout < 0 ||
      raw.trans_max_pages == 0 || raw.trans_max_pages > (1u << 20) ||
      raw.read_ahead_kb > (1u << 20)) {
    std::fprintf(stderr, "pohmelfs-mount: an option is out of range (see --help)\n");
    return false;
  }
  out->trans_scan_timeout_ms = raw.trans_scan_timeout;
  out->trans_retries = raw.trans_retries;
  out->connect_timeout_ms = raw.connect_timeout;
  out->attr_timeout = raw.attr_timeout;
  out->entry_timeout = raw.entry_timeout;
  out->max_write = raw.max_write;
  out->max_read = raw.max_read;
  out->threads = raw.threads;
  out->keepalive_interval_ms = raw.keepalive_interval;
  out->keepalive_timeout_ms = raw.keepalive_timeout;
  out->leases = raw.leases != 0;
  out->lease_timeout = raw.lease_timeout;
  out->writeback = raw.writeback != 0;
  out->trans_max_pages = raw.trans_max_pages;
  out->read_ahead_kb = raw.read_ahead_kb;
  out->crypto_fail_unsupported = raw.crypto_fail_unsupported != 0;
  out->crypto_thread_num = raw.crypto_thread_num;
  auto take = [](char* p, std::string* to) {
    if (!p) return;
    *to = p;
    std::free(p);
  };
  take(raw.key, &out->key_file);
  take(raw.name, &out->name);
  std::string crypto = "none";
  take(raw.crypto, &crypto);
  auto mode = crypto::ParseCryptoMode(crypto);
  if (!mode.ok()) {
    std::fprintf(stderr, "pohmelfs-mount: crypto=%s: %s\n", crypto.c_str(),
                 mode.status().reason().c_str());
    return false;
  }
  out->crypto_mode = *mode;
  if (crypto::ModeNeedsKey(*mode) && out->key_file.empty()) {
    std::fprintf(stderr, "pohmelfs-mount: crypto=%s needs key=FILE\n", crypto.c_str());
    return false;
  }
  if (out->crypto_thread_num > 256 || out->name.find_first_of(":/,") != std::string::npos) {
    std::fprintf(stderr, "pohmelfs-mount: an option is out of range (see --help)\n");
    return false;
  }
  return true;
}

}  // namespace pohmelfs::client
