#include "limits/memory_limit_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <random>
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
  EXPECT_EQ(store.size(), 1u);             // an emptied bucket is kept for the sweep
  EXPECT_EQ(store.evict_idle(kT0), 1u);
  store.adjust("tpm:k", tpm, 1100, kT0);  // post-paid usage above capacity: debt
  const BatchResult r = store.check_and_consume(std::span(c, 1), kT0);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.results[0].decision.retry_after, 54 * kNanosPerSecond);  // 900 tokens at 1000/min
}

// A refund that empties a bucket resets it in place: it then decides as a fresh bucket (also for
// a reading older than the refund's, decided at the shard's latest time as the fresh store's is),
// the shard's prepared batches keep their buckets, and the sweep deletes it.
TEST(MemoryLimitStore, RefundThatEmptiesABucketKeepsItFresh) {
  LimitSpec tpm = spec("tpm", 1000, 0, Algorithm::kGcra, Period::kMinute);
  tpm.unit = Unit::kTokens;
  LimitSpec tb = spec("tb", 1000, 0, Algorithm::kTokenBucket, Period::kMinute);
  tb.unit = Unit::kTokens;
  LimitSpec sw = spec("sw", 1000, 0, Algorithm::kSlidingWindow, Period::kMinute);
  sw.unit = Unit::kTokens;
  for (const LimitSpec* s : {&tpm, &tb, &sw}) {
    MemoryLimitStore store(opts()), fresh(opts());
    const std::string key = "p\x1f" + s->name + "\x1fkey\x1fk";
    const LimitCheck checks[] = {{key, s, 0}};
    const auto prepared = store.prepare(checks);
    ASSERT_NE(prepared, nullptr);
    ASSERT_TRUE(store.check_prepared(*prepared, 800, kT0).allowed);
    // Its bucket found (the general batch creates a sliding window): looked up no more.
    ASSERT_TRUE(store.check_prepared(*prepared, 0, kT0).allowed);
    const std::uint64_t looked_up = store.stats().prepared_lookups;
    store.adjust(key, *s, -800, kT0 + kMs);
    fresh.adjust(key, *s, -800, kT0 + kMs);  // no bucket: only the shard's time
    EXPECT_EQ(store.size(), 1u) << s->name;
    EXPECT_EQ(fresh.size(), 0u) << s->name;
    for (const Nanos at : {kT0 - 10 * kNanosPerSecond, kT0 + 2 * kMs}) {
      const LimitCheck c[] = {{key, s, 999}};
      const BatchResult a = store.check_and_consume(c, at);
      const BatchResult b = fresh.check_and_consume(c, at);
      EXPECT_TRUE(a.allowed) << s->name;
      EXPECT_EQ(a.results[0].decision.remaining, b.results[0].decision.remaining) << s->name;
      EXPECT_EQ(a.results[0].decision.reset_after, b.results[0].decision.reset_after) << s->name;
      store.adjust(key, *s, -999, at);
      fresh.adjust(key, *s, -999, at);
    }
    ASSERT_TRUE(store.check_prepared(*prepared, 10, kT0 + 3 * kMs).allowed);
    EXPECT_EQ(store.stats().prepared_lookups, looked_up) << s->name;
    // A refund after the charge has drained finds the bucket empty, and leaves it fresh too: its
    // whole capacity is there for a clock that went back to the charge.
    store.adjust(key, *s, -5, kT0 + 2 * 60 * kNanosPerSecond);
    EXPECT_EQ(store.size(), 1u) << s->name;
    const LimitCheck whole[] = {{key, s, 1000}};
    EXPECT_TRUE(store.check_and_consume(whole, kT0 + 3 * kMs).allowed) << s->name;
    store.adjust(key, *s, -1000, kT0 + 3 * kMs);
    EXPECT_EQ(store.evict_idle(kT0 + 3 * kMs), 1u) << s->name;
    EXPECT_EQ(store.size(), 0u) << s->name;
    ASSERT_TRUE(store.check_prepared(*prepared, 10, kT0 + 4 * kMs).allowed);
    EXPECT_EQ(store.stats().prepared_lookups, looked_up + 1) << s->name;  // after the sweep
  }
}

