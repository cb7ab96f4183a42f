// The group-commit queue (store/group_commit.h) on its own: pushes from several threads, woken
// or deferred, each committed once in batches of at most max_batch; a full queue refuses.
#include "store/group_commit.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
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

// After a batch above the kept room, the vector that held it comes back as the queue with the
// kept room (2,048 records) made already: a queue of 2,000 records then moves none of them on
// its way up (it moved ~2,000 when it started empty).
TEST(GroupCommitQueue, AQueueAfterALargeBatchStartsWithTheKeptRoom) {
  static std::atomic<int> moves{0};
  struct Counted {
    int v = 0;
    explicit Counted(int x) : v(x) {}
    Counted(Counted&& o) noexcept : v(o.v) { moves.fetch_add(1); }
    Counted& operator=(Counted&& o) noexcept {
      v = o.v;
      moves.fetch_add(1);
      return *this;
    }
  };
  using Q = GroupCommitQueue<Counted>;
  Q q(1 << 16, 1 << 16);
  std::mutex mu;
  std::condition_variable cv;
  int entered = 0, released = 0;
  q.start([&](const Q::Batch& batch) {
    std::unique_lock lock(mu);
    const int me = ++entered;
    cv.notify_all();
    cv.wait(lock, [&] { return released >= me; });
    Q::BatchOutcome out;
    out.results.assign(batch.size(), Result<Ok>(Ok{}));
    return out;
  });
  // Holds the writer inside its `n`th commit until release(n).
  const auto wait_entered = [&](int n) {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return entered >= n; });
  };
  const auto release = [&](int n) {
    {
      std::lock_guard lock(mu);
      released = n;
    }
    cv.notify_all();
  };
  const auto push_n = [&](int n) {
    for (int i = 0; i < n; ++i) ASSERT_TRUE(q.push(Counted(i), {}, true));
  };
  push_n(1);
  wait_entered(1);  // the writer holds 1 record; 2,100 pile up behind it
  push_n(2'100);
  release(1);
  wait_entered(2);  // the writer holds the 2,100 (more than the kept room)
  push_n(2'000);
  release(2);
  wait_entered(3);  // the writer holds those 2,000; the queue is the 2,100's vector
  moves.store(0);
  push_n(2'000);
  EXPECT_EQ(moves.load(), 2'000);  // each record once, into the queue: no reallocation
  release(1 << 20);
  q.flush();
}

}  // namespace
}  // namespace bw::store
