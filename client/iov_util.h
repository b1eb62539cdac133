// Reading a request that is a list of iovecs without flattening it.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

namespace pohmelfs::client {

// Copies up to n bytes of the payload starting at offset; returns how many there were.
inline size_t CopyAt(std::span<const iovec> payload, size_t offset, void* dst, size_t n) {
  size_t done = 0;
  for (const auto& v : payload) {
    if (done == n) break;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    size_t k = std::min(n - done, v.iov_len - offset);
    std::memcpy(static_cast<uint8_t*>(dst) + done, static_cast<const uint8_t*>(v.iov_base) + offset,
                k);
    done += k;
    offset = 0;
  }
  return done;
}

inline size_t TotalBytes(std::span<const iovec> payload) {
  size_t n = 0;
  for (const auto& v : payload) n += v.iov_len;
  return n;
}

}  // namespace pohmelfs::client
