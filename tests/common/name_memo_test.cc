#include "common/name_memo.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>

namespace bw {
namespace {

struct TestMemo;
struct OtherMemo;
using Memo = NameMemo<TestMemo, const int*, 2>;

TEST(NameMemo, RemembersByOwnerAndName) {
  const std::uint64_t a = next_memo_owner(), b = next_memo_owner();
  EXPECT_NE(a, b);
  EXPECT_NE(a, 0u);
  const int x = 1, y = 2;
  EXPECT_EQ(Memo::find(a, "gpt"), nullptr);
  Memo::keep(a, "gpt", &x);
  EXPECT_EQ(Memo::find(a, "gpt"), &x);
  // Another owner, another name, or a name that only begins alike: not this entry.
  EXPECT_EQ(Memo::find(b, "gpt"), nullptr);
  EXPECT_EQ(Memo::find(a, "gp"), nullptr);
  EXPECT_EQ(Memo::find(a, "gpt-4"), nullptr);
  EXPECT_EQ((NameMemo<OtherMemo, const int*, 2>::find(a, "gpt")), nullptr);
  Memo::keep(b, "gpt", &y);
  EXPECT_EQ(Memo::find(a, "gpt"), &x);
  EXPECT_EQ(Memo::find(b, "gpt"), &y);
}

TEST(NameMemo, KeepsTheLastFewAndIsPerThread) {
  const std::uint64_t a = next_memo_owner();
  const int v[3] = {1, 2, 3};
  Memo::keep(a, "one", &v[0]);
  Memo::keep(a, "two", &v[1]);
  Memo::keep(a, "three", &v[2]);  // two entries: replaces the oldest
  EXPECT_EQ(Memo::find(a, "one"), nullptr);
  EXPECT_EQ(Memo::find(a, "two"), &v[1]);
  EXPECT_EQ(Memo::find(a, "three"), &v[2]);
  const int* seen = &v[0];
  std::thread([&] { seen = Memo::find(a, "two"); }).join();
  EXPECT_EQ(seen, nullptr);
}

}  // namespace
}  // namespace bw
