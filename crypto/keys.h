// The cluster key and the names of the channel protection modes. Every server and client of a
// cluster shares one 32-byte key, kept in a small text file readable by its owner only:
//
//   key-file := "pohmelfs-key-v1 " hex64 "\n"      (hex64: 64 lowercase hex digits = 32 bytes)
//
// The key never travels on the wire: the handshake proves knowledge of it (handshake_auth.h)
// and derives per-session keys from it. Thread-safety: free functions and values, no shared
// state.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "proto/pohmelfs_proto.h"
#include "proto/status.h"

namespace pohmelfs::crypto {

inline constexpr size_t kKeyBytes = 32;

// A secret key. The destructor wipes the bytes (OPENSSL_cleanse, which the compiler cannot
// drop). A moved-from or copied-from Key still holds its bytes until it is destroyed.
struct Key {
  std::array<uint8_t, kKeyBytes> bytes{};

  Key() = default;
  ~Key();
  Key(const Key&) = default;
  Key& operator=(const Key&) = default;
  Key(Key&&) = default;
  Key& operator=(Key&&) = default;
};

// Writes a new random key to path (mode 0600, O_EXCL, O_NOFOLLOW) and fsyncs it and its
// directory. Refuses with EEXIST when path exists (a cluster key is never overwritten by
// accident); on any other failure removes what it created.
Status GenerateKeyFile(const std::string& path);

// Reads a key written by GenerateKeyFile. Refuses (EPERM) a file that group or others may read
// or write, (EINVAL) anything that is not exactly the format above (a missing final newline and
// upper-case hex digits are tolerated), and symlinks (O_NOFOLLOW).
Result<Key> LoadKeyFile(const std::string& path);

// Every mode bit this build knows.
inline constexpr uint32_t kAllCryptoModes =
    POHMELFS_CRYPTO_NONE | POHMELFS_CRYPTO_CRC32C | POHMELFS_CRYPTO_HMAC_SHA256 |
    POHMELFS_CRYPTO_AES_256_GCM | POHMELFS_CRYPTO_CHACHA20_POLY1305;

// "none", "crc32c", "hmac-sha256", "aes-256-gcm", "chacha20-poly1305" -> the POHMELFS_CRYPTO_*
// bit; anything else is EINVAL with the list of accepted names.
Result<uint32_t> ParseCryptoMode(std::string_view name);
// The name ParseCryptoMode accepts for a single mode bit, "unknown" otherwise.
const char* CryptoModeName(uint32_t bit);
// True for the modes keyed by the cluster key (hmac-sha256 and the two AEAD modes).
bool ModeNeedsKey(uint32_t bit);

}  // namespace pohmelfs::crypto
