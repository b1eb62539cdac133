// ExportStore and the operation handlers in-process, on a scratch export (needs root for the
// trusted.* id xattr, as the server itself does).
#include "rdma-server/export_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/xattr.h>

#include <filesystem>
#include <fstream>

#include "rdma-server/export_ops.h"

namespace pohmelfs::server {
namespace {

namespace fs = std::filesystem;
using proto::to_le;

class NoHandles : public OpenHandles {
 public:
  void Opened(const Oid&) override {}
  void Released(const Oid&) override {}
};

class ExportStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pohmelfs-store-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    auto s = ExportStore::Open(dir_.string());
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs one request through the dispatcher; returns status and fills *reply.
  int Exec(uint16_t op, const std::vector<uint8_t>& req, std::vector<uint8_t>* reply = nullptr) {
    std::vector<uint8_t> out;
    proto::Reader r(req);
    OpEnv env{store_.get(), &handles_};
    Status s = ExecuteRequest(env, op, &r, &out);
    if (reply) *reply = out;
    return s.code();
  }
  template <typename T>
  static std::vector<uint8_t> Req(const T& s, std::string_view tail = {},
                                  std::string_view tail2 = {}) {
    std::vector<uint8_t> b(sizeof(T));
    std::memcpy(b.data(), &s, sizeof(T));
    b.insert(b.end(), tail.begin(), tail.end());
    b.insert(b.end(), tail2.begin(), tail2.end());
    return b;
  }
  // Creates parent/name with MKDIR or MKNOD through the dispatcher; returns its new id.
  Oid Create(uint16_t op, const Oid& parent, const std::string& name, uint32_t mode) {
    Oid id = Oid::Random();
    pohmelfs_create_req q{};
    q.parent = parent.ToWire();
    q.new_oid = id.ToWire();
    q.mode = to_le(mode);
    q.name_len = to_le(static_cast<uint32_t>(name.size()));
    EXPECT_EQ(Exec(op, Req(q, name)), 0);
    return id;
  }
  Oid MkDir(const Oid& parent, const std::string& name) {
    return Create(POHMELFS_OP_MKDIR, parent, name, 0755);
  }
  Oid MkFile(const Oid& parent, const std::string& name) {
    return Create(POHMELFS_OP_MKNOD, parent, name, S_IFREG | 0644);
  }

