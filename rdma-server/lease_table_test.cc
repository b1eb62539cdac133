// LeaseTable on its own: breaks are recorded instead of sent, grants are seen through their
// completions.
#include "rdma-server/lease_table.h"

#include <gtest/gtest.h>

#include <optional>

namespace pohmelfs::server {
namespace {

using namespace std::chrono_literals;

struct Recorded {
  uint64_t session;
  uint32_t keep;
  uint64_t seq;
};

class LeaseTableTest : public ::testing::Test {
 protected:
  LeaseTableTest()
      : table_(LeaseTable::Options{.break_timeout = 60s, .grace = 1s},
               [this](uint64_t session, const Oid&, uint32_t keep, uint64_t seq) {
                 std::lock_guard lk(mu_);
                 breaks_.push_back({session, keep, seq});
                 return true;
               }) {}
  // An acquire whose completion lands in *out (mode, or nullopt while it waits).
  void Acquire(uint64_t session, uint32_t mode, std::optional<uint32_t>* out) {
    table_.Acquire(session, oid_, mode, false, [this, out](uint32_t status, uint32_t m, uint64_t) {
      std::lock_guard lk(mu_);
      *out = status == 0 ? m : 0u;
    });
  }
  std::optional<uint32_t> Get(const std::optional<uint32_t>& v) {
    std::lock_guard lk(mu_);
    return v;
  }
  std::vector<Recorded> Breaks() {
    std::lock_guard lk(mu_);
    return breaks_;
  }

  std::mutex mu_;
  std::vector<Recorded> breaks_;
  const Oid oid_ = Oid::Random();
  LeaseTable table_;
};

// A session whose lease is being broken asks for it again: the grant waits for that session's
// RELEASE, which would otherwise arrive after the new grant and drop it (the client would then
// cache under a lease the server no longer knows of).
TEST_F(LeaseTableTest, AGrantWaitsForTheReleaseOfTheSessionsOwnBreak) {
  constexpr uint64_t kA = 1, kC = 2;
  std::optional<uint32_t> a_read, c_write, a_write;
  Acquire(kA, POHMELFS_LEASE_READ, &a_read);
  ASSERT_EQ(Get(a_read), POHMELFS_LEASE_READ);
  Acquire(kC, POHMELFS_LEASE_WRITE, &c_write);  // breaks A
  ASSERT_EQ(Breaks().size(), 1u);
  EXPECT_EQ(Breaks()[0].session, kA);
  EXPECT_EQ(Breaks()[0].keep, uint32_t{POHMELFS_LEASE_NONE});
  Acquire(kA, POHMELFS_LEASE_WRITE, &a_write);  // A asks again before its RELEASE arrives
  table_.DropSession(kC);                       // C goes away: A's request is now first
  EXPECT_FALSE(Get(a_write).has_value()) << "granted before A's own RELEASE came";
  table_.Release(kA, oid_, POHMELFS_LEASE_NONE);  // the RELEASE answering the break
  EXPECT_EQ(Get(a_write), POHMELFS_LEASE_WRITE);
  EXPECT_EQ(table_.Held(kA, oid_), uint32_t{POHMELFS_LEASE_WRITE});
}

// A downgrade on the way does not hold up a request the session still has room for: READ
// after a break that keeps READ is granted once the RELEASE lands.
TEST_F(LeaseTableTest, AReadAfterADowngradingBreakIsGrantedOnceReleased) {
  constexpr uint64_t kA = 1, kB = 2;
  std::optional<uint32_t> a_write, b_read, a_read;
  Acquire(kA, POHMELFS_LEASE_WRITE, &a_write);
  ASSERT_EQ(Get(a_write), POHMELFS_LEASE_WRITE);
  Acquire(kB, POHMELFS_LEASE_READ, &b_read);
  ASSERT_EQ(Breaks().size(), 1u);
  EXPECT_EQ(Breaks()[0].keep, uint32_t{POHMELFS_LEASE_READ});
  Acquire(kA, POHMELFS_LEASE_READ, &a_read);
  EXPECT_FALSE(Get(a_read).has_value());
  table_.Release(kA, oid_, POHMELFS_LEASE_READ);
  EXPECT_EQ(Get(b_read), POHMELFS_LEASE_READ);
  EXPECT_EQ(Get(a_read), POHMELFS_LEASE_READ);
  EXPECT_EQ(table_.Held(kA, oid_), uint32_t{POHMELFS_LEASE_READ});
  EXPECT_EQ(table_.Held(kB, oid_), uint32_t{POHMELFS_LEASE_READ});
}

}  // namespace
}  // namespace pohmelfs::server