// A bucket drained for the limit that charged it may hold usage for the same limit reloaded: a
// sliding window whose period grew keeps its usage in the current slot. A refund then takes its
// share off that usage, not the whole bucket.
TEST(MemoryLimitStore, RefundAfterAReloadEvaluatesTheBucket) {
  MemoryLimitStore store(opts());
  const LimitSpec second = spec("w", 10, 2, Algorithm::kSlidingWindow, Period::kSecond);
  const LimitSpec minute = spec("w", 10, 2, Algorithm::kSlidingWindow, Period::kMinute);
  const LimitCheck charge[] = {{"w:k", &second, 6}};
  ASSERT_TRUE(store.check_and_consume(charge, kT0).allowed);
  const Nanos later = kT0 + 2 * kNanosPerSecond;  // drained for the one-second window
  store.adjust("w:k", minute, -1, later);
  const LimitCheck look[] = {{"w:k", &minute, 0}};
  const BatchResult r = store.check_and_consume(look, later);
  EXPECT_EQ(r.results[0].decision.remaining, 12 - 5);
}

// In a full shard a refund that empties a bucket deletes it at once: the room goes to new
// buckets.
TEST(MemoryLimitStore, RefundThatEmptiesABucketInAFullShardDeletesIt) {
  MemoryLimitStoreOptions o = opts(1, 2);
  o.overflow = OverflowPolicy::kReject;
  MemoryLimitStore store(o);
  LimitSpec tpm = spec("tpm", 1000, 0, Algorithm::kGcra, Period::kMinute);
  tpm.unit = Unit::kTokens;
  const LimitCheck a[] = {{"a", &tpm, 100}};
  const LimitCheck b[] = {{"b", &tpm, 100}};
  const LimitCheck c[] = {{"c", &tpm, 100}};
  ASSERT_TRUE(store.check_and_consume(a, kT0).allowed);
  store.adjust("a", tpm, -100, kT0);  // room left: kept
  EXPECT_EQ(store.size(), 1u);
  ASSERT_TRUE(store.check_and_consume(a, kT0).allowed);
  ASSERT_TRUE(store.check_and_consume(b, kT0).allowed);
  EXPECT_TRUE(store.check_and_consume(c, kT0).overflow);
  EXPECT_EQ(store.stats().evicted, 0u);
  store.adjust("b", tpm, -100, kT0);  // full: deleted
  EXPECT_EQ(store.size(), 1u);
  EXPECT_EQ(store.stats().evicted, 1u);
  EXPECT_TRUE(store.check_and_consume(c, kT0).allowed);
  EXPECT_EQ(store.size(), 2u);
}

