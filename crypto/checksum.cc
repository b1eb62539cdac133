#include "crypto/checksum.h"

#include <isa-l/crc.h>

namespace pohmelfs::crypto {

uint32_t Crc32c(const void* data, size_t len, uint32_t seed) {
  // ISA-L's iSCSI CRC takes and returns the inverted register; invert so that chaining
  // Crc32c(b, Crc32c(a)) equals Crc32c(a+b) and the value matches the standard check.
  return ~crc32_iscsi(static_cast<unsigned char*>(const_cast<void*>(data)), static_cast<int>(len),
                      ~seed);
}

}  // namespace pohmelfs::crypto
