#include "gateway/context.h"

#include <gtest/gtest.h>

#include <cstddef>

namespace bw::gateway {
namespace {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winvalid-offsetof"
// The members every request reads or writes lie together, from the end of the first member
// (whose flag is last) up to the verdict's flag: at most 16 cache lines of a request's context,
// whose block is aligned to a line. The large members that only some requests use lie outside
// them (before and after) or behind a pointer.
TEST(Ctx, TheMembersEveryRequestUsesShareSixteenLines) {
  static_assert(alignof(Ctx) == 64);
  constexpr std::size_t first = offsetof(Ctx, canon) + sizeof(Ctx::canon) - 8;  // canon's flag
  constexpr std::size_t last = offsetof(Ctx, verdict);                          // its flag
  EXPECT_LE(last / 64 - first / 64 + 1, 16u);
  EXPECT_EQ(offsetof(Ctx, canon), 0u);
  EXPECT_LT(offsetof(Ctx, llm), last);
  EXPECT_LT(offsetof(Ctx, permit), last);
  EXPECT_EQ(sizeof(Ctx::cache), sizeof(void*));
  EXPECT_EQ(sizeof(Ctx::budget), sizeof(void*));
  EXPECT_EQ(sizeof(Ctx::response_meta), sizeof(void*));
  EXPECT_EQ(sizeof(Ctx::upstream_limits), sizeof(void*));
}
#pragma GCC diagnostic pop

}  // namespace
}  // namespace bw::gateway