// A batch's bucket handle takes an adjust straight to the bucket the check charged; once the
// shard has deleted a bucket (a sweep, or a refund in a full shard), the handle is not trusted and
// the key is looked up (with the sanitizers, a deleted bucket reached through it would show).
TEST(MemoryLimitStore, BucketHandleReachesTheChargedBucketUntilTheShardDeletesOne) {
  LimitSpec tpm = spec("tpm", 1000, 0, Algorithm::kGcra, Period::kMinute);
  tpm.unit = Unit::kTokens;
  const LimitSpec rps = spec("rps", 5);
  MemoryLimitStore store(opts(1)), other(opts(1));
  const LimitCheck checks[] = {{"p\x1ftpm\x1fkey\x1fk", &tpm, 0},
                               {"p\x1frps\x1fkey\x1fk", &rps, 0}};
  const auto prepared = store.prepare(checks);
  ASSERT_NE(prepared, nullptr);
  const BatchResult r = store.check_prepared(*prepared, 800, kT0);
  ASSERT_TRUE(r.allowed);
  ASSERT_NE(r.results[0].bucket, nullptr);
  ASSERT_NE(r.results[1].bucket, nullptr);
  EXPECT_NE(r.results[0].bucket, r.results[1].bucket);
  const BucketHandle handle = r.bucket_of(0);
  AdjustSpec refund(tpm);
  refund.bucket = &handle;
  store.adjust(checks[0].key, refund, -700, kT0);  // 100 of the 800 used
  const LimitCheck look[] = {{checks[0].key, &tpm, 0}};
  EXPECT_EQ(store.check_and_consume(look, kT0).results[0].decision.remaining, 900);
  // Another store ignores the handle: it has no such bucket, and a refund leaves none.
  other.adjust(checks[0].key, refund, -100, kT0);
  EXPECT_EQ(other.size(), 0u);
  // The sweep deletes both buckets: the handle is stale, and a charge through it makes a new
  // bucket where the key looks (not in the deleted one).
  ASSERT_EQ(store.evict_idle(kT0 + 3600 * kNanosPerSecond), 2u);
  store.adjust(checks[0].key, refund, 300, kT0 + 3600 * kNanosPerSecond);
  EXPECT_EQ(store.size(), 1u);
  EXPECT_EQ(
      store.check_and_consume(look, kT0 + 3600 * kNanosPerSecond).results[0].decision.remaining,
      700);
  // A batch that the general path decides gives no handle.
  const LimitCheck twice[] = {{checks[1].key, &rps, 1}, {checks[1].key, &rps, 1}};
  const BatchResult g = store.check_and_consume(twice, kT0 + 3600 * kNanosPerSecond);
  ASSERT_TRUE(g.allowed);
  EXPECT_EQ(g.bucket_of(0).maker, 0u);
}

// Two threads' clock readings can reach a shard's lock in the other order: the later reading
// decides first. The older one is then decided at the shard's latest time, never before it: what
// has drained by then is drained for it too (a GCRA decided at the older reading would refuse, or
// hold, a request that fits), and the wait it gets is counted from its own reading. Every
// algorithm, by every path (the general batch, the one-shard batch, prepared checks).
TEST(MemoryLimitStore, AnOlderReadingIsDecidedAtTheShardsLatestTime) {
  constexpr Nanos kLate = 20 * kNanosPerMicro;
  const Nanos later = kT0, older = kT0 - kLate;
  for (const Algorithm a : {Algorithm::kGcra, Algorithm::kTokenBucket, Algorithm::kSlidingWindow}) {
    for (int path = 0; path < 3; ++path) {
      SCOPED_TRACE(testing::Message() << "algorithm " << static_cast<int>(a) << ", path " << path);
      MemoryLimitStore store(opts());
      const LimitSpec rps = spec("rps", 2, 0, a);  // two at once, one more every 500 ms
      const std::string key = "p\x1frps\x1fkey\x1fk";
      KeyDigest d;
      ASSERT_TRUE(store.digest(key, d));
      const LimitCheck checks[] = {{key, &rps, 1, path == 1 ? &d : nullptr}};
      const auto prepared = store.prepare(checks);
      ASSERT_NE(prepared, nullptr);
      auto decide = [&](Nanos now) {
        return path == 2 ? store.check_prepared(*prepared, 0, now)
                         : store.check_and_consume(checks, now);
      };
      ASSERT_TRUE(decide(later).allowed);
      const BatchResult second = decide(older);
      EXPECT_TRUE(second.allowed);
      EXPECT_EQ(second.results[0].decision.retry_after, 0);
      EXPECT_EQ(second.results[0].decision.remaining, 0);
      const BatchResult third = decide(older);
      ASSERT_FALSE(third.allowed);
      // It passes when a unit has drained after the later decision: a GCRA or token bucket 500
      // ms after it, a sliding window when its slot of 50 ms leaves the window of one second.
      const Nanos passes = a == Algorithm::kSlidingWindow ? later + 1050 * kMs : later + 500 * kMs;
      EXPECT_EQ(third.results[0].decision.retry_after, passes - older);
      // Nothing was charged meanwhile: the next unit passes then, not before.
      EXPECT_FALSE(decide(passes - 1).allowed);
      EXPECT_TRUE(decide(passes).allowed);
    }
  }
}

