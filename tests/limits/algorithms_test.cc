#include "limits/algorithms.h"

#include <gtest/gtest.h>

#include <deque>
#include <limits>
#include <random>

namespace bw::limits {
namespace {

constexpr Nanos kT0 = 1000 * kNanosPerSecond;
constexpr Nanos kMs = kNanosPerMilli;

// ---- exact sequences ----

TEST(Gcra, BurstThenExactSpacing) {
  const BucketParams p{10, kNanosPerSecond, 0};  // one unit per 100 ms, capacity 10
  GcraState s;
  for (int i = 0; i < 10; ++i) {
    const Decision d = Gcra::consume(s, p, 1, kT0);
    ASSERT_TRUE(d.allowed) << i;
    EXPECT_EQ(d.limit, 10);
    EXPECT_EQ(d.remaining, 9 - i);
    EXPECT_EQ(d.reset_after, (i + 1) * 100 * kMs);
  }
  Decision d = Gcra::consume(s, p, 1, kT0);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.remaining, 0);
  EXPECT_EQ(d.retry_after, 100 * kMs);
  EXPECT_EQ(d.reset_after, kNanosPerSecond);
  d = Gcra::consume(s, p, 1, kT0 + 100 * kMs - 1);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 1);
  EXPECT_TRUE(Gcra::consume(s, p, 1, kT0 + 100 * kMs).allowed);
  EXPECT_FALSE(Gcra::consume(s, p, 1, kT0 + 100 * kMs).allowed);
}

TEST(Gcra, FractionalIntervalIsExactOverManySteps) {
  const BucketParams p{3, kNanosPerSecond, 0};  // 333,333,333.33.. ns per unit
  GcraState s;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Gcra::consume(s, p, 1, kT0).allowed);
  for (std::int64_t k = 1; k <= 30; ++k) {
    const Nanos due = kT0 + (k * kNanosPerSecond + 2) / 3;  // ceil(k * 1e9 / 3)
    const Decision early = Gcra::check(s, p, 1, due - 1);
    ASSERT_FALSE(early.allowed) << k;
    ASSERT_EQ(early.retry_after, 1) << k;
    ASSERT_TRUE(Gcra::consume(s, p, 1, due).allowed) << k;
  }
}

TEST(Gcra, BurstAddsToCapacityAndCostOverCapacityNeverPasses) {
  const BucketParams p{2, kNanosPerSecond, 3};  // capacity 5
  GcraState s;
  EXPECT_TRUE(Gcra::consume(s, p, 5, kT0).allowed);
  Decision d = Gcra::consume(s, p, 2, kT0);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, kNanosPerSecond);  // 2 units at 2/s
  EXPECT_EQ(d.reset_after, 2500 * kMs);
  d = Gcra::check(GcraState{}, p, 6, kT0);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, kNever);
  EXPECT_EQ(d.remaining, 5);
}

TEST(Gcra, CheckDoesNotConsume) {
  const BucketParams p{1, kNanosPerSecond, 0};
  GcraState s;
  EXPECT_TRUE(Gcra::check(s, p, 1, kT0).allowed);
  EXPECT_TRUE(Gcra::check(s, p, 1, kT0).allowed);
  EXPECT_TRUE(Gcra::consume(s, p, 1, kT0).allowed);
  EXPECT_FALSE(Gcra::check(s, p, 1, kT0).allowed);
}

// A level carried over a reload is the units in use times the new period: held at a ceiling
// above every capacity when that product would leave 128 bits, so the bucket stays full.
TEST(Gcra, AHugeLevelCarriedOverAReloadStaysFull) {
  const BucketParams before{1'000'000'000'000'000, 1, 0};
  GcraState s;
  s.tat = kT0 + 1'000'000'000'000;  // 10^27 units of the old 1 ns period in use
  s.rate = before.rate;
  s.period = before.period;
  const BucketParams after{1'000'000'000'000'000, 86'400 * kNanosPerSecond, 0};
  const Decision d = Gcra::check(s, after, 1, kT0);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.remaining, 0);
  EXPECT_FALSE(Gcra::consume(s, after, 1, kT0).allowed);
  Gcra::adjust(s, after, -1'000'000, kT0);
  EXPECT_FALSE(Gcra::check(s, after, 1, kT0).allowed);
}

