#include "crypto/rma_seal.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cstring>

#include "crypto/channel_cipher.h"
#include "proto/codec.h"

namespace pohmelfs::crypto {
namespace {

std::vector<uint8_t> Aad(const RmaTransfer& t) {
  std::vector<uint8_t> aad(sizeof(t.oid) + 8 + 4);
  std::memcpy(aad.data(), &t.oid, sizeof(t.oid));
  const uint64_t off = proto::to_le(t.offset);
  const uint32_t size = proto::to_le(t.size);
  std::memcpy(aad.data() + sizeof(t.oid), &off, 8);
  std::memcpy(aad.data() + sizeof(t.oid) + 8, &size, 4);
  return aad;
}

}  // namespace

Result<std::vector<uint8_t>> SealRma(uint32_t mode, const RmaTransfer& t, std::span<uint8_t> buf,
                                     CryptoPool* pool) {
  pohmelfs_rma_seal seal{};
  if (RAND_bytes(seal.key, sizeof(seal.key)) != 1)
    return Status::Error(EIO, "no random key for an RMA transfer");
  auto cipher = ChannelCipher::Create(mode, seal.key);
  if (!cipher.ok()) {
    OPENSSL_cleanse(seal.key, sizeof(seal.key));
    return cipher.status();
  }
  const size_t tags_len = cipher->TagsSize(buf.size());
  seal.mode = proto::to_le(mode);
  seal.tags_len = proto::to_le(static_cast<uint32_t>(tags_len));
  std::vector<uint8_t> out(sizeof(seal) + tags_len);
  std::memcpy(out.data(), &seal, sizeof(seal));
  OPENSSL_cleanse(seal.key, sizeof(seal.key));
  iovec plain{buf.data(), buf.size()};
  std::span<uint8_t> body = cipher->Encrypts() ? buf : std::span<uint8_t>();
  const auto aad = Aad(t);
  // The key is used once, so seq 0 never repeats under it.
  Status s = cipher->Seal(0, aad, std::span<const iovec>(&plain, 1), body,
                          std::span<uint8_t>(out.data() + sizeof(seal), tags_len), pool);
  if (!s.ok()) return s;
  return out;
}

Status OpenRma(uint32_t expected_mode, const RmaTransfer& t, std::span<uint8_t> buf,
               std::string_view seal_bytes, CryptoPool* pool) {
  pohmelfs_rma_seal seal;
  if (seal_bytes.size() < sizeof(seal))
    return Status::Error(EBADMSG, "RMA seal shorter than its struct");
  std::memcpy(&seal, seal_bytes.data(), sizeof(seal));
  const uint32_t mode = proto::from_le(seal.mode);
  if (expected_mode != 0 && mode != expected_mode) {
    OPENSSL_cleanse(seal.key, sizeof(seal.key));
    return Status::Error(EBADMSG, "RMA data sealed in another mode than the channel's");
  }
  auto cipher = ChannelCipher::Create(mode, seal.key);
  OPENSSL_cleanse(seal.key, sizeof(seal.key));
  if (!cipher.ok()) return Status::Error(EBADMSG, "RMA seal of an unknown mode");
  std::string_view tags = seal_bytes.substr(sizeof(seal));
  if (proto::from_le(seal.tags_len) != tags.size())
    return Status::Error(EBADMSG, "RMA seal with a wrong tags length");
  const auto aad = Aad(t);
  return cipher->Open(0, aad, buf,
                      std::span(reinterpret_cast<const uint8_t*>(tags.data()), tags.size()), pool);
}

}  // namespace pohmelfs::crypto
