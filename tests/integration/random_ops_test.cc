// Randomized differential test. A long, seeded sequence of filesystem operations over a small
// pool of names is applied to a directory on the POHMELFS mount and to a reference directory on
// the local filesystem; after every operation the two results (return value, errno on failure,
// bytes read, attributes) must agree, and both trees are compared in full every kCheckEvery
// operations and at the end. At the end the export itself is also compared with the reference
// and the server's object index (.pohmelfs/ids, .pohmelfs/dirs) is checked against the tree.
//
// Operations: create/mknod, pwrite (O_CREAT, O_TRUNC), truncate/ftruncate, pread, O_APPEND
// write, unlink, mkdir, rmdir, rename (plain, RENAME_NOREPLACE, RENAME_EXCHANGE), link,
// symlink, readlink, chmod, chown/lchown, utimensat (explicit times then checks mtime), the
// user.* xattr calls, stat/lstat, fallocate, readdir, statvfs, shared mmap read/write,
// copy_file_range, large directories (several READDIR pages) and their removal, and up to
// kSlots descriptors kept open across operations, also after their file lost its last name.
// Every operation runs under a random umask. Symlink targets only lead downwards, so that
// following one never leaves the tree.
//
// Environment: POHMELFS_RANDOM_OPS=N (default 3000), POHMELFS_RANDOM_SEED=S (decimal or 0x...).
// A failure names the seed, the index of the operation and the last operations before it.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "proto/codec.h"
#include "tests/integration/fixture.h"

namespace pohmelfs::testing {
namespace {

constexpr uint64_t kDefaultSeed = 0x90e1f5'20240611ull;
constexpr uint64_t kDefaultOps = 3000;
constexpr uint64_t kCheckEvery = 500;
constexpr size_t kMaxIo = 300 * 1024;
constexpr uint64_t kMaxOffset = 512 * 1024;
constexpr uint64_t kMaxTruncate = 900 * 1024;
constexpr size_t kSlots = 4;     // long-lived descriptors
constexpr size_t kHistory = 12;  // operations shown with a divergence
constexpr int kMount = 0;        // side index of the mount
constexpr int kLocal = 1;        // side index of the reference

// Few names, so that operations collide: EEXIST, ENOENT, ENOTEMPTY, EISDIR, ENOTDIR, ...
const char* const kNames[] = {"a", "b", "c", "d", "e"};
// Prefix of the entries made in bulk (large directories, several READDIR pages).
constexpr char kManyPrefix[] = "many.";
const char* const kXattrNames[] = {"user.a", "user.b", "user.a.longer.name", "user.d"};
const mode_t kFileModes[] = {0600, 0644, 0755};
const mode_t kDirModes[] = {0755, 0700, 0777, 0750, 01777, 02755};
const mode_t kChmodModes[] = {0000, 0400, 0600, 0644, 0755, 0777, 0111, 04755, 02755, 01777};
const mode_t kUmasks[] = {0, 022, 027, 077};

uint64_t EnvU64(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  return std::strtoull(v, nullptr, 0);
}

std::string ErrName(int e) {
  const char* n = strerrorname_np(e);
  return n ? n : "errno " + std::to_string(e);
}

std::string Hex64(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof(b), "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

std::string Oct(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof(b), "0%o", v);
  return b;
}

uint64_t Fnv(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Short printable form of compared data.
std::string Summary(const std::string& d) {
  bool printable = d.size() <= 160;
  for (unsigned char c : d) printable = printable && c >= 0x20 && c < 0x7f;
  if (printable) return d;
  return std::to_string(d.size()) + " bytes, fnv " + Hex64(Fnv(d));
}

std::string FirstDifference(const std::string& a, const std::string& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) i++;
  return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size()) +
         ", first difference at byte " + std::to_string(i);
}

// Outcome of one operation on one side; compared field by field.
struct Res {
  long rc = 0;
  int err = 0;       // errno when rc < 0
  std::string step;  // the call that produced rc
  std::string data;  // bytes read, attributes, names: whatever the operation compares
  bool operator==(const Res&) const = default;
};

// Captures errno right after a call.
Res Sys(long rc, const char* step) {
  Res r;
  r.rc = rc;
  r.err = rc < 0 ? errno : 0;
  r.step = step;
  return r;
}

std::string Show(const Res& r) {
  std::string s = r.step + " -> ";
  s += r.rc < 0 ? "-1 " + ErrName(r.err) : std::to_string(r.rc);
  if (!r.data.empty()) s += " [" + Summary(r.data) + "]";
  return s;
}

// open, body(fd), close; the first failure is the result.
template <typename F>
Res WithFd(const std::string& path, int flags, mode_t mode, F&& body) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return Sys(-1, "open");
  Res r = body(fd);
  int c = close(fd);
  if (c != 0 && r.rc >= 0) return Sys(-1, "close");
  return r;
}

// The compared attributes: type and mode, nlink, owner, size (not for directories, whose size
// depends on the backing filesystem's history). index_links is subtracted from nlink of
// non-directories (the export's hidden index link).
std::string StatText(const struct stat& st, unsigned index_links = 0) {
  nlink_t n = st.st_nlink;
  if (!S_ISDIR(st.st_mode) && n >= index_links) n -= index_links;
  std::string s = "mode=" + Oct(st.st_mode) + " nlink=" + std::to_string(n) +
                  " uid=" + std::to_string(st.st_uid) + " gid=" + std::to_string(st.st_gid);
  if (!S_ISDIR(st.st_mode)) s += " size=" + std::to_string(st.st_size);
  return s;
}

std::string MtimeText(const struct stat& st) {
  return "mtime=" + std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
}

Res StatRes(const std::string& path, bool follow) {
  struct stat st;
  Res r =
      Sys(follow ? stat(path.c_str(), &st) : lstat(path.c_str(), &st), follow ? "stat" : "lstat");
  if (r.rc == 0) r.data = StatText(st);
  return r;
}

Res ReadDirRes(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (!d) return Sys(-1, "opendir");
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n + ":" + std::to_string(e->d_type));
  }
  int err = errno;
  closedir(d);
  if (err != 0) {
    errno = err;
    return Sys(-1, "readdir");
  }
  std::sort(names.begin(), names.end());
  Res r = Sys(static_cast<long>(names.size()), "readdir");
  for (const auto& n : names) r.data += n + " ";
  return r;
}

