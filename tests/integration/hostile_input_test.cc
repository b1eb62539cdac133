// A hostile or broken peer against a real server process, over a raw socket: truncated and
// oversize messages, garbage, unknown opcodes, bad lengths, ids that don't exist, names with
// '/' or '..', and symlinks that point outside the export. Each must get an error reply or a
// closed connection plus a log line, and the server must keep serving everyone else.
#include <sys/sysmacros.h>

#include <cstring>
#include <optional>

#include "proto/codec.h"
#include "tests/integration/fixture.h"
#include "tests/integration/raw_peer.h"

namespace pohmelfs::testing {
namespace {

using proto::Oid;
using proto::to_le;

class HostileInputTest : public MountedTest {
 protected:
  // A connected, handshaken peer.
  std::unique_ptr<RawPeer> Peer() {
    auto p = std::make_unique<RawPeer>(server_->uri());
    EXPECT_TRUE(p->connected());
    auto r = p->Hello();
    EXPECT_TRUE(r.has_value());
    if (r) {
      EXPECT_EQ(r->hdr.status, 0u);
    }
    return p;
  }
  // The status of one request on a fresh peer.
  uint32_t StatusOf(uint16_t op, const std::vector<uint8_t>& payload) {
    auto p = Peer();
    p->Send(op, payload, 77);
    auto r = p->Recv();
    EXPECT_TRUE(r.has_value()) << "no reply to " << proto::OpcodeName(op);
    return r ? r->hdr.status : 0;
  }
  static std::vector<uint8_t> NameReq(const Oid& parent, std::string_view name,
                                      uint32_t claimed = UINT32_MAX) {
    pohmelfs_name_req q{parent.ToWire(),
                        to_le(claimed == UINT32_MAX ? static_cast<uint32_t>(name.size()) : claimed),
                        0};
    return RawPeer::Bytes(q, name);
  }
  void ExpectServerHealthy() {
    ASSERT_TRUE(server_->Alive());
    auto p = Peer();
    p->Send(POHMELFS_OP_GETATTR, RawPeer::Bytes(pohmelfs_obj_req{Oid::Root().ToWire()}), 5);
    auto r = p->Recv();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->hdr.status, 0u);
    // And the real mount still works.
    std::ofstream(M("alive")) << "yes";
    EXPECT_EQ(ReadFile(M("alive")), "yes");
  }
  // Waits (bounded) for text to appear in the server log.
  bool LogMentions(const std::string& text) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
      if (server_->Log().find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
};

TEST_F(HostileInputTest, GarbageClosesTheConnection) {
  RawPeer p(server_->uri());
  std::string junk(200, 'Z');
  p.SendBytes(junk.data(), junk.size());
  EXPECT_TRUE(p.ClosedByPeer());
  EXPECT_TRUE(LogMentions("bad magic"));
  ExpectServerHealthy();
}

TEST_F(HostileInputTest, OversizeLengthClosesTheConnection) {
  auto p = Peer();
  p->Send(POHMELFS_OP_WRITE, {}, 9, POHMELFS_PAYLOAD_MAX + 1);
  EXPECT_TRUE(p->ClosedByPeer());
  EXPECT_TRUE(LogMentions("payload of"));
  ExpectServerHealthy();
}

TEST_F(HostileInputTest, TruncatedMessageThenHangupIsHarmless) {
  {
    auto p = Peer();
    std::vector<uint8_t> some(10, 1);
    p->Send(POHMELFS_OP_WRITE, some, 9, 1000);  // promises 1000 bytes, sends 10, leaves
  }
  {
    RawPeer p(server_->uri());
    uint8_t half[7] = {'P', 'O', 'H', 'M', 1, 0, 0};  // half a header
    p.SendBytes(half, sizeof(half));
  }
  ExpectServerHealthy();
}

TEST_F(HostileInputTest, RequestBeforeHandshakeIsRefused) {
  RawPeer p(server_->uri());
  p.Send(POHMELFS_OP_GETATTR, RawPeer::Bytes(pohmelfs_obj_req{Oid::Root().ToWire()}), 3);
  auto r = p.Recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.status, static_cast<uint32_t>(EPROTO));
  EXPECT_TRUE(p.ClosedByPeer());
  EXPECT_TRUE(LogMentions("before HELLO"));
}

TEST_F(HostileInputTest, MalformedHandshakeIsRefused) {
  RawPeer p(server_->uri());
  pohmelfs_hello_req q{};
  q.version_min = q.version_max = to_le(uint16_t{POHMELFS_PROTO_VERSION_MAX});
  q.auth_len = to_le(uint32_t{1u << 30});  // claims more than the message holds
  p.Send(POHMELFS_OP_HELLO, RawPeer::Bytes(q), 1);
  auto r = p.Recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.status, static_cast<uint32_t>(EPROTO));
  EXPECT_TRUE(p.ClosedByPeer());

