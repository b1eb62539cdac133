#include "crypto/channel_cipher.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

#include "crypto/checksum.h"
#include "crypto/crypto_pool.h"
#include "crypto/kdf.h"
#include "crypto/keys.h"

namespace pohmelfs::crypto {
namespace {

constexpr size_t kAeadTagBytes = 16;
constexpr size_t kAeadNonceBytes = 12;
constexpr size_t kSegmentHeaderBytes = 8 + 8 + 4 + 4 + 4;
constexpr char kOpenFailed[] = "sealed message failed its check";

using SegmentHeader = std::array<uint8_t, kSegmentHeaderBytes>;

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
struct MacCtxFree {
  void operator()(EVP_MAC_CTX* c) const { EVP_MAC_CTX_free(c); }
};

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// A position in an iovec array.
struct Cursor {
  size_t iov = 0;
  size_t off = 0;
};

// Calls fn(data, n) for each contiguous piece of the len bytes of iov that start at c; stops
// and returns false as soon as fn does.
// REQUIRES: iov holds at least len bytes from c on.
template <typename Fn>
bool ForEachPiece(std::span<const iovec> iov, Cursor c, size_t len, Fn&& fn) {
  while (len > 0) {
    const iovec& v = iov[c.iov];
    size_t take = std::min(len, v.iov_len - c.off);
    if (take > 0 && !fn(static_cast<const uint8_t*>(v.iov_base) + c.off, take)) return false;
    len -= take;
    ++c.iov;
    c.off = 0;
  }
  return true;
}

}  // namespace

// One Seal or Open call, shared read-only by the threads working on its segments.
struct ChannelCipher::Segments {
  uint64_t seq = 0;
  std::span<const uint8_t> aad;
  std::span<const iovec> in;
  uint8_t* out = nullptr;  // where segment bytes go (ciphertext, plaintext or a copy); may be null
  size_t total = 0;        // payload bytes
  size_t count = 0;        // segments
  std::vector<Cursor> starts;        // where each segment begins in `in`
  uint8_t* tags_out = nullptr;       // Seal
  const uint8_t* tags_in = nullptr;  // Open

  Segments(uint64_t message_seq, std::span<const uint8_t> message_aad,
           std::span<const iovec> payload, size_t payload_len)
      : seq(message_seq),
        aad(message_aad),
        in(payload),
        total(payload_len),
        count(SegmentCount(payload_len)),
        starts(count) {
    // One pass over the iovecs finds every segment's start (segments may span iovecs).
    size_t seg = 0;
    size_t pos = 0;  // payload bytes before in[k]
    for (size_t k = 0; k < in.size() && seg < count; ++k) {
      size_t end = pos + in[k].iov_len;
      while (seg < count && seg * kSegmentBytes < end) {
        starts[seg] = Cursor{k, seg * kSegmentBytes - pos};
        ++seg;
      }
      pos = end;
    }
    // Segments not found (only the empty segment of an empty payload) are empty: never read.
  }