TEST(Gcra, NoDoubleBurstAtWindowEdge) {
  // A fixed one-second window would admit 10 at 0.999 s and 10 more at 1.000 s.
  const BucketParams p{10, kNanosPerSecond, 0};
  GcraState s;
  int admitted = 0;
  for (int i = 0; i < 20; ++i) admitted += Gcra::consume(s, p, 1, kT0 + 999 * kMs).allowed;
  for (int i = 0; i < 20; ++i) admitted += Gcra::consume(s, p, 1, kT0 + 1000 * kMs).allowed;
  EXPECT_EQ(admitted, 10);
}

TEST(Gcra, AdjustRefundsNeverBelowEmptyAndChargesDebt) {
  const BucketParams p{100, kNanosPerSecond, 0};
  GcraState s;
  ASSERT_TRUE(Gcra::consume(s, p, 80, kT0).allowed);
  Gcra::adjust(s, p, -30, kT0);  // used 50 of 80
  EXPECT_EQ(Gcra::check(s, p, 50, kT0).remaining, 0);
  EXPECT_FALSE(Gcra::check(s, p, 51, kT0).allowed);
  Gcra::adjust(s, p, -1000, kT0);  // refund beyond empty stops at empty
  EXPECT_EQ(Gcra::check(s, p, 0, kT0).remaining, 100);
  EXPECT_EQ(Gcra::idle_at(s, p, kT0), kT0);
  Gcra::adjust(s, p, 150, kT0);  // real usage above the reservation: 50 units of debt
  const Decision d = Gcra::check(s, p, 1, kT0);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 510 * kMs);
  EXPECT_EQ(d.reset_after, 1500 * kMs);
}

TEST(TokenBucket, ExactSequence) {
  const BucketParams p{4, kNanosPerSecond, 1};  // capacity 5, one token per 250 ms
  TokenBucketState s;
  for (int i = 0; i < 5; ++i) {
    const Decision d = TokenBucket::consume(s, p, 1, kT0);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 4 - i);
  }
  Decision d = TokenBucket::consume(s, p, 1, kT0 + 100 * kMs);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 150 * kMs);
  EXPECT_EQ(d.reset_after, 1150 * kMs);
  d = TokenBucket::consume(s, p, 2, kT0 + 250 * kMs);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.remaining, 1);
  EXPECT_EQ(d.retry_after, 250 * kMs);
  EXPECT_TRUE(TokenBucket::consume(s, p, 2, kT0 + 500 * kMs).allowed);
  TokenBucket::adjust(s, p, -100, kT0 + 500 * kMs);
  EXPECT_EQ(TokenBucket::check(s, p, 0, kT0 + 500 * kMs).remaining, 5);
  TokenBucket::adjust(s, p, 7, kT0 + 500 * kMs);  // 2 tokens of debt
  d = TokenBucket::check(s, p, 1, kT0 + 500 * kMs);
  EXPECT_EQ(d.retry_after, 750 * kMs);
  EXPECT_EQ(d.reset_after, 1750 * kMs);
}

TEST(SlidingWindow, ExactSequenceAndRetry) {
  const BucketParams p{10, kNanosPerSecond, 0};  // slots of 50 ms
  SlidingWindowState s;
  const Nanos t = kT0 + 10 * kMs;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(SlidingWindow::consume(s, p, 1, t).allowed);
  Decision d = SlidingWindow::consume(s, p, 1, t);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.remaining, 0);
  // The slot [1000.000, 1000.050) is counted until 1001.050 s.
  EXPECT_EQ(d.retry_after, 1040 * kMs);
  EXPECT_EQ(d.reset_after, 1040 * kMs);
  EXPECT_FALSE(SlidingWindow::consume(s, p, 1, t + 1040 * kMs - 1).allowed);
  EXPECT_TRUE(SlidingWindow::consume(s, p, 1, t + 1040 * kMs).allowed);
}