// A refund or a charge after the fact from an older reading is taken at the shard's latest time
// too: charged at that time, a GCRA that had drained by then holds the charge from then on.
TEST(MemoryLimitStore, AnAdjustFromAnOlderReadingIsTakenAtTheShardsLatestTime) {
  MemoryLimitStore store(opts(1));
  const LimitSpec rps = spec("rps", 2);
  const LimitCheck first[] = {{"p\x1frps\x1fkey\x1fk", &rps, 1}};
  const LimitCheck other[] = {{"p\x1frps\x1fkey\x1fother", &rps, 1}};
  ASSERT_TRUE(store.check_and_consume(first, kT0).allowed);              // drained at +500 ms
  ASSERT_TRUE(store.check_and_consume(other, kT0 + 600 * kMs).allowed);  // the shard's time
  store.adjust(first[0].key, rps, 1, kT0 + 400 * kMs);                   // one more unit
  // Charged at +600 ms on an empty bucket: one unit until +1100 ms (at +400 ms, with 100 ms
  // of the first unit left, it would have lasted until +1000 ms).
  const LimitCheck look[] = {{first[0].key, &rps, 0}};
  const BatchResult r = store.check_and_consume(look, kT0 + 700 * kMs);
  EXPECT_EQ(r.results[0].decision.reset_after, 400 * kMs);
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

// A sliding window that a batch checks once is decided and charged where the store keeps it (no
// copy of its ring in and out). The store's answers are held to the contract computed on copies
// of plain states: a batch of a key's daily window, its per-second GCRA and sometimes a tight
// limit, a shadow window or the same window twice; every decision, every rejected batch left
// without a trace, and refunds in between.
TEST(MemoryLimitStore, SlidingWindowChargedInPlaceKeepsTheBatchContract) {
  MemoryLimitStore store(opts(4));
  LimitSpec daily = spec("daily", 40, 0, Algorithm::kSlidingWindow, Period::kMinute);
  LimitSpec rps = spec("rps", 6, 2);
  LimitSpec tight = spec("tight", 1, 0, Algorithm::kGcra, Period::kMinute);
  LimitSpec shadow = spec("shadow", 25, 0, Algorithm::kSlidingWindow, Period::kMinute);
  shadow.mode = Mode::kShadow;
  struct Model {
    std::map<std::string, SlidingWindowState> sw;
    std::map<std::string, GcraState> gcra;
  } model;
  auto decide = [](Model& m, const LimitCheck& c, Nanos now, bool charge) {
    const BucketParams p = c.spec->params();
    const std::string k(c.key);
    if (c.spec->algorithm == Algorithm::kSlidingWindow) {
      SlidingWindowState& st = m.sw[k];
      return charge ? SlidingWindow::consume(st, p, c.cost, now)
                    : SlidingWindow::check(st, p, c.cost, now);
    }
    GcraState& st = m.gcra[k];
    return charge ? Gcra::consume(st, p, c.cost, now) : Gcra::check(st, p, c.cost, now);
  };
  std::mt19937_64 rng(99);
  Nanos now = kT0;
  int allowed = 0, refused = 0;
  for (int step = 0; step < 4000; ++step) {
    now += static_cast<Nanos>(rng() % (400 * kMs));
    const std::string owner = "k" + std::to_string(rng() % 3);
    const std::string kd =
        "p\x1f"
        "daily\x1f"
        "key\x1f" +
        owner;
    const std::string kr =
        "p\x1f"
        "rps\x1f"
        "key\x1f" +
        owner;
    const std::string kt =
        "p\x1f"
        "tight\x1f"
        "key\x1f" +
        owner;
    const std::string ks =
        "p\x1f"
        "shadow\x1f"
        "key\x1f" +
        owner;
    std::vector<LimitCheck> batch = {{kd, &daily, 1 + static_cast<std::int64_t>(rng() % 3)},
                                     {kr, &rps, 1}};
    const auto extra = rng() % 10;
    if (extra == 0) batch.push_back({kt, &tight, 1});
    if (extra == 1) batch.push_back({ks, &shadow, 2});
    if (extra == 2) batch.push_back({kd, &daily, 1});  // the same ring twice: the copy
    if (extra == 3) std::swap(batch[0], batch[1]);

    // The contract on copies: every check in order on the batch's copy; kept if all enforced
    // ones pass; else nothing is kept and the passing ones report the state as it is.
    Model tentative = model;
    std::vector<Decision> want;
    bool ok = true;
    for (const LimitCheck& c : batch) {
      want.push_back(decide(tentative, c, now, true));
      if (!want.back().allowed && c.spec->mode == Mode::kEnforce) ok = false;
    }
    if (ok) {
      model = tentative;
    } else {
      Model untouched = model;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (!want[i].allowed) continue;
        const Decision now_state =
            decide(untouched, LimitCheck{batch[i].key, batch[i].spec, 0}, now, false);
        want[i].remaining = now_state.remaining;
        want[i].reset_after = now_state.reset_after;
      }
    }
    const BatchResult got = store.check_and_consume(batch, now);
    ASSERT_EQ(got.allowed, ok) << step;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const Decision& g = got.results[i].decision;
      ASSERT_EQ(g.allowed, want[i].allowed) << step << "/" << i;
      ASSERT_EQ(g.remaining, want[i].remaining) << step << "/" << i;
      ASSERT_EQ(g.retry_after, want[i].retry_after) << step << "/" << i;
      ASSERT_EQ(g.reset_after, want[i].reset_after) << step << "/" << i;
      ASSERT_EQ(g.limit, want[i].limit) << step << "/" << i;
    }
    (ok ? allowed : refused) += 1;
    if (rng() % 8 == 0) {  // a refund or a charge after the fact, on the daily ring
      const std::int64_t delta = static_cast<std::int64_t>(rng() % 5) - 3;
      store.adjust(kd, daily, delta, now);
      if (delta != 0) SlidingWindow::adjust(model.sw[kd], daily.params(), delta, now);
    }
  }
  EXPECT_GT(allowed, 1000);
  EXPECT_GT(refused, 200);
}

}  // namespace bw::limits

