// The group-commit queue (store/group_commit.h) on its own: pushes from several threads, woken
// or deferred, each committed once in batches of at most max_batch; a full queue refuses.
#include "store/group_commit.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <variant>
#include <vector>

namespace bw::store {
namespace {

using Queue = GroupCommitQueue<int>;

Queue::BatchOutcome all_ok(const Queue::Batch& batch) {
  Queue::BatchOutcome out;
  out.results.assign(batch.size(), Result<Ok>(Ok{}));
  return out;
}

TEST(GroupCommitQueue, PushesFromSeveralThreadsAreCommittedOnceEachInBoundedBatches) {
  constexpr int kThreads = 4;
  constexpr int kEach = 3'000;
  constexpr std::size_t kMaxBatch = 64;
  Queue q(kThreads * kEach, kMaxBatch);
  std::atomic<std::size_t> largest{0};
  std::atomic<int> out_of_order{0};
  q.start([&](const Queue::Batch& batch) {
    std::size_t seen = largest.load();
    while (batch.size() > seen && !largest.compare_exchange_weak(seen, batch.size())) {
    }
    // One thread's records keep their order.
    std::vector<int> last(kThreads, -1);
    for (const auto& item : batch) {
      const int t = item.record / kEach, i = item.record % kEach;
      if (i < last[static_cast<std::size_t>(t)]) out_of_order.fetch_add(1);
      last[static_cast<std::size_t>(t)] = i;
    }
    return all_ok(batch);
  });
  auto done = std::make_unique<std::atomic<int>[]>(kThreads * kEach);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const int id = t * kEach + i;
        // Most deferred (no wake-up), some waking the writer.
        ASSERT_TRUE(q.push(
            id, [&done, id](const Result<Ok>& r) { done[id].fetch_add(r.ok() ? 1 : 100); },
            i % 50 == 0));
      }
    });
  }
  for (auto& t : threads) t.join();
  q.flush();
  for (int id = 0; id < kThreads * kEach; ++id) ASSERT_EQ(done[id].load(), 1) << id;
  EXPECT_LE(largest.load(), kMaxBatch);
  EXPECT_EQ(out_of_order.load(), 0);
  const GroupCommitStats s = q.stats();
  EXPECT_EQ(s.records_committed, std::uint64_t{kThreads} * kEach);
  EXPECT_EQ(s.records_failed, 0u);
  EXPECT_EQ(s.queue_depth, 0u);
  q.stop();
}

TEST(GroupCommitQueue, AFullQueueRefusesAndTheQueuedRecordsAreStillCommitted) {
  Queue q(2, 8);
  int committed = 0;
  EXPECT_TRUE(q.push(
      1, [&](const Result<Ok>& r) { committed += r.ok() ? 1 : 0; }, false));
  EXPECT_TRUE(q.push(
      2, [&](const Result<Ok>& r) { committed += r.ok() ? 1 : 0; }, false));
  EXPECT_FALSE(q.push(
      3, [&](const Result<Ok>&) { committed += 100; }, false));
  EXPECT_EQ(q.stats().queue_full, 1u);
  EXPECT_EQ(q.stats().queue_depth, 2u);
  q.start(all_ok);
  q.flush();
  EXPECT_EQ(committed, 2);
  q.stop();
  // Stopped: refused at once.
  EXPECT_FALSE(q.push(4, {}, true));
}

// A record made in the queue's room: filled once, under the queue, committed like a pushed one;
// a refused one is never made.
TEST(GroupCommitQueue, ARecordMadeInPlaceIsFilledOnceAndARefusedOneNever) {
  struct Rec {
    int value = -1;
  };
  GroupCommitQueue<std::variant<int, Rec>> q(1, 8);
  int fills = 0;
  ASSERT_TRUE(q.push_made<Rec>(
      [&](Rec& r) {
        ++fills;
        EXPECT_EQ(r.value, -1);  // a default record
        r.value = 7;
      },
      {}, false));
  EXPECT_FALSE(q.push_made<Rec>([&](Rec&) { ++fills; }, {}, false));  // full
  EXPECT_EQ(fills, 1);
  EXPECT_EQ(q.stats().queue_full, 1u);
  std::vector<int> seen;
  q.start([&](const GroupCommitQueue<std::variant<int, Rec>>::Batch& batch) {
    for (const auto& item : batch) seen.push_back(std::get<Rec>(item.record).value);
    GroupCommitQueue<std::variant<int, Rec>>::BatchOutcome out;
    out.results.assign(batch.size(), Result<Ok>(Ok{}));
    return out;
  });
  q.flush();
  EXPECT_EQ(seen, std::vector<int>{7});
}

}  // namespace
}  // namespace bw::store