  RawPeer v(server_->uri());
  q.auth_len = 0;
  q.version_min = q.version_max = to_le(uint16_t{7});  // no common version
  v.Send(POHMELFS_OP_HELLO, RawPeer::Bytes(q), 1);
  r = v.Recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.status, static_cast<uint32_t>(EPROTONOSUPPORT));
}

TEST_F(HostileInputTest, UnknownOpcodeGetsAnErrorAndTheConnectionSurvives) {
  auto p = Peer();
  p->Send(999, {1, 2, 3}, 10);
  auto r = p->Recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.status, static_cast<uint32_t>(EOPNOTSUPP));
  EXPECT_EQ(r->hdr.trans, 10u);
  p->Send(POHMELFS_OP_PING, {}, 11);
  r = p->Recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.status, 0u);
}

TEST_F(HostileInputTest, ShortStructsAndLyingLengths) {
  EXPECT_EQ(StatusOf(POHMELFS_OP_LOOKUP, {1, 2, 3}), static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(StatusOf(POHMELFS_OP_LOOKUP, NameReq(Oid::Root(), "abc", 5000)),
            static_cast<uint32_t>(ENAMETOOLONG));
  EXPECT_EQ(StatusOf(POHMELFS_OP_LOOKUP, NameReq(Oid::Root(), "abc", 200)),
            static_cast<uint32_t>(EINVAL));
  pohmelfs_write_req w{Oid::Root().ToWire(), 0, to_le(uint32_t{4096}), 0};
  EXPECT_EQ(StatusOf(POHMELFS_OP_WRITE, RawPeer::Bytes(w, "short")), static_cast<uint32_t>(EINVAL));
  pohmelfs_read_req rd{Oid::Root().ToWire(), 0, to_le(uint32_t{POHMELFS_IO_MAX + 1}), 0};
  EXPECT_EQ(StatusOf(POHMELFS_OP_READ, RawPeer::Bytes(rd)), static_cast<uint32_t>(EINVAL));
  pohmelfs_batch_req b{to_le(uint32_t{POHMELFS_BATCH_MAX + 1}), 0};
  EXPECT_EQ(StatusOf(POHMELFS_OP_BATCH, RawPeer::Bytes(b)), static_cast<uint32_t>(EINVAL));
  pohmelfs_batch_req b1{to_le(uint32_t{1}), 0};
  pohmelfs_cmd cmd{to_le(uint16_t{POHMELFS_OP_GETATTR}), 0, to_le(uint32_t{100000})};
  auto batch = RawPeer::Bytes(b1);
  auto c = RawPeer::Bytes(cmd);
  batch.insert(batch.end(), c.begin(), c.end());
  EXPECT_EQ(StatusOf(POHMELFS_OP_BATCH, batch), static_cast<uint32_t>(EINVAL));
  ExpectServerHealthy();
}

TEST_F(HostileInputTest, BatchRunsCommandsAndStopsAtTheFirstError) {
  auto p = Peer();
  std::vector<uint8_t> batch = RawPeer::Bytes(pohmelfs_batch_req{to_le(uint32_t{3}), 0});
  auto add = [&](uint16_t op, const std::vector<uint8_t>& body) {
    auto c = RawPeer::Bytes(pohmelfs_cmd{to_le(op), 0, to_le(static_cast<uint32_t>(body.size()))});
    batch.insert(batch.end(), c.begin(), c.end());
    batch.insert(batch.end(), body.begin(), body.end());
    batch.resize(POHMELFS_PAD8(batch.size()), 0);
  };
  add(POHMELFS_OP_GETATTR, RawPeer::Bytes(pohmelfs_obj_req{Oid::Root().ToWire()}));
  add(POHMELFS_OP_LOOKUP, NameReq(Oid::Root(), "no-such-name"));
  add(POHMELFS_OP_GETATTR, RawPeer::Bytes(pohmelfs_obj_req{Oid::Root().ToWire()}));
  p->Send(POHMELFS_OP_BATCH, batch, 20);
  auto r = p->Recv();
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->hdr.status, 0u);
  proto::Reader rd(r->payload);
  pohmelfs_batch_rep rep;
  ASSERT_TRUE(rd.Get(&rep));
  EXPECT_EQ(proto::from_le(rep.count), 2u);  // stopped after the failing lookup
  pohmelfs_cmd_rep c1;
  ASSERT_TRUE(rd.Get(&c1));
  EXPECT_EQ(proto::from_le(c1.status), 0u);
  ASSERT_TRUE(rd.Skip(POHMELFS_PAD8(proto::from_le(c1.length))));
  pohmelfs_cmd_rep c2;
  ASSERT_TRUE(rd.Get(&c2));
  EXPECT_EQ(proto::from_le(c2.status), static_cast<uint32_t>(ENOENT));
}

