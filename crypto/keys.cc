#include "crypto/keys.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "proto/unique_fd.h"

namespace pohmelfs::crypto {
namespace {

constexpr std::string_view kKeyPrefix = "pohmelfs-key-v1 ";
constexpr size_t kKeyFileBytes = kKeyPrefix.size() + 2 * kKeyBytes + 1;  // with the newline

struct ModeName {
  uint32_t bit;
  const char* name;
};
constexpr ModeName kModeNames[] = {
    {POHMELFS_CRYPTO_NONE, "none"},
    {POHMELFS_CRYPTO_CRC32C, "crc32c"},
    {POHMELFS_CRYPTO_HMAC_SHA256, "hmac-sha256"},
    {POHMELFS_CRYPTO_AES_256_GCM, "aes-256-gcm"},
    {POHMELFS_CRYPTO_CHACHA20_POLY1305, "chacha20-poly1305"},
};

// Wipes a buffer of secrets when it goes out of scope, on every return path.
template <size_t N>
struct SecretBuffer {
  std::array<char, N> data{};
  SecretBuffer() = default;
  ~SecretBuffer() { OPENSSL_cleanse(data.data(), data.size()); }
  SecretBuffer(const SecretBuffer&) = delete;
  SecretBuffer& operator=(const SecretBuffer&) = delete;
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Status WriteAll(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = ::write(fd, data, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("write");
    }
    data += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

// The directory holding path, so that the new entry can be made durable too.
std::string DirectoryOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status WriteKey(int fd, const std::string& path) {
  SecretBuffer<kKeyBytes> key;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data.data()), kKeyBytes) != 1) {
    return Status::Error(EIO, "RAND_bytes failed: no random key for " + path);
  }
  SecretBuffer<kKeyFileBytes> text;
  static constexpr char kHex[] = "0123456789abcdef";
  std::memcpy(text.data.data(), kKeyPrefix.data(), kKeyPrefix.size());
  char* out = text.data.data() + kKeyPrefix.size();
  for (size_t i = 0; i < kKeyBytes; ++i) {
    auto b = static_cast<uint8_t>(key.data[i]);
    *out++ = kHex[b >> 4];
    *out++ = kHex[b & 0xf];
  }
  *out = '\n';
  // The umask may have narrowed the mode further (e.g. 0400); make it exactly 0600.
  if (::fchmod(fd, 0600) != 0) return Status::FromErrno(("fchmod " + path).c_str());
  if (Status st = WriteAll(fd, text.data.data(), text.data.size()); !st.ok()) {
    return Status::Error(st.code(), path + ": " + st.reason());
  }
  if (::fsync(fd) != 0) return Status::FromErrno(("fsync " + path).c_str());
  return Status::Ok();
}

}  // namespace

Key::~Key() {
  OPENSSL_cleanse(bytes.data(), bytes.size());
}

Status GenerateKeyFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    if (errno == EEXIST) {
      return Status::Error(EEXIST, path +
                                       " already exists; refusing to overwrite a key file "
                                       "(remove it first if a new cluster key is really meant)");
    }
    return Status::FromErrno(("create key file " + path).c_str());
  }
  if (Status st = WriteKey(fd.get(), path); !st.ok()) {
    // Leave no half-written key behind, so that a retry is not refused with EEXIST.
    fd.reset();
    ::unlink(path.c_str());
    return st;
  }
  fd.reset();
  // Make the directory entry durable as well as the contents.
  std::string dir = DirectoryOf(path);
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd.valid()) return Status::FromErrno(("open directory " + dir).c_str());
  if (::fsync(dfd.get()) != 0) return Status::FromErrno(("fsync directory " + dir).c_str());
  return Status::Ok();
}

Result<Key> LoadKeyFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(("open key file " + path).c_str());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(("stat key file " + path).c_str());
  if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, path + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Status::Error(EPERM, path + " has mode " + mode +
                                    ": a key file must not be readable or writable by group or "
                                    "others (chmod 600 " +
                                    path + ")");
  }
  // Read one byte more than a valid file holds, to tell "too long" from "exact".
  SecretBuffer<kKeyFileBytes + 1> text;
  size_t len = 0;
  while (len < text.data.size()) {
    ssize_t n = ::read(fd.get(), text.data.data() + len, text.data.size() - len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(("read key file " + path).c_str());
    }
    if (n == 0) break;
    len += static_cast<size_t>(n);
  }
  const Status bad_format = Status::Error(
      EINVAL, path +
                  " is not a pohmelfs key file (expected one line \"pohmelfs-key-v1 \" and 64 "
                  "hex digits)");
  std::string_view view(text.data.data(), len);
  if (!view.empty() && view.back() == '\n') view.remove_suffix(1);
  if (view.size() != kKeyFileBytes - 1 || view.substr(0, kKeyPrefix.size()) != kKeyPrefix) {
    return bad_format;
  }
  view.remove_prefix(kKeyPrefix.size());
  Key key;
  for (size_t i = 0; i < kKeyBytes; ++i) {
    int hi = HexValue(view[2 * i]);
    int lo = HexValue(view[2 * i + 1]);
    if (hi < 0 || lo < 0) return bad_format;
    key.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return key;
}

Result<uint32_t> ParseCryptoMode(std::string_view name) {
  for (const ModeName& m : kModeNames) {
    if (name == m.name) return m.bit;
  }
  return Status::Error(EINVAL, "unknown crypto mode \"" + std::string(name) +
                                   "\" (none, crc32c, hmac-sha256, aes-256-gcm, "
                                   "chacha20-poly1305)");
}

const char* CryptoModeName(uint32_t bit) {
  for (const ModeName& m : kModeNames) {
    if (bit == m.bit) return m.name;
  }
  return "unknown";
}

bool ModeNeedsKey(uint32_t bit) {
  return bit == POHMELFS_CRYPTO_HMAC_SHA256 || bit == POHMELFS_CRYPTO_AES_256_GCM ||
         bit == POHMELFS_CRYPTO_CHACHA20_POLY1305;
}

}  // namespace pohmelfs::crypto
