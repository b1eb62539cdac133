// Checksums for data integrity: CRC32C (Castagnoli) through ISA-L, which uses the SSE4.2/
// PCLMUL instructions where the CPU has them. Used by the bench's data check now and by the
// integrity channel mode later. Thread-safe (pure functions).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pohmelfs::crypto {

// CRC32C of data, continuing from seed (0 to start).
uint32_t Crc32c(const void* data, size_t len, uint32_t seed = 0);

}  // namespace pohmelfs::crypto
