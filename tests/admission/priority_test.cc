#include "admission/priority.h"
#include "admission/overload.h"

#include <gtest/gtest.h>

namespace bw::admission {
namespace {

TEST(Priority, ParsesDigitsAndNamesCaseInsensitively) {
  EXPECT_EQ(resolve_priority("0", 1, 0).priority, 0);
  EXPECT_EQ(resolve_priority("1", 2, 0).priority, 1);
  EXPECT_EQ(resolve_priority("2", 0, 0).priority, 2);
  EXPECT_EQ(resolve_priority("urgent", 2, 0).priority, 0);
  EXPECT_EQ(resolve_priority("Standard", 2, 0).priority, 1);
  EXPECT_EQ(resolve_priority(" BATCH ", 0, 0).priority, 2);
  auto d = resolve_priority("URGENT", 2, 0);
  EXPECT_FALSE(d.lowered);
  EXPECT_FALSE(d.unrecognized);
}

TEST(Priority, FallsBackToKeyDefault) {
  auto d = resolve_priority("", 2, 0);
  EXPECT_EQ(d.priority, 2);
  EXPECT_FALSE(d.unrecognized);
  d = resolve_priority("high", 1, 0);
  EXPECT_EQ(d.priority, 1);
  EXPECT_TRUE(d.unrecognized);
  EXPECT_EQ(resolve_priority("3", 1, 0).priority, 1);
  EXPECT_EQ(resolve_priority("-1", 1, 0).priority, 1);
  EXPECT_EQ(resolve_priority("00", 1, 0).priority, 1);
  EXPECT_EQ(resolve_priority("urgentx", 1, 0).priority, 1);
}

TEST(Priority, ClampsToKeysHighestAllowedAndReportsIt) {
  auto d = resolve_priority("urgent", 1, 1);
  EXPECT_EQ(d.priority, 1);
  EXPECT_TRUE(d.lowered);
  d = resolve_priority("0", 2, 2);
  EXPECT_EQ(d.priority, 2);
  EXPECT_TRUE(d.lowered);
  d = resolve_priority("batch", 1, 1);
  EXPECT_EQ(d.priority, 2);
  EXPECT_FALSE(d.lowered);
  // A default above what the key may use is clamped as well.
  d = resolve_priority("", 0, 1);
  EXPECT_EQ(d.priority, 1);
  EXPECT_TRUE(d.lowered);
  // Out-of-range configuration values are clamped into 0..2.
  EXPECT_EQ(resolve_priority("", 7, -3).priority, 2);
  EXPECT_EQ(resolve_priority("0", 1, 9).priority, 2);
}

TEST(Priority, Names) {
  EXPECT_EQ(priority_name(0), "urgent");
  EXPECT_EQ(priority_name(1), "standard");
  EXPECT_EQ(priority_name(2), "batch");
}

TEST(Overload, ShedsBatchFirstThenStandardThenEverything) {
  const OverloadConfig c{.shed_p2_at = 10, .shed_p1_at = 20, .hard_limit = 30};
  EXPECT_TRUE(overload_admits(c, 2, 9));
  EXPECT_FALSE(overload_admits(c, 2, 10));
  EXPECT_TRUE(overload_admits(c, 1, 10));
  EXPECT_TRUE(overload_admits(c, 1, 19));
  EXPECT_FALSE(overload_admits(c, 1, 20));
  EXPECT_TRUE(overload_admits(c, 0, 20));
  EXPECT_TRUE(overload_admits(c, 0, 29));
  EXPECT_FALSE(overload_admits(c, 0, 30));
  EXPECT_FALSE(overload_admits(c, 2, 1000));
}

}  // namespace
}  // namespace bw::admission
