#include "routing/balancer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace bw::routing {
namespace {

constexpr Nanos kT0 = seconds(1000);

std::vector<Candidate> cands(std::initializer_list<std::uint32_t> weights) {
  std::vector<Candidate> v;
  std::uint32_t i = 0;
  for (auto w : weights) v.push_back(Candidate{i++, w, 0, 1e8});
  return v;
}

TEST(SmoothWrr, NginxSequenceIsExact) {
  SmoothWrr wrr(3);
  auto c = cands({5, 1, 1});
  std::string seq;
  for (int i = 0; i < 14; ++i) seq += static_cast<char>('a' + c[wrr.pick(c)].index);
  EXPECT_EQ(seq, "aabacaaaabacaa");
}

TEST(SmoothWrr, SpreadIsExactByWeight) {
  SmoothWrr wrr(3);
  auto c = cands({3, 2, 1});
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 600; ++i) ++counts[c[wrr.pick(c)].index];
  EXPECT_EQ(counts[0], 300);
  EXPECT_EQ(counts[1], 200);
  EXPECT_EQ(counts[2], 100);
}

TEST(SmoothWrr, SkipsIneligibleDeploymentsWithoutBursts) {
  SmoothWrr wrr(3);
  auto all = cands({1, 1, 1});
  std::vector<Candidate> two = {all[0], all[2]};  // deployment 1 unavailable
  std::string seq;
  for (int i = 0; i < 6; ++i) seq += static_cast<char>('a' + two[wrr.pick(two)].index);
  EXPECT_EQ(seq, "acacac");
}

TEST(P2c, SpreadFollowsWeightsWhenCostsAreEqual) {
  Rng rng(12345);
  auto c = cands({3, 2, 1});
  int counts[3] = {0, 0, 0};
  constexpr int kN = 60000;
  for (int i = 0; i < kN; ++i) ++counts[c[pick_p2c(c, rng)].index];
  std::printf("[ p2c spread ] weights 3/2/1 -> %.3f / %.3f / %.3f\n", counts[0] / double(kN),
              counts[1] / double(kN), counts[2] / double(kN));
  EXPECT_NEAR(counts[0] / double(kN), 3.0 / 6, 0.01);
  EXPECT_NEAR(counts[1] / double(kN), 2.0 / 6, 0.01);
  EXPECT_NEAR(counts[2] / double(kN), 1.0 / 6, 0.01);
}

TEST(P2c, LowerCostWinsWhenSampled) {
  Rng rng(9);
  std::vector<Candidate> c = {{0, 1, 0, 5e8}, {1, 1, 0, 1e8}};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(c[pick_p2c(c, rng)].index, 1u);
  // In-flight load multiplies latency: 100 ms x 6 > 500 ms x 1.
  c[1].in_flight = 5;
  for (int i = 0; i < 100; ++i) EXPECT_EQ(c[pick_p2c(c, rng)].index, 0u);
}

TEST(P2c, UnknownLatencyIsExploredWhileIdleAndPenalisedWhenBusy) {
  Candidate fresh{0, 1, 0, 0};
  EXPECT_EQ(p2c_cost(fresh), 0.0);
  fresh.in_flight = 1;
  EXPECT_GT(p2c_cost(fresh), p2c_cost(Candidate{1, 1, 100, 1e9}));
}

TEST(LeastOutstanding, FewestPerWeightWithWeightedTies) {
  Rng rng(5);
  std::vector<Candidate> c = {{0, 1, 4, 0}, {1, 1, 1, 0}, {2, 2, 3, 0}};
  // loads: 5/1, 2/1, 4/2 -> tie between 1 and 2 (weights 1 and 2).
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 30000; ++i) ++counts[c[pick_least_outstanding(c, rng)].index];
  EXPECT_EQ(counts[0], 0);
  EXPECT_NEAR(counts[2] / 30000.0, 2.0 / 3, 0.02);
  c[1].in_flight = 0;  // 1/1 < 4/2
  for (int i = 0; i < 100; ++i) EXPECT_EQ(c[pick_least_outstanding(c, rng)].index, 1u);
}

TEST(PeakEwma, PeaksImmediatelyDecaysSlowly) {
  PeakEwma e(seconds(10));
  EXPECT_EQ(e.value(kT0), 0.0);
  e.observe(kT0, millis(100));
  EXPECT_DOUBLE_EQ(e.value(kT0), 1e8);
  e.observe(kT0 + seconds(1), millis(500));  // peak replaces at once
  EXPECT_DOUBLE_EQ(e.value(kT0 + seconds(1)), 5e8);
  e.observe(kT0 + seconds(2), millis(100));  // lower sample blends: w = e^-0.1
  const double w = std::exp(-0.1);
  EXPECT_NEAR(e.value(kT0 + seconds(2)), 5e8 * w + 1e8 * (1 - w), 1.0);
  const double v = e.value(kT0 + seconds(2));
  EXPECT_NEAR(e.value(kT0 + seconds(12)), v * std::exp(-1.0), 1.0);  // idle decay
}

TEST(Balancer, ParseNames) {
  EXPECT_EQ(parse_balancer("p2c_peak_ewma"), BalancerKind::kP2cPeakEwma);
  EXPECT_EQ(parse_balancer("weighted_round_robin"), BalancerKind::kWeightedRoundRobin);
  EXPECT_EQ(parse_balancer("least_outstanding"), BalancerKind::kLeastOutstanding);
  EXPECT_EQ(parse_balancer("random"), std::nullopt);
  EXPECT_STREQ(to_string(BalancerKind::kLeastOutstanding), "least_outstanding");
}

}  // namespace
}  // namespace bw::routing