// Xattr names of path, sorted and comma-separated in data: the user.* ones, or all but the
// security.* ones (labels of the local security module differ between filesystems).
Res ListXattrNames(const std::string& path, bool follow, bool user_only) {
  std::vector<char> buf(64 * 1024);
  ssize_t n = follow ? listxattr(path.c_str(), buf.data(), buf.size())
                     : llistxattr(path.c_str(), buf.data(), buf.size());
  if (n < 0) return Sys(-1, follow ? "listxattr" : "llistxattr");
  std::vector<std::string> names;
  for (ssize_t i = 0; i < n;) {
    std::string name(buf.data() + i);
    i += static_cast<ssize_t>(name.size()) + 1;
    bool user = name.rfind("user.", 0) == 0;
    if (user || (!user_only && name.rfind("security.", 0) != 0)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  Res r = Sys(0, follow ? "listxattr" : "llistxattr");
  for (const auto& nm : names) r.data += nm + ",";
  r.rc = static_cast<long>(names.size());
  return r;
}

std::string XattrDump(const std::string& path) {
  Res names = ListXattrNames(path, false, true);
  if (names.rc < 0) return "llistxattr " + ErrName(names.err);
  std::string out;
  size_t pos = 0;
  while (pos < names.data.size()) {
    size_t comma = names.data.find(',', pos);
    std::string nm = names.data.substr(pos, comma - pos);
    pos = comma + 1;
    std::vector<char> v(64 * 1024);
    ssize_t n = lgetxattr(path.c_str(), nm.c_str(), v.data(), v.size());
    out += nm + "=";
    out += n < 0 ? "<" + ErrName(errno) + ">"
                 : Hex64(Fnv(std::string(v.data(), static_cast<size_t>(n))));
    out += " ";
  }
  return out;
}

Res ReadAll(const std::string& path) {
  return WithFd(path, O_RDONLY | O_NOFOLLOW, 0, [](int fd) {
    std::string out;
    char buf[64 * 1024];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n < 0) return Sys(-1, "read");
      if (n == 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    Res r = Sys(static_cast<long>(out.size()), "read");
    r.data = std::move(out);
    return r;
  });
}

std::vector<std::string> SortedNames(const std::string& dir, std::string* error) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (!d) {
    *error = "opendir " + dir + ": " + ErrName(errno);
    return names;
  }
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return "{" + s + "}";
}

std::string Child(const std::string& rel, const std::string& name) {
  return rel.empty() ? name : rel + "/" + name;
}

std::string Under(const std::string& root, const std::string& rel) {
  return rel.empty() ? root : root + "/" + rel;
}

// Compares the subtree rel of root a (the mount or the export) with root b (the reference):
// names, types, modes, nlink, sizes, symlink targets, file contents and user xattrs. Returns
// the first difference, or "".
std::string CompareTrees(const std::string& a, const std::string& b, const std::string& rel,
                         unsigned a_index_links) {
  std::string pa = Under(a, rel), pb = Under(b, rel), where = "'" + rel + "': ";
  struct stat sa, sb;
  if (lstat(pa.c_str(), &sa) != 0) return where + "lstat " + pa + ": " + ErrName(errno);
  if (lstat(pb.c_str(), &sb) != 0) return where + "lstat " + pb + ": " + ErrName(errno);
  std::string ta = StatText(sa, a_index_links), tb = StatText(sb);
  if (ta != tb) return where + "attributes " + ta + " vs reference " + tb;
  std::string xa = XattrDump(pa), xb = XattrDump(pb);
  if (xa != xb) return where + "user xattrs " + xa + " vs reference " + xb;
  if (S_ISLNK(sa.st_mode)) {
    char la[8192], lb[8192];
    ssize_t na = readlink(pa.c_str(), la, sizeof(la)), nb = readlink(pb.c_str(), lb, sizeof(lb));
    std::string ra = na < 0 ? "<" + ErrName(errno) + ">" : std::string(la, static_cast<size_t>(na));
    std::string rb = nb < 0 ? "<error>" : std::string(lb, static_cast<size_t>(nb));
    if (ra != rb) return where + "symlink target '" + Summary(ra) + "' vs '" + Summary(rb) + "'";
  } else if (S_ISREG(sa.st_mode)) {
    Res ca = ReadAll(pa), cb = ReadAll(pb);
    if (ca.rc < 0 || cb.rc < 0) return where + Show(ca) + " vs reference " + Show(cb);
    if (ca.data != cb.data) return where + "contents differ: " + FirstDifference(ca.data, cb.data);
  } else if (S_ISDIR(sa.st_mode)) {
    std::string err;
    auto na = SortedNames(pa, &err), nb = SortedNames(pb, &err);
    if (!err.empty()) return where + err;
    if (na != nb) return where + "entries " + Join(na) + " vs reference " + Join(nb);
    for (const auto& n : na) {
      std::string d = CompareTrees(a, b, Child(rel, n), a_index_links);
      if (!d.empty()) return d;
    }
  }
  return "";
}

// Removes path and everything below it (not following symlinks); rc counts what was removed.
Res RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return Sys(-1, "lstat");
  if (!S_ISDIR(st.st_mode)) {
    if (unlink(path.c_str()) != 0) return Sys(-1, "unlink");
    return Sys(1, "remove");
  }
  long removed = 0;
  std::string err;
  std::vector<std::string> names = SortedNames(path, &err);
  if (!err.empty()) return Sys(-1, "opendir");
  for (const auto& n : names) {
    Res r = RemoveTree(path + "/" + n);
    if (r.rc < 0) return r;
    removed += r.rc;
  }
  if (rmdir(path.c_str()) != 0) return Sys(-1, "rmdir");
  return Sys(removed + 1, "remove");
}

// A deterministic random source whose results do not depend on the standard library's
// distributions (so that a seed reproduces everywhere).
class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : g_() % n; }
  uint64_t Range(uint64_t lo, uint64_t hi) { return lo + Below(hi - lo + 1); }
  bool Chance(unsigned percent) { return Below(100) < percent; }
  template <typename T, size_t N>
  T Pick(const T (&a)[N]) {
    return a[Below(N)];
  }
  std::string Bytes(size_t n) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; i += 8) {
      uint64_t v = g_();
      std::memcpy(&s[i], &v, std::min<size_t>(8, n - i));
    }
    return s;
  }

 private:
  std::mt19937_64 g_;
};

// One generated operation: run(side) performs it on the mount (0) or the reference (1).
struct Op {
  std::string desc;
  std::function<Res(int)> run;
  // Called with both results before they are compared (descriptor bookkeeping).
  std::function<void(const Res&, const Res&)> after;
  bool fallocate = false;     // the reference returning EOPNOTSUPP accepts either result
  bool must_succeed = false;  // failing on both sides is a divergence too
};

enum class Kind {
  kCreate,
  kWrite,
  kTruncate,
  kRead,
  kAppend,
  kUnlink,
  kMkdir,
  kRmdir,
  kRename,
  kLink,
  kSymlink,
  kReadlink,
  kChmod,
  kUtimens,
  kSetXattr,
  kGetXattr,
  kRemoveXattr,
  kListXattr,
  kStat,
  kFallocate,
  kReadDir,
  kStatFs,
  kFdOpen,
  kFdClose,
  kFdWrite,
  kFdRead,
  kFdTruncate,
  kFdStat,
  kFdChmod,
  kFdXattr,
  kChown,
  kMmap,
  kCopyRange,
  kFdSync,
  kPopulate,
  kRemoveTree
};

struct Weighted {
  Kind kind;
  unsigned weight;
};

const Weighted kKinds[] = {
    {Kind::kCreate, 8},      {Kind::kWrite, 8},      {Kind::kTruncate, 4},   {Kind::kRead, 6},
    {Kind::kAppend, 4},      {Kind::kUnlink, 7},     {Kind::kMkdir, 6},      {Kind::kRmdir, 5},
    {Kind::kRename, 8},      {Kind::kLink, 4},       {Kind::kSymlink, 4},    {Kind::kReadlink, 3},
    {Kind::kChmod, 3},       {Kind::kUtimens, 4},    {Kind::kSetXattr, 4},   {Kind::kGetXattr, 3},
    {Kind::kRemoveXattr, 2}, {Kind::kListXattr, 2},  {Kind::kStat, 6},       {Kind::kFallocate, 2},
    {Kind::kReadDir, 3},     {Kind::kStatFs, 1},     {Kind::kFdOpen, 3},     {Kind::kFdClose, 2},
    {Kind::kFdWrite, 3},     {Kind::kFdRead, 3},     {Kind::kFdTruncate, 2}, {Kind::kFdStat, 3},
    {Kind::kChown, 2},       {Kind::kMmap, 3},       {Kind::kCopyRange, 2},  {Kind::kFdSync, 1},
    {Kind::kPopulate, 1},    {Kind::kRemoveTree, 2}, {Kind::kFdChmod, 1},    {Kind::kFdXattr, 2},
};

