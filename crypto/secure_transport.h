// Channel protection as a transport decorator: SecureTransport wraps any backend (tcp, ofi,
// verbs) and hands the layer above SecureConnections, which send and receive in the clear until
// the handshake switches them to a ChannelCipher (docs/security.md):
//
//   - ArmReceive(cipher): messages flagged POHMELFS_FLAG_SEALED are opened from now on, each
//     with the next receive sequence number; plain ones still pass (the handshake's own).
//   - RequireSealed(): from now on a plain message closes the connection.
//   - StartSending(cipher): every later message is sealed with the next send sequence number.
//
// Sequence numbers are counted by each side and never sent, so a replayed, reordered, dropped
// or injected message fails its check; any failure closes the connection (nothing of it reaches
// the layer above). A sealed message's header travels in the clear and is authenticated (it is
// the AEAD's associated data); its payload is `body || tags` (channel_cipher.h).
//
// Thread-safety: as transport::Connection. Sends from several threads are sealed and sent under
// one lock, so sequence numbers reach the wire in order; large payloads are sealed and opened
// in parallel on the CryptoPool when one is given.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "crypto/channel_cipher.h"
#include "crypto/crypto_pool.h"
#include "transport/transport.h"

namespace pohmelfs::crypto {

class SecureConnection final : public transport::Connection {
 public:
  // max_payload: the largest plaintext payload accepted (the inner connection is given room
  // for the tags once a receive cipher is armed).
  SecureConnection(transport::ConnectionPtr inner, CryptoPool* pool, uint32_t max_payload);

  Status Send(const proto::Header& hdr, std::span<const iovec> payload) override;
  void PauseReceive() override { inner_->PauseReceive(); }
  void ResumeReceive() override { inner_->ResumeReceive(); }
  void Close(const Status& why) override { inner_->Close(why); }
  bool IsOpen() const override { return inner_->IsOpen(); }
  const std::string& Peer() const override { return inner_->Peer(); }
  void SetMaxPayload(uint32_t bytes) override;
  transport::Rma* rma() override { return inner_->rma(); }

  void ArmReceive(ChannelCipher cipher);
  void RequireSealed() { require_sealed_ = true; }
  // Whether a sealed message has been received (plain ones are refused from then on).
  bool sealed_seen() const { return require_sealed_.load(); }
  void StartSending(ChannelCipher cipher);
  // The mode messages are sealed with in each direction (POHMELFS_CRYPTO_NONE before).
  uint32_t send_mode() const;
  uint32_t receive_mode() const;

  // Receive path (the transport's thread): opens m in place if sealed. An error means the
  // message must be dropped and the connection closed.
  Status Open(transport::Message& m);

  const transport::ConnectionPtr& inner() const { return inner_; }

 private:
  const transport::ConnectionPtr inner_;
  CryptoPool* const pool_;
  std::atomic<uint32_t> max_payload_;

  mutable std::mutex send_mu_;
  std::atomic<bool> sealing_{false};   // set once by StartSending: sends go through send_
  std::optional<ChannelCipher> send_;  // GUARDED_BY(send_mu_)
  uint64_t send_seq_ = 0;              // GUARDED_BY(send_mu_)

  // Receive state: set by ArmReceive, which the handshake calls from the receive thread (the
  // server) or before the peer can send anything sealed (the client); the mutex only orders it.
  mutable std::mutex recv_mu_;
  std::optional<ChannelCipher> recv_;  // GUARDED_BY(recv_mu_)
  uint64_t recv_seq_ = 0;              // GUARDED_BY(recv_mu_)
  std::atomic<bool> require_sealed_{false};
};

// One message sealed for the wire: the header to send (SEALED set, length = body + tags), the
// ciphertext (the AEAD modes; empty for the others, whose plaintext is sent as it is) and the
// tags. The wire payload is body (or the plaintext) followed by tags.
struct SealedParts {
  proto::Header hdr;
  // Not zero-filled before the cipher writes it (a 1 MiB memset per message showed up).
  std::unique_ptr<uint8_t[]> body;
  size_t body_len = 0;
  std::vector<uint8_t> tags;
};
Result<SealedParts> SealMessage(const ChannelCipher& cipher, uint64_t seq, const proto::Header& hdr,
                                std::span<const iovec> payload, CryptoPool* pool = nullptr);

// Opens a received sealed message in place: its payload becomes the plaintext and SEALED is
// cleared. EBADMSG when it fails its check (any changed byte, a wrong seq, an impossible
// length), EMSGSIZE when the plaintext is larger than max_payload.
Status OpenSealed(const ChannelCipher& cipher, uint64_t seq, uint32_t max_payload,
                  transport::Message* m, CryptoPool* pool = nullptr);

// Bytes a sealed payload of up to max_payload bytes adds (the tags of the widest mode).
uint32_t SealOverhead(uint32_t max_payload);

// Creates the backend for scheme, wrapped so that every
// connection is a SecureConnection. pool: borrowed, may be null; must outlive the transport.
Result<std::unique_ptr<transport::Transport>> CreateSecureTransport(
    const std::string& scheme, transport::TransportOptions options, CryptoPool* pool);

// The SecureConnection behind a connection of a SecureTransport.
inline SecureConnection* AsSecure(const transport::ConnectionPtr& c) {
  return static_cast<SecureConnection*>(c.get());
}

}  // namespace pohmelfs::crypto
