#include "common/result.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>

namespace bw {
namespace {

// A Result is its value and a pointer: the Error is on the heap.
static_assert(sizeof(Result<Ok>) <= 2 * sizeof(void*));
static_assert(sizeof(Result<std::string>) <= sizeof(std::string) + sizeof(void*));

Error sample() {
  Error e = make_error(429, "rate_limit_error", "rate_limited", "Too many requests.", "model");
  e.retry_after_s = 2.5;
  return e;
}

TEST(Result, HoldsAValueOrAnError) {
  Result<std::string> v = std::string("answer");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, "answer");
  EXPECT_EQ(v->size(), 6u);
  Result<std::string> e = sample();
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().status, 429);
  EXPECT_EQ(e.error().type, "rate_limit_error");
  EXPECT_EQ(e.error().code, "rate_limited");
  EXPECT_EQ(e.error().message, "Too many requests.");
  EXPECT_EQ(e.error().param, "model");
  EXPECT_EQ(e.error().retry_after_s, 2.5);
}

TEST(Result, ACopyHasItsOwnError) {
  Result<Ok> a = sample();
  Result<Ok> b = a;
  ASSERT_FALSE(b.ok());
  EXPECT_NE(&a.error(), &b.error());
  EXPECT_EQ(b.error().message, "Too many requests.");
  Result<Ok> c = Ok{};
  c = a;
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, "rate_limited");
  EXPECT_NE(&c.error(), &a.error());
  c = Ok{};
  EXPECT_TRUE(c.ok());
  EXPECT_EQ(a.error().param, "model");
}

TEST(Result, AMoveTakesTheError) {
  Result<Ok> a = sample();
  const Error* held = &a.error();
  Result<Ok> b = std::move(a);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(&b.error(), held);  // the same Error, not a copy
  EXPECT_EQ(b.error().retry_after_s, 2.5);
}

TEST(Result, AMovedFromErrorReadsAsDefaults) {
  Result<Ok> a = sample();
  Result<Ok> b = std::move(a);
  ASSERT_FALSE(a.ok());  // NOLINT: reading a moved-from Result on purpose
  EXPECT_EQ(a.error().message, "");
  EXPECT_EQ(a.error().retry_after_s, -1);
  Result<Ok> copy = a;  // a copy of it too
  EXPECT_EQ(copy.error().code, "");
}

TEST(Result, AValueOfAnErrorResultThrows) {
  Result<int> e = sample();
  EXPECT_THROW((void)e.value(), std::bad_variant_access);
}

}  // namespace
}  // namespace bw
