#include "routing/retry.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace bw::routing {
namespace {

constexpr Nanos kT0 = seconds(1000);

Outcome out(OutcomeKind k, int status = 0, Nanos retry_after = 0) {
  Outcome o;
  o.kind = k;
  o.status = status;
  o.retry_after_ns = retry_after;
  return o;
}

TEST(Retry, BackoffCeilingDoublesUpToCap) {
  RetryConfig c;  // base 100 ms, cap 2 s
  const Nanos expected[] = {millis(100),  millis(200),  millis(400), millis(800),
                            millis(1600), millis(2000), millis(2000)};
  for (int i = 0; i < 7; ++i) EXPECT_EQ(backoff_ceiling(c, i + 1), expected[i]) << i + 1;
  EXPECT_EQ(backoff_ceiling(c, 200), millis(2000));  // no overflow on long chains
}

TEST(Retry, FullJitterCoversZeroToCeiling) {
  RetryConfig c;
  Rng rng(42);
  for (int retry = 1; retry <= 6; ++retry) {
    const Nanos ceiling = backoff_ceiling(c, retry);
    Nanos lo = ceiling, hi = 0;
    double sum = 0;
    constexpr int kN = 20000;
    for (int i = 0; i < kN; ++i) {
      const Nanos d = full_jitter_backoff(c, retry, rng);
      ASSERT_GE(d, 0);
      ASSERT_LE(d, ceiling);
      lo = std::min(lo, d);
      hi = std::max(hi, d);
      sum += static_cast<double>(d);
    }
    EXPECT_LT(lo, ceiling / 100);
    EXPECT_GT(hi, ceiling - ceiling / 100);
    EXPECT_NEAR(sum / kN / static_cast<double>(ceiling), 0.5, 0.02);
  }
}

TEST(Retry, RetryableClassification) {
  RetryConfig c;
  EXPECT_TRUE(is_retryable(c, out(OutcomeKind::kConnectError)));
  EXPECT_TRUE(is_retryable(c, out(OutcomeKind::kTimeout)));
  EXPECT_TRUE(is_retryable(c, out(OutcomeKind::kHttp429, 429)));
  EXPECT_TRUE(is_retryable(c, out(OutcomeKind::kHttp5xx, 502)));
  EXPECT_TRUE(is_retryable(c, out(OutcomeKind::kHttp5xx, 503)));
  EXPECT_TRUE(is_retryable(c, out(OutcomeKind::kHttp5xx, 504)));
  EXPECT_FALSE(is_retryable(c, out(OutcomeKind::kHttp5xx, 500)));
  EXPECT_FALSE(is_retryable(c, out(OutcomeKind::kClientError, 400)));
  EXPECT_FALSE(is_retryable(c, out(OutcomeKind::kSuccess, 200)));
}

TEST(Retry, DecisionOrder) {
  RetryConfig c;
  Rng rng(7);
  AttemptState st{1, kT0 + seconds(60), false};
  EXPECT_EQ(decide_retry(c, st, out(OutcomeKind::kSuccess, 200), kT0, nullptr, rng).verdict,
            RetryVerdict::kSucceeded);
  EXPECT_EQ(decide_retry(c, st, out(OutcomeKind::kCancelled), kT0, nullptr, rng).verdict,
            RetryVerdict::kNotRetryable);
  EXPECT_EQ(decide_retry(c, st, out(OutcomeKind::kHttp5xx, 500), kT0, nullptr, rng).verdict,
            RetryVerdict::kNotRetryable);
  AttemptState streaming{1, kT0 + seconds(60), true};
  EXPECT_EQ(decide_retry(c, streaming, out(OutcomeKind::kTimeout), kT0, nullptr, rng).verdict,
            RetryVerdict::kResponseStarted);
  AttemptState third{3, kT0 + seconds(60), false};
  EXPECT_EQ(decide_retry(c, third, out(OutcomeKind::kTimeout), kT0, nullptr, rng).verdict,
            RetryVerdict::kAttemptsExhausted);
  AttemptState second{2, kT0 + seconds(60), false};
  const RetryDecision d = decide_retry(c, second, out(OutcomeKind::kTimeout), kT0, nullptr, rng);
  EXPECT_EQ(d.verdict, RetryVerdict::kRetry);
  EXPECT_GE(d.delay, 0);
  EXPECT_LE(d.delay, millis(200));  // second retry ceiling
}

TEST(Retry, RetryAfterHonouredAndDeadlineGivesUp) {
  RetryConfig c;
  Rng rng(7);
  AttemptState st{1, kT0 + seconds(10), false};
  RetryDecision d =
      decide_retry(c, st, out(OutcomeKind::kHttp429, 429, seconds(5)), kT0, nullptr, rng);
  EXPECT_EQ(d.verdict, RetryVerdict::kRetry);
  EXPECT_EQ(d.delay, seconds(5));  // max(jitter <= 100 ms, 5 s)
  d = decide_retry(c, st, out(OutcomeKind::kHttp429, 429, seconds(11)), kT0, nullptr, rng);
  EXPECT_EQ(d.verdict, RetryVerdict::kDeadline);
  // Deadline already (almost) reached: even the backoff does not fit.
  AttemptState late{1, kT0, false};
  EXPECT_EQ(decide_retry(c, late, out(OutcomeKind::kTimeout), kT0, nullptr, rng).verdict,
            RetryVerdict::kDeadline);
}

TEST(RetryBudget, RatioOfRequestsOverWindow) {
  RetryConfig c;
  c.budget_ratio = 0.2;
  c.budget_min_per_s = 0;
  c.budget_window = seconds(10);
  RetryBudget b(c);
  for (int i = 0; i < 100; ++i) b.record_request(kT0);
  int granted = 0;
  while (b.try_withdraw(kT0 + millis(1)) && granted < 1000) ++granted;
  EXPECT_EQ(granted, 20);
  EXPECT_EQ(b.retries(kT0 + millis(1)), 20);
  // Once the requests leave the window, so do the retries, and there is nothing to spend.
  EXPECT_FALSE(b.try_withdraw(kT0 + seconds(11)));
  EXPECT_EQ(b.requests(kT0 + seconds(11)), 0);
}

TEST(RetryBudget, DepositsFromManyThreadsAreAllCounted) {
  RetryConfig c;
  c.budget_ratio = 0.5;
  c.budget_min_per_s = 0;
  c.budget_window = seconds(10);
  RetryBudget b(c);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&b] {
      for (int i = 0; i < 10000; ++i) {
        b.record_request(kT0 + millis(i / 10));
        if (i % 100 == 99) (void)b.try_withdraw(kT0 + millis(i / 10));
      }
    });
  }
  for (auto& th : threads) th.join();
  const Nanos now = kT0 + seconds(1);
  EXPECT_EQ(b.requests(now), 40000);
  EXPECT_EQ(b.retries(now), 400);  // each asked when its own deposits were 50 times more
}

