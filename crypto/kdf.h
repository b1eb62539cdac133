// HMAC-SHA256 (RFC 2104), HKDF-SHA256 (RFC 5869) and a constant-time comparison, through
// OpenSSL 3 (EVP_MAC "HMAC", EVP_KDF "HKDF", CRYPTO_memcmp). The building blocks of the
// handshake proofs, the session keys and the hmac-sha256 channel mode. Thread-safe (pure
// functions; every call uses its own OpenSSL context).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string_view>

#include "proto/status.h"

namespace pohmelfs::crypto {

inline constexpr size_t kSha256Bytes = 32;
using Sha256Digest = std::array<uint8_t, kSha256Bytes>;

// HMAC-SHA256 of the concatenation of parts under key (any length, may be empty). Writes the
// digest to out. Fails only when OpenSSL cannot allocate its context.
Status HmacSha256(std::span<const uint8_t> key,
                  std::initializer_list<std::span<const uint8_t>> parts,
                  std::span<uint8_t, kSha256Bytes> out);

// The same, returning the digest. An OpenSSL failure here can only be an allocation failure;
// like a failed operator new it aborts the process (it never returns a predictable digest).
Sha256Digest HmacSha256(std::span<const uint8_t> key,
                        std::initializer_list<std::span<const uint8_t>> parts);

// HKDF-SHA256 extract-and-expand: fills out (1 to 255 * 32 bytes) from the input key material
// ikm (not empty), salt (empty means HashLen zero bytes, as in RFC 5869) and info.
Status HkdfSha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                  std::span<const uint8_t> info, std::span<uint8_t> out);

// True when a and b have the same length and the same bytes. The time taken depends on the
// length only, never on where the bytes differ (for comparing MACs).
bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b);

// Views of a string or byte array as bytes, for the functions above.
inline std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace pohmelfs::crypto
