// Security (docs/security.md) against real server processes: the key handshake, every channel
// mode on a real mount, an attacker in the middle (tampering, reordering, replaying, stripping
// the offer), the allow list (outside, read-only), and per-connection limits. Each attack must
// get a refusal or a closed connection with a clear log line, the server must keep serving,
// and nothing on disk may change.
#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>

#include "client/rpc_client.h"
#include "crypto/keys.h"
#include "proto/codec.h"
#include "tests/integration/fixture.h"
#include "tests/integration/mitm_proxy.h"
#include "tests/integration/raw_peer.h"

namespace pohmelfs::testing {
namespace {

using client::RpcClient;
using client::RpcOptions;
using proto::Oid;
using proto::to_le;

class SecurityTest : public ::testing::Test {
 protected:
  SecurityTest() : scratch_("security") {
    fs::create_directories(scratch_.path() / "export");
    fs::create_directories(scratch_.path() / "mnt");
    key_ = Path("cluster.key");
    other_key_ = Path("other.key");
    EXPECT_EQ(RunCommand({Bin("pohmelfsctl"), "keygen", key_}, Path("keygen.log")), 0);
    EXPECT_EQ(RunCommand({Bin("pohmelfsctl"), "keygen", other_key_}, Path("keygen.log")), 0);
  }
  void TearDown() override {
    if (mounted_) Unmount(mnt());
  }

  static std::string Bin(const std::string& name) {
    return std::string(POHMELFS_BIN_DIR) + "/" + name;
  }
  std::string Path(const std::string& rel) const { return (scratch_.path() / rel).string(); }
  std::string mnt() const { return Path("mnt"); }
  std::string exp() const { return Path("export"); }

  // Each start logs to a file of its own (the fixture finds the address in it).
  bool StartServer(std::vector<std::string> extra) {
    return server_.Start(exp(), Path("server-" + std::to_string(++starts_) + ".log"),
                         std::move(extra));
  }
  // Mounts uri with opts; on failure the mount's log is in mount_log_.
  bool MountWith(const std::string& uri, const std::string& opts) {
    const std::string log = Path("mount.log");
    std::error_code ec;
    fs::remove(log, ec);
    mounted_ = Mount(uri, mnt(), log, "trans_scan_timeout=2000,trans_retries=1," + opts);
    mount_log_ = ReadFile(log);
    return mounted_;
  }
  void UnmountNow() {
    if (mounted_) Unmount(mnt());
    mounted_ = false;
  }
  // Waits (bounded) for text in the server log.
  bool ServerLogMentions(const std::string& text) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (server_.Log().find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // log polling, bounded
    }
    return false;
  }
  // The export's entries (names only), to check that nothing changed.
  std::vector<std::string> ExportNames() const {
    std::vector<std::string> names;
    for (const auto& e : fs::recursive_directory_iterator(exp())) {
      std::string n = e.path().lexically_relative(exp()).string();
      if (n.rfind(".pohmelfs", 0) != 0) names.push_back(n);
    }
    std::sort(names.begin(), names.end());
    return names;
  }
  std::shared_ptr<const crypto::Key> LoadKey(const std::string& path) {
    auto k = crypto::LoadKeyFile(path);
    EXPECT_TRUE(k.ok()) << k.status().ToString();
    return k.ok() ? std::make_shared<const crypto::Key>(*k) : nullptr;
  }
  // An in-process client (the mount's own RPC layer) with key and mode.
  Result<std::unique_ptr<RpcClient>> Client(const std::string& uri, const std::string& key,
                                            uint32_t mode, bool fail_unsupported = false) {
    RpcOptions o;
    o.connect_timeout = std::chrono::milliseconds(3000);
    o.trans_scan_timeout = std::chrono::milliseconds(2000);
    o.trans_retries = 0;
    o.client_name = "sectest";
    if (!key.empty()) o.key = LoadKey(key);
    o.crypto_mode = mode;
    o.crypto_fail_unsupported = fail_unsupported;
    return RpcClient::Connect(uri, o);
  }
  static std::vector<uint8_t> GetattrRoot() {
    return RawPeer::Bytes(pohmelfs_obj_req{Oid::Root().ToWire()});
  }
  // A MKDIR request for name in the root.
  static std::vector<uint8_t> MkdirReq(std::string_view name) {
    pohmelfs_create_req q{};
    q.parent = Oid::Root().ToWire();
    q.new_oid = Oid::Random().ToWire();
    q.mode = to_le(uint32_t{0755});
    q.name_len = to_le(static_cast<uint32_t>(name.size()));
    return RawPeer::Bytes(q, name);
  }

