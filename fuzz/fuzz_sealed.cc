// libFuzzer target: opening sealed messages (crypto/secure_transport.h). The first byte picks
// the channel mode, the next 40 bytes are the wire header, the rest the payload (body || tags)
// as an attacker would send them: OpenSealed must refuse anything it did not seal. Then the
// same payload is sealed and opened again, which must round-trip.
#include <cstdint>
#include <cstring>

#include "crypto/secure_transport.h"
#include "proto/codec.h"

namespace {

constexpr uint32_t kModes[] = {POHMELFS_CRYPTO_NONE, POHMELFS_CRYPTO_CRC32C,
                               POHMELFS_CRYPTO_HMAC_SHA256, POHMELFS_CRYPTO_AES_256_GCM,
                               POHMELFS_CRYPTO_CHACHA20_POLY1305};

const pohmelfs::crypto::ChannelCipher& Cipher(size_t i) {
  static const auto ciphers = [] {
    std::array<uint8_t, 32> key{};
    for (size_t k = 0; k < key.size(); k++) key[k] = static_cast<uint8_t>(k + 3);
    std::vector<pohmelfs::crypto::ChannelCipher> v;
    for (uint32_t m : kModes) {
      auto c = pohmelfs::crypto::ChannelCipher::Create(m, key);
      if (!c.ok()) __builtin_trap();
      v.push_back(std::move(*c));
    }
    return v;
  }();
  return ciphers[i];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 + sizeof(pohmelfs_hdr)) return 0;
  const auto& cipher = Cipher(data[0] % std::size(kModes));
  pohmelfs_hdr wire;
  std::memcpy(&wire, data + 1, sizeof(wire));
  const size_t payload = size - 1 - sizeof(wire);
  wire.length = pohmelfs::proto::to_le(static_cast<uint32_t>(payload));
  auto hdr = pohmelfs::proto::DecodeHeader(wire, 1u << 22);
  if (!hdr.ok()) return 0;
  pohmelfs::transport::Message m;
  m.hdr = *hdr;
  m.hdr.flags |= POHMELFS_FLAG_SEALED;
  m.payload.assign(data + 1 + sizeof(wire), data + size);
  const std::vector<uint8_t> plain = m.payload;
  pohmelfs::Status opened = pohmelfs::crypto::OpenSealed(cipher, 0, POHMELFS_PAYLOAD_MAX, &m);
  // Forged input opens only for modes without a secret (none, and crc32c by luck of the CRC).
  if (opened.ok() && cipher.mode() != POHMELFS_CRYPTO_NONE &&
      cipher.mode() != POHMELFS_CRYPTO_CRC32C)
    __builtin_trap();

  // Round trip: seal `plain` as the sender would, then open it.
  if (plain.size() > POHMELFS_PAYLOAD_MAX) return 0;
  iovec v{const_cast<uint8_t*>(plain.data()), plain.size()};
  auto sealed = pohmelfs::crypto::SealMessage(cipher, 7, *hdr, std::span<const iovec>(&v, 1));
  if (!sealed.ok()) __builtin_trap();
  pohmelfs::transport::Message s;
  s.hdr = sealed->hdr;
  s.payload = cipher.Encrypts()
                  ? std::vector<uint8_t>(sealed->body.get(), sealed->body.get() + sealed->body_len)
                  : plain;
  s.payload.insert(s.payload.end(), sealed->tags.begin(), sealed->tags.end());
  if (!pohmelfs::crypto::OpenSealed(cipher, 7, POHMELFS_PAYLOAD_MAX, &s).ok() || s.payload != plain)
    __builtin_trap();
  return 0;
}