struct Slot {
  bool open = false;
  int fd[2] = {-1, -1};
  std::string desc;  // path and flags at open time
};

class Runner {
 public:
  Runner(uint64_t seed, std::string mount_root, std::string local_root)
      : seed_(seed), rng_(seed), root_{std::move(mount_root), std::move(local_root)} {}
  ~Runner() { CloseAll(); }

  // Runs n operations; false (with a gtest failure recorded) at the first divergence.
  bool Run(uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
      index_ = i;
      Refresh();
      Op op = Generate();
      mode_t mask = rng_.Pick(kUmasks);
      mode_t old = umask(mask);
      Res m = op.run(kMount);
      Res l = op.run(kLocal);
      umask(old);
      if (op.after) op.after(m, l);
      Remember("#" + std::to_string(i) + " " + op.desc + " umask " + Oct(mask) + "\n      mount " +
               Show(m) + "\n      local " + Show(l));
      if (!(m == l) && !(op.fallocate && l.rc < 0 && l.err == EOPNOTSUPP)) {
        std::string what = "results differ\n  mount: " + Show(m) + "\n  local: " + Show(l);
        if (m.data != l.data) what += "\n  data: " + FirstDifference(m.data, l.data);
        return Fail(what);
      }
      if (op.must_succeed && m.rc < 0) return Fail("failed on both sides: " + Show(m));
      counts_[op.desc.substr(0, op.desc.find('('))]++;
      if (m.rc < 0) errors_[ErrName(m.err)]++;
      if ((i + 1) % kCheckEvery == 0 && !Check("checkpoint")) return false;
    }
    return true;
  }

  // Closes the long-lived descriptors, then compares the trees.
  bool Finish() {
    index_ = UINT64_MAX;
    CloseAll();
    return Check("final check");
  }

  std::string Stats() const {
    std::string s = "operations:";
    for (const auto& [k, v] : counts_) s += " " + k + "=" + std::to_string(v);
    s += "\ndescriptor operations on unlinked files: " + std::to_string(unlinked_fd_ops_);
    s += "\nfailed with:";
    for (const auto& [k, v] : errors_) s += " " + k + "=" + std::to_string(v);
    return s;
  }

  bool Fail(const std::string& what) {
    std::string hist;
    for (const auto& h : history_) hist += "  " + h + "\n";
    ADD_FAILURE() << "divergence at "
                  << (index_ == UINT64_MAX ? std::string("the end")
                                           : "operation #" + std::to_string(index_))
                  << " (seed " << Hex64(seed_)
                  << "; rerun with POHMELFS_RANDOM_SEED=" << Hex64(seed_) << ")\n"
                  << what << "\nlast operations (oldest first):\n"
                  << hist;
    return false;
  }

 private:
  std::string Full(int side, const std::string& rel) const { return root_[side] + "/" + rel; }

  void Remember(std::string s) {
    history_.push_back(std::move(s));
    if (history_.size() > kHistory) history_.pop_front();
  }

  bool Check(const char* what) {
    std::string d = CompareTrees(root_[kMount], root_[kLocal], "", 0);
    if (d.empty()) return true;
    return Fail(std::string(what) + ": mount and reference trees differ: " + d);
  }

  void CloseAll() {
    for (auto& s : slots_) {
      for (int& fd : s.fd) {
        if (fd >= 0) close(fd);
        fd = -1;
      }
      s.open = false;
    }
  }

  // The current reference tree (sorted, so choices only depend on the seed).
  void Refresh() {
    all_.clear();
    files_.clear();
    dirs_.clear();
    links_.clear();
    Walk("", 0);
  }

  void Walk(const std::string& rel, int depth) {
    std::string err;
    for (const auto& n : SortedNames(Under(root_[kLocal], rel), &err)) {
      if (n.rfind(kManyPrefix, 0) == 0) continue;  // bulk entries are not picked one by one
      std::string p = Child(rel, n);
      struct stat st;
      if (lstat(Full(kLocal, p).c_str(), &st) != 0) continue;
      all_.push_back(p);
      if (S_ISREG(st.st_mode)) files_.push_back(p);
      if (S_ISLNK(st.st_mode)) links_.push_back(p);
      if (S_ISDIR(st.st_mode)) {
        dirs_.push_back(p);
        if (depth < 16) Walk(p, depth + 1);
      }
    }
  }

  // Mostly a pool name; rarely the longest allowed name or one byte more (ENAMETOOLONG).
  std::string RandomName() {
    uint64_t r = rng_.Below(100);
    if (r < 2) return std::string(255, 'L');
    if (r < 3) return std::string(256, 'N');
    return rng_.Pick(kNames);
  }

  std::string RandomPath() {
    uint64_t r = rng_.Below(100);
    int depth = r < 50 ? 1 : r < 85 ? 2 : 3;
    std::string p;
    for (int i = 0; i < depth; i++) p = Child(p, RandomName());
    return p;
  }

  const std::string& From(const std::vector<std::string>& v) { return v[rng_.Below(v.size())]; }

  enum class Want { kAny, kFile, kDir, kNew, kLink };

  // A path: mostly an existing entry of the wanted type, sometimes any path over the name pool
  // (which may not exist, or run through a file or a symlink), rarely with a trailing slash.
  std::string PickPath(Want w) {
    std::string p;
    uint64_t r = rng_.Below(100);
    switch (w) {
      case Want::kFile:
        p = r < 75 && !files_.empty() ? From(files_)
            : r < 85 && !all_.empty() ? From(all_)
                                      : RandomPath();
        break;
      case Want::kDir:
        p = r < 70 && !dirs_.empty()  ? From(dirs_)
            : r < 80 && !all_.empty() ? From(all_)
                                      : RandomPath();
        break;
      case Want::kLink:
        p = r < 60 && !links_.empty() ? From(links_)
            : r < 85 && !all_.empty() ? From(all_)
                                      : RandomPath();
        break;
      case Want::kAny:
        p = r < 70 && !all_.empty() ? From(all_) : RandomPath();
        break;
      case Want::kNew:
        if (r < 80) {
          std::string parent = dirs_.empty() || rng_.Chance(30) ? "" : From(dirs_);
          p = Child(parent, RandomName());
        } else {
          p = RandomPath();
        }
        break;
    }
    if (rng_.Chance(3)) p += "/";
    return p;
  }

  // Symlink target text: pool names (downwards only, so that following a link never leaves the
  // tree), "." components, dangling names, trailing slashes, rarely a very long target.
  std::string RandomTarget() {
    if (rng_.Chance(2)) {
      std::string t;
      size_t len = rng_.Range(256, 4000);
      while (t.size() < len) t += rng_.Chance(50) ? "abcdefgh/" : "x";
      return t.substr(0, len);
    }
    std::string t;
    int n = static_cast<int>(rng_.Range(1, 3));
    for (int i = 0; i < n; i++) {
      uint64_t r = rng_.Below(100);
      std::string c = r < 8 ? "." : r < 16 ? "zz" : rng_.Pick(kNames);
      t = t.empty() ? c : t + "/" + c;
    }
    if (rng_.Chance(5)) t += "/";
    return t;
  }

  off_t LocalSize(const std::string& p) {
    struct stat st;
    return stat(Full(kLocal, p).c_str(), &st) == 0 ? st.st_size : 0;
  }

  uint64_t RandomOffset(off_t size) {
    uint64_t r = rng_.Below(100);
    if (r < 25) return 0;
    if (r < 45) return rng_.Below(8192);
    if (r < 70)
      return static_cast<uint64_t>(size) + rng_.Below(16384) - std::min<uint64_t>(size, 8192);
    return rng_.Below(kMaxOffset);
  }

  size_t RandomLen() {
    uint64_t r = rng_.Below(100);
    if (r < 10) return rng_.Below(17);
    if (r < 50) return rng_.Below(8193);
    return rng_.Below(kMaxIo + 1);
  }

  uint64_t RandomSize(off_t size) {
    uint64_t r = rng_.Below(100);
    if (r < 15) return 0;
    if (r < 45) return rng_.Below(8193);
    if (r < 70)
      return static_cast<uint64_t>(size) + rng_.Below(65536) - std::min<uint64_t>(size, 32768);
    return rng_.Below(kMaxTruncate);
  }

  timespec RandomTime() {
    timespec t{};
    uint64_t r = rng_.Below(100);
    if (r < 5)
      t.tv_sec = -static_cast<time_t>(rng_.Range(1, 1ull << 31));  // before 1970
    else if (r < 80)
      t.tv_sec = static_cast<time_t>(rng_.Below(1ull << 31));
    else
      t.tv_sec = static_cast<time_t>(rng_.Range(1ull << 31, 1ull << 34));  // after 2038
    t.tv_nsec = static_cast<long>(rng_.Below(1000000000));
    return t;
  }

  int FreeSlot() {
    for (size_t i = 0; i < kSlots; i++)
      if (!slots_[i].open) return static_cast<int>(i);
    return -1;
  }

  bool AnyOpen() const {
    for (const auto& s : slots_)
      if (s.open) return true;
    return false;
  }

  int OpenSlot() {
    std::vector<int> open;
    for (size_t i = 0; i < kSlots; i++)
      if (slots_[i].open) open.push_back(static_cast<int>(i));
    return open.empty() ? -1 : open[rng_.Below(open.size())];
  }

  Kind PickKind() {
    unsigned total = 0;
    for (const auto& k : kKinds) total += k.weight;
    uint64_t r = rng_.Below(total);
    for (const auto& k : kKinds) {
      if (r < k.weight) return k.kind;
      r -= k.weight;
    }
    return Kind::kStat;
  }

  Op Generate() {
    Kind k = PickKind();
    bool fd_op = k == Kind::kFdSync || k == Kind::kFdClose || k == Kind::kFdWrite ||
                 k == Kind::kFdRead || k == Kind::kFdTruncate || k == Kind::kFdStat ||
                 k == Kind::kFdChmod || k == Kind::kFdXattr;
    if (fd_op && !AnyOpen()) k = Kind::kFdOpen;
    if (k == Kind::kFdOpen && FreeSlot() < 0) k = Kind::kFdClose;
    Op op;
    switch (k) {
      case Kind::kCreate: {
        std::string p = PickPath(Want::kNew);
        mode_t mode = rng_.Pick(kFileModes);
        if (rng_.Chance(20)) {
          op.desc = "mknod(" + p + ", S_IFREG|" + Oct(mode) + ")";
          op.run = [this, p, mode](int s) {
            return Sys(mknod(Full(s, p).c_str(), S_IFREG | mode, 0), "mknod");
          };
          break;
        }
        op.desc = "create(" + p + ", O_CREAT|O_EXCL|O_WRONLY, " + Oct(mode) + ")";
        op.run = [this, p, mode](int s) {
          return WithFd(Full(s, p), O_CREAT | O_EXCL | O_WRONLY, mode,
                        [](int) { return Sys(0, "create"); });
        };
        break;
      }
      case Kind::kWrite: {
        std::string p = PickPath(Want::kFile);
        int flags = O_WRONLY;
        std::string fl = "O_WRONLY";
        if (rng_.Chance(25)) flags |= O_CREAT, fl += "|O_CREAT";
        if (rng_.Chance(10)) flags |= O_TRUNC, fl += "|O_TRUNC";
        uint64_t off = RandomOffset(LocalSize(p));
        std::string data = rng_.Bytes(RandomLen());
        op.desc = "pwrite(" + p + ", " + fl + ", off " + std::to_string(off) + ", len " +
                  std::to_string(data.size()) + ")";
        op.run = [this, p, flags, off, data = std::move(data)](int s) {
          return WithFd(Full(s, p), flags, 0644, [&](int fd) {
            return Sys(pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)), "pwrite");
          });
        };
        break;
      }
      case Kind::kTruncate: {
        std::string p = PickPath(Want::kFile);
        uint64_t size = RandomSize(LocalSize(p));
        bool by_path = rng_.Chance(30);
        op.desc = std::string(by_path ? "truncate(" : "ftruncate(") + p + ", " +
                  std::to_string(size) + ")";
        op.run = [this, p, size, by_path](int s) {
          if (by_path)
            return Sys(truncate(Full(s, p).c_str(), static_cast<off_t>(size)), "truncate");
          return WithFd(Full(s, p), O_WRONLY, 0, [&](int fd) {
            return Sys(ftruncate(fd, static_cast<off_t>(size)), "ftruncate");
          });
        };
        break;
      }
      case Kind::kRead: {
        std::string p = PickPath(Want::kFile);
        uint64_t off = RandomOffset(LocalSize(p));
        size_t len = RandomLen();
        op.desc =
            "pread(" + p + ", off " + std::to_string(off) + ", len " + std::to_string(len) + ")";
        op.run = [this, p, off, len](int s) {
          return WithFd(Full(s, p), O_RDONLY, 0, [&](int fd) {
            std::string buf(len, '\0');
            Res r = Sys(pread(fd, buf.data(), len, static_cast<off_t>(off)), "pread");
            if (r.rc > 0) r.data.assign(buf.data(), static_cast<size_t>(r.rc));
            return r;
          });
        };
        break;
      }
      case Kind::kAppend: {
        std::string p = PickPath(Want::kFile);
        bool create = rng_.Chance(20);
        std::string data = rng_.Bytes(RandomLen());
        op.desc = std::string("append(") + p + (create ? ", O_CREAT" : "") + ", len " +
                  std::to_string(data.size()) + ")";
        op.run = [this, p, create, data = std::move(data)](int s) {
          int flags = O_WRONLY | O_APPEND | (create ? O_CREAT : 0);
          return WithFd(Full(s, p), flags, 0600, [&](int fd) {
            Res r = Sys(write(fd, data.data(), data.size()), "write");
            struct stat st;
            if (r.rc >= 0 && fstat(fd, &st) == 0) r.data = "size=" + std::to_string(st.st_size);
            return r;
          });
        };
        break;
      }
      case Kind::kUnlink: {
        std::string p = PickPath(rng_.Chance(80) ? Want::kAny : Want::kFile);
        op.desc = "unlink(" + p + ")";
        op.run = [this, p](int s) { return Sys(unlink(Full(s, p).c_str()), "unlink"); };
        break;
      }
      case Kind::kMkdir: {
        std::string p = PickPath(Want::kNew);
        mode_t mode = rng_.Pick(kDirModes);
        op.desc = "mkdir(" + p + ", " + Oct(mode) + ")";
        op.run = [this, p, mode](int s) { return Sys(mkdir(Full(s, p).c_str(), mode), "mkdir"); };
        break;
      }
      case Kind::kRmdir: {
        std::string p = PickPath(Want::kDir);
        op.desc = "rmdir(" + p + ")";
        op.run = [this, p](int s) { return Sys(rmdir(Full(s, p).c_str()), "rmdir"); };
        break;
      }
      case Kind::kRename: {
        std::string from = PickPath(Want::kAny);
        std::string to = PickPath(rng_.Chance(50) ? Want::kNew : Want::kAny);
        uint64_t r = rng_.Below(100);
        unsigned flags = r < 50 ? 0 : r < 75 ? RENAME_NOREPLACE : RENAME_EXCHANGE;
        const char* fl = r < 50 ? "0" : r < 75 ? "RENAME_NOREPLACE" : "RENAME_EXCHANGE";
        op.desc = "renameat2(" + from + ", " + to + ", " + fl + ")";
        op.run = [this, from, to, flags](int s) {
          return Sys(
              renameat2(AT_FDCWD, Full(s, from).c_str(), AT_FDCWD, Full(s, to).c_str(), flags),
              "renameat2");
        };
        break;
      }
      case Kind::kLink: {
        std::string from = PickPath(Want::kAny);
        std::string to = PickPath(Want::kNew);
        op.desc = "link(" + from + ", " + to + ")";
        op.run = [this, from, to](int s) {
          return Sys(link(Full(s, from).c_str(), Full(s, to).c_str()), "link");
        };
        break;
      }
      case Kind::kSymlink: {
        std::string target = RandomTarget();
        std::string p = PickPath(Want::kNew);
        op.desc = "symlink('" + Summary(target) + "', " + p + ")";
        op.run = [this, target, p](int s) {
          return Sys(symlink(target.c_str(), Full(s, p).c_str()), "symlink");
        };
        break;
      }
      case Kind::kReadlink: {
        std::string p = PickPath(Want::kLink);
        const size_t sizes[] = {1, 2, 7, 64, 8192};
        size_t size = rng_.Pick(sizes);
        op.desc = "readlink(" + p + ", bufsize " + std::to_string(size) + ")";
        op.run = [this, p, size](int s) {
          std::string buf(size, '\0');
          Res r = Sys(readlink(Full(s, p).c_str(), buf.data(), size), "readlink");
          if (r.rc > 0) r.data.assign(buf.data(), static_cast<size_t>(r.rc));
          return r;
        };
        break;
      }
      case Kind::kChmod: {
        std::string p = PickPath(Want::kAny);
        mode_t mode = rng_.Pick(kChmodModes);
        op.desc = "chmod(" + p + ", " + Oct(mode) + ")";
        op.run = [this, p, mode](int s) {
          Res r = Sys(chmod(Full(s, p).c_str(), mode), "chmod");
          if (r.rc == 0) {
            Res st = StatRes(Full(s, p), true);
            r.data = st.rc == 0 ? st.data : Show(st);
          }
          return r;
        };
        break;
      }
      case Kind::kUtimens: {
        std::string p = PickPath(Want::kAny);
        std::array<timespec, 2> ts{RandomTime(), RandomTime()};
        uint64_t ra = rng_.Below(100), rm = rng_.Below(100);
        if (ra < 15)
          ts[0].tv_nsec = UTIME_OMIT;
        else if (ra < 25)
          ts[0].tv_nsec = UTIME_NOW;
        if (rm < 8)
          ts[1].tv_nsec = UTIME_OMIT;
        else if (rm < 12)
          ts[1].tv_nsec = UTIME_NOW;
        else if (rm < 15)
          ts[1].tv_nsec = 1000000000 + static_cast<long>(rng_.Below(1000));  // EINVAL
        int flags = rng_.Chance(30) ? AT_SYMLINK_NOFOLLOW : 0;
        auto text = [](const timespec& t) {
          if (t.tv_nsec == UTIME_OMIT) return std::string("OMIT");
          if (t.tv_nsec == UTIME_NOW) return std::string("NOW");
          return std::to_string(t.tv_sec) + "." + std::to_string(t.tv_nsec);
        };
        op.desc = "utimensat(" + p + ", atime " + text(ts[0]) + ", mtime " + text(ts[1]) +
                  (flags ? ", AT_SYMLINK_NOFOLLOW)" : ", 0)");
        bool explicit_mtime = ts[1].tv_nsec != UTIME_OMIT && ts[1].tv_nsec != UTIME_NOW;
        op.run = [this, p, ts, flags, explicit_mtime](int s) {
          std::string path = Full(s, p);
          Res r = Sys(utimensat(AT_FDCWD, path.c_str(), ts.data(), flags), "utimensat");
          if (r.rc == 0 && explicit_mtime) {
            // Right after an explicit utimensat the mtime must be exactly what was set.
            struct stat st;
            int rc = flags ? lstat(path.c_str(), &st) : stat(path.c_str(), &st);
            r.data = rc == 0 ? MtimeText(st) : "stat " + ErrName(errno);
          }
          return r;
        };
        break;
      }
      case Kind::kSetXattr: {
        std::string p = PickPath(Want::kAny);
        std::string name = rng_.Pick(kXattrNames);
        std::string value = rng_.Bytes(rng_.Chance(10) ? 0 : rng_.Range(1, 256));
        uint64_t r = rng_.Below(100);
        int flags = r < 60 ? 0 : r < 80 ? XATTR_CREATE : XATTR_REPLACE;
        bool follow = rng_.Chance(50);
        op.desc = std::string(follow ? "setxattr(" : "lsetxattr(") + p + ", " + name + ", len " +
                  std::to_string(value.size()) + ", flags " + std::to_string(flags) + ")";
        op.run = [this, p, name, value, flags, follow](int s) {
          std::string path = Full(s, p);
          int rc = follow
                       ? setxattr(path.c_str(), name.c_str(), value.data(), value.size(), flags)
                       : lsetxattr(path.c_str(), name.c_str(), value.data(), value.size(), flags);
          return Sys(rc, "setxattr");
        };
        break;
      }
      case Kind::kGetXattr: {
        std::string p = PickPath(Want::kAny);
        std::string name = rng_.Pick(kXattrNames);
        const size_t sizes[] = {0, 1, 100, 65536};
        size_t size = rng_.Pick(sizes);
        bool follow = rng_.Chance(50);
        op.desc = std::string(follow ? "getxattr(" : "lgetxattr(") + p + ", " + name + ", size " +
                  std::to_string(size) + ")";
        op.run = [this, p, name, size, follow](int s) {
          std::string path = Full(s, p);
          std::string buf(size, '\0');
          void* b = size ? buf.data() : nullptr;
          ssize_t n = follow ? getxattr(path.c_str(), name.c_str(), b, size)
                             : lgetxattr(path.c_str(), name.c_str(), b, size);
          Res r = Sys(n, "getxattr");
          if (n > 0 && size > 0) r.data.assign(buf.data(), static_cast<size_t>(n));
          return r;
        };
        break;
      }
      case Kind::kRemoveXattr: {
        std::string p = PickPath(Want::kAny);
        std::string name = rng_.Pick(kXattrNames);
        bool follow = rng_.Chance(50);
        op.desc = std::string(follow ? "removexattr(" : "lremovexattr(") + p + ", " + name + ")";
        op.run = [this, p, name, follow](int s) {
          std::string path = Full(s, p);
          return Sys(follow ? removexattr(path.c_str(), name.c_str())
                            : lremovexattr(path.c_str(), name.c_str()),
                     "removexattr");
        };
        break;
      }
      case Kind::kListXattr: {
        std::string p = PickPath(Want::kAny);
        bool follow = rng_.Chance(50);
        op.desc = std::string(follow ? "listxattr(" : "llistxattr(") + p + ")";
        op.run = [this, p, follow](int s) { return ListXattrNames(Full(s, p), follow, false); };
        break;
      }
      case Kind::kStat: {
        std::string p = PickPath(Want::kAny);
        bool follow = rng_.Chance(50);
        op.desc = std::string(follow ? "stat(" : "lstat(") + p + ")";
        op.run = [this, p, follow](int s) { return StatRes(Full(s, p), follow); };
        break;
      }
      case Kind::kFallocate: {
        std::string p = PickPath(Want::kFile);
        uint64_t off = RandomOffset(LocalSize(p));
        uint64_t len = rng_.Chance(5) ? 0 : rng_.Range(1, 256 * 1024);
        op.desc = "fallocate(" + p + ", 0, off " + std::to_string(off) + ", len " +
                  std::to_string(len) + ")";
        op.fallocate = true;
        op.run = [this, p, off, len](int s) {
          return WithFd(Full(s, p), O_WRONLY, 0, [&](int fd) {
            Res r = Sys(fallocate(fd, 0, static_cast<off_t>(off), static_cast<off_t>(len)),
                        "fallocate");
            struct stat st;
            if (r.rc == 0 && fstat(fd, &st) == 0) r.data = "size=" + std::to_string(st.st_size);
            return r;
          });
        };
        op.after = [this, p, off, len](const Res& m, const Res& l) {
          // Keep the reference in step if only the mount could allocate.
          if (m.rc == 0 && l.rc < 0 && l.err == EOPNOTSUPP &&
              LocalSize(p) < static_cast<off_t>(off + len))
            (void)!truncate(Full(kLocal, p).c_str(), static_cast<off_t>(off + len));
        };
        break;
      }
      case Kind::kReadDir: {
        std::string p = PickPath(Want::kDir);
        op.desc = "readdir(" + p + ")";
        op.run = [this, p](int s) { return ReadDirRes(Full(s, p)); };
        break;
      }
      case Kind::kStatFs: {
        op.desc = "statvfs(.)";
        op.must_succeed = true;
        op.run = [this](int s) {
          struct statvfs sv;
          return Sys(statvfs(root_[s].c_str(), &sv), "statvfs");
        };
        break;
      }
      case Kind::kFdOpen: {
        int slot = FreeSlot();
        std::string p = PickPath(Want::kFile);
        int flags = O_RDWR;
        std::string fl = "O_RDWR";
        if (rng_.Chance(20)) flags |= O_APPEND, fl += "|O_APPEND";
        if (rng_.Chance(20)) flags |= O_CREAT, fl += "|O_CREAT";
        op.desc = "fd_open(slot " + std::to_string(slot) + ", " + p + ", " + fl + ")";
        op.run = [this, slot, p, flags](int s) {
          int fd = open(Full(s, p).c_str(), flags | O_CLOEXEC, 0640);
          Res r = Sys(fd < 0 ? -1 : 0, "open");
          slots_[slot].fd[s] = fd;
          return r;
        };
        op.after = [this, slot, desc = p + " " + fl](const Res& m, const Res& l) {
          Slot& sl = slots_[slot];
          if (m.rc == 0 && l.rc == 0) {
            sl.open = true;
            sl.desc = desc;
            return;
          }
          for (int& fd : sl.fd) {
            if (fd >= 0) close(fd);
            fd = -1;
          }
        };
        break;
      }
      case Kind::kFdClose: {
        int slot = OpenSlot();
        op.desc = "fd_close(" + SlotText(slot) + ")";
        op.run = [this, slot](int s) {
          Res r = Sys(close(slots_[slot].fd[s]), "close");
          slots_[slot].fd[s] = -1;
          return r;
        };
        op.after = [this, slot](const Res&, const Res&) { slots_[slot].open = false; };
        break;
      }
      case Kind::kFdWrite: {
        int slot = OpenSlot();
        uint64_t off = RandomOffset(FdSize(slot));
        std::string data = rng_.Bytes(RandomLen());
        op.desc = "fd_pwrite(" + SlotText(slot) + ", off " + std::to_string(off) + ", len " +
                  std::to_string(data.size()) + ")";
        op.run = [this, slot, off, data = std::move(data)](int s) {
          return Sys(pwrite(slots_[slot].fd[s], data.data(), data.size(), static_cast<off_t>(off)),
                     "pwrite");
        };
        break;
      }
      case Kind::kFdRead: {
        int slot = OpenSlot();
        uint64_t off = RandomOffset(FdSize(slot));
        size_t len = RandomLen();
        op.desc = "fd_pread(" + SlotText(slot) + ", off " + std::to_string(off) + ", len " +
                  std::to_string(len) + ")";
        op.run = [this, slot, off, len](int s) {
          std::string buf(len, '\0');
          Res r = Sys(pread(slots_[slot].fd[s], buf.data(), len, static_cast<off_t>(off)), "pread");
          if (r.rc > 0) r.data.assign(buf.data(), static_cast<size_t>(r.rc));
          return r;
        };
        break;
      }
      case Kind::kFdTruncate: {
        int slot = OpenSlot();
        uint64_t size = RandomSize(FdSize(slot));
        op.desc = "fd_ftruncate(" + SlotText(slot) + ", " + std::to_string(size) + ")";
        op.run = [this, slot, size](int s) {
          return Sys(ftruncate(slots_[slot].fd[s], static_cast<off_t>(size)), "ftruncate");
        };
        break;
      }
      case Kind::kFdStat: {
        int slot = OpenSlot();
        op.desc = "fd_fstat(" + SlotText(slot) + ")";
        op.run = [this, slot](int s) {
          struct stat st;
          Res r = Sys(fstat(slots_[slot].fd[s], &st), "fstat");
          if (r.rc == 0) r.data = StatText(st);
          return r;
        };
        break;
      }
      case Kind::kFdChmod: {
        int slot = OpenSlot();
        mode_t mode = rng_.Pick(kChmodModes);
        op.desc = "fd_fchmod(" + SlotText(slot) + ", " + Oct(mode) + ")";
        op.run = [this, slot, mode](int s) {
          return Sys(fchmod(slots_[slot].fd[s], mode), "fchmod");
        };
        break;
      }
      case Kind::kChown: {
        std::string p = PickPath(Want::kAny);
        const unsigned ids[] = {0, 1000, 65534, static_cast<unsigned>(-1)};
        uid_t uid = rng_.Pick(ids);
        gid_t gid = rng_.Pick(ids);
        bool follow = rng_.Chance(70);
        op.desc = std::string(follow ? "chown(" : "lchown(") + p + ", " +
                  std::to_string(static_cast<int>(uid)) + ", " +
                  std::to_string(static_cast<int>(gid)) + ")";
        op.run = [this, p, uid, gid, follow](int s) {
          std::string path = Full(s, p);
          Res r =
              Sys(follow ? chown(path.c_str(), uid, gid) : lchown(path.c_str(), uid, gid), "chown");
          if (r.rc == 0) {
            // Owner change and the set-id bits it clears.
            Res st = StatRes(path, follow);
            r.data = st.rc == 0 ? st.data : Show(st);
          }
          return r;
        };
        break;
      }
      case Kind::kMmap: {
        // A shared mapping inside the file (never past its end: that would be SIGBUS), written
        // and msync'ed, or read.
        std::string p = PickPath(Want::kFile);
        uint64_t size = static_cast<uint64_t>(LocalSize(p));
        uint64_t off = size >= 4096 ? rng_.Below(size / 4096) * 4096 : 0;
        uint64_t len = std::min<uint64_t>(RandomLen(), size - off);
        bool write = rng_.Chance(50);
        uint64_t at = len ? rng_.Below(len) : 0;  // bytes changed: [at, at + data.size())
        std::string data = write ? rng_.Bytes(rng_.Range(0, len - at)) : std::string();
        op.desc = std::string(write ? "mmap_write(" : "mmap_read(") + p + ", off " +
                  std::to_string(off) + ", len " + std::to_string(len) +
                  (write ? ", bytes " + std::to_string(at) + "+" + std::to_string(data.size())
                         : std::string()) +
                  ")";
        op.run = [this, p, off, len, write, at, data = std::move(data)](int s) {
          return WithFd(Full(s, p), write ? O_RDWR : O_RDONLY, 0, [&](int fd) {
            struct stat st;
            if (fstat(fd, &st) != 0) return Sys(-1, "fstat");
            if (S_ISDIR(st.st_mode)) {  // a directory's size depends on the backing filesystem
              errno = ENODEV;
              return Sys(-1, "mmap");
            }
            if (static_cast<uint64_t>(st.st_size) < off + len) {
              Res r = Sys(0, "fstat");
              r.data = "file shorter than the mapping: size=" + std::to_string(st.st_size);
              return r;
            }
            int prot = PROT_READ | (write ? PROT_WRITE : 0);
            void* m = mmap(nullptr, len, prot, MAP_SHARED, fd, static_cast<off_t>(off));
            if (m == MAP_FAILED) return Sys(-1, "mmap");
            char* c = static_cast<char*>(m);
            Res r;
            if (write) {
              // Raw bytes into the mapping, not a C string.
              // NOLINTNEXTLINE(bugprone-not-null-terminated-result)
              std::memcpy(c + at, data.data(), data.size());
              r = Sys(msync(m, len, MS_SYNC), "msync");
            } else {
              r = Sys(0, "mmap");
              r.data.assign(c, len);
            }
            munmap(m, len);
            return r;
          });
        };
        break;
      }
      case Kind::kCopyRange: {
        std::string from = PickPath(Want::kFile), to = PickPath(Want::kFile);
        uint64_t soff = RandomOffset(LocalSize(from)), doff = RandomOffset(LocalSize(to));
        size_t len = RandomLen();
        op.desc = "copy_file_range(" + from + " off " + std::to_string(soff) + ", " + to + " off " +
                  std::to_string(doff) + ", len " + std::to_string(len) + ")";
        op.run = [this, from, to, soff, doff, len](int s) {
          return WithFd(Full(s, from), O_RDONLY, 0, [&](int in) {
            return WithFd(Full(s, to), O_WRONLY, 0, [&](int out) {
              loff_t a = static_cast<loff_t>(soff), b = static_cast<loff_t>(doff);
              return Sys(copy_file_range(in, &a, out, &b, len, 0), "copy_file_range");
            });
          });
        };
        break;
      }
      case Kind::kFdSync: {
        int slot = OpenSlot();
        bool data_only = rng_.Chance(50);
        op.desc = std::string(data_only ? "fd_fdatasync(" : "fd_fsync(") + SlotText(slot) + ")";
        op.run = [this, slot, data_only](int s) {
          int fd = slots_[slot].fd[s];
          return Sys(data_only ? fdatasync(fd) : fsync(fd), "fsync");
        };
        break;
      }
      case Kind::kPopulate: {
        // A new directory with enough entries (long names) for several READDIR pages.
        std::string p = PickPath(Want::kNew);
        uint64_t n = rng_.Range(100, 600);
        std::vector<std::string> names;
        for (uint64_t i = 0; i < n; i++) {
          std::string name = kManyPrefix + std::to_string(i) + ".";
          names.push_back(name + std::string(rng_.Range(1, 200), 'x'));
        }
        op.desc = "populate(" + p + ", " + std::to_string(n) + " files)";
        op.run = [this, p, names = std::move(names)](int s) {
          std::string dir = Full(s, p);
          Res r = Sys(mkdir(dir.c_str(), 0755), "mkdir");
          if (r.rc < 0) return r;
          for (const auto& name : names) {
            int fd =
                open((dir + "/" + name).c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
            if (fd < 0) return Sys(-1, "create");
            close(fd);
          }
          return Sys(static_cast<long>(names.size()), "populate");
        };
        break;
      }
      case Kind::kRemoveTree: {
        std::string p = PickPath(Want::kDir);
        op.desc = "remove_tree(" + p + ")";
        op.run = [this, p](int s) { return RemoveTree(Full(s, p)); };
        break;
      }
      case Kind::kFdXattr: {
        int slot = OpenSlot();
        std::string name = rng_.Pick(kXattrNames);
        bool set = rng_.Chance(50);
        std::string value = set ? rng_.Bytes(rng_.Range(0, 128)) : std::string();
        op.desc = std::string(set ? "fd_fsetxattr(" : "fd_fgetxattr(") + SlotText(slot) + ", " +
                  name + (set ? ", len " + std::to_string(value.size()) : std::string()) + ")";
        op.run = [this, slot, name, set, value](int s) {
          int fd = slots_[slot].fd[s];
          if (set)
            return Sys(fsetxattr(fd, name.c_str(), value.data(), value.size(), 0), "fsetxattr");
          std::string buf(65536, '\0');
          ssize_t n = fgetxattr(fd, name.c_str(), buf.data(), buf.size());
          Res r = Sys(n, "fgetxattr");
          if (n > 0) r.data.assign(buf.data(), static_cast<size_t>(n));
          return r;
        };
        break;
      }
    }
    return op;
  }

  // "slot N: path flags", marked when the file has no name left (open-unlinked).
  std::string SlotText(int slot) {
    struct stat st;
    std::string s = "slot " + std::to_string(slot) + ": " + slots_[slot].desc;
    if (fstat(slots_[slot].fd[kLocal], &st) == 0 && st.st_nlink == 0) {
      unlinked_fd_ops_++;
      s += " [unlinked]";
    }
    return s;
  }

  off_t FdSize(int slot) {
    struct stat st;
    return fstat(slots_[slot].fd[kLocal], &st) == 0 ? st.st_size : 0;
  }

  uint64_t seed_;
  Rng rng_;
  std::string root_[2];
  Slot slots_[kSlots];
  std::vector<std::string> all_, files_, dirs_, links_;
  std::deque<std::string> history_;
  uint64_t index_ = 0;
  std::map<std::string, uint64_t> counts_, errors_;
  uint64_t unlinked_fd_ops_ = 0;
};