  size_t Offset(size_t index) const { return index * kSegmentBytes; }
  size_t Length(size_t index) const {
    return std::min(kSegmentBytes, total - std::min(total, Offset(index)));
  }
  std::span<const uint8_t> Aad(size_t index) const {
    return index == 0 ? aad : std::span<const uint8_t>();
  }
  SegmentHeader Header(size_t index) const {
    SegmentHeader h;
    PutLe64(h.data(), seq);
    PutLe64(h.data() + 8, total);
    PutLe32(h.data() + 16, static_cast<uint32_t>(index));
    PutLe32(h.data() + 20, static_cast<uint32_t>(count));
    PutLe32(h.data() + 24, static_cast<uint32_t>(Aad(index).size()));
    return h;
  }
};

void ChannelCipher::CipherFree::operator()(EVP_CIPHER* c) const {
  EVP_CIPHER_free(c);
}
void ChannelCipher::MacFree::operator()(EVP_MAC* m) const {
  EVP_MAC_free(m);
}

Result<ChannelCipher> ChannelCipher::Create(uint32_t mode_bit, std::span<const uint8_t> key32) {
  if ((mode_bit & kAllCryptoModes) != mode_bit || (mode_bit & (mode_bit - 1)) != 0 ||
      mode_bit == 0) {
    return Status::Error(EINVAL, "not a single known crypto mode: " + std::to_string(mode_bit));
  }
  ChannelCipher c;
  c.mode_ = mode_bit;
  if (!ModeNeedsKey(mode_bit)) return c;
  if (key32.size() != c.key_.size()) {
    return Status::Error(EINVAL, std::string(CryptoModeName(mode_bit)) +
                                     " needs a 32-byte key, got " + std::to_string(key32.size()));
  }
  std::copy(key32.begin(), key32.end(), c.key_.begin());
  // Fetched once per cipher object: Seal and Open then skip OpenSSL's algorithm lookup.
  if (mode_bit == POHMELFS_CRYPTO_HMAC_SHA256) {
    c.mac_.reset(EVP_MAC_fetch(nullptr, OSSL_MAC_NAME_HMAC, nullptr));
    if (!c.mac_) return Status::Error(ENOTSUP, "OpenSSL offers no HMAC");
  } else {
    const char* name =
        mode_bit == POHMELFS_CRYPTO_AES_256_GCM ? "AES-256-GCM" : "ChaCha20-Poly1305";
    c.cipher_.reset(EVP_CIPHER_fetch(nullptr, name, nullptr));
    if (!c.cipher_) {
      ERR_clear_error();
      return Status::Error(ENOTSUP, std::string("OpenSSL offers no ") + name);
    }
  }
  return c;
}

ChannelCipher::~ChannelCipher() {
  OPENSSL_cleanse(key_.data(), key_.size());
}
ChannelCipher::ChannelCipher(ChannelCipher&&) noexcept = default;
ChannelCipher& ChannelCipher::operator=(ChannelCipher&&) noexcept = default;

bool ChannelCipher::Encrypts() const {
  return mode_ == POHMELFS_CRYPTO_AES_256_GCM || mode_ == POHMELFS_CRYPTO_CHACHA20_POLY1305;
}

size_t ChannelCipher::TagBytes() const {
  switch (mode_) {
    case POHMELFS_CRYPTO_CRC32C:
      return 4;
    case POHMELFS_CRYPTO_HMAC_SHA256:
      return kSha256Bytes;
    case POHMELFS_CRYPTO_AES_256_GCM:
    case POHMELFS_CRYPTO_CHACHA20_POLY1305:
      return kAeadTagBytes;
    default:
      return 0;
  }
}

size_t ChannelCipher::SegmentCount(size_t plain_len) {
  return plain_len == 0 ? 1 : (plain_len - 1) / kSegmentBytes + 1;
}

size_t ChannelCipher::TagsSize(size_t plain_len) const {
  return SegmentCount(plain_len) * TagBytes();
}

bool ChannelCipher::AeadSegment(bool seal, const Segments& s, size_t index) const {
  // A context per segment: creating one costs far less than 64 KiB of AEAD, keeps Seal and Open
  // free of shared state, and freeing it wipes the key schedule.
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return false;
  std::array<uint8_t, kAeadNonceBytes> nonce;
  PutLe32(nonce.data(), static_cast<uint32_t>(index));
  PutLe64(nonce.data() + 4, s.seq);
  if (EVP_CipherInit_ex2(ctx.get(), cipher_.get(), key_.data(), nonce.data(), seal ? 1 : 0,
                         nullptr) != 1) {
    return false;
  }
  int outl = 0;
  SegmentHeader header = s.Header(index);
  if (EVP_CipherUpdate(ctx.get(), nullptr, &outl, header.data(), header.size()) != 1) return false;
  std::span<const uint8_t> aad = s.Aad(index);
  if (!aad.empty() &&
      EVP_CipherUpdate(ctx.get(), nullptr, &outl, aad.data(), static_cast<int>(aad.size())) != 1) {
    return false;
  }
  uint8_t* out = s.out + s.Offset(index);
  bool ok = ForEachPiece(s.in, s.starts[index], s.Length(index), [&](const uint8_t* p, size_t n) {
    int m = 0;
    // GCM and ChaCha20-Poly1305 are stream modes: all n bytes come out at once.
    if (EVP_CipherUpdate(ctx.get(), out, &m, p, static_cast<int>(n)) != 1 ||
        static_cast<size_t>(m) != n) {
      return false;
    }
    out += n;
    return true;
  });
  if (!ok) return false;
  std::array<uint8_t, kAeadTagBytes> tag;
  if (!seal) {
    std::memcpy(tag.data(), s.tags_in + index * kAeadTagBytes, tag.size());
    if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, tag.size(), tag.data()) != 1) {
      return false;
    }
  }
  std::array<uint8_t, kAeadTagBytes> rest;  // stream modes leave nothing for Final
  if (EVP_CipherFinal_ex(ctx.get(), rest.data(), &outl) != 1 || outl != 0) return false;
  if (seal) {
    return EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, kAeadTagBytes,
                               s.tags_out + index * kAeadTagBytes) == 1;
  }
  return true;
}

