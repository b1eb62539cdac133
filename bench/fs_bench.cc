// fs benchmark: sequential write and read, 4 KiB random reads, create/stat/unlink and untar in a
// directory (which may be a FUSE mount). Each group of tests runs in a fresh scratch
// subdirectory that is removed afterwards: the read tests read the file seq-write made, stat and
// unlink work on the files create made.
#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench.h"
#include "crypto/checksum.h"
#include "proto/status.h"

extern char** environ;

namespace pohmelfs::bench {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kPage = 4096;
constexpr size_t kStampBytes = 16;
constexpr uint64_t kSeed = 0x504f484d454c4653ull;  // "POHMELFS"
constexpr int kSyntheticDirs = 10;
constexpr int kSyntheticFilesPerDir = 100;

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Closes now, reporting the error close can return (delayed write errors on network fs).
  Status Close() {
    int fd = std::exchange(fd_, -1);
    return ::close(fd) == 0 ? Status::Ok() : Status::FromErrno("close");
  }

 private:
  int fd_;
};

// A fresh directory (parent/pohmelfs-bench.NAME.XXXXXX), removed with its contents on scope exit.
class ScratchDir {
 public:
  static Result<ScratchDir> Create(const std::string& parent, std::string_view name) {
    std::string tmpl = parent + "/pohmelfs-bench." + std::string(name) + ".XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) return Status::FromErrno(("mkdtemp " + tmpl).c_str());
    return ScratchDir(std::move(tmpl));
  }
  ScratchDir(ScratchDir&& o) noexcept : path_(std::exchange(o.path_, {})) {}
  ScratchDir& operator=(ScratchDir&&) = delete;
  ~ScratchDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
    if (ec) spdlog::error("remove {}: {}", path_, ec.message());
  }
  const std::string& path() const { return path_; }
  std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  explicit ScratchDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

struct Row {
  std::string test;
  uint64_t ops = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  double rate = 0;
  std::string unit;
};

Row MakeRow(std::string test, uint64_t ops, uint64_t bytes, double seconds, double rate_count,
            std::string unit) {
  return Row{std::move(test), ops, bytes, seconds, rate_count / seconds, std::move(unit)};
}

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The file content: a fixed pseudo-random MiB, with every 4 KiB page starting with a stamp of
// its file offset, so that a misplaced page is caught as well as a corrupt one.
class Pattern {
 public:
  Pattern() : block_(kMiB) {
    uint64_t state = kSeed;
    for (size_t i = 0; i < kMiB; i += 8) {
      uint64_t v = SplitMix64(&state);
      std::memcpy(block_.data() + i, &v, 8);
    }
  }
  // The content of MiB number `index` of the file.
  const uint8_t* Block(uint64_t index) {
    for (size_t off = 0; off < kMiB; off += kPage) Stamp(index * kMiB + off, block_.data() + off);
    return block_.data();
  }
  bool PageMatches(uint64_t file_offset, const uint8_t* page) const {
    uint8_t stamp[kStampBytes];
    Stamp(file_offset, stamp);
    const uint8_t* expect = block_.data() + file_offset % kMiB;
    return std::memcmp(page, stamp, kStampBytes) == 0 &&
           std::memcmp(page + kStampBytes, expect + kStampBytes, kPage - kStampBytes) == 0;
  }

 private:
  static void Stamp(uint64_t file_offset, uint8_t* out) {
    uint64_t mixed = file_offset * 0x9e3779b97f4a7c15ull ^ kSeed;
    std::memcpy(out, &file_offset, 8);
    std::memcpy(out + 8, &mixed, 8);
  }
  std::vector<uint8_t> block_;
};

// The context of one fs benchmark run.
struct FsRun {
  explicit FsRun(const FsOptions& options) : o(options) {}
  const FsOptions& o;
  Pattern pattern;
  std::vector<uint8_t> rbuf = std::vector<uint8_t>(kMiB);
  uint32_t written_crc = 0;
  uint64_t file_bytes() const { return o.size_mib * kMiB; }
};

