#include "client/inode_table.h"

#include <gtest/gtest.h>

namespace pohmelfs::client {
namespace {

TEST(InodeTable, StableIdsAndLookupCounts) {
  InodeTable t(proto::Oid::Root());
  EXPECT_EQ(t.Get(InodeTable::kRootId), proto::Oid::Root());
  proto::Oid a = proto::Oid::Random();
  uint64_t id = t.Ref(a);
  EXPECT_GT(id, InodeTable::kRootId);
  EXPECT_EQ(t.Ref(a), id);  // same object, same node id
  t.Forget(id, 1);
  EXPECT_TRUE(t.Get(id).has_value());
  t.Forget(id, 1);
  EXPECT_FALSE(t.Get(id).has_value());
  EXPECT_EQ(t.Ref(a), id);  // derived from the object id: stable after forget
  t.Forget(InodeTable::kRootId, 100);
  EXPECT_TRUE(t.Get(InodeTable::kRootId).has_value());
}

TEST(InodeTable, PeekDoesNotPin) {
  InodeTable t(proto::Oid::Root());
  proto::Oid a = proto::Oid::Random();
  uint64_t id = t.Ref(a, 0);
  EXPECT_TRUE(t.Get(id).has_value());
  t.Forget(id, 0);
  EXPECT_FALSE(t.Get(id).has_value());
}

}  // namespace
}  // namespace pohmelfs::client
