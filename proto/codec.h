// Bounds-checked encoding and decoding of the wire format in pohmelfs_proto.h. Only this
// library touches raw message bytes.
//
// Grammar (all integers little-endian):
//   message  := pohmelfs_hdr payload[hdr.length]
//   request  := struct(opcode) tail*          tail := bytes[len] for each *_len field, in order
//   reply    := (hdr.status == 0) ? struct(opcode reply) tail* : empty
//   batch    := pohmelfs_batch_req (pohmelfs_cmd body pad8)[count]
//
// Reader never reads past its end: every get returns false (and poisons the reader) when the
// buffer is short, and names are validated as single path components.
// Thread-safety: Reader and Writer are single-threaded values.
#pragma once

#include <endian.h>
#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "proto/pohmelfs_proto.h"
#include "proto/status.h"

namespace pohmelfs::proto {

// Host <-> little-endian for any unsigned integer type (the wire's __le types included).
template <typename T>
constexpr T to_le(T v) {
  static_assert(std::is_unsigned_v<T>);
  if constexpr (sizeof(T) == 1) return v;
  if constexpr (sizeof(T) == 2) return static_cast<T>(htole16(v));
  if constexpr (sizeof(T) == 4) return static_cast<T>(htole32(v));
  if constexpr (sizeof(T) == 8) return static_cast<T>(htole64(v));
}
template <typename T>
constexpr T from_le(T v) {
  return to_le(v);  // the same swap both ways
}

// A 128-bit object id. All zero is "no object"; Root() is the export's root directory.
struct Oid {
  std::array<uint8_t, 16> b{};

  static Oid Root();
  static Oid Random();  // 128 random bits from OpenSSL's DRBG
  static Oid FromWire(const pohmelfs_oid& w);
  static bool FromHex(std::string_view hex, Oid* out);
  pohmelfs_oid ToWire() const;
  std::string Hex() const;
  bool IsZero() const;
  bool operator==(const Oid&) const = default;
  bool operator<(const Oid& o) const { return b < o.b; }  // for ordered sets
};

struct OidHash {
  size_t operator()(const Oid& o) const {
    uint64_t a, c;
    std::memcpy(&a, o.b.data(), 8);
    std::memcpy(&c, o.b.data() + 8, 8);
    return a ^ (c * 0x9e3779b97f4a7c15ull);
  }
};

struct Header {
  uint16_t version = POHMELFS_PROTO_VERSION_MAX;
  uint16_t opcode = 0;
  uint32_t flags = 0;
  uint32_t length = 0;
  uint64_t session = 0;
  uint64_t trans = 0;
  uint32_t status = 0;
  uint32_t credits = 0;

  bool is_reply() const { return (flags & POHMELFS_FLAG_REPLY) != 0; }
};

void EncodeHeader(const Header& h, pohmelfs_hdr* out);
// Checks magic, version range and length <= max_payload.
Result<Header> DecodeHeader(const pohmelfs_hdr& in, uint32_t max_payload);

const char* OpcodeName(uint16_t opcode);
// Opcodes that change state and so are recorded for resend deduplication.
bool IsMutating(uint16_t opcode);

// Appends to a caller-owned buffer.
class Writer {
 public:
  explicit Writer(std::vector<uint8_t>* buf) : buf_(buf) {}
  template <typename T>
  void Put(const T& s) {
    Bytes(&s, sizeof(T));
  }
  void Bytes(const void* p, size_t n) {
    auto* c = static_cast<const uint8_t*>(p);
    buf_->insert(buf_->end(), c, c + n);
  }
  void Bytes(std::string_view s) { Bytes(s.data(), s.size()); }
  // Overwrites sizeof(T) bytes at offset. REQUIRES: offset + sizeof(T) <= size().
  template <typename T>
  void PatchAt(size_t offset, const T& s) {
    std::memcpy(buf_->data() + offset, &s, sizeof(T));
  }
  void Pad8() { buf_->resize(POHMELFS_PAD8(buf_->size()), 0); }
  // Appends n bytes for the caller to fill through At(); Truncate drops what was not filled.
  void Grow(size_t n) { buf_->resize(buf_->size() + n); }
  uint8_t* At(size_t offset) { return buf_->data() + offset; }
  void Truncate(size_t size) { buf_->resize(size); }
  size_t size() const { return buf_->size(); }

 private:
  std::vector<uint8_t>* buf_;
};

// Reads from a borrowed buffer that must outlive the Reader.
class Reader {
 public:
  Reader(const void* p, size_t n) : p_(static_cast<const uint8_t*>(p)), left_(n) {}
  explicit Reader(std::span<const uint8_t> s) : Reader(s.data(), s.size()) {}
  size_t left() const { return left_; }

  template <typename T>
  [[nodiscard]] bool Get(T* out) {
    if (!ok_ || left_ < sizeof(T)) return Fail();
    std::memcpy(out, p_, sizeof(T));
    Advance(sizeof(T));
    return true;
  }
  [[nodiscard]] bool Bytes(size_t n, std::string_view* out) {
    if (!ok_ || left_ < n) return Fail();
    *out = std::string_view(reinterpret_cast<const char*>(p_), n);
    Advance(n);
    return true;
  }
  [[nodiscard]] bool Skip(size_t n) {
    if (!ok_ || left_ < n) return Fail();
    Advance(n);
    return true;
  }
  size_t remaining() const { return left_; }
  size_t consumed() const { return used_; }
  bool ok() const { return ok_; }

 private:
  bool Fail() {
    ok_ = false;
    return false;
  }
  void Advance(size_t n) {
    p_ += n;
    left_ -= n;
    used_ += n;
  }
  const uint8_t* p_;
  size_t left_;
  size_t used_ = 0;
  bool ok_ = true;
};

// Reads a single path component of wire length len: 1..POHMELFS_NAME_MAX bytes, no '/', no
// NUL, not "." or "..". EINVAL for a short buffer or bad bytes, ENAMETOOLONG for length.
Status GetName(Reader* r, uint32_t len, std::string* out);
// Reads a relative path (MKPATH, symlink target): 1..POHMELFS_PATH_MAX bytes, no NUL.
Status GetPath(Reader* r, uint32_t len, std::string* out);

// HELLO as the server reads it: the struct, auth_len bytes of authentication data (empty or a
// 32-byte pohmelfs_hello_auth) and name_len bytes of client name (at most 256). EPROTO when
// malformed. auth and name point into the payload.
struct HelloRequest {
  pohmelfs_hello_req q;
  std::string_view auth;
  std::string_view name;
};
Result<HelloRequest> DecodeHelloRequest(std::span<const uint8_t> payload);

// A HELLO (or AUTH) reply as the client reads it: the struct and auth_len bytes of
// authentication data (empty, 32 or 64 bytes: pohmelfs_hello_rep_auth with or without the
// proof). EPROTO when malformed.
struct HelloReply {
  pohmelfs_hello_rep rep;
  std::string_view auth;
};
Result<HelloReply> DecodeHelloReply(std::span<const uint8_t> payload);

void FillAttr(const struct stat& st, const Oid& oid, uint64_t version, pohmelfs_attr* out);
void AttrToStat(const pohmelfs_attr& a, struct stat* st);

}  // namespace pohmelfs::proto