Status WriteAll(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return w < 0 ? Status::FromErrno("write") : Status::Error(EIO, "write: 0 bytes");
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

Result<Row> SeqWrite(FsRun& r, const std::string& path) {
  auto start = Clock::now();
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd.valid()) return Status::FromErrno(("open " + path).c_str());
  uint32_t crc = 0;
  for (uint64_t i = 0; i < r.o.size_mib; i++) {
    const uint8_t* block = r.pattern.Block(i);
    if (r.o.check) crc = crypto::Crc32c(block, kMiB, crc);
    if (Status s = WriteAll(fd.get(), block, kMiB); !s.ok()) return s;
  }
  if (::fsync(fd.get()) != 0) return Status::FromErrno("fsync");
  if (Status s = fd.Close(); !s.ok()) return s;
  double secs = Seconds(start, Clock::now());
  r.written_crc = crc;
  return MakeRow("seq-write", r.o.size_mib, r.file_bytes(), secs, static_cast<double>(r.o.size_mib),
                 "MiB/s");
}

// Opens for reading and asks the kernel to drop the file's cached pages.
Result<int> OpenUncached(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(("open " + path).c_str());
  int rc = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  if (rc != 0) spdlog::error("posix_fadvise {}: {} (continuing)", path, std::strerror(rc));
  return fd;
}

