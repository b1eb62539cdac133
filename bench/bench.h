// pohmelfs-bench: the options of the benchmarks (fs: file system operations in a directory;
// fabric: the raw transport against an echo server; pingpong: a minimal blocking-socket
// round trip, the baseline of fabric's latency; plot: a PNG of fabric CSV rows) and the small
// output helpers they share (also linked into fi-write-baseline).
// Thread-safety: plain values and free functions, no shared state.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/status.h"

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
  std::string png;     // bandwidth and latency plot of the CSV rows (gnuplot); needs csv
  std::string label;   // names the rows in CSV, JSON and plot; default: the backend
  uint64_t iters = 0;  // upper bound of measured iterations per test; 0: time bound only
  uint64_t min_size = 4096;
  uint64_t max_size = 4u << 20;
  uint64_t duration_ms = 200;  // per test and per size
  uint64_t spin_us = 0;  // TransportOptions::spin of this process's ends; main sets the default
  std::optional<uint64_t> server_spin_us;  // the echo server's, when not spin_us
  bool no_rma = false;  // skip the RMA write/read sweep (run when the connection has rma())
};

struct PingPongOptions {
  std::string listen;  // tcp://HOST:PORT
  std::string connect;
  std::string loopback;
  std::string cmd;
  bool json = false;
  std::string csv;
  std::string label = "pingpong";
  uint64_t size = 64;
  uint64_t iters = 0;
  uint64_t duration_ms = 200;
};

struct PlotOptions {
  std::string csv;
  std::string png;
  std::string title = "pohmelfs-bench fabric";
};

// Each returns a process exit code.
int RunFs(const FsOptions& options);
int RunFabric(const FabricOptions& options);
int RunPingPong(const PingPongOptions& options);
int RunPlot(const PlotOptions& options);

// Seconds from start to end, never zero (rates stay finite).
double Seconds(Clock::time_point start, Clock::time_point end);

// Nearest-rank percentile of sorted samples (nanoseconds), in microseconds.
double PercentileUs(const std::vector<uint64_t>& sorted_ns, double pct);

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

// One row of a fabric CSV, written by `fabric`, `pingpong` and fi-write-baseline (and by
// bench/compare-fabric.sh for iperf3) and read by `plot`. Columns, in this order:
//   label,backend,spin_us,test,bytes,window,iters,seconds,mib_per_s,msgs_per_s,usec_per_xfer,
//   p50_us,p99_us
// test is one of latency (p50_us, p99_us), msg-rate (msgs_per_s), msg-bw, rma-write, rma-read,
// stream (mib_per_s, usec_per_xfer). A field that does not apply is empty (NaN or nullopt
// here). label and backend hold no comma.
struct CsvRow {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  std::string label;
  std::string backend;
  std::optional<uint64_t> spin_us;
  std::string test;
  uint64_t bytes = 0;
  uint64_t window = 1;
  uint64_t iters = 0;
  double seconds = 0;
  double mib_per_s = kNaN;
  double msgs_per_s = kNaN;
  double usec_per_xfer = kNaN;
  double p50_us = kNaN;
  double p99_us = kNaN;
};

std::string CsvHeader();
std::string CsvLine(const CsvRow& row);
// Replaces commas and control characters, so that a label is one CSV field.
std::string CsvSafe(std::string_view s);
// Writes the header and rows to path (truncating it).
Status WriteCsv(const std::string& path, const std::vector<CsvRow>& rows);

// Draws the bandwidth rows (against size, one line per label and test) and the latency rows
// (p50 and p99 bars per label) of a fabric CSV into a PNG with gnuplot, run as a subprocess;
// its script is kept beside the PNG (png + ".gp"). ENOENT when gnuplot is not installed.
Status PlotCsv(const std::string& csv, const std::string& png, const std::string& title);

}  // namespace pohmelfs::bench