TEST_F(HostileInputTest, BulkReadsAreRefusedInsideABatch) {
  std::vector<uint8_t> batch = RawPeer::Bytes(pohmelfs_batch_req{to_le(uint32_t{1}), 0});
  pohmelfs_read_req rd{Oid::Root().ToWire(), 0, to_le(uint32_t{POHMELFS_IO_MAX}), 0};
  auto body = RawPeer::Bytes(rd);
  auto c = RawPeer::Bytes(pohmelfs_cmd{to_le(uint16_t{POHMELFS_OP_READ}), 0,
                                       to_le(static_cast<uint32_t>(body.size()))});
  batch.insert(batch.end(), c.begin(), c.end());
  batch.insert(batch.end(), body.begin(), body.end());
  EXPECT_EQ(StatusOf(POHMELFS_OP_BATCH, batch), static_cast<uint32_t>(EINVAL));
}

// READ_RMA and WRITE_RMA name client memory: on a connection without RMA (tcp) they are
// refused, whatever they say, and a short one is malformed.
TEST_F(HostileInputTest, RmaRequestsWithoutRmaAreRefused) {
  pohmelfs_rma_buf buf{to_le(uint64_t{0x1000}), to_le(uint64_t{42}), to_le(uint32_t{4096}), 0};
  pohmelfs_read_rma_req rd{Oid::Root().ToWire(), 0, to_le(uint32_t{4096}), 0, buf};
  pohmelfs_write_rma_req wr{Oid::Root().ToWire(), 0, to_le(uint32_t{4096}), 0, buf};
  EXPECT_EQ(StatusOf(POHMELFS_OP_READ_RMA, RawPeer::Bytes(rd)), static_cast<uint32_t>(EOPNOTSUPP));
  EXPECT_EQ(StatusOf(POHMELFS_OP_WRITE_RMA, RawPeer::Bytes(wr)), static_cast<uint32_t>(EOPNOTSUPP));
  EXPECT_EQ(StatusOf(POHMELFS_OP_WRITE_RMA, {1, 2, 3}), static_cast<uint32_t>(EINVAL));
  ExpectServerHealthy();
}

TEST_F(HostileInputTest, DeviceNodesAreNeverOpenedForIo) {
  auto p = Peer();
  pohmelfs_create_req q{};
  q.parent = Oid::Root().ToWire();
  Oid dev = Oid::Random();
  q.new_oid = dev.ToWire();
  q.mode = to_le(uint32_t{S_IFCHR | 0666});
  q.rdev = to_le(static_cast<uint64_t>(makedev(1, 5)));  // /dev/zero: reads would succeed
  q.name_len = to_le(uint32_t{4});
  p->Send(POHMELFS_OP_MKNOD, RawPeer::Bytes(q, "zero"), 40);
  auto r = p->Recv();
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->hdr.status, 0u);
  pohmelfs_read_req rd{dev.ToWire(), 0, to_le(uint32_t{16}), 0};
  p->Send(POHMELFS_OP_READ, RawPeer::Bytes(rd), 41);
  r = p->Recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.status, static_cast<uint32_t>(EINVAL));
  pohmelfs_write_req wr{dev.ToWire(), 0, to_le(uint32_t{1}), 0};
  p->Send(POHMELFS_OP_WRITE, RawPeer::Bytes(wr, "x"), 42);
  r = p->Recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.status, static_cast<uint32_t>(EINVAL));
}

