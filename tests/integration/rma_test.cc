// Bulk data by RMA through a real mount: two servers on an RMA-capable transport (libfabric's
// tcp provider here; verbs in the qemu guest, through POHMELFS_TEST_LISTEN), one mount
// replicating to both. Large writes must reach both replicas byte for byte with their data
// moved by RMA (the mount's RMA_BYTES counter), reads must come back by RMA, and small
// transfers must stay in the messages.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <sstream>

#include "client/rpc_client.h"
#include "crypto/keys.h"
#include "tests/integration/fixture.h"

namespace pohmelfs::testing {
namespace {

constexpr uint32_t kSeed = 20261130;

class RmaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (FUSE)";
    // ofi+tcp unless the run names another RMA transport (verbs in the guest).
    const char* listen = std::getenv("POHMELFS_TEST_LISTEN");
    if (!listen || std::string(listen).rfind("tcp:", 0) == 0)
      setenv("POHMELFS_TEST_LISTEN", "ofi+tcp://127.0.0.1:0", 1);
    scratch_ = std::make_unique<ScratchDir>(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    for (int i = 0; i < 2; i++) {
      exports_.push_back((scratch_->path() / ("export" + std::to_string(i))).string());
      fs::create_directories(exports_.back());
      servers_.push_back(std::make_unique<ServerProcess>());
      ASSERT_TRUE(servers_.back()->Start(exports_.back(), Log("server" + std::to_string(i))))
          << servers_.back()->Log();
    }
    mnt_ = (scratch_->path() / "mnt").string();
    fs::create_directories(mnt_);
  }
  void TearDown() override {
    if (mounted_) Unmount(mnt_);
  }
  std::string Log(const std::string& name) { return (scratch_->path() / (name + ".log")).string(); }
  void MountOn(const std::string& uris) {
    ASSERT_TRUE(Mount(uris, mnt_, Log("mount"), "trans_scan_timeout=5000"))
        << ReadFile(Log("mount"));
    mounted_ = true;
  }
  void Remount(const std::string& uris) {
    Unmount(mnt_);
    mounted_ = false;
    MountOn(uris);
  }
  std::string Both() { return servers_[0]->uri() + "," + servers_[1]->uri(); }
  // The RMA_BYTES column of a server's row in `pohmelfsctl servers`, or -1.
  long long RmaBytes(const std::string& uri) {
    const std::string out = Log("servers");
    if (RunCommand({std::string(POHMELFS_BIN_DIR) + "/pohmelfsctl", "servers", mnt_}, out, 30) != 0)
      return -1;
    const std::string table = ReadFile(out);
    std::istringstream lines(table);
    std::vector<std::string> header;
    std::string line, word;
    std::getline(lines, line);
    for (std::istringstream h(line); h >> word;) header.push_back(word);
    const auto col = std::find(header.begin(), header.end(), "RMA_BYTES") - header.begin();
    while (std::getline(lines, line)) {
      std::vector<std::string> cols;
      for (std::istringstream l(line); l >> word;) cols.push_back(word);
      if (!cols.empty() && cols[0] == uri && static_cast<size_t>(col) < cols.size())
        return std::stoll(cols[col]);
    }
    return -1;
  }

  std::unique_ptr<ScratchDir> scratch_;
  std::vector<std::string> exports_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
  std::string mnt_;
  bool mounted_ = false;
};

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

bool WriteFile(const std::string& path, const std::string& data, size_t chunk) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (fd < 0) return false;
  bool ok = true;
  for (size_t off = 0; ok && off < data.size(); off += chunk) {
    const size_t n = std::min(chunk, data.size() - off);
    ok = pwrite(fd, data.data() + off, n, static_cast<off_t>(off)) == static_cast<ssize_t>(n);
  }
  ok = ok && fsync(fd) == 0;
  return close(fd) == 0 && ok;
}

TEST_F(RmaTest, ReplicatedWritesAndReadsMoveByRma) {
  ASSERT_NO_FATAL_FAILURE(MountOn(Both()));
  const std::string data = RandomBytes(8u << 20, kSeed);
  ASSERT_TRUE(WriteFile(mnt_ + "/big", data, 1u << 20));
  for (const auto& e : exports_) EXPECT_TRUE(ReadFile(e + "/big") == data) << e;
  for (const auto& s : servers_)
    EXPECT_GE(RmaBytes(s->uri()), static_cast<long long>(data.size())) << s->uri();
  // A fresh mount has nothing cached: the read goes to a server, by RMA.
  ASSERT_NO_FATAL_FAILURE(Remount(Both()));
  EXPECT_TRUE(ReadFile(mnt_ + "/big") == data);
  EXPECT_GE(RmaBytes(servers_[0]->uri()) + RmaBytes(servers_[1]->uri()),
            static_cast<long long>(data.size()));
}