TEST(RetryBudget, ChangedWindowStartsAfresh) {
  RetryConfig c;
  c.budget_ratio = 1;
  c.budget_min_per_s = 0;
  c.budget_window = seconds(10);
  RetryBudget b(c);
  b.record_request(kT0);
  ASSERT_TRUE(b.try_withdraw(kT0));
  b.reconfigure(c);  // same window: the counts stay
  EXPECT_EQ(b.requests(kT0), 1);
  EXPECT_EQ(b.retries(kT0), 1);
  c.budget_window = seconds(20);
  b.reconfigure(c);
  EXPECT_EQ(b.requests(kT0), 0);
  EXPECT_EQ(b.retries(kT0), 0);
  EXPECT_FALSE(b.try_withdraw(kT0));
}

TEST(RetryBudget, MinimumPerSecondLetsLowTrafficRetry) {
  RetryConfig c;
  c.budget_ratio = 0.2;
  c.budget_min_per_s = 1;
  c.budget_window = seconds(10);
  RetryBudget b(c);
  b.record_request(kT0);
  int granted = 0;
  while (b.try_withdraw(kT0) && granted < 1000) ++granted;
  EXPECT_EQ(granted, 10);  // 0.2 * 1 + 1/s * 10 s = 10.2
}

TEST(RetryBudget, ExhaustedBudgetStopsRetriesAndDeadlineDoesNotSpend) {
  RetryConfig c;
  c.budget_ratio = 0;
  c.budget_min_per_s = 0.1;  // 1 retry per 10 s window
  RetryBudget b(c);
  Rng rng(3);
  AttemptState st{1, kT0 + seconds(60), false};
  AttemptState late{1, kT0, false};
  EXPECT_EQ(decide_retry(c, late, out(OutcomeKind::kTimeout), kT0, &b, rng).verdict,
            RetryVerdict::kDeadline);
  EXPECT_EQ(b.retries(kT0), 0);
  EXPECT_EQ(decide_retry(c, st, out(OutcomeKind::kTimeout), kT0, &b, rng).verdict,
            RetryVerdict::kRetry);
  EXPECT_EQ(decide_retry(c, st, out(OutcomeKind::kTimeout), kT0, &b, rng).verdict,
            RetryVerdict::kBudgetExhausted);
}

}  // namespace
}  // namespace bw::routing
