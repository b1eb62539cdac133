// Protection of one direction of a connection once the handshake has chosen a mode and derived
// the session keys (handshake_auth.h). A message payload is cut into segments of kSegmentBytes
// (the last one shorter; an empty payload is one empty segment) and every segment gets a tag:
//
//   mode               tag bytes  payload on the wire
//   none                   0      plaintext
//   crc32c                 4      plaintext (detects accidents only: no key)
//   hmac-sha256           32      plaintext, authenticated
//   aes-256-gcm           16      ciphertext, authenticated
//   chacha20-poly1305     16      ciphertext, authenticated
//
// What each segment's tag covers (all integers little-endian):
//
//   seg-header := seq:le64 total_len:le64 index:le32 count:le32 aad_len:le32
//                 (aad_len is the caller's aad size in segment 0 and 0 in the others)
//   AEAD:    nonce = index:le32 seq:le64; associated data = seg-header [aad if index == 0]
//   HMAC:    tag = HMAC-SHA256(key, seg-header [aad if index == 0] data)
//   CRC32C:  tag = le32 CRC32C(seg-header [aad if index == 0] data)
//
// Every tag thus binds the message's sequence number, its total length and segment count, and
// the segment's place, and segment 0 binds the caller's aad (the message header): a replayed
// (wrong seq), truncated, extended, reordered or spliced message fails Open, as does any changed
// byte of the header, the body or the tags.
//
// Thread-safety: a ChannelCipher is immutable after Create; Seal and Open are const, use their
// own OpenSSL contexts and may run concurrently from any number of threads.
#pragma once

#include <openssl/types.h>
#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "proto/status.h"

namespace pohmelfs::crypto {

class CryptoPool;

class ChannelCipher {
 public:
  // Why 64 KiB: large enough that the per-segment costs (a context, 28 bytes of header, a tag)
  // are lost in the noise, small enough that a 1 MiB write gives a CryptoPool 16 pieces.
  static constexpr size_t kSegmentBytes = 64 * 1024;

  // mode_bit: one POHMELFS_CRYPTO_* bit. key32: this direction's 32-byte session key for
  // hmac-sha256 and the AEAD modes (copied; wiped when the cipher is destroyed), ignored for
  // none and crc32c.
  static Result<ChannelCipher> Create(uint32_t mode_bit, std::span<const uint8_t> key32);

  ~ChannelCipher();
  ChannelCipher(ChannelCipher&&) noexcept;
  ChannelCipher& operator=(ChannelCipher&&) noexcept;
  ChannelCipher(const ChannelCipher&) = delete;
  ChannelCipher& operator=(const ChannelCipher&) = delete;

  uint32_t mode() const { return mode_; }
  // True for the AEAD modes: the body on the wire is ciphertext.
  bool Encrypts() const;
  size_t TagBytes() const;
  // Segments of a payload of plain_len bytes (at least 1).
  static size_t SegmentCount(size_t plain_len);
  // Bytes of tags for a payload of plain_len bytes: SegmentCount * TagBytes.
  size_t TagsSize(size_t plain_len) const;

  // Protects one message. plain: the payload, split anywhere over any number of iovecs
  // (borrowed for the call). aad: bytes to authenticate but not send again here (the message
  // header). body_out: for the AEAD modes receives the ciphertext and must be exactly the
  // payload's size; for the other modes may be empty (the payload is then only authenticated,
  // not copied) or the payload's size (it then receives a copy, so callers can treat every mode
  // alike). tags_out: exactly TagsSize(payload size). pool: when given and the payload has more
  // than one segment, segments are sealed in parallel on it (not for crc32c and none, whose work
  // per segment is less than a pool thread's wake-up).
  // REQUIRES: seq is never used twice with this key (a per-direction message counter): the
  //   AEAD nonce is built from it.
  // REQUIRES: body_out does not overlap plain, except exactly (sealing in place).
  Status Seal(uint64_t seq, std::span<const uint8_t> aad, std::span<const iovec> plain,
              std::span<uint8_t> body_out, std::span<uint8_t> tags_out,
              CryptoPool* pool = nullptr) const;

  // Checks one message sealed with seq and aad, and for the AEAD modes decrypts body in place.
  // seq must come from the receiver's own count of messages, never from the wire: that is what
  // makes a replayed message fail. Returns EBADMSG ("sealed message failed its check") when
  // tags is not TagsSize(body.size()) bytes or any tag does not verify; the AEAD modes then
  // also wipe body, so no unauthenticated plaintext is left behind.
  Status Open(uint64_t seq, std::span<const uint8_t> aad, std::span<uint8_t> body,
              std::span<const uint8_t> tags, CryptoPool* pool = nullptr) const;

 private:
  struct CipherFree {
    void operator()(EVP_CIPHER* c) const;
  };
  struct MacFree {
    void operator()(EVP_MAC* m) const;
  };
  struct Segments;

  ChannelCipher() = default;
  // Seals (seal) or opens segment `index` of s; false when a tag does not verify or OpenSSL
  // fails.
  bool AeadSegment(bool seal, const Segments& s, size_t index) const;
  bool MacSegment(bool seal, const Segments& s, size_t index) const;
  Status Run(bool seal, const Segments& s, CryptoPool* pool) const;

  uint32_t mode_ = 0;
  std::array<uint8_t, 32> key_{};
  std::unique_ptr<EVP_CIPHER, CipherFree> cipher_;  // the AEAD modes
  std::unique_ptr<EVP_MAC, MacFree> mac_;           // hmac-sha256
};

}  // namespace pohmelfs::crypto
