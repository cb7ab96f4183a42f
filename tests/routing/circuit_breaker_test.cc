#include "routing/circuit_breaker.h"

#include <gtest/gtest.h>

namespace bw::routing {
namespace {

constexpr Nanos kT0 = seconds(1000);

BreakerConfig exact_config() {
  BreakerConfig c;
  c.consecutive_failures = 3;
  c.failure_rate = 0;  // only the consecutive rule unless a test enables it
  c.open_base = seconds(5);
  c.open_max = seconds(60);
  c.open_jitter = 0;
  c.half_open_probes = 2;
  c.cooldown_429 = seconds(1);
  c.cooldown_max = seconds(300);
  return c;
}

void fail(CircuitBreaker& b, Nanos now, Rng& rng, Admission a = Admission::allowed) {
  b.on_result(a, OutcomeKind::http_5xx, 0, now, rng);
}
void succeed(CircuitBreaker& b, Nanos now, Rng& rng, Admission a = Admission::allowed) {
  b.on_result(a, OutcomeKind::success, 0, now, rng);
}

TEST(CircuitBreaker, OpensAfterConsecutiveFailuresAndSuccessResets) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  fail(b, kT0, rng);
  fail(b, kT0, rng);
  EXPECT_EQ(b.consecutive_failures(), 2);
  succeed(b, kT0, rng);
  EXPECT_EQ(b.consecutive_failures(), 0);
  fail(b, kT0, rng);
  fail(b, kT0, rng);
  EXPECT_EQ(b.state(), BreakerState::closed);
  EXPECT_EQ(b.check(kT0), Admission::allowed);
  fail(b, kT0, rng);
  EXPECT_EQ(b.state(), BreakerState::open);
  EXPECT_EQ(b.open_until(), kT0 + seconds(5));
  EXPECT_EQ(b.check(kT0 + seconds(5) - 1), Admission::open);
  EXPECT_EQ(b.available_at(kT0), kT0 + seconds(5));
}

TEST(CircuitBreaker, ClientErrorsAndTimeoutsAreClassified) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  b.on_result(Admission::allowed, OutcomeKind::timeout, 0, kT0, rng);
  b.on_result(Admission::allowed, OutcomeKind::connect_error, 0, kT0, rng);
  EXPECT_EQ(b.consecutive_failures(), 2);
  b.on_result(Admission::allowed, OutcomeKind::client_error, 0, kT0, rng);  // healthy upstream
  EXPECT_EQ(b.consecutive_failures(), 0);
  b.on_result(Admission::allowed, OutcomeKind::cancelled, 0, kT0, rng);  // no signal
  b.on_result(Admission::allowed, OutcomeKind::timeout, 0, kT0, rng);
  b.on_result(Admission::allowed, OutcomeKind::cancelled, 0, kT0, rng);
  EXPECT_EQ(b.consecutive_failures(), 1);
}

TEST(CircuitBreaker, OpensOnFailureRateWithMinimumRequests) {
  Rng rng(1);
  BreakerConfig c = exact_config();
  c.consecutive_failures = 0;
  c.failure_rate = 0.5;
  c.min_requests = 4;
  c.window = seconds(10);
  c.window_buckets = 10;
  CircuitBreaker b(c);
  succeed(b, kT0, rng);
  fail(b, kT0, rng);
  succeed(b, kT0, rng);
  EXPECT_EQ(b.state(), BreakerState::closed);  // 1/3 and below min_requests
  fail(b, kT0 + millis(500), rng);             // 2/4 = 0.5 >= 0.5
  EXPECT_EQ(b.state(), BreakerState::open);
}

TEST(CircuitBreaker, FailureRateWindowForgetsOldRequests) {
  Rng rng(1);
  BreakerConfig c = exact_config();
  c.consecutive_failures = 0;
  c.failure_rate = 0.5;
  c.min_requests = 4;
  CircuitBreaker b(c);
  fail(b, kT0, rng);
  fail(b, kT0, rng);
  fail(b, kT0, rng);
  EXPECT_EQ(b.state(), BreakerState::closed);  // 3 requests < min 4
  // 11 s later the first three are out of the 10 s window: 1 request, no trip.
  fail(b, kT0 + seconds(11), rng);
  EXPECT_EQ(b.state(), BreakerState::closed);
  fail(b, kT0 + seconds(11), rng);
  fail(b, kT0 + seconds(11), rng);
  fail(b, kT0 + seconds(11), rng);
  EXPECT_EQ(b.state(), BreakerState::open);
}

TEST(CircuitBreaker, HalfOpenBoundsProbesAndClosesAfterSuccesses) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  for (int i = 0; i < 3; ++i) fail(b, kT0, rng);
  const Nanos t = kT0 + seconds(5);
  EXPECT_EQ(b.acquire(t), Admission::probe);
  EXPECT_EQ(b.state(), BreakerState::half_open);
  EXPECT_EQ(b.acquire(t), Admission::probe);
  EXPECT_EQ(b.acquire(t), Admission::open);  // both slots taken
  EXPECT_EQ(b.check(t), Admission::open);
  succeed(b, t, rng, Admission::probe);
  EXPECT_EQ(b.state(), BreakerState::half_open);
  EXPECT_EQ(b.acquire(t), Admission::open);  // slots count admissions, not concurrency
  succeed(b, t, rng, Admission::probe);
  EXPECT_EQ(b.state(), BreakerState::closed);
  EXPECT_EQ(b.openings(), 0);
  EXPECT_EQ(b.check(t), Admission::allowed);
}