// On a protected channel the data still moves by RMA, sealed (docs/security.md): each replica
// opens the same sealed buffer with the key that came in its own sealed request.
TEST_F(RmaTest, SealedDataMovesByRmaOnAProtectedChannel) {
  const std::string key = (scratch_->path() / "cluster.key").string();
  ASSERT_EQ(
      RunCommand({std::string(POHMELFS_BIN_DIR) + "/pohmelfsctl", "keygen", key}, Log("keygen")),
      0);
  for (size_t i = 0; i < servers_.size(); i++) {
    servers_[i]->Stop();
    ASSERT_TRUE(servers_[i]->Start(exports_[i], Log("keyed-server" + std::to_string(i)),
                                   {"--key", key, "--crypto-threads", "1"}))
        << servers_[i]->Log();
  }
  const std::string opts = "trans_scan_timeout=5000,key=" + key +
                           ",crypto=aes-256-gcm,crypto_fail_unsupported,crypto_thread_num=1";
  ASSERT_TRUE(Mount(Both(), mnt_, Log("mount"), opts)) << ReadFile(Log("mount"));
  mounted_ = true;
  const std::string data = RandomBytes(8u << 20, kSeed + 2);
  ASSERT_TRUE(WriteFile(mnt_ + "/sealed", data, 1u << 20));
  for (const auto& e : exports_) EXPECT_TRUE(ReadFile(e + "/sealed") == data) << e;
  for (const auto& s : servers_)
    EXPECT_GE(RmaBytes(s->uri()), static_cast<long long>(data.size())) << s->uri();
  Unmount(mnt_);
  ASSERT_TRUE(Mount(Both(), mnt_, Log("mount2"), opts)) << ReadFile(Log("mount2"));
  EXPECT_TRUE(ReadFile(mnt_ + "/sealed") == data);
  EXPECT_GE(RmaBytes(servers_[0]->uri()) + RmaBytes(servers_[1]->uri()),
            static_cast<long long>(data.size()));
  for (const auto& s : servers_)
    EXPECT_NE(s->Log().find("(channel aes-256-gcm)"), std::string::npos);

  // A client that skips the seal on a protected channel is refused before any RMA happens.
  client::RpcOptions o;
  auto k = crypto::LoadKeyFile(key);
  ASSERT_TRUE(k.ok());
  o.key = std::make_shared<const crypto::Key>(*k);
  o.crypto_mode = POHMELFS_CRYPTO_AES_256_GCM;
  o.crypto_fail_unsupported = true;
  auto c = client::RpcClient::Connect(servers_[0]->uri(), o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_NE((*c)->features() & POHMELFS_FEAT_RMA, 0u);
  pohmelfs_write_rma_req w{};
  w.oid = proto::Oid::Root().ToWire();
  w.size = proto::to_le(uint32_t{1} << 16);
  w.buf.addr = proto::to_le(uint64_t{4096});
  w.buf.key = proto::to_le(uint64_t{1});
  w.buf.len = w.size;
  std::vector<uint8_t> req(sizeof(w));
  std::memcpy(req.data(), &w, sizeof(w));
  auto r = (*c)->Call(POHMELFS_OP_WRITE_RMA, req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, static_cast<uint32_t>(EPERM));
}

TEST_F(RmaTest, SmallTransfersStayInMessages) {
  ASSERT_NO_FATAL_FAILURE(MountOn(Both()));
  const std::string data = RandomBytes(4096, kSeed + 1);
  ASSERT_TRUE(WriteFile(mnt_ + "/small", data, 4096));
  ASSERT_NO_FATAL_FAILURE(Remount(Both()));
  EXPECT_TRUE(ReadFile(mnt_ + "/small") == data);
  for (const auto& e : exports_) EXPECT_TRUE(ReadFile(e + "/small") == data) << e;
  for (const auto& s : servers_) EXPECT_EQ(RmaBytes(s->uri()), 0) << s->uri();
}

}  // namespace
}  // namespace pohmelfs::testing
