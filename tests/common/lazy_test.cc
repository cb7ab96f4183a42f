#include "common/lazy.h"

#include <gtest/gtest.h>

#include <string>

namespace bw {
namespace {

struct Parts {
  int n = 7;
  std::string name = "default";
};

TEST(Lazy, ReadsTheDefaultUntilFirstChanged) {
  Lazy<Parts> a, b;
  EXPECT_FALSE(a.used());
  EXPECT_EQ(a->n, 7);
  EXPECT_EQ(a.get().name, "default");
  // Unused members share one default value.
  EXPECT_EQ(&a.get(), &b.get());
  a.mut().n = 3;
  EXPECT_TRUE(a.used());
  EXPECT_EQ(a->n, 3);
  EXPECT_NE(&a.get(), &b.get());
  EXPECT_EQ(b->n, 7);
  b.set(Parts{9, "set"});
  EXPECT_EQ(b->name, "set");
}

}  // namespace
}  // namespace bw
