// A deterministic stream of namespace and data changes applied to two trees at once: the mount
// under test and a local mirror. Every call on the mount must succeed; at the end the two trees
// must hold the same names, types, modes, sizes, contents, link counts and user xattrs.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace pohmelfs::testing {

class Workload {
 public:
  Workload(std::string mnt, std::string mirror, uint32_t seed)
      : mnt_(std::move(mnt)), mirror_(std::move(mirror)), rng_(seed) {}

  // Applies the next change to both trees. Returns "" or a description of the failed call.
  std::string Step() {
    if (step_ == 0) {
      for (int d = 0; d < 4; d++) {
        const std::string dir = "d" + std::to_string(d);
        std::string err = Both("mkdir " + dir, [&](const std::string& root) {
          return mkdir((root + "/" + dir).c_str(), 0755);
        });
        if (!err.empty()) return err;
      }
    }
    step_++;
    const int kind = static_cast<int>(rng_() % 10);
    if (files_.empty() || kind < 3) return Create();
    if (kind < 5) return Overwrite();
    if (kind == 5) return Append();
    if (kind == 6) return Rename();
    if (kind == 7) return Unlink();
    if (kind == 8) return Link();
    return Xattr();
  }
  int steps() const { return step_.load(); }  // may be read by another thread

 private:
  std::string Both(const std::string& what, const std::function<int(const std::string&)>& op) {
    if (op(mnt_) != 0) return what + " on the mount: " + std::strerror(errno);
    if (op(mirror_) != 0) return what + " on the mirror: " + std::strerror(errno);
    return "";
  }
  std::vector<char> Data(size_t n) {
    std::vector<char> d(n);
    for (auto& c : d) c = static_cast<char>('a' + rng_() % 26);
    return d;
  }
  static int WriteAt(const std::string& path, int flags, off_t off, const std::vector<char>& d) {
    int fd = open(path.c_str(), flags | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    ssize_t n =
        flags & O_APPEND ? write(fd, d.data(), d.size()) : pwrite(fd, d.data(), d.size(), off);
    int err = errno;
    if (close(fd) != 0 && n >= 0) return -1;
    errno = err;
    return n == static_cast<ssize_t>(d.size()) ? 0 : -1;
  }
  std::string PickFile() { return files_[rng_() % files_.size()]; }

  std::string Create() {
    const std::string dir = "d" + std::to_string(rng_() % 4);
    const std::string rel = dir + "/f" + std::to_string(step_.load());
    auto d = Data(rng_() % (192 << 10));
    std::string err = Both("create " + rel, [&](const std::string& root) {
      return WriteAt(root + "/" + rel, O_WRONLY | O_CREAT | O_EXCL, 0, d);
    });
    if (err.empty()) files_.push_back(rel);
    return err;
  }
  std::string Overwrite() {
    const std::string rel = PickFile();
    const off_t off = static_cast<off_t>(rng_() % (128 << 10));
    auto d = Data(1 + rng_() % (64 << 10));
    return Both("overwrite " + rel, [&](const std::string& root) {
      return WriteAt(root + "/" + rel, O_WRONLY, off, d);
    });
  }
  std::string Append() {
    const std::string rel = PickFile();
    auto d = Data(1 + rng_() % 4096);
    return Both("append " + rel, [&](const std::string& root) {
      return WriteAt(root + "/" + rel, O_WRONLY | O_APPEND, 0, d);
    });
  }
  std::string Rename() {
    const size_t i = rng_() % files_.size();
    const std::string to = "d" + std::to_string(rng_() % 4) + "/r" + std::to_string(step_.load());
    std::string err = Both("rename " + files_[i], [&](const std::string& root) {
      return rename((root + "/" + files_[i]).c_str(), (root + "/" + to).c_str());
    });
    if (err.empty()) files_[i] = to;
    return err;
  }
  std::string Unlink() {
    const size_t i = rng_() % files_.size();
    std::string err = Both("unlink " + files_[i], [&](const std::string& root) {
      return unlink((root + "/" + files_[i]).c_str());
    });
    if (err.empty()) files_.erase(files_.begin() + static_cast<long>(i));
    return err;
  }
  std::string Link() {
    const std::string from = PickFile();
    const std::string to = from.substr(0, 2) + "/l" + std::to_string(step_.load());
    std::string err = Both("link " + from, [&](const std::string& root) {
      return link((root + "/" + from).c_str(), (root + "/" + to).c_str());
    });
    if (err.empty()) files_.push_back(to);
    return err;
  }
  std::string Xattr() {
    const std::string rel = PickFile();
    const std::string value = std::to_string(step_.load());
    return Both("setxattr " + rel, [&](const std::string& root) {
      return setxattr((root + "/" + rel).c_str(), "user.step", value.data(), value.size(), 0);
    });
  }

  const std::string mnt_, mirror_;
  std::mt19937 rng_;
  std::vector<std::string> files_;
  std::atomic<int> step_{0};
};

}  // namespace pohmelfs::testing
