// The kernel client (kclient/pohmelfs.ko) through ordinary syscalls: real pohmelfs-server
// processes on loopback ports, mounts made with mount(2) (type "pohmelfs", source "none", data
// "server=URI,..."), every operation compared byte for byte with what the server stored in
// its export (an ordinary directory tree with the same paths).
//
// Not registered with ctest: it needs the module loaded (insmod kclient/pohmelfs.ko), which
// the host cannot do. ci/qemu-kclient runs it in a qemu guest with Debian's kernel, with
// TMPDIR on an ext4 disk (the exports need user xattrs). By hand, as root with the module
// loaded: TMPDIR=/some/ext4/dir build/bin/kclient_test.
//
// Suites: KclientTest (one server, one mount for the whole suite: every operation),
// KclientTwoServersTest (two servers and exports per test: replication, a killed server, a
// restarted one, permissions), KclientRestartTest (one server killed and restarted on the same
// port and export). Seeds are fixed; every wait is bounded (kRecoveryBound); nothing sleeps to
// synchronise (polling loops have deadlines).
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>

#include "proto/pohmelfs_proto.h"
#include "tests/integration/fixture.h"

namespace pohmelfs::testing {
namespace {

using Clock = std::chrono::steady_clock;

// errno of a call that must fail, or 0 if it succeeded.
#define ERRNO_OF(call) ((call) < 0 ? errno : 0)

constexpr size_t kPage = 4096;
constexpr size_t kMiB = size_t{1} << 20;
// The longest any single operation may take to succeed again after a server was killed or
// restarted (failover, reconnect). The FUSE client's bound with its defaults is
// (trans_retries + 1) * trans_scan_timeout = 20 s; this leaves room for TCG.
constexpr auto kRecoveryBound = std::chrono::seconds(60);

// --- data helpers

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return s;
}

// "" when equal, else the sizes and the first differing offset (never megabytes of bytes).
std::string Diff(const std::string& got, const std::string& want) {
  if (got == want) return "";
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) i++;
  return "got " + std::to_string(got.size()) + " bytes, want " + std::to_string(want.size()) +
         ", first difference at offset " + std::to_string(i);
}
#define EXPECT_SAME_BYTES(got, want) EXPECT_EQ(Diff(got, want), "")

std::string ErrnoText(int err) {
  return std::to_string(err) + " (" + std::strerror(err) + ")";
}

// Reads a whole file with read(2) in 128 KiB calls; sets *err to errno on failure.
std::string ReadAll(const std::string& path, int* err = nullptr) {
  std::string out;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (err) *err = errno;
    return out;
  }
  std::vector<char> buf(128 * 1024);
  for (;;) {
    ssize_t n = read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (err) *err = errno;
      break;
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

bool WriteAllFd(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

bool PwriteAll(int fd, const char* p, size_t n, off_t off) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
    off += w;
  }
  return true;
}

std::string PreadAll(int fd, size_t n, off_t off) {
  std::string out(n, '\0');
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, out.data() + done, n - done, off + static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    done += static_cast<size_t>(r);
  }
  out.resize(done);
  return out;
}

void WriteFile(const std::string& path, const std::string& data, int flags = O_TRUNC) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);
  ASSERT_GE(fd, 0) << path << ": " << ErrnoText(errno);
  ASSERT_TRUE(WriteAllFd(fd, data)) << path << ": " << ErrnoText(errno);
  ASSERT_EQ(close(fd), 0) << path << ": " << ErrnoText(errno);
}

// Names in a directory (without . and ..), sorted; readdir(3), so getdents64 underneath.
std::vector<std::string> ListDir(const std::string& dir, bool with_dots = false) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (!with_dots && (name == "." || name == "..")) continue;
    names.push_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string XattrOf(const std::string& path, const std::string& name, int* err = nullptr) {
  std::string value(POHMELFS_XATTR_SIZE_MAX, '\0');
  ssize_t n = lgetxattr(path.c_str(), name.c_str(), value.data(), value.size());
  if (n < 0) {
    if (err) *err = errno;
    return "";
  }
  value.resize(static_cast<size_t>(n));
  return value;
}

std::set<std::string> XattrNames(const std::string& path) {
  std::set<std::string> names;
  std::string list(POHMELFS_XATTR_SIZE_MAX, '\0');
  ssize_t n = llistxattr(path.c_str(), list.data(), list.size());
  for (ssize_t i = 0; i < n;) {
    std::string name(list.data() + i);
    i += static_cast<ssize_t>(name.size()) + 1;
    names.insert(name);
  }
  return names;
}

// Polls fn (an operation that may fail for a while) until it returns true, at most bound.
template <typename Fn>
bool Eventually(Fn fn, std::chrono::seconds bound = kRecoveryBound) {
  auto deadline = Clock::now() + bound;
  for (;;) {
    if (fn()) return true;
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // polling, bounded
  }
}

// --- servers, mounts and caches

// Servers: ServerProcess (tests/integration/fixture.h) on a port of the kernel's choice at the
// first start and on the same port (and export) after Restart(); Stop(SIGKILL) kills and reaps.
const std::vector<std::string> kServerArgs = {"--allow", "127.0.0.0/8=rw"};

// POHMELFS_KCLIENT_TEST_FUSE=1 mounts with pohmelfs-mount (FUSE) instead of mount(2): a check
// of the tests themselves on a host without the module. Expected differences then: the statfs
// magic (FUSE's) and whatever the FUSE client does differently from the spec.
bool ViaFuse() {
  const char* v = std::getenv("POHMELFS_KCLIENT_TEST_FUSE");
  return v != nullptr && std::string(v) == "1";
}

// mount(2) of the servers (URIs with their ?prio=&perm= parts) with more options (",a=b,...")
// for the kernel client; returns 0 or errno.
int KernelMount(const std::string& mnt, const std::vector<std::string>& servers,
                const std::string& more_options = "") {
  if (ViaFuse()) {
    std::string uris;
    for (const auto& s : servers) uris += (uris.empty() ? "" : ",") + s;
    return Mount(uris, mnt, mnt + "-fuse.log") ? 0 : EIO;
  }
  std::string data;
  for (const auto& s : servers) data += (data.empty() ? "server=" : ",server=") + s;
  data += more_options;
  return mount("none", mnt.c_str(), "pohmelfs", 0, data.c_str()) == 0 ? 0 : errno;
}

bool IsPohmelfsMount(const std::string& mnt) {
  std::string mounts = ReadFile("/proc/mounts");
  return mounts.find(" " + mnt + (ViaFuse() ? " fuse.pohmelfs " : " pohmelfs ")) !=
         std::string::npos;
}

// umount2(2), retried while busy (a closing descriptor may still hold it), bounded; lazily
// detached if it stays busy, which counts as a failure.
bool KernelUnmount(const std::string& mnt) {
  bool ok = Eventually([&] { return umount2(mnt.c_str(), 0) == 0 || errno != EBUSY; },
                       std::chrono::seconds(10));
  if (ok && !IsPohmelfsMount(mnt)) return true;
  umount2(mnt.c_str(), MNT_DETACH);
  return false;
}

// Writes back everything dirty on the mount (syncfs).
void SyncMount(const std::string& mnt) {
  int fd = open(mnt.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  EXPECT_EQ(syncfs(fd), 0) << ErrnoText(errno);
  if (ViaFuse()) (void)fsync(fd);  // the FUSE client's delayed metadata
  close(fd);
}

// Writes back, then drops the page cache, dentries and inodes, so reads go to the server.
void DropCaches(const std::string& mnt) {
  SyncMount(mnt);
  sync();
  int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << ErrnoText(errno);
  ASSERT_EQ(write(fd, "3", 1), 1) << ErrnoText(errno);
  close(fd);
}

bool ModuleLoaded() {
  return ViaFuse() || ReadFile("/proc/filesystems").find("\tpohmelfs\n") != std::string::npos;
}

std::string CurrentTestName() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return info ? std::string(info->test_suite_name()) + "-" + info->name()
              : ::testing::UnitTest::GetInstance()->current_test_suite()->name();
}

// --- a tree as stored: what a mount shows and what each export holds must be equal

struct Node {
  char type = '?';  // f, d, l
  mode_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string data;                           // file contents or symlink target
  std::map<std::string, std::string> xattrs;  // user.* only
  bool operator==(const Node& o) const {
    return type == o.type && mode == o.mode && uid == o.uid && gid == o.gid && data == o.data &&
           xattrs == o.xattrs;
  }
};
using Tree = std::map<std::string, Node>;

// Every object below root (the export's hidden .pohmelfs folder left out).
Tree Snapshot(const std::string& root) {
  Tree tree;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::string rel = it->path().lexically_relative(root).string();  // symlinks not resolved
    if (rel == ".pohmelfs") {
      it.disable_recursion_pending();
      continue;
    }
    std::string path = it->path().string();
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) continue;
    Node n;
    n.mode = st.st_mode & 07777;
    n.uid = st.st_uid;
    n.gid = st.st_gid;
    if (S_ISREG(st.st_mode)) {
      n.type = 'f';
      n.data = ReadAll(path);
    } else if (S_ISDIR(st.st_mode)) {
      n.type = 'd';
    } else if (S_ISLNK(st.st_mode)) {
      n.type = 'l';
      n.data = fs::read_symlink(path, ec).string();
    }
    if (!S_ISLNK(st.st_mode)) {
      for (const auto& name : XattrNames(path))
        if (name.rfind("user.", 0) == 0) n.xattrs[name] = XattrOf(path, name);
    }
    tree[rel] = n;
  }
  return tree;
}

std::string Paths(const Tree& tree) {
  std::string out;
  for (const auto& [path, node] : tree) out += path + " ";
  return out;
}

// "" when equal, else the first path that differs.
std::string TreeDiff(const Tree& got, const Tree& want) {
  for (const auto& [path, node] : want) {
    auto it = got.find(path);
    if (it == got.end()) return path + ": missing";
    if (!(it->second == node)) {
      const Node& g = it->second;
      return path + ": differs (type " + g.type + "/" + node.type + ", mode " +
             std::to_string(g.mode) + "/" + std::to_string(node.mode) + ", data " +
             Diff(g.data, node.data) + ", xattrs " + std::to_string(g.xattrs.size()) + "/" +
             std::to_string(node.xattrs.size()) + ")";
    }
  }
  for (const auto& [path, node] : got)
    if (!want.count(path)) return path + ": unexpected";
  return "";
}

// ============================================================================================
// One server, one mount for the whole suite.

class KclientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    umask(0);
    ASSERT_TRUE(ModuleLoaded()) << "pohmelfs is not in /proc/filesystems: insmod the module";
    scratch_ = new ScratchDir("kclient");
    fs::create_directories(scratch_->path() / "export");
    fs::create_directories(scratch_->path() / "mnt");
    server_ = new ServerProcess();
    ASSERT_TRUE(
        server_->Start(export_root(), (scratch_->path() / "server.log").string(), kServerArgs))
        << server_->Log();
    int err = KernelMount(mount_root(), {server_->uri()});
    ASSERT_EQ(err, 0) << "mount: " << ErrnoText(err);
    mounted_ = true;
  }
  static void TearDownTestSuite() {
    if (mounted_) {
      EXPECT_TRUE(KernelUnmount(mount_root())) << "umount2 failed";
    }
    mounted_ = false;
    if (server_) {
      EXPECT_TRUE(server_->Stop()) << "server did not exit cleanly on SIGTERM";
    }
    delete server_;
    server_ = nullptr;
    delete scratch_;
    scratch_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(mounted_); }

  static std::string export_root() { return (scratch_->path() / "export").string(); }
  static std::string mount_root() { return (scratch_->path() / "mnt").string(); }
  static std::string M(const std::string& rel) { return mount_root() + "/" + rel; }
  // A path in the export, after everything dirty on the mount was written back.
  static std::string X(const std::string& rel) {
    SyncMount(mount_root());
    return Raw(rel);
  }
  // A path in the export as it is now (nothing written back first).
  static std::string Raw(const std::string& rel) { return export_root() + "/" + rel; }
  static void Drop() { DropCaches(mount_root()); }

  static inline ScratchDir* scratch_ = nullptr;
  static inline ServerProcess* server_ = nullptr;
  static inline bool mounted_ = false;
};

