// ExportStore and the operation handlers in-process, on a scratch export (needs root for the
// trusted.* id xattr, as the server itself does).
#include "rdma-server/export_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/xattr.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "rdma-server/export_ops.h"

namespace pohmelfs::server {
namespace {

namespace fs = std::filesystem;
using proto::to_le;

class NoHandles : public OpenHandles {
 public:
  void Opened(const Oid&) override {}
  size_t OpenCount() const override { return 0; }
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

  static std::string ReadAll(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

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

  static pohmelfs_attr AttrIn(const std::vector<uint8_t>& reply) {
    pohmelfs_attr a{};
    EXPECT_GE(reply.size(), sizeof(a));
    if (reply.size() >= sizeof(a)) std::memcpy(&a, reply.data(), sizeof(a));
    return a;
  }
  // The version GETATTR reports.
  uint64_t VersionOf(const Oid& oid) {
    std::vector<uint8_t> reply;
    EXPECT_EQ(Exec(POHMELFS_OP_GETATTR, Req(pohmelfs_obj_req{oid.ToWire()}), &reply), 0);
    return proto::from_le(AttrIn(reply).version);
  }
  int Write(const Oid& oid, std::string_view data) {
    pohmelfs_write_req q{oid.ToWire(), 0, to_le(static_cast<uint32_t>(data.size())), 0};
    return Exec(POHMELFS_OP_WRITE, Req(q, data));
  }
  // SETATTR; returns the status and fills *attr from the reply.
  int SetAttr(const Oid& oid, uint32_t valid, uint32_t mode, uint64_t version,
              pohmelfs_attr* attr = nullptr) {
    pohmelfs_setattr_req q{};
    q.oid = oid.ToWire();
    q.valid = to_le(valid);
    q.mode = to_le(mode);
    q.version = to_le(version);
    std::vector<uint8_t> reply;
    int rc = Exec(POHMELFS_OP_SETATTR, Req(q), &reply);
    if (rc == 0 && attr) *attr = AttrIn(reply);
    return rc;
  }
  int SetXattr(const Oid& oid, const std::string& name, std::string_view value) {
    pohmelfs_setxattr_req q{oid.ToWire(), 0, to_le(static_cast<uint32_t>(name.size())),
                            to_le(static_cast<uint32_t>(value.size())), 0};
    return Exec(POHMELFS_OP_SETXATTR, Req(q, name, value));
  }
  int RemoveXattr(const Oid& oid, const std::string& name) {
    pohmelfs_removexattr_req q{oid.ToWire(), to_le(static_cast<uint32_t>(name.size())), 0};
    return Exec(POHMELFS_OP_REMOVEXATTR, Req(q, name));
  }
  int Replica(uint32_t cmd, const Oid& peer, std::vector<uint8_t>* reply = nullptr) {
    pohmelfs_replica_req q{to_le(cmd), 0, peer.ToWire()};
    return Exec(POHMELFS_OP_REPLICA, Req(q), reply);
  }
  // REPLICA LIST as ids.
  std::vector<Oid> ListStale() {
    std::vector<uint8_t> reply;
    EXPECT_EQ(Replica(POHMELFS_REPLICA_LIST, Oid(), &reply), 0);
    proto::Reader r(reply);
    pohmelfs_replica_list_rep rep{};
    EXPECT_TRUE(r.Get(&rep));
    std::vector<Oid> peers;
    for (uint32_t i = 0; i < proto::from_le(rep.count); i++) {
      pohmelfs_oid o;
      EXPECT_TRUE(r.Get(&o));
      peers.push_back(Oid::FromWire(o));
    }
    EXPECT_EQ(r.remaining(), 0u);
    return peers;
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

TEST_F(ExportStoreTest, VersionStartsAtZeroAndCountsEveryChange) {
  Oid f = MkFile(Oid::Root(), "f");
  EXPECT_EQ(VersionOf(f), 0u);
  ASSERT_EQ(Write(f, "abc"), 0);
  EXPECT_EQ(VersionOf(f), 1u);
  pohmelfs_attr a;
  ASSERT_EQ(SetAttr(f, POHMELFS_SETATTR_MODE, 0600, 0, &a), 0);
  EXPECT_EQ(proto::from_le(a.version), 2u);  // the SETATTR reply carries the new version
  ASSERT_EQ(SetXattr(f, "user.k", "v"), 0);
  EXPECT_EQ(VersionOf(f), 3u);
  ASSERT_EQ(RemoveXattr(f, "user.k"), 0);
  EXPECT_EQ(VersionOf(f), 4u);
  pohmelfs_fallocate_req fq{f.ToWire(), 0, to_le(uint64_t{8192}), 0, 0};
  ASSERT_EQ(Exec(POHMELFS_OP_FALLOCATE, Req(fq)), 0);
  EXPECT_EQ(VersionOf(f), 5u);
  std::vector<uint8_t> reply;
  pohmelfs_open_req oq{f.ToWire(), to_le(uint32_t{POHMELFS_OPEN_WRITE | POHMELFS_OPEN_TRUNC}), 0};
  ASSERT_EQ(Exec(POHMELFS_OP_OPEN, Req(oq), &reply), 0);
  EXPECT_EQ(proto::from_le(AttrIn(reply).version), 6u);
  oq.flags = to_le(uint32_t{POHMELFS_OPEN_WRITE});
  ASSERT_EQ(Exec(POHMELFS_OP_OPEN, Req(oq), &reply), 0);
  EXPECT_EQ(proto::from_le(AttrIn(reply).version), 6u);
  // Failed changes, reads and empty SETATTRs change nothing.
  EXPECT_EQ(RemoveXattr(f, "user.absent"), ENODATA);
  pohmelfs_read_req rq{f.ToWire(), 0, to_le(uint32_t{10}), 0};
  ASSERT_EQ(Exec(POHMELFS_OP_READ, Req(rq)), 0);
  ASSERT_EQ(SetAttr(f, 0, 0, 0), 0);
  EXPECT_EQ(VersionOf(f), 6u);
  // On disk: 8 bytes little-endian.
  uint64_t le = 0;
  ASSERT_EQ(lgetxattr((dir_ / "f").c_str(), kVersionXattr, &le, sizeof(le)), 8);
  EXPECT_EQ(proto::from_le(le), 6u);
}

TEST_F(ExportStoreTest, DirectoryVersionCountsItsOwnChangesNotItsEntries) {
  Oid d = MkDir(Oid::Root(), "d");
  MkFile(d, "x");
  MkDir(d, "y");
  pohmelfs_name_req uq{d.ToWire(), to_le(uint32_t{1}), 0};
  ASSERT_EQ(Exec(POHMELFS_OP_UNLINK, Req(uq, "x")), 0);
  EXPECT_EQ(VersionOf(d), 0u);
  ASSERT_EQ(SetAttr(d, POHMELFS_SETATTR_MODE, 0700, 0), 0);
  ASSERT_EQ(SetXattr(d, "user.k", "v"), 0);
  EXPECT_EQ(VersionOf(d), 2u);
  EXPECT_EQ(VersionOf(Oid::Root()), 0u);
  // LOOKUP reports the same version as GETATTR.
  std::vector<uint8_t> reply;
  ASSERT_EQ(Exec(POHMELFS_OP_LOOKUP,
                 Req(pohmelfs_name_req{Oid::Root().ToWire(), to_le(uint32_t{1}), 0}, "d"), &reply),
            0);
  EXPECT_EQ(proto::from_le(AttrIn(reply).version), 2u);
}

TEST_F(ExportStoreTest, SetAttrVersionSetsTheExactValueAndAppliesTheRest) {
  Oid f = MkFile(Oid::Root(), "f");
  ASSERT_EQ(Write(f, "abc"), 0);
  pohmelfs_attr a;
  ASSERT_EQ(SetAttr(f, POHMELFS_SETATTR_VERSION | POHMELFS_SETATTR_MODE, 0640, 42, &a), 0);
  EXPECT_EQ(proto::from_le(a.version), 42u);
  EXPECT_EQ(proto::from_le(a.mode) & 07777, 0640u);
  ASSERT_EQ(Write(f, "d"), 0);
  EXPECT_EQ(VersionOf(f), 43u);
  ASSERT_EQ(SetAttr(f, POHMELFS_SETATTR_VERSION, 0, 7, &a), 0);  // exact, even going down
  EXPECT_EQ(proto::from_le(a.version), 7u);
  Oid d = MkDir(Oid::Root(), "d");
  ASSERT_EQ(SetAttr(d, POHMELFS_SETATTR_VERSION, 0, uint64_t{1} << 40, &a), 0);
  EXPECT_EQ(proto::from_le(a.version), uint64_t{1} << 40);
}

TEST_F(ExportStoreTest, ReadDirEntriesCarryVersions) {
  Oid f = MkFile(Oid::Root(), "f");
  ASSERT_EQ(Write(f, "1"), 0);
  ASSERT_EQ(Write(f, "2"), 0);
  MkFile(Oid::Root(), "g");
  Oid d = MkDir(Oid::Root(), "d");
  ASSERT_EQ(SetAttr(d, POHMELFS_SETATTR_MODE, 0711, 0), 0);
  pohmelfs_readdir_req q{Oid::Root().ToWire(), 0, to_le(uint32_t{POHMELFS_READDIR_MAX}), 0};
  std::vector<uint8_t> reply;
  ASSERT_EQ(Exec(POHMELFS_OP_READDIR, Req(q), &reply), 0);
  proto::Reader r(reply);
  pohmelfs_readdir_rep rep;
  ASSERT_TRUE(r.Get(&rep));
  std::map<std::string, uint64_t> versions;
  for (uint32_t i = 0; i < proto::from_le(rep.count); i++) {
    pohmelfs_dirent de;
    std::string_view name;
    ASSERT_TRUE(r.Get(&de));
    uint32_t len = proto::from_le(de.name_len);
    ASSERT_TRUE(r.Bytes(len, &name));
    ASSERT_TRUE(r.Skip(POHMELFS_PAD8(len) - len));
    versions[std::string(name)] = proto::from_le(de.attr.version);
  }
  EXPECT_EQ(versions, (std::map<std::string, uint64_t>{{"d", 1}, {"f", 2}, {"g", 0}}));
}

TEST_F(ExportStoreTest, VersionXattrIsHiddenFromClients) {
  Oid f = MkFile(Oid::Root(), "f");
  ASSERT_EQ(Write(f, "abc"), 0);
  ASSERT_EQ(SetXattr(f, "user.visible", "1"), 0);
  pohmelfs_listxattr_req lq{f.ToWire(), to_le(uint32_t{POHMELFS_XATTR_SIZE_MAX}), 0};
  std::vector<uint8_t> reply;
  ASSERT_EQ(Exec(POHMELFS_OP_LISTXATTR, Req(lq), &reply), 0);
  EXPECT_EQ(std::string(reply.begin(), reply.end()), std::string("user.visible\0", 13));
  for (const std::string name : {kVersionXattr, kIdXattr}) {
    pohmelfs_getxattr_req gq{f.ToWire(), to_le(uint32_t{64}),
                             to_le(static_cast<uint32_t>(name.size()))};
    EXPECT_EQ(Exec(POHMELFS_OP_GETXATTR, Req(gq, name)), ENODATA) << name;
    EXPECT_EQ(SetXattr(f, name, "12345678"), EPERM) << name;
    EXPECT_EQ(RemoveXattr(f, name), EPERM) << name;
  }
  EXPECT_EQ(VersionOf(f), 2u);
}

TEST_F(ExportStoreTest, ConcurrentWritesLoseNoVersionBumps) {
  Oid f = MkFile(Oid::Root(), "f");
  constexpr int kThreads = 4, kWrites = 100;
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back([&] {
      for (int i = 0; i < kWrites; i++)
        if (Write(f, "x") != 0) failed++;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(VersionOf(f), uint64_t{kThreads * kWrites});
}

TEST_F(ExportStoreTest, ServerIdIsCreatedOnceAndKept) {
  Oid id = store_->server_id();
  EXPECT_FALSE(id.IsZero());
  std::string on_disk = ReadAll(dir_ / ".pohmelfs/server-id");
  ASSERT_EQ(on_disk.size(), 16u);
  EXPECT_EQ(std::memcmp(on_disk.data(), id.b.data(), 16), 0);
  auto again = ExportStore::Open(dir_.string());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->server_id(), id);
  std::ofstream(dir_ / ".pohmelfs/server-id", std::ios::trunc) << "short";
  EXPECT_EQ(ExportStore::Open(dir_.string()).code(), EIO);
}

TEST_F(ExportStoreTest, ReplicaMarkersAreDurableFiles) {
  Oid a = Oid::Random(), b = Oid::Random();
  ASSERT_EQ(Replica(POHMELFS_REPLICA_MARK, a), 0);
  ASSERT_EQ(Replica(POHMELFS_REPLICA_MARK, b), 0);
  ASSERT_EQ(Replica(POHMELFS_REPLICA_MARK, a), 0);  // idempotent
  EXPECT_TRUE(fs::is_regular_file(dir_ / ".pohmelfs/stale" / a.Hex()));
  // Names that are not ids are ignored.
  std::ofstream(dir_ / ".pohmelfs/stale/junk") << "";
  std::ofstream(dir_ / ".pohmelfs/stale" / std::string(32, 'A')) << "";
  std::ofstream(dir_ / ".pohmelfs/stale" / Oid().Hex()) << "";
  auto sorted = [](std::vector<Oid> v) {
    std::sort(v.begin(), v.end(), [](const Oid& x, const Oid& y) { return x.b < y.b; });
    return v;
  };
  EXPECT_EQ(ListStale(), sorted({a, b}));
  ASSERT_EQ(Replica(POHMELFS_REPLICA_CLEAR, a), 0);
  ASSERT_EQ(Replica(POHMELFS_REPLICA_CLEAR, a), 0);  // absent: still fine
  EXPECT_FALSE(fs::exists(dir_ / ".pohmelfs/stale" / a.Hex()));
  store_ = std::move(*ExportStore::Open(dir_.string()));  // kept across a restart
  EXPECT_EQ(ListStale(), std::vector<Oid>{b});
}

TEST_F(ExportStoreTest, MalformedReplicaRequestsAreRefused) {
  EXPECT_EQ(Replica(9, Oid::Random()), EINVAL);
  EXPECT_EQ(Replica(POHMELFS_REPLICA_MARK, Oid()), EINVAL);
  pohmelfs_replica_req q{to_le(uint32_t{POHMELFS_REPLICA_MARK}), 0, Oid::Random().ToWire()};
  auto shortreq = Req(q);
  shortreq.resize(sizeof(q) - 1);
  EXPECT_EQ(Exec(POHMELFS_OP_REPLICA, shortreq), EINVAL);
  EXPECT_TRUE(ListStale().empty());
}

TEST_F(ExportStoreTest, ReplicaListIsBounded) {
  for (unsigned i = 0; i < POHMELFS_REPLICA_LIST_MAX + 10; i++)
    std::ofstream(dir_ / ".pohmelfs/stale" / Oid::Random().Hex()) << "";
  EXPECT_EQ(ListStale().size(), size_t{POHMELFS_REPLICA_LIST_MAX});
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
