// libFuzzer target: the handshake's decoders on both sides. The first byte picks what the rest
// is: a HELLO request as the server reads it, a HELLO reply as the client reads it, or an AUTH
// payload checked against a proof; whatever decodes is then run through the proof and key
// derivation the handshake would do.
#include <cstdint>
#include <cstring>

#include "crypto/handshake_auth.h"
#include "proto/codec.h"

namespace {

pohmelfs::crypto::Key FixedKey() {
  pohmelfs::crypto::Key k;
  for (size_t i = 0; i < k.bytes.size(); i++) k.bytes[i] = static_cast<uint8_t>(i * 7 + 1);
  return k;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const pohmelfs::crypto::Key key = FixedKey();
  std::span<const uint8_t> in(data + 1, size - 1);
  pohmelfs::crypto::AuthTranscript t;
  switch (data[0] % 3) {
    case 0: {
      auto hello = pohmelfs::proto::DecodeHelloRequest(in);
      if (!hello.ok()) return 0;
      if (!hello->auth.empty()) std::memcpy(t.client_nonce.data(), hello->auth.data(), 32);
      t.offered_modes = pohmelfs::proto::from_le(hello->q.crypto_modes);
      t.session = pohmelfs::proto::from_le(hello->q.resume_session);
      t.client_name = std::string(hello->name);
      (void)pohmelfs::crypto::ServerProof(key, t);
      (void)pohmelfs::crypto::DeriveSessionKeys(key, t);
      break;
    }
    case 1: {
      auto reply = pohmelfs::proto::DecodeHelloReply(in);
      if (!reply.ok()) return 0;
      if (reply->auth.size() >= 32) std::memcpy(t.server_nonce.data(), reply->auth.data(), 32);
      t.version = pohmelfs::proto::from_le(reply->rep.version);
      t.features = pohmelfs::proto::from_le(reply->rep.features);
      t.chosen_mode = pohmelfs::proto::from_le(reply->rep.crypto_mode);
      if (reply->auth.size() == 64)
        (void)pohmelfs::crypto::VerifyProof(
            pohmelfs::crypto::ServerProof(key, t),
            std::span(reinterpret_cast<const uint8_t*>(reply->auth.data()) + 32, 32));
      break;
    }
    default:
      // AUTH: any bytes against the proof the server expects; must never match by accident.
      if (pohmelfs::crypto::VerifyProof(pohmelfs::crypto::ClientProof(key, t), in)) {
        // Only the real proof may verify.
        auto real = pohmelfs::crypto::ClientProof(key, t);
        if (in.size() != real.size() || std::memcmp(in.data(), real.data(), real.size()) != 0)
          __builtin_trap();
      }
      break;
  }
  return 0;
}
