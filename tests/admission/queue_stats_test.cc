#include "admission/queue_stats.h"

#include <gtest/gtest.h>

namespace bw::admission {
namespace {

TEST(LatencyWindow, BucketsAreExactBelow16usAndWithin3PercentAbove) {
  for (std::uint64_t us = 0; us < 16; ++us) {
    EXPECT_EQ(LatencyWindow::bucket_value_us(LatencyWindow::bucket_of(us)), us);
  }
  for (std::uint64_t us : {16ull, 17ull, 100ull, 1'000ull, 50'000ull, 12'345'678ull}) {
    const double v = LatencyWindow::bucket_value_us(LatencyWindow::bucket_of(us));
    EXPECT_NEAR(v, static_cast<double>(us), static_cast<double>(us) / 32.0 + 0.5) << us;
  }
  // Monotone: larger values never land in a smaller bucket.
  int last = 0;
  for (std::uint64_t us = 0; us < 1'000'000; us += 37) {
    const int b = LatencyWindow::bucket_of(us);
    EXPECT_GE(b, last);
    last = b;
  }
  EXPECT_EQ(LatencyWindow::bucket_of(UINT64_MAX), LatencyWindow::kBuckets - 1);
}

TEST(LatencyWindow, PercentilesOverTheWindow) {
  LatencyWindow w(seconds(60), 6);
  const Nanos t = seconds(1000);
  EXPECT_EQ(w.percentile_ms(t, 0.5), 0.0);
  for (int ms = 1; ms <= 100; ++ms) w.record(t, millis(ms));
  EXPECT_EQ(w.count(t), 100u);
  // 50 ms = 50000 us lies in bucket [49152, 51200): reported as its middle.
  EXPECT_DOUBLE_EQ(w.percentile_ms(t, 0.50), 50.176);
  // 95 ms = 95000 us -> bucket [94208, 98304) -> 96.256 ms.
  EXPECT_DOUBLE_EQ(w.percentile_ms(t, 0.95), 96.256);
  // 99 ms = 99000 us -> bucket [98304, 102400) -> 100.352 ms.
  EXPECT_DOUBLE_EQ(w.percentile_ms(t, 0.99), 100.352);
}

TEST(LatencyWindow, OldSlicesFallOutOfTheWindow) {
  LatencyWindow w(seconds(60), 6);
  const Nanos t = seconds(1000);  // slice epoch 100
  w.record(t, millis(5));
  w.record(t + seconds(30), millis(7));
  EXPECT_EQ(w.count(t + seconds(30)), 2u);
  EXPECT_EQ(w.count(t + seconds(59)), 2u);
  EXPECT_EQ(w.count(t + seconds(60)), 1u);
  EXPECT_EQ(w.count(t + seconds(90)), 0u);
  EXPECT_EQ(w.percentile_ms(t + seconds(90), 0.5), 0.0);
}

TEST(RateWindow, CountsTheLastMinute) {
  RateWindow r(60);
  for (int i = 0; i < 30; ++i) r.record(millis(500));
  for (int i = 0; i < 30; ++i) r.record(seconds(59.5));
  EXPECT_EQ(r.sum(seconds(59.9)), 60u);
  EXPECT_EQ(r.sum(seconds(60.7)), 30u);
  EXPECT_EQ(r.sum(seconds(200)), 0u);
}

TEST(AdmissionStats, FillsCountersRatesAndDrainEstimate) {
  AdmissionStats st;
  const Nanos t = seconds(5000);
  for (int i = 0; i < 120; ++i) st.record_completion(t + millis(i * 100));
  st.record_wait(1, t, millis(10));
  st.record_timeout(2);
  st.record_timeout(2);
  st.record_evicted(2);
  st.record_refused_full(1);
  st.record_refused_overload(2);
  st.record_cancelled(0);
  QueueSnapshot s;
  s.depth = {2, 3, 5};
  const Nanos now = t + seconds(20);
  st.fill(now, s);
  EXPECT_DOUBLE_EQ(s.throughput_rpm, 120.0);
  EXPECT_DOUBLE_EQ(st.completion_rate(now), 2.0);
  ASSERT_TRUE(s.estimated_drain_seconds);
  EXPECT_DOUBLE_EQ(*s.estimated_drain_seconds, 5.0);  // 10 waiting / 2 per second
  EXPECT_EQ(s.shed, (PerPriority<std::uint64_t>{0, 1, 2}));
  EXPECT_EQ(s.timed_out, (PerPriority<std::uint64_t>{0, 0, 2}));
  EXPECT_EQ(s.cancelled, (PerPriority<std::uint64_t>{1, 0, 0}));
  EXPECT_DOUBLE_EQ(s.wait_ms[1].p50, 9.984);  // 10000 us -> bucket [9728, 10240)
  EXPECT_EQ(s.wait_ms[0].p99, 0.0);

  QueueSnapshot idle;
  st.fill(now + seconds(120), idle);
  EXPECT_EQ(idle.estimated_drain_seconds, 0.0);
  QueueSnapshot stuck;
  stuck.depth = {0, 1, 0};
  st.fill(now + seconds(120), stuck);
  EXPECT_FALSE(stuck.estimated_drain_seconds);
}

TEST(QueueMetricsJson, RendersExactFields) {
  QueueSnapshot s;
  s.depth = {1, 2, 3};
  s.in_flight = 4;
  s.throughput_rpm = 120;
  s.wait_ms[0] = {1.5, 2.25, 3.125};
  s.wait_ms[2] = {1000, 2000, 4000.0004};
  s.shed = {0, 1, 7};
  s.timed_out = {0, 0, 2};
  s.cancelled = {0, 3, 0};
  s.estimated_drain_seconds = 3.0;
  s.concurrency_limits = {{"gpt-4.1", 32}, {"we\"ird", 4}};
  EXPECT_EQ(
      render_queue_metrics_json(s),
      R"({"queue_depth":6,"depth_by_priority":{"p0":1,"p1":2,"p2":3},"in_flight":4,)"
      R"("throughput_rpm":120,"wait_ms":{"p0":{"p50":1.5,"p95":2.25,"p99":3.125},)"
      R"("p1":{"p50":0,"p95":0,"p99":0},"p2":{"p50":1000,"p95":2000,"p99":4000}},)"
      R"("shed":{"p0":0,"p1":1,"p2":7},"timed_out":{"p0":0,"p1":0,"p2":2},)"
      R"("cancelled":{"p0":0,"p1":3,"p2":0},)"
      R"("estimated_drain_seconds":3,"concurrency_limits":{"gpt-4.1":32,"we\"ird":4},)"
      R"("waiting_by_reason":{"concurrency":0,"deployment_rpm":0,"deployment_tpm":0,"key_limit":0},)"
      R"("waits_by_reason":{"concurrency":{"p0":0,"p1":0,"p2":0},"deployment_rpm":{"p0":0,"p1":0,"p2":0},)"
      R"("deployment_tpm":{"p0":0,"p1":0,"p2":0},"key_limit":{"p0":0,"p1":0,"p2":0}},)"
      R"("refusals_by_reason":{"concurrency":{"p0":0,"p1":0,"p2":0},"deployment_rpm":{"p0":0,"p1":0,"p2":0},)"
      R"("deployment_tpm":{"p0":0,"p1":0,"p2":0},"key_limit":{"p0":0,"p1":0,"p2":0}},)"
      R"("deployments":[]})");
  s.estimated_drain_seconds.reset();
  const std::string body = render_queue_metrics_json(s);
  EXPECT_NE(body.find(R"("estimated_drain_seconds":null)"), std::string::npos) << body;
}

}  // namespace
}  // namespace bw::admission
