#include "admission/wait_queue.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace bw::admission {
namespace {

QueueConfig no_aging(std::size_t max_size = 100) {
  QueueConfig c;
  c.max_size = max_size;
  c.aging = 0;
  return c;
}

std::vector<int> drain(WaitQueue<int>& q, Nanos now) {
  std::vector<int> out;
  while (auto d = q.pop(now)) out.push_back(d->value);
  return out;
}

TEST(WaitQueue, StrictPriorityThenFifo) {
  WaitQueue<int> q(no_aging());
  const Nanos t = seconds(100);
  q.push(2, t, 0, 1);
  q.push(1, t, 0, 2);
  q.push(0, t, 0, 3);
  q.push(1, t, 0, 4);
  q.push(0, t, 0, 5);
  q.push(2, t, 0, 6);
  EXPECT_EQ(q.size(), 6u);
  EXPECT_EQ(q.depth(0), 2u);
  EXPECT_EQ(q.depth(1), 2u);
  EXPECT_EQ(q.depth(2), 2u);
  EXPECT_EQ(drain(q, t), (std::vector<int>{3, 5, 2, 4, 1, 6}));
  EXPECT_TRUE(q.empty());
}

TEST(WaitQueue, PopReportsWaitAndPriority) {
  WaitQueue<int> q(no_aging());
  q.push(1, seconds(10), 0, 7);
  auto d = q.pop(seconds(12));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->value, 7);
  EXPECT_EQ(d->priority, 1);
  EXPECT_EQ(d->enqueued_at, seconds(10));
  EXPECT_EQ(d->waited, seconds(2));
}

TEST(WaitQueue, AgingPromotesOneLevelPerInterval) {
  QueueConfig c;
  c.aging = seconds(5);
  c.max_wait = {seconds(100), seconds(100), seconds(100)};
  WaitQueue<int> q(c);
  const Nanos t0 = seconds(1000);
  auto batch = q.push(2, t0, 0, 20).handle;
  EXPECT_EQ(q.effective_priority(batch, t0), 2);
  EXPECT_EQ(q.effective_priority(batch, t0 + seconds(5) - 1), 2);
  EXPECT_EQ(q.effective_priority(batch, t0 + seconds(5)), 1);
  // P1 at best: P0 is reserved for requests that arrived as P0.
  EXPECT_EQ(q.effective_priority(batch, t0 + seconds(10)), 1);
  EXPECT_EQ(q.effective_priority(batch, t0 + seconds(60)), 1);

  // At t0+4s a fresh P1 beats the P2 that has not aged yet.
  q.push(1, t0 + seconds(4), 0, 10);
  auto first = q.pop(t0 + seconds(4));
  ASSERT_TRUE(first);
  EXPECT_EQ(first->value, 10);

  // At t0+7s the P2 competes as P1 and, being older, goes before a new P1, but not before P0.
  q.push(1, t0 + seconds(7), 0, 11);
  q.push(0, t0 + seconds(7), 0, 1);
  EXPECT_EQ(drain(q, t0 + seconds(7)), (std::vector<int>{1, 20, 11}));
}

TEST(WaitQueue, AgingNeverOvertakesP0) {
  QueueConfig c;
  c.aging = seconds(5);
  c.max_wait = {seconds(100), seconds(100), seconds(100)};
  WaitQueue<int> q(c);
  const Nanos t0 = seconds(1000);
  q.push(2, t0, 0, 20);
  q.push(1, t0 + seconds(1), 0, 10);
  q.push(0, t0 + seconds(59), 0, 1);
  q.push(1, t0 + seconds(59), 0, 11);
  // After a minute the old P2 and P1 compete as P1 (the older first, before the newer P1), but the
  // fresh P0 goes before both: a backlog of lower priorities never delays P0.
  EXPECT_EQ(q.effective_priority(q.push(1, t0 + seconds(60), 0, 12).handle, t0 + seconds(60)), 1);
  EXPECT_EQ(drain(q, t0 + seconds(60)), (std::vector<int>{1, 20, 10, 11, 12}));
}

TEST(WaitQueue, FullQueueEvictsNewestOfLowestPriority) {
  WaitQueue<int> q(no_aging(3));
  const Nanos t = seconds(1);
  EXPECT_EQ(q.push(1, t, 0, 10).outcome, PushOutcome::kQueued);
  EXPECT_EQ(q.push(2, t, 0, 20).outcome, PushOutcome::kQueued);
  EXPECT_EQ(q.push(2, t + 1, 0, 21).outcome, PushOutcome::kQueued);

  auto r = q.push(0, t + 2, 0, 0);
  EXPECT_EQ(r.outcome, PushOutcome::kQueuedEvicted);
  ASSERT_TRUE(r.evicted);
  EXPECT_EQ(r.evicted->value, 21);  // the newest P2
  EXPECT_EQ(r.evicted->priority, 2);
  EXPECT_EQ(r.evicted->waited, 1);

  r = q.push(1, t + 3, 0, 11);
  EXPECT_EQ(r.outcome, PushOutcome::kQueuedEvicted);
  ASSERT_TRUE(r.evicted);
  EXPECT_EQ(r.evicted->value, 20);

  // Only P0 and P1 left: another P1 finds nobody lower to displace.
  EXPECT_FALSE(q.would_accept(1));
  r = q.push(1, t + 4, 0, 12);
  EXPECT_EQ(r.outcome, PushOutcome::kRefusedFull);
  EXPECT_FALSE(r.evicted);
  EXPECT_FALSE(r.handle.valid());
  EXPECT_EQ(q.push(2, t + 4, 0, 22).outcome, PushOutcome::kRefusedFull);
  EXPECT_TRUE(q.would_accept(0));
  r = q.push(0, t + 5, 0, 1);
  ASSERT_TRUE(r.evicted);
  EXPECT_EQ(r.evicted->value, 11);  // newest of the lowest priority present (P1)
  EXPECT_EQ(q.size(), 3u);
  EXPECT_EQ(drain(q, t + 6), (std::vector<int>{0, 1, 10}));
}