bool ChannelCipher::MacSegment(bool seal, const Segments& s, size_t index) const {
  SegmentHeader header = s.Header(index);
  std::span<const uint8_t> aad = s.Aad(index);
  uint8_t* out = s.out != nullptr ? s.out + s.Offset(index) : nullptr;
  // The optional copy of the payload for callers that want a body in every mode.
  auto copy = [&out](const uint8_t* p, size_t n) {
    if (out == nullptr) return;
    if (out != p) std::memcpy(out, p, n);
    out += n;
  };
  std::array<uint8_t, kSha256Bytes> tag{};
  const size_t tag_bytes = TagBytes();
  if (mode_ == POHMELFS_CRYPTO_HMAC_SHA256) {
    std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx(EVP_MAC_CTX_new(mac_.get()));
    if (!ctx) return false;
    char digest[] = "SHA256";
    const OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_init(ctx.get(), key_.data(), key_.size(), params) != 1 ||
        EVP_MAC_update(ctx.get(), header.data(), header.size()) != 1 ||
        (!aad.empty() && EVP_MAC_update(ctx.get(), aad.data(), aad.size()) != 1)) {
      return false;
    }
    bool ok = ForEachPiece(s.in, s.starts[index], s.Length(index), [&](const uint8_t* p, size_t n) {
      copy(p, n);
      return EVP_MAC_update(ctx.get(), p, n) == 1;
    });
    size_t len = 0;
    if (!ok || EVP_MAC_final(ctx.get(), tag.data(), &len, tag.size()) != 1 || len != tag_bytes) {
      return false;
    }
  } else if (mode_ == POHMELFS_CRYPTO_CRC32C) {
    uint32_t crc = Crc32c(header.data(), header.size());
    crc = Crc32c(aad.data(), aad.size(), crc);
    (void)ForEachPiece(s.in, s.starts[index], s.Length(index), [&](const uint8_t* p, size_t n) {
      copy(p, n);
      crc = Crc32c(p, n, crc);
      return true;
    });
    PutLe32(tag.data(), crc);
  } else {  // none: nothing to check, only the optional copy
    (void)ForEachPiece(s.in, s.starts[index], s.Length(index), [&](const uint8_t* p, size_t n) {
      copy(p, n);
      return true;
    });
    return true;
  }
  if (seal) {
    std::memcpy(s.tags_out + index * tag_bytes, tag.data(), tag_bytes);
    return true;
  }
  return ConstantTimeEqual({tag.data(), tag_bytes}, {s.tags_in + index * tag_bytes, tag_bytes});
}

