#include "crypto/handshake_auth.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <string_view>

namespace pohmelfs::crypto {
namespace {

// Same length on purpose: label || transcript then parses one way only.
constexpr std::string_view kServerProofLabel = "pohmelfs v1 server proof";
constexpr std::string_view kClientProofLabel = "pohmelfs v1 client proof";
constexpr std::string_view kSessionKeysLabel = "pohmelfs v1 session keys";

template <typename T>
void PutLe(std::vector<uint8_t>& out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

Proof LabelledProof(std::string_view label, const Key& key, const AuthTranscript& t) {
  std::vector<uint8_t> bytes = SerializeTranscript(t);
  return HmacSha256(key.bytes, {AsBytes(label), bytes});
}

}  // namespace

std::vector<uint8_t> SerializeTranscript(const AuthTranscript& t) {
  std::vector<uint8_t> out;
  out.reserve(2 * kNonceBytes + 2 + 8 + 4 + 4 + 8 + 4 + t.client_name.size());
  out.insert(out.end(), t.client_nonce.begin(), t.client_nonce.end());
  out.insert(out.end(), t.server_nonce.begin(), t.server_nonce.end());
  PutLe<uint16_t>(out, t.version);
  PutLe<uint64_t>(out, t.features);
  PutLe<uint32_t>(out, t.offered_modes);
  PutLe<uint32_t>(out, t.chosen_mode);
  PutLe<uint64_t>(out, t.session);
  PutLe<uint32_t>(out, static_cast<uint32_t>(t.client_name.size()));
  out.insert(out.end(), t.client_name.begin(), t.client_name.end());
  return out;
}

Proof ServerProof(const Key& key, const AuthTranscript& t) {
  return LabelledProof(kServerProofLabel, key, t);
}

Proof ClientProof(const Key& key, const AuthTranscript& t) {
  return LabelledProof(kClientProofLabel, key, t);
}

bool VerifyProof(const Proof& expected, std::span<const uint8_t> received) {
  return ConstantTimeEqual(expected, received);
}

SessionKeys::~SessionKeys() {
  OPENSSL_cleanse(client_to_server.data(), client_to_server.size());
  OPENSSL_cleanse(server_to_client.data(), server_to_client.size());
}

Result<SessionKeys> DeriveSessionKeys(const Key& key, const AuthTranscript& t) {
  std::array<uint8_t, 2 * kNonceBytes> salt;
  std::copy(t.client_nonce.begin(), t.client_nonce.end(), salt.begin());
  std::copy(t.server_nonce.begin(), t.server_nonce.end(), salt.begin() + kNonceBytes);
  std::vector<uint8_t> info(kSessionKeysLabel.begin(), kSessionKeysLabel.end());
  std::vector<uint8_t> transcript = SerializeTranscript(t);
  info.insert(info.end(), transcript.begin(), transcript.end());

  std::array<uint8_t, 64> okm;
  Status st = HkdfSha256(key.bytes, salt, info, okm);
  SessionKeys keys;
  if (st.ok()) {
    std::copy(okm.begin(), okm.begin() + 32, keys.client_to_server.begin());
    std::copy(okm.begin() + 32, okm.end(), keys.server_to_client.begin());
  }
  OPENSSL_cleanse(okm.data(), okm.size());
  if (!st.ok()) return st;
  return keys;
}

Result<Nonce> RandomNonce() {
  Nonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1) {
    return Status::Error(EIO, "RAND_bytes failed: no random nonce");
  }
  return n;
}

}  // namespace pohmelfs::crypto