Result<Row> SeqRead(FsRun& r, const std::string& path) {
  auto opened = OpenUncached(path);
  if (!opened.ok()) return opened.status();
  Fd fd(*opened);
  auto start = Clock::now();
  uint64_t bytes = 0, ops = 0;
  uint32_t crc = 0;
  for (;;) {
    ssize_t n = ::read(fd.get(), r.rbuf.data(), r.rbuf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("read");
    if (n == 0) break;
    ops++;
    bytes += static_cast<uint64_t>(n);
    if (r.o.check) crc = crypto::Crc32c(r.rbuf.data(), static_cast<size_t>(n), crc);
  }
  double secs = Seconds(start, Clock::now());
  if (bytes != r.file_bytes())
    return Status::Error(EIO, fmt::format("read {} bytes, wrote {}", bytes, r.file_bytes()));
  if (r.o.check && crc != r.written_crc)
    return Status::Error(
        EIO, fmt::format("data mismatch: CRC32C read {:08x}, written {:08x}", crc, r.written_crc));
  return MakeRow("seq-read", ops, bytes, secs, static_cast<double>(bytes) / kMiB, "MiB/s");
}

std::vector<uint64_t> RandomPageOffsets(uint64_t count, uint64_t file_bytes) {
  std::mt19937_64 rng(kSeed);
  std::uniform_int_distribution<uint64_t> page(0, file_bytes / kPage - 1);
  std::vector<uint64_t> out(count);
  for (auto& off : out) off = page(rng) * kPage;
  return out;
}

Status ReadPage(FsRun& r, int fd, uint64_t off) {
  ssize_t n;
  do {
    n = ::pread(fd, r.rbuf.data(), kPage, static_cast<off_t>(off));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Status::FromErrno("pread");
  if (static_cast<size_t>(n) != kPage)
    return Status::Error(EIO, fmt::format("pread at {}: {} bytes", off, n));
  if (r.o.check && !r.pattern.PageMatches(off, r.rbuf.data()))
    return Status::Error(EIO, fmt::format("data mismatch in the page at offset {}", off));
  return Status::Ok();
}

Result<Row> RandRead(FsRun& r, const std::string& path) {
  std::vector<uint64_t> offsets = RandomPageOffsets(r.o.rand_reads, r.file_bytes());
  auto opened = OpenUncached(path);
  if (!opened.ok()) return opened.status();
  Fd fd(*opened);
  auto start = Clock::now();
  for (uint64_t off : offsets) {
    if (Status s = ReadPage(r, fd.get(), off); !s.ok()) return s;
  }
  double secs = Seconds(start, Clock::now());
  return MakeRow("rand-read-4k", offsets.size(), offsets.size() * kPage, secs,
                 static_cast<double>(offsets.size()), "IOPS");
}

std::vector<std::string> FileNames(uint64_t count) {
  std::vector<std::string> names;
  names.reserve(count);
  for (uint64_t i = 0; i < count; i++) names.push_back(fmt::format("f{:07}", i));
  return names;
}

// Times op over every name; op returns 0 or -1 with errno like the syscalls it wraps.
template <typename Op>
Result<Row> TimeEach(const char* test, const std::vector<std::string>& names, Op op) {
  auto start = Clock::now();
  for (const auto& name : names) {
    if (op(name.c_str()) != 0) return Status::FromErrno(fmt::format("{} {}", test, name).c_str());
  }
  double secs = Seconds(start, Clock::now());
  return MakeRow(test, names.size(), 0, secs, static_cast<double>(names.size()), "ops/s");
}

int CreateEmpty(int dfd, const char* name) {
  int fd = ::openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  return fd < 0 ? -1 : ::close(fd);
}

// Runs argv (searched in PATH) with its stdout sent to our stderr, so that --json output stays
// clean; fails unless it exits 0.
Status Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  pid_t pid;
  int rc = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return Status::Error(rc, fmt::format("spawn {}: {}", args[0], std::strerror(rc)));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Status::FromErrno("waitpid");
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  return Status::Error(EIO, fmt::format("{} failed (wait status {:#x})", args[0], status));
}

// A tree of kSyntheticDirs x kSyntheticFilesPerDir small files of 0..8 KiB (fixed seed).
// data must hold 8 KiB.
Status MakeSyntheticTree(const std::string& root, const uint8_t* data) {
  uint64_t state = kSeed;
  if (::mkdir(root.c_str(), 0755) != 0) return Status::FromErrno("mkdir");
  for (int d = 0; d < kSyntheticDirs; d++) {
    std::string dir = fmt::format("{}/d{:02}", root, d);
    if (::mkdir(dir.c_str(), 0755) != 0) return Status::FromErrno("mkdir");
    for (int f = 0; f < kSyntheticFilesPerDir; f++) {
      std::string path = fmt::format("{}/f{:03}.txt", dir, f);
      Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
      if (!fd.valid()) return Status::FromErrno(("open " + path).c_str());
      if (Status s = WriteAll(fd.get(), data, SplitMix64(&state) % 8193); !s.ok()) return s;
      if (Status s = fd.Close(); !s.ok()) return s;
    }
  }
  return Status::Ok();
}

// Builds tmp/synthetic.tar from a generated tree; returns its path.
Result<std::string> BuildSyntheticTarball(FsRun& r, const ScratchDir& tmp) {
  std::string tree = tmp / "tree";
  if (Status s = MakeSyntheticTree(tree, r.pattern.Block(0)); !s.ok()) return s;
  std::string tarball = tmp / "synthetic.tar";
  if (Status s = Spawn({"tar", "-cf", tarball, "-C", tree, "."}); !s.ok()) return s;
  std::error_code ec;
  std::filesystem::remove_all(tree, ec);
  return tarball;
}

// Non-directory entries below root and the bytes of the regular files among them.
Result<std::pair<uint64_t, uint64_t>> CountTree(const std::string& root) {
  namespace fs = std::filesystem;
  std::error_code ec;
  uint64_t files = 0, bytes = 0;
  for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    auto st = it->symlink_status(ec);
    if (ec || fs::is_directory(st)) continue;
    files++;
    if (fs::is_regular_file(st)) bytes += it->file_size(ec);
  }
  if (ec) return Status::Error(EIO, "walk " + root + ": " + ec.message());
  return std::make_pair(files, bytes);
}

void PrintHeader(const FsOptions& o) {
  if (o.json) return;
  fmt::print("{:<14} {:>10} {:>14} {:>10} {:>14}  {}\n", "test", "ops", "bytes", "seconds", "rate",
             "unit");
  std::fflush(stdout);
}

