// Output helpers of the benchmarks: JSON lines, the fabric CSV rows, times and percentiles.
// Thread-safety: pure functions and values.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>

#include "bench/bench.h"

namespace pohmelfs::bench {
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

// A number field of the CSV: empty when it does not apply.
std::string Field(double v, int decimals) {
  return std::isfinite(v) ? fmt::format("{:.{}f}", v, decimals) : std::string();
}

}  // namespace

double Seconds(Clock::time_point start, Clock::time_point end) {
  return std::max(std::chrono::duration<double>(end - start).count(), 1e-9);
}

double PercentileUs(const std::vector<uint64_t>& sorted_ns, double pct) {
  if (sorted_ns.empty()) return 0;
  auto rank = static_cast<size_t>(std::ceil(pct / 100.0 * static_cast<double>(sorted_ns.size())));
  return static_cast<double>(sorted_ns[std::clamp<size_t>(rank, 1, sorted_ns.size()) - 1]) / 1e3;
}

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

std::string CsvHeader() {
  return "label,backend,spin_us,test,bytes,window,iters,seconds,mib_per_s,msgs_per_s,"
         "usec_per_xfer,p50_us,p99_us";
}

std::string CsvSafe(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c == ',' || c == '"' || std::iscntrl(static_cast<unsigned char>(c))) c = '_';
  }
  return out;
}

std::string CsvLine(const CsvRow& r) {
  return fmt::format("{},{},{},{},{},{},{},{:.6f},{},{},{},{},{}", CsvSafe(r.label),
                     CsvSafe(r.backend), r.spin_us ? std::to_string(*r.spin_us) : "",
                     CsvSafe(r.test), r.bytes, r.window, r.iters, r.seconds, Field(r.mib_per_s, 3),
                     Field(r.msgs_per_s, 1), Field(r.usec_per_xfer, 3), Field(r.p50_us, 3),
                     Field(r.p99_us, 3));
}

Status WriteCsv(const std::string& path, const std::vector<CsvRow>& rows) {
  std::ofstream out(path, std::ios::trunc);
  out << CsvHeader() << '\n';
  for (const auto& r : rows) out << CsvLine(r) << '\n';
  out.close();
  if (!out) return Status::Error(EIO, "write " + path);
  return Status::Ok();
}

}  // namespace pohmelfs::bench
