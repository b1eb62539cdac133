// Every operation of the foundation through ordinary syscalls on a real mount, with the error
// cases an application relies on. The export is checked too, to see what the server stored.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <set>
#include <sstream>

#include "client/pohmelfs_ioctl.h"
#include "tests/integration/fixture.h"

namespace pohmelfs::testing {
namespace {

class FsOpsTest : public MountedTest {};

// errno of a call that must fail, or 0 if it succeeded.
#define ERRNO_OF(call) ((call) < 0 ? errno : 0)

std::string Slurp(const std::string& path) {
  return ReadFile(path);
}

void WriteAll(const std::string& path, const std::string& data, int flags = O_TRUNC) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | flags, 0644);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(close(fd), 0);
}

// Runs fn in a child with the given uid/gid; returns the child's exit code.
template <typename Fn>
int AsUser(uid_t uid, gid_t gid, Fn fn) {
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0) _exit(100);
    _exit(fn());
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST_F(FsOpsTest, CreateWriteReadAndStat) {
  std::string data(3 * 1024 * 1024 + 17, '\0');
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<char>(i * 7 + i / 4096);
  WriteAll(M("file1"), data);
  EXPECT_EQ(Slurp(M("file1")), data);
  EXPECT_EQ(Slurp(E("file1")), data);  // stored as an ordinary file on the server
  struct stat st;
  ASSERT_EQ(stat(M("file1").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
  EXPECT_EQ(st.st_nlink, 1u);  // the server's index link is not counted
  EXPECT_EQ(st.st_mode & 07777, 0644u);
}

TEST_F(FsOpsTest, PreadPwriteAtOffsetsAndHoles) {
  int fd = open(M("sparse").c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "tail", 4, 10 << 20), 4);
  ASSERT_EQ(pwrite(fd, "head", 4, 0), 4);
  char buf[8] = {};
  ASSERT_EQ(pread(fd, buf, 4, 10 << 20), 4);
  EXPECT_EQ(std::string(buf, 4), "tail");
  ASSERT_EQ(pread(fd, buf, 8, 4), 8);
  EXPECT_EQ(std::string(buf, 8), std::string(8, '\0'));
  ASSERT_EQ(pread(fd, buf, 8, (10 << 20) + 2), 2);  // short read at end of file
  ASSERT_EQ(pread(fd, buf, 8, 20 << 20), 0);
  ASSERT_EQ(close(fd), 0);
  struct stat st;
  ASSERT_EQ(stat(M("sparse").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, (10 << 20) + 4);
}

TEST_F(FsOpsTest, AppendAndTruncate) {
  WriteAll(M("app"), "one");
  WriteAll(M("app"), "two", O_APPEND);
  EXPECT_EQ(Slurp(M("app")), "onetwo");
  ASSERT_EQ(truncate(M("app").c_str(), 2), 0);
  EXPECT_EQ(Slurp(M("app")), "on");
  ASSERT_EQ(truncate(M("app").c_str(), 5), 0);
  EXPECT_EQ(Slurp(M("app")), std::string("on\0\0\0", 5));
  WriteAll(M("app"), "x");  // O_TRUNC through open
  EXPECT_EQ(Slurp(M("app")), "x");
}

TEST_F(FsOpsTest, SetattrModeOwnerTimes) {
  WriteAll(M("attrs"), "a");
  ASSERT_EQ(chmod(M("attrs").c_str(), 0751), 0);
  ASSERT_EQ(chown(M("attrs").c_str(), 1234, 5678), 0);
  timespec ts[2] = {{1000000000, 123456789}, {1100000000, 987654321}};
  ASSERT_EQ(utimensat(AT_FDCWD, M("attrs").c_str(), ts, 0), 0);
  struct stat st, est;
  ASSERT_EQ(stat(M("attrs").c_str(), &st), 0);
  ASSERT_EQ(stat(E("attrs").c_str(), &est), 0);
  for (const struct stat* s : {&st, &est}) {
    EXPECT_EQ(s->st_mode & 07777, 0751u);
    EXPECT_EQ(s->st_uid, 1234u);
    EXPECT_EQ(s->st_gid, 5678u);
    EXPECT_EQ(s->st_atim.tv_sec, 1000000000);
    EXPECT_EQ(s->st_atim.tv_nsec, 123456789);
    EXPECT_EQ(s->st_mtim.tv_sec, 1100000000);
    EXPECT_EQ(s->st_mtim.tv_nsec, 987654321);
  }
  ASSERT_EQ(utimensat(AT_FDCWD, M("attrs").c_str(), nullptr, 0), 0);  // now
  ASSERT_EQ(stat(M("attrs").c_str(), &st), 0);
  EXPECT_GT(st.st_mtim.tv_sec, 1100000000);
}

TEST_F(FsOpsTest, DirectoriesAndReaddirWithManyEntries) {
  ASSERT_EQ(mkdir(M("dir").c_str(), 0750), 0);
  EXPECT_EQ(ERRNO_OF(mkdir(M("dir").c_str(), 0750)), EEXIST);
  constexpr int kFiles = 1500;  // several READDIR pages
  for (int i = 0; i < kFiles; i++) WriteAll(M("dir/f" + std::to_string(i)), "");
  ASSERT_EQ(mkdir(M("dir/sub").c_str(), 0700), 0);
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(M("dir"))) names.insert(e.path().filename());
  EXPECT_EQ(names.size(), static_cast<size_t>(kFiles + 1));
  EXPECT_TRUE(names.count("f0") && names.count("f1499") && names.count("sub"));
  DIR* d = opendir(M("dir").c_str());
  ASSERT_NE(d, nullptr);
  bool dot = false, dotdot = false;
  while (dirent* e = readdir(d)) {
    dot |= std::strcmp(e->d_name, ".") == 0;
    dotdot |= std::strcmp(e->d_name, "..") == 0;
  }
  closedir(d);
  EXPECT_TRUE(dot && dotdot);
  EXPECT_EQ(ERRNO_OF(rmdir(M("dir").c_str())), ENOTEMPTY);
  EXPECT_EQ(ERRNO_OF(unlink(M("dir").c_str())), EISDIR);
  EXPECT_EQ(ERRNO_OF(rmdir(M("dir/f0").c_str())), ENOTDIR);
  for (int i = 0; i < kFiles; i++) ASSERT_EQ(unlink(M("dir/f" + std::to_string(i)).c_str()), 0);
  ASSERT_EQ(rmdir(M("dir/sub").c_str()), 0);
  ASSERT_EQ(rmdir(M("dir").c_str()), 0);
  EXPECT_FALSE(fs::exists(E("dir")));
}

TEST_F(FsOpsTest, ExportRootHidesTheIndex) {
  for (const auto& e : fs::directory_iterator(mount_dir()))
    EXPECT_NE(e.path().filename(), ".pohmelfs");
  struct stat st;
  EXPECT_EQ(ERRNO_OF(stat(M(".pohmelfs").c_str(), &st)), ENOENT);
  EXPECT_EQ(ERRNO_OF(mkdir(M(".pohmelfs").c_str(), 0700)), EPERM);
}

TEST_F(FsOpsTest, SpecialFiles) {
  ASSERT_EQ(mkfifo(M("fifo").c_str(), 0640), 0);
  ASSERT_EQ(mknod(M("chr").c_str(), S_IFCHR | 0600, makedev(1, 3)), 0);
  ASSERT_EQ(mknod(M("blk").c_str(), S_IFBLK | 0600, makedev(7, 0)), 0);
  ASSERT_EQ(mknod(M("sock").c_str(), S_IFSOCK | 0600, 0), 0);
  struct stat st;
  ASSERT_EQ(lstat(M("fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  ASSERT_EQ(lstat(M("chr").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
  ASSERT_EQ(lstat(M("blk").c_str(), &st), 0);
  EXPECT_TRUE(S_ISBLK(st.st_mode));
  ASSERT_EQ(lstat(M("sock").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  ASSERT_EQ(lstat(E("chr").c_str(), &st), 0);
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
}

TEST_F(FsOpsTest, RenameVariants) {
  WriteAll(M("r1"), "1");
  WriteAll(M("r2"), "2");
  ASSERT_EQ(mkdir(M("rd").c_str(), 0755), 0);
  ASSERT_EQ(renameat2(AT_FDCWD, M("r1").c_str(), AT_FDCWD, M("r2").c_str(), RENAME_NOREPLACE), -1);
  EXPECT_EQ(errno, EEXIST);
  ASSERT_EQ(renameat2(AT_FDCWD, M("r1").c_str(), AT_FDCWD, M("r2").c_str(), RENAME_EXCHANGE), 0);
  EXPECT_EQ(Slurp(M("r1")), "2");
  EXPECT_EQ(Slurp(M("r2")), "1");
  ASSERT_EQ(rename(M("r1").c_str(), M("r2").c_str()), 0);  // replaces
  EXPECT_EQ(Slurp(M("r2")), "2");
  EXPECT_FALSE(fs::exists(M("r1")));
  ASSERT_EQ(rename(M("r2").c_str(), M("rd/moved").c_str()), 0);
  EXPECT_EQ(Slurp(M("rd/moved")), "2");
  // A directory moves with its contents, and stays usable by id afterwards.
  ASSERT_EQ(mkdir(M("rd/inner").c_str(), 0755), 0);
  WriteAll(M("rd/inner/deep"), "deep");
  ASSERT_EQ(rename(M("rd").c_str(), M("rd2").c_str()), 0);
  EXPECT_EQ(Slurp(M("rd2/inner/deep")), "deep");
  WriteAll(M("rd2/inner/new"), "new");
  EXPECT_EQ(Slurp(E("rd2/inner/new")), "new");
  ASSERT_EQ(mkdir(M("rx").c_str(), 0755), 0);
  ASSERT_EQ(renameat2(AT_FDCWD, M("rd2").c_str(), AT_FDCWD, M("rx").c_str(), RENAME_EXCHANGE), 0);
  EXPECT_EQ(Slurp(M("rx/inner/deep")), "deep");
  WriteAll(M("rx/inner/after"), "a");
  EXPECT_EQ(Slurp(E("rx/inner/after")), "a");
  EXPECT_EQ(ERRNO_OF(rename(M("nonexistent").c_str(), M("zz").c_str())), ENOENT);
  EXPECT_EQ(ERRNO_OF(rename(M("rx").c_str(), M("rx/inner/x").c_str())), EINVAL);
}

TEST_F(FsOpsTest, CrossMountRenameAndLinkAreExdev) {
  WriteAll(M("xdev"), "x");
  std::string outside = (scratch_->path() / "outside").string();
  EXPECT_EQ(ERRNO_OF(rename(M("xdev").c_str(), outside.c_str())), EXDEV);
  EXPECT_EQ(ERRNO_OF(link(M("xdev").c_str(), outside.c_str())), EXDEV);
}

TEST_F(FsOpsTest, HardLinksAndSymlinks) {
  WriteAll(M("target"), "payload");
  ASSERT_EQ(link(M("target").c_str(), M("hard").c_str()), 0);
  struct stat a, b;
  ASSERT_EQ(stat(M("target").c_str(), &a), 0);
  ASSERT_EQ(stat(M("hard").c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_nlink, 2u);
  ASSERT_EQ(unlink(M("target").c_str()), 0);
  EXPECT_EQ(Slurp(M("hard")), "payload");
  ASSERT_EQ(symlink("hard", M("soft").c_str()), 0);
  char buf[64] = {};
  ASSERT_EQ(readlink(M("soft").c_str(), buf, sizeof(buf)), 4);
  EXPECT_EQ(std::string(buf), "hard");
  EXPECT_EQ(Slurp(M("soft")), "payload");
  ASSERT_EQ(mkdir(M("ldir").c_str(), 0755), 0);
  EXPECT_EQ(ERRNO_OF(link(M("ldir").c_str(), M("ldir2").c_str())), EPERM);
  EXPECT_EQ(ERRNO_OF(symlink("x", M("soft").c_str())), EEXIST);
}

TEST_F(FsOpsTest, UnlinkedOpenFileStaysUsable) {
  int fd = open(M("ghost").c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "boo", 3), 3);
  ASSERT_EQ(unlink(M("ghost").c_str()), 0);
  char buf[3];
  ASSERT_EQ(pread(fd, buf, 3, 0), 3);
  EXPECT_EQ(std::string(buf, 3), "boo");
  ASSERT_EQ(pwrite(fd, "!", 1, 3), 1);
  ASSERT_EQ(close(fd), 0);
}

TEST_F(FsOpsTest, Xattrs) {
  WriteAll(M("xa"), "");
  ASSERT_EQ(setxattr(M("xa").c_str(), "user.color", "blue", 4, XATTR_CREATE), 0);
  EXPECT_EQ(ERRNO_OF(setxattr(M("xa").c_str(), "user.color", "red", 3, XATTR_CREATE)), EEXIST);
  EXPECT_EQ(ERRNO_OF(setxattr(M("xa").c_str(), "user.none", "x", 1, XATTR_REPLACE)), ENODATA);
  char buf[64];
  EXPECT_EQ(getxattr(M("xa").c_str(), "user.color", nullptr, 0), 4);
  ASSERT_EQ(getxattr(M("xa").c_str(), "user.color", buf, sizeof(buf)), 4);
  EXPECT_EQ(std::string(buf, 4), "blue");
  EXPECT_EQ(ERRNO_OF(getxattr(M("xa").c_str(), "user.color", buf, 2)), ERANGE);
  ssize_t n = listxattr(M("xa").c_str(), buf, sizeof(buf));
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), std::string("user.color\0", 11));
  // The server's own id xattr never shows through.
  EXPECT_EQ(ERRNO_OF(getxattr(M("xa").c_str(), "trusted.pohmelfs.id", buf, sizeof(buf))), ENODATA);
  EXPECT_EQ(ERRNO_OF(setxattr(M("xa").c_str(), "trusted.pohmelfs.id", "x", 1, 0)), EPERM);
  ASSERT_EQ(removexattr(M("xa").c_str(), "user.color"), 0);
  EXPECT_EQ(ERRNO_OF(getxattr(M("xa").c_str(), "user.color", buf, sizeof(buf))), ENODATA);
  ASSERT_EQ(mkdir(M("xdir").c_str(), 0755), 0);
  ASSERT_EQ(setxattr(M("xdir").c_str(), "user.d", "1", 1, 0), 0);
  ASSERT_EQ(getxattr(E("xdir").c_str(), "user.d", buf, sizeof(buf)), 1);
}

TEST_F(FsOpsTest, FsyncFallocateStatfs) {
  int fd = open(M("fa").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "abc", 3), 3);
  EXPECT_EQ(fsync(fd), 0);
  EXPECT_EQ(fdatasync(fd), 0);
  int rc = fallocate(fd, 0, 0, 1 << 20);
  if (rc != 0) {
    EXPECT_EQ(errno, EOPNOTSUPP);  // the backing filesystem decides
  } else {
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, 1 << 20);
    EXPECT_EQ(fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 2 << 20), 0);
    ASSERT_EQ(fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, 1 << 20);
  }
  ASSERT_EQ(close(fd), 0);
  int dfd = open(mount_dir().c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dfd, 0);
  EXPECT_EQ(fsync(dfd), 0);
  close(dfd);
  struct statvfs sv, esv;
  ASSERT_EQ(statvfs(mount_dir().c_str(), &sv), 0);
  ASSERT_EQ(statvfs(export_dir().c_str(), &esv), 0);
  EXPECT_EQ(sv.f_blocks * sv.f_frsize, esv.f_blocks * esv.f_frsize);
  EXPECT_EQ(sv.f_namemax, 255u);
}

TEST_F(FsOpsTest, NameLimitsAndMissingNames) {
  std::string ok(255, 'n'), too_long(256, 'n');
  WriteAll(M(ok), "");
  EXPECT_TRUE(fs::exists(E(ok)));
  EXPECT_EQ(ERRNO_OF(open(M(too_long).c_str(), O_CREAT | O_WRONLY, 0644)), ENAMETOOLONG);
  EXPECT_EQ(ERRNO_OF(open(M("missing/x").c_str(), O_CREAT | O_WRONLY, 0644)), ENOENT);
  EXPECT_EQ(ERRNO_OF(open(M("missing").c_str(), O_RDONLY)), ENOENT);
  EXPECT_EQ(ERRNO_OF(unlink(M("missing").c_str())), ENOENT);
  WriteAll(M("excl"), "");
  EXPECT_EQ(ERRNO_OF(open(M("excl").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644)), EEXIST);
  EXPECT_EQ(ERRNO_OF(mkdir(M("excl/sub").c_str(), 0755)), ENOTDIR);
}

TEST_F(FsOpsTest, NonRootCallerGetsEaccesAndOwnsWhatItCreates) {
  ASSERT_EQ(mkdir(M("private").c_str(), 0700), 0);
  ASSERT_EQ(mkdir(M("shared").c_str(), 0777), 0);
  ASSERT_EQ(chmod(M("shared").c_str(), 0777), 0);  // past the umask
  WriteAll(M("rootonly"), "secret");
  ASSERT_EQ(chmod(M("rootonly").c_str(), 0600), 0);
  std::string priv = M("private/x"), shared = M("shared/mine"), ro = M("rootonly");
  int rc = AsUser(65534, 65534, [&] {
    if (open(priv.c_str(), O_CREAT | O_WRONLY, 0644) >= 0 || errno != EACCES) return 1;
    if (open(ro.c_str(), O_RDONLY) >= 0 || errno != EACCES) return 2;
    if (chmod(ro.c_str(), 0777) == 0 || errno != EPERM) return 3;
    int fd = open(shared.c_str(), O_CREAT | O_WRONLY, 0644);
    if (fd < 0) return 4;
    close(fd);
    return 0;
  });
  EXPECT_EQ(rc, 0);
  struct stat st;
  ASSERT_EQ(stat(E("shared/mine").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_EQ(st.st_gid, 65534u);
}

TEST_F(FsOpsTest, NewFilesKeepSetIdBits) {
  int fd = open(M("suid").c_str(), O_CREAT | O_EXCL | O_WRONLY, 06755);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_EQ(chmod(M("suid").c_str(), 06755), 0);  // past the umask
  struct stat st;
  ASSERT_EQ(stat(E("suid").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 06755u);
  mode_t old = umask(0);
  fd = open(M("suid2").c_str(), O_CREAT | O_EXCL | O_WRONLY, 04755);
  umask(old);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_EQ(stat(E("suid2").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04755u);  // the server's chown did not clear it
}

TEST_F(FsOpsTest, RemovingAVeryDeepTreeInOneCommand) {
  // 320 levels: deeper than a recursion with large stack frames could survive.
  std::string ctl = std::string(POHMELFS_BIN_DIR) + "/pohmelfsctl";
  std::string log = (scratch_->path() / "deep.log").string();
  std::string path = "deep";
  ASSERT_EQ(mkdir(M(path).c_str(), 0755), 0);
  for (int chunk = 0; chunk < 5; chunk++) {  // MKPATH creates at most 64 levels at once
    for (int i = 0; i < 64; i++) path += "/d";
    ASSERT_EQ(RunCommand({ctl, "mkpath", M(path)}, log), 0) << ReadFile(log);
  }
  WriteAll(M(path + "/leaf"), "x");
  ASSERT_EQ(RunCommand({ctl, "rmtree", M("deep")}, log), 0) << ReadFile(log);
  EXPECT_FALSE(fs::exists(E("deep")));
  EXPECT_TRUE(server_->Alive());
}

TEST_F(FsOpsTest, TreeOperationsInOneCommand) {
  std::string ctl = std::string(POHMELFS_BIN_DIR) + "/pohmelfsctl";
  std::string log = (scratch_->path() / "ctl.log").string();
  ASSERT_EQ(RunCommand({ctl, "mkpath", M("t/a/b/c/d")}, log), 0) << ReadFile(log);
  EXPECT_TRUE(fs::is_directory(M("t/a/b/c/d")));
  EXPECT_TRUE(fs::is_directory(E("t/a/b/c/d")));
  WriteAll(M("t/a/file"), "f");
  WriteAll(M("t/a/b/c/d/deepfile"), "f");
  ASSERT_EQ(symlink("/etc/passwd", M("t/a/b/link").c_str()), 0);
  ASSERT_EQ(RunCommand({ctl, "rmtree", M("t")}, log), 0) << ReadFile(log);
  EXPECT_FALSE(fs::exists(M("t")));
  EXPECT_FALSE(fs::exists(E("t")));
  EXPECT_TRUE(fs::exists("/etc/passwd"));                  // the link was removed, never followed
  EXPECT_NE(RunCommand({ctl, "rmtree", M("t")}, log), 0);  // gone: ENOENT
}

TEST_F(FsOpsTest, ExistingFilesOnTheServerAreServed) {
  // Files created on the server behind the client's back get ids on first lookup.
  fs::create_directories(E("preexisting/sub"));
  { std::ofstream(E("preexisting/sub/file")) << "from the server"; }
  EXPECT_EQ(Slurp(M("preexisting/sub/file")), "from the server");
  WriteAll(M("preexisting/sub/file2"), "from the client");
  EXPECT_EQ(Slurp(E("preexisting/sub/file2")), "from the client");
}

TEST_F(FsOpsTest, MoreFilesThanTheDescriptorLimitWithoutHoldingDescriptors) {
  // RLIMIT_NOFILE is 20000 here: neither side may keep a descriptor per known inode.
  constexpr int kFiles = 21000;
  ASSERT_EQ(mkdir(M("many").c_str(), 0755), 0);
  std::vector<int> keep;  // a few stay open, as an application's would
  for (int i = 0; i < kFiles; i++) {
    int fd = open(M("many/" + std::to_string(i)).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    ASSERT_GE(fd, 0) << i << ": " << strerror(errno);
    if (i % 1000 == 0) {
      keep.push_back(fd);
    } else {
      ASSERT_EQ(close(fd), 0);
    }
  }
  size_t seen = 0;
  for (const auto& e : fs::directory_iterator(M("many"))) {
    struct stat st;
    ASSERT_EQ(stat(e.path().c_str(), &st), 0);
    seen++;
  }
  EXPECT_EQ(seen, static_cast<size_t>(kFiles));
  EXPECT_LT(CountFds(server_->pid()), 6000u);
  pid_t client = FindMountProcess(mount_dir());
  ASSERT_GT(client, 0);
  EXPECT_LT(CountFds(client), 100u);
  for (int fd : keep) EXPECT_EQ(close(fd), 0);
  std::string ctl = std::string(POHMELFS_BIN_DIR) + "/pohmelfsctl";
  ASSERT_EQ(RunCommand({ctl, "rmtree", M("many")}, "/dev/null"), 0);
}

TEST(MountHelper, MountTypeFusePohmelfsWorks) {
  StandaloneServer s("helper");
  ASSERT_TRUE(s.started) << s.server.Log();
  // mount(8) runs /sbin/mount.fuse.pohmelfs for type fuse.pohmelfs; point it at this build.
  // A real file there is an installed helper and is left alone; a link (perhaps dangling, from
  // an interrupted run) is replaced by one to this build.
  std::string helper = "/sbin/mount.fuse.pohmelfs";
  auto status = fs::symlink_status(helper);
  bool installed = !fs::exists(status) || fs::is_symlink(status);
  if (installed) {
    fs::remove(helper);
    fs::create_symlink(std::string(POHMELFS_BIN_DIR) + "/mount.fuse.pohmelfs", helper);
  }
  std::string log = s.log("mount.log");
  int rc = RunCommand({"/bin/mount", "-t", "fuse.pohmelfs", "-o", "_netdev,trans_retries=2",
                       s.server.uri(), s.mnt()},
                      log);
  if (installed) fs::remove(helper);
  ASSERT_EQ(rc, 0) << ReadFile(log);
  { std::ofstream(s.mnt() + "/hello") << "via mount -t"; }
  EXPECT_EQ(ReadFile(s.export_dir() + "/hello"), "via mount -t");
  EXPECT_NE(ReadFile("/proc/mounts").find(s.mnt() + " fuse.pohmelfs"), std::string::npos);
  Unmount(s.mnt());
  EXPECT_EQ(ReadFile("/proc/mounts").find(s.mnt() + " "), std::string::npos);
}

// The mount's backing device ("0:NN") from /proc/self/mountinfo, or "".
std::string MountDevice(const std::string& mountpoint) {
  std::istringstream in(ReadFile("/proc/self/mountinfo"));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    if (f >> id >> parent >> dev >> root >> point && point == mountpoint) return dev;
  }
  return "";
}

// read_ahead_kb above the 1 MiB request size used to be capped back to 1 MiB by the kernel when
// it got the INIT reply, and max_read made libfuse end the session at INIT.
TEST(MountOptions, ReadAheadAboveOneMibAndMaxReadTakeEffect) {
  StandaloneServer s("readopts");
  ASSERT_TRUE(s.started) << s.server.Log();
  std::string data(3 * 1024 * 1024 + 123, '\0');
  std::mt19937 rng(42);
  for (auto& c : data) c = static_cast<char>(rng());
  WriteAll(s.export_dir() + "/big", data);
  ASSERT_TRUE(
      Mount(s.server.uri(), s.mnt(), s.log("mount.log"), "read_ahead_kb=4096,max_read=65536"))
      << ReadFile(s.log("mount.log"));
  const std::string got = Slurp(s.mnt() + "/big");
  EXPECT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data) << "the data read differs";
  const std::string dev = MountDevice(fs::canonical(s.mnt()).string());
  ASSERT_FALSE(dev.empty());
  EXPECT_EQ(ReadFile("/sys/class/bdi/" + dev + "/read_ahead_kb"), "4096\n");
  Unmount(s.mnt());
}

// log_file= sends the daemon's log to a file of its own (relative paths are taken from where
// the mount was run); a file that cannot be opened fails the mount with a message.
TEST(MountOptions, LogFileGetsTheDaemonsLogAndABadOneFailsTheMount) {
  StandaloneServer s("logfile");
  ASSERT_TRUE(s.started) << s.server.Log();
  EXPECT_FALSE(Mount(s.server.uri(), s.mnt(), s.log("bad.log"), "log_file=/proc/no/such.log"));
  EXPECT_NE(ReadFile(s.log("bad.log")).find("log_file: "), std::string::npos)
      << ReadFile(s.log("bad.log"));
  const std::string file = s.log("daemon.log");
  ASSERT_TRUE(Mount(s.server.uri(), s.mnt(), s.log("mount.log"), "log_level=info,log_file=" + file))
      << ReadFile(s.log("mount.log"));
  EXPECT_NE(ReadFile(file).find("mounted " + s.server.uri()), std::string::npos) << ReadFile(file);
  Unmount(s.mnt());
}

TEST(DeadServer, CallsFailWithErrnoWithinTheBound) {
  StandaloneServer s("dead");
  ASSERT_TRUE(s.started) << s.server.Log();
  ASSERT_TRUE(Mount(s.server.uri(), s.mnt(), s.log("mount.log"),
                    "trans_scan_timeout=500,trans_retries=1,connect_timeout=500"));
  { std::ofstream(s.mnt() + "/before") << "x"; }
  s.server.Stop(SIGKILL);  // killed: its exit status says nothing
  auto start = std::chrono::steady_clock::now();
  struct stat st;
  int err = ERRNO_OF(stat((s.mnt() + "/never-seen").c_str(), &st));
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(err == EIO || err == ETIMEDOUT) << strerror(err);
  // (retries + 1) * max(trans_scan_timeout, 2 * connect_timeout) = 2 s, plus slack for the
  // machine.
  EXPECT_LT(took, std::chrono::seconds(10));
  Unmount(s.mnt());
}

TEST(ServerStartup, RefusesAMissingExport) {
  ScratchDir scratch("noexport");
  std::string log = (scratch.path() / "server.log").string();
  int rc = RunCommand({std::string(POHMELFS_BIN_DIR) + "/pohmelfs-server", "--export",
                       (scratch.path() / "absent").string(), "--listen", "tcp://127.0.0.1:0"},
                      log, 10);
  EXPECT_NE(rc, 0);
  EXPECT_NE(ReadFile(log).find("absent"), std::string::npos);
}

}  // namespace
}  // namespace pohmelfs::testing