namespace bw::limits {
namespace {

// The same answer from two stores: the batch's outcome and every check's decision.
void same_batch(const BatchResult& a, const BatchResult& b, int step) {
  ASSERT_EQ(a.allowed, b.allowed) << step;
  ASSERT_EQ(a.overflow, b.overflow) << step;
  ASSERT_EQ(a.retry_after, b.retry_after) << step;
  ASSERT_EQ(a.unavailable, b.unavailable) << step;
  ASSERT_EQ(a.results.size(), b.results.size()) << step;
  for (std::size_t i = 0; i < a.results.size(); ++i) {
    const Decision& x = a.results[i].decision;
    const Decision& y = b.results[i].decision;
    ASSERT_EQ(a.results[i].consumed, b.results[i].consumed) << step << "/" << i;
    ASSERT_EQ(x.allowed, y.allowed) << step << "/" << i;
    ASSERT_EQ(x.limit, y.limit) << step << "/" << i;
    ASSERT_EQ(x.remaining, y.remaining) << step << "/" << i;
    ASSERT_EQ(x.retry_after, y.retry_after) << step << "/" << i;
    ASSERT_EQ(x.reset_after, y.reset_after) << step << "/" << i;
  }
}

// The one-shard path (every check with the store's digest, distinct stored buckets of one shard)
// is held to the general batch: two stores with the same seed get the same random batches, one
// with digests (the one-shard path whenever the batch is such a one), the other without (always
// the general path). Every answer, every later state (seen through later answers), the entries,
// evictions and overflows must be the same: GCRA, token bucket and sliding-window limits,
// request and token costs, shadow limits, time going back, reloads that change a limit's rate or
// algorithm, refunds and charges after the fact, sweeps, and a cap.
void one_shard_matches_general(std::uint64_t seed, std::size_t max_entries, OverflowPolicy overflow,
                               std::uint64_t min_one_shard) {
  MemoryLimitStoreOptions o = opts(4, max_entries);
  o.overflow = overflow;
  MemoryLimitStore fast(o), general(o), ahead(o);
  // `ahead` decides each batch through prepare/check_prepared, each batch's checks prepared once
  // and kept (with its found entries) until a reload changes a spec: the prepared batches see
  // every deletion and creation of buckets by the other paths (refunds, sweeps, evictions).
  struct Ahead {
    std::vector<std::string> keys;
    std::vector<LimitCheck> checks;
    std::unique_ptr<const PreparedChecks> prepared;
  };
  std::map<std::string, std::unique_ptr<Ahead>> prepared;
  std::uint64_t prepared_batches = 0;
  std::vector<LimitSpec> specs = {
      spec("rps", 5, 2),
      spec("rpm", 40, 0, Algorithm::kGcra, Period::kMinute),
      spec("tpm", 300, 50, Algorithm::kTokenBucket, Period::kMinute),
      spec("daily", 60, 0, Algorithm::kSlidingWindow, Period::kMinute),
      spec("tight", 1, 0, Algorithm::kSlidingWindow, Period::kSecond),
      spec("shadow", 3, 0, Algorithm::kGcra, Period::kSecond),
      spec("shadow-sw", 4, 0, Algorithm::kSlidingWindow, Period::kSecond),
  };
  specs[2].unit = Unit::kTokens;
  specs[5].mode = Mode::kShadow;
  specs[6].mode = Mode::kShadow;
  std::mt19937_64 rng(seed);
  auto key_of = [](const LimitSpec& s, int owner) {
    return "p\x1f" + s.name + "\x1fkey\x1fk" + std::to_string(owner);
  };
  struct Settle {
    std::string key;
    std::size_t spec;
    KeyDigest digest;
    BucketHandle handle;       // from `ahead`'s batch, when it gave one
    BucketHandle fast_handle;  // from `fast`'s batch (the one-shard path's), when it gave one
  };
  std::vector<Settle> in_flight;
  Nanos now = kT0;
  int compared = 0;
  int handled = 0;  // late settlements that had a handle
  for (int step = 0; step < 6000; ++step) {
    const auto dt = rng() % 16;
    if (dt == 0) {
      now -= static_cast<Nanos>(rng() % (2000 * kMs));  // a clock that went back
    } else {
      now += static_cast<Nanos>(rng() % (dt < 12 ? 150 * kMs : 20 * kNanosPerSecond));
    }
    if (rng() % 200 == 0) {  // a reload: a limit's rate, or its algorithm
      LimitSpec& s = specs[rng() % specs.size()];
      if (rng() % 2 == 0) {
        s.rate = 1 + static_cast<std::int64_t>(rng() % 80);
      } else {
        s.algorithm = static_cast<Algorithm>(rng() % 3);
      }
      prepared.clear();  // the runtime prepares a reloaded config's checks afresh
    }
    const int owner = static_cast<int>(rng() % 3);
    std::vector<std::size_t> pick(specs.size());
    for (std::size_t i = 0; i < pick.size(); ++i) pick[i] = i;
    std::shuffle(pick.begin(), pick.end(), rng);
    pick.resize(1 + rng() % 5);
    const auto odd = rng() % 12;
    if (odd == 0) pick.push_back(pick[0]);  // a bucket twice: the general path
    std::vector<std::string> keys;
    keys.reserve(pick.size() + 1);
    for (std::size_t i : pick) keys.push_back(key_of(specs[i], owner));
    if (odd == 1) keys.push_back(key_of(specs[0], (owner + 1) % 3));  // another owner's bucket
    std::vector<KeyDigest> digests(keys.size());
    std::vector<LimitCheck> with, without;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      const LimitSpec& s = specs[i < pick.size() ? pick[i] : 0];
      const std::int64_t cost =
          s.unit == Unit::kTokens ? static_cast<std::int64_t>(rng() % 120) : 1;
      ASSERT_TRUE(fast.digest(keys[i], digests[i]));
      // Now and then a check without its digest: the general path.
      const KeyDigest* d = odd == 2 && i == 0 ? nullptr : &digests[i];
      with.push_back({keys[i], &s, cost, d});
      without.push_back({keys[i], &s, cost, nullptr});
    }
    const BatchResult a = fast.check_and_consume(with, now);
    const BatchResult b = general.check_and_consume(without, now);
    std::string batch;
    std::int64_t token_cost = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      batch += keys[i] + "|";
      if (with[i].spec->unit == Unit::kTokens) token_cost = with[i].cost;
    }
    // Token checks of one batch cost the same (one request's tokens): else the general path.
    bool one_token_cost = true;
    for (const LimitCheck& c : with) {
      one_token_cost = one_token_cost && (c.spec->unit != Unit::kTokens || c.cost == token_cost);
    }
    auto& slot = prepared[batch];
    if (!slot) {
      slot = std::make_unique<Ahead>();
      slot->keys = keys;
      for (std::size_t i = 0; i < keys.size(); ++i) {
        slot->checks.push_back({slot->keys[i], with[i].spec, 0, nullptr});
      }
      slot->prepared = ahead.prepare(slot->checks);
    }
    const BatchResult c =
        slot->prepared && one_token_cost
            ? (++prepared_batches, ahead.check_prepared(*slot->prepared, token_cost, now))
            : ahead.check_and_consume(without, now);
    ASSERT_NO_FATAL_FAILURE(same_batch(a, b, step));
    ASSERT_NO_FATAL_FAILURE(same_batch(c, b, step));
    compared += static_cast<int>(a.results.size());
    if (rng() % 10 == 0) {  // settle: a refund or a charge after the fact
      const std::size_t i = rng() % keys.size();
      const LimitSpec& s = specs[i < pick.size() ? pick[i] : 0];
      const std::int64_t delta = static_cast<std::int64_t>(rng() % 60) - 40;
      AdjustSpec as(s);
      AdjustSpec as_digest(s);
      as_digest.digest = &digests[i];
      // `ahead` through the handle its batch gave (none from the general batch).
      const BucketHandle handle = c.bucket_of(i);
      AdjustSpec as_handle(s);
      as_handle.bucket = &handle;
      fast.adjust(keys[i], as_digest, delta, now);
      general.adjust(keys[i], as, delta, now);
      ahead.adjust(keys[i], as_handle, delta, now);
    }
    // A settlement of an earlier batch, whose charge may have drained since (a refund then
    // finds its bucket empty).
    if (!in_flight.empty() && rng() % 4 == 0) {
      const std::size_t k = rng() % in_flight.size();
      const Settle& late = in_flight[k];
      const std::int64_t delta = static_cast<std::int64_t>(rng() % 70) - 60;
      AdjustSpec as(specs[late.spec]);
      AdjustSpec as_digest(specs[late.spec]);
      as_digest.digest = &late.digest;
      as_digest.bucket = &late.fast_handle;
      // A handle given steps ago: the shard may have deleted buckets since (sweeps, evictions,
      // refunds in a full shard), then the key is looked up.
      AdjustSpec as_handle(specs[late.spec]);
      as_handle.bucket = &late.handle;
      as_handle.digest = rng() % 2 == 0 ? &late.digest : nullptr;
      fast.adjust(late.key, as_digest, delta, now);
      general.adjust(late.key, as, delta, now);
      ahead.adjust(late.key, as_handle, delta, now);
      handled += late.handle.maker != 0 ? 1 : 0;
      in_flight.erase(in_flight.begin() + static_cast<std::ptrdiff_t>(k));
    }
    for (std::size_t i = 0; i < pick.size() && in_flight.size() < 16; ++i) {
      if (rng() % 3 == 0) {
        in_flight.push_back(Settle{keys[i], pick[i], digests[i], c.bucket_of(i), a.bucket_of(i)});
      }
    }
    if (rng() % 300 == 0) {
      const std::size_t evicted = general.evict_idle(now);
      ASSERT_EQ(fast.evict_idle(now), evicted) << step;
      ASSERT_EQ(ahead.evict_idle(now), evicted) << step;
    }
    ASSERT_EQ(fast.size(), general.size()) << step;
    ASSERT_EQ(ahead.size(), general.size()) << step;
  }
  const MemoryLimitStoreStats fs = fast.stats(), gs = general.stats(), as = ahead.stats();
  EXPECT_EQ(fs.entries, gs.entries);
  EXPECT_EQ(fs.evicted, gs.evicted);
  EXPECT_EQ(fs.overflows, gs.overflows);
  EXPECT_EQ(as.entries, gs.entries);
  EXPECT_EQ(as.evicted, gs.evicted);
  EXPECT_EQ(as.overflows, gs.overflows);
  EXPECT_GT(prepared_batches, min_one_shard);
  EXPECT_EQ(gs.one_shard_batches, 0u);
  EXPECT_GT(fs.one_shard_batches, min_one_shard);  // the path under test was taken
  EXPECT_GT(compared, 15000);
  EXPECT_GT(handled, 100);
}