  ScratchDir scratch_;
  std::string key_, other_key_;
  ServerProcess server_;
  bool mounted_ = false;
  std::string mount_log_;
  int starts_ = 0;
};

// The bytes of every message that crossed the proxy, both ways.
struct Recorder {
  std::mutex mu;
  std::vector<Frame> to_server, to_client;
  MitmProxy::Hook Hook(std::vector<Frame>* into) {
    return [this, into](size_t, Frame& f, std::vector<Frame>* out) {
      {
        std::lock_guard lk(mu);
        into->push_back(f);
      }
      out->push_back(f);
    };
  }
  bool Contains(const std::string& needle) {
    std::lock_guard lk(mu);
    for (const auto* dir : {&to_server, &to_client})
      for (const auto& f : *dir)
        if (std::search(f.begin(), f.end(), needle.begin(), needle.end()) != f.end()) return true;
    return false;
  }
};

TEST_F(SecurityTest, EveryChannelModeCarriesAMount) {
  ASSERT_TRUE(StartServer({"--key", key_, "--allow", "127.0.0.0/8=rw"})) << server_.Log();
  const std::string secret = "the-secret-payload-0123456789";
  for (const char* mode : {"none", "crc32c", "hmac-sha256", "aes-256-gcm", "chacha20-poly1305"}) {
    SCOPED_TRACE(mode);
    Recorder rec;
    MitmProxy proxy(server_.uri(), rec.Hook(&rec.to_server), rec.Hook(&rec.to_client));
    ASSERT_TRUE(MountWith(
        proxy.uri(), std::string("key=") + key_ + ",crypto=" + mode + ",crypto_fail_unsupported"))
        << mount_log_;
    const std::string name = std::string("file-") + mode;
    std::string data;
    for (int i = 0; i < 20000; i++) data += secret;  // 580 KB: several segments
    std::ofstream(mnt() + "/" + name) << data;
    EXPECT_EQ(ReadFile(mnt() + "/" + name), data);
    UnmountNow();
    EXPECT_EQ(ReadFile(exp() + "/" + name), data);
    EXPECT_TRUE(ServerLogMentions(std::string("(channel ") + mode + ")"));
    // Only the AEAD modes hide the data from the wire.
    bool encrypts = std::string(mode) == "aes-256-gcm" || std::string(mode) == "chacha20-poly1305";
    EXPECT_EQ(rec.Contains(secret), !encrypts);
  }
}

TEST_F(SecurityTest, WrongKeyNoKeyAndKeylessServerAreRefusedOnBothSides) {
  ASSERT_TRUE(StartServer({"--key", key_, "--allow", "127.0.0.0/8=rw"})) << server_.Log();
  const auto before = ExportNames();

  EXPECT_FALSE(MountWith(server_.uri(), "key=" + other_key_ + ",crypto=aes-256-gcm"));
  EXPECT_NE(mount_log_.find("failed to prove the key"), std::string::npos) << mount_log_;
  EXPECT_TRUE(ServerLogMentions("before proving the key"));

  EXPECT_FALSE(MountWith(server_.uri(), ""));
  EXPECT_NE(mount_log_.find("requires a key (mount with -o key=FILE)"), std::string::npos)
      << mount_log_;
  EXPECT_TRUE(ServerLogMentions("has no key, and this server requires one"));

  // A client with a wrong proof (it ignores the server's): refused at AUTH.
  auto c = Client(server_.uri(), other_key_, POHMELFS_CRYPTO_NONE);
  EXPECT_FALSE(c.ok());

  // The right key still works, and nothing was changed by the refused ones.
  ASSERT_TRUE(MountWith(server_.uri(), "key=" + key_)) << mount_log_;
  UnmountNow();
  EXPECT_EQ(ExportNames(), before);
  server_.Stop();

  // A keyed client refuses a server that cannot prove the key.
  ASSERT_TRUE(StartServer({"--allow", "127.0.0.0/8=rw"})) << server_.Log();
  EXPECT_FALSE(MountWith(server_.uri(), "key=" + key_));
  EXPECT_NE(mount_log_.find("did not prove the key"), std::string::npos) << mount_log_;
}

TEST_F(SecurityTest, PerClientKeysAndRootSquash) {
  fs::create_directories(Path("keys"));
  ASSERT_EQ(RunCommand({Bin("pohmelfsctl"), "keygen", Path("keys/alice.key")}, Path("keygen.log")),
            0);
  ASSERT_TRUE(StartServer({"--key", key_, "--client-keys", Path("keys"), "--allow",
                           "127.0.0.0/8=rw", "--root-squash", "--crypto-threads", "2"}))
      << server_.Log();
  // alice proves her own key (over a channel sealed by two crypto threads on each side)...
  ASSERT_TRUE(MountWith(server_.uri(), "name=alice,key=" + Path("keys/alice.key") +
                                           ",crypto=chacha20-poly1305,crypto_thread_num=2"))
      << mount_log_;
  std::string big(3 << 20, 'q');  // several 1 MiB messages of 16 segments each
  std::ofstream(mnt() + "/by-root") << big;
  ASSERT_EQ(mkdir((mnt() + "/dir-by-root").c_str(), 0755), 0);
  EXPECT_EQ(ReadFile(mnt() + "/by-root"), big);
  UnmountNow();
  // ...and root's new objects belong to nobody on the server (root squash).
  struct stat st {};
  ASSERT_EQ(stat((exp() + "/by-root").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_EQ(st.st_gid, 65534u);
  ASSERT_EQ(stat((exp() + "/dir-by-root").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  // The cluster key is not alice's key; a client without a key file of its own uses it.
  EXPECT_FALSE(MountWith(server_.uri(), "name=alice,key=" + key_));
  EXPECT_NE(mount_log_.find("failed to prove the key"), std::string::npos) << mount_log_;
  ASSERT_TRUE(MountWith(server_.uri(), "name=bob,key=" + key_)) << mount_log_;
  UnmountNow();
}

TEST_F(SecurityTest, PerClientKeysWithoutAClusterKeyFailClosed) {
  fs::create_directories(Path("keys"));
  ASSERT_EQ(RunCommand({Bin("pohmelfsctl"), "keygen", Path("keys/alice.key")}, Path("keygen.log")),
            0);
  ASSERT_TRUE(StartServer({"--client-keys", Path("keys"), "--allow", "127.0.0.0/8=rw"}))
      << server_.Log();
  // A client with no key file of its own has nothing to prove here: refused, key or not.
  EXPECT_FALSE(MountWith(server_.uri(), "name=nosuchhost"));
  EXPECT_TRUE(ServerLogMentions("no key for client 'nosuchhost'"));
  EXPECT_FALSE(MountWith(server_.uri(), "name=nosuchhost,key=" + key_));
  ASSERT_TRUE(MountWith(server_.uri(), "name=alice,key=" + Path("keys/alice.key"))) << mount_log_;
  UnmountNow();
}

TEST_F(SecurityTest, AnUnsupportedModeFallsBackOrFailsTheMount) {
  ASSERT_TRUE(StartServer({"--allow", "127.0.0.0/8=rw", "--crypto", "none,crc32c"}))
      << server_.Log();
  // crc32c needs no key: granted.
  auto c = Client(server_.uri(), "", POHMELFS_CRYPTO_CRC32C, true);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->crypto_mode(), uint32_t{POHMELFS_CRYPTO_CRC32C});
  auto r = (*c)->Call(POHMELFS_OP_GETATTR, GetattrRoot());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 0u);
  c->reset();
  server_.Stop();
  // A keyed server that allows only none and crc32c: a mount asking for hmac-sha256 falls
  // back to none with a warning...
  ASSERT_TRUE(StartServer({"--key", key_, "--allow", "127.0.0.0/8=rw", "--crypto", "none,crc32c"}))
      << server_.Log();
  ASSERT_TRUE(MountWith(server_.uri(), "key=" + key_ + ",crypto=hmac-sha256")) << mount_log_;
  UnmountNow();
  auto fallback = Client(server_.uri(), key_, POHMELFS_CRYPTO_HMAC_SHA256);
  ASSERT_TRUE(fallback.ok()) << fallback.status().ToString();
  EXPECT_EQ((*fallback)->crypto_mode(), uint32_t{POHMELFS_CRYPTO_NONE});
  // ...or fails with crypto_fail_unsupported.
  EXPECT_FALSE(MountWith(server_.uri(), "key=" + key_ +
                                            ",crypto=hmac-sha256,"
                                            "crypto_fail_unsupported"));
  EXPECT_NE(mount_log_.find("no protocol version or channel mode in common"), std::string::npos)
      << mount_log_;
}

TEST_F(SecurityTest, AReplayedHandshakeFails) {
  ASSERT_TRUE(StartServer({"--key", key_, "--allow", "127.0.0.0/8=rw"})) << server_.Log();
  Recorder rec;
  {
    MitmProxy proxy(server_.uri(), rec.Hook(&rec.to_server), rec.Hook(&rec.to_client));
    auto c = Client(proxy.uri(), key_, POHMELFS_CRYPTO_AES_256_GCM);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    auto r = (*c)->Call(POHMELFS_OP_MKDIR, MkdirReq("made-by-the-real-client"));
    ASSERT_TRUE(r.ok());
  }
  const auto before = ExportNames();
  std::vector<Frame> sent;
  {
    std::lock_guard lk(rec.mu);
    sent = rec.to_server;
  }
  ASSERT_GE(sent.size(), 3u);
  ASSERT_EQ(FrameOpcode(sent[0]), POHMELFS_OP_HELLO);
  ASSERT_EQ(FrameOpcode(sent[1]), POHMELFS_OP_AUTH);
  // An eavesdropper replays the recorded HELLO, AUTH and the sealed MKDIR on a new connection.
  RawPeer p(server_.uri());
  p.SendBytes(sent[0].data(), sent[0].size());
  auto hello = p.Recv();
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->hdr.status, 0u);  // a fresh challenge...
  p.SendBytes(sent[1].data(), sent[1].size());
  auto auth = p.Recv();
  ASSERT_TRUE(auth.has_value());
  EXPECT_EQ(auth->hdr.status, static_cast<uint32_t>(EACCES));  // ...the old answer fails it
  p.SendBytes(sent[2].data(), sent[2].size());
  EXPECT_TRUE(p.ClosedByPeer());
  EXPECT_TRUE(ServerLogMentions("does not prove the key"));
  EXPECT_EQ(ExportNames(), before);
}

// Runs two sealed MKDIRs through a proxy whose hook attacks the client's messages, and expects
// the server to drop the connection (logging why) without executing what was attacked (only
// the names in may_pass, sent before the attack, may appear).
class ChannelAttackTest : public SecurityTest {
 protected:
  void Attack(MitmProxy::Hook hook, const std::string& server_says,
              const std::vector<std::string>& may_pass = {}) {
    ASSERT_TRUE(StartServer({"--key", key_, "--allow", "127.0.0.0/8=rw"})) << server_.Log();
    const auto before = ExportNames();
    MitmProxy proxy(server_.uri(), std::move(hook));
    auto c = Client(proxy.uri(), key_, POHMELFS_CRYPTO_AES_256_GCM, true);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    // Two requests in flight at once, so that a reordering attacker has two to swap.
    auto a = (*c)->Begin(POHMELFS_OP_MKDIR, std::span<const iovec>(&(iov_a_ = Iov(req_a_)), 1),
                         {.attempts = 1});
    auto b = (*c)->Begin(POHMELFS_OP_MKDIR, std::span<const iovec>(&(iov_b_ = Iov(req_b_)), 1),
                         {.attempts = 1});
    auto ra = (*c)->Wait(*a);
    auto rb = (*c)->Wait(*b);
    EXPECT_FALSE(ra.ok() && ra->status == 0 && rb.ok() && rb->status == 0);
    EXPECT_TRUE(ServerLogMentions(server_says));
    for (const auto& name : ExportNames()) {
      bool expected = std::find(before.begin(), before.end(), name) != before.end() ||
                      std::find(may_pass.begin(), may_pass.end(), name) != may_pass.end();
      EXPECT_TRUE(expected) << name << " was created by an attacked message";
    }
    // The server still serves an honest client.
    auto honest = Client(server_.uri(), key_, POHMELFS_CRYPTO_AES_256_GCM);
    ASSERT_TRUE(honest.ok()) << honest.status().ToString();
    auto r = (*honest)->Call(POHMELFS_OP_GETATTR, GetattrRoot());
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 0u);
  }
  static iovec Iov(std::vector<uint8_t>& v) { return iovec{v.data(), v.size()}; }

  std::vector<uint8_t> req_a_ = MkdirReq("attacked-a"), req_b_ = MkdirReq("attacked-b");
  iovec iov_a_{}, iov_b_{};
};

TEST_F(ChannelAttackTest, ATamperedByteIsRejected) {
  Attack(
      [](size_t, Frame& f, std::vector<Frame>* out) {
        if (FrameOpcode(f) == POHMELFS_OP_MKDIR && FrameSealed(f)) f[kFramePayload + 3] ^= 0x40;
        out->push_back(f);
      },
      "sealed message failed its check");
}

TEST_F(ChannelAttackTest, ATamperedHeaderIsRejected) {
  Attack(
      [](size_t, Frame& f, std::vector<Frame>* out) {
        // The opcode travels in the clear but is authenticated: MKDIR becomes RMDIR.
        if (FrameOpcode(f) == POHMELFS_OP_MKDIR && FrameSealed(f)) {
          uint16_t op = POHMELFS_OP_RMDIR;
          std::memcpy(f.data() + kFrameOpcode, &op, sizeof(op));
        }
        out->push_back(f);
      },
      "sealed message failed its check");
}

TEST_F(ChannelAttackTest, ReorderedMessagesAreRejected) {
  auto held = std::make_shared<std::optional<Frame>>();
  Attack(
      [held](size_t, Frame& f, std::vector<Frame>* out) {
        if (FrameOpcode(f) == POHMELFS_OP_MKDIR && !*held) {
          *held = f;  // the first MKDIR waits for the second, and goes after it
          return;
        }
        out->push_back(f);
        if (*held) {
          out->push_back(**held);
          held->reset();
        }
      },
      "sealed message failed its check");
}

TEST_F(ChannelAttackTest, AReplayedMessageIsRejected) {
  Attack(
      [](size_t, Frame& f, std::vector<Frame>* out) {
        out->push_back(f);
        if (FrameOpcode(f) == POHMELFS_OP_MKDIR) out->push_back(f);  // sent twice
      },
      "sealed message failed its check", {"attacked-a"});  // the original runs, once
}

TEST_F(ChannelAttackTest, ATruncatedMessageIsRejected) {
  Attack(
      [](size_t, Frame& f, std::vector<Frame>* out) {
        if (FrameOpcode(f) == POHMELFS_OP_MKDIR && FrameSealed(f)) {
          // Drop the last 8 bytes and fix the length, as an attacker can.
          f.resize(f.size() - 8);
          uint32_t len = static_cast<uint32_t>(f.size() - kFramePayload);
          std::memcpy(f.data() + offsetof(pohmelfs_hdr, length), &len, sizeof(len));
        }
        out->push_back(f);
      },
      "sealed message");
}

// An attacker in the middle removes the strong modes from the client's offer.
MitmProxy::Hook StripOffer() {
  return [](size_t, Frame& f, std::vector<Frame>* out) {
    if (FrameOpcode(f) == POHMELFS_OP_HELLO) {
      uint32_t modes = POHMELFS_CRYPTO_NONE;
      std::memcpy(f.data() + kFramePayload + offsetof(pohmelfs_hello_req, crypto_modes), &modes,
                  sizeof(modes));
    }
    out->push_back(f);
  };
}

TEST_F(SecurityTest, ADowngradeInTheMiddleFailsTheMount) {
  ASSERT_TRUE(StartServer({"--key", key_, "--allow", "127.0.0.0/8=rw"})) << server_.Log();
  MitmProxy proxy(server_.uri(), StripOffer());
  // With a key the proofs cover the offer, so the change is caught even without
  // crypto_fail_unsupported.
  EXPECT_FALSE(MountWith(proxy.uri(), "key=" + key_ + ",crypto=aes-256-gcm"));
  EXPECT_NE(mount_log_.find("failed to prove the key"), std::string::npos) << mount_log_;
  EXPECT_FALSE(MountWith(proxy.uri(), "key=" + key_ +
                                          ",crypto=aes-256-gcm,"
                                          "crypto_fail_unsupported"));
  server_.Stop();
  // Without a key nothing can prove the offer; crypto_fail_unsupported still refuses none.
  ASSERT_TRUE(StartServer({"--allow", "127.0.0.0/8=rw"})) << server_.Log();
  MitmProxy keyless(server_.uri(), StripOffer());
  EXPECT_FALSE(MountWith(keyless.uri(), "crypto=crc32c,crypto_fail_unsupported"));
  EXPECT_NE(mount_log_.find("did not offer"), std::string::npos) << mount_log_;
}

TEST_F(SecurityTest, APeerOutsideTheAllowListIsRefused) {
  ASSERT_TRUE(StartServer({"--allow", "10.123.0.0/16=rw", "--allow", "fd00::/8=rw"}))
      << server_.Log();
  EXPECT_FALSE(MountWith(server_.uri(), ""));
  EXPECT_NE(mount_log_.find("not in its allow list"), std::string::npos) << mount_log_;
  EXPECT_TRUE(ServerLogMentions("not in the allow list"));
  RawPeer p(server_.uri());
  auto r = p.Hello();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.status, static_cast<uint32_t>(EPERM));
  EXPECT_TRUE(p.ClosedByPeer());
}

