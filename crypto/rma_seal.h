// Protection of data that moves by RMA (READ_RMA, WRITE_RMA) on a protected channel. The
// bytes in a registered buffer never pass through the channel's cipher, so each transfer is
// sealed with a fresh random key of its own, in the channel's mode; the key and the tags travel
// in the request or reply that names the buffer (pohmelfs_rma_seal), which the channel seals.
// A fresh key per transfer is what lets one sealed buffer be pulled by every replica of a
// write, each over its own channel with its own session keys. The associated data binds the
// transfer (object, offset, size), so data cannot be moved to another file or offset.
//
// Thread-safety: free functions; pool as in ChannelCipher.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "crypto/crypto_pool.h"
#include "proto/pohmelfs_proto.h"
#include "proto/status.h"

namespace pohmelfs::crypto {

// The associated data of one transfer.
struct RmaTransfer {
  pohmelfs_oid oid;
  uint64_t offset = 0;
  uint32_t size = 0;
};

// Seals buf (the transfer's bytes, encrypted in place for the AEAD modes) with a new key in
// mode, and returns the pohmelfs_rma_seal with its tags, to send after the request or reply.
Result<std::vector<uint8_t>> SealRma(uint32_t mode, const RmaTransfer& t, std::span<uint8_t> buf,
                                     CryptoPool* pool = nullptr);

// Checks (and for the AEAD modes decrypts in place) buf against seal, the bytes that followed
// the request or reply. expected_mode: the mode the seal must use (the channel's), or 0 to
// take the seal's own (on an unprotected channel, whose client chose to seal). EBADMSG when
// the seal is malformed or the data fails its check.
Status OpenRma(uint32_t expected_mode, const RmaTransfer& t, std::span<uint8_t> buf,
               std::string_view seal, CryptoPool* pool = nullptr);

}  // namespace pohmelfs::crypto