TEST(MemoryLimitStore, OneShardBatchDecidesAsTheGeneralBatch) {
  one_shard_matches_general(7, 1'000'000, OverflowPolicy::kAllowUntracked, 2000);
  one_shard_matches_general(8, 1'000'000, OverflowPolicy::kAllowUntracked, 2000);
}

TEST(MemoryLimitStore, OneShardBatchDecidesAsTheGeneralBatchAtTheCap) {
  one_shard_matches_general(9, 20, OverflowPolicy::kReject, 300);
  one_shard_matches_general(10, 20, OverflowPolicy::kAllowUntracked, 300);
}

// A prepared batch of sliding windows and GCRAs whose buckets are all stored is decided in one
// pass, each GCRA charged where it is stored: a later check's refusal puts the earlier GCRAs back
// and the batch is decided as the general batch decides it, with no trace of the refused batch;
// a batch whose GCRA fits no 64-bit figure goes the same way.
TEST(MemoryLimitStore, PreparedBatchOfStoredBucketsRefusedLateLeavesNoTrace) {
  MemoryLimitStore ahead(opts()), general(opts());
  std::vector<LimitSpec> specs = {spec("rps", 5),
                                  spec("daily", 60, 0, Algorithm::kSlidingWindow, Period::kMinute),
                                  spec("rpm", 50, 0, Algorithm::kGcra, Period::kMinute),
                                  spec("tight", 2, 0, Algorithm::kGcra, Period::kSecond)};
  specs[2].unit = Unit::kTokens;
  std::vector<std::string> keys;
  for (const LimitSpec& s : specs) keys.push_back("p\x1f" + s.name + "\x1fkey\x1fk1");
  std::vector<LimitCheck> checks;
  for (std::size_t i = 0; i < specs.size(); ++i) checks.push_back({keys[i], &specs[i], 0, nullptr});
  const auto prepared = ahead.prepare(checks);
  ASSERT_NE(prepared, nullptr);
  int allowed = 0, refused = 0;
  for (int step = 0; step < 400; ++step) {
    // Bursts of requests 0-3 ms apart, every 20th after a pause: "tight" refuses within bursts
    // after rps, daily and rpm have been charged in place.
    const Nanos now = kT0 + step * 3 * kMs + (step / 20) * 1100 * kMs;
    const std::int64_t tokens = step % 7 == 0 ? std::int64_t{1} << 62 : step % 5;  // past 64 bits
    std::vector<LimitCheck> costed = checks;
    for (LimitCheck& c : costed) c.cost = c.spec->unit == Unit::kTokens ? tokens : 1;
    const BatchResult a = ahead.check_prepared(*prepared, tokens, now);
    const BatchResult b = general.check_and_consume(costed, now);
    ASSERT_NO_FATAL_FAILURE(same_batch(a, b, step));
    // Handles only from an allowed batch; every one once the buckets are stored.
    for (std::size_t i = 0; i < a.results.size(); ++i) {
      if (!a.allowed || step > 20) {
        EXPECT_EQ(a.results[i].bucket != nullptr, a.allowed) << step;
      }
    }
    (a.allowed ? allowed : refused) += 1;
  }
  EXPECT_GT(allowed, 20);
  EXPECT_GT(refused, 20);
  EXPECT_EQ(ahead.size(), general.size());
  EXPECT_GT(ahead.stats().one_shard_batches, 300u);
}

}  // namespace
}  // namespace bw::limits