TEST_F(HostileInputTest, BadNamesAreRejected) {
  for (std::string_view bad : {"..", ".", "a/b", "../../etc", "/etc/passwd"}) {
    EXPECT_EQ(StatusOf(POHMELFS_OP_LOOKUP, NameReq(Oid::Root(), bad)),
              static_cast<uint32_t>(EINVAL))
        << bad;
    pohmelfs_create_req q{};
    q.parent = Oid::Root().ToWire();
    q.new_oid = Oid::Random().ToWire();
    q.mode = to_le(uint32_t{0755});
    q.name_len = to_le(static_cast<uint32_t>(bad.size()));
    EXPECT_EQ(StatusOf(POHMELFS_OP_MKDIR, RawPeer::Bytes(q, bad)), static_cast<uint32_t>(EINVAL))
        << bad;
  }
  std::string nul("a\0b", 3);
  EXPECT_EQ(StatusOf(POHMELFS_OP_LOOKUP, NameReq(Oid::Root(), nul)), static_cast<uint32_t>(EINVAL));
  pohmelfs_mkpath_req mp{Oid::Root().ToWire(), to_le(uint32_t{0755}), 0, 0,
                         to_le(uint32_t{5}),   to_le(uint32_t{2}),    0};
  auto body = RawPeer::Bytes(mp, "../xx");
  for (int i = 0; i < 2; i++) {
    auto o = RawPeer::Bytes(Oid::Random().ToWire());
    body.insert(body.end(), o.begin(), o.end());
  }
  EXPECT_EQ(StatusOf(POHMELFS_OP_MKPATH, body), static_cast<uint32_t>(EINVAL));
  EXPECT_FALSE(fs::exists(scratch_->path() / "xx"));
  ExpectServerHealthy();
}

TEST_F(HostileInputTest, UnknownIdsOpenNothing) {
  Oid ghost = Oid::Random();
  EXPECT_EQ(StatusOf(POHMELFS_OP_GETATTR, RawPeer::Bytes(pohmelfs_obj_req{ghost.ToWire()})),
            static_cast<uint32_t>(ENOENT));
  pohmelfs_read_req rd{ghost.ToWire(), 0, to_le(uint32_t{10}), 0};
  EXPECT_EQ(StatusOf(POHMELFS_OP_READ, RawPeer::Bytes(rd)), static_cast<uint32_t>(ENOENT));
  EXPECT_EQ(StatusOf(POHMELFS_OP_LOOKUP, NameReq(ghost, "x")), static_cast<uint32_t>(ENOENT));
  Oid zero;
  EXPECT_EQ(StatusOf(POHMELFS_OP_GETATTR, RawPeer::Bytes(pohmelfs_obj_req{zero.ToWire()})),
            static_cast<uint32_t>(ENOENT));
  // Creating with an id already in use is refused (ids are how replicas agree).
  pohmelfs_create_req q{};
  q.parent = Oid::Root().ToWire();
  q.new_oid = Oid::Root().ToWire();
  q.mode = to_le(uint32_t{0755});
  q.name_len = to_le(uint32_t{4});
  EXPECT_EQ(StatusOf(POHMELFS_OP_MKDIR, RawPeer::Bytes(q, "dup1")), static_cast<uint32_t>(EINVAL));
}

