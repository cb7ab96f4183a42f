#include "common/inline_id.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>

namespace bw {
namespace {

const std::string kGenerated = "req_0193a4c5e6f7a1b2c3d4e5f6";  // 28 characters: inline
const std::string kLong(InlineId::kInline + 1, 'x');            // one more than fits: heap

TEST(InlineId, KeepsShortIdsInItselfAndLongOnesOnTheHeap) {
  const InlineId a = kGenerated;
  EXPECT_EQ(a, kGenerated);
  EXPECT_EQ(a.size(), kGenerated.size());
  // Inline: the characters are inside the object itself.
  const auto* self = reinterpret_cast<const char*>(&a);
  EXPECT_TRUE(a.data() >= self && a.data() < self + sizeof a);
  const InlineId full = std::string(InlineId::kInline, 'y');
  self = reinterpret_cast<const char*>(&full);
  EXPECT_TRUE(full.data() >= self && full.data() < self + sizeof full);

  const InlineId b = kLong;
  EXPECT_EQ(b, kLong);
  self = reinterpret_cast<const char*>(&b);
  EXPECT_FALSE(b.data() >= self && b.data() < self + sizeof b);

  EXPECT_TRUE(InlineId().empty());
  EXPECT_EQ(InlineId(), "");
  EXPECT_EQ(InlineId("abc").str(), "abc");
}

TEST(InlineId, CopiesMovesAndAssignsEitherKind) {
  for (const std::string& text : {kGenerated, kLong}) {
    InlineId a = text;
    InlineId copy = a;
    EXPECT_EQ(copy, text);
    EXPECT_EQ(a, text);
    InlineId moved = std::move(a);
    EXPECT_EQ(moved, text);
    EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): a moved-from id is empty
    // Assignment between the two kinds, both ways.
    InlineId other = text == kLong ? kGenerated : kLong;
    other = moved;
    EXPECT_EQ(other, text);
    other = std::string_view("short");
    EXPECT_EQ(other, "short");
    other = std::move(moved);
    EXPECT_EQ(other, text);
    const InlineId& same = other;
    other = same;  // self-assignment keeps the id
    EXPECT_EQ(other, text);
    // From a part of itself (a view into its own room or block).
    other = std::string_view(other).substr(1, 3);
    EXPECT_EQ(other, text.substr(1, 3));
    InlineId whole = text;
    whole = std::string_view(whole).substr(1);
    EXPECT_EQ(whole, text.substr(1));
  }
  EXPECT_EQ(InlineId(kGenerated), InlineId(kGenerated));
  EXPECT_FALSE(InlineId(kGenerated) == InlineId(kLong));
}

}  // namespace
}  // namespace bw
