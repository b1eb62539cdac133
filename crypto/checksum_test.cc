#include "crypto/checksum.h"

#include <gtest/gtest.h>

#include <cstring>

namespace pohmelfs::crypto {
namespace {

TEST(Crc32c, StandardCheckValueAndChaining) {
  const char* s = "123456789";
  EXPECT_EQ(Crc32c(s, 9), 0xE3069283u);  // the published CRC-32C check value
  EXPECT_EQ(Crc32c(s + 4, 5, Crc32c(s, 4)), 0xE3069283u);
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
}

}  // namespace
}  // namespace pohmelfs::crypto
