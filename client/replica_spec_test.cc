// The server syntax of the mount's source argument, cluster files and pohmelfsctl servers.
#include "client/replica_spec.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

namespace pohmelfs::client {
namespace {

TEST(ReplicaSpec, DefaultsAreReadWritePriorityZero) {
  auto s = ParseReplicaSpec("tcp://n1:7000");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->uri, "tcp://n1:7000");
  EXPECT_EQ(s->priority, 0);
  EXPECT_TRUE(s->read && s->write);
  EXPECT_EQ(s->ToString(), "tcp://n1:7000?prio=0&perm=rw");
}

TEST(ReplicaSpec, PriorityAndPermissions) {
  auto s = ParseReplicaSpec("tcp://[::1]:7000?prio=-3&perm=w");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->priority, -3);
  EXPECT_FALSE(s->read);
  EXPECT_TRUE(s->write);
  auto r = ParseReplicaSpec("tcp://n1:7000?perm=r&prio=10");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->read);
  EXPECT_FALSE(r->write);
  EXPECT_EQ(r->priority, 10);
  EXPECT_EQ(ParseReplicaSpec(r->ToString())->ToString(), r->ToString());
}

TEST(ReplicaSpec, BadInputIsRefusedWithEinval) {
  for (const char* bad : {"tcp://n1:7000?prio=x", "tcp://n1:7000?prio=", "tcp://n1:7000?perm=x",
                          "tcp://n1:7000?colour=red", "tcp://n1:7000?prio", "n1:7000",
                          "tcp://n1:7000?prio=99999999999"}) {
    auto s = ParseReplicaSpec(bad);
    EXPECT_FALSE(s.ok()) << bad;
  }
}

TEST(ReplicaSpec, ListsRefuseDuplicatesAndEmptiness) {
  auto l = ParseServerList("tcp://a:1?prio=2,tcp://b:1");
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  ASSERT_EQ(l->size(), 2u);
  EXPECT_EQ((*l)[0].priority, 2);
  EXPECT_EQ((*l)[1].uri, "tcp://b:1");
  EXPECT_FALSE(ParseServerList("tcp://a:1,tcp://a:1").ok());
  EXPECT_FALSE(ParseServerList("").ok());
}

TEST(ReplicaSpec, ClusterFileTakesWordsOrQueriesAndComments) {
  const std::string path = "/tmp/pohmelfs-cluster-" + std::to_string(getpid()) + ".conf";
  {
    std::ofstream f(path);
    f << "# scratch\n\ntcp://a:7000  prio=10  perm=rw\n  tcp://b:7000?perm=w   # backup\n";
  }
  auto l = LoadClusterFile(path);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  ASSERT_EQ(l->size(), 2u);
  EXPECT_EQ((*l)[0].priority, 10);
  EXPECT_FALSE((*l)[1].read);
  {
    std::ofstream f(path);
    f << "tcp://a:7000\ntcp://b:7000 prio=high\n";
  }
  auto bad = LoadClusterFile(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().reason().find(":2:"), std::string::npos) << bad.status().reason();
  unlink(path.c_str());
  EXPECT_FALSE(LoadClusterFile(path).ok());
}

}  // namespace
}  // namespace pohmelfs::client
