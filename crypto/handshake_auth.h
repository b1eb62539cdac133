// Mutual authentication in the handshake and the per-session keys. Both sides prove knowledge
// of the cluster key (keys.h) without sending it, each over everything the handshake agreed,
// so that a changed offer, mode or session id makes the proofs fail (no downgrade):
//
//   1. client -> server  HELLO: client_nonce, offered_modes, client name (and version, features)
//   2. server -> client  reply: server_nonce, chosen_mode, session, ServerProof(key, transcript)
//   3. client: VerifyProof(ServerProof) or drop the connection; then sends ClientProof
//   4. server: VerifyProof(ClientProof) or drop the connection, before serving any request
//   then both: DeriveSessionKeys(key, transcript) and key one ChannelCipher per direction.
//
// The proofs carry distinct labels, so a proof reflected back at its sender never verifies, and
// fresh nonces from both sides make every transcript (and so every proof and key) unique.
// The session keys depend only on the cluster key and public nonces: whoever later learns the
// cluster key can decrypt recorded sessions (no forward secrecy; an ephemeral key exchange
// would add it).
//
// Thread-safety: pure functions and values.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "crypto/kdf.h"
#include "crypto/keys.h"
#include "proto/status.h"

namespace pohmelfs::crypto {

inline constexpr size_t kNonceBytes = 32;
using Nonce = std::array<uint8_t, kNonceBytes>;
using Proof = Sha256Digest;

// What both sides agreed in the handshake. version and features are the negotiated values (as
// in the HELLO reply); offered_modes is the client's whole offer, chosen_mode the server's pick.
struct AuthTranscript {
  Nonce client_nonce{};
  Nonce server_nonce{};
  uint16_t version = 0;
  uint64_t features = 0;
  uint32_t offered_modes = 0;
  uint32_t chosen_mode = 0;
  uint64_t session = 0;
  std::string client_name;
};

// The transcript as bytes, little-endian:
//
//   transcript := client_nonce[32] server_nonce[32] version:le16 features:le64
//                 offered_modes:le32 chosen_mode:le32 session:le64 name_len:le32 name[name_len]
std::vector<uint8_t> SerializeTranscript(const AuthTranscript& t);

// HMAC-SHA256(key, label || transcript) with the labels "pohmelfs v1 server proof" and
// "pohmelfs v1 client proof".
Proof ServerProof(const Key& key, const AuthTranscript& t);
Proof ClientProof(const Key& key, const AuthTranscript& t);

// True when received is exactly the expected proof (length checked, then a constant-time
// comparison). received is the peer's untrusted bytes.
bool VerifyProof(const Proof& expected, std::span<const uint8_t> received);

// One key per direction, wiped on destruction.
struct SessionKeys {
  std::array<uint8_t, 32> client_to_server{};
  std::array<uint8_t, 32> server_to_client{};

  SessionKeys() = default;
  ~SessionKeys();
  SessionKeys(const SessionKeys&) = default;
  SessionKeys& operator=(const SessionKeys&) = default;
  SessionKeys(SessionKeys&&) = default;
  SessionKeys& operator=(SessionKeys&&) = default;
};

// HKDF-SHA256 with ikm = the cluster key, salt = client_nonce || server_nonce and
// info = "pohmelfs v1 session keys" || transcript, expanded to 64 bytes: the first 32 are
// client_to_server, the last 32 server_to_client.
Result<SessionKeys> DeriveSessionKeys(const Key& key, const AuthTranscript& t);

// 32 bytes from OpenSSL's CSPRNG; fails (EIO) only when it cannot be seeded.
Result<Nonce> RandomNonce();

}  // namespace pohmelfs::crypto
