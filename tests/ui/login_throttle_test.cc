#include "ui/login_throttle.h"

#include <gtest/gtest.h>

namespace bw::ui {
namespace {

TEST(LoginThrottle, BlocksAnIpAfterMaxFailuresUntilItsWindowEnds) {
  LoginThrottle t({.max_failures = 3, .window = seconds(60), .max_entries = 16});
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(t.blocked_for("10.0.0.1", seconds(i)), 0) << i;
    t.failed("10.0.0.1", seconds(i));
  }
  // The window began at the first failure (t=0): blocked until t=60, to the nanosecond.
  EXPECT_EQ(t.blocked_for("10.0.0.1", seconds(3)), seconds(57));
  EXPECT_EQ(t.blocked_for("10.0.0.1", seconds(60) - 1), 1);
  EXPECT_EQ(t.blocked_for("10.0.0.1", seconds(60)), 0);
  // Another address is not affected.
  EXPECT_EQ(t.blocked_for("10.0.0.2", seconds(3)), 0);
}

TEST(LoginThrottle, ANewWindowStartsAfterTheOldOneAndSuccessClears) {
  LoginThrottle t({.max_failures = 2, .window = seconds(10), .max_entries = 16});
  t.failed("a", 0);
  t.failed("a", seconds(11));  // the first failure's window is over: this one starts a new one
  EXPECT_EQ(t.blocked_for("a", seconds(12)), 0);
  t.failed("a", seconds(12));
  EXPECT_EQ(t.blocked_for("a", seconds(12)), seconds(9));
  t.succeeded("a");
  EXPECT_EQ(t.blocked_for("a", seconds(12)), 0);
  EXPECT_EQ(t.size(), 0u);
}

TEST(LoginThrottle, TheTableIsBounded) {
  LoginThrottle t({.max_failures = 1, .window = seconds(60), .max_entries = 8});
  for (int i = 0; i < 1000; ++i) t.failed("ip" + std::to_string(i), seconds(1) + i);
  EXPECT_LE(t.size(), 8u);
  // The most recent addresses are the ones kept.
  EXPECT_GT(t.blocked_for("ip999", seconds(2)), 0);
}

}  // namespace
}  // namespace bw::ui
