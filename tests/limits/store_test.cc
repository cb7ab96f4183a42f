#include "limits/memory_limit_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"

namespace bw::limits {
namespace {

constexpr Nanos kT0 = 1000 * kNanosPerSecond;
constexpr Nanos kMs = kNanosPerMilli;

LimitSpec spec(std::string name, std::int64_t rate, std::int64_t burst = 0,
               Algorithm a = Algorithm::kGcra, Period period = Period::kSecond) {
  LimitSpec s;
  s.name = std::move(name);
  s.rate = rate;
  s.burst = burst;
  s.algorithm = a;
  s.period = period;
  return s;
}

MemoryLimitStoreOptions opts(std::size_t shards = 64, std::size_t max_entries = 1'000'000) {
  MemoryLimitStoreOptions o;
  o.shards = shards;
  o.max_entries = max_entries;
  o.hash_seed = 42;
  return o;
}

TEST(MemoryLimitStore, AllOrNothingAcrossTwoLimits) {
  MemoryLimitStore store(opts());
  const LimitSpec a = spec("a", 5), b = spec("b", 3);
  const LimitCheck both[] = {{"a:k", &a, 1}, {"b:k", &b, 1}};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store.check_and_consume(both, kT0).allowed);
  const BatchResult r = store.check_and_consume(both, kT0);
  EXPECT_FALSE(r.allowed);
  EXPECT_TRUE(r.results[0].decision.allowed);
  EXPECT_FALSE(r.results[0].consumed);
  EXPECT_EQ(r.results[0].decision.remaining, 2);  // unchanged state, not "after"
  EXPECT_FALSE(r.results[1].decision.allowed);
  EXPECT_EQ(r.results[1].decision.retry_after, 333'333'334);
  // "a" was not charged by the rejected batch: two more fit on it alone.
  const LimitCheck only_a[] = {{"a:k", &a, 1}};
  EXPECT_TRUE(store.check_and_consume(only_a, kT0).allowed);
  EXPECT_TRUE(store.check_and_consume(only_a, kT0).allowed);
  EXPECT_FALSE(store.check_and_consume(only_a, kT0).allowed);
}

// The limits of one owner share a shard (the key's part after its second separator picks it),
// but each keeps its own bucket, also when only the limit's name differs; a key without
// separators is its own owner.
TEST(MemoryLimitStore, LimitsOfOneOwnerKeepTheirOwnBuckets) {
  MemoryLimitStore store(opts());
  const LimitSpec a = spec("a", 2), b = spec("b", 1);
  const std::string ka = std::string("p\x1f") + "a\x1fkey\x1fk1";
  const std::string kb = std::string("p\x1f") + "b\x1fkey\x1fk1";
  const std::string other = std::string("p\x1f") + "a\x1fkey\x1fk2";
  const LimitCheck both[] = {{ka, &a, 1}, {kb, &b, 1}};
  EXPECT_TRUE(store.check_and_consume(both, kT0).allowed);
  EXPECT_FALSE(store.check_and_consume(both, kT0).allowed);  // "b" is spent
  const LimitCheck only_a[] = {{ka, &a, 1}};
  EXPECT_TRUE(store.check_and_consume(only_a, kT0).allowed);  // "a" had one left
  EXPECT_FALSE(store.check_and_consume(only_a, kT0).allowed);
  const LimitCheck a_of_other[] = {{other, &a, 1}, {"plain", &a, 1}};
  EXPECT_TRUE(store.check_and_consume(a_of_other, kT0).allowed);
  EXPECT_TRUE(store.check_and_consume(a_of_other, kT0).allowed);
  EXPECT_FALSE(store.check_and_consume(a_of_other, kT0).allowed);
  EXPECT_EQ(store.size(), 4u);
}

TEST(MemoryLimitStore, DigestNamesTheKeysBucket) {
  MemoryLimitStore store(opts()), other(opts());  // the same seed: a digest names its store
  const LimitSpec a = spec("a", 2);
  KeyDigest d;
  ASSERT_TRUE(store.digest("a:k", d));
  const LimitCheck by_digest[] = {{"a:k", &a, 1, &d}};
  const LimitCheck by_key[] = {{"a:k", &a, 1}};
  EXPECT_TRUE(store.check_and_consume(by_digest, kT0).allowed);
  EXPECT_TRUE(store.check_and_consume(by_key, kT0).allowed);
  EXPECT_FALSE(store.check_and_consume(by_digest, kT0).allowed);  // one bucket
  EXPECT_EQ(store.size(), 1u);
  AdjustSpec refund(a);
  refund.digest = &d;
  store.adjust("a:k", refund, -1, kT0);
  EXPECT_TRUE(store.check_and_consume(by_key, kT0).allowed);
  EXPECT_FALSE(store.check_and_consume(by_key, kT0).allowed);
  // Another store's digest is ignored: `other` digests "a:k" itself.
  KeyDigest foreign;
  ASSERT_TRUE(store.digest("b:elsewhere", foreign));
  const LimitCheck mislabelled[] = {{"a:k", &a, 1, &foreign}};
  EXPECT_TRUE(other.check_and_consume(mislabelled, kT0).allowed);
  EXPECT_TRUE(other.check_and_consume(mislabelled, kT0).allowed);
  EXPECT_FALSE(other.check_and_consume(by_key, kT0).allowed);
}

TEST(MemoryLimitStore, RejectedRequestLeavesNoTrace) {
  MemoryLimitStore store(opts());
  const LimitSpec tight = spec("tight", 1), loose = spec("loose", 100);
  const LimitCheck first[] = {{"tight:x", &tight, 1}};
  ASSERT_TRUE(store.check_and_consume(first, kT0).allowed);
  EXPECT_EQ(store.size(), 1u);
  const LimitCheck batch[] = {{"loose:new", &loose, 1}, {"tight:x", &tight, 1}};
  EXPECT_FALSE(store.check_and_consume(batch, kT0).allowed);
  EXPECT_EQ(store.size(), 1u);  // no bucket was created for "loose:new"
}

TEST(MemoryLimitStore, ShadowNeverBlocksAndSimulatesEnforcement) {
  MemoryLimitStore store(opts());
  LimitSpec shadow = spec("shadow", 2);
  shadow.mode = Mode::kShadow;
  const LimitSpec real = spec("real", 100);
  const LimitCheck c[] = {{"s", &shadow, 1}, {"r", &real, 1}};
  int shadow_rejects = 0;
  for (int i = 0; i < 5; ++i) {
    const BatchResult r = store.check_and_consume(c, kT0);
    ASSERT_TRUE(r.allowed);
    shadow_rejects += !r.results[0].decision.allowed;
    EXPECT_EQ(r.results[0].consumed, r.results[0].decision.allowed);
  }
  EXPECT_EQ(shadow_rejects, 3);
  // Shadow buckets hold exactly what enforcement would have admitted.
  EXPECT_TRUE(store.check_and_consume(c, kT0 + 500 * kMs).results[0].decision.allowed);
  EXPECT_FALSE(store.check_and_consume(c, kT0 + 500 * kMs).results[0].decision.allowed);
}

TEST(MemoryLimitStore, DuplicateKeysInOneBatchSeeEachOther) {
  MemoryLimitStore store(opts());
  const LimitSpec a = spec("a", 3);
  const LimitCheck c[] = {{"k", &a, 2}, {"k", &a, 2}};
  const BatchResult r = store.check_and_consume(c, kT0);
  EXPECT_FALSE(r.allowed);
  const LimitCheck one[] = {{"k", &a, 3}};
  EXPECT_TRUE(store.check_and_consume(one, kT0).allowed);
}

TEST(MemoryLimitStore, AdjustRefundsAndCharges) {
  MemoryLimitStore store(opts());
  LimitSpec tpm = spec("tpm", 1000, 0, Algorithm::kGcra, Period::kMinute);
  tpm.unit = Unit::kTokens;
  const LimitCheck c[] = {{"tpm:k", &tpm, 800}};
  ASSERT_TRUE(store.check_and_consume(c, kT0).allowed);
  EXPECT_FALSE(store.check_and_consume(c, kT0).allowed);
  store.adjust("tpm:k", tpm, -700, kT0);  // used 100 of the 800 reserved
  EXPECT_TRUE(store.check_and_consume(c, kT0).allowed);
  store.adjust("tpm:k", tpm, -5000, kT0);  // never below empty
  EXPECT_EQ(store.size(), 0u);             // an empty bucket is dropped at once
  store.adjust("tpm:k", tpm, 1100, kT0);   // post-paid usage above capacity: debt
  const BatchResult r = store.check_and_consume(std::span(c, 1), kT0);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.results[0].decision.retry_after, 54 * kNanosPerSecond);  // 900 tokens at 1000/min
}