TEST_F(KclientTest, MountIsListedAndTheRootIsADirectory) {
  EXPECT_TRUE(IsPohmelfsMount(mount_root())) << ReadFile("/proc/mounts");
  struct stat st;
  ASSERT_EQ(stat(mount_root().c_str(), &st), 0) << ErrnoText(errno);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(ListDir(mount_root()), std::vector<std::string>{})
      << "the export's .pohmelfs folder must stay hidden";
  // A second mount of the same server on another mountpoint sees the same tree.
  std::string other = (scratch_->path() / "mnt2").string();
  fs::create_directories(other);
  WriteFile(M("seen-by-both"), "both");
  ASSERT_EQ(KernelMount(other, {server_->uri()}), 0);
  EXPECT_EQ(ReadFile(other + "/seen-by-both"), "both");
  EXPECT_TRUE(KernelUnmount(other));
  ASSERT_EQ(unlink(M("seen-by-both").c_str()), 0);
}

TEST_F(KclientTest, LookupOfExistingAndMissingNames) {
  WriteFile(M("exists"), "here");
  struct stat st;
  EXPECT_EQ(stat(M("exists").c_str(), &st), 0) << ErrnoText(errno);
  EXPECT_EQ(ERRNO_OF(stat(M("missing").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(stat(M("missing/below").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(stat(M("exists/below").c_str(), &st)), ENOTDIR);
  EXPECT_EQ(ERRNO_OF(open(M("missing").c_str(), O_RDONLY)), ENOENT);
  // A negative lookup is not remembered past the object's creation (here on the server
  // directly: an object put into the export by other means gets an id when looked up).
  EXPECT_EQ(ERRNO_OF(stat(M("made-on-server").c_str(), &st)), ENOENT);
  WriteFile(Raw("made-on-server"), "from the export");
  EXPECT_TRUE(Eventually([&] { return stat(M("made-on-server").c_str(), &st) == 0; },
                         std::chrono::seconds(10)))
      << "a name created on the server stays invisible";
  EXPECT_EQ(ReadFile(M("made-on-server")), "from the export");
}

TEST_F(KclientTest, GetattrMatchesTheExport) {
  std::string data = RandomBytes(100000, 1);
  WriteFile(M("attrs"), data);
  SyncMount(mount_root());
  Drop();  // attributes as the server has them, not as the page cache's writes left them
  struct stat st, est;
  ASSERT_EQ(stat(M("attrs").c_str(), &st), 0) << ErrnoText(errno);
  ASSERT_EQ(stat(X("attrs").c_str(), &est), 0) << ErrnoText(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
  EXPECT_EQ(st.st_size, est.st_size);
  EXPECT_EQ(st.st_mode, est.st_mode);
  EXPECT_EQ(st.st_uid, est.st_uid);
  EXPECT_EQ(st.st_gid, est.st_gid);
  EXPECT_EQ(st.st_nlink, 1u);  // the server's index link (in .pohmelfs/ids) is not counted
  EXPECT_EQ(st.st_mtim.tv_sec, est.st_mtim.tv_sec);
  EXPECT_EQ(st.st_mtim.tv_nsec, est.st_mtim.tv_nsec);
  EXPECT_GE(st.st_blocks * 512, static_cast<blkcnt_t>(data.size()) / 2);
  EXPECT_GT(st.st_blksize, 0);
  struct stat dst;
  ASSERT_EQ(stat(mount_root().c_str(), &dst), 0);
  EXPECT_TRUE(S_ISDIR(dst.st_mode));
  EXPECT_GE(dst.st_nlink, 2u);
}

TEST_F(KclientTest, SetattrModeOwnerSizeAndTimes) {
  std::string data = RandomBytes(10000, 2);
  WriteFile(M("setattr"), data);
  ASSERT_EQ(chmod(M("setattr").c_str(), 0751), 0) << ErrnoText(errno);
  ASSERT_EQ(chown(M("setattr").c_str(), 1234, 5678), 0) << ErrnoText(errno);
  timespec ts[2] = {{1000000000, 123456789}, {1100000000, 987654321}};
  ASSERT_EQ(utimensat(AT_FDCWD, M("setattr").c_str(), ts, 0), 0) << ErrnoText(errno);
  struct stat st, est;
  ASSERT_EQ(stat(M("setattr").c_str(), &st), 0);
  ASSERT_EQ(stat(X("setattr").c_str(), &est), 0);
  for (const struct stat* s : {&st, &est}) {
    EXPECT_EQ(s->st_mode & 07777, 0751u);
    EXPECT_EQ(s->st_uid, 1234u);
    EXPECT_EQ(s->st_gid, 5678u);
    EXPECT_EQ(s->st_atim.tv_sec, 1000000000);
    EXPECT_EQ(s->st_atim.tv_nsec, 123456789);
    EXPECT_EQ(s->st_mtim.tv_sec, 1100000000);
    EXPECT_EQ(s->st_mtim.tv_nsec, 987654321);
  }
  // Truncate down, then up (the gap reads as zeros), by path and by descriptor.
  ASSERT_EQ(truncate(M("setattr").c_str(), 3000), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(M("setattr")), data.substr(0, 3000));
  EXPECT_SAME_BYTES(ReadFile(X("setattr")), data.substr(0, 3000));
  int fd = open(M("setattr").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 9000), 0) << ErrnoText(errno);
  std::string want = data.substr(0, 3000) + std::string(6000, '\0');
  EXPECT_SAME_BYTES(PreadAll(fd, 20000, 0), want);
  ASSERT_EQ(ftruncate(fd, 4097), 0) << ErrnoText(errno);  // inside a page, past the first
  want.resize(4097);
  ASSERT_EQ(close(fd), 0);
  EXPECT_SAME_BYTES(ReadFile(X("setattr")), want);
  Drop();
  EXPECT_SAME_BYTES(ReadFile(M("setattr")), want);
  ASSERT_EQ(stat(M("setattr").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 4097);
  // Times set to now.
  struct timespec before;
  clock_gettime(CLOCK_REALTIME, &before);
  ASSERT_EQ(utimensat(AT_FDCWD, M("setattr").c_str(), nullptr, 0), 0);
  ASSERT_EQ(stat(M("setattr").c_str(), &st), 0);
  EXPECT_GE(st.st_mtim.tv_sec, before.tv_sec - 1);
  ASSERT_EQ(stat(X("setattr").c_str(), &est), 0);
  EXPECT_EQ(est.st_mtim.tv_sec, st.st_mtim.tv_sec);
  // A directory's mode.
  ASSERT_EQ(mkdir(M("setattr-dir").c_str(), 0700), 0);
  ASSERT_EQ(chmod(M("setattr-dir").c_str(), 0755), 0);
  ASSERT_EQ(stat(X("setattr-dir").c_str(), &est), 0);
  EXPECT_EQ(est.st_mode & 07777, 0755u);
}

TEST_F(KclientTest, ReaddirOfThreeThousandEntriesAndOfAnEmptyDirectory) {
  ASSERT_EQ(mkdir(M("big").c_str(), 0755), 0) << ErrnoText(errno);
  constexpr int kEntries = 3000;  // many READDIR replies
  std::vector<std::string> want;
  for (int i = 0; i < kEntries; i++) {
    // Names of 6 to 60 bytes, so that the padded entries are not all of one size.
    std::string name = "e" + std::to_string(10000 + i) + std::string(i % 55, 'x');
    want.push_back(name);
    int fd = open(M("big/" + name).c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    ASSERT_GE(fd, 0) << name << ": " << ErrnoText(errno);
    close(fd);
  }
  ASSERT_EQ(mkdir(M("big/subdir").c_str(), 0755), 0);
  want.emplace_back("subdir");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(ListDir(M("big")), want);
  EXPECT_EQ(ListDir(X("big")), want);
  // Types, and the dot entries, once each.
  DIR* d = opendir(M("big").c_str());
  ASSERT_NE(d, nullptr);
  int dots = 0, dirs = 0, regs = 0;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") {
      dots++;
      continue;
    }
    if (e->d_type == DT_DIR) dirs++;
    if (e->d_type == DT_REG) regs++;
  }
  closedir(d);
  EXPECT_EQ(dots, 2);
  EXPECT_EQ(dirs, 1);
  EXPECT_EQ(regs, kEntries);
  // Cold (nothing cached), the same.
  Drop();
  EXPECT_EQ(ListDir(M("big")), want);
  struct stat st;
  ASSERT_EQ(stat(M("big").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 3u);  // ., the parent's entry, subdir's ..

  // Unlinked again (the later tests' listings stay small), then the directory itself.
  EXPECT_EQ(ERRNO_OF(rmdir(M("big").c_str())), ENOTEMPTY);
  for (const auto& name : want) {
    int rc = name == "subdir" ? rmdir(M("big/" + name).c_str()) : unlink(M("big/" + name).c_str());
    ASSERT_EQ(rc, 0) << name << ": " << ErrnoText(errno);
  }
  EXPECT_EQ(ListDir(M("big")), std::vector<std::string>{});
  EXPECT_EQ(ListDir(X("big")), std::vector<std::string>{});
  ASSERT_EQ(rmdir(M("big").c_str()), 0) << ErrnoText(errno);

  ASSERT_EQ(mkdir(M("empty").c_str(), 0755), 0);
  EXPECT_EQ(ListDir(M("empty"), true), (std::vector<std::string>{".", ".."}));
  Drop();
  EXPECT_EQ(ListDir(M("empty"), true), (std::vector<std::string>{".", ".."}));
}

TEST_F(KclientTest, CreateExclusive) {
  int fd = open(M("excl").c_str(), O_RDWR | O_CREAT | O_EXCL, 0640);
  ASSERT_GE(fd, 0) << ErrnoText(errno);
  ASSERT_TRUE(WriteAllFd(fd, "first"));
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(ERRNO_OF(open(M("excl").c_str(), O_RDWR | O_CREAT | O_EXCL, 0640)), EEXIST);
  fd = open(M("excl").c_str(), O_RDWR | O_CREAT, 0600);  // exists: opened, mode unchanged
  ASSERT_GE(fd, 0) << ErrnoText(errno);
  close(fd);
  struct stat est;
  ASSERT_EQ(stat(X("excl").c_str(), &est), 0) << ErrnoText(errno);
  EXPECT_TRUE(S_ISREG(est.st_mode));
  EXPECT_EQ(est.st_mode & 07777, 0640u);
  EXPECT_EQ(ReadFile(X("excl")), "first");
  EXPECT_EQ(ERRNO_OF(open(M("no-dir/x").c_str(), O_RDWR | O_CREAT, 0644)), ENOENT);
  EXPECT_EQ(ERRNO_OF(open(M("excl/x").c_str(), O_RDWR | O_CREAT, 0644)), ENOTDIR);
  // O_TRUNC on an existing file.
  fd = open(M("excl").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_EQ(ReadFile(X("excl")), "");
}

TEST_F(KclientTest, MkdirUnlinkRmdir) {
  ASSERT_EQ(mkdir(M("d1").c_str(), 0750), 0) << ErrnoText(errno);
  EXPECT_EQ(ERRNO_OF(mkdir(M("d1").c_str(), 0750)), EEXIST);
  ASSERT_EQ(mkdir(M("d1/d2").c_str(), 0700), 0);
  ASSERT_EQ(mkdir(M("d1/d2/d3").c_str(), 0777), 0);
  WriteFile(M("d1/d2/d3/f"), "deep");
  struct stat est;
  ASSERT_EQ(stat(X("d1").c_str(), &est), 0);
  EXPECT_TRUE(S_ISDIR(est.st_mode));
  EXPECT_EQ(est.st_mode & 07777, 0750u);
  EXPECT_EQ(ReadFile(X("d1/d2/d3/f")), "deep");
  EXPECT_EQ(ERRNO_OF(rmdir(M("d1").c_str())), ENOTEMPTY);
  EXPECT_EQ(ERRNO_OF(rmdir(M("d1/d2/d3").c_str())), ENOTEMPTY);
  EXPECT_EQ(ERRNO_OF(unlink(M("d1/d2").c_str())), EISDIR);
  EXPECT_EQ(ERRNO_OF(rmdir(M("d1/d2/d3/f").c_str())), ENOTDIR);
  EXPECT_EQ(ERRNO_OF(unlink(M("d1/missing").c_str())), ENOENT);
  EXPECT_EQ(ERRNO_OF(rmdir(M("d1/missing").c_str())), ENOENT);
  ASSERT_EQ(unlink(M("d1/d2/d3/f").c_str()), 0) << ErrnoText(errno);
  struct stat st;
  EXPECT_EQ(ERRNO_OF(stat(M("d1/d2/d3/f").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(lstat(X("d1/d2/d3/f").c_str(), &st)), ENOENT);
  ASSERT_EQ(rmdir(M("d1/d2/d3").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(rmdir(M("d1/d2").c_str()), 0);
  ASSERT_EQ(rmdir(M("d1").c_str()), 0);
  EXPECT_EQ(ERRNO_OF(lstat(X("d1").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(stat(M("d1").c_str(), &st)), ENOENT);
}

TEST_F(KclientTest, Rename) {
  ASSERT_EQ(mkdir(M("ra").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(M("rb").c_str(), 0755), 0);
  std::string one = RandomBytes(5000, 3), two = RandomBytes(7000, 4);
  // Plain, in one directory.
  WriteFile(M("ra/one"), one);
  ASSERT_EQ(rename(M("ra/one").c_str(), M("ra/uno").c_str()), 0) << ErrnoText(errno);
  struct stat st;
  EXPECT_EQ(ERRNO_OF(stat(M("ra/one").c_str(), &st)), ENOENT);
  EXPECT_SAME_BYTES(ReadFile(M("ra/uno")), one);
  EXPECT_SAME_BYTES(ReadFile(X("ra/uno")), one);
  EXPECT_EQ(ERRNO_OF(lstat(Raw("ra/one").c_str(), &st)), ENOENT);
  // Across directories.
  ASSERT_EQ(rename(M("ra/uno").c_str(), M("rb/eins").c_str()), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(M("rb/eins")), one);
  EXPECT_SAME_BYTES(ReadFile(X("rb/eins")), one);
  EXPECT_EQ(ListDir(X("ra")), std::vector<std::string>{});
  // Over an existing file: the target's old contents are gone.
  WriteFile(M("rb/zwei"), two);
  ASSERT_EQ(rename(M("rb/eins").c_str(), M("rb/zwei").c_str()), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(M("rb/zwei")), one);
  EXPECT_SAME_BYTES(ReadFile(X("rb/zwei")), one);
  EXPECT_EQ(ListDir(X("rb")), std::vector<std::string>{"zwei"});
  // RENAME_NOREPLACE.
  WriteFile(M("rb/drei"), two);
  EXPECT_EQ(ERRNO_OF(renameat2(AT_FDCWD, M("rb/drei").c_str(), AT_FDCWD, M("rb/zwei").c_str(),
                               RENAME_NOREPLACE)),
            EEXIST);
  EXPECT_SAME_BYTES(ReadFile(X("rb/zwei")), one);
  EXPECT_SAME_BYTES(ReadFile(X("rb/drei")), two);
  ASSERT_EQ(
      renameat2(AT_FDCWD, M("rb/drei").c_str(), AT_FDCWD, M("ra/vier").c_str(), RENAME_NOREPLACE),
      0)
      << ErrnoText(errno);
  // RENAME_EXCHANGE: two files, then a file and a directory.
  ASSERT_EQ(
      renameat2(AT_FDCWD, M("ra/vier").c_str(), AT_FDCWD, M("rb/zwei").c_str(), RENAME_EXCHANGE), 0)
      << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(M("ra/vier")), one);
  EXPECT_SAME_BYTES(ReadFile(M("rb/zwei")), two);
  EXPECT_SAME_BYTES(ReadFile(X("ra/vier")), one);
  EXPECT_SAME_BYTES(ReadFile(X("rb/zwei")), two);
  ASSERT_EQ(mkdir(M("ra/sub").c_str(), 0755), 0);
  WriteFile(M("ra/sub/inner"), "inner");
  ASSERT_EQ(
      renameat2(AT_FDCWD, M("ra/sub").c_str(), AT_FDCWD, M("rb/zwei").c_str(), RENAME_EXCHANGE), 0)
      << ErrnoText(errno);
  EXPECT_EQ(ReadFile(M("rb/zwei/inner")), "inner");
  EXPECT_SAME_BYTES(ReadFile(M("ra/sub")), two);
  EXPECT_EQ(ReadFile(X("rb/zwei/inner")), "inner");
  EXPECT_SAME_BYTES(ReadFile(X("ra/sub")), two);
  // A directory moved across directories keeps its contents.
  ASSERT_EQ(rename(M("rb/zwei").c_str(), M("ra/moved").c_str()), 0) << ErrnoText(errno);
  EXPECT_EQ(ReadFile(M("ra/moved/inner")), "inner");
  EXPECT_EQ(ReadFile(X("ra/moved/inner")), "inner");
  // Errors.
  ASSERT_EQ(mkdir(M("rb/full").c_str(), 0755), 0);
  WriteFile(M("rb/full/x"), "x");
  EXPECT_EQ(ERRNO_OF(rename(M("ra/moved").c_str(), M("rb/full").c_str())), ENOTEMPTY);
  EXPECT_EQ(ERRNO_OF(rename(M("ra/moved").c_str(), M("ra/sub").c_str())), ENOTDIR);
  EXPECT_EQ(ERRNO_OF(rename(M("ra/sub").c_str(), M("ra/moved").c_str())), EISDIR);
  EXPECT_EQ(ERRNO_OF(rename(M("ra/missing").c_str(), M("ra/x").c_str())), ENOENT);
  EXPECT_EQ(ListDir(X("ra")), (std::vector<std::string>{"moved", "sub", "vier"}));
}

TEST_F(KclientTest, HardLink) {
  std::string data = RandomBytes(20000, 5);
  WriteFile(M("link-a"), data);
  ASSERT_EQ(link(M("link-a").c_str(), M("link-b").c_str()), 0) << ErrnoText(errno);
  struct stat a, b;
  ASSERT_EQ(stat(M("link-a").c_str(), &a), 0);
  ASSERT_EQ(stat(M("link-b").c_str(), &b), 0);
  EXPECT_EQ(a.st_nlink, 2u);
  EXPECT_EQ(b.st_nlink, 2u);
  EXPECT_EQ(a.st_ino, b.st_ino);
  // A write through one name is read through the other, here and on the server.
  int fd = open(M("link-b").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(PwriteAll(fd, "CHANGED", 7, 100));
  ASSERT_EQ(close(fd), 0);
  data.replace(100, 7, "CHANGED");
  EXPECT_SAME_BYTES(ReadFile(M("link-a")), data);
  struct stat ea, eb;
  ASSERT_EQ(stat(X("link-a").c_str(), &ea), 0);
  ASSERT_EQ(stat(Raw("link-b").c_str(), &eb), 0);
  EXPECT_EQ(ea.st_ino, eb.st_ino);
  EXPECT_SAME_BYTES(ReadFile(Raw("link-a")), data);
  Drop();
  EXPECT_SAME_BYTES(ReadFile(M("link-a")), data);
  EXPECT_SAME_BYTES(ReadFile(M("link-b")), data);
  EXPECT_EQ(ERRNO_OF(link(M("link-a").c_str(), M("link-b").c_str())), EEXIST);
  ASSERT_EQ(mkdir(M("link-dir").c_str(), 0755), 0);
  EXPECT_EQ(ERRNO_OF(link(M("link-dir").c_str(), M("link-dir2").c_str())), EPERM);
  ASSERT_EQ(unlink(M("link-a").c_str()), 0);
  ASSERT_EQ(stat(M("link-b").c_str(), &b), 0);
  EXPECT_EQ(b.st_nlink, 1u);
  EXPECT_SAME_BYTES(ReadFile(M("link-b")), data);
  EXPECT_SAME_BYTES(ReadFile(X("link-b")), data);
}

TEST_F(KclientTest, SymlinkAndReadlink) {
  WriteFile(M("sl-target"), "through the link");
  ASSERT_EQ(symlink("sl-target", M("sl").c_str()), 0) << ErrnoText(errno);
  std::string dangling = "../nowhere/" + std::string(900, 'n');  // a long target
  ASSERT_EQ(symlink(dangling.c_str(), M("sl-dangling").c_str()), 0) << ErrnoText(errno);
  char buf[4096];
  ssize_t n = readlink(M("sl").c_str(), buf, sizeof(buf));
  ASSERT_GT(n, 0) << ErrnoText(errno);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "sl-target");
  n = readlink(M("sl-dangling").c_str(), buf, sizeof(buf));
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), dangling);
  struct stat st;
  ASSERT_EQ(lstat(M("sl").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(st.st_size, 9);
  EXPECT_EQ(ReadFile(M("sl")), "through the link");
  EXPECT_EQ(ERRNO_OF(stat(M("sl-dangling").c_str(), &st)), ENOENT);
  EXPECT_EQ(fs::read_symlink(X("sl")).string(), "sl-target");
  EXPECT_EQ(fs::read_symlink(Raw("sl-dangling")).string(), dangling);
  EXPECT_EQ(ERRNO_OF(symlink("x", M("sl").c_str())), EEXIST);
  EXPECT_EQ(ERRNO_OF(readlink(M("sl-target").c_str(), buf, sizeof(buf))), EINVAL);
  Drop();
  n = readlink(M("sl").c_str(), buf, sizeof(buf));
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "sl-target");
}

TEST_F(KclientTest, Statfs) {
  struct statfs sf;
  ASSERT_EQ(statfs(mount_root().c_str(), &sf), 0) << ErrnoText(errno);
  // The superblock magic is the protocol's (proto/pohmelfs_proto.h).
  EXPECT_EQ(static_cast<uint32_t>(sf.f_type), POHMELFS_MAGIC);
  EXPECT_GT(sf.f_bsize, 0);
  EXPECT_GT(sf.f_blocks, 0u);
  EXPECT_LE(sf.f_bfree, sf.f_blocks);
  EXPECT_LE(sf.f_bavail, sf.f_bfree);
  EXPECT_GT(sf.f_files, 0u);
  EXPECT_LE(sf.f_ffree, sf.f_files);
  EXPECT_EQ(sf.f_namelen, static_cast<long>(POHMELFS_NAME_MAX));
  // The server reports its export's file system: the same size.
  struct statvfs mv, ev;
  ASSERT_EQ(statvfs(mount_root().c_str(), &mv), 0);
  ASSERT_EQ(statvfs(export_root().c_str(), &ev), 0);
  EXPECT_EQ(static_cast<uint64_t>(mv.f_blocks) * mv.f_frsize,
            static_cast<uint64_t>(ev.f_blocks) * ev.f_frsize);
  EXPECT_EQ(mv.f_files, ev.f_files);
}

TEST_F(KclientTest, Xattrs) {
  WriteFile(M("xa"), "x");
  std::string bin("\0\1\2value\xff", 9);
  std::string big = RandomBytes(2000, 6);  // past the inode's room, within ext4's one block
  ASSERT_EQ(setxattr(M("xa").c_str(), "user.one", "value1", 6, 0), 0) << ErrnoText(errno);
  ASSERT_EQ(setxattr(M("xa").c_str(), "user.bin", bin.data(), bin.size(), 0), 0);
  ASSERT_EQ(setxattr(M("xa").c_str(), "user.big", big.data(), big.size(), 0), 0)
      << ErrnoText(errno);
  ASSERT_EQ(setxattr(M("xa").c_str(), "user.empty", "", 0, 0), 0);
  EXPECT_EQ(XattrOf(M("xa"), "user.one"), "value1");
  EXPECT_EQ(XattrOf(M("xa"), "user.bin"), bin);
  EXPECT_SAME_BYTES(XattrOf(M("xa"), "user.big"), big);
  EXPECT_EQ(getxattr(M("xa").c_str(), "user.big", nullptr, 0), 2000);  // the size
  char small[2];
  EXPECT_EQ(ERRNO_OF(getxattr(M("xa").c_str(), "user.one", small, sizeof(small))), ERANGE);
  std::set<std::string> names = {"user.big", "user.bin", "user.empty", "user.one"};
  EXPECT_EQ(XattrNames(M("xa")), names);  // trusted.pohmelfs.* never listed
  // On the server.
  EXPECT_EQ(XattrOf(X("xa"), "user.one"), "value1");
  EXPECT_EQ(XattrOf(Raw("xa"), "user.bin"), bin);
  EXPECT_SAME_BYTES(XattrOf(Raw("xa"), "user.big"), big);
  // Flags and missing names.
  EXPECT_EQ(ERRNO_OF(setxattr(M("xa").c_str(), "user.one", "v", 1, XATTR_CREATE)), EEXIST);
  EXPECT_EQ(ERRNO_OF(setxattr(M("xa").c_str(), "user.none", "v", 1, XATTR_REPLACE)), ENODATA);
  ASSERT_EQ(setxattr(M("xa").c_str(), "user.one", "second", 6, XATTR_REPLACE), 0);
  ASSERT_EQ(setxattr(M("xa").c_str(), "user.two", "2", 1, XATTR_CREATE), 0);
  EXPECT_EQ(XattrOf(M("xa"), "user.one"), "second");
  int err = 0;
  XattrOf(M("xa"), "user.none", &err);
  EXPECT_EQ(err, ENODATA);
  EXPECT_EQ(ERRNO_OF(removexattr(M("xa").c_str(), "user.none")), ENODATA);
  ASSERT_EQ(removexattr(M("xa").c_str(), "user.bin"), 0) << ErrnoText(errno);
  err = 0;
  XattrOf(M("xa"), "user.bin", &err);
  EXPECT_EQ(err, ENODATA);
  err = 0;
  XattrOf(X("xa"), "user.bin", &err);
  EXPECT_EQ(err, ENODATA);
  EXPECT_EQ(XattrOf(Raw("xa"), "user.one"), "second");
  EXPECT_EQ(XattrOf(Raw("xa"), "user.two"), "2");
  names = {"user.big", "user.empty", "user.one", "user.two"};
  Drop();
  EXPECT_EQ(XattrNames(M("xa")), names);
  // On a directory; a file without any.
  ASSERT_EQ(mkdir(M("xa-dir").c_str(), 0755), 0);
  ASSERT_EQ(setxattr(M("xa-dir").c_str(), "user.d", "dir", 3, 0), 0) << ErrnoText(errno);
  EXPECT_EQ(XattrOf(X("xa-dir"), "user.d"), "dir");
  WriteFile(M("xa-none"), "");
  EXPECT_EQ(listxattr(M("xa-none").c_str(), nullptr, 0), 0);
  err = 0;
  XattrOf(M("xa-missing"), "user.x", &err);
  EXPECT_EQ(err, ENOENT);
}

TEST_F(KclientTest, PwriteAtUnalignedOffsetsAcrossPageAndMiBBoundaries) {
  int fd = open(M("unaligned").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0) << ErrnoText(errno);
  std::string model;
  std::mt19937_64 rng(7);
  // Writes straddling page and MiB boundaries on purpose, then random ones.
  std::vector<std::pair<size_t, size_t>> writes = {{kPage - 1, 2},
                                                   {2 * kPage - 100, kPage + 200},
                                                   {kMiB - 3, 10},
                                                   {kMiB - 5000, 70000},
                                                   {2 * kMiB + 1, kPage - 1},
                                                   {3 * kMiB - kPage - 1, 2 * kPage + 2},
                                                   {5 * kPage + 17, kPage},
                                                   {kMiB, kMiB},
                                                   {0, 1}};
  std::uniform_int_distribution<size_t> off(0, 3 * kMiB + kMiB / 2), len(1, 100000);
  for (int i = 0; i < 120; i++) writes.emplace_back(off(rng), len(rng));
  uint64_t seed = 1000;
  for (const auto& [o, n] : writes) {
    std::string data = RandomBytes(n, seed++);
    ASSERT_TRUE(PwriteAll(fd, data.data(), n, static_cast<off_t>(o))) << ErrnoText(errno);
    if (model.size() < o + n) model.resize(o + n, '\0');
    model.replace(o, n, data);
  }
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(model.size()));
  EXPECT_SAME_BYTES(PreadAll(fd, model.size() + 100, 0), model);  // the page cache
  // Unaligned reads of the same.
  for (int i = 0; i < 50; i++) {
    size_t o = off(rng) % model.size(), n = len(rng);
    std::string want = model.substr(o, n);
    EXPECT_SAME_BYTES(PreadAll(fd, n, static_cast<off_t>(o)), want) << "at " << o;
  }
  ASSERT_EQ(close(fd), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(X("unaligned")), model);
  Drop();
  EXPECT_SAME_BYTES(ReadAll(M("unaligned")), model);
}

// Sets read_ahead_kb of every pohmelfs mount's backing device (/sys/class/bdi/pohmelfs-N);
// returns the files and their old values.
std::map<std::string, std::string> SetReadAheadKb(const std::string& kb) {
  std::map<std::string, std::string> old;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/class/bdi", ec)) {
    if (e.path().filename().string().rfind("pohmelfs-", 0) != 0) continue;
    std::string path = (e.path() / "read_ahead_kb").string();
    old[path] = ReadFile(path);
    std::ofstream(path) << kb;
  }
  return old;
}

TEST_F(KclientTest, SixteenMiBSequential) {
  std::string data = RandomBytes(16 * kMiB, 8);
  int fd = open(M("seq16").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0) << ErrnoText(errno);
  for (size_t o = 0; o < data.size(); o += kMiB)
    ASSERT_TRUE(WriteAllFd(fd, data.substr(o, kMiB))) << ErrnoText(errno);
  ASSERT_EQ(close(fd), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(X("seq16")), data);
  Drop();
  struct stat st;
  ASSERT_EQ(stat(M("seq16").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
  EXPECT_SAME_BYTES(ReadAll(M("seq16")), data);
  if (ViaFuse()) return;  // the module's backing device
  // A readahead window of 16 MiB: one readahead call, sixteen READs of 1 MiB in flight (each
  // must read at its own folios' offset).
  auto old = SetReadAheadKb("16384");
  ASSERT_FALSE(old.empty()) << "no /sys/class/bdi/pohmelfs-*";
  Drop();
  EXPECT_SAME_BYTES(ReadAll(M("seq16")), data);
  for (const auto& [path, value] : old) std::ofstream(path) << value;
}

TEST_F(KclientTest, SparseFileWithAHole) {
  int fd = open(M("sparse").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0);
  std::string head = RandomBytes(kPage, 9), tail = RandomBytes(kPage, 10);
  constexpr off_t kTail = 8 * kMiB + 123;
  ASSERT_TRUE(PwriteAll(fd, head.data(), head.size(), 0));
  ASSERT_TRUE(PwriteAll(fd, tail.data(), tail.size(), kTail));
  std::string model = head + std::string(kTail - kPage, '\0') + tail;
  EXPECT_SAME_BYTES(PreadAll(fd, 100, kMiB), std::string(100, '\0'));
  ASSERT_EQ(fsync(fd), 0) << ErrnoText(errno);
  ASSERT_EQ(close(fd), 0);
  struct stat st, est;
  ASSERT_EQ(stat(M("sparse").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(model.size()));
  EXPECT_SAME_BYTES(ReadFile(X("sparse")), model);
  // The hole was never written: the server's file stays sparse.
  ASSERT_EQ(stat(Raw("sparse").c_str(), &est), 0);
  EXPECT_LT(est.st_blocks * 512, static_cast<blkcnt_t>(kMiB));
  Drop();
  EXPECT_SAME_BYTES(ReadAll(M("sparse")), model);
}

TEST_F(KclientTest, AppendWrites) {
  WriteFile(M("append"), "head");
  std::string model = "head";
  int a = open(M("append").c_str(), O_WRONLY | O_APPEND);
  int b = open(M("append").c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  uint64_t seed = 2000;
  for (size_t n : {size_t{1}, kPage - 3, size_t{10}, 3 * kPage + 5, size_t{70000}}) {
    std::string x = RandomBytes(n, seed++), y = RandomBytes(n / 2 + 1, seed++);
    ASSERT_TRUE(WriteAllFd(a, x));
    ASSERT_TRUE(WriteAllFd(b, y));  // appends after a's write, not at b's own offset
    model += x + y;
  }
  // pwrite on an O_APPEND descriptor appends too (Linux).
  ASSERT_EQ(pwrite(a, "P", 1, 0), 1);
  model += "P";
  ASSERT_EQ(close(a), 0);
  ASSERT_EQ(close(b), 0);
  EXPECT_SAME_BYTES(ReadFile(M("append")), model);
  EXPECT_SAME_BYTES(ReadFile(X("append")), model);
  Drop();
  EXPECT_SAME_BYTES(ReadAll(M("append")), model);
}

TEST_F(KclientTest, DirectIoBypassesTheCacheAndStaysCoherentWithIt) {
  std::string model = RandomBytes(3 * kMiB + 77, 3000);
  // Buffered writes left dirty in the page cache (no fsync, the descriptor stays open).
  int b = open(M("direct").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(b, 0) << ErrnoText(errno);
  ASSERT_TRUE(PwriteAll(b, model.data(), model.size(), 0)) << ErrnoText(errno);
  int d = open(M("direct").c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(d, 0) << ErrnoText(errno);
  // A direct read sees them (unaligned offset and length, across MiB boundaries).
  EXPECT_SAME_BYTES(PreadAll(d, model.size() + 100, 0), model);
  EXPECT_SAME_BYTES(PreadAll(d, 2 * kMiB + 3, 5), model.substr(5, 2 * kMiB + 3));
  // Direct writes: unaligned, larger than one request, and one past the end of the file.
  uint64_t seed = 3100;
  for (const auto& [o, n] : std::vector<std::pair<size_t, size_t>>{
           {1, 10}, {kMiB - 7, kMiB + kMiB / 2}, {kPage, kPage}, {model.size() + 999, 5000}}) {
    std::string data = RandomBytes(n, seed++);
    ASSERT_TRUE(PwriteAll(d, data.data(), n, static_cast<off_t>(o))) << ErrnoText(errno);
    if (model.size() < o + n) model.resize(o + n, '\0');
    model.replace(o, n, data);
    // The kernel client's direct writes reach the server before the call returns (the FUSE
    // client may delay them under a write lease).
    if (!ViaFuse()) {
      EXPECT_SAME_BYTES(ReadFile(X("direct")), model) << "after " << o << "+" << n;
    }
  }
  struct stat st;
  ASSERT_EQ(fstat(b, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(model.size()));
  // The buffered descriptor does not see stale cached pages.
  EXPECT_SAME_BYTES(PreadAll(b, model.size() + 100, 0), model);
  EXPECT_SAME_BYTES(PreadAll(d, 100, static_cast<off_t>(model.size()) - 10),
                    model.substr(model.size() - 10));
  EXPECT_EQ(PreadAll(d, 100, static_cast<off_t>(model.size()) + 1), "");
  // Appends with O_DIRECT, and O_DIRECT switched on by fcntl.
  int a = open(M("direct").c_str(), O_WRONLY | O_APPEND | O_DIRECT);
  ASSERT_GE(a, 0) << ErrnoText(errno);
  std::string tail = RandomBytes(kPage + 3, seed++);
  ASSERT_TRUE(WriteAllFd(a, tail)) << ErrnoText(errno);
  model += tail;
  ASSERT_EQ(fcntl(b, F_SETFL, fcntl(b, F_GETFL) | O_DIRECT), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(PreadAll(b, model.size(), 0), model);
  for (int fd : {a, b, d}) ASSERT_EQ(close(fd), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(X("direct")), model);
  Drop();
  EXPECT_SAME_BYTES(ReadAll(M("direct")), model);
}

TEST_F(KclientTest, MmapSharedWriteAndMsync) {
  const size_t size = 3 * kPage + 100;
  std::string model = RandomBytes(size, 11);
  WriteFile(M("mmap"), model);
  int fd = open(M("mmap").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED) << ErrnoText(errno);
  char* m = static_cast<char*>(p);
  EXPECT_SAME_BYTES(std::string(m, size), model);  // mapped reads
  std::string a = RandomBytes(5000, 12), b = RandomBytes(88, 13);
  std::copy(a.begin(), a.end(), m + 10);               // across the first page boundary
  std::copy(b.begin(), b.end(), m + size - b.size());  // the partial last page
  model.replace(10, a.size(), a);
  model.replace(size - b.size(), b.size(), b);
  ASSERT_EQ(msync(p, size, MS_SYNC), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(Raw("mmap")), model);  // msync wrote it: no syncfs first
  EXPECT_SAME_BYTES(PreadAll(fd, size, 0), model);
  ASSERT_EQ(munmap(p, size), 0);
  ASSERT_EQ(close(fd), 0);
  Drop();
  EXPECT_SAME_BYTES(ReadAll(M("mmap")), model);
  struct stat st;
  ASSERT_EQ(stat(M("mmap").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(size));
}

TEST_F(KclientTest, FsyncAndFdatasyncReachTheServer) {
  int fd = open(M("fsync").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0);
  std::string a = RandomBytes(300000, 14);
  ASSERT_TRUE(WriteAllFd(fd, a));
  ASSERT_EQ(fsync(fd), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(Raw("fsync")), a);  // the descriptor still open, no syncfs
  std::string b = RandomBytes(5000, 15);
  ASSERT_TRUE(PwriteAll(fd, b.data(), b.size(), 1000));
  a.replace(1000, b.size(), b);
  ASSERT_TRUE(PwriteAll(fd, b.data(), b.size(), static_cast<off_t>(a.size())));
  a += b;
  ASSERT_EQ(fdatasync(fd), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(Raw("fsync")), a);
  ASSERT_EQ(close(fd), 0);
  // fsync of a directory.
  int dfd = open(mount_root().c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dfd, 0);
  EXPECT_EQ(fsync(dfd), 0) << ErrnoText(errno);
  close(dfd);
}

TEST_F(KclientTest, UnlinkedWhileOpenStaysReadableAndWritable) {
  std::string data = RandomBytes(100000, 16);
  int fd = open(M("doomed").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(WriteAllFd(fd, data));
  ASSERT_EQ(fsync(fd), 0);
  ASSERT_EQ(unlink(M("doomed").c_str()), 0) << ErrnoText(errno);
  struct stat st;
  EXPECT_EQ(ERRNO_OF(stat(M("doomed").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(lstat(X("doomed").c_str(), &st)), ENOENT);
  // Reads from the server, not only from the page cache.
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  EXPECT_SAME_BYTES(PreadAll(fd, data.size() + 10, 0), data);
  std::string more = RandomBytes(9000, 17);
  ASSERT_TRUE(PwriteAll(fd, more.data(), more.size(), 95000)) << ErrnoText(errno);
  data.resize(95000);
  data += more;
  ASSERT_EQ(fsync(fd), 0) << ErrnoText(errno);
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  EXPECT_SAME_BYTES(PreadAll(fd, data.size() + 10, 0), data);
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
  EXPECT_EQ(st.st_nlink, 0u);
  EXPECT_EQ(close(fd), 0);
  std::vector<std::string> names = ListDir(mount_root());
  EXPECT_EQ(std::find(names.begin(), names.end(), "doomed"), names.end());
}

TEST_F(KclientTest, ConcurrentReadersAndWritersOnDifferentFiles) {
  ASSERT_EQ(mkdir(M("conc").c_str(), 0755), 0);
  std::string shared = RandomBytes(2 * kMiB, 18);
  WriteFile(M("conc/shared"), shared);
  constexpr int kWriters = 4, kReaders = 2;
  std::mutex mu;
  std::vector<std::string> errors;
  auto fail = [&](const std::string& e) {
    std::lock_guard<std::mutex> lock(mu);
    errors.push_back(e);
  };
  std::vector<std::string> contents(kWriters);
  std::vector<std::thread> threads;
  threads.reserve(kWriters + kReaders);
  for (int w = 0; w < kWriters; w++) {
    threads.emplace_back([&, w] {
      std::string path = M("conc/w" + std::to_string(w));
      std::string& model = contents[w];
      model = RandomBytes(2 * kMiB + 777 * w, 100 + w);
      int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0644);
      if (fd < 0) return fail(path + ": open " + ErrnoText(errno));
      std::mt19937_64 rng(200 + w);
      std::uniform_int_distribution<size_t> chunk(1, 300000);
      for (size_t o = 0; o < model.size();) {
        size_t n = std::min(chunk(rng), model.size() - o);
        if (!PwriteAll(fd, model.data() + o, n, static_cast<off_t>(o)))
          return fail(path + ": pwrite " + ErrnoText(errno));
        o += n;
      }
      if (fsync(fd) != 0) fail(path + ": fsync " + ErrnoText(errno));
      posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      std::string back = PreadAll(fd, model.size() + 1, 0);
      if (back != model) fail(path + ": read back " + Diff(back, model));
      if (close(fd) != 0) fail(path + ": close " + ErrnoText(errno));
    });
  }
  for (int r = 0; r < kReaders; r++) {
    threads.emplace_back([&] {
      for (int round = 0; round < 4; round++) {
        int fd = open(M("conc/shared").c_str(), O_RDONLY);
        if (fd < 0) return fail("shared: open " + ErrnoText(errno));
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        std::string back = PreadAll(fd, shared.size() + 1, 0);
        if (back != shared) fail("shared: " + Diff(back, shared));
        close(fd);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors, std::vector<std::string>{});
  SyncMount(mount_root());
  for (int w = 0; w < kWriters; w++)
    EXPECT_SAME_BYTES(ReadFile(Raw("conc/w" + std::to_string(w))), contents[w]) << w;
  EXPECT_SAME_BYTES(ReadFile(Raw("conc/shared")), shared);
}

TEST_F(KclientTest, ErrnoOfFailures) {
  ASSERT_EQ(mkdir(M("err").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(M("err/full").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(M("err/empty").c_str(), 0755), 0);
  WriteFile(M("err/full/f"), "f");
  WriteFile(M("err/file"), "file");
  struct stat st;
  char buf[16];
  // ENOENT
  EXPECT_EQ(ERRNO_OF(open(M("err/none").c_str(), O_RDONLY)), ENOENT);
  EXPECT_EQ(ERRNO_OF(stat(M("err/none/x").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(unlink(M("err/none").c_str())), ENOENT);
  EXPECT_EQ(ERRNO_OF(rmdir(M("err/none").c_str())), ENOENT);
  EXPECT_EQ(ERRNO_OF(rename(M("err/none").c_str(), M("err/x").c_str())), ENOENT);
  EXPECT_EQ(ERRNO_OF(link(M("err/none").c_str(), M("err/x").c_str())), ENOENT);
  EXPECT_EQ(ERRNO_OF(readlink(M("err/none").c_str(), buf, sizeof(buf))), ENOENT);
  EXPECT_EQ(ERRNO_OF(chmod(M("err/none").c_str(), 0600)), ENOENT);
  EXPECT_EQ(ERRNO_OF(truncate(M("err/none").c_str(), 0)), ENOENT);
  EXPECT_EQ(ERRNO_OF(mkdir(M("err/none/sub").c_str(), 0755)), ENOENT);
  // EEXIST
  EXPECT_EQ(ERRNO_OF(mkdir(M("err/file").c_str(), 0755)), EEXIST);
  EXPECT_EQ(ERRNO_OF(mkdir(M("err/full").c_str(), 0755)), EEXIST);
  EXPECT_EQ(ERRNO_OF(open(M("err/file").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644)), EEXIST);
  EXPECT_EQ(ERRNO_OF(open(M("err/full").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644)), EEXIST);
  EXPECT_EQ(ERRNO_OF(symlink("t", M("err/file").c_str())), EEXIST);
  EXPECT_EQ(ERRNO_OF(link(M("err/full/f").c_str(), M("err/file").c_str())), EEXIST);
  // ENOTDIR
  EXPECT_EQ(ERRNO_OF(open(M("err/file/x").c_str(), O_RDONLY)), ENOTDIR);
  EXPECT_EQ(ERRNO_OF(open(M("err/file").c_str(), O_RDONLY | O_DIRECTORY)), ENOTDIR);
  EXPECT_EQ(ERRNO_OF(mkdir(M("err/file/x").c_str(), 0755)), ENOTDIR);
  EXPECT_EQ(ERRNO_OF(rmdir(M("err/file").c_str())), ENOTDIR);
  EXPECT_EQ(ERRNO_OF(rename(M("err/empty").c_str(), M("err/file").c_str())), ENOTDIR);
  // EISDIR
  EXPECT_EQ(ERRNO_OF(open(M("err/full").c_str(), O_WRONLY)), EISDIR);
  EXPECT_EQ(ERRNO_OF(open(M("err/full").c_str(), O_RDWR)), EISDIR);
  EXPECT_EQ(ERRNO_OF(unlink(M("err/full").c_str())), EISDIR);
  EXPECT_EQ(ERRNO_OF(rename(M("err/file").c_str(), M("err/empty").c_str())), EISDIR);
  int dfd = open(M("err/full").c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dfd, 0);
  EXPECT_EQ(ERRNO_OF(read(dfd, buf, sizeof(buf))), EISDIR);
  close(dfd);
  // ENOTEMPTY
  EXPECT_EQ(ERRNO_OF(rmdir(M("err/full").c_str())), ENOTEMPTY);
  EXPECT_EQ(ERRNO_OF(rename(M("err/empty").c_str(), M("err/full").c_str())), ENOTEMPTY);
  // Nothing of the above changed the server's tree.
  EXPECT_EQ(ListDir(X("err")), (std::vector<std::string>{"empty", "file", "full"}));
  EXPECT_EQ(ListDir(Raw("err/full")), std::vector<std::string>{"f"});
  EXPECT_EQ(ReadFile(Raw("err/file")), "file");
}

// Last: unmount and mount again; everything written above is there, as on the server.
// The options field of mnt's line in /proc/mounts.
std::string MountOptionsOf(const std::string& mnt) {
  std::istringstream in(ReadFile("/proc/mounts"));
  std::string dev, point, type, opts;
  while (in >> dev >> point >> type >> opts) {
    std::string rest;
    std::getline(in, rest);
    if (point == mnt) return opts;
  }
  return "";
}

TEST_F(KclientTest, RemountChangesTimeoutsAndReadOnlyButNotTheServers) {
  // Skipped on the FUSE check run only: remount options are the kernel module's (a FUSE mount's
  // remount is libfuse's and takes none of them). In the guest it always runs.
  if (ViaFuse()) GTEST_SKIP() << "kernel mount options";
  auto remount = [](unsigned long flags, const std::string& data) {
    return mount("none", mount_root().c_str(), "pohmelfs", MS_REMOUNT | flags, data.c_str()) == 0
               ? 0
               : errno;
  };
  const std::string server = "server=" + server_->uri();
  ASSERT_EQ(remount(0, "attr_timeout_ms=0,timeout_ms=7000"), 0) << ErrnoText(errno);
  std::string opts = MountOptionsOf(mount_root());
  EXPECT_NE(opts.find(",timeout_ms=7000,attr_timeout_ms=0"), std::string::npos) << opts;
  // Nothing is cached now: a name made on the server is seen at once, though this mount
  // looked it up (and found nothing) just before.
  struct stat st;
  EXPECT_EQ(ERRNO_OF(stat(M("remount-new").c_str(), &st)), ENOENT);
  WriteFile(Raw("remount-new"), "made on the server");
  EXPECT_EQ(ERRNO_OF(stat(M("remount-new").c_str(), &st)), 0);
  // The mount's own options given back are accepted; other servers and names are not.
  EXPECT_EQ(remount(0, server + ",timeout_ms=8000"), 0);
  EXPECT_NE(MountOptionsOf(mount_root()).find(",timeout_ms=8000,attr_timeout_ms=0"),
            std::string::npos);
  EXPECT_EQ(remount(0, "server=tcp://127.0.0.1:1"), EINVAL);
  EXPECT_EQ(remount(0, server + ",server=tcp://127.0.0.1:1"), EINVAL);
  EXPECT_EQ(remount(0, "name=someone-else"), EINVAL);
  EXPECT_NE(MountOptionsOf(mount_root()).find(",timeout_ms=8000,attr_timeout_ms=0"),
            std::string::npos);
  // Read-only and back.
  ASSERT_EQ(remount(MS_RDONLY, ""), 0) << ErrnoText(errno);
  EXPECT_EQ(ERRNO_OF(open(M("remount-ro").c_str(), O_WRONLY | O_CREAT, 0644)), EROFS);
  ASSERT_EQ(remount(0, ""), 0) << ErrnoText(errno);
  WriteFile(M("remount-rw"), "rw again");
  EXPECT_EQ(ReadFile(X("remount-rw")), "rw again");
  // The suite's other tests expect the defaults.
  ASSERT_EQ(remount(0, "attr_timeout_ms=1000,timeout_ms=30000"), 0);
}

TEST_F(KclientTest, RemountSeesTheSameTree) {
  Tree before = Snapshot(mount_root());
  ASSERT_TRUE(KernelUnmount(mount_root()));
  mounted_ = false;
  EXPECT_FALSE(IsPohmelfsMount(mount_root()));
  EXPECT_EQ(TreeDiff(Snapshot(export_root()), before), "");
  int err = KernelMount(mount_root(), {server_->uri()});
  ASSERT_EQ(err, 0) << ErrnoText(err);
  mounted_ = true;
  EXPECT_EQ(TreeDiff(Snapshot(mount_root()), before), "");
}

// ============================================================================================
// Two servers, two exports, one mount; fresh for every test (they kill servers).

class KclientTwoServersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    umask(0);
    ASSERT_TRUE(ModuleLoaded()) << "pohmelfs is not in /proc/filesystems: insmod the module";
    scratch_ = std::make_unique<ScratchDir>(CurrentTestName());
    for (int i = 0; i < 2; i++) {
      fs::create_directories(ExportOf(i));
      ASSERT_TRUE(
          servers_[i].Start(ExportOf(i), Path("server" + std::to_string(i) + ".log"), kServerArgs))
          << servers_[i].Log();
    }
    fs::create_directories(mnt());
  }
  // Mounts both; server 0 gets prio 10 (it serves reads while it is up), server 1 the default.
  void MountBoth(const std::string& opts0 = "?prio=10", const std::string& opts1 = "") {
    int err = KernelMount(mnt(), {servers_[0].uri() + opts0, servers_[1].uri() + opts1});
    ASSERT_EQ(err, 0) << "mount: " << ErrnoText(err);
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) {
      EXPECT_TRUE(KernelUnmount(mnt())) << "umount2 failed";
    }
    for (auto& s : servers_) s.Stop(SIGKILL);
  }
  std::string Path(const std::string& rel) const { return (scratch_->path() / rel).string(); }
  std::string ExportOf(int i) const { return Path("export" + std::to_string(i)); }
  std::string mnt() const { return Path("mnt"); }
  std::string M(const std::string& rel) const { return mnt() + "/" + rel; }
  std::string X(int i, const std::string& rel) const {
    SyncMount(mnt());
    return ExportOf(i) + "/" + rel;
  }

  std::unique_ptr<ScratchDir> scratch_;
  ServerProcess servers_[2];
  bool mounted_ = false;
};

TEST_F(KclientTwoServersTest, EveryChangeLandsIdenticallyInBothExports) {
  MountBoth();
  ASSERT_EQ(mkdir(M("dir").c_str(), 0750), 0) << ErrnoText(errno);
  ASSERT_EQ(mkdir(M("dir/sub").c_str(), 0700), 0);
  uint64_t seed = 3000;
  for (size_t n : {size_t{0}, size_t{1}, kPage - 1, kPage + 1, kMiB + 3, 3 * kMiB - 5})
    WriteFile(M("dir/f" + std::to_string(n)), RandomBytes(n, seed++));
  int fd = open(M("dir/f" + std::to_string(kMiB + 3)).c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  std::string patch = RandomBytes(9000, seed++);
  ASSERT_TRUE(PwriteAll(fd, patch.data(), patch.size(), kMiB - 4000));  // across the boundary
  ASSERT_EQ(close(fd), 0);
  ASSERT_EQ(truncate(M("dir/f" + std::to_string(3 * kMiB - 5)).c_str(), 2 * kMiB + 11), 0);
  ASSERT_EQ(rename(M("dir/f1").c_str(), M("dir/sub/renamed").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(link(M("dir/f0").c_str(), M("dir/sub/linked").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(symlink("../f0", M("dir/sub/symlink").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(setxattr(M("dir/sub/renamed").c_str(), "user.k", "v", 1, 0), 0) << ErrnoText(errno);
  ASSERT_EQ(chmod(M("dir/f" + std::to_string(kPage - 1)).c_str(), 0600), 0);
  ASSERT_EQ(chown(M("dir/f" + std::to_string(kPage + 1)).c_str(), 42, 43), 0);
  ASSERT_EQ(unlink(M("dir/f" + std::to_string(kPage + 1)).c_str()), 0);
  fd = open(M("dir/mapped").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 2 * kPage), 0);
  void* p = mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::memcpy(static_cast<char*>(p) + 100, patch.data(), kPage);
  ASSERT_EQ(msync(p, 2 * kPage, MS_SYNC), 0);
  munmap(p, 2 * kPage);
  close(fd);
  SyncMount(mnt());
  Tree mount_view = Snapshot(mnt());
  EXPECT_EQ(mount_view.size(), 10u) << Paths(mount_view);
  EXPECT_EQ(TreeDiff(Snapshot(ExportOf(0)), mount_view), "") << "export 0";
  EXPECT_EQ(TreeDiff(Snapshot(ExportOf(1)), mount_view), "") << "export 1";
}

TEST_F(KclientTwoServersTest, ReadsSurviveTheReadServerKilledAndWritesGoToTheSurvivor) {
  MountBoth();
  std::string a = RandomBytes(3 * kMiB + 5, 31), b = RandomBytes(5000, 32);
  WriteFile(M("a"), a);
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0);
  WriteFile(M("d/b"), b);
  SyncMount(mnt());
  DropCaches(mnt());
  servers_[0].Stop(SIGKILL);  // the prio 10 server, which served the reads
  auto start = Clock::now();
  EXPECT_SAME_BYTES(ReadAll(M("a")), a);
  EXPECT_LT(Clock::now() - start, kRecoveryBound);
  EXPECT_SAME_BYTES(ReadAll(M("d/b")), b);
  EXPECT_EQ(ListDir(M("d")), std::vector<std::string>{"b"});
  // Writes go on, to the survivor.
  std::string c = RandomBytes(200000, 33);
  WriteFile(M("d/c"), c);
  int fd = open(M("a").c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0) << ErrnoText(errno);
  ASSERT_TRUE(WriteAllFd(fd, b));
  EXPECT_EQ(fsync(fd), 0) << ErrnoText(errno);
  EXPECT_EQ(close(fd), 0);
  ASSERT_EQ(mkdir(M("after").c_str(), 0755), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(X(1, "d/c")), c);
  EXPECT_SAME_BYTES(ReadFile(X(1, "a")), a + b);
  struct stat st;
  EXPECT_EQ(stat(X(1, "after").c_str(), &st), 0);
  DropCaches(mnt());
  EXPECT_SAME_BYTES(ReadAll(M("d/c")), c);
  EXPECT_SAME_BYTES(ReadAll(M("a")), a + b);
}

TEST_F(KclientTwoServersTest, AKilledServerRestartedOnItsPortIsWrittenAgain) {
  MountBoth();
  WriteFile(M("before"), "before");
  servers_[1].Stop(SIGKILL);
  WriteFile(M("during"), "only on server 0");  // server 1 misses it
  SyncMount(mnt());
  EXPECT_EQ(ReadFile(ExportOf(0) + "/during"), "only on server 0");
  // Server 0 applied a change server 1 missed, so it holds a marker naming server 1
  // (EXPORT/.pohmelfs/stale/ID, docs/replication.md) for a resync to find.
  std::vector<std::string> markers = ListDir(ExportOf(0) + "/.pohmelfs/stale");
  ASSERT_EQ(markers.size(), 1u);
  EXPECT_NE(servers_[1].Log().find(" as server " + markers[0]), std::string::npos)
      << "the marker " << markers[0] << " does not name server 1";
  ASSERT_TRUE(servers_[1].Restart()) << servers_[1].Log();
  // Reconnected when a new file reaches its export again.
  int probe = 0;
  bool reached = Eventually([&] {
    std::string name = "probe" + std::to_string(probe++);
    int fd = open(M(name).c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) return false;
    close(fd);
    SyncMount(mnt());
    return access((ExportOf(1) + "/" + name).c_str(), F_OK) == 0;
  });
  ASSERT_TRUE(reached) << "no write reached the restarted server within the bound";
  // From then on every change reaches both.
  std::string data = RandomBytes(100000, 34);
  WriteFile(M("after"), data);
  ASSERT_EQ(mkdir(M("after-dir").c_str(), 0755), 0) << ErrnoText(errno);
  EXPECT_SAME_BYTES(ReadFile(X(0, "after")), data);
  EXPECT_SAME_BYTES(ReadFile(X(1, "after")), data);
  struct stat st;
  EXPECT_EQ(stat((ExportOf(1) + "/after-dir").c_str(), &st), 0);
}

// A restarted server that missed no change is as good as the other: with the other killed, the
// mount reads from it and writes to it. (One that missed changes may be kept from reads until
// it is resynced, which the test above leaves alone.)
TEST_F(KclientTwoServersTest, ARestartedServerServesReadsWhenTheOtherDies) {
  MountBoth();
  std::string data = RandomBytes(300000, 35);
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0);
  WriteFile(M("d/f"), data);
  SyncMount(mnt());
  EXPECT_SAME_BYTES(ReadFile(ExportOf(1) + "/d/f"), data);
  DropCaches(mnt());  // before: no request at all while server 1 is down
  servers_[1].Stop(SIGKILL);
  ASSERT_TRUE(servers_[1].Restart()) << servers_[1].Log();
  servers_[0].Stop(SIGKILL);  // the prio 10 one: now only the restarted server can answer
  struct stat st;
  EXPECT_TRUE(Eventually([&] { return stat(M("d/f").c_str(), &st) == 0; }))
      << "no read from the restarted server within the bound";
  EXPECT_SAME_BYTES(ReadAll(M("d/f")), data);
  EXPECT_EQ(ListDir(M("d")), std::vector<std::string>{"f"});
  WriteFile(M("d/g"), "written to the restarted server");
  EXPECT_EQ(ReadFile(X(1, "d/g")), "written to the restarted server");
}

TEST_F(KclientTwoServersTest, PermissionsChooseWhichServersAreWritten) {
  MountBoth("?prio=10&perm=rw", "?perm=r");  // server 1 is a read-only mirror
  WriteFile(M("rw-only"), "written");
  ASSERT_EQ(mkdir(M("rw-dir").c_str(), 0755), 0);
  EXPECT_EQ(ReadFile(X(0, "rw-only")), "written");
  struct stat st;
  EXPECT_EQ(ERRNO_OF(lstat(X(1, "rw-only").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(lstat(X(1, "rw-dir").c_str(), &st)), ENOENT);
  EXPECT_EQ(ReadFile(M("rw-only")), "written");
}

// ============================================================================================
// One server killed and restarted on the same port and export.

class KclientRestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    umask(0);
    ASSERT_TRUE(ModuleLoaded()) << "pohmelfs is not in /proc/filesystems: insmod the module";
    scratch_ = std::make_unique<ScratchDir>(CurrentTestName());
    fs::create_directories(Path("export"));
    fs::create_directories(mnt());
    ASSERT_TRUE(server_.Start(Path("export"), Path("server.log"), kServerArgs)) << server_.Log();
    int err = KernelMount(mnt(), {server_.uri()}, mount_options());
    ASSERT_EQ(err, 0) << "mount: " << ErrnoText(err);
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) {
      EXPECT_TRUE(KernelUnmount(mnt())) << "umount2 failed";
    }
    server_.Stop(SIGKILL);
  }
  // More options for the mount (",a=b,..."), kernel client only.
  virtual std::string mount_options() const { return ""; }
  std::string Path(const std::string& rel) const { return (scratch_->path() / rel).string(); }
  std::string mnt() const { return Path("mnt"); }
  std::string M(const std::string& rel) const { return mnt() + "/" + rel; }

  std::unique_ptr<ScratchDir> scratch_;
  ServerProcess server_;
  bool mounted_ = false;
};

TEST_F(KclientRestartTest, TheMountRecoversAfterTheServerIsKilledAndRestarted) {
  std::string data = RandomBytes(kMiB + 99, 41);
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0);
  WriteFile(M("d/f"), data);
  SyncMount(mnt());
  DropCaches(mnt());
  server_.Stop(SIGKILL);
  ASSERT_TRUE(server_.Restart()) << server_.Log();
  auto start = Clock::now();
  struct stat st;
  EXPECT_TRUE(Eventually([&] { return stat(M("d/f").c_str(), &st) == 0; }))
      << "no lookup succeeded within the bound after the restart";
  EXPECT_LT(Clock::now() - start, kRecoveryBound + std::chrono::seconds(5));
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
  EXPECT_SAME_BYTES(ReadAll(M("d/f")), data);
  EXPECT_EQ(ListDir(M("d")), std::vector<std::string>{"f"});
  // Changes after the restart reach the export.
  std::string more = RandomBytes(70000, 42);
  WriteFile(M("d/g"), more);
  ASSERT_EQ(rename(M("d/f").c_str(), M("d/h").c_str()), 0) << ErrnoText(errno);
  SyncMount(mnt());
  EXPECT_SAME_BYTES(ReadFile(Path("export/d/g")), more);
  EXPECT_SAME_BYTES(ReadFile(Path("export/d/h")), data);
  EXPECT_EQ(ListDir(Path("export/d")), (std::vector<std::string>{"g", "h"}));
}

TEST_F(KclientRestartTest, RecoversFromTwoRestartsInARow) {
  WriteFile(M("x"), "x");
  SyncMount(mnt());
  for (int round = 0; round < 2; round++) {
    server_.Stop(SIGKILL);
    ASSERT_TRUE(server_.Restart()) << server_.Log();
    std::string name = "after" + std::to_string(round);
    EXPECT_TRUE(Eventually([&] {
      int fd = open(M(name).c_str(), O_WRONLY | O_CREAT, 0644);
      if (fd < 0) return false;
      bool ok = WriteAllFd(fd, name) && fsync(fd) == 0;
      return close(fd) == 0 && ok;
    })) << "round "
        << round;
    EXPECT_EQ(ReadFile(Path("export/" + name)), name);
  }
  EXPECT_EQ(ReadFile(M("x")), "x");
}

// ============================================================================================
// A mount whose sockets have small buffers (the guest's tcp_wmem/tcp_rmem, restored after), so
// that a 1 MiB message cannot fit in them while the server is stopped.

class KclientSmallBuffersTest : public KclientRestartTest {
 protected:
  static constexpr const char* kWmem = "/proc/sys/net/ipv4/tcp_wmem";
  static constexpr const char* kRmem = "/proc/sys/net/ipv4/tcp_rmem";
  void SetUp() override {
    // Skipped on the FUSE check run only: it watches the kernel client's send path
    // (/proc/PID/stack) and changes guest-wide TCP buffers. In the guest it always runs.
    if (ViaFuse()) GTEST_SKIP() << "the kernel client's socket";
    saved_wmem_ = ReadFile(kWmem);
    saved_rmem_ = ReadFile(kRmem);
    ASSERT_TRUE(WriteSysctl(kWmem, "4096 16384 65536"));
    ASSERT_TRUE(WriteSysctl(kRmem, "4096 16384 65536"));
    KclientRestartTest::SetUp();  // the server and the mount get the small buffers
  }
  void TearDown() override {
    if (server_.Alive()) kill(server_.pid(), SIGCONT);
    KclientRestartTest::TearDown();
    if (!saved_wmem_.empty()) WriteSysctl(kWmem, saved_wmem_);
    if (!saved_rmem_.empty()) WriteSysctl(kRmem, saved_rmem_);
  }
  static bool WriteSysctl(const char* path, const std::string& value) {
    std::ofstream f(path);
    f << value;
    f.flush();
    return static_cast<bool>(f);
  }

  std::string saved_wmem_, saved_rmem_;
};

size_t CountOf(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) n++;
  return n;
}

// A task killed while its request is half in the socket finishes sending it: the stream stays
// whole, so the connection (and every other request on it) survives.
TEST_F(KclientSmallBuffersTest, SigkillDuringASendDoesNotBreakTheConnection) {
  WriteFile(M("before"), "before");
  ASSERT_EQ(CountOf(server_.Log(), ": connected"), 1u) << server_.Log();
  const std::string data = RandomBytes(4 * kMiB, 51);
  // Opened (created on the server) before the server stops; the child inherits it.
  int fd = open(M("big").c_str(), O_WRONLY | O_CREAT | O_DIRECT, 0644);
  ASSERT_GE(fd, 0) << ErrnoText(errno);
  ASSERT_EQ(kill(server_.pid(), SIGSTOP), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(write(fd, data.data(), data.size()) >= 0 ? 0 : 1);
  // The first 1 MiB WRITE cannot fit in the stopped server's and our buffers: the child sleeps
  // in the middle of sending it.
  std::string stack;
  bool in_send = Eventually(
      [&] {
        stack = ReadFile("/proc/" + std::to_string(child) + "/stack");
        return stack.find("pohmelfs_conn_send") != std::string::npos;
      },
      std::chrono::seconds(20));
  ASSERT_EQ(kill(child, SIGKILL), 0);
  ASSERT_EQ(kill(server_.pid(), SIGCONT), 0);
  int status = 0;
  ASSERT_TRUE(Eventually([&] { return waitpid(child, &status, WNOHANG) == child; },
                         std::chrono::seconds(30)));
  ASSERT_TRUE(in_send) << "the child never slept in a send; its stack:\n" << stack;
  ASSERT_EQ(close(fd), 0) << ErrnoText(errno);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  // The same connection serves on: no reconnect, no disconnect on the server's side.
  WriteFile(M("after"), "after");
  EXPECT_EQ(ReadFile(M("after")), "after");
  EXPECT_EQ(ReadFile(Path("export/after")), "after");
  const std::string log = server_.Log();
  EXPECT_EQ(CountOf(log, ": connected"), 1u) << log;
  EXPECT_EQ(CountOf(log, "disconnected"), 0u) << log;
  // What the killed task wrote landed in whole 1 MiB WRITEs, byte for byte.
  std::string landed = ReadFile(Path("export/big"));
  EXPECT_EQ(landed.size() % kMiB, 0u);
  EXPECT_SAME_BYTES(landed, data.substr(0, landed.size()));
}

// ============================================================================================
// Directory leases: a mount whose delayed changes wait until something sends them (the queue's
// own timer is 10 minutes), and whose attributes stay cached for a minute, so that nothing but
// the test's own steps reaches the server. One server per test.

class KclientLeaseTest : public KclientRestartTest {
 protected:
  void SetUp() override {
    // The kernel client's leases and options; the FUSE client has its own tests of leases.
    if (ViaFuse()) GTEST_SKIP() << "kernel client options";
    KclientRestartTest::SetUp();
  }
  std::string mount_options() const override {
    return ",meta_delay_ms=600000,attr_timeout_ms=60000";
  }
  std::string X(const std::string& rel) const { return Path("export/" + rel); }
  static void Create(const std::string& path, mode_t mode = 0640) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    ASSERT_GE(fd, 0) << path << ": " << ErrnoText(errno);
    ASSERT_EQ(close(fd), 0) << path << ": " << ErrnoText(errno);
  }
  static std::vector<std::string> Names(const std::string& prefix, int from, int to) {
    std::vector<std::string> out;
    for (int i = from; i < to; i++) out.push_back(prefix + std::to_string(i));
    std::sort(out.begin(), out.end());
    return out;
  }
};

TEST_F(KclientLeaseTest, ChangesInADirectoryItCreatedWaitForSyncfsAndArriveInOrder) {
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0) << ErrnoText(errno);
  struct stat st;
  ASSERT_EQ(stat(X("d").c_str(), &st), 0) << "a mkdir outside a leased directory is sent at once";
  // 61 commands in all (a create and a RELEASE per file): fewer than a full BATCH, which
  // would be sent at once.
  for (int i = 0; i < 19; i++) Create(M("d/f" + std::to_string(i)));
  // A new file's data, mode and times are delayed too.
  const std::string data = RandomBytes(10000, 61);
  int fd = open(M("d/f19").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0) << ErrnoText(errno);
  ASSERT_TRUE(WriteAllFd(fd, data));
  ASSERT_EQ(close(fd), 0) << ErrnoText(errno);
  ASSERT_EQ(chmod(M("d/f13").c_str(), 0604), 0) << ErrnoText(errno);
  const struct timespec times[2] = {{1000000000, 5}, {1200000000, 7}};
  ASSERT_EQ(utimensat(AT_FDCWD, M("d/f14").c_str(), times, 0), 0) << ErrnoText(errno);
  ASSERT_EQ(mkdir(M("d/sub").c_str(), 0700), 0) << ErrnoText(errno);
  Create(M("d/sub/inner"), 0600);
  ASSERT_EQ(mkdir(M("d/gone").c_str(), 0700), 0);
  Create(M("d/gone/x"));
  ASSERT_EQ(unlink(M("d/gone/x").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(rmdir(M("d/gone").c_str()), 0) << ErrnoText(errno);
  for (int i = 0; i < 10; i++) ASSERT_EQ(unlink(M("d/f" + std::to_string(i)).c_str()), 0) << i;
  // Answered here: the names, their types and modes; nothing reached the server yet.
  ASSERT_EQ(stat(M("d/f16").c_str(), &st), 0) << ErrnoText(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(ERRNO_OF(stat(M("d/f6").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(stat(M("d/gone").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(open(M("d/f16").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600)), EEXIST);
  ASSERT_EQ(stat(M("d/f13").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0604u);
  ASSERT_EQ(stat(M("d/f14").c_str(), &st), 0);
  EXPECT_EQ(st.st_mtim.tv_sec, 1200000000);
  ASSERT_EQ(stat(M("d/f19").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
  EXPECT_EQ(ListDir(X("d")), std::vector<std::string>{}) << "sent before syncfs";
  // syncfs sends them, in order (the unlinks after the creates, the rmdir after the unlink).
  SyncMount(mnt());
  std::vector<std::string> want = Names("f", 10, 20);
  want.emplace_back("sub");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(ListDir(X("d")), want);
  EXPECT_EQ(ListDir(X("d/sub")), std::vector<std::string>{"inner"});
  ASSERT_EQ(stat(X("d/f16").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  ASSERT_EQ(stat(X("d/f13").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0604u);
  ASSERT_EQ(stat(X("d/f14").c_str(), &st), 0);
  EXPECT_EQ(st.st_atim.tv_sec, 1000000000);
  EXPECT_EQ(st.st_atim.tv_nsec, 5);
  EXPECT_EQ(st.st_mtim.tv_sec, 1200000000);
  EXPECT_EQ(st.st_mtim.tv_nsec, 7);
  EXPECT_SAME_BYTES(ReadFile(X("d/f19")), data);
  ASSERT_EQ(stat(X("d/sub").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(stat(X("d/sub/inner").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(ListDir(M("d")), want);
}

TEST_F(KclientLeaseTest, AnotherClientLookingBreaksTheLeaseAndSeesEveryDelayedChange) {
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0) << ErrnoText(errno);
  for (int i = 0; i < 25; i++) Create(M("d/f" + std::to_string(i)));  // under a full BATCH
  ASSERT_EQ(ListDir(X("d")), std::vector<std::string>{}) << "sent before anyone asked";
  // A FUSE mount (leases on) lists the directory: its READ lease breaks this mount's WRITE
  // lease, which sends the queue and gives the lease back well before the break timeout.
  std::string fuse_mnt = Path("fuse");
  fs::create_directories(fuse_mnt);
  ASSERT_TRUE(Mount(server_.uri(), fuse_mnt, Path("fuse.log"))) << ReadFile(Path("fuse.log"));
  auto start = Clock::now();
  std::vector<std::string> seen = ListDir(fuse_mnt + "/d");
  auto took = Clock::now() - start;
  Unmount(fuse_mnt);
  EXPECT_EQ(seen, Names("f", 0, 25));
  EXPECT_LT(took, std::chrono::seconds(4)) << "the break waited for an eviction";
  const std::string log = server_.Log();
  EXPECT_GE(CountOf(log, "lease break"), 1u) << log;
  EXPECT_EQ(CountOf(log, "evicted from its"), 0u) << log;
  // The lease is gone: a create is sent at once now.
  Create(M("d/late"));
  struct stat st;
  EXPECT_EQ(stat(X("d/late").c_str(), &st), 0) << "a create without the lease was delayed";
}

TEST_F(KclientLeaseTest, ADelayedCreateThatFailsIsReportedAtFsyncAndLosesNothing) {
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0) << ErrnoText(errno);
  // Made behind the lease's back, straight in the export: the mount believes "x" is free.
  WriteFile(X("d/x"), "theirs");
  WriteFile(X("d/y"), "also theirs");
  // Opened before the failure, so that they see it: the directory and the mount.
  int dfd = open(M("d").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dfd, 0) << ErrnoText(errno);
  int rootfd = open(mnt().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(rootfd, 0) << ErrnoText(errno);
  int fd = open(M("d/x").c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0) << "answered here under the lease: " << ErrnoText(errno);
  EXPECT_EQ(ERRNO_OF(fsync(fd)), EIO) << "the create failed on the server (EEXIST)";
  close(fd);
  EXPECT_EQ(ERRNO_OF(fsync(dfd)), EIO) << "fsync of the directory reports it";
  EXPECT_EQ(fsync(dfd), 0) << "once";
  EXPECT_EQ(ERRNO_OF(syncfs(rootfd)), EIO) << "syncfs reports it";
  close(dfd);
  close(rootfd);
  EXPECT_EQ(ReadFile(X("d/x")), "theirs");
  // After the failure the mount asks the server about the directory again.
  EXPECT_EQ(ReadFile(M("d/y")), "also theirs");
}

TEST_F(KclientLeaseTest, RenameLinkSymlinkAndRemovalsKeepTheNamesRight) {
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0) << ErrnoText(errno);
  ASSERT_EQ(mkdir(M("d/a").c_str(), 0755), 0);
  Create(M("d/a/f"));
  ASSERT_EQ(unlink(M("d/a/f").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(rmdir(M("d/a").c_str()), 0) << ErrnoText(errno);
  Create(M("d/b"));
  ASSERT_EQ(rename(M("d/b").c_str(), M("d/c").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(link(M("d/c").c_str(), M("d/l").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(symlink("c", M("d/s").c_str()), 0) << ErrnoText(errno);
  ASSERT_EQ(mkdir(M("d/a").c_str(), 0711), 0) << "the name is free again: " << ErrnoText(errno);
  struct stat st, lst;
  EXPECT_EQ(ERRNO_OF(stat(M("d/b").c_str(), &st)), ENOENT);
  ASSERT_EQ(stat(M("d/c").c_str(), &st), 0) << ErrnoText(errno);
  ASSERT_EQ(stat(M("d/l").c_str(), &lst), 0) << ErrnoText(errno);
  EXPECT_EQ(st.st_ino, lst.st_ino);
  char target[16] = {};
  EXPECT_EQ(readlink(M("d/s").c_str(), target, sizeof(target) - 1), 1);
  EXPECT_STREQ(target, "c");
  EXPECT_EQ(ERRNO_OF(rename(M("d/c").c_str(), M("d/a").c_str())), EISDIR);
  const std::vector<std::string> want = {"a", "c", "l", "s"};
  EXPECT_EQ(ListDir(M("d")), want);
  SyncMount(mnt());
  EXPECT_EQ(ListDir(X("d")), want);
  ASSERT_EQ(stat(X("d/a").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0711u);
  ASSERT_EQ(stat(X("d/c").c_str(), &st), 0);
  ASSERT_EQ(stat(X("d/l").c_str(), &lst), 0);
  EXPECT_EQ(st.st_ino, lst.st_ino);
}

// A server killed and restarted from scratch while changes wait in the queue: they land once it
// is back, and the mount, which may have missed a break with the connection, holds no lease.
TEST_F(KclientLeaseTest, QueuedChangesLandAfterTheServerRestartsAndTheLeaseIsForgotten) {
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0) << ErrnoText(errno);
  for (int i = 0; i < 10; i++) Create(M("d/f" + std::to_string(i)));
  ASSERT_EQ(ListDir(X("d")), std::vector<std::string>{});
  server_.Stop(SIGKILL);
  ASSERT_TRUE(server_.Restart()) << server_.Log();
  SyncMount(mnt());  // waits for the server to be back (bounded by timeout_ms)
  EXPECT_EQ(ListDir(X("d")), Names("f", 0, 10));
  Create(M("d/after"));
  struct stat st;
  EXPECT_EQ(stat(X("d/after").c_str(), &st), 0) << "delayed under a lease that is gone";
}

TEST_F(KclientLeaseTest, LeasesOffOnRemountSendsChangesAtOnce) {
  ASSERT_EQ(mount("none", mnt().c_str(), "pohmelfs", MS_REMOUNT, "leases=0"), 0)
      << ErrnoText(errno);
  EXPECT_NE(ReadFile("/proc/mounts").find("leases=0"), std::string::npos);
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0) << ErrnoText(errno);
  Create(M("d/now"));
  struct stat st;
  EXPECT_EQ(stat(X("d/now").c_str(), &st), 0) << "delayed with leases=0";
  ASSERT_EQ(mount("none", mnt().c_str(), "pohmelfs", MS_REMOUNT, "leases=1"), 0)
      << ErrnoText(errno);
  ASSERT_EQ(mkdir(M("e").c_str(), 0755), 0);
  Create(M("e/later"));
  EXPECT_EQ(ERRNO_OF(stat(X("e/later").c_str(), &st)), ENOENT) << "not delayed with leases=1";
  SyncMount(mnt());
  EXPECT_EQ(stat(X("e/later").c_str(), &st), 0);
}

}  // namespace
}  // namespace pohmelfs::testing
