#include "rdma-server/allow_list.h"

#include <gtest/gtest.h>

namespace pohmelfs::server {
namespace {

AllowList Rules(std::initializer_list<const char*> texts) {
  std::vector<AllowRule> rules;
  for (const char* t : texts) {
    auto r = AllowRule::Parse(t);
    EXPECT_TRUE(r.ok()) << t << ": " << r.status().ToString();
    if (r.ok()) rules.push_back(*r);
  }
  return AllowList(std::move(rules));
}

TEST(AllowList, MostSpecificRuleWins) {
  auto list = Rules({"10.0.0.0/8=ro", "10.1.0.0/16=rw", "10.1.2.3=ro"});
  EXPECT_EQ(list.Match("tcp://10.9.9.9:1234"), Access::kReadOnly);
  EXPECT_EQ(list.Match("tcp://10.1.9.9:1234"), Access::kReadWrite);
  EXPECT_EQ(list.Match("10.1.2.3"), Access::kReadOnly);
  EXPECT_EQ(list.RuleFor("10.1.2.3"), "10.1.2.3=ro");
  EXPECT_EQ(list.Match("tcp://11.0.0.1:1"), std::nullopt);
  EXPECT_EQ(list.Match("not an address"), std::nullopt);
}

TEST(AllowList, Ipv6AndMappedIpv4) {
  auto list = Rules({"fd00::/8=rw", "192.168.0.0/24=ro"});
  EXPECT_EQ(list.Match("tcp://[fd12::1]:7000"), Access::kReadWrite);
  EXPECT_EQ(list.Match("ofi+tcp://[fe80::1]:7000"), std::nullopt);
  EXPECT_EQ(list.Match("tcp://[::ffff:192.168.0.7]:7000"), Access::kReadOnly);
  EXPECT_EQ(list.Match("tcp://192.168.1.7:7000"), std::nullopt);
}

TEST(AllowList, SharedMemoryPeersAreLoopback) {
  auto local = Rules({"127.0.0.0/8=ro"});
  EXPECT_EQ(local.Match("ofi+shm:fi_shm://5291:0:0"), Access::kReadOnly);
  auto remote = Rules({"10.0.0.0/8=rw"});
  EXPECT_EQ(remote.Match("ofi+shm:fi_shm://5291:0:0"), std::nullopt);
  EXPECT_EQ(remote.Match("ofi+shm://10.0.0.1:7000"), std::nullopt);
}

TEST(AllowList, HostBitsAreClearedAndTiesPreferRw) {
  auto list = Rules({"10.1.2.3/8=ro", "10.0.0.0/8=rw"});
  EXPECT_EQ(list.Match("10.200.0.1"), Access::kReadWrite);
  auto zero = Rules({"0.0.0.0/0=ro"});
  EXPECT_EQ(zero.Match("1.2.3.4"), Access::kReadOnly);
}

TEST(AllowList, BadRulesAreClearErrors) {
  for (const char* bad : {"10.0.0.0/8", "10.0.0.0/8=rx", "10.0.0.0/33=rw", "fd00::/129=rw",
                          "10.0.0/8=rw", "host.example=rw", "10.0.0.0/x=rw", "=rw"}) {
    auto r = AllowRule::Parse(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_NE(r.status().reason().find(bad), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace pohmelfs::server