TEST(MemoryLimitStore, StateSurvivesReloadAndAlgorithmChangeResets) {
  MemoryLimitStore store(opts());
  auto v1 = std::make_unique<LimitSpec>(spec("rps", 2));
  const LimitCheck c1[] = {{"rps:k", v1.get(), 2}};
  ASSERT_TRUE(store.check_and_consume(c1, kT0).allowed);
  v1.reset();
  const LimitSpec v2 = spec("rps", 2);  // a new config object, same limit
  const LimitCheck c2[] = {{"rps:k", &v2, 1}};
  EXPECT_FALSE(store.check_and_consume(c2, kT0).allowed);
  const LimitSpec v3 = spec("rps", 4);  // raised limit applies to the existing usage
  const LimitCheck c3[] = {{"rps:k", &v3, 2}};
  EXPECT_TRUE(store.check_and_consume(c3, kT0).allowed);
  const LimitSpec v4 = spec("rps", 4, 0, Algorithm::kSlidingWindow);
  const LimitCheck c4[] = {{"rps:k", &v4, 4}};
  EXPECT_TRUE(store.check_and_consume(c4, kT0).allowed);
}

TEST(MemoryLimitStore, IdleBucketsAreEvicted) {
  MemoryLimitStore store(opts());
  const LimitSpec s = spec("s", 1);
  for (int i = 0; i < 10'000; ++i) {
    const std::string key = "old" + std::to_string(i);
    const LimitCheck c[] = {{key, &s, 1}};
    ASSERT_TRUE(store.check_and_consume(c, kT0).allowed);
  }
  for (int i = 0; i < 10'000; ++i) {
    const std::string key = "new" + std::to_string(i);
    const LimitCheck c[] = {{key, &s, 1}};
    ASSERT_TRUE(store.check_and_consume(c, kT0 + 2 * kNanosPerSecond).allowed);
  }
  EXPECT_EQ(store.size(), 20'000u);
  EXPECT_EQ(store.evict_idle(kT0 + 2 * kNanosPerSecond), 10'000u);
  EXPECT_EQ(store.size(), 10'000u);
  EXPECT_EQ(store.stats().evicted, 10'000u);
}

TEST(MemoryLimitStore, SelfSweepKeepsMemoryBoundedWithoutATimer) {
  MemoryLimitStore store(opts(1));
  const LimitSpec s = spec("s", 1);
  std::size_t peak = 0;
  for (int round = 0; round < 30; ++round) {
    for (int i = 0; i < 3000; ++i) {
      const std::string key = std::to_string(round) + ":" + std::to_string(i);
      const LimitCheck c[] = {{key, &s, 1}};
      ASSERT_TRUE(store.check_and_consume(c, kT0 + round * 2 * kNanosPerSecond).allowed);
      peak = std::max(peak, store.size());
    }
  }
  EXPECT_LE(peak, 2u * 3000u + 3000u);  // live keys are 3000; the map never runs away
  EXPECT_GE(store.stats().evicted, 25u * 3000u);
}

TEST(MemoryLimitStore, CapRejectPolicy) {
  MemoryLimitStoreOptions o = opts(1, 100);
  o.overflow = OverflowPolicy::kReject;
  MemoryLimitStore store(o);
  const LimitSpec s = spec("s", 1);
  for (int i = 0; i < 100; ++i) {
    const std::string key = "k" + std::to_string(i);
    const LimitCheck c[] = {{key, &s, 1}};
    ASSERT_TRUE(store.check_and_consume(c, kT0).allowed);
  }
  const LimitCheck extra[] = {{"extra", &s, 1}};
  BatchResult r = store.check_and_consume(extra, kT0);
  EXPECT_FALSE(r.allowed);
  EXPECT_TRUE(r.overflow);
  EXPECT_EQ(r.retry_after, kNanosPerSecond);
  EXPECT_EQ(store.size(), 100u);
  EXPECT_EQ(store.stats().overflows, 1u);
  // Existing buckets keep working and are still enforced.
  const LimitCheck old[] = {{"k1", &s, 1}};
  EXPECT_FALSE(store.check_and_consume(old, kT0).allowed);
  // Once the old buckets are idle, the full shard sweeps and makes room.
  r = store.check_and_consume(extra, kT0 + 2 * kNanosPerSecond);
  EXPECT_TRUE(r.allowed);
  EXPECT_EQ(store.size(), 1u);
}

TEST(MemoryLimitStore, CapAllowUntrackedPolicy) {
  MemoryLimitStore store(opts(1, 10));
  const LimitSpec s = spec("s", 1);
  for (int i = 0; i < 10; ++i) {
    const std::string key = "k" + std::to_string(i);
    const LimitCheck c[] = {{key, &s, 1}};
    ASSERT_TRUE(store.check_and_consume(c, kT0).allowed);
  }
  const LimitCheck extra[] = {{"extra", &s, 1}};
  EXPECT_TRUE(store.check_and_consume(extra, kT0).allowed);
  EXPECT_TRUE(store.check_and_consume(extra, kT0).allowed);  // untracked: fails open
  EXPECT_EQ(store.size(), 10u);
  EXPECT_EQ(store.stats().overflows, 2u);
}

// T threads hammer one limit while the fake clock advances; admitted == exact allowance.
TEST(MemoryLimitStore, ConcurrentHammerAdmitsExactAllowance) {
  MemoryLimitStore store(opts());
  FakeClock clock(kT0);
  const LimitSpec s = spec("hot", 100, 20);  // capacity 120, one unit per 10 ms
  constexpr int kThreads = 4, kSteps = 300;
  constexpr Nanos kStep = 7 * kMs;  // < one unit: the fraction must carry exactly
  std::atomic<std::int64_t> admitted{0};
  std::atomic<Nanos> rejected_at{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      const LimitCheck c[] = {{"hot:global", &s, 1}};
      while (!done.load(std::memory_order_acquire)) {
        const Nanos now = clock.now();
        if (store.check_and_consume(c, now).allowed) {
          admitted.fetch_add(1, std::memory_order_relaxed);
        } else {
          rejected_at.store(now, std::memory_order_release);
        }
      }
    });
  }
  // Advance only once the bucket has been drained at the current time, so no refill is lost.
  for (int step = 0; step <= kSteps; ++step) {
    while (rejected_at.load(std::memory_order_acquire) != clock.now()) std::this_thread::yield();
    if (step < kSteps) clock.advance(kStep);
  }
  done.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();
  EXPECT_EQ(admitted.load(), 120 + (kSteps * kStep) / (10 * kMs));
}

TEST(MemoryLimitStore, ConcurrentBatchesOnOverlappingShardsDoNotDeadlock) {
  MemoryLimitStore store(opts(4));
  const LimitSpec s = spec("s", 1'000'000'000);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::string> keys;
      for (int k = 0; k < 6; ++k) keys.push_back("k" + std::to_string((k * 7 + t) % 11));
      std::vector<LimitCheck> c;
      for (auto& k : keys) c.push_back({k, &s, 1});
      for (int i = 0; i < 2000; ++i) ASSERT_TRUE(store.check_and_consume(c, kT0).allowed);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(store.size(), 11u);
}

}  // namespace
}  // namespace bw::limits
