// pohmelfs-bench: the options of the two benchmarks (fs: file system operations in a directory,
// fabric: the raw transport against an echo server) and the small output helpers they share.
// Thread-safety: plain values and free functions, no shared state.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace pohmelfs::bench {

using Clock = std::chrono::steady_clock;

// Exit codes of the tool.
constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

struct FsOptions {
  std::string dir;
  std::string cmd;  // the command line, echoed in JSON output
  bool json = false;
  uint64_t size_mib = 256;
  uint64_t files = 2000;
  uint64_t rand_reads = 4000;
  std::string untar;  // tarball to extract; empty: a synthetic one is built in /tmp
  bool check = false;
};

struct FabricOptions {
  std::string listen;    // echo server mode
  std::string connect;   // client mode
  std::string loopback;  // both, in one process
  std::string cmd;
  bool json = false;
  std::string csv;
  uint64_t iters = 0;  // upper bound of measured iterations per test; 0: time bound only
  uint64_t min_size = 4096;
  uint64_t max_size = 4u << 20;
  uint64_t duration_ms = 200;  // per test and per size
};

// Both return a process exit code.
int RunFs(const FsOptions& options);
int RunFabric(const FabricOptions& options);

// Seconds from start to end, never zero (rates stay finite).
double Seconds(Clock::time_point start, Clock::time_point end);

// One JSON object on one line, built field by field.
class JsonLine {
 public:
  JsonLine& Str(std::string_view key, std::string_view value);
  JsonLine& U64(std::string_view key, uint64_t value);
  JsonLine& F64(std::string_view key, double value);
  std::string str() const { return body_ + "}"; }

 private:
  void Key(std::string_view key);
  std::string body_ = "{";
};

}  // namespace pohmelfs::bench
