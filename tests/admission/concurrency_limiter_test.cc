#include "admission/concurrency_limiter.h"

#include <gtest/gtest.h>

namespace bw::admission {
namespace {

// Feeds one completed request that started with `in_flight` requests running.
void sample(ConcurrencyLimiter& l, Nanos started, Nanos now, Nanos latency, SampleOutcome o,
            int in_flight) {
  ASSERT_TRUE(l.try_acquire());
  l.on_complete(ConcurrencyLimiter::Ticket{started, in_flight}, now, latency, o);
}

TEST(ConcurrencyLimiter, FixedLimitCountsSlotsAndIgnoresSamples) {
  LimiterConfig c;
  c.mode = LimitMode::kFixed;
  c.initial = 2;
  ConcurrencyLimiter l(c);
  EXPECT_TRUE(l.try_acquire());
  EXPECT_TRUE(l.try_acquire());
  EXPECT_FALSE(l.try_acquire());
  EXPECT_EQ(l.in_flight(), 2);
  l.on_complete(l.ticket(0), seconds(1), seconds(100), SampleOutcome::kOverloaded);
  EXPECT_EQ(l.limit(), 2);
  EXPECT_EQ(l.in_flight(), 1);
  EXPECT_TRUE(l.try_acquire());
  l.release();
  l.release();
  l.release();  // extra releases must not go negative
  EXPECT_EQ(l.in_flight(), 0);
}

TEST(ConcurrencyLimiter, ClassifiesUpstreamStatus) {
  EXPECT_EQ(classify_upstream_status(200), SampleOutcome::kSuccess);
  EXPECT_EQ(classify_upstream_status(400), SampleOutcome::kSuccess);
  EXPECT_EQ(classify_upstream_status(429), SampleOutcome::kOverloaded);
  EXPECT_EQ(classify_upstream_status(503), SampleOutcome::kOverloaded);
  EXPECT_EQ(classify_upstream_status(500), SampleOutcome::kIgnored);
  EXPECT_EQ(classify_upstream_status(0), SampleOutcome::kIgnored);
}

LimiterConfig aimd() {
  LimiterConfig c;
  c.mode = LimitMode::kAimd;
  c.initial = 10;
  c.min_limit = 2;
  c.max_limit = 20;
  c.decrease_factor = 0.75;
  return c;
}

TEST(ConcurrencyLimiter, AimdGrowsAboutOnePerWindowWhenBusy) {
  ConcurrencyLimiter l(aimd());
  // estimate: 10 + 1/10 + 1/10.1 + ... crosses 11 on the 11th success.
  for (int i = 0; i < 10; ++i) sample(l, i, i, millis(100), SampleOutcome::kSuccess, 10);
  EXPECT_EQ(l.limit(), 10);
  sample(l, 10, 10, millis(100), SampleOutcome::kSuccess, 10);
  EXPECT_EQ(l.limit(), 11);
  for (int i = 0; i < 1000; ++i) sample(l, i, i, millis(100), SampleOutcome::kSuccess, 20);
  EXPECT_EQ(l.limit(), 20);  // max bound
}

TEST(ConcurrencyLimiter, AimdDoesNotGrowWhenAppLimited) {
  ConcurrencyLimiter l(aimd());
  for (int i = 0; i < 100; ++i) sample(l, i, i, millis(100), SampleOutcome::kSuccess, 4);
  EXPECT_EQ(l.limit(), 10);
}

TEST(ConcurrencyLimiter, AimdBacksOffOnSlowSamples) {
  LimiterConfig c = aimd();
  c.aimd_latency_threshold = millis(100);
  ConcurrencyLimiter l(c);
  sample(l, seconds(1), seconds(2), millis(100), SampleOutcome::kSuccess, 10);
  EXPECT_EQ(l.limit(), 10);
  sample(l, seconds(1), seconds(2), millis(150), SampleOutcome::kSuccess, 10);
  EXPECT_EQ(l.limit(), 7);  // floor(10 * 0.75)
}

TEST(ConcurrencyLimiter, Upstream429DecreasesAtOnceOncePerGeneration) {
  ConcurrencyLimiter l(aimd());
  sample(l, seconds(1), seconds(2), millis(10), SampleOutcome::kOverloaded, 10);
  EXPECT_EQ(l.limit(), 7);
  // Sent before the decrease: an echo of the same congestion.
  sample(l, seconds(1), seconds(2) + 1, millis(10), SampleOutcome::kOverloaded, 10);
  EXPECT_EQ(l.limit(), 7);
  // Sent after the decrease: a new signal.
  sample(l, seconds(3), seconds(4), millis(10), SampleOutcome::kOverloaded, 7);
  EXPECT_EQ(l.limit(), 5);  // floor(7 * 0.75)
  for (int i = 0; i < 10; ++i) {
    sample(l, seconds(10 + 2 * i), seconds(11 + 2 * i), millis(10), SampleOutcome::kOverloaded, 5);
  }
  EXPECT_EQ(l.limit(), 2);  // min bound
  // Ignored outcomes (client cancel, 5xx) change nothing.
  sample(l, seconds(100), seconds(101), millis(10), SampleOutcome::kIgnored, 2);
  EXPECT_EQ(l.limit(), 2);
}

LimiterConfig gradient() {
  LimiterConfig c;
  c.mode = LimitMode::kGradient;
  c.initial = 20;
  c.min_limit = 4;
  c.max_limit = 100;
  return c;
}

TEST(ConcurrencyLimiter, GradientGrowsWhileLatencyStaysAtBaseline) {
  ConcurrencyLimiter l(gradient());
  // gradient = min(1, 1.5 * long/short) = 1 -> estimate += smoothing * queue_allowance = 0.8.
  for (int i = 0; i < 10; ++i) {
    sample(l, i, i, millis(100), SampleOutcome::kSuccess, l.limit());
  }
  EXPECT_NEAR(l.estimated_limit(), 28.0, 1e-9);
  EXPECT_EQ(l.limit(), 28);
  for (int i = 0; i < 500; ++i) {
    sample(l, i, i, millis(100), SampleOutcome::kSuccess, l.limit());
  }
  EXPECT_EQ(l.limit(), 100);
}

TEST(ConcurrencyLimiter, GradientShrinksWhenLatencyRises) {
  ConcurrencyLimiter l(gradient());
  for (int i = 0; i < 10; ++i) {
    sample(l, i, i, millis(100), SampleOutcome::kSuccess, l.limit());
  }
  ASSERT_EQ(l.limit(), 28);
  double previous = l.estimated_limit();
  for (int i = 0; i < 20; ++i) {
    sample(l, i, i, millis(400), SampleOutcome::kSuccess, l.limit());
    if (i >= 2) {
      EXPECT_LT(l.estimated_limit(), previous) << "sample " << i;
    }
    previous = l.estimated_limit();
  }
  EXPECT_LT(l.limit(), 20);
  EXPECT_GE(l.limit(), 4);
  // Back to the baseline latency: it recovers.
  const int low = l.limit();
  for (int i = 0; i < 200; ++i) {
    sample(l, i, i, millis(100), SampleOutcome::kSuccess, l.limit());
  }
  EXPECT_GT(l.limit(), low);
}

TEST(ConcurrencyLimiter, GradientIgnoresSamplesWhenAppLimited) {
  ConcurrencyLimiter l(gradient());
  for (int i = 0; i < 50; ++i) sample(l, i, i, millis(100), SampleOutcome::kSuccess, 3);
  EXPECT_EQ(l.limit(), 20);
}

TEST(ConcurrencyLimiter, Gradient429CutsImmediately) {
  ConcurrencyLimiter l(gradient());
  sample(l, seconds(1), seconds(2), millis(100), SampleOutcome::kOverloaded, 20);
  EXPECT_EQ(l.limit(), 15);
}

TEST(ConcurrencyLimiter, ReconfigureKeepsSlotsInUse) {
  ConcurrencyLimiter l(aimd());
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(l.try_acquire());
  LimiterConfig c;
  c.mode = LimitMode::kFixed;
  c.initial = 4;
  l.reconfigure(c);
  EXPECT_EQ(l.limit(), 4);
  EXPECT_EQ(l.in_flight(), 6);
  EXPECT_FALSE(l.has_capacity());
  for (int i = 0; i < 3; ++i) l.release();
  EXPECT_TRUE(l.try_acquire());
}

TEST(ConcurrencyLimiter, BoundsAreSanitized) {
  LimiterConfig c = aimd();
  c.initial = 1000;
  ConcurrencyLimiter l(c);
  EXPECT_EQ(l.limit(), 20);
  c.initial = 0;
  ConcurrencyLimiter l2(c);
  EXPECT_EQ(l2.limit(), 2);
}

}  // namespace
}  // namespace bw::admission
