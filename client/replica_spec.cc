#include "client/replica_spec.h"

#include <charconv>
#include <fstream>
#include <set>

#include "transport/uri.h"

namespace pohmelfs::client {

namespace {

Status ApplyOption(std::string_view kv, ReplicaSpec* spec) {
  auto eq = kv.find('=');
  if (eq == std::string_view::npos)
    return Status::Error(EINVAL, "server option without '=': " + std::string(kv));
  std::string_view key = kv.substr(0, eq), value = kv.substr(eq + 1);
  if (key == "prio" || key == "priority") {
    int p = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), p);
    if (ec != std::errc() || end != value.data() + value.size() || p < -1000000 || p > 1000000)
      return Status::Error(EINVAL, "bad priority: " + std::string(value));
    spec->priority = p;
  } else if (key == "perm") {
    if (value == "r" || value == "ro") {
      spec->read = true, spec->write = false;
    } else if (value == "w" || value == "wo") {
      spec->read = false, spec->write = true;
    } else if (value == "rw") {
      spec->read = spec->write = true;
    } else {
      return Status::Error(EINVAL, "bad perm (r, w or rw): " + std::string(value));
    }
  } else {
    return Status::Error(EINVAL, "unknown server option: " + std::string(key));
  }
  return Status::Ok();
}

}  // namespace

std::string ReplicaSpec::PermString() const {
  return std::string(read ? "r" : "") + (write ? "w" : "");
}

std::string ReplicaSpec::ToString() const {
  return uri + "?prio=" + std::to_string(priority) + "&perm=" + PermString();
}

Result<ReplicaSpec> ParseReplicaSpec(std::string_view text) {
  ReplicaSpec spec;
  auto q = text.find('?');
  spec.uri = std::string(text.substr(0, q));
  auto uri = transport::ParseUri(spec.uri);
  if (!uri.ok()) return uri.status();
  spec.uri = uri->ToString();
  if (q != std::string_view::npos) {
    std::string_view opts = text.substr(q + 1);
    while (!opts.empty()) {
      auto amp = opts.find('&');
      POHMELFS_RETURN_IF_ERROR(ApplyOption(opts.substr(0, amp), &spec));
      if (amp == std::string_view::npos) break;
      opts = opts.substr(amp + 1);
    }
  }
  if (!spec.read && !spec.write) return Status::Error(EINVAL, "server with no permission");
  return spec;
}

namespace {
Status CheckUnique(const std::vector<ReplicaSpec>& v) {
  std::set<std::string> seen;
  for (const auto& s : v)
    if (!seen.insert(s.uri).second) return Status::Error(EINVAL, "server listed twice: " + s.uri);
  if (v.empty()) return Status::Error(EINVAL, "no server given");
  return Status::Ok();
}
}  // namespace

Result<std::vector<ReplicaSpec>> ParseServerList(std::string_view text) {
  std::vector<ReplicaSpec> out;
  while (!text.empty()) {
    auto comma = text.find(',');
    auto spec = ParseReplicaSpec(text.substr(0, comma));
    if (!spec.ok()) return spec.status();
    out.push_back(*spec);
    if (comma == std::string_view::npos) break;
    text = text.substr(comma + 1);
  }
  POHMELFS_RETURN_IF_ERROR(CheckUnique(out));
  return out;
}

Result<std::vector<ReplicaSpec>> LoadClusterFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::Error(errno ? errno : ENOENT, "cannot read cluster file " + path);
  std::vector<ReplicaSpec> out;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    lineno++;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::vector<std::string> words;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && isspace(static_cast<unsigned char>(line[i]))) i++;
      size_t j = i;
      while (j < line.size() && !isspace(static_cast<unsigned char>(line[j]))) j++;
      if (j > i) words.push_back(line.substr(i, j - i));
      i = j;
    }
    if (words.empty()) continue;
    std::string text = words[0];
    for (size_t w = 1; w < words.size(); w++)
      text += (w == 1 && text.find('?') == std::string::npos ? "?" : "&") + words[w];
    auto spec = ParseReplicaSpec(text);
    if (!spec.ok())
      return Status::Error(EINVAL,
                           path + ":" + std::to_string(lineno) + ": " + spec.status().reason());
    out.push_back(*spec);
  }
  POHMELFS_RETURN_IF_ERROR(CheckUnique(out));
  return out;
}

}  // namespace pohmelfs::client