TEST_F(SecurityTest, AReadOnlyPeerCannotChangeAnything) {
  std::ofstream(exp() + "/existing") << "old";
  ASSERT_TRUE(StartServer({"--allow", "127.0.0.0/8=ro", "--allow", "10.0.0.0/8=rw"}))
      << server_.Log();
  const auto before = ExportNames();
  ASSERT_TRUE(MountWith(server_.uri(), "")) << mount_log_;
  struct statvfs sv {};
  ASSERT_EQ(statvfs(mnt().c_str(), &sv), 0);
  EXPECT_TRUE(sv.f_flag & ST_RDONLY);  // the mount reports read-only
  EXPECT_EQ(ReadFile(mnt() + "/existing"), "old");
  EXPECT_EQ(open((mnt() + "/new").c_str(), O_CREAT | O_WRONLY, 0644), -1);
  EXPECT_EQ(errno, EROFS);
  UnmountNow();
  // A client that ignores the read-only flag gets EROFS from the server itself.
  auto c = Client(server_.uri(), "", POHMELFS_CRYPTO_NONE);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE((*c)->read_only());
  auto r = (*c)->Call(POHMELFS_OP_MKDIR, MkdirReq("sneaky"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, static_cast<uint32_t>(EROFS));
  r = (*c)->Call(POHMELFS_OP_GETATTR, GetattrRoot());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 0u);
  EXPECT_EQ(ExportNames(), before);
  EXPECT_EQ(ReadFile(exp() + "/existing"), "old");
}

