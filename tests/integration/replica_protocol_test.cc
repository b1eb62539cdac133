// The server side of replication against a real server process, over a raw socket: the
// server's identity in HELLO, stale-replica markers (REPLICA), a transaction whose reply was
// lost (--test-drop-replies) answered from the reply record when the client resends it, and
// the leases creates give (CREATE_LEASE) to the creates of a BATCH that ran and to no others.
#include <algorithm>
#include <cstring>
#include <memory>

#include "proto/codec.h"
#include "tests/integration/fixture.h"
#include "tests/integration/raw_peer.h"

namespace pohmelfs::testing {
namespace {

using proto::from_le;
using proto::Oid;
using proto::to_le;

// Waits (bounded) for text to appear in the server's log.
bool LogMentions(const ServerProcess& server, const std::string& text) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    if (server.Log().find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // log polling, bounded
  }
  return false;
}

// A connected, handshaken peer; *hello gets the HELLO reply.
std::unique_ptr<RawPeer> Peer(const ServerProcess& server, pohmelfs_hello_rep* hello = nullptr) {
  auto p = std::make_unique<RawPeer>(server.uri());
  EXPECT_TRUE(p->connected());
  auto r = p->Hello();
  EXPECT_TRUE(r.has_value());
  if (r) {
    EXPECT_EQ(r->hdr.status, 0u);
    EXPECT_EQ(r->payload.size(), sizeof(pohmelfs_hello_rep));
    if (hello && r->payload.size() >= sizeof(*hello))
      std::memcpy(hello, r->payload.data(), sizeof(*hello));
  }
  return p;
}

Oid ServerIdOf(const ServerProcess& server) {
  pohmelfs_hello_rep rep{};
  Peer(server, &rep);
  return Oid::FromWire(rep.server_id);
}

// One request and its reply (a reply with status ETIMEDOUT stands for none).
RawReply Call(RawPeer* p, uint16_t op, const std::vector<uint8_t>& body, uint64_t trans) {
  p->Send(op, body, trans);
  auto r = p->Recv();
  EXPECT_TRUE(r.has_value()) << "no reply to " << proto::OpcodeName(op);
  if (!r) {
    RawReply none;
    none.hdr.status = ETIMEDOUT;
    return none;
  }
  EXPECT_EQ(r->hdr.trans, trans);
  return *r;
}

std::vector<uint8_t> ReplicaReq(uint32_t cmd, const Oid& peer) {
  return RawPeer::Bytes(pohmelfs_replica_req{to_le(cmd), 0, peer.ToWire()});
}

// REPLICA LIST over p.
std::vector<Oid> ListStale(RawPeer* p) {
  static uint64_t trans = 1000;
  RawReply r = Call(p, POHMELFS_OP_REPLICA, ReplicaReq(POHMELFS_REPLICA_LIST, Oid()), ++trans);
  EXPECT_EQ(r.hdr.status, 0u);
  proto::Reader rd(r.payload);
  pohmelfs_replica_list_rep rep{};
  EXPECT_TRUE(rd.Get(&rep));
  std::vector<Oid> peers;
  for (uint32_t i = 0; i < from_le(rep.count); i++) {
    pohmelfs_oid o;
    EXPECT_TRUE(rd.Get(&o));
    peers.push_back(Oid::FromWire(o));
  }
  return peers;
}

std::vector<Oid> Sorted(std::vector<Oid> v) {
  std::sort(v.begin(), v.end(), [](const Oid& a, const Oid& b) { return a.b < b.b; });
  return v;
}

// Restarts a stopped server on the same export; a new log, so that the new address is found.
void Restart(StandaloneServer* s, const std::string& log) {
  ASSERT_TRUE(s->server.Stop()) << "server did not exit cleanly on SIGTERM";
  ASSERT_TRUE(s->server.Start(s->export_dir(), s->log(log))) << s->server.Log();
}

TEST(ReplicaProtocolTest, HelloCarriesAServerIdThatSurvivesARestart) {
  StandaloneServer s("server-id");
  ASSERT_TRUE(s.started) << s.server.Log();
  pohmelfs_hello_rep rep{};
  Peer(s.server, &rep);
  EXPECT_EQ(from_le(rep.version), uint16_t{POHMELFS_PROTO_VERSION_MAX});
  Oid id = Oid::FromWire(rep.server_id);
  EXPECT_FALSE(id.IsZero());
  EXPECT_TRUE(LogMentions(s.server, "as server " + id.Hex()));
  Restart(&s, "server2.log");
  EXPECT_EQ(ServerIdOf(s.server), id);
  StandaloneServer other("server-id-other");  // another export is another server
  ASSERT_TRUE(other.started) << other.server.Log();
  EXPECT_NE(ServerIdOf(other.server), id);
}

TEST(ReplicaProtocolTest, StaleMarkersRoundTripAndSurviveARestart) {
  StandaloneServer s("replica-marks");
  ASSERT_TRUE(s.started) << s.server.Log();
  Oid a = Oid::Random(), b = Oid::Random();
  {
    auto p = Peer(s.server);
    EXPECT_TRUE(ListStale(p.get()).empty());
    EXPECT_EQ(
        Call(p.get(), POHMELFS_OP_REPLICA, ReplicaReq(POHMELFS_REPLICA_MARK, a), 10).hdr.status,
        0u);
    EXPECT_EQ(
        Call(p.get(), POHMELFS_OP_REPLICA, ReplicaReq(POHMELFS_REPLICA_MARK, b), 11).hdr.status,
        0u);
    EXPECT_EQ(
        Call(p.get(), POHMELFS_OP_REPLICA, ReplicaReq(POHMELFS_REPLICA_MARK, a), 12).hdr.status,
        0u);  // idempotent
    EXPECT_EQ(ListStale(p.get()), Sorted({a, b}));
    RawReply cleared =
        Call(p.get(), POHMELFS_OP_REPLICA, ReplicaReq(POHMELFS_REPLICA_CLEAR, a), 13);
    EXPECT_EQ(cleared.hdr.status, 0u);
    EXPECT_TRUE(cleared.payload.empty());
    EXPECT_EQ(ListStale(p.get()), std::vector<Oid>{b});
  }
  EXPECT_TRUE(LogMentions(s.server, "replica " + a.Hex() + " marked stale"));
  EXPECT_TRUE(LogMentions(s.server, "replica " + a.Hex() + " cleared"));
  EXPECT_TRUE(fs::is_regular_file(fs::path(s.export_dir()) / ".pohmelfs/stale" / b.Hex()));
  Restart(&s, "server2.log");
  auto p = Peer(s.server);
  EXPECT_EQ(ListStale(p.get()), std::vector<Oid>{b});
}

TEST(ReplicaProtocolTest, MalformedReplicaRequestsGetEinvalAndTheConnectionSurvives) {
  StandaloneServer s("replica-malformed");
  ASSERT_TRUE(s.started) << s.server.Log();
  auto p = Peer(s.server);
  auto short_body = ReplicaReq(POHMELFS_REPLICA_MARK, Oid::Random());
  short_body.resize(8);
  EXPECT_EQ(Call(p.get(), POHMELFS_OP_REPLICA, short_body, 20).hdr.status,
            static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(Call(p.get(), POHMELFS_OP_REPLICA, ReplicaReq(77, Oid::Random()), 21).hdr.status,
            static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(
      Call(p.get(), POHMELFS_OP_REPLICA, ReplicaReq(POHMELFS_REPLICA_MARK, Oid()), 22).hdr.status,
      static_cast<uint32_t>(EINVAL));
  EXPECT_TRUE(LogMentions(s.server, "unknown replica command"));
  EXPECT_EQ(Call(p.get(), POHMELFS_OP_PING, {}, 23).hdr.status, 0u);
  EXPECT_TRUE(ListStale(p.get()).empty());
}

TEST(ReplicaProtocolTest, DroppedReplyIsAnsweredFromTheRecordWhenResent) {
  ScratchDir scratch("drop-replies");
  std::string export_dir = (scratch.path() / "export").string();
  fs::create_directories(export_dir);
  ServerProcess server;
  ASSERT_TRUE(server.Start(export_dir, (scratch.path() / "server.log").string(),
                           {"--test-drop-replies", "1"}))
      << server.Log();
  auto p = Peer(server);
  Oid id = Oid::Random();
  pohmelfs_create_req q{};
  q.parent = Oid::Root().ToWire();
  q.new_oid = id.ToWire();
  q.mode = to_le(uint32_t{0755});
  q.name_len = to_le(uint32_t{7});
  auto body = RawPeer::Bytes(q, "dropped");
  p->Send(POHMELFS_OP_MKDIR, body, 700);
  ASSERT_TRUE(LogMentions(server, "dropping reply to trans 700 (test)"));
  EXPECT_FALSE(p->Recv(200).has_value());  // executed, recorded, not answered
  EXPECT_TRUE(fs::is_directory(fs::path(export_dir) / "dropped"));

  p->Send(POHMELFS_OP_MKDIR, body, 700, UINT32_MAX, POHMELFS_FLAG_RESENT);
  auto r = p->Recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->hdr.trans, 700u);
  ASSERT_EQ(r->hdr.status, 0u);  // the recorded reply, not EEXIST
  pohmelfs_attr a;
  ASSERT_EQ(r->payload.size(), sizeof(a));
  std::memcpy(&a, r->payload.data(), sizeof(a));
  EXPECT_EQ(Oid::FromWire(a.oid), id);
  EXPECT_TRUE(LogMentions(server, "answered from the reply record"));

  // Only the first reply was dropped; the directory exists once, under the id it was given.
  pohmelfs_readdir_req rq{Oid::Root().ToWire(), 0, to_le(uint32_t{POHMELFS_READDIR_MAX}), 0};
  RawReply listing = Call(p.get(), POHMELFS_OP_READDIR, RawPeer::Bytes(rq), 701);
  ASSERT_EQ(listing.hdr.status, 0u);
  proto::Reader rd(listing.payload);
  pohmelfs_readdir_rep rep;
  ASSERT_TRUE(rd.Get(&rep));
  ASSERT_EQ(from_le(rep.count), 1u);
  pohmelfs_dirent de;
  ASSERT_TRUE(rd.Get(&de));
  EXPECT_EQ(Oid::FromWire(de.attr.oid), id);
  q.new_oid = Oid::Random().ToWire();
  EXPECT_EQ(Call(p.get(), POHMELFS_OP_MKDIR, RawPeer::Bytes(q, "second!"), 702).hdr.status, 0u);
}

// One MKDIR command of a BATCH: pohmelfs_cmd, then the create and the name, padded to 8.
void AddMkdir(std::vector<uint8_t>* batch, const Oid& oid, const std::string& name) {
  pohmelfs_create_req q{};
  q.parent = Oid::Root().ToWire();
  q.new_oid = oid.ToWire();
  q.mode = to_le(uint32_t{0755});
  q.name_len = to_le(static_cast<uint32_t>(name.size()));
  q.flags = to_le(uint32_t{POHMELFS_CREATE_LEASE});
  auto body = RawPeer::Bytes(q, name);
  pohmelfs_cmd c{to_le(uint16_t{POHMELFS_OP_MKDIR}), 0, to_le(static_cast<uint32_t>(body.size()))};
  auto head = RawPeer::Bytes(c);
  batch->insert(batch->end(), head.begin(), head.end());
  batch->insert(batch->end(), body.begin(), body.end());
  batch->resize(POHMELFS_PAD8(batch->size()));
}

std::vector<uint8_t> LeaseReq(const Oid& oid, uint32_t cmd, uint32_t mode) {
  pohmelfs_lease_req q{};
  q.oid = oid.ToWire();
  q.cmd = to_le(cmd);
  q.mode = to_le(mode);
  return RawPeer::Bytes(q);
}

// The creator holds the WRITE lease of each directory its BATCH made, and none of a create that
// failed or never ran: another session asking for those gets its answer at once, not after a
// break timeout (a minute here) spent waiting for a holder that does not exist.
TEST(ReplicaProtocolTest, CreateLeasesAreHeldOnlyForTheCreatesThatRan) {
  ScratchDir scratch("create-leases");
  std::string export_dir = (scratch.path() / "export").string();
  fs::create_directories(export_dir + "/taken");
  ServerProcess server;
  ASSERT_TRUE(server.Start(export_dir, (scratch.path() / "server.log").string(),
                           {"--lease-break-timeout-ms", "60000"}))
      << server.Log();
  auto a = Peer(server);
  auto b = Peer(server);
  const Oid made = Oid::Random(), failed = Oid::Random(), skipped = Oid::Random();
  std::vector<uint8_t> batch = RawPeer::Bytes(pohmelfs_batch_req{to_le(uint32_t{3}), 0});
  AddMkdir(&batch, made, "made");
  AddMkdir(&batch, failed, "taken");  // EEXIST: the batch stops here
  AddMkdir(&batch, skipped, "skipped");
  RawReply r = Call(a.get(), POHMELFS_OP_BATCH, batch, 10);
  ASSERT_EQ(r.hdr.status, 0u);
  pohmelfs_batch_rep rep{};
  ASSERT_GE(r.payload.size(), sizeof(rep));
  std::memcpy(&rep, r.payload.data(), sizeof(rep));
  ASSERT_EQ(from_le(rep.count), 2u);
  EXPECT_TRUE(fs::is_directory(fs::path(export_dir) / "made"));
  EXPECT_FALSE(fs::exists(fs::path(export_dir) / "skipped"));

  for (const Oid& none : {failed, skipped}) {
    RawReply lr = Call(b.get(), POHMELFS_OP_LEASE,
                       LeaseReq(none, POHMELFS_LEASE_ACQUIRE, POHMELFS_LEASE_WRITE), 20);
    EXPECT_NE(lr.hdr.status, 0u) << "no such object, and no holder to wait for";
    EXPECT_NE(lr.hdr.status, static_cast<uint32_t>(ETIMEDOUT)) << "waited for a holder";
  }
  // The lease of the directory made is a's: b's request breaks it.
  b->Send(POHMELFS_OP_LEASE, LeaseReq(made, POHMELFS_LEASE_ACQUIRE, POHMELFS_LEASE_WRITE), 22);
  auto brk = a->Recv();
  ASSERT_TRUE(brk.has_value()) << "no LEASE_BREAK for the directory made";
  EXPECT_EQ(brk->hdr.opcode, uint16_t{POHMELFS_OP_LEASE_BREAK});
  EXPECT_TRUE(brk->hdr.flags & POHMELFS_FLAG_CALLBACK);
  pohmelfs_lease_break lb{};
  ASSERT_GE(brk->payload.size(), sizeof(lb));
  std::memcpy(&lb, brk->payload.data(), sizeof(lb));
  EXPECT_EQ(Oid::FromWire(lb.oid), made);
  EXPECT_EQ(Call(a.get(), POHMELFS_OP_LEASE,
                 LeaseReq(made, POHMELFS_LEASE_RELEASE, POHMELFS_LEASE_NONE), 11)
                .hdr.status,
            0u);
  auto granted = b->Recv();
  ASSERT_TRUE(granted.has_value());
  EXPECT_EQ(granted->hdr.trans, 22u);
  EXPECT_EQ(granted->hdr.status, 0u);
}

}  // namespace
}  // namespace pohmelfs::testing