// Walks the export below rel and checks the server's index against it: every non-directory is
// linked as .pohmelfs/ids/<id> (same inode), every directory is recorded in .pohmelfs/dirs/<id>
// as "<parent id>/<name>". Collects the inodes and directory ids seen.
std::string CheckIndexTree(const std::string& exp, const std::string& rel,
                           const std::string& parent_hex, std::set<ino_t>* files,
                           std::set<std::string>* dirs) {
  std::string path = Under(exp, rel);
  std::string name = rel.substr(rel.rfind('/') + 1);
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return path + ": lstat " + ErrName(errno);
  proto::Oid oid;
  if (lgetxattr(path.c_str(), "trusted.pohmelfs.id", oid.b.data(), oid.b.size()) != 16)
    return path + ": no trusted.pohmelfs.id";
  std::string hex = oid.Hex();
  if (!S_ISDIR(st.st_mode)) {
    struct stat ist;
    std::string ipath = exp + "/.pohmelfs/ids/" + hex;
    if (lstat(ipath.c_str(), &ist) != 0 || ist.st_ino != st.st_ino)
      return path + ": index link " + ipath + " missing or not the same inode";
    files->insert(st.st_ino);
    return "";
  }
  char buf[1024];
  std::string dpath = exp + "/.pohmelfs/dirs/" + hex;
  ssize_t n = readlink(dpath.c_str(), buf, sizeof(buf));
  std::string rec = n < 0 ? "<" + ErrName(errno) + ">" : std::string(buf, static_cast<size_t>(n));
  if (rec != parent_hex + "/" + name)
    return path + ": directory record " + dpath + " is '" + rec + "', expected '" + parent_hex +
           "/" + name + "'";
  dirs->insert(hex);
  std::string err;
  for (const auto& c : SortedNames(path, &err)) {
    std::string d = CheckIndexTree(exp, Child(rel, c), hex, files, dirs);
    if (!d.empty()) return d;
  }
  return err;
}

