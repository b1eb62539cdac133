// pohmelfs-server --export DIR --listen URI [--listen URI ...] (--allow CIDR=rw|ro ... |
//                 --allow-any) [--key FILE]
// Runs in the foreground, logs to stderr, exits cleanly on SIGTERM or SIGINT.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "rdma-server/server.h"

int main(int argc, char** argv) try {
  pohmelfs::server::ServerOptions o;
  std::string level = "info";
  int session_timeout = 120;
  CLI::App app{"POHMELFS server: exports a directory over the network"};
  app.add_option("--export", o.export_dir, "directory to export")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--listen", o.listen,
                 "address to listen on, e.g. tcp://0.0.0.0:7000 or tcp://[::]:7000 (repeatable)")
      ->required();
  app.add_option("--workers", o.workers, "threads doing file IO")->check(CLI::Range(1, 1024));
  app.add_option("--loop-threads", o.loop_threads, "network event-loop threads")
      ->check(CLI::Range(1, 64));
  int spin_us = static_cast<int>(o.spin.count());
  app.add_option("--spin-us", spin_us,
                 "microseconds a network thread keeps polling after its last event before it "
                 "sleeps (adaptive below that; 0: never poll)")
      ->check(CLI::Range(0, 100000));
  app.add_option("--credits", o.credits, "requests one client may have in flight")
      ->check(CLI::Range(1, 65536));
  app.add_option("--session-timeout", session_timeout, "seconds an idle session is kept for resume")
      ->check(CLI::Range(1, 86400));
  app.add_option("--log-level", level, "trace, debug, info, warn, error");
  app.add_option("--test-drop-replies", o.test_drop_replies,
                 "for tests only: execute the first N mutating requests but send no reply to "
                 "them, so that clients must resend (0: off)");
  int break_ms = 5000, grace_ms = 5000, lock_wait_ms = 1000;
  app.add_option("--lease-break-timeout-ms", break_ms,
                 "how long a client has to give a lease back before it is evicted")
      ->check(CLI::Range(10, 600000));
  app.add_option("--lease-grace-ms", grace_ms,
                 "grace period for lease reclaims after an authority change")
      ->check(CLI::Range(0, 600000));
  app.add_option("--lock-wait-ms", lock_wait_ms,
                 "longest one blocking lock request waits on the server before the client asks "
                 "again")
      ->check(CLI::Range(10, 60000));
  std::string key_file, crypto_modes;
  std::vector<std::string> allow;
  int handshake_ms = 10000;
  app.add_option("--key", key_file,
                 "cluster key file (pohmelfsctl keygen): clients must prove they hold it")
      ->check(CLI::ExistingFile);
  app.add_option("--client-keys", o.client_keys_dir,
                 "directory of per-client keys: NAME.key is the key of the client named NAME "
                 "(used instead of --key for that client)")
      ->check(CLI::ExistingDirectory);
  app.add_option("--crypto", crypto_modes,
                 "channel modes this server agrees to, comma-separated (default: all of none, "
                 "crc32c, hmac-sha256, aes-256-gcm, chacha20-poly1305; the keyed ones need "
                 "--key)");
  app.add_option("--crypto-threads", o.crypto_threads,
                 "threads that seal and open large payloads in parallel (0: on the network "
                 "thread)")
      ->check(CLI::Range(0, 256));
  app.add_option("--allow", allow,
                 "client network and permission, CIDR=rw or CIDR=ro, IPv4 or IPv6 (repeatable; "
                 "the most specific rule wins)");
  app.add_flag("--allow-any", o.allow_any,
               "serve every peer read-write (without it the server refuses to start with no "
               "--allow)");
  app.add_flag("--root-squash", o.root_squash,
               "objects created or chowned as uid or gid 0 get 65534 (nobody) instead");
  app.add_option("--handshake-timeout-ms", handshake_ms,
                 "close a connection that has not finished its handshake after this long")
      ->check(CLI::Range(100, 600000));
  app.add_option("--max-open-files", o.max_open_handles,
                 "files one client session may have open at once (EMFILE past it)")
      ->check(CLI::Range(1, 1 << 24));
  CLI11_PARSE(app, argc, argv);
  o.handshake_timeout = std::chrono::milliseconds(handshake_ms);
  if (!key_file.empty()) {
    auto key = pohmelfs::crypto::LoadKeyFile(key_file);
    if (!key.ok()) {
      std::fprintf(stderr, "%s: %s\n", argv[0], key.status().ToString().c_str());
      return 1;
    }
    o.key = std::move(*key);
  }
  if (!crypto_modes.empty()) {
    o.crypto_modes = 0;
    std::string_view rest = crypto_modes;
    while (!rest.empty()) {
      auto comma = rest.find(',');
      auto mode = pohmelfs::crypto::ParseCryptoMode(rest.substr(0, comma));
      if (!mode.ok()) {
        std::fprintf(stderr, "%s: --crypto: %s\n", argv[0], mode.status().ToString().c_str());
        return 1;
      }
      o.crypto_modes |= *mode;
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
  }
  std::vector<pohmelfs::server::AllowRule> rules;
  for (const auto& text : allow) {
    auto rule = pohmelfs::server::AllowRule::Parse(text);
    if (!rule.ok()) {
      std::fprintf(stderr, "%s: %s\n", argv[0], rule.status().ToString().c_str());
      return 1;
    }
    rules.push_back(std::move(*rule));
  }
  o.allow = pohmelfs::server::AllowList(std::move(rules));
  o.session_timeout = std::chrono::seconds(session_timeout);
  o.spin = std::chrono::microseconds(spin_us);
  o.lease_break_timeout = std::chrono::milliseconds(break_ms);
  o.lease_grace = std::chrono::milliseconds(grace_ms);
  o.lock_wait = std::chrono::milliseconds(lock_wait_ms);

  auto logger = spdlog::stderr_color_mt("pohmelfs-server");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // inherited by every thread started below
  signal(SIGPIPE, SIG_IGN);

  auto server = pohmelfs::server::Server::Start(o);
  if (!server.ok()) {
    spdlog::error("cannot start: {}", server.status().ToString());
    return 1;
  }
  spdlog::info("exporting {} as server {}", o.export_dir, (*server)->server_id().Hex());
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: shutting down", sig);
  (*server)->Stop();
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
  return 1;
}
