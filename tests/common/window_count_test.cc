#include "common/window_count.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace bw {
namespace {

constexpr Nanos kT0 = seconds(1000);

TEST(WindowCount, CountsOverTheSlidingWindow) {
  WindowCount w(seconds(10), 10);  // one-second buckets
  EXPECT_EQ(w.window(), seconds(10));
  EXPECT_EQ(w.sum(kT0), 0u);
  w.record(kT0);
  w.record(kT0 + millis(500), 2);
  w.record(kT0 + seconds(3));
  EXPECT_EQ(w.sum(kT0 + seconds(3)), 4u);
  // The first second's bucket leaves the window ten seconds on.
  EXPECT_EQ(w.sum(kT0 + seconds(9) + millis(999)), 4u);
  EXPECT_EQ(w.sum(kT0 + seconds(10)), 1u);
  EXPECT_EQ(w.sum(kT0 + seconds(13)), 0u);
  // A bucket reused a window later starts from zero.
  w.record(kT0 + seconds(20));
  EXPECT_EQ(w.sum(kT0 + seconds(20)), 1u);
}

TEST(WindowCount, ResetEmptiesAndResizes) {
  WindowCount w(seconds(10), 10);
  w.record(kT0, 5);
  w.reset(seconds(20));
  EXPECT_EQ(w.window(), seconds(20));
  EXPECT_EQ(w.sum(kT0), 0u);
  w.record(kT0);
  EXPECT_EQ(w.sum(kT0 + seconds(19)), 1u);
  EXPECT_EQ(w.sum(kT0 + seconds(20)), 0u);
}

TEST(WindowCount, AnOlderReadingDoesNotWipeANewerBucket) {
  WindowCount w(seconds(10), 10);
  w.record(kT0 + seconds(10), 3);  // the same bucket as kT0, one window later
  w.record(kT0);                   // a thread whose clock reading is a window older
  EXPECT_EQ(w.sum(kT0 + seconds(10)), 3u);
}

TEST(WindowCount, SaturatesInsteadOfWrapping) {
  WindowCount w(seconds(1), 1);
  w.record(kT0, 0xffffffffu);
  w.record(kT0, 5);
  EXPECT_EQ(w.sum(kT0), 0xffffffffu);
}

TEST(WindowCount, ConcurrentRecordsAreAllCounted) {
  WindowCount w(seconds(10), 10);
  constexpr int kThreads = 4;
  constexpr int kEach = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&w, t] {
      // Every thread crosses the same bucket boundaries, so resets race with increments too.
      for (int i = 0; i < kEach; ++i) w.record(kT0 + millis(i / 4) + t);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(w.sum(kT0 + millis(kEach / 4)), static_cast<std::uint64_t>(kThreads) * kEach);
}

}  // namespace
}  // namespace bw
