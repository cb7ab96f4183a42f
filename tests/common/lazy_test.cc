#include "common/lazy.h"

#include <gtest/gtest.h>

#include <string>

namespace bw {
namespace {

struct Parts {
  int n = 7;
  std::string name = "default";
};

// Counts the values made and destroyed.
struct Counted {
  static inline int made = 0;
  static inline int gone = 0;
  Counted() { ++made; }
  Counted(Counted&&) noexcept { ++made; }
  ~Counted() { ++gone; }
  int n = 1;
};

// Reads see the default, shared by every unused member, until the first change; set() replaces
// the value.
template <class L>
void reads_the_default_until_first_changed() {
  L a, b;
  EXPECT_FALSE(a.used());
  EXPECT_EQ(a->n, 7);
  EXPECT_EQ(a.get().name, "default");
  // Unused members share one default value, Lazy's.
  EXPECT_EQ(&a.get(), &b.get());
  EXPECT_EQ(&a.get(), &Lazy<Parts>::unused());
  a.mut().n = 3;
  EXPECT_TRUE(a.used());
  EXPECT_EQ(a->n, 3);
  EXPECT_NE(&a.get(), &b.get());
  EXPECT_EQ(b->n, 7);
  b.set(Parts{9, "set"});
  EXPECT_EQ(b->name, "set");
  b.set(Parts{10, "again"});
  EXPECT_EQ(b->n, 10);
  EXPECT_EQ(b->name, "again");
}

TEST(Lazy, ReadsTheDefaultUntilFirstChanged) {
  reads_the_default_until_first_changed<Lazy<Parts>>();
}

// LazyBox's value is on the heap: an unused one holds a pointer and no value.
TEST(LazyBox, ReadsTheDefaultUntilFirstChanged) {
  static_assert(sizeof(LazyBox<Parts>) == sizeof(void*));
  reads_the_default_until_first_changed<LazyBox<Parts>>();
}

// An unused member makes no value and destroys none; a used one's value is destroyed once, also
// when set() replaced it.
template <class L>
void makes_and_destroys_only_what_is_used() {
  Counted::made = Counted::gone = 0;
  { L unused; }
  EXPECT_EQ(Counted::made, 0);
  EXPECT_EQ(Counted::gone, 0);
  {
    L used;
    used.mut().n = 2;
    used.mut().n = 3;  // the same value
    EXPECT_EQ(Counted::made, 1);
    EXPECT_EQ(used->n, 3);
    used.set(Counted{});  // the temporary and the replaced value go
    EXPECT_EQ(used->n, 1);
    EXPECT_EQ(Counted::gone, 2);
  }
  EXPECT_EQ(Counted::made, 3);
  EXPECT_EQ(Counted::gone, 3);
}

TEST(Lazy, MakesAndDestroysOnlyWhatIsUsed) {
  makes_and_destroys_only_what_is_used<Lazy<Counted>>();
}

TEST(LazyBox, MakesAndDestroysOnlyWhatIsUsed) {
  makes_and_destroys_only_what_is_used<LazyBox<Counted>>();
}

// Lazy's flag comes before its value: an owner that never uses a large member touches only the
// flag, next to the members before it, and none of the value's lines.
TEST(Lazy, ItsFlagLiesBeforeItsValue) {
  struct Large {
    char bytes[512] = {};
  };
  Lazy<Large> l;
  const auto* start = reinterpret_cast<const char*>(&l);
  const auto* value = reinterpret_cast<const char*>(&l.mut());
  EXPECT_GT(value, start);
  EXPECT_EQ(sizeof(Lazy<Large>), sizeof(Large) + (value - start));
}

}  // namespace
}  // namespace bw