// The whole index: entries for exactly the objects in the tree, no leaked (orphaned) objects.
std::string CheckIndex(const std::string& exp, const std::string& tree) {
  std::set<ino_t> files;
  std::set<std::string> dirs;
  std::string d = CheckIndexTree(exp, tree, proto::Oid::Root().Hex(), &files, &dirs);
  if (!d.empty()) return d;
  std::string err;
  for (const auto& n : SortedNames(exp + "/.pohmelfs/ids", &err)) {
    struct stat st;
    if (lstat((exp + "/.pohmelfs/ids/" + n).c_str(), &st) != 0) continue;
    if (!files.count(st.st_ino))
      return "index entry .pohmelfs/ids/" + n + " (nlink " + std::to_string(st.st_nlink) +
             ") names no object of the tree: leaked";
  }
  for (const auto& n : SortedNames(exp + "/.pohmelfs/dirs", &err)) {
    if (n == proto::Oid::Root().Hex() || n.find(".tmp") != std::string::npos) continue;
    if (!dirs.count(n)) {
      char buf[1024];
      ssize_t len = readlink((exp + "/.pohmelfs/dirs/" + n).c_str(), buf, sizeof(buf));
      return "stale directory record .pohmelfs/dirs/" + n + " -> '" +
             (len < 0 ? std::string("?") : std::string(buf, static_cast<size_t>(len))) + "'";
    }
  }
  return err;
}