TEST(SlidingWindow, RetryWalksOldestSlotsFirst) {
  const BucketParams p{6, kNanosPerSecond, 0};
  SlidingWindowState s;
  ASSERT_TRUE(SlidingWindow::consume(s, p, 2, kT0).allowed);              // slot 0
  ASSERT_TRUE(SlidingWindow::consume(s, p, 3, kT0 + 200 * kMs).allowed);  // slot 4
  ASSERT_TRUE(SlidingWindow::consume(s, p, 1, kT0 + 400 * kMs).allowed);  // slot 8
  Decision d = SlidingWindow::check(s, p, 3, kT0 + 500 * kMs);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, (1050 + 200 - 500) * kMs);  // needs slots 0 and 4 gone
  d = SlidingWindow::check(s, p, 2, kT0 + 500 * kMs);
  EXPECT_EQ(d.retry_after, (1050 - 500) * kMs);
  SlidingWindow::adjust(s, p, -2, kT0 + 500 * kMs);  // refund from the newest slots
  EXPECT_TRUE(SlidingWindow::check(s, p, 2, kT0 + 500 * kMs).allowed);
  EXPECT_EQ(SlidingWindow::check(s, p, 0, kT0 + 500 * kMs).reset_after, (1250 - 500) * kMs);
}

TEST(SlidingWindow, NoDoubleBurstAtWindowEdge) {
  const BucketParams p{10, kNanosPerSecond, 0};
  SlidingWindowState s;
  int admitted = 0;
  for (int i = 0; i < 20; ++i) admitted += SlidingWindow::consume(s, p, 1, kT0 + 999 * kMs).allowed;
  for (int i = 0; i < 20; ++i)
    admitted += SlidingWindow::consume(s, p, 1, kT0 + 1000 * kMs).allowed;
  for (int i = 0; i < 20; ++i)
    admitted += SlidingWindow::consume(s, p, 1, kT0 + 1998 * kMs).allowed;
  EXPECT_EQ(admitted, 10);
}

// ---- randomized comparison against brute-force reference models ----

// Textbook token bucket over exact rationals (tokens * period), refilled step by step.
struct RefBucket {
  BucketParams p;
  __int128 tokens_scaled;  // tokens * period
  Nanos last;
  void advance(Nanos now) {
    if (now <= last) return;
    tokens_scaled += static_cast<__int128>(now - last) * p.rate;
    const __int128 cap = static_cast<__int128>(p.capacity()) * p.period;
    if (tokens_scaled > cap) tokens_scaled = cap;
    last = now;
  }
  bool can(std::int64_t n, Nanos now) const {
    RefBucket c = *this;
    c.advance(now);
    return c.tokens_scaled >= static_cast<__int128>(n) * p.period;
  }
};

