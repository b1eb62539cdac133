// pohmelfs-bench: command line of the benchmark tool (subcommands fs and fabric) and the output
// helpers shared by both benchmarks.
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>

#include "bench/bench.h"

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

void AddFabricCommand(CLI::App& app, FabricOptions& o) {
  auto* fab = app.add_subcommand("fabric", "transport benchmark against an echo server");
  auto* listen = fab->add_option("--listen", o.listen, "run an echo server on URI");
  auto* connect = fab->add_option("--connect", o.connect, "measure against the server at URI");
  auto* loop = fab->add_option("--loopback", o.loopback, "server on URI and client, in-process");
  listen->excludes(connect)->excludes(loop);
  connect->excludes(loop);
  fab->add_flag("--json", o.json, "one JSON object per result and line");
  fab->add_option("--csv", o.csv, "write the bandwidth sweep and latency rows to FILE");
  fab->add_option("--iters", o.iters, "upper bound of iterations per test (0: time only)");
  fab->add_option("--min-size", o.min_size, "smallest message of the sweep, bytes")
      ->check(CLI::Range(uint64_t{1}, uint64_t{4} << 20));
  fab->add_option("--max-size", o.max_size, "largest message of the sweep, bytes (<= 4 MiB)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{4} << 20));
  fab->add_option("--duration-ms", o.duration_ms, "time per test and per size")
      ->check(CLI::Range(uint64_t{0}, uint64_t{3'600'000}));
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

}  // namespace

double Seconds(Clock::time_point start, Clock::time_point end) {
  return std::max(std::chrono::duration<double>(end - start).count(), 1e-9);
}

namespace {

void AppendQuoted(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      out += fmt::format("\\u{:04x}", u);
    } else {
      out += c;
    }
  }
  out += '"';
}

}  // namespace

void JsonLine::Key(std::string_view key) {
  if (body_.size() > 1) body_ += ',';
  AppendQuoted(body_, key);
  body_ += ':';
}

JsonLine& JsonLine::Str(std::string_view key, std::string_view value) {
  Key(key);
  AppendQuoted(body_, value);
  return *this;
}

JsonLine& JsonLine::U64(std::string_view key, uint64_t value) {
  Key(key);
  body_ += std::to_string(value);
  return *this;
}

JsonLine& JsonLine::F64(std::string_view key, double value) {
  Key(key);
  body_ += std::isfinite(value) ? fmt::format("{:.6g}", value) : std::string("null");
  return *this;
}

}  // namespace pohmelfs::bench

int main(int argc, char** argv) try {
  using namespace pohmelfs::bench;
  // Logs (errors only) go to stderr: stdout carries the results, JSON lines with --json.
  spdlog::set_default_logger(spdlog::stderr_color_mt("pohmelfs-bench"));
  FsOptions fs;
  FabricOptions fabric;
  CLI::App app{"pohmelfs-bench: file system and transport benchmarks"};
  app.require_subcommand(1);
  AddFsCommand(app, fs);
  AddFabricCommand(app, fabric);
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
  fabric.cmd = cmd;
  int usage = CheckFabricUsage(fabric);
  return usage != kExitOk ? usage : RunFabric(fabric);
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
  return 1;
}
