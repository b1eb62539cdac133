#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "crypto/channel_cipher.h"
#include "crypto/checksum.h"
#include "crypto/crypto_pool.h"
#include "crypto/handshake_auth.h"
#include "crypto/kdf.h"
#include "crypto/keys.h"
#include "crypto/rma_seal.h"

namespace pohmelfs::crypto {
namespace {

std::vector<uint8_t> FromHex(std::string_view hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoul(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// ---- HMAC, HKDF, comparison ---------------------------------------------------------------

TEST(CryptoHmac, Rfc4231TestCase2) {
  const auto want = FromHex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  Sha256Digest d = HmacSha256(AsBytes("Jefe"), {AsBytes("what do ya want for nothing?")});
  EXPECT_EQ(std::vector<uint8_t>(d.begin(), d.end()), want);
  // The parts are concatenated: any split gives the same MAC.
  Sha256Digest split = HmacSha256(
      AsBytes("Jefe"), {AsBytes("what do "), AsBytes(""), AsBytes("ya want for nothing?")});
  EXPECT_EQ(split, d);
}

TEST(CryptoHkdf, Rfc5869TestCase1) {
  const std::vector<uint8_t> ikm(22, 0x0b);
  const auto salt = FromHex("000102030405060708090a0b0c");
  const auto info = FromHex("f0f1f2f3f4f5f6f7f8f9");
  const auto want = FromHex(
      "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
  std::vector<uint8_t> okm(42);
  ASSERT_TRUE(HkdfSha256(ikm, salt, info, okm).ok());
  EXPECT_EQ(okm, want);
}

TEST(CryptoHkdf, RejectsBadLengths) {
  std::vector<uint8_t> out(32);
  EXPECT_EQ(HkdfSha256({}, {}, {}, out).code(), EINVAL);
  const std::vector<uint8_t> ikm(32, 1);
  std::vector<uint8_t> too_long(255 * 32 + 1);
  EXPECT_EQ(HkdfSha256(ikm, {}, {}, too_long).code(), EINVAL);
}

TEST(CryptoKdf, ConstantTimeEqualChecksLengthAndBytes) {
  const std::vector<uint8_t> a{1, 2, 3}, b{1, 2, 3}, c{1, 2, 4}, d{1, 2};
  EXPECT_TRUE(ConstantTimeEqual(a, b));
  EXPECT_FALSE(ConstantTimeEqual(a, c));
  EXPECT_FALSE(ConstantTimeEqual(a, d));
  EXPECT_TRUE(ConstantTimeEqual({}, {}));
}

// ---- key files ----------------------------------------------------------------------------

class CryptoKeyFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "pohmelfs-key-XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const char* name) const { return dir_ + "/" + name; }
  // Writes contents with mode 0600, as a hand-made key file would be.
  void Write(const std::string& path, const std::string& contents) const {
    std::filesystem::remove(path);
    int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, contents.data(), contents.size()), static_cast<ssize_t>(contents.size()));
    ::close(fd);
  }
  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::string dir_;
};

TEST_F(CryptoKeyFile, GenerateWritesMode0600AndTheFormat) {
  const std::string path = Path("cluster.key");
  ASSERT_TRUE(GenerateKeyFile(path).ok());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  const std::string text = Read(path);
  ASSERT_EQ(text.size(), 16u + 64u + 1u);
  EXPECT_EQ(text.substr(0, 16), "pohmelfs-key-v1 ");
  EXPECT_EQ(text.back(), '\n');
  for (char c : text.substr(16, 64)) EXPECT_TRUE(std::isxdigit(c) && !std::isupper(c)) << c;
}

TEST_F(CryptoKeyFile, LoadRoundTrip) {
  const std::string a = Path("a.key"), b = Path("b.key");
  ASSERT_TRUE(GenerateKeyFile(a).ok());
  ASSERT_TRUE(GenerateKeyFile(b).ok());
  Result<Key> ka = LoadKeyFile(a);
  Result<Key> ka2 = LoadKeyFile(a);
  Result<Key> kb = LoadKeyFile(b);
  ASSERT_TRUE(ka.ok()) << ka.status().ToString();
  ASSERT_TRUE(ka2.ok());
  ASSERT_TRUE(kb.ok());
  EXPECT_EQ(ka->bytes, ka2->bytes);
  EXPECT_NE(ka->bytes, kb->bytes);
  // The hex in the file is the key.
  const std::string text = Read(a);
  EXPECT_EQ(FromHex(text.substr(16, 64)), std::vector<uint8_t>(ka->bytes.begin(), ka->bytes.end()));
}

TEST_F(CryptoKeyFile, RefusesToOverwrite) {
  const std::string path = Path("cluster.key");
  ASSERT_TRUE(GenerateKeyFile(path).ok());
  const std::string before = Read(path);
  Status st = GenerateKeyFile(path);
  EXPECT_EQ(st.code(), EEXIST);
  EXPECT_NE(st.reason().find(path), std::string::npos) << st.reason();
  EXPECT_EQ(Read(path), before);
  // Not through a symlink either (O_EXCL never follows one).
  ASSERT_EQ(::symlink(Path("elsewhere.key").c_str(), Path("link.key").c_str()), 0);
  EXPECT_EQ(GenerateKeyFile(Path("link.key")).code(), EEXIST);
  EXPECT_FALSE(std::filesystem::exists(Path("elsewhere.key")));
}

TEST_F(CryptoKeyFile, RefusesGroupOrOtherAccess) {
  const std::string path = Path("cluster.key");
  ASSERT_TRUE(GenerateKeyFile(path).ok());
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  Result<Key> k = LoadKeyFile(path);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.code(), EPERM);
  EXPECT_NE(k.status().reason().find(path), std::string::npos) << k.status().reason();
  EXPECT_NE(k.status().reason().find("0644"), std::string::npos) << k.status().reason();
  ASSERT_EQ(::chmod(path.c_str(), 0620), 0);
  EXPECT_EQ(LoadKeyFile(path).code(), EPERM);
  ASSERT_EQ(::chmod(path.c_str(), 0400), 0);
  EXPECT_TRUE(LoadKeyFile(path).ok());
}

TEST_F(CryptoKeyFile, RefusesGarbage) {
  const std::string path = Path("bad.key");
  const std::string hex64(64, 'a');
  const std::vector<std::string> bad = {
      "",
      "garbage\n",
      "pohmelfs-key-v1 " + hex64.substr(1) + "\n",                      // 63 digits
      "pohmelfs-key-v1 " + hex64 + "a\n",                               // 65 digits
      "pohmelfs-key-v1 " + hex64.substr(1) + "g\n",                     // not hex
      "pohmelfs-key-v2 " + hex64 + "\n",                                // unknown version
      "pohmelfs-key-v1  " + hex64.substr(1) + "\n",                     // misplaced space
      "pohmelfs-key-v1 " + hex64 + "\n\n",                              // a second line
      "pohmelfs-key-v1 " + hex64 + "\nextra",                           // trailing bytes
      "pohmelfs-key-v1 " + hex64.substr(2) + std::string("\0\0\n", 3),  // NULs
  };
  for (const std::string& contents : bad) {
    Write(path, contents);
    Result<Key> k = LoadKeyFile(path);
    EXPECT_EQ(k.code(), EINVAL) << "accepted: " << contents;
  }
  // Tolerated: no final newline, upper-case digits.
  Write(path, "pohmelfs-key-v1 " + std::string(64, 'A'));
  Result<Key> k = LoadKeyFile(path);
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  for (uint8_t b : k->bytes) EXPECT_EQ(b, 0xaa);
  EXPECT_EQ(LoadKeyFile(Path("missing.key")).code(), ENOENT);
}

TEST_F(CryptoKeyFile, RefusesSymlink) {
  const std::string path = Path("cluster.key");
  ASSERT_TRUE(GenerateKeyFile(path).ok());
  ASSERT_EQ(::symlink(path.c_str(), Path("link.key").c_str()), 0);
  EXPECT_EQ(LoadKeyFile(Path("link.key")).code(), ELOOP);
}

TEST(CryptoModes, NamesRoundTrip) {
  for (uint32_t bit : {POHMELFS_CRYPTO_NONE, POHMELFS_CRYPTO_CRC32C, POHMELFS_CRYPTO_HMAC_SHA256,
                       POHMELFS_CRYPTO_AES_256_GCM, POHMELFS_CRYPTO_CHACHA20_POLY1305}) {
    Result<uint32_t> parsed = ParseCryptoMode(CryptoModeName(bit));
    ASSERT_TRUE(parsed.ok()) << CryptoModeName(bit);
    EXPECT_EQ(*parsed, bit);
    EXPECT_NE(bit & kAllCryptoModes, 0u);
  }
  EXPECT_EQ(*ParseCryptoMode("aes-256-gcm"), POHMELFS_CRYPTO_AES_256_GCM);
  EXPECT_EQ(ParseCryptoMode("AES").code(), EINVAL);
  EXPECT_EQ(ParseCryptoMode("").code(), EINVAL);
  EXPECT_STREQ(CryptoModeName(0), "unknown");
  EXPECT_STREQ(CryptoModeName(POHMELFS_CRYPTO_NONE | POHMELFS_CRYPTO_CRC32C), "unknown");
  EXPECT_FALSE(ModeNeedsKey(POHMELFS_CRYPTO_NONE));
  EXPECT_FALSE(ModeNeedsKey(POHMELFS_CRYPTO_CRC32C));
  EXPECT_TRUE(ModeNeedsKey(POHMELFS_CRYPTO_HMAC_SHA256));
  EXPECT_TRUE(ModeNeedsKey(POHMELFS_CRYPTO_AES_256_GCM));
  EXPECT_TRUE(ModeNeedsKey(POHMELFS_CRYPTO_CHACHA20_POLY1305));
}

// ---- handshake proofs and session keys ----------------------------------------------------

Key TestKey(uint32_t seed) {
  Key k;
  std::vector<uint8_t> b = RandomBytes(kKeyBytes, seed);
  std::copy(b.begin(), b.end(), k.bytes.begin());
  return k;
}

AuthTranscript TestTranscript() {
  AuthTranscript t;
  std::vector<uint8_t> c = RandomBytes(32, 1), s = RandomBytes(32, 2);
  std::copy(c.begin(), c.end(), t.client_nonce.begin());
  std::copy(s.begin(), s.end(), t.server_nonce.begin());
  t.version = 3;
  t.features = 0x7;
  t.offered_modes = POHMELFS_CRYPTO_HMAC_SHA256 | POHMELFS_CRYPTO_AES_256_GCM;
  t.chosen_mode = POHMELFS_CRYPTO_AES_256_GCM;
  t.session = 0x1122334455667788ull;
  t.client_name = "node17";
  return t;
}

TEST(CryptoProof, TranscriptLayout) {
  AuthTranscript t = TestTranscript();
  std::vector<uint8_t> b = SerializeTranscript(t);
  ASSERT_EQ(b.size(), 32u + 32u + 2u + 8u + 4u + 4u + 8u + 4u + 6u);
  EXPECT_EQ(b[0], t.client_nonce[0]);
  EXPECT_EQ(b[32], t.server_nonce[0]);
  EXPECT_EQ(b[64], 3);  // version, little-endian
  EXPECT_EQ(b[65], 0);
  EXPECT_EQ(b[82], 0x88);  // session's low byte first
  EXPECT_EQ(b[90], 6);     // name length
  EXPECT_EQ(std::string(b.end() - 6, b.end()), "node17");
}

TEST(CryptoProof, ClientAndServerProofsDifferAndDoNotReflect) {
  const Key key = TestKey(7);
  const AuthTranscript t = TestTranscript();
  Proof server = ServerProof(key, t);
  Proof client = ClientProof(key, t);
  EXPECT_NE(server, client);
  EXPECT_TRUE(VerifyProof(ServerProof(key, t), server));
  EXPECT_TRUE(VerifyProof(ClientProof(key, t), client));
  // A server proof sent back as the client's never verifies.
  EXPECT_FALSE(VerifyProof(ClientProof(key, t), server));
  // Another key gives other proofs.
  EXPECT_FALSE(VerifyProof(ServerProof(TestKey(8), t), server));
}

TEST(CryptoProof, VerifyRejectsWrongLengthAndFlippedBits) {
  const Proof p = ServerProof(TestKey(7), TestTranscript());
  std::vector<uint8_t> longer(p.begin(), p.end());
  longer.push_back(0);
  EXPECT_FALSE(VerifyProof(p, longer));
  EXPECT_FALSE(VerifyProof(p, std::span<const uint8_t>(p.data(), p.size() - 1)));
  EXPECT_FALSE(VerifyProof(p, {}));
  for (size_t i = 0; i < p.size(); ++i) {
    Proof q = p;
    q[i] ^= 0x01;
    EXPECT_FALSE(VerifyProof(p, q)) << i;
  }
}

TEST(CryptoProof, EveryTranscriptFieldChangesTheProof) {
  const Key key = TestKey(7);
  const AuthTranscript base = TestTranscript();
  const std::vector<std::function<void(AuthTranscript&)>> changes = {
      [](AuthTranscript& t) { t.client_nonce[31] ^= 1; },
      [](AuthTranscript& t) { t.server_nonce[0] ^= 1; },
      [](AuthTranscript& t) { t.version = 2; },
      [](AuthTranscript& t) { t.features ^= 1ull << 63; },
      [](AuthTranscript& t) { t.offered_modes |= POHMELFS_CRYPTO_NONE; },  // a downgrade offer
      [](AuthTranscript& t) { t.chosen_mode = POHMELFS_CRYPTO_HMAC_SHA256; },
      [](AuthTranscript& t) { t.session += 1; },
      [](AuthTranscript& t) { t.client_name = "node18"; },
      [](AuthTranscript& t) { t.client_name += '\0'; },
  };
  for (size_t i = 0; i < changes.size(); ++i) {
    AuthTranscript t = base;
    changes[i](t);
    EXPECT_NE(SerializeTranscript(t), SerializeTranscript(base)) << i;
    EXPECT_NE(ServerProof(key, t), ServerProof(key, base)) << i;
    EXPECT_NE(ClientProof(key, t), ClientProof(key, base)) << i;
    Result<SessionKeys> a = DeriveSessionKeys(key, t), b = DeriveSessionKeys(key, base);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_NE(a->client_to_server, b->client_to_server) << i;
    EXPECT_NE(a->server_to_client, b->server_to_client) << i;
  }
}

TEST(CryptoProof, SessionKeysPerDirectionAndDeterministic) {
  const Key key = TestKey(7);
  AuthTranscript t = TestTranscript();
  Result<SessionKeys> a = DeriveSessionKeys(key, t);
  Result<SessionKeys> b = DeriveSessionKeys(key, t);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok());
  EXPECT_NE(a->client_to_server, a->server_to_client);
  EXPECT_EQ(a->client_to_server, b->client_to_server);
  EXPECT_EQ(a->server_to_client, b->server_to_client);
  EXPECT_NE(a->client_to_server, key.bytes);
  Result<SessionKeys> other = DeriveSessionKeys(TestKey(8), t);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->client_to_server, a->client_to_server);
  // A long client name still fits (the HKDF info grows with it).
  t.client_name.assign(4000, 'n');
  EXPECT_TRUE(DeriveSessionKeys(key, t).ok());
}