TEST_F(HostileInputTest, SymlinksPointingOutsideAreNeverFollowed) {
  // An administrator (or a client) leaves links that point out of the export.
  fs::path outside = scratch_->path() / "outside";
  fs::create_directories(outside);
  std::ofstream(outside / "secret") << "do not read";
  ASSERT_EQ(symlink(outside.c_str(), E("escape_dir").c_str()), 0);
  ASSERT_EQ(symlink((outside / "secret").c_str(), E("escape_file").c_str()), 0);
  ASSERT_EQ(symlink("../outside", M("rel_escape").c_str()), 0);

  auto p = Peer();
  auto lookup = [&](const Oid& parent, std::string_view name) -> std::optional<pohmelfs_attr> {
    p->Send(POHMELFS_OP_LOOKUP, NameReq(parent, name), 30);
    auto r = p->Recv();
    if (!r || r->hdr.status != 0) return std::nullopt;
    pohmelfs_attr a;
    std::memcpy(&a, r->payload.data(), sizeof(a));
    return a;
  };
  for (std::string_view name : {"escape_dir", "escape_file", "rel_escape"}) {
    auto a = lookup(Oid::Root(), name);
    ASSERT_TRUE(a.has_value()) << name;
    EXPECT_TRUE(S_ISLNK(proto::from_le(a->mode))) << name;  // the link itself, not its target
    Oid id = Oid::FromWire(a->oid);
    // Used as a directory: nothing below it is reachable.
    p->Send(POHMELFS_OP_LOOKUP, NameReq(id, "secret"), 31);
    auto r = p->Recv();
    ASSERT_TRUE(r.has_value());
    EXPECT_NE(r->hdr.status, 0u) << name;
    pohmelfs_create_req q{};
    q.parent = id.ToWire();
    q.new_oid = Oid::Random().ToWire();
    q.mode = to_le(uint32_t{S_IFREG | 0644});
    q.name_len = to_le(uint32_t{5});
    p->Send(POHMELFS_OP_MKNOD, RawPeer::Bytes(q, "dropp"), 32);
    r = p->Recv();
    ASSERT_TRUE(r.has_value());
    EXPECT_NE(r->hdr.status, 0u) << name;
    // Used as a file: no data comes back.
    pohmelfs_read_req rd{id.ToWire(), 0, to_le(uint32_t{100}), 0};
    p->Send(POHMELFS_OP_READ, RawPeer::Bytes(rd), 33);
    r = p->Recv();
    ASSERT_TRUE(r.has_value());
    EXPECT_NE(r->hdr.status, 0u) << name;
    pohmelfs_setattr_req sa{};
    sa.oid = id.ToWire();
    sa.valid = to_le(uint32_t{POHMELFS_SETATTR_MODE | POHMELFS_SETATTR_SIZE});
    sa.mode = to_le(uint32_t{0777});
    p->Send(POHMELFS_OP_SETATTR, RawPeer::Bytes(sa), 34);
    r = p->Recv();
    ASSERT_TRUE(r.has_value());
    EXPECT_NE(r->hdr.status, 0u) << name;
  }
  EXPECT_FALSE(fs::exists(outside / "dropp"));
  EXPECT_EQ(ReadFile((outside / "secret").string()), "do not read");
  struct stat st;
  ASSERT_EQ(stat((outside / "secret").c_str(), &st), 0);
  EXPECT_NE(st.st_mode & 0777, 0777u);
  // Through the mount, the kernel follows the link on the client side, which is the client's
  // business: the path it resolves is the client's own, never the server's.
  ExpectServerHealthy();
}

TEST_F(HostileInputTest, ResentTransactionIsAnsweredNotReexecuted) {
  auto p = Peer();
  pohmelfs_create_req q{};
  q.parent = Oid::Root().ToWire();
  q.new_oid = Oid::Random().ToWire();
  q.mode = to_le(uint32_t{0755});
  q.name_len = to_le(uint32_t{7});
  auto body = RawPeer::Bytes(q, "resent1");
  p->Send(POHMELFS_OP_MKDIR, body, 500);
  auto first = p->Recv();
  ASSERT_TRUE(first.has_value());
  ASSERT_EQ(first->hdr.status, 0u);
  p->Send(POHMELFS_OP_MKDIR, body, 500);  // same transaction id: a resend
  auto second = p->Recv();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->hdr.status, 0u);  // not EEXIST: the recorded reply
  EXPECT_EQ(second->payload, first->payload);
  p->Send(POHMELFS_OP_MKDIR, body, 501);  // a new transaction does execute
  auto third = p->Recv();
  ASSERT_TRUE(third.has_value());
  EXPECT_EQ(third->hdr.status, static_cast<uint32_t>(EEXIST));
  EXPECT_TRUE(LogMentions("answered from the reply record"));
}

}  // namespace
}  // namespace pohmelfs::testing
