#include "common/light_mutex.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace bw {
namespace {

TEST(LightMutex, TryLockFailsWhileHeld) {
  LightMutex mu;
  ASSERT_TRUE(mu.try_lock());
  EXPECT_FALSE(mu.try_lock());
  std::thread other([&] { EXPECT_FALSE(mu.try_lock()); });
  other.join();
  mu.unlock();
  EXPECT_TRUE(mu.try_lock());
  mu.unlock();
  std::lock_guard lock(mu);
  EXPECT_FALSE(mu.try_lock());
}

// More threads than cores, each taking the lock many times for a read-modify-write of plain
// memory: any overlap loses an increment. Waiters spin, then sleep on the futex and are woken
// by unlock(); the last must not sleep for good.
TEST(LightMutex, ExcludesUnderContention) {
  LightMutex mu;
  std::uint64_t plain = 0;
  int inside = 0;
  std::atomic<bool> overlap{false};
  constexpr int kThreads = 6;
  constexpr int kRounds = 50'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        std::lock_guard lock(mu);
        if (++inside != 1) overlap.store(true);
        const std::uint64_t v = plain;
        // A longer hold now and then, so that waiters exhaust their spin and sleep.
        if (i % 1000 == 0) std::this_thread::yield();
        plain = v + 1;
        --inside;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(overlap.load());
  EXPECT_EQ(plain, std::uint64_t{kThreads} * kRounds);
  EXPECT_TRUE(mu.try_lock());
  mu.unlock();
}

// A thread that waits for the lock is let in once its holder releases it.
TEST(LightMutex, AWaiterEntersAfterTheHolderLeaves) {
  LightMutex mu;
  mu.lock();
  std::atomic<bool> entered{false};
  std::thread waiter([&] {
    std::lock_guard lock(mu);
    entered.store(true);
  });
  // Whether it is still spinning or already sleeping, it cannot be in.
  for (int i = 0; i < 1000; ++i) std::this_thread::yield();
  EXPECT_FALSE(entered.load());
  mu.unlock();
  waiter.join();
  EXPECT_TRUE(entered.load());
}

}  // namespace
}  // namespace bw