TEST(CryptoProof, RandomNoncesDiffer) {
  Result<Nonce> a = RandomNonce(), b = RandomNonce();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
}

// ---- the pool -----------------------------------------------------------------------------

TEST(CryptoPoolTest, RunsEveryIndexExactlyOnce) {
  for (int threads : {0, 1, 3}) {
    CryptoPool pool(threads);
    for (size_t n : {0u, 1u, 2u, 17u, 1000u}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, [&](size_t i) { hits[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << threads << " " << n;
    }
  }
}

TEST(CryptoPoolTest, ConcurrentCallers) {
  CryptoPool pool(2);
  std::atomic<size_t> total{0};
  std::vector<std::thread> callers;
  callers.reserve(4);
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 200; ++round) {
        std::vector<int> seen(37, 0);  // each index is written by one thread only
        pool.ParallelFor(seen.size(), [&](size_t i) { seen[i] += 1; });
        for (int s : seen) EXPECT_EQ(s, 1);
        total.fetch_add(seen.size());
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(total.load(), 4u * 200u * 37u);
}

// ---- channel protection -------------------------------------------------------------------

constexpr size_t kSeg = ChannelCipher::kSegmentBytes;

ChannelCipher MakeCipher(uint32_t mode, uint32_t key_seed = 11) {
  std::vector<uint8_t> key = RandomBytes(32, key_seed);
  Result<ChannelCipher> c = ChannelCipher::Create(mode, key);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return std::move(c).value();
}

// Cuts data into iovecs at odd, uneven offsets (pieces of 1 to ~70 KiB), so that segments
// start and end inside iovecs.
std::vector<iovec> OddSplit(std::vector<uint8_t>& data, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<iovec> iov;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t n = std::min<size_t>(data.size() - pos, (rng() % 70001) | 1);
    iov.push_back({data.data() + pos, n});
    pos += n;
  }
  if (iov.empty()) iov.push_back({data.data(), 0});
  iov.push_back({data.data() + data.size(), 0});  // an empty iovec at the end
  return iov;
}

// A sealed message, as a receiver gets it.
struct Sealed {
  std::vector<uint8_t> header;
  std::vector<uint8_t> body;
  std::vector<uint8_t> tags;
};

Sealed SealOrDie(const ChannelCipher& c, uint64_t seq, const std::vector<uint8_t>& plain,
                 CryptoPool* pool = nullptr) {
  Sealed m;
  m.header = RandomBytes(40, 99);
  std::vector<uint8_t> copy = plain;
  std::vector<iovec> iov = OddSplit(copy, static_cast<uint32_t>(plain.size()));
  m.body.resize(plain.size());
  m.tags.resize(c.TagsSize(plain.size()));
  Status st = c.Seal(seq, m.header, iov, m.body, m.tags, pool);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return m;
}

Status OpenCopy(const ChannelCipher& c, uint64_t seq, const Sealed& m, CryptoPool* pool = nullptr) {
  std::vector<uint8_t> body = m.body;
  return c.Open(seq, m.header, body, m.tags, pool);
}

class CryptoChannel : public ::testing::TestWithParam<uint32_t> {};
// The modes that do not encrypt (the payload travels as it is).
class CryptoChannelIntegrity : public CryptoChannel {};
// The modes that detect changes (all but none).
class CryptoChannelProtected : public CryptoChannel {};

TEST_P(CryptoChannel, SizesAndTags) {
  ChannelCipher c = MakeCipher(GetParam());
  EXPECT_EQ(c.mode(), GetParam());
  const size_t tag = c.TagBytes();
  EXPECT_EQ(c.Encrypts(), GetParam() == POHMELFS_CRYPTO_AES_256_GCM ||
                              GetParam() == POHMELFS_CRYPTO_CHACHA20_POLY1305);
  EXPECT_EQ(ChannelCipher::SegmentCount(0), 1u);
  EXPECT_EQ(ChannelCipher::SegmentCount(kSeg), 1u);
  EXPECT_EQ(ChannelCipher::SegmentCount(kSeg + 1), 2u);
  EXPECT_EQ(c.TagsSize(0), tag);
  EXPECT_EQ(c.TagsSize(3 * kSeg + 1), 4 * tag);
}

TEST_P(CryptoChannel, RoundTrip) {
  const ChannelCipher c = MakeCipher(GetParam());
  CryptoPool pool(2);
  for (size_t size : {size_t{0}, size_t{1}, kSeg - 1, kSeg, kSeg + 1, (size_t{1} << 20) + 3}) {
    const std::vector<uint8_t> plain = RandomBytes(size, static_cast<uint32_t>(size));
    for (CryptoPool* p : {static_cast<CryptoPool*>(nullptr), &pool}) {
      SCOPED_TRACE(testing::Message() << "size " << size << (p ? " pool" : " inline"));
      Sealed m = SealOrDie(c, 42, plain, p);
      if (c.Encrypts() && size >= 16) {
        EXPECT_NE(m.body, plain);
      } else if (!c.Encrypts()) {
        EXPECT_EQ(m.body, plain);  // the copy asked for
      }
      std::vector<uint8_t> body = m.body;
      Status st = c.Open(42, m.header, body, m.tags, p);
      ASSERT_TRUE(st.ok()) << st.ToString();
      EXPECT_EQ(body, plain);
      // The pool changes where the work runs, never the bytes.
      Sealed again = SealOrDie(c, 42, plain, p == nullptr ? &pool : nullptr);
      EXPECT_EQ(again.body, m.body);
      EXPECT_EQ(again.tags, m.tags);
    }
  }
}

TEST_P(CryptoChannelIntegrity, AuthenticatesWithoutACopy) {
  const ChannelCipher c = MakeCipher(GetParam());
  std::vector<uint8_t> plain = RandomBytes(3 * kSeg + 5, 5);
  std::vector<iovec> iov = OddSplit(plain, 5);
  std::vector<uint8_t> tags(c.TagsSize(plain.size()));
  const std::vector<uint8_t> header = RandomBytes(40, 6);
  ASSERT_TRUE(c.Seal(9, header, iov, {}, tags).ok());
  EXPECT_TRUE(c.Open(9, header, plain, tags).ok());
  // A body of the wrong size is refused.
  std::vector<uint8_t> small(10);
  EXPECT_EQ(c.Seal(9, header, iov, small, tags).code(), EINVAL);
}

TEST_P(CryptoChannel, RejectsBadArguments) {
  const ChannelCipher c = MakeCipher(GetParam());
  std::vector<uint8_t> plain = RandomBytes(100, 1);
  const iovec iov{plain.data(), plain.size()};
  std::vector<uint8_t> body(100);
  std::vector<uint8_t> tags(c.TagsSize(100) + 1);
  EXPECT_EQ(c.Seal(1, {}, {&iov, 1}, body, tags).code(), EINVAL);
  if (c.Encrypts()) {
    tags.pop_back();
    EXPECT_EQ(c.Seal(1, {}, {&iov, 1}, {}, tags).code(), EINVAL);
  }
  std::vector<uint8_t> wrong_tags(c.TagsSize(100) + 1);
  Status st = c.Open(1, {}, body, wrong_tags);
  EXPECT_EQ(st.code(), EBADMSG);
}

// Every change a network attacker (or a broken NIC) could make is caught, on a message of
// several segments and on a one-segment one.
TEST_P(CryptoChannelProtected, TamperingFailsOpen) {
  const ChannelCipher c = MakeCipher(GetParam());
  const size_t tag = c.TagBytes();
  CryptoPool pool(2);
  for (size_t size : {size_t{0}, size_t{100}, 3 * kSeg + 5}) {
    SCOPED_TRACE(testing::Message() << "size " << size);
    const std::vector<uint8_t> plain = RandomBytes(size, 3);
    const Sealed m = SealOrDie(c, 7, plain);
    ASSERT_TRUE(OpenCopy(c, 7, m).ok());
    auto expect_rejected = [&](const Sealed& bad, uint64_t seq, const char* what) {
      for (CryptoPool* p : {static_cast<CryptoPool*>(nullptr), &pool}) {
        std::vector<uint8_t> body = bad.body;
        Status st = c.Open(seq, bad.header, body, bad.tags, p);
        EXPECT_EQ(st.code(), EBADMSG) << what;
        EXPECT_NE(st.reason().find("sealed message failed its check"), std::string::npos);
        if (c.Encrypts()) {
          // No unauthenticated plaintext is left behind.
          EXPECT_TRUE(std::all_of(body.begin(), body.end(), [](uint8_t b) { return b == 0; }))
              << what;
        }
      }
    };
    for (size_t pos : {size_t{0}, size / 2, size - 1}) {
      if (size == 0) break;
      Sealed bad = m;
      bad.body[pos] ^= 0x20;
      expect_rejected(bad, 7, "body byte");
    }
    for (size_t pos : {size_t{0}, m.tags.size() - 1}) {
      Sealed bad = m;
      bad.tags[pos] ^= 0x01;
      expect_rejected(bad, 7, "tag byte");
    }
    for (size_t pos : {size_t{0}, m.header.size() - 1}) {
      Sealed bad = m;
      bad.header[pos] ^= 0x80;
      expect_rejected(bad, 7, "aad byte");
    }
    {
      Sealed bad = m;
      bad.header.pop_back();
      expect_rejected(bad, 7, "shorter aad");
    }
    expect_rejected(m, 8, "replay under another seq");
    expect_rejected(m, 6, "an older seq");
    {
      // Another key (the other direction's, say) does not open it.
      const ChannelCipher other = MakeCipher(GetParam(), 12);
      if (ModeNeedsKey(GetParam())) {
        std::vector<uint8_t> body = m.body;
        EXPECT_EQ(other.Open(7, m.header, body, m.tags).code(), EBADMSG);
      }
    }
    if (size <= kSeg) continue;
    {
      // Segments 0 and 1 swapped, data only and data with their tags.
      Sealed bad = m;
      std::swap_ranges(bad.body.begin(), bad.body.begin() + kSeg, bad.body.begin() + kSeg);
      expect_rejected(bad, 7, "segments swapped");
      std::swap_ranges(bad.tags.begin(), bad.tags.begin() + tag, bad.tags.begin() + tag);
      expect_rejected(bad, 7, "segments and tags swapped");
    }
    {
      // Segment 1 of another message (the next one: seq 8) spliced in, with its tag. Two
      // messages under one seq cannot be told apart segment by segment; Seal's REQUIRES
      // (a seq is never reused) is what rules that out.
      const Sealed other = SealOrDie(c, 8, RandomBytes(size, 4));
      Sealed bad = m;
      std::copy(other.body.begin() + kSeg, other.body.begin() + 2 * kSeg, bad.body.begin() + kSeg);
      std::copy(other.tags.begin() + tag, other.tags.begin() + 2 * tag, bad.tags.begin() + tag);
      expect_rejected(bad, 7, "segment spliced from another message");
    }
    {
      // Truncation: the last segment and its tag dropped, the rest left intact.
      Sealed bad = m;
      bad.body.resize(3 * kSeg);
      bad.tags.resize(3 * tag);
      expect_rejected(bad, 7, "last segment dropped");
      // And a segment's worth of extra data with a copied tag.
      Sealed longer = m;
      longer.body.resize(4 * kSeg + 5);
      std::copy(m.body.begin(), m.body.begin() + kSeg, longer.body.begin() + 3 * kSeg + 5);
      longer.tags.insert(longer.tags.end(), m.tags.begin(), m.tags.begin() + tag);
      expect_rejected(longer, 7, "segment appended");
    }
  }
}

TEST(CryptoChannelCreate, RejectsUnknownModesAndShortKeys) {
  const std::vector<uint8_t> key(32, 1), short_key(16, 1);
  EXPECT_EQ(ChannelCipher::Create(0, key).code(), EINVAL);
  EXPECT_EQ(ChannelCipher::Create(1u << 9, key).code(), EINVAL);
  EXPECT_EQ(ChannelCipher::Create(POHMELFS_CRYPTO_NONE | POHMELFS_CRYPTO_CRC32C, key).code(),
            EINVAL);
  EXPECT_EQ(ChannelCipher::Create(POHMELFS_CRYPTO_AES_256_GCM, short_key).code(), EINVAL);
  EXPECT_EQ(ChannelCipher::Create(POHMELFS_CRYPTO_HMAC_SHA256, {}).code(), EINVAL);
  EXPECT_TRUE(ChannelCipher::Create(POHMELFS_CRYPTO_CRC32C, {}).ok());
  EXPECT_TRUE(ChannelCipher::Create(POHMELFS_CRYPTO_NONE, {}).ok());
}

// A message of the crc32c mode is checked against a hand computation of the documented format.
TEST(CryptoChannelCreate, Crc32cTagFollowsTheDocumentedFormat) {
  const ChannelCipher c = MakeCipher(POHMELFS_CRYPTO_CRC32C);
  std::vector<uint8_t> plain = {'a', 'b', 'c'};
  const std::vector<uint8_t> aad = {1, 2};
  const iovec iov{plain.data(), plain.size()};
  std::vector<uint8_t> tags(4);
  ASSERT_TRUE(c.Seal(5, aad, {&iov, 1}, {}, tags).ok());
  std::vector<uint8_t> covered = {5, 0, 0,   0,   0,  0, 0, 0,  // seq
                                  3, 0, 0,   0,   0,  0, 0, 0,  // total length
                                  0, 0, 0,   0,                 // segment index
                                  1, 0, 0,   0,                 // segment count
                                  2, 0, 0,   0,                 // aad length
                                  1, 2, 'a', 'b', 'c'};
  uint32_t want = Crc32c(covered.data(), covered.size());
  EXPECT_EQ(tags, (std::vector<uint8_t>{static_cast<uint8_t>(want), static_cast<uint8_t>(want >> 8),
                                        static_cast<uint8_t>(want >> 16),
                                        static_cast<uint8_t>(want >> 24)}));
}

std::string ModeTestName(const ::testing::TestParamInfo<uint32_t>& info) {
  std::string name = CryptoModeName(info.param);
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(AllModes, CryptoChannel,
                         ::testing::Values(POHMELFS_CRYPTO_NONE, POHMELFS_CRYPTO_CRC32C,
                                           POHMELFS_CRYPTO_HMAC_SHA256, POHMELFS_CRYPTO_AES_256_GCM,
                                           POHMELFS_CRYPTO_CHACHA20_POLY1305),
                         ModeTestName);
INSTANTIATE_TEST_SUITE_P(PlaintextModes, CryptoChannelIntegrity,
                         ::testing::Values(POHMELFS_CRYPTO_NONE, POHMELFS_CRYPTO_CRC32C,
                                           POHMELFS_CRYPTO_HMAC_SHA256),
                         ModeTestName);
INSTANTIATE_TEST_SUITE_P(CheckedModes, CryptoChannelProtected,
                         ::testing::Values(POHMELFS_CRYPTO_CRC32C, POHMELFS_CRYPTO_HMAC_SHA256,
                                           POHMELFS_CRYPTO_AES_256_GCM,
                                           POHMELFS_CRYPTO_CHACHA20_POLY1305),
                         ModeTestName);

TEST(CryptoRmaSeal, RoundTripAndEveryTamperingFails) {
  for (uint32_t mode :
       {uint32_t{POHMELFS_CRYPTO_CRC32C}, uint32_t{POHMELFS_CRYPTO_HMAC_SHA256},
        uint32_t{POHMELFS_CRYPTO_AES_256_GCM}, uint32_t{POHMELFS_CRYPTO_CHACHA20_POLY1305}}) {
    SCOPED_TRACE(CryptoModeName(mode));
    std::mt19937 rng(7);
    std::vector<uint8_t> plain(200000);
    for (auto& b : plain) b = static_cast<uint8_t>(rng());
    RmaTransfer t{};
    t.oid.bytes[3] = 9;
    t.offset = 1 << 20;
    t.size = static_cast<uint32_t>(plain.size());
    std::vector<uint8_t> buf = plain;
    auto seal = SealRma(mode, t, buf);
    ASSERT_TRUE(seal.ok()) << seal.status().ToString();
    const bool encrypts =
        mode == POHMELFS_CRYPTO_AES_256_GCM || mode == POHMELFS_CRYPTO_CHACHA20_POLY1305;
    EXPECT_EQ(buf != plain, encrypts);  // the AEAD modes leave ciphertext in the buffer
    auto view = [&](const std::vector<uint8_t>& v) {
      return std::string_view(reinterpret_cast<const char*>(v.data()), v.size());
    };
    auto open = [&](uint32_t expect, RmaTransfer tt, std::vector<uint8_t> b,
                    const std::vector<uint8_t>& s) { return OpenRma(expect, tt, b, view(s)).ok(); };
    EXPECT_TRUE(open(mode, t, buf, *seal));
    EXPECT_TRUE(open(0, t, buf, *seal));
    {
      std::vector<uint8_t> b = buf;
      ASSERT_TRUE(OpenRma(mode, t, b, view(*seal)).ok());
      EXPECT_EQ(b, plain);
    }
    std::vector<uint8_t> flipped = buf;
    flipped[12345] ^= 1;
    EXPECT_FALSE(open(mode, t, flipped, *seal));
    RmaTransfer moved = t;
    moved.offset += 4096;  // the same bytes presented for another offset
    EXPECT_FALSE(open(mode, moved, buf, *seal));
    std::vector<uint8_t> bad_tag = *seal;
    bad_tag.back() ^= 0x80;
    EXPECT_FALSE(open(mode, t, buf, bad_tag));
    std::vector<uint8_t> bad_key = *seal;
    bad_key[offsetof(pohmelfs_rma_seal, key)] ^= 1;
    EXPECT_EQ(open(mode, t, buf, bad_key), !ModeNeedsKey(mode));  // crc32c has no key
    std::vector<uint8_t> short_seal(seal->begin(), seal->begin() + 20);
    EXPECT_FALSE(open(mode, t, buf, short_seal));
    const uint32_t other =
        mode == POHMELFS_CRYPTO_AES_256_GCM ? POHMELFS_CRYPTO_CRC32C : POHMELFS_CRYPTO_AES_256_GCM;
    EXPECT_FALSE(open(other, t, buf, *seal));  // not the channel's mode
  }
}

}  // namespace
}  // namespace pohmelfs::crypto