TEST_F(SecurityTest, TheServerRefusesToStartWithoutAnAllowList) {
  int rc = RunCommand({Bin("pohmelfs-server"), "--export", exp(), "--listen", "tcp://127.0.0.1:0"},
                      Path("noallow.log"), 10);
  EXPECT_NE(rc, 0);
  EXPECT_NE(ReadFile(Path("noallow.log")).find("no allow list"), std::string::npos);
  rc = RunCommand({Bin("pohmelfs-server"), "--export", exp(), "--listen", "tcp://127.0.0.1:0",
                   "--allow", "10.0.0.0/33=rw"},
                  Path("badallow.log"), 10);
  EXPECT_NE(rc, 0);
  EXPECT_NE(ReadFile(Path("badallow.log")).find("prefix out of range"), std::string::npos);
}

TEST_F(SecurityTest, HostileClientsHitLimitsAndTheServerKeepsServing) {
  constexpr int kCredits = 16;
  ASSERT_TRUE(StartServer({"--allow-any", "--max-open-files", "100", "--handshake-timeout-ms",
                           "500", "--credits", std::to_string(kCredits)}))
      << server_.Log();
  std::ofstream(exp() + "/f") << "x";
  auto c = Client(server_.uri(), "", POHMELFS_CRYPTO_NONE);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // The attributes of a file in the export's root (zeros and a failure if it is not there).
  auto attr_of = [&](std::string_view name) {
    pohmelfs_name_req q{Oid::Root().ToWire(), to_le(static_cast<uint32_t>(name.size())), 0};
    auto r = (*c)->Call(POHMELFS_OP_LOOKUP, RawPeer::Bytes(q, name));
    pohmelfs_attr a{};
    if (r.ok() && r->status == 0 && r->payload.size() >= sizeof(a)) {
      std::memcpy(&a, r->payload.data(), sizeof(a));
    } else {
      ADD_FAILURE() << "lookup of " << name << " failed";
    }
    return a;
  };
  // Thousands of opens: the first 100 succeed, the rest get EMFILE.
  const pohmelfs_attr attr = attr_of("f");
  pohmelfs_open_req oq{attr.oid, 0, 0};
  int ok = 0, emfile = 0;
  for (int i = 0; i < 2000; i++) {
    auto r = (*c)->Call(POHMELFS_OP_OPEN, RawPeer::Bytes(oq));
    ASSERT_TRUE(r.ok());
    if (r->status == 0) ok++;
    if (r->status == EMFILE) emfile++;
  }
  EXPECT_EQ(ok, 100);
  EXPECT_EQ(emfile, 1900);

  // A peer that connects and says nothing is closed after the handshake timeout.
  RawPeer silent(server_.uri());
  EXPECT_TRUE(silent.ClosedByPeer());
  EXPECT_TRUE(ServerLogMentions("no complete handshake within 500 ms"));

  // A peer that asks for 1 MiB reads and never reads the replies: once the replies the
  // socket does not take pass the high-water mark (32 largest messages) the server stops
  // reading it, so its memory for the peer stays bounded.
  std::ofstream(exp() + "/big") << std::string(POHMELFS_IO_MAX, 'b');
  const pohmelfs_attr big_attr = attr_of("big");
  RawPeer reader(server_.uri());
  ASSERT_TRUE(reader.Hello().has_value());
  // 120 MiB of replies (in 10 KB of requests): more than the socket buffers (tens of MiB at
  // most here) and the high-water mark together.
  for (uint64_t t = 100; t < 220; t++) {
    pohmelfs_read_req rd{big_attr.oid, 0, to_le(uint32_t{POHMELFS_IO_MAX}), 0};
    reader.Send(POHMELFS_OP_READ, RawPeer::Bytes(rd), t);
  }
  EXPECT_TRUE(ServerLogMentions("the peer is not reading them")) << server_.Log();

  // A peer with more requests in flight than its credits: the server stops reading it. Lock
  // requests waiting behind the peer's own lock stay in flight (up to the server's lock wait,
  // 1 s) whatever the scheduling; a burst of GETATTRs did only while the server's workers
  // lagged behind its loop thread, which a busy machine did not always give.
  RawPeer greedy(server_.uri());
  ASSERT_TRUE(greedy.Hello().has_value());
  auto lock = [&](uint64_t trans, uint64_t owner, uint32_t cmd) {
    pohmelfs_lock_req q{};
    q.oid = attr.oid;
    q.owner = to_le(owner);
    q.cmd = to_le(cmd);
    q.type = to_le(uint32_t{F_WRLCK});
    greedy.Send(POHMELFS_OP_LOCK, RawPeer::Bytes(q), trans);
  };
  lock(10, 1, POHMELFS_LOCK_SETLK);
  for (uint64_t t = 11; t < 11 + 3 * kCredits; t++) lock(t, t, POHMELFS_LOCK_SETLKW);
  EXPECT_TRUE(ServerLogMentions("requests in flight; pausing reads")) << server_.Log();

  // Others are still served.
  auto other = Client(server_.uri(), "", POHMELFS_CRYPTO_NONE);
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  auto r = (*other)->Call(POHMELFS_OP_GETATTR, GetattrRoot());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 0u);
  ASSERT_TRUE(MountWith(server_.uri(), "")) << mount_log_;
  EXPECT_EQ(ReadFile(mnt() + "/f"), "x");
}

}  // namespace
}  // namespace pohmelfs::testing