Status ChannelCipher::Run(bool seal, const Segments& s, CryptoPool* pool) const {
  std::atomic<bool> failed{false};
  auto one = [&](size_t i) {
    // After a failure the rest is wasted work: the whole message is rejected anyway.
    if (failed.load(std::memory_order_relaxed)) return;
    bool ok = Encrypts() ? AeadSegment(seal, s, i) : MacSegment(seal, s, i);
    if (!ok) failed.store(true, std::memory_order_relaxed);
  };
  // CRC32C runs at tens of GB/s: waking a pool thread costs more than the segment it would take.
  const bool worth_sharing = Encrypts() || mode_ == POHMELFS_CRYPTO_HMAC_SHA256;
  if (pool != nullptr && s.count > 1 && worth_sharing) {
    pool->ParallelFor(s.count, one);
  } else {
    for (size_t i = 0; i < s.count; ++i) one(i);
  }
  if (!failed.load(std::memory_order_relaxed)) return Status::Ok();
  // A tag mismatch leaves nothing useful in OpenSSL's error queue; drop whatever is there so
  // that it is not blamed on a later, unrelated call of this thread.
  ERR_clear_error();
  if (seal)
    return Status::Error(EIO,
                         std::string("sealing failed in OpenSSL (") + CryptoModeName(mode_) + ")");
  return Status::Error(EBADMSG, kOpenFailed);
}

Status ChannelCipher::Seal(uint64_t seq, std::span<const uint8_t> aad, std::span<const iovec> plain,
                           std::span<uint8_t> body_out, std::span<uint8_t> tags_out,
                           CryptoPool* pool) const {
  size_t total = 0;
  for (const iovec& v : plain) total += v.iov_len;
  if (SegmentCount(total) > std::numeric_limits<uint32_t>::max() ||
      aad.size() > std::numeric_limits<uint32_t>::max()) {
    return Status::Error(EMSGSIZE, "message too large to seal");
  }
  if (tags_out.size() != TagsSize(total)) {
    return Status::Error(EINVAL, "Seal: tags_out is " + std::to_string(tags_out.size()) +
                                     " bytes, expected " + std::to_string(TagsSize(total)));
  }
  if (body_out.size() != total && (Encrypts() || !body_out.empty())) {
    return Status::Error(EINVAL, "Seal: body_out is " + std::to_string(body_out.size()) +
                                     " bytes for a payload of " + std::to_string(total));
  }
  Segments s(seq, aad, plain, total);
  s.out = body_out.empty() ? nullptr : body_out.data();
  s.tags_out = tags_out.data();
  return Run(/*seal=*/true, s, pool);
}

Status ChannelCipher::Open(uint64_t seq, std::span<const uint8_t> aad, std::span<uint8_t> body,
                           std::span<const uint8_t> tags, CryptoPool* pool) const {
  if (tags.size() != TagsSize(body.size())) {
    return Status::Error(EBADMSG, std::string(kOpenFailed) + ": tags are " +
                                      std::to_string(tags.size()) + " bytes, expected " +
                                      std::to_string(TagsSize(body.size())));
  }
  if (SegmentCount(body.size()) > std::numeric_limits<uint32_t>::max() ||
      aad.size() > std::numeric_limits<uint32_t>::max()) {
    return Status::Error(EBADMSG, std::string(kOpenFailed) + ": message too large");
  }
  const iovec whole{body.data(), body.size()};
  Segments s(seq, aad, std::span<const iovec>(&whole, 1), body.size());
  s.out = Encrypts() ? body.data() : nullptr;  // the AEAD modes decrypt in place
  s.tags_in = tags.data();
  Status st = Run(/*seal=*/false, s, pool);
  if (!st.ok() && Encrypts() && !body.empty()) OPENSSL_cleanse(body.data(), body.size());
  return st;
}

}  // namespace pohmelfs::crypto