// Smallest t >= now at which `pred(t)` holds (pred is monotone); brute force by bisection.
template <class Pred>
Nanos first_true(Nanos now, Pred pred) {
  Nanos lo = now, hi = now + 1;
  while (!pred(hi)) hi = now + 2 * (hi - now);
  while (lo < hi) {
    const Nanos mid = lo + (hi - lo) / 2;
    if (pred(mid))
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

TEST(Randomized, GcraAndTokenBucketMatchReference) {
  std::mt19937_64 rng(12345);
  for (int round = 0; round < 40; ++round) {
    const BucketParams p{static_cast<std::int64_t>(rng() % 9 + 1),
                         static_cast<Nanos>(rng() % 3 + 1) * kNanosPerSecond,
                         static_cast<std::int64_t>(rng() % 4)};
    GcraState g;
    TokenBucketState tb;
    RefBucket ref{p, static_cast<__int128>(p.capacity()) * p.period, kT0};
    Nanos now = kT0;
    for (int step = 0; step < 500; ++step) {
      now += static_cast<Nanos>(rng() % (300 * kMs)) + static_cast<Nanos>(rng() % 7);
      const std::int64_t cost = static_cast<std::int64_t>(rng() % (p.capacity() + 2));
      const bool want = ref.can(cost, now);
      const Decision dg = Gcra::consume(g, p, cost, now);
      const Decision dt = TokenBucket::consume(tb, p, cost, now);
      ASSERT_EQ(dg.allowed, want) << round << "/" << step;
      ASSERT_EQ(dt.allowed, want) << round << "/" << step;
      ref.advance(now);
      if (want) ref.tokens_scaled -= static_cast<__int128>(cost) * p.period;
      const std::int64_t ref_remaining = static_cast<std::int64_t>(ref.tokens_scaled / p.period);
      ASSERT_EQ(dg.remaining, ref_remaining);
      ASSERT_EQ(dt.remaining, ref_remaining);
      const Nanos ref_reset =
          first_true(now, [&](Nanos t) { return ref.can(p.capacity(), t); }) - now;
      ASSERT_EQ(dg.reset_after, ref_reset);
      ASSERT_EQ(dt.reset_after, ref_reset);
      if (!want) {
        const Nanos ref_retry =
            cost > p.capacity() ? kNever
                                : first_true(now, [&](Nanos t) { return ref.can(cost, t); }) - now;
        ASSERT_EQ(dg.retry_after, ref_retry);
        ASSERT_EQ(dt.retry_after, ref_retry);
      }
    }
  }
}

// Rates and periods from the smallest to beyond 64 bits in scaled units (a day-long token limit).
constexpr std::int64_t kRates[] = {
    1, 7, 1'000, 1'000'000, 60'000'000, 1'000'000'000'000, 1'000'000'000'000'000};
constexpr Nanos kPeriods[] = {1, kNanosPerSecond, 60 * kNanosPerSecond, 3600 * kNanosPerSecond,
                              86'400 * kNanosPerSecond};

// Gcra::consume decides an admission in 64-bit arithmetic when every quantity fits and falls back
// to the 128-bit arithmetic of check() otherwise (a day-long token limit's capacity in scaled
// units is beyond 64 bits): at every magnitude, consume must say what check says of the same
// state, and leave the level its decision reports.
TEST(Randomized, GcraConsumeAgreesWithCheckAtEveryMagnitude) {
  std::mt19937_64 rng(4242);
  for (const std::int64_t rate : kRates) {
    for (const Nanos period : kPeriods) {
      for (const std::int64_t burst : {std::int64_t{0}, rate / 2 + 1}) {
        const BucketParams p{rate, period, burst};
        const std::int64_t cap = p.capacity();
        GcraState s;
        Nanos now = kT0;
        for (int step = 0; step < 300; ++step) {
          now += static_cast<Nanos>(rng() % static_cast<std::uint64_t>(3 * (period / rate) + 2));
          if (rng() % 10 == 0) {
            const auto delta =
                static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(cap)) - cap / 2;
            Gcra::adjust(s, p, delta, now);
          }
          const std::int64_t cost =
              rng() % 4 == 0
                  ? static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(cap + 2))
                  : static_cast<std::int64_t>(rng() % 200);
          const Decision want = Gcra::check(s, p, cost, now);
          const Decision got = Gcra::consume(s, p, cost, now);
          ASSERT_EQ(got.allowed, want.allowed) << rate << "/" << period << "/" << step;
          ASSERT_EQ(got.limit, want.limit);
          ASSERT_EQ(got.remaining, want.remaining) << rate << "/" << period << "/" << step;
          ASSERT_EQ(got.retry_after, want.retry_after);
          ASSERT_EQ(got.reset_after, want.reset_after) << rate << "/" << period << "/" << step;
          if (got.allowed) {
            const Decision after = Gcra::check(s, p, 0, now);
            ASSERT_EQ(after.remaining, got.remaining) << rate << "/" << period << "/" << step;
            ASSERT_EQ(after.reset_after, got.reset_after);
          }
        }
      }
    }
  }
}

// Gcra::adjust_fast (64-bit, inline) leaves the state Gcra::adjust leaves and says the idle time
// Gcra::idle_at says then, whenever it takes the adjustment; at every magnitude, also after a
// reload (other parameters: it declines), for refunds, charges and debt.
TEST(Randomized, GcraAdjustFastAgreesWithAdjustAtEveryMagnitude) {
  std::mt19937_64 rng(4343);
  int taken = 0, declined = 0;
  for (const std::int64_t rate : kRates) {
    for (const Nanos period : kPeriods) {
      const BucketParams p{rate, period, 0};
      const BucketParams reloaded{rate + 1, period, 0};
      const std::int64_t cap = p.capacity();
      GcraState s;
      Nanos now = kT0;
      for (int step = 0; step < 300; ++step) {
        now += static_cast<Nanos>(rng() % static_cast<std::uint64_t>(3 * (period / rate) + 2));
        const std::int64_t cost =
            static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(cap));
        Gcra::consume(s, rng() % 8 == 0 ? reloaded : p, cost, now);
        const auto delta = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(2 * cap)) -
                           cap + (rng() % 20 == 0 ? cap * 3 : 0);
        GcraState want = s, got = s;
        Gcra::adjust(want, p, delta, now);
        Nanos idle = 0;
        if (!Gcra::adjust_fast(got, p, delta, now, idle)) {
          ++declined;
          ASSERT_EQ(got.tat, s.tat);
          ASSERT_EQ(got.frac, s.frac);
          s = want;
          continue;
        }
        ++taken;
        ASSERT_EQ(got.tat, want.tat) << rate << "/" << period << "/" << step;
        ASSERT_EQ(got.frac, want.frac) << rate << "/" << period << "/" << step;
        ASSERT_EQ(got.rate, want.rate);
        ASSERT_EQ(got.period, want.period);
        ASSERT_EQ(idle, Gcra::idle_at(want, p, now)) << rate << "/" << period << "/" << step;
        s = got;
      }
    }
  }
  EXPECT_GT(taken, 3000);
  EXPECT_GT(declined, 300);
}

