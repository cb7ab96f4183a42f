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

void fail(CircuitBreaker& b, Nanos now, Rng& rng, Admission a = Admission::kAllowed) {
  b.on_result(a, OutcomeKind::kHttp5xx, 0, now, rng);
}
void succeed(CircuitBreaker& b, Nanos now, Rng& rng, Admission a = Admission::kAllowed) {
  b.on_result(a, OutcomeKind::kSuccess, 0, now, rng);
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
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  EXPECT_EQ(b.check(kT0), Admission::kAllowed);
  fail(b, kT0, rng);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
  EXPECT_EQ(b.open_until(), kT0 + seconds(5));
  EXPECT_EQ(b.check(kT0 + seconds(5) - 1), Admission::kOpen);
  EXPECT_EQ(b.available_at(kT0), kT0 + seconds(5));
}

TEST(CircuitBreaker, ClientErrorsAndTimeoutsAreClassified) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  b.on_result(Admission::kAllowed, OutcomeKind::kTimeout, 0, kT0, rng);
  b.on_result(Admission::kAllowed, OutcomeKind::kConnectError, 0, kT0, rng);
  EXPECT_EQ(b.consecutive_failures(), 2);
  b.on_result(Admission::kAllowed, OutcomeKind::kClientError, 0, kT0, rng);  // healthy upstream
  EXPECT_EQ(b.consecutive_failures(), 0);
  b.on_result(Admission::kAllowed, OutcomeKind::kCancelled, 0, kT0, rng);  // no signal
  b.on_result(Admission::kAllowed, OutcomeKind::kTimeout, 0, kT0, rng);
  b.on_result(Admission::kAllowed, OutcomeKind::kCancelled, 0, kT0, rng);
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
  EXPECT_EQ(b.state(), BreakerState::kClosed);  // 1/3 and below min_requests
  fail(b, kT0 + millis(500), rng);              // 2/4 = 0.5 >= 0.5
  EXPECT_EQ(b.state(), BreakerState::kOpen);
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
  EXPECT_EQ(b.state(), BreakerState::kClosed);  // 3 requests < min 4
  // 11 s later the first three are out of the 10 s window: 1 request, no trip.
  fail(b, kT0 + seconds(11), rng);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  fail(b, kT0 + seconds(11), rng);
  fail(b, kT0 + seconds(11), rng);
  fail(b, kT0 + seconds(11), rng);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
}

TEST(CircuitBreaker, HalfOpenBoundsProbesAndClosesAfterSuccesses) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  for (int i = 0; i < 3; ++i) fail(b, kT0, rng);
  const Nanos t = kT0 + seconds(5);
  EXPECT_EQ(b.acquire(t), Admission::kProbe);
  EXPECT_EQ(b.state(), BreakerState::kHalfOpen);
  EXPECT_EQ(b.acquire(t), Admission::kProbe);
  EXPECT_EQ(b.acquire(t), Admission::kOpen);  // both slots taken
  EXPECT_EQ(b.check(t), Admission::kOpen);
  succeed(b, t, rng, Admission::kProbe);
  EXPECT_EQ(b.state(), BreakerState::kHalfOpen);
  EXPECT_EQ(b.acquire(t), Admission::kOpen);  // slots count admissions, not concurrency
  succeed(b, t, rng, Admission::kProbe);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  EXPECT_EQ(b.openings(), 0);
  EXPECT_EQ(b.check(t), Admission::kAllowed);
}

TEST(CircuitBreaker, CancelledProbeReleasesItsSlot) {
  Rng rng(1);
  BreakerConfig c = exact_config();
  c.half_open_probes = 1;
  CircuitBreaker b(c);
  for (int i = 0; i < 3; ++i) fail(b, kT0, rng);
  const Nanos t = kT0 + seconds(5);
  EXPECT_EQ(b.acquire(t), Admission::kProbe);
  EXPECT_EQ(b.acquire(t), Admission::kOpen);
  b.on_result(Admission::kProbe, OutcomeKind::kCancelled, 0, t, rng);
  EXPECT_EQ(b.acquire(t), Admission::kProbe);
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
    ASSERT_EQ(b.acquire(t), Admission::kProbe);
    fail(b, t, rng, Admission::kProbe);
    EXPECT_EQ(b.state(), BreakerState::kOpen);
    EXPECT_EQ(b.openings(), i + 1);
    EXPECT_EQ(b.open_until() - t, expected[i]) << "opening " << i + 1;
  }
  // Closing resets the growth.
  t = b.open_until();
  ASSERT_EQ(b.acquire(t), Admission::kProbe);
  ASSERT_EQ(b.acquire(t), Admission::kProbe);
  succeed(b, t, rng, Admission::kProbe);
  succeed(b, t, rng, Admission::kProbe);
  ASSERT_EQ(b.state(), BreakerState::kClosed);
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
  EXPECT_EQ(b.state(), BreakerState::kOpen);
  EXPECT_EQ(b.open_until(), until);
  EXPECT_EQ(b.openings(), 1);
}

TEST(CircuitBreaker, RetryAfterCooldownBlocksEverythingIncludingProbes) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  b.on_result(Admission::kAllowed, OutcomeKind::kHttp429, seconds(30), kT0, rng);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  EXPECT_EQ(b.check(kT0 + seconds(30) - 1), Admission::kCooling);
  EXPECT_EQ(b.available_at(kT0), kT0 + seconds(30));
  EXPECT_EQ(b.check(kT0 + seconds(30)), Admission::kAllowed);

  // Open for 5 s, but cooling for 30 s: no probe before the cooldown ends.
  CircuitBreaker o(exact_config());
  fail(o, kT0, rng);
  fail(o, kT0, rng);
  o.on_result(Admission::kAllowed, OutcomeKind::kHttp429, seconds(30), kT0, rng);
  EXPECT_EQ(o.state(), BreakerState::kOpen);
  EXPECT_EQ(o.acquire(kT0 + seconds(5)), Admission::kCooling);
  EXPECT_EQ(o.acquire(kT0 + seconds(29)), Admission::kCooling);
  EXPECT_EQ(o.acquire(kT0 + seconds(30)), Admission::kProbe);
}

TEST(CircuitBreaker, CooldownDefaultAndClamp) {
  Rng rng(1);
  CircuitBreaker b(exact_config());
  b.on_result(Admission::kAllowed, OutcomeKind::kHttp429, 0, kT0, rng);
  EXPECT_EQ(b.cooldown_until(), kT0 + seconds(1));
  b.on_result(Admission::kAllowed, OutcomeKind::kHttp429, seconds(86400), kT0, rng);
  EXPECT_EQ(b.cooldown_until(), kT0 + seconds(300));
  // A shorter later Retry-After does not shorten an existing cooldown.
  b.on_result(Admission::kAllowed, OutcomeKind::kHttp429, seconds(2), kT0 + seconds(1), rng);
  EXPECT_EQ(b.cooldown_until(), kT0 + seconds(300));
}

}  // namespace
}  // namespace bw::routing
