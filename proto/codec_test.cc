#include "proto/codec.h"

#include <gtest/gtest.h>

namespace pohmelfs::proto {
namespace {

TEST(Header, RoundTrip) {
  Header h;
  h.opcode = POHMELFS_OP_WRITE;
  h.flags = POHMELFS_FLAG_REPLY;
  h.length = 4096;
  h.session = 0x1122334455667788ull;
  h.trans = 42;
  h.status = ENOENT;
  h.credits = 7;
  pohmelfs_hdr wire;
  EncodeHeader(h, &wire);
  auto back = DecodeHeader(wire, POHMELFS_PAYLOAD_MAX);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->opcode, h.opcode);
  EXPECT_EQ(back->flags, h.flags);
  EXPECT_EQ(back->length, h.length);
  EXPECT_EQ(back->session, h.session);
  EXPECT_EQ(back->trans, h.trans);
  EXPECT_EQ(back->status, h.status);
  EXPECT_EQ(back->credits, h.credits);
  // Little-endian on the wire whatever the host.
  const auto* bytes = reinterpret_cast<const uint8_t*>(&wire);
  EXPECT_EQ(bytes[0], 'P');
  EXPECT_EQ(bytes[1], 'O');
  EXPECT_EQ(bytes[2], 'H');
  EXPECT_EQ(bytes[3], 'M');
}

TEST(Header, RejectsBadMagicVersionAndLength) {
  Header h;
  h.length = 10;
  pohmelfs_hdr wire;
  EncodeHeader(h, &wire);
  pohmelfs_hdr bad = wire;
  bad.magic = 0;
  EXPECT_EQ(DecodeHeader(bad, 100).code(), EPROTO);
  bad = wire;
  bad.version = to_le(uint16_t{99});
  EXPECT_EQ(DecodeHeader(bad, 100).code(), EPROTONOSUPPORT);
  EXPECT_EQ(DecodeHeader(wire, 9).code(), EMSGSIZE);
  EXPECT_TRUE(DecodeHeader(wire, 10).ok());
}

TEST(Reader, NeverReadsPastEnd) {
  uint8_t buf[6] = {1, 2, 3, 4, 5, 6};
  Reader r(buf, sizeof(buf));
  uint32_t v;
  ASSERT_TRUE(r.Get(&v));
  uint32_t w;
  EXPECT_FALSE(r.Get(&w));
  EXPECT_FALSE(r.ok());
  std::string_view s;
  EXPECT_FALSE(r.Bytes(1, &s));  // poisoned after the first failure
}

TEST(Names, ValidatesComponents) {
  auto check = [](std::string_view name, uint32_t len) {
    Reader r(name.data(), name.size());
    std::string out;
    return GetName(&r, len, &out).code();
  };
  EXPECT_EQ(check("hello", 5), 0);
  EXPECT_EQ(check("", 0), EINVAL);
  EXPECT_EQ(check(".", 1), EINVAL);
  EXPECT_EQ(check("..", 2), EINVAL);
  EXPECT_EQ(check("a/b", 3), EINVAL);
  EXPECT_EQ(check(std::string_view("a\0b", 3), 3), EINVAL);
  EXPECT_EQ(check("abc", 4), EINVAL);  // length past the end of the message
  std::string long_name(256, 'x');
  EXPECT_EQ(check(long_name, 256), ENAMETOOLONG);
  EXPECT_EQ(check(long_name, 255), 0);
}

TEST(Paths, ValidatesLength) {
  std::string p(POHMELFS_PATH_MAX + 1, 'a');
  Reader r(p.data(), p.size());
  std::string out;
  EXPECT_EQ(GetPath(&r, static_cast<uint32_t>(p.size()), &out).code(), ENAMETOOLONG);
  Reader r2(p.data(), 10);
  EXPECT_EQ(GetPath(&r2, 10, &out).code(), 0);
  EXPECT_EQ(out, "aaaaaaaaaa");
}

TEST(Oid, HexRoundTripAndRandomness) {
  Oid a = Oid::Random(), b = Oid::Random();
  EXPECT_FALSE(a == b);
  EXPECT_FALSE(a.IsZero());
  Oid back;
  ASSERT_TRUE(Oid::FromHex(a.Hex(), &back));
  EXPECT_EQ(a, back);
  EXPECT_FALSE(Oid::FromHex("zz", &back));
  EXPECT_FALSE(Oid::FromHex(std::string(32, 'G'), &back));
  EXPECT_EQ(Oid::Root().Hex(), "00000000000000000000000000000001");
}

TEST(Attr, StatRoundTrip) {
  struct stat st {};
  st.st_mode = S_IFREG | 0640;
  st.st_size = 123456789;
  st.st_uid = 1000;
  st.st_gid = 100;
  st.st_nlink = 2;
  st.st_mtim.tv_sec = 1700000000;
  st.st_mtim.tv_nsec = 999;
  pohmelfs_attr a;
  FillAttr(st, Oid::Root(), 5, &a);
  struct stat back;
  AttrToStat(a, &back);
  EXPECT_EQ(back.st_mode, st.st_mode);
  EXPECT_EQ(back.st_size, st.st_size);
  EXPECT_EQ(back.st_uid, st.st_uid);
  EXPECT_EQ(back.st_nlink, st.st_nlink);
  EXPECT_EQ(back.st_mtim.tv_sec, st.st_mtim.tv_sec);
  EXPECT_EQ(back.st_mtim.tv_nsec, st.st_mtim.tv_nsec);
  EXPECT_EQ(from_le(a.version), 5u);
}

}  // namespace
}  // namespace pohmelfs::proto
