// The plot of fabric CSV rows (bench.h, CsvRow): gnuplot, run as a subprocess on the CSV, draws
// one panel of bandwidth against size (a line per label and test: msg-bw, rma-write, rma-read,
// and the baselines' points) and one of 64-byte round-trip latency (p50 and p99 bars per label,
// with the message rate under the label when the CSV has it). The gnuplot script is written
// beside the PNG (PNG.gp) and kept, so that a plot can be redrawn or restyled by hand.
// Thread-safety: free functions; spawns and waits for one child process.
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.h"

extern char** environ;

namespace pohmelfs::bench {
namespace {

// A CSV with a header line; fields hold no commas (CsvSafe).
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;

  // 1-based column number (as gnuplot counts), 0 when absent.
  int Column(std::string_view name) const {
    auto it = std::find(header.begin(), header.end(), name);
    return it == header.end() ? 0 : static_cast<int>(it - header.begin()) + 1;
  }
  const std::string& At(const std::vector<std::string>& row, int column) const {
    static const std::string kEmpty;
    return column > 0 && static_cast<size_t>(column) <= row.size() ? row[column - 1] : kEmpty;
  }
};

std::vector<std::string> SplitCsv(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string field;
  while (std::getline(ss, field, ',')) out.push_back(field);
  if (!line.empty() && line.back() == ',') out.emplace_back();
  return out;
}

Result<Table> ReadTable(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::Error(ENOENT, "cannot read " + path);
  Table t;
  std::string line;
  if (!std::getline(in, line)) return Status::Error(EINVAL, path + " is empty");
  t.header = SplitCsv(line);
  while (std::getline(in, line)) {
    if (!line.empty() && line != CsvHeader()) t.rows.push_back(SplitCsv(line));
  }
  for (const char* need : {"label", "test", "bytes", "mib_per_s", "p50_us", "p99_us"}) {
    if (t.Column(need) == 0)
      return Status::Error(EINVAL, fmt::format("{}: no column {}", path, need));
  }
  return t;
}

double Number(const std::string& s) {
  if (s.empty()) return CsvRow::kNaN;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  return end == s.c_str() ? CsvRow::kNaN : v;
}

// A gnuplot double-quoted string.
std::string Quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string RateText(double msgs_per_s) {
  if (!std::isfinite(msgs_per_s)) return "";
  return msgs_per_s >= 1e6   ? fmt::format("{:.2f}M msg/s", msgs_per_s / 1e6)
         : msgs_per_s >= 1e3 ? fmt::format("{:.0f}k msg/s", msgs_per_s / 1e3)
                             : fmt::format("{:.0f} msg/s", msgs_per_s);
}

struct Latency {
  std::string label;
  double p50 = 0, p99 = 0, rate = CsvRow::kNaN;
};

// The bandwidth panel: reads the CSV itself, one plot element per (label, test).
std::string BandwidthPanel(const Table& t, const std::string& csv) {
  const int c_label = t.Column("label"), c_test = t.Column("test"), c_bytes = t.Column("bytes"),
            c_mib = t.Column("mib_per_s");
  std::vector<std::pair<std::string, std::string>> series;
  std::map<std::pair<std::string, std::string>, int> points;  // rows of each series
  std::vector<std::string> labels;
  for (const auto& r : t.rows) {
    const std::string& test = t.At(r, c_test);
    if (test == "latency" || test == "msg-rate" || !std::isfinite(Number(t.At(r, c_mib)))) continue;
    std::pair<std::string, std::string> key{t.At(r, c_label), test};
    if (points[key]++ == 0) series.push_back(key);
    if (std::find(labels.begin(), labels.end(), key.first) == labels.end())
      labels.push_back(key.first);
  }
  if (series.empty()) return "";
  // A colour per label, a dash pattern and point type per test.
  const std::map<std::string, std::pair<int, int>> test_style = {
      {"msg-bw", {1, 7}}, {"rma-write", {2, 5}}, {"rma-read", {3, 9}}, {"stream", {1, 13}}};
  std::string s;
  s += "set title \"bandwidth against size\"\n";
  s += "set logscale x 2\nunset logscale y\nset format x \"%.0b%B\"\nset format y \"%g\"\n";
  s += "set xlabel \"bytes per message or RMA\"\nset ylabel \"MiB/s\"\n";
  s += "set key outside below horizontal maxrows 4 font \",9\"\nset grid\nset yrange [0:*]\n";
  s += "set xrange [*:*]\nset autoscale x\nunset xtics\nset xtics\n";
  s += "plot \\\n";
  for (size_t i = 0; i < series.size(); i++) {
    const auto& [label, test] = series[i];
    const int color =
        static_cast<int>(std::find(labels.begin(), labels.end(), label) - labels.begin()) + 1;
    auto st = test_style.count(test) ? test_style.at(test) : std::pair{4, 11};
    // A single row (iperf3's stream) is a large point rather than a line.
    const std::string with =
        points[series[i]] == 1
            ? fmt::format("points lc {} pt {} ps 2.5", color, st.second)
            : fmt::format("linespoints lw 2 lc {} dt {} pt {} ps 1.2", color, st.first, st.second);
    s += fmt::format(
        "  {} skip 1 using (strcol({}) eq {} && strcol({}) eq {} ? column({}) : NaN):(column({})) "
        "with {} title {}{}\n",
        Quoted(csv), c_label, Quoted(label), c_test, Quoted(test), c_bytes, c_mib, with,
        Quoted(label + " " + test), i + 1 < series.size() ? ", \\" : "");
  }
  return s;
}

// The latency panel: bars from the CSV's latency rows, given to gnuplot as a data block.
std::string LatencyPanel(const Table& t) {
  const int c_label = t.Column("label"), c_test = t.Column("test"), c_p50 = t.Column("p50_us"),
            c_p99 = t.Column("p99_us"), c_rate = t.Column("msgs_per_s");
  std::vector<Latency> lat;
  std::map<std::string, double> rates;
  for (const auto& r : t.rows) {
    const std::string& test = t.At(r, c_test);
    if (test == "latency")
      lat.push_back({t.At(r, c_label), Number(t.At(r, c_p50)), Number(t.At(r, c_p99))});
    if (test == "msg-rate") rates[t.At(r, c_label)] = Number(t.At(r, c_rate));
  }
  if (lat.empty()) return "";
  double lo = 1e300, hi = 0;
  for (auto& l : lat) {
    if (auto it = rates.find(l.label); it != rates.end()) l.rate = it->second;
    lo = std::min(lo, l.p50);
    hi = std::max(hi, l.p99);
  }
  const double bottom = std::pow(10.0, std::floor(std::log10(std::max(lo, 0.01) / 2)));
  std::string s = "$lat << EOD\n";
  for (size_t i = 0; i < lat.size(); i++)
    s += fmt::format("{},{:.3f},{:.3f}\n", i, lat[i].p50, lat[i].p99);  // separator ","
  s += "EOD\n";
  s += "set title \"64-byte round trip, microseconds (log scale)\"\n";
  s += "unset logscale x\nset logscale y 10\nset format y \"%g\"\n";
  s += "set xlabel \"\"\nset ylabel \"microseconds\"\nset key inside top left box opaque font "
       "\",9\"\nset "
       "grid y\n";
  s += fmt::format("set xrange [-0.6:{}]\nset yrange [{}:{}]\n", lat.size() - 0.4, bottom, hi * 4);
  s += "set xtics (";
  for (size_t i = 0; i < lat.size(); i++) {
    std::string text = lat[i].label;
    // One word a line ("ofi+tcp\nsrv-spin=50"): the bars are narrow.
    for (size_t at = text.find(' '); at != std::string::npos; at = text.find(' ', at))
      text.replace(at, 1, "\\n");
    if (std::isfinite(lat[i].rate)) text += "\\n" + RateText(lat[i].rate);
    // Escape the quotes only: "\\n" above is gnuplot's newline.
    std::string q = "\"";
    for (char c : text) q += c == '"' ? std::string("\\\"") : std::string(1, c);
    s += fmt::format("{}{} {}", i ? ", " : "", q + "\"", i);
  }
  s += ") font \",9\"\nset bmargin 5\n";
  s += "set style fill solid 0.7 border -1\n";
  s += fmt::format(
      "plot $lat using ($1-0.18):2:($1-0.34):($1-0.02):({0}):2 with boxxyerror lc 1 title "
      "\"p50\", \\\n"
      "  $lat using ($1+0.18):3:($1+0.02):($1+0.34):({0}):3 with boxxyerror lc 2 title "
      "\"p99\", \\\n"
      "  $lat using ($1-0.18):2:(sprintf(\"%.1f\", $2)) with labels offset 0,0.7 font \",9\" "
      "notitle, \\\n"
      "  $lat using ($1+0.18):3:(sprintf(\"%.1f\", $3)) with labels offset 0,0.7 font \",9\" "
      "notitle\n",
      bottom);
  return s;
}

Status RunGnuplot(const std::string& script_path) {
  const char* argv[] = {"gnuplot", script_path.c_str(), nullptr};
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, "gnuplot", nullptr, nullptr, const_cast<char* const*>(argv), environ);
  if (rc == ENOENT)
    return Status::Error(ENOENT, "gnuplot is not installed (Debian package gnuplot-nox)");
  if (rc != 0) return Status::Error(rc, "cannot run gnuplot");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Status::FromErrno("waitpid gnuplot");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return Status::Error(EIO, "gnuplot failed on " + script_path);
  return Status::Ok();
}

}  // namespace

