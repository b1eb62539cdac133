#include "transport/uri.h"

#include <gtest/gtest.h>

namespace pohmelfs::transport {
namespace {

TEST(Uri, ParsesIpv4Ipv6AndNames) {
  auto a = ParseUri("tcp://127.0.0.1:7000");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->scheme, "tcp");
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 7000);
  auto b = ParseUri("tcp://[::1]:0");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->port, 0);
  EXPECT_EQ(b->ToString(), "tcp://[::1]:0");
  auto c = ParseUri("ofi+tcp://node7:9000");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->scheme, "ofi+tcp");
}

TEST(Uri, RejectsMalformed) {
  for (const char* bad : {"", "127.0.0.1:7000", "tcp://", "tcp://host", "tcp://host:", "tcp://:7",
                          "tcp://host:99999", "tcp://host:7x", "tcp://[::1:7", "tcp://::1:7"}) {
    EXPECT_FALSE(ParseUri(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace pohmelfs::transport
