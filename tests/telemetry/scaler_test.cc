#include "telemetry/scaler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace bw::telemetry {
namespace {

constexpr double kCapacityRpm = 400;

Observation ob(std::uint64_t arrivals, std::uint64_t completions, double queue, int replicas) {
  Observation o;
  o.arrivals_total = arrivals;
  o.completions_total = completions;
  o.queue_depth = queue;
  o.current_replicas = replicas;
  return o;
}  // one replica serves 400 requests/min

// The spike from the issue: 500/min, ramp to 15,000/min over 90 s, hold, ramp back, calm.
double spike_rpm(int t) {
  if (t < 60) return 500;
  if (t < 150) return 500 + (15000 - 500) * (t - 60) / 90.0;
  if (t < 300) return 15000;
  if (t < 390) return 15000 - (15000 - 500) * (t - 300) / 90.0;
  return 500;
}

ScalerConfig test_config(ScaleMethod m) {
  ScalerConfig c;
  c.method = m;
  c.min_replicas = 2;
  c.max_replicas = 60;
  c.capacity_rps_per_replica = kCapacityRpm / 60;
  c.per_replica_observations = false;  // the simulation feeds cluster totals
  return c;
}

// A fluid queue served by `replicas` at kCapacityRpm each, stepped once per second, with seeded
// multiplicative noise on the arrival rate.
struct Cluster {
  explicit Cluster(unsigned seed, double noise) : rng(seed), noise(-noise, noise) {}
  void step(double rpm, int replicas) {
    carry += rpm / 60 * (1 + noise(rng));
    const auto arrived = static_cast<std::uint64_t>(carry);
    carry -= static_cast<double>(arrived);
    arrivals += arrived;
    queue += static_cast<double>(arrived);
    served_carry += std::min(queue, replicas * kCapacityRpm / 60);
    const auto served = static_cast<std::uint64_t>(served_carry);
    served_carry -= static_cast<double>(served);
    queue -= static_cast<double>(served);
    completions += served;
  }
  Observation obs(int replicas) const {
    return ob(arrivals, completions, std::floor(queue), replicas);
  }
  std::mt19937 rng;
  std::uniform_real_distribution<double> noise;
  double carry = 0, served_carry = 0, queue = 0;
  std::uint64_t arrivals = 0, completions = 0;
};

// First second at which each method recommends more than the 2 running replicas, with the fleet
// held at 2 (open loop) so that all three see the same queue.
TEST(Scaler, HoltSeesTheSpikeBeforeTheQueueDoes) {
  PredictiveScaler wma(test_config(ScaleMethod::kWma));
  PredictiveScaler holt(test_config(ScaleMethod::kHolt));
  PredictiveScaler reactive(test_config(ScaleMethod::kReactive));
  Cluster cluster(42, 0.10);
  int t_wma = -1, t_holt = -1, t_reactive = -1;
  for (int t = 0; t <= 300; ++t) {
    cluster.step(spike_rpm(t), 2);
    const Nanos now = seconds(1000 + t);
    const auto obs = cluster.obs(2);
    if (wma.observe(now, obs).recommended_replicas > 2 && t_wma < 0) t_wma = t;
    if (holt.observe(now, obs).recommended_replicas > 2 && t_holt < 0) t_holt = t;
    if (reactive.observe(now, obs).recommended_replicas > 2 && t_reactive < 0) t_reactive = t;
  }
  std::printf(
      "spike 500/min -> 15000/min from t=60s over 90s; first scale-up at: "
      "wma t=%ds, holt t=%ds, reactive(queue>%g) t=%ds\n",
      t_wma, t_holt, ScalerConfig{}.reactive_queue_threshold, t_reactive);
  ASSERT_GE(t_holt, 60) << "no scale-up before the ramp starts (noise alone)";
  ASSERT_GE(t_wma, 60);
  ASSERT_GT(t_reactive, 0);
  EXPECT_LT(t_holt, t_reactive);
  EXPECT_LE(t_holt, t_wma) << "the trend term sees a ramp no later than the average";
}

int direction_changes(const std::vector<int>& recs, int* ups = nullptr, int* downs = nullptr) {
  int last_dir = 0, changes = 0;
  for (std::size_t i = 1; i < recs.size(); ++i) {
    const int dir = recs[i] > recs[i - 1] ? 1 : recs[i] < recs[i - 1] ? -1 : 0;
    if (dir == 0) continue;
    if (dir > 0 && ups) ++*ups;
    if (dir < 0 && downs) ++*downs;
    if (last_dir != 0 && dir != last_dir) ++changes;
    last_dir = dir;
  }
  return changes;
}

// Closed loop: the fleet follows the recommendation. Over the whole spike the recommendation
// goes up, then down — one reversal — and it serves the peak.
TEST(Scaler, ClosedLoopSpikeHasOneReversal) {
  for (unsigned seed : {1u, 7u, 42u}) {
    PredictiveScaler holt(test_config(ScaleMethod::kHolt));
    Cluster cluster(seed, 0.10);
    int replicas = 2, peak = 0;
    double max_queue = 0;
    std::vector<int> recs;
    for (int t = 0; t <= 900; ++t) {
      cluster.step(spike_rpm(t), replicas);
      const auto r = holt.observe(seconds(1000 + t), cluster.obs(replicas));
      recs.push_back(r.recommended_replicas);
      replicas = r.recommended_replicas;
      peak = std::max(peak, replicas);
      max_queue = std::max(max_queue, cluster.queue);
    }
    int ups = 0, downs = 0;
    EXPECT_EQ(direction_changes(recs, &ups, &downs), 1) << "seed " << seed;
    EXPECT_GE(peak, 45) << "15000/min * 1.2 / 400 = 45 replicas";
    EXPECT_LE(peak, 60);
    EXPECT_EQ(recs.back(), 2) << "back to the floor after the spike, seed " << seed;
    std::printf("seed %u: peak %d replicas, %d up steps, %d down steps, max queue %.0f\n", seed,
                peak, ups, downs, max_queue);
  }
}

// Steady traffic with ±15 % seeded noise, closed loop, starting from the size the load needs
// (with no slack: the tolerance band is all that protects it). Noise may cost one upward step
// when it peaks, but never a reversal: no up-then-down, no down-then-up.
TEST(Scaler, NoFlappingOnNoise) {
  for (const ScaleMethod m : {ScaleMethod::kHolt, ScaleMethod::kWma}) {
    for (const double rpm : {500.0, 3000.0, 12000.0}) {
      for (const unsigned seed : {1u, 2u, 3u, 4u, 5u}) {
        PredictiveScaler s(test_config(m));
        Cluster cluster(seed, 0.15);
        const int sized = std::max(2, static_cast<int>(std::ceil(rpm * 1.2 / kCapacityRpm)));
        int replicas = sized, steps = 0;
        std::vector<int> recs;
        for (int t = 0; t <= 900; ++t) {
          cluster.step(rpm, replicas);
          const int r = s.observe(seconds(1000 + t), cluster.obs(replicas)).recommended_replicas;
          if (r != replicas) ++steps;
          recs.push_back(r);
          replicas = r;
        }
        const auto label = std::string(to_string(m)) + " " + std::to_string(rpm) + " rpm seed " +
                           std::to_string(seed);
        EXPECT_EQ(direction_changes(recs), 0) << label;
        EXPECT_LE(steps, 1) << label;
        EXPECT_GE(replicas, sized) << label;
        EXPECT_LE(replicas, static_cast<int>(std::ceil(sized * 1.15))) << label;
      }
    }
  }
}

TEST(Scaler, ExactForecastsOnALinearRamp) {
  ScalerConfig c = test_config(ScaleMethod::kHolt);
  c.holt_alpha = 1;  // no smoothing: level = last sample, trend = last difference
  c.holt_beta = 1;
  c.wma_window = 3;
  c.learn_capacity = false;
  c.scale_up_cooldown = 0;
  c.scale_up_tolerance = 0;
  PredictiveScaler s(c);
  // Samples every 5 s; arrivals per second 10, 20, 30 (each over a 5 s window).
  std::uint64_t total = 0;
  s.observe(seconds(0), ob(total, total, 0, 2));
  Recommendation r;
  for (int i = 1; i <= 3; ++i) {
    total += static_cast<std::uint64_t>(10 * i * 5);
    r = s.observe(seconds(5.0 * i), ob(total, total, 0, 2));
  }
  EXPECT_EQ(s.samples(), 3u);
  // WMA of 10, 20, 30 with weights 1, 2, 3 = 140/6 per second.
  EXPECT_NEAR(r.forecast_rpm_wma, 140.0 / 6 * 60, 1e-9);
  // Holt: level 30, trend 10 per 5 s step; 60 s ahead = 12 steps -> 150 per second.
  EXPECT_NEAR(r.forecast_rpm_holt, 150 * 60, 1e-9);
  EXPECT_NEAR(r.arrival_rpm, 1800, 1e-9);
  // 150/s * 1.2 / (400/60 per replica) = 27 replicas.
  EXPECT_EQ(r.recommended_replicas, 27);
  EXPECT_EQ(r.reason, "scale_up");
}

TEST(Scaler, CooldownsAndScaleDownThreshold) {
  ScalerConfig c = test_config(ScaleMethod::kWma);
  c.wma_window = 1;
  c.learn_capacity = false;
  c.scale_up_cooldown = seconds(30);
  c.scale_down_cooldown = seconds(60);
  c.scale_down_window = seconds(20);
  PredictiveScaler s(c);
  std::uint64_t total = 0;
  Nanos t = 0;
  auto feed = [&](double rps) {
    t += seconds(5);
    total += static_cast<std::uint64_t>(rps * 5);
    return s.observe(t, ob(total, total, 0, 2));
  };
  s.observe(t, ob(0, 0, 0, 2));
  EXPECT_EQ(feed(40).recommended_replicas, 8);  // 40 * 1.2 / 6.667 = 7.2 -> 8
  EXPECT_EQ(feed(80).recommended_replicas, 8);  // up-cooldown (wants 15)
  EXPECT_EQ(s.last().reason, "cooldown");
  for (int i = 0; i < 5; ++i) feed(80);  // t = 35 s: 30 s after the first step
  EXPECT_EQ(s.last().recommended_replicas, 15);
  // 60 rps needs 11 but uses 60/(15*6.667) = 60 % of capacity: below 70 %, yet the down-cooldown
  // (60 s since the last change) holds it.
  for (int i = 0; i < 11; ++i) EXPECT_EQ(feed(60).recommended_replicas, 15) << i;
  EXPECT_EQ(feed(60).recommended_replicas, 11);
  EXPECT_EQ(s.last().reason, "scale_down");
  // 70 rps on 11 replicas: 95 % used and wants 13 > 11 -> up (the up-cooldown has long passed).
  EXPECT_EQ(feed(70).recommended_replicas, 13);
  // 55 rps on 13 replicas is 63 % but the window still holds 13: no down.
  EXPECT_EQ(feed(55).recommended_replicas, 13);
}

TEST(Scaler, LearnsCapacityWhenSaturated) {
  ScalerConfig c = test_config(ScaleMethod::kHolt);
  c.capacity_rps_per_replica = 100;  // a wrong prior, far too optimistic
  c.capacity_ewma_alpha = 0.5;
  c.scale_up_tolerance = 0;
  PredictiveScaler s(c);
  std::uint64_t arr = 0, done = 0;
  Recommendation r;
  s.observe(seconds(0), ob(0, 0, 0, 4));
  for (int i = 1; i <= 20; ++i) {
    arr += 60 * 5;   // 60 rps arriving
    done += 40 * 5;  // 4 busy replicas finish 40 rps: 10 rps each
    r = s.observe(seconds(5.0 * i), ob(arr, done, 100, 4));
  }
  EXPECT_NEAR(r.capacity_rpm_per_replica, 600, 1);
  // 60 rps + backlog 100/60 s, * 1.2 / 10 = 7.4 -> 8
  EXPECT_EQ(r.recommended_replicas, 8);
}

TEST(Scaler, PerReplicaObservationsScaleToTheCluster) {
  ScalerConfig c = test_config(ScaleMethod::kWma);
  c.per_replica_observations = true;
  c.learn_capacity = false;
  c.wma_window = 1;
  PredictiveScaler s(c);
  s.observe(seconds(0), ob(0, 0, 0, 3));
  // This replica sees 20 rps; with 3 replicas the cluster sees 60 rps -> 60*1.2/6.667 = 10.8.
  const auto r = s.observe(seconds(5), ob(100, 100, 0, 3));
  EXPECT_NEAR(r.arrival_rpm, 3600, 1e-9);
  EXPECT_EQ(r.recommended_replicas, 11);
}

TEST(Scaler, JsonForTheQueueEndpoint) {
  Recommendation r;
  r.recommended_replicas = 7;
  r.current_replicas = 3;
  r.forecast_rpm_wma = 1200.5;
  r.forecast_rpm_holt = 2400;
  r.method = ScaleMethod::kHolt;
  r.arrival_rpm = 900;
  r.capacity_rpm_per_replica = 400;
  r.queue_depth = 12;
  r.reason = "scale_up";
  const std::string json = to_json(r);
  EXPECT_EQ(json.rfind("{\"recommended_replicas\":7,\"current_replicas\":3,"
                       "\"forecast_rpm_wma\":1200.5,\"forecast_rpm_holt\":2400,"
                       "\"method\":\"holt\",",
                       0),
            0u)
      << json;
  EXPECT_NE(json.find("\"reason\":\"scale_up\""), std::string::npos) << json;
  EXPECT_EQ(parse_scale_method("reactive"), ScaleMethod::kReactive);
  EXPECT_EQ(parse_scale_method("nope"), std::nullopt);
}

}  // namespace
}  // namespace bw::telemetry