Status PlotCsv(const std::string& csv, const std::string& png, const std::string& title) {
  auto t = ReadTable(csv);
  if (!t.ok()) return t.status();
  const std::string bw = BandwidthPanel(*t, csv), lat = LatencyPanel(*t);
  const int panels = !bw.empty() + !lat.empty();
  if (panels == 0) return Status::Error(EINVAL, csv + " has no bandwidth or latency rows");
  std::string s;
  s += fmt::format("set terminal pngcairo noenhanced size {},560 font \"sans,10\"\n",
                   panels == 2 ? 1280 : 720);
  s += "set output " + Quoted(png) + "\n";
  s += "set datafile separator \",\"\n";
  s += fmt::format("set multiplot layout 1,{} title {}\n", panels, Quoted(title));
  s += bw + lat;
  s += "unset multiplot\n";
  const std::string script_path = png + ".gp";
  {
    std::ofstream out(script_path, std::ios::trunc);
    out << s;
    out.close();
    if (!out) return Status::Error(EIO, "write " + script_path);
  }
  return RunGnuplot(script_path);
}

int RunPlot(const PlotOptions& o) {
  Status s = PlotCsv(o.csv, o.png, o.title);
  if (s.ok()) return kExitOk;
  fmt::print(stderr, "plot: {}\n", s.ToString());
  return kExitError;
}

}  // namespace pohmelfs::bench