TEST(Randomized, SlidingWindowMatchesLogAndNeverExceedsAnyWindow) {
  std::mt19937_64 rng(777);
  for (int round = 0; round < 30; ++round) {
    const BucketParams p{static_cast<std::int64_t>(rng() % 20 + 1), kNanosPerSecond,
                         static_cast<std::int64_t>(rng() % 3)};
    const Nanos g = SlidingWindow::slot_width(p);
    SlidingWindowState s;
    std::deque<std::pair<Nanos, std::int64_t>> log;  // every admitted charge
    auto counted = [&](Nanos t) {  // reference: charges in slots [slot(t) - 20, slot(t)]
      std::int64_t sum = 0;
      for (auto& [at, c] : log) {
        if (at / g >= t / g - SlidingWindowState::kSlots) sum += c;
      }
      return sum;
    };
    Nanos now = kT0;
    for (int step = 0; step < 600; ++step) {
      now += static_cast<Nanos>(rng() % (120 * kMs));
      const std::int64_t cost = static_cast<std::int64_t>(rng() % 4);
      const bool want = counted(now) + cost <= p.capacity();
      const Decision d = SlidingWindow::consume(s, p, cost, now);
      ASSERT_EQ(d.allowed, want) << round << "/" << step;
      if (want) {
        log.emplace_back(now, cost);
      } else if (cost <= p.capacity()) {
        const Nanos retry =
            first_true(now, [&](Nanos t) { return counted(t) + cost <= p.capacity(); }) - now;
        ASSERT_EQ(d.retry_after, retry);
      }
      ASSERT_EQ(d.remaining, std::max<std::int64_t>(0, p.capacity() - counted(now)));
      // The guarantee: no interval of length W ever holds more than capacity.
      std::int64_t in_window = 0;
      for (auto& [at, c] : log) {
        if (at > now - p.period) in_window += c;
      }
      ASSERT_LE(in_window, p.capacity());
    }
  }
}