void PrintRow(const FsOptions& o, const Row& row) {
  if (o.json) {
    fmt::print("{}\n", JsonLine()
                           .Str("cmd", o.cmd)
                           .Str("test", row.test)
                           .U64("ops", row.ops)
                           .U64("bytes", row.bytes)
                           .F64("seconds", row.seconds)
                           .F64("rate", row.rate)
                           .Str("unit", row.unit)
                           .str());
  } else {
    fmt::print("{:<14} {:>10} {:>14} {:>10.3f} {:>14.1f}  {}\n", row.test, row.ops, row.bytes,
               row.seconds, row.rate, row.unit);
  }
  std::fflush(stdout);
}

bool Fail(std::string_view test, const Status& s) {
  spdlog::error("{}: {}", test, s.ToString());
  return false;
}

// Runs one test; prints its row, or logs its error. Returns whether it succeeded.
template <typename Fn>
bool Step(const FsOptions& o, std::string_view test, Fn fn) {
  Result<Row> row = fn();
  if (!row.ok()) return Fail(test, row.status());
  PrintRow(o, *row);
  return true;
}

bool RunDataTests(FsRun& r) {
  auto dir = ScratchDir::Create(r.o.dir, "data");
  if (!dir.ok()) return Fail("seq-write", dir.status());
  std::string file = *dir / "seq.dat";
  return Step(r.o, "seq-write", [&] { return SeqWrite(r, file); }) &&
         Step(r.o, "seq-read", [&] { return SeqRead(r, file); }) &&
         Step(r.o, "rand-read-4k", [&] { return RandRead(r, file); });
}

bool RunMetaTests(FsRun& r) {
  auto dir = ScratchDir::Create(r.o.dir, "meta");
  if (!dir.ok()) return Fail("create", dir.status());
  Fd dfd(::open(dir->path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd.valid()) return Fail("create", Status::FromErrno(("open " + dir->path()).c_str()));
  std::vector<std::string> names = FileNames(r.o.files);
  int d = dfd.get();
  auto create_one = [d](const char* n) { return CreateEmpty(d, n); };
  auto stat_one = [d](const char* n) {
    struct stat st;
    return ::fstatat(d, n, &st, 0);
  };
  auto unlink_one = [d](const char* n) { return ::unlinkat(d, n, 0); };
  return Step(r.o, "create", [&] { return TimeEach("create", names, create_one); }) &&
         Step(r.o, "stat", [&] { return TimeEach("stat", names, stat_one); }) &&
         Step(r.o, "unlink", [&] { return TimeEach("unlink", names, unlink_one); });
}

Result<Row> Untar(FsRun& r) {
  std::optional<ScratchDir> tmp;
  std::string tarball;
  if (!r.o.untar.empty()) {
    std::error_code ec;
    tarball = std::filesystem::absolute(r.o.untar, ec).string();
    if (ec) return Status::Error(EINVAL, r.o.untar + ": " + ec.message());
  } else {
    auto made = ScratchDir::Create("/tmp", "tar");
    if (!made.ok()) return made.status();
    tmp.emplace(std::move(made).value());
    auto built = BuildSyntheticTarball(r, *tmp);
    if (!built.ok()) return built.status();
    tarball = *built;
  }
  auto dst = ScratchDir::Create(r.o.dir, "untar");
  if (!dst.ok()) return dst.status();
  auto start = Clock::now();
  if (Status s = Spawn({"tar", "-xf", tarball, "-C", dst->path()}); !s.ok()) return s;
  double secs = Seconds(start, Clock::now());
  auto counted = CountTree(dst->path());
  if (!counted.ok()) return counted.status();
  auto [files, bytes] = *counted;
  return MakeRow("untar", files, bytes, secs, static_cast<double>(files), "files/s");
}

}  // namespace

int RunFs(const FsOptions& options) {
  FsRun run{options};
  PrintHeader(options);
  bool ok =
      RunDataTests(run) && RunMetaTests(run) && Step(options, "untar", [&] { return Untar(run); });
  return ok ? kExitOk : kExitError;
}

}  // namespace pohmelfs::bench
