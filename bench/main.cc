// pohmelfs-bench: command line of the benchmark tool (subcommands fs, fabric, pingpong, plot).
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>
#include <string_view>

#include "bench/bench.h"
#include "transport/transport.h"

namespace pohmelfs::bench {
namespace {

bool ShellSafe(std::string_view arg) {
  return !arg.empty() && std::all_of(arg.begin(), arg.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string_view("_./:=@%+,-[]").find(c) != std::string_view::npos;
  });
}

// The command line as a shell would read it back (single quotes where needed).
std::string CommandLine(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; i++) {
    std::string_view arg = argv[i];
    if (i > 0) out += ' ';
    if (ShellSafe(arg)) {
      out += arg;
      continue;
    }
    out += '\'';
    for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    out += '\'';
  }
  return out;
}

void AddFsCommand(CLI::App& app, FsOptions& o) {
  auto* fs = app.add_subcommand("fs", "file system benchmark in DIR (may be a FUSE mount)");
  fs->add_option("dir", o.dir, "directory to run in")->required()->check(CLI::ExistingDirectory);
  fs->add_flag("--json", o.json, "one JSON object per test and line");
  fs->add_option("--size-mib", o.size_mib, "file size of the sequential tests")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 20));
  fs->add_option("--files", o.files, "files of the create/stat/unlink tests")
      ->check(CLI::Range(uint64_t{1}, uint64_t{10'000'000}));
  fs->add_option("--rand-reads", o.rand_reads, "4 KiB random reads")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1'000'000'000}));
  fs->add_option("--untar", o.untar, "tarball to extract (default: a synthetic one)")
      ->check(CLI::ExistingFile);
  fs->add_flag("--check", o.check, "verify the data read back (CRC32C)");
}

constexpr const char* kFabricUsage = R"(
Tests, in order: 64-byte round-trip latency (p50, p99), message rate (64 B, 64 in flight),
message bandwidth against size (8 in flight, empty acks) and, when the backend has one-sided
RMA (ofi+PROVIDER; not tcp), RMA write then RMA read bandwidth against size (8 in flight,
every size's data checked with CRC32C). Sizes go from --min-size to --max-size in powers of 2.

Examples:
  pohmelfs-bench fabric --loopback tcp://127.0.0.1:0
  pohmelfs-bench fabric --loopback ofi+tcp://127.0.0.1:0 --spin-us 0 --csv f.csv --png f.png
  pohmelfs-bench fabric --listen ofi+tcp://0.0.0.0:7000       # on one host, and on another:
  pohmelfs-bench fabric --connect ofi+tcp://HOST:7000 --json
bench/compare-fabric.sh runs every backend against its baselines (docs/benchmarks.md).)";

void AddFabricCommand(CLI::App& app, FabricOptions& o) {
  auto* fab = app.add_subcommand("fabric", "transport benchmark against an echo server");
  fab->footer(kFabricUsage);
  auto* listen = fab->add_option("--listen", o.listen, "run an echo server on URI");
  auto* connect = fab->add_option("--connect", o.connect, "measure against the server at URI");
  auto* loop = fab->add_option("--loopback", o.loopback, "server on URI and client, in-process");
  listen->excludes(connect)->excludes(loop);
  connect->excludes(loop);
  fab->add_flag("--json", o.json, "one JSON object per result and line");
  auto* csv = fab->add_option("--csv", o.csv, "write every result as a row of FILE");
  fab->add_option("--png", o.png, "plot the CSV rows into FILE with gnuplot (needs --csv)")
      ->needs(csv);
  fab->add_option("--label", o.label, "name of the rows in CSV, JSON and plot (default: scheme)");
  fab->add_option("--iters", o.iters, "upper bound of iterations per test (0: time only)");
  fab->add_option("--min-size", o.min_size, "smallest message or RMA of the sweeps, bytes")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{4} << 20));
  fab->add_option("--max-size", o.max_size, "largest message or RMA of the sweeps (<= 4 MiB)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{4} << 20));
  fab->add_option("--duration-ms", o.duration_ms, "time per test and per size")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{3'600'000}));
  // The transport's own default, so that the bench measures what a mount or server gets.
  o.spin_us = static_cast<uint64_t>(transport::TransportOptions{}.spin.count());
  fab->add_option("--spin-us", o.spin_us,
                  "TransportOptions::spin: how long network threads poll after the last event "
                  "before they sleep (0: sleep at once; both ends in --loopback)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{1'000'000}));
  fab->add_option("--server-spin-us", o.server_spin_us,
                  "the echo server's spin (--listen, --loopback), when not --spin-us")
      ->check(CLI::Range(uint64_t{0}, uint64_t{1'000'000}));
  fab->add_flag("--no-rma", o.no_rma, "skip the RMA sweeps");
}