// The window's running total is the sum of its slots after every operation: charges, refunds,
// debts (up to saturated slots), jumps of more than a window, a clock that steps back, and a
// reload that changes the period. Decisions read the total, so a drift would admit too much.
TEST(Randomized, SlidingWindowTotalIsTheSumOfItsSlots) {
  std::mt19937_64 rng(31);
  const auto sum = [](const SlidingWindowState& s) {
    __int128 t = 0;
    for (std::int64_t c : s.counts) t += c;
    return t;
  };
  int checked = 0;
  for (int round = 0; round < 40; ++round) {
    BucketParams p{static_cast<std::int64_t>(rng() % 50 + 1),
                   static_cast<Nanos>(rng() % 3 + 1) * kNanosPerSecond,
                   static_cast<std::int64_t>(rng() % 3)};
    SlidingWindowState s;
    Nanos now = kT0;
    for (int step = 0; step < 500; ++step) {
      const auto r = rng() % 100;
      if (r < 3) {
        now += 5 * p.period;  // the whole ring expires
      } else if (r < 8) {
        now -= static_cast<Nanos>(rng() % (300 * kMs));
      } else {
        now += static_cast<Nanos>(rng() % (150 * kMs));
      }
      if (r >= 8 && r < 11) p.period = static_cast<Nanos>(rng() % 3 + 1) * kNanosPerSecond;
      if (r >= 11 && r < 25) {
        SlidingWindow::adjust(s, p, static_cast<std::int64_t>(rng() % 9) - 4, now);
      } else if (r >= 25 && r < 27) {
        SlidingWindow::adjust(s, p, std::numeric_limits<std::int64_t>::max() - 5, now);
        SlidingWindow::adjust(s, p, std::numeric_limits<std::int64_t>::max(), now);
      } else if (r >= 27 && r < 29) {
        SlidingWindow::adjust(s, p, -std::numeric_limits<std::int64_t>::max(), now);
      } else {
        SlidingWindow::consume(s, p, static_cast<std::int64_t>(rng() % 5), now);
      }
      ASSERT_TRUE(s.total == sum(s)) << round << "/" << step;
      SlidingWindow::adjust(s, p, 0, now);  // moved to `now` (a refused charge leaves it)
      ASSERT_TRUE(s.total == sum(s)) << round << "/" << step;
      const Decision d = SlidingWindow::check(s, p, 0, now);
      const __int128 left = static_cast<__int128>(p.capacity()) - sum(s);
      ASSERT_EQ(d.remaining, left > 0 ? static_cast<std::int64_t>(left) : 0)
          << round << "/" << step;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 40 * 500);
}

// After a charge that passes, reset_after is the time until the state equals a fresh one, the
// same instant idle_at gives (the in-process store keeps a bucket until then and takes it from
// the decision), for every algorithm, through refunds, debts and a clock that steps back.
template <class Algo, class State>
void reset_after_is_idle_at(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  int charged = 0;
  for (int round = 0; round < 30; ++round) {
    const BucketParams p{static_cast<std::int64_t>(rng() % 20 + 1),
                         static_cast<Nanos>(rng() % 3 + 1) * kNanosPerSecond,
                         static_cast<std::int64_t>(rng() % 3)};
    State s;
    Nanos now = kT0;
    for (int step = 0; step < 400; ++step) {
      now += static_cast<Nanos>(rng() % (200 * kMs)) - (rng() % 10 == 0 ? 50 * kMs : 0);
      if (rng() % 5 == 0) {
        Algo::adjust(s, p, static_cast<std::int64_t>(rng() % 7) - 3, now);
        continue;
      }
      const std::int64_t cost = static_cast<std::int64_t>(rng() % 4);
      const Decision checked = Algo::check(s, p, cost, now);
      const Decision d = Algo::consume(s, p, cost, now);
      ASSERT_EQ(checked.allowed, d.allowed);
      ASSERT_EQ(checked.reset_after, d.reset_after) << round << "/" << step;
      if (!d.allowed) continue;
      ++charged;
      ASSERT_EQ(now + d.reset_after, Algo::idle_at(s, p, now)) << round << "/" << step;
    }
  }
  EXPECT_GT(charged, 1000);
}

TEST(Randomized, ResetAfterAChargeIsIdleAt) {
  reset_after_is_idle_at<Gcra, GcraState>(21);
  reset_after_is_idle_at<TokenBucket, TokenBucketState>(22);
  reset_after_is_idle_at<SlidingWindow, SlidingWindowState>(23);
}

}  // namespace