TEST(CircuitBreaker, CancelledProbeReleasesItsSlot) {
  Rng rng(1);
  BreakerConfig c = exact_config();
  c.half_open_probes = 1;
  CircuitBreaker b(c);
  for (int i = 0; i < 3; ++i) fail(b, kT0, rng);
  const Nanos t = kT0 + seconds(5);
  EXPECT_EQ(b.acquire(t), Admission::probe);
  EXPECT_EQ(b.acquire(t), Admission::open);
  b.on_result(Admission::probe, OutcomeKind::cancelled, 0, t, rng);
  EXPECT_EQ(b.acquire(t), Admission::probe);
}

TEST(CircuitBreaker, ProbeFailureReopensWithGrowingCappedTimeout) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  for (int i = 0; i < 3; ++i) fail(b, kT0, rng);
  Nanos t = kT0;
  const Nanos expected[] = {seconds(5),  seconds(10), seconds(20),
                            seconds(40), seconds(60), seconds(60)};
  EXPECT_EQ(b.open_until() - t, expected[0]);
  for (int i = 1; i < 6; ++i) {
    t = b.open_until();
    ASSERT_EQ(b.acquire(t), Admission::probe);
    fail(b, t, rng, Admission::probe);
    EXPECT_EQ(b.state(), BreakerState::open);
    EXPECT_EQ(b.openings(), i + 1);
    EXPECT_EQ(b.open_until() - t, expected[i]) << "opening " << i + 1;
  }
  // Closing resets the growth.
  t = b.open_until();
  ASSERT_EQ(b.acquire(t), Admission::probe);
  ASSERT_EQ(b.acquire(t), Admission::probe);
  succeed(b, t, rng, Admission::probe);
  succeed(b, t, rng, Admission::probe);
  ASSERT_EQ(b.state(), BreakerState::closed);
  for (int i = 0; i < 3; ++i) fail(b, t, rng);
  EXPECT_EQ(b.open_until() - t, seconds(5));
}

TEST(CircuitBreaker, JitterShortensWithinBounds) {
  BreakerConfig c = exact_config();
  c.open_jitter = 0.2;
  Nanos lo = seconds(100), hi = 0;
  for (std::uint64_t seed = 1; seed <= 200; ++seed) {
    Rng rng(seed);
    CircuitBreaker b(c);
    for (int i = 0; i < 3; ++i) fail(b, kT0, rng);
    const Nanos d = b.open_until() - kT0;
    EXPECT_GE(d, seconds(4));
    EXPECT_LE(d, seconds(5));
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  EXPECT_LT(lo, seconds(4.1));  // the jitter range is actually used
  EXPECT_GT(hi, seconds(4.9));
}

TEST(CircuitBreaker, StaleResultsWhileOpenAreIgnored) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  for (int i = 0; i < 3; ++i) fail(b, kT0, rng);
  const Nanos until = b.open_until();
  // Requests admitted before the trip finish later: no extension, no close.
  fail(b, kT0 + 1, rng);
  succeed(b, kT0 + 2, rng);
  EXPECT_EQ(b.state(), BreakerState::open);
  EXPECT_EQ(b.open_until(), until);
  EXPECT_EQ(b.openings(), 1);
}

TEST(CircuitBreaker, RetryAfterCooldownBlocksEverythingIncludingProbes) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  b.on_result(Admission::allowed, OutcomeKind::http_429, seconds(30), kT0, rng);
  EXPECT_EQ(b.state(), BreakerState::closed);
  EXPECT_EQ(b.check(kT0 + seconds(30) - 1), Admission::cooling);
  EXPECT_EQ(b.available_at(kT0), kT0 + seconds(30));
  EXPECT_EQ(b.check(kT0 + seconds(30)), Admission::allowed);

  // Open for 5 s, but cooling for 30 s: no probe before the cooldown ends.
  CircuitBreaker o(exact_config());
  fail(o, kT0, rng);
  fail(o, kT0, rng);
  o.on_result(Admission::allowed, OutcomeKind::http_429, seconds(30), kT0, rng);
  EXPECT_EQ(o.state(), BreakerState::open);
  EXPECT_EQ(o.acquire(kT0 + seconds(5)), Admission::cooling);
  EXPECT_EQ(o.acquire(kT0 + seconds(29)), Admission::cooling);
  EXPECT_EQ(o.acquire(kT0 + seconds(30)), Admission::probe);
}

TEST(CircuitBreaker, CooldownDefaultAndClamp) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  b.on_result(Admission::allowed, OutcomeKind::http_429, 0, kT0, rng);
  EXPECT_EQ(b.cooldown_until(), kT0 + seconds(1));
  b.on_result(Admission::allowed, OutcomeKind::http_429, seconds(86400), kT0, rng);
  EXPECT_EQ(b.cooldown_until(), kT0 + seconds(300));
  // A shorter later Retry-After does not shorten an existing cooldown.
  b.on_result(Admission::allowed, OutcomeKind::http_429, seconds(2), kT0 + seconds(1), rng);
  EXPECT_EQ(b.cooldown_until(), kT0 + seconds(300));
}

}  // namespace
}  // namespace bw::routing