class RandomOpsTest : public MountedTest {};

TEST_F(RandomOpsTest, MatchesLocalFilesystem) {
  const uint64_t seed = EnvU64("POHMELFS_RANDOM_SEED", kDefaultSeed);
  const uint64_t ops = EnvU64("POHMELFS_RANDOM_OPS", kDefaultOps);
  SCOPED_TRACE("seed " + Hex64(seed) + ", " + std::to_string(ops) + " operations");
  const std::string local = (scratch_->path() / "local").string();
  ASSERT_EQ(mkdir(local.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(M("tree").c_str(), 0755), 0) << ErrName(errno);
  ASSERT_EQ(mkdir((local + "/tree").c_str(), 0755), 0);

  auto start = std::chrono::steady_clock::now();
  Runner r(seed, M("tree"), local + "/tree");
  bool ok = r.Run(ops) && r.Finish();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("seed %s: %llu operations in %.1f s\n%s\n", Hex64(seed).c_str(),
              static_cast<unsigned long long>(ops), secs, r.Stats().c_str());
  if (!ok) {
    EXPECT_TRUE(server_->Alive()) << "the server died:\n" << server_->Log();
    struct statvfs sv;
    EXPECT_EQ(statvfs(mount_dir().c_str(), &sv), 0)
        << "the mount is gone (pohmelfs-mount crashed?): " << ErrName(errno);
    return;
  }

  // The export holds exactly what the reference holds (modulo the hidden index link).
  std::string d = CompareTrees(E("tree"), local + "/tree", "", 1);
  EXPECT_EQ(d, "") << "export and reference differ";

  // Released handles let the server drop unlinked objects; RELEASE is sent asynchronously.
  std::string idx;
  for (int i = 0; i < 250; i++) {
    idx = CheckIndex(export_dir(), "tree");
    if (idx.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // bounded: 5 s in all
  }
  EXPECT_EQ(idx, "") << "the server's object index does not match the tree";
}

}  // namespace
}  // namespace pohmelfs::testing