// The sliding window as it was decided on a copy of the whole ring: advanced to `now`, decided,
// and (consume) written back whole when admitted. check and consume now decide and charge an
// admitted cost in place; this reference holds them to the copy's decisions and states.
namespace ring_copy {

int ring_index(std::int64_t slot) {
  return static_cast<int>(((slot % SlidingWindowState::kRing) + SlidingWindowState::kRing) %
                          SlidingWindowState::kRing);
}

Nanos saturate(__int128 v) {
  if (v >= static_cast<__int128>(kNever)) return kNever;
  if (v <= static_cast<__int128>(std::numeric_limits<Nanos>::min()))
    return std::numeric_limits<Nanos>::min();
  return static_cast<Nanos>(v);
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  std::int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

SlidingWindowState advanced(const SlidingWindowState& s, const BucketParams& p, Nanos now) {
  constexpr Nanos kMin = std::numeric_limits<Nanos>::min();
  SlidingWindowState a = s;
  const Nanos g = SlidingWindow::slot_width(p);
  const std::int64_t cur = floor_div(now, g);
  if (a.head != kMin && a.slot != g) {
    const Nanos kept = saturate(a.total);
    a.counts.fill(0);
    a.counts[ring_index(cur)] = kept;
    a.total = kept;
    a.head = cur;
  }
  a.slot = g;
  if (a.head == kMin) {
    a.counts.fill(0);
    a.total = 0;
    a.head = cur;
  } else if (cur > a.head) {
    if (static_cast<__int128>(cur) - a.head >= SlidingWindowState::kRing) {
      a.counts.fill(0);
      a.total = 0;
    } else {
      for (std::int64_t i = a.head + 1; i <= cur; ++i) {
        auto& c = a.counts[ring_index(i)];
        a.total -= c;
        c = 0;
      }
    }
    a.head = cur;
  }
  return a;
}

Nanos slot_expiry(std::int64_t b, Nanos g, Nanos now) {
  return saturate((static_cast<__int128>(b) + SlidingWindowState::kRing) * g - now);
}

Nanos reset_after(const SlidingWindowState& a, Nanos g, Nanos now) {
  for (std::int64_t b = a.head; b > a.head - SlidingWindowState::kRing; --b) {
    if (a.counts[ring_index(b)] != 0) return std::max<Nanos>(0, slot_expiry(b, g, now));
  }
  return 0;
}

Decision decide(const SlidingWindowState& a, const BucketParams& p, std::int64_t cost, Nanos now) {
  const Nanos g = SlidingWindow::slot_width(p);
  const __int128 cap = p.capacity(), sum = a.total, need = std::max<std::int64_t>(cost, 0);
  Decision d;
  d.limit = p.capacity();
  if (sum + need <= cap) {
    d.allowed = true;
    d.remaining = static_cast<std::int64_t>(cap - sum - need);
    d.reset_after =
        need > 0 ? std::max<Nanos>(0, slot_expiry(a.head, g, now)) : reset_after(a, g, now);
    return d;
  }
  d.allowed = false;
  d.remaining = sum >= cap ? 0 : static_cast<std::int64_t>(cap - sum);
  d.reset_after = reset_after(a, g, now);
  if (need > cap) {
    d.retry_after = kNever;
    return d;
  }
  const __int128 excess = sum + need - cap;
  __int128 dropped = 0;
  for (std::int64_t b = a.head - SlidingWindowState::kSlots; b <= a.head; ++b) {
    dropped += a.counts[ring_index(b)];
    if (dropped >= excess) {
      d.retry_after = std::max<Nanos>(1, slot_expiry(b, g, now));
      break;
    }
  }
  return d;
}

Decision consume(SlidingWindowState& s, const BucketParams& p, std::int64_t cost, Nanos now) {
  SlidingWindowState a = advanced(s, p, now);
  const Decision d = decide(a, p, cost, now);
  if (d.allowed) {
    const std::int64_t add = std::max<std::int64_t>(cost, 0);
    a.counts[ring_index(a.head)] += add;
    a.total += add;
    s = a;
  }
  return d;
}

}  // namespace ring_copy

void expect_same(const Decision& a, const Decision& b, const char* what, int step) {
  ASSERT_EQ(a.allowed, b.allowed) << what << " " << step;
  ASSERT_EQ(a.limit, b.limit) << what << " " << step;
  ASSERT_EQ(a.remaining, b.remaining) << what << " " << step;
  ASSERT_EQ(a.retry_after, b.retry_after) << what << " " << step;
  ASSERT_EQ(a.reset_after, b.reset_after) << what << " " << step;
}

void expect_same(const SlidingWindowState& a, const SlidingWindowState& b, int step) {
  ASSERT_EQ(a.head, b.head) << step;
  ASSERT_EQ(a.slot, b.slot) << step;
  ASSERT_TRUE(a.counts == b.counts) << step;
  ASSERT_TRUE(a.total == b.total) << step;
}

TEST(Randomized, SlidingWindowInPlaceDecidesAndChargesAsTheRingCopy) {
  std::mt19937_64 rng(2026);
  int admitted_in_place = 0;
  for (int round = 0; round < 60; ++round) {
    BucketParams p{static_cast<std::int64_t>(rng() % 30 + 1),
                   static_cast<Nanos>(rng() % 3 + 1) * kNanosPerSecond,
                   static_cast<std::int64_t>(rng() % 3)};
    SlidingWindowState s;  // the in-place path
    SlidingWindowState r;  // the reference
    Nanos now = kT0 + static_cast<Nanos>(rng() % kNanosPerSecond);
    if (round % 7 == 0) now = -now;  // slots before the epoch: floor division
    for (int step = 0; step < 800; ++step) {
      const auto k = rng() % 100;
      if (k < 2) {
        now += 5 * p.period;  // the whole ring expires
      } else if (k < 4) {
        now += p.period / 2 + static_cast<Nanos>(rng() % p.period);  // most of it
      } else if (k < 9) {
        now -= static_cast<Nanos>(rng() % (300 * kMs));  // a clock read a moment earlier
      } else {
        now += static_cast<Nanos>(rng() % (120 * kMs));
      }
      if (k >= 9 && k < 11) p.period = static_cast<Nanos>(rng() % 3 + 1) * kNanosPerSecond;
      const std::int64_t cost = static_cast<std::int64_t>(rng() % 5) - (k % 13 == 0 ? 2 : 0);
      if (k >= 11 && k < 20) {
        const std::int64_t delta = static_cast<std::int64_t>(rng() % 9) - 4;
        SlidingWindow::adjust(s, p, delta, now);
        SlidingWindow::adjust(r, p, delta, now);
      } else if (k >= 20 && k < 40) {
        expect_same(SlidingWindow::check(s, p, cost, now),
                    ring_copy::decide(ring_copy::advanced(r, p, now), p, cost, now), "check", step);
      } else if (k >= 40 && k < 70) {
        // Decided first, charged after (the store's commit), or consumed when not prepared.
        SlidingWindowCharge charge;
        const Decision d = SlidingWindow::check(s, p, cost, now, charge);
        if (charge.ready) {
          SlidingWindow::charge(s, charge);
        } else {
          ASSERT_FALSE(d.allowed && cost > 0 && s.head != std::numeric_limits<Nanos>::min() &&
                       s.slot == SlidingWindow::slot_width(p))
              << step;
          expect_same(SlidingWindow::consume(s, p, cost, now), d, "consume after check", step);
        }
        expect_same(d, ring_copy::consume(r, p, cost, now), "check and charge", step);
        admitted_in_place += charge.ready ? 1 : 0;
      } else {
        const Decision d = SlidingWindow::consume(s, p, cost, now);
        expect_same(d, ring_copy::consume(r, p, cost, now), "consume", step);
      }
      expect_same(s, r, step);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  EXPECT_GT(admitted_in_place, 1000);  // charges prepared by check and applied in place
}

}  // namespace bw::limits