constexpr const char* kPingPongUsage = R"(
The baseline of fabric's latency: one blocking TCP socket (TCP_NODELAY), the client writes
--size bytes and reads them back, one message at a time; the server echoes them. Prints the
round-trip p50 and p99 like fabric's latency test.

Examples:
  pohmelfs-bench pingpong --loopback tcp://127.0.0.1:0 --csv pp.csv
  pohmelfs-bench pingpong --listen tcp://0.0.0.0:7001     # and elsewhere:
  pohmelfs-bench pingpong --connect tcp://HOST:7001)";

void AddPingPongCommand(CLI::App& app, PingPongOptions& o) {
  auto* pp = app.add_subcommand("pingpong", "minimal blocking-socket round trip (baseline)");
  pp->footer(kPingPongUsage);
  auto* listen = pp->add_option("--listen", o.listen, "echo on tcp://HOST:PORT");
  auto* connect = pp->add_option("--connect", o.connect, "measure against tcp://HOST:PORT");
  auto* loop = pp->add_option("--loopback", o.loopback, "both ends, in-process");
  listen->excludes(connect)->excludes(loop);
  connect->excludes(loop);
  pp->add_flag("--json", o.json, "one JSON object per result and line");
  pp->add_option("--csv", o.csv, "write the latency row to FILE");
  pp->add_option("--label", o.label, "name of the row")->capture_default_str();
  pp->add_option("--size", o.size, "message bytes")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 20));
  pp->add_option("--iters", o.iters, "upper bound of round trips (0: time only)");
  pp->add_option("--duration-ms", o.duration_ms, "time of the measurement")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{3'600'000}));
}

void AddPlotCommand(CLI::App& app, PlotOptions& o) {
  auto* plot = app.add_subcommand("plot", "PNG of fabric CSV rows (bandwidth and latency)");
  plot->footer(R"(
Reads the CSV of `fabric --csv` (or several, concatenated with one header, as
bench/compare-fabric.sh does) and runs gnuplot (Debian: gnuplot-nox) on it; the gnuplot script
is kept as PNG.gp.)");
  plot->add_option("csv", o.csv, "fabric CSV")->required()->check(CLI::ExistingFile);
  plot->add_option("png", o.png, "PNG to write")->required();
  plot->add_option("--title", o.title, "plot title")->capture_default_str();
}

int CheckFabricUsage(const FabricOptions& o) {
  int modes = !o.listen.empty() + !o.connect.empty() + !o.loopback.empty();
  if (modes != 1) {
    fmt::print(stderr, "fabric: give exactly one of --listen, --connect, --loopback\n");
    return kExitUsage;
  }
  if (o.min_size > o.max_size) {
    fmt::print(stderr, "fabric: --min-size is larger than --max-size\n");
    return kExitUsage;
  }
  return kExitOk;
}

int CheckPingPongUsage(const PingPongOptions& o) {
  int modes = !o.listen.empty() + !o.connect.empty() + !o.loopback.empty();
  if (modes != 1) {
    fmt::print(stderr, "pingpong: give exactly one of --listen, --connect, --loopback\n");
    return kExitUsage;
  }
  return kExitOk;
}

}  // namespace
}  // namespace pohmelfs::bench

int main(int argc, char** argv) try {
  using namespace pohmelfs::bench;
  // Logs (errors only) go to stderr: stdout carries the results, JSON lines with --json.
  spdlog::set_default_logger(spdlog::stderr_color_mt("pohmelfs-bench"));
  FsOptions fs;
  FabricOptions fabric;
  PingPongOptions pingpong;
  PlotOptions plot;
  CLI::App app{"pohmelfs-bench: file system and transport benchmarks"};
  app.require_subcommand(1);
  AddFsCommand(app, fs);
  AddFabricCommand(app, fabric);
  AddPingPongCommand(app, pingpong);
  AddPlotCommand(app, plot);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  std::string cmd = CommandLine(argc, argv);
  if (app.got_subcommand("fs")) {
    fs.cmd = cmd;
    return RunFs(fs);
  }
  if (app.got_subcommand("pingpong")) {
    pingpong.cmd = cmd;
    int usage = CheckPingPongUsage(pingpong);
    return usage != kExitOk ? usage : RunPingPong(pingpong);
  }
  if (app.got_subcommand("plot")) return RunPlot(plot);
  fabric.cmd = cmd;
  int usage = CheckFabricUsage(fabric);
  return usage != kExitOk ? usage : RunFabric(fabric);
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
  return 1;
}