namespace pohmelfs::testing {
namespace {

// The same generator on two mounts of one server at once, each in its own subtree: both
// clients cache and delay under their leases, and each sees the other's tree as it is.
TEST_F(RandomOpsTest, TwoMountsOnDisjointSubtrees) {
  const uint64_t seed = EnvU64("POHMELFS_RANDOM_SEED", kDefaultSeed) + 1;
  const uint64_t ops = EnvU64("POHMELFS_RANDOM_OPS", kDefaultOps) / 2;
  SCOPED_TRACE("seeds " + Hex64(seed) + " and " + Hex64(seed + 1));
  const std::string mnt2 = (scratch_->path() / "mnt2").string();
  const std::string local = (scratch_->path() / "local2").string();
  fs::create_directories(mnt2);
  ASSERT_TRUE(
      Mount(server_->uri(), mnt2, (scratch_->path() / "mount2.log").string(), MountOptions()));
  struct Unmounter {
    std::string m;
    ~Unmounter() { Unmount(m); }
  } unmounter{mnt2};
  ASSERT_EQ(mkdir(local.c_str(), 0755), 0);
  for (const char* t : {"/one", "/two"}) ASSERT_EQ(mkdir((local + t).c_str(), 0755), 0);
  ASSERT_EQ(mkdir(M("one").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((mnt2 + "/two").c_str(), 0755), 0);
  bool ok1 = false, ok2 = false;
  // The generator sets the umask per operation: each thread gets its own (unshare CLONE_FS).
  std::thread t1([&] {
    if (unshare(CLONE_FS) != 0) return;
    Runner r(seed, M("one"), local + "/one");
    ok1 = r.Run(ops) && r.Finish();
  });
  std::thread t2([&] {
    if (unshare(CLONE_FS) != 0) return;
    Runner r(seed + 1, mnt2 + "/two", local + "/two");
    ok2 = r.Run(ops) && r.Finish();
  });
  t1.join();
  t2.join();
  ASSERT_TRUE(ok1 && ok2);
  // Each mount sees the other's subtree exactly as the reference holds it.
  EXPECT_EQ(CompareTrees(mnt2 + "/one", local + "/one", "", 0), "");
  EXPECT_EQ(CompareTrees(M("two"), local + "/two", "", 0), "");
  int fd = open(mnt2.c_str(), O_RDONLY | O_DIRECTORY);  // sends the second mount's queue
  ASSERT_GE(fd, 0);
  EXPECT_EQ(fsync(fd), 0);
  close(fd);
  EXPECT_EQ(CompareTrees(E("one"), local + "/one", "", 1), "");
  EXPECT_EQ(CompareTrees(E("two"), local + "/two", "", 1), "");
}

}  // namespace
}  // namespace pohmelfs::testing