  fs::path dir_;
  std::unique_ptr<ExportStore> store_;
  NoHandles handles_;
};

TEST_F(ExportStoreTest, InitialisesTheIndexAndRootId) {
  EXPECT_TRUE(fs::is_directory(dir_ / ".pohmelfs/ids"));
  EXPECT_TRUE(fs::is_symlink(dir_ / ".pohmelfs/dirs" / Oid::Root().Hex()));
  uint8_t id[16];
  ASSERT_EQ(getxattr(dir_.c_str(), kIdXattr, id, 16), 16);
  EXPECT_EQ(std::memcmp(id, Oid::Root().b.data(), 16), 0);
}

TEST_F(ExportStoreTest, DirectoriesResolveByIdAcrossRenames) {
  Oid a = MkDir(Oid::Root(), "a");
  Oid b = MkDir(a, "b");
  Oid f = MkFile(b, "f");
  // Rename the parent: the child's record names its parent by id and stays valid.
  pohmelfs_rename_req q{
      Oid::Root().ToWire(), Oid::Root().ToWire(), to_le(uint32_t{1}), to_le(uint32_t{2}), 0, 0};
  ASSERT_EQ(Exec(POHMELFS_OP_RENAME, Req(q, "a", "a2")), 0);
  // A fresh store has no cached fds: resolution must go through the records.
  auto fresh = ExportStore::Open(dir_.string());
  ASSERT_TRUE(fresh.ok());
  auto fd = (*fresh)->OpenDir(b);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  struct stat st;
  ASSERT_EQ(fstatat((*fd)->get(), "f", &st, AT_SYMLINK_NOFOLLOW), 0);
  auto fst = (*fresh)->StatById(f);
  ASSERT_TRUE(fst.ok());
  EXPECT_EQ(fst->st_ino, st.st_ino);
  EXPECT_EQ(fst->st_nlink, 1u);  // the index link is not counted
}

TEST_F(ExportStoreTest, UnlinkDropsTheIndexUnlessOpen) {
  Oid f = MkFile(Oid::Root(), "f");
  EXPECT_TRUE(fs::exists(dir_ / ".pohmelfs/ids" / f.Hex()));
  store_->Opened(f);
  pohmelfs_name_req q{Oid::Root().ToWire(), to_le(uint32_t{1}), 0};
  ASSERT_EQ(Exec(POHMELFS_OP_UNLINK, Req(q, "f")), 0);
  EXPECT_TRUE(fs::exists(dir_ / ".pohmelfs/ids" / f.Hex()));  // still open
  store_->Released(f);
  EXPECT_FALSE(fs::exists(dir_ / ".pohmelfs/ids" / f.Hex()));
}

TEST_F(ExportStoreTest, OrphansFromAnEarlierRunAreSwept) {
  Oid f = MkFile(Oid::Root(), "f");
  fs::remove(dir_ / "f");  // behind the server's back: only the index link is left
  auto again = ExportStore::Open(dir_.string());
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(fs::exists(dir_ / ".pohmelfs/ids" / f.Hex()));
}

TEST_F(ExportStoreTest, StaleDirectoryRecordIsNotFollowed) {
  Oid a = MkDir(Oid::Root(), "a");
  // Replace the directory behind the server's back with another one of the same name.
  fs::remove(dir_ / "a");
  fs::create_directories(dir_ / "a");
  auto fresh = ExportStore::Open(dir_.string());
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ((*fresh)->OpenDir(a).code(), ENOENT);
}

TEST_F(ExportStoreTest, CorruptRecordsCannotEscape) {
  Oid a = MkDir(Oid::Root(), "a");
  fs::path rec = dir_ / ".pohmelfs/dirs" / a.Hex();
  fs::remove(rec);
  fs::create_symlink(Oid::Root().Hex() + "/../../etc", rec);
  auto fresh = ExportStore::Open(dir_.string());
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE((*fresh)->OpenDir(a).ok());
}

TEST_F(ExportStoreTest, MkPathCreatesMissingParentsWithTheGivenIds) {
  MkDir(Oid::Root(), "x");
  std::string path = "x/y/z";
  pohmelfs_mkpath_req q{Oid::Root().ToWire(),
                        to_le(uint32_t{0755}),
                        0,
                        0,
                        to_le(static_cast<uint32_t>(path.size())),
                        to_le(uint32_t{3}),
                        0};
  auto req = Req(q, path);
  Oid ids[3] = {Oid::Random(), Oid::Random(), Oid::Random()};
  for (auto& id : ids) {
    auto w = id.ToWire();
    req.insert(req.end(), w.bytes, w.bytes + 16);
  }
  std::vector<uint8_t> reply;
  ASSERT_EQ(Exec(POHMELFS_OP_MKPATH, req, &reply), 0);
  EXPECT_TRUE(fs::is_directory(dir_ / "x/y/z"));
  pohmelfs_attr a;
  ASSERT_GE(reply.size(), sizeof(a));
  std::memcpy(&a, reply.data(), sizeof(a));
  EXPECT_EQ(Oid::FromWire(a.oid), ids[2]);
  EXPECT_TRUE(store_->OpenDir(ids[1]).ok());
  EXPECT_FALSE(store_->OpenDir(ids[0]).ok());  // x existed: its given id was not used
}

TEST_F(ExportStoreTest, RmTreeRemovesEverythingAndItsIndex) {
  Oid t = MkDir(Oid::Root(), "t");
  Oid s = MkDir(t, "s");
  Oid f = MkFile(s, "f");
  MkFile(t, "g");
  pohmelfs_name_req q{Oid::Root().ToWire(), to_le(uint32_t{1}), 0};
  std::vector<uint8_t> reply;
  ASSERT_EQ(Exec(POHMELFS_OP_RMTREE, Req(q, "t"), &reply), 0);
  uint64_t n;
  ASSERT_EQ(reply.size(), sizeof(n));
  std::memcpy(&n, reply.data(), sizeof(n));
  EXPECT_EQ(proto::from_le(n), 4u);
  EXPECT_FALSE(fs::exists(dir_ / "t"));
  EXPECT_FALSE(fs::exists(dir_ / ".pohmelfs/ids" / f.Hex()));
  EXPECT_FALSE(fs::exists(dir_ / ".pohmelfs/dirs" / s.Hex()));
  EXPECT_FALSE(fs::exists(dir_ / ".pohmelfs/dirs" / t.Hex()));
}

TEST_F(ExportStoreTest, FdCachesStayBounded) {
  for (int i = 0; i < 1500; i++) {
    Oid f = MkFile(Oid::Root(), "f" + std::to_string(i));
    ASSERT_TRUE(store_->OpenFile(f).ok());
  }
  size_t fds = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) fds++;
  EXPECT_LT(fds, 1200u);  // file cache capacity is 1024
}

}  // namespace
}  // namespace pohmelfs::server