TEST(WaitQueue, MaximumWaitPerPriorityAndPerRequest) {
  QueueConfig c = no_aging();
  c.max_wait = {seconds(3), seconds(2), seconds(1)};
  WaitQueue<int> q(c);
  const Nanos t = seconds(50);
  q.push(2, t, 0, 2);
  q.push(0, t, millis(500), 0);  // shorter than the P0 maximum
  q.push(1, t, seconds(60), 1);  // cannot exceed the P1 maximum
  q.push(1, t + millis(1), 0, 11);
  ASSERT_TRUE(q.next_deadline());
  EXPECT_EQ(*q.next_deadline(), t + millis(500));

  std::vector<int> expired;
  auto collect = [&](Departed<int>&& d) { expired.push_back(d.value); };
  EXPECT_EQ(q.expire(t + millis(499), collect), 0u);
  EXPECT_EQ(q.expire(t + millis(500), collect), 1u);
  EXPECT_EQ(expired, (std::vector<int>{0}));
  EXPECT_EQ(q.expire(t + seconds(1), collect), 1u);
  EXPECT_EQ(expired, (std::vector<int>{0, 2}));
  EXPECT_EQ(q.expire(t + seconds(2), collect), 1u);
  EXPECT_EQ(expired, (std::vector<int>{0, 2, 1}));
  EXPECT_EQ(*q.next_deadline(), t + millis(2001));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.expire(t + seconds(10), collect), 1u);
  EXPECT_EQ(expired, (std::vector<int>{0, 2, 1, 11}));
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.next_deadline());
}

TEST(WaitQueue, RemoveOnCancelIsExactAndHandlesGoStale) {
  WaitQueue<int> q(no_aging());
  const Nanos t = seconds(1);
  auto a = q.push(1, t, 0, 1).handle;
  auto b = q.push(1, t, 0, 2).handle;
  auto c = q.push(1, t, 0, 3).handle;
  auto removed = q.remove(b, t + 5);
  ASSERT_TRUE(removed);
  EXPECT_EQ(removed->value, 2);
  EXPECT_EQ(removed->waited, 5);
  EXPECT_FALSE(q.contains(b));
  EXPECT_FALSE(q.remove(b, t));
  EXPECT_EQ(q.size(), 2u);
  EXPECT_EQ(q.depth(1), 2u);

  // The freed slot is reused; the stale handle must not reach the new occupant.
  auto d = q.push(1, t, 0, 4).handle;
  EXPECT_EQ(d.slot, b.slot);
  EXPECT_FALSE(q.remove(b, t));
  EXPECT_TRUE(q.contains(d));

  ASSERT_TRUE(q.remove(a, t));
  ASSERT_TRUE(q.remove(d, t));
  EXPECT_EQ(drain(q, t), (std::vector<int>{3}));
  EXPECT_FALSE(q.contains(c));
  // Removed waiters never show up as expired.
  int expired = 0;
  q.expire(t + seconds(100), [&](Departed<int>&&) { ++expired; });
  EXPECT_EQ(expired, 0);
}

TEST(WaitQueue, ChurnKeepsDeadlineIndexBoundedAndCorrect) {
  QueueConfig c = no_aging(10);
  c.max_wait = {seconds(1), seconds(1), seconds(1)};
  WaitQueue<int> q(c);
  Nanos t = seconds(1);
  auto keep = q.push(0, t, 0, -1).handle;
  for (int i = 0; i < 100'000; ++i) {
    auto h = q.push(i % 3, t, 0, i).handle;
    ASSERT_TRUE(q.remove(h, t));
  }
  EXPECT_EQ(q.size(), 1u);
  std::vector<int> expired;
  q.expire(t + seconds(1), [&](Departed<int>&& d) { expired.push_back(d.value); });
  EXPECT_EQ(expired, (std::vector<int>{-1}));
  EXPECT_FALSE(q.contains(keep));
}

TEST(WaitQueue, MovesOnlyValues) {
  WaitQueue<std::unique_ptr<std::string>> q(no_aging());
  q.push(0, 1, 0, std::make_unique<std::string>("x"));
  auto d = q.pop(2);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d->value, "x");
}

}  // namespace
}  // namespace bw::admission
