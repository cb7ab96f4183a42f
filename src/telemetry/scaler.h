#pragma once
// Predictive scaler: turns the gateway's arrival, completion and queue signals into a replica
// count recommendation that an autoscaler (the `bellwether autoscale` controller or an HPA through
// bellwether_replicas_recommended) can apply.
//
// It forecasts the arrival rate one horizon ahead with two methods — a linearly weighted moving
// average (WMA) and Holt's linear trend (double exponential smoothing) — and sizes the fleet for
// the forecast plus headroom, divided by the measured throughput of one replica. Holt sees a ramp
// while it is still small, so replicas start before the queue builds. A reactive rule (scale when
// the queue is deeper than a threshold) is kept as a baseline for comparison.
//
// Anti-flapping: scale up early, on the forecast, past a tolerance and at most once per
// up-cooldown; scale down late, on evidence: only when the smoothed measured rate (never the
// trend extrapolation) uses less than `scale_down_utilization` of the current capacity, to the
// largest count wanted within the stabilization window, after the down-cooldown since the last
// change.
//
// Pure: time is passed in; nothing reads a clock. Memory is bounded by `history_size`.
// Thread safety: all public methods are safe to call from any thread (one internal mutex, taken
// once per observation; nothing here is on the per-request path).
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.h"

namespace bw::telemetry {

enum class ScaleMethod { kWma, kHolt, kReactive };
std::string_view to_string(ScaleMethod m);
std::optional<ScaleMethod> parse_scale_method(std::string_view s);  // "wma", "holt", "reactive"

struct ScalerConfig {
  ScaleMethod method = ScaleMethod::kHolt;
  Nanos sample_interval = seconds(5);    // observations are folded into samples of this length
  std::size_t history_size = 720;        // samples kept (1 h at 5 s); bounds memory
  std::size_t wma_window = 12;           // samples in the weighted moving average (60 s at 5 s)
  double holt_alpha = 0.3;               // level smoothing, 0 < alpha <= 1
  double holt_beta = 0.1;                // trend smoothing, 0 < beta <= 1
  Nanos forecast_horizon = seconds(60);  // how far ahead to size for (about a pod start-up time)
  double headroom = 0.2;                 // capacity kept above the forecast (0.2 = 20 %)
  int min_replicas = 1;
  int max_replicas = 50;
  double scale_down_utilization = 0.7;  // scale down only when load < this * current capacity
  // Scale up only when the forecast needs more than (1 + tolerance) of the current count; with
  // the down threshold this forms the hysteresis band that keeps noise from moving replicas.
  double scale_up_tolerance = 0.1;
  Nanos scale_up_cooldown = seconds(15);    // between two scale-up steps
  Nanos scale_down_cooldown = seconds(60);  // since the last change of either direction
  Nanos scale_down_window = seconds(300);   // down goes to the max wanted within this window
  double capacity_rps_per_replica = 10;     // prior throughput of one replica, requests/s
  bool learn_capacity = true;               // replace the prior by measured throughput
  double capacity_ewma_alpha = 0.2;         // smoothing of the measured throughput
  double saturation_queue_depth = 1;        // queue depth at which a replica counts as busy
  // True when each replica feeds its own counters (the gateway): rates and queue depth are
  // multiplied by current_replicas to estimate the cluster (traffic is balanced evenly).
  bool per_replica_observations = true;
  double reactive_queue_threshold = 50;  // reactive rule: scale up when queue depth exceeds this
  double reactive_step_factor = 1.5;     // reactive rule: multiply replicas by this per step
};

// Cumulative counters, as the gateway keeps them; the scaler differentiates them itself.
struct Observation {
  std::uint64_t arrivals_total = 0;     // requests received (admitted or queued)
  std::uint64_t completions_total = 0;  // requests finished
  double queue_depth = 0;               // requests waiting now
  int current_replicas = 1;             // replicas running now (>= 1)
  // Multiplies rates and queue depth to reach the cluster total; 0 = use current_replicas when
  // per_replica_observations is set. Set it when the observer is not the scaled target, e.g. a
  // gateway replica that sees 1/N of the traffic sent to a model server.
  double scale = 0;
  // Whether the target is saturated by its own capacity during this observation, when the
  // caller knows (capacity is then learned only if true); nullopt = infer it from the queue.
  std::optional<bool> saturated;
  // Requests waiting, when queue_depth is in another unit (tokens): the reactive rule's
  // threshold counts requests. < 0 = queue_depth is in requests.
  double queue_requests = -1;
};

struct Recommendation {
  int recommended_replicas = 1;
  int current_replicas = 1;
  double forecast_rpm_wma = 0;  // cluster arrivals per minute, one horizon ahead
  double forecast_rpm_holt = 0;
  double arrival_rpm = 0;  // last sample, cluster
  double capacity_rpm_per_replica = 0;
  double queue_depth = 0;  // cluster estimate
  ScaleMethod method = ScaleMethod::kHolt;
  std::string_view reason = "hold";  // "warmup", "hold", "scale_up", "scale_down", "cooldown"
};

// JSON body of GET /v1/metrics/queue.
std::string to_json(const Recommendation& r);

class PredictiveScaler {
 public:
  explicit PredictiveScaler(ScalerConfig config);

  // Feeds one observation and returns the recommendation as of `now`. Call it periodically
  // (e.g. every second); calls closer than sample_interval only refresh the queue depth.
  Recommendation observe(Nanos now, const Observation& obs);
  // Last recommendation without feeding anything (for /v1/metrics/queue).
  Recommendation last() const;
  std::size_t samples() const;
  const ScalerConfig& config() const { return config_; }
  // Replaces the capacity per replica (requests/s, or the target's unit) when the caller measures
  // it itself (the gateway's CPU cost per request).
  void set_capacity_rps(double capacity);
  // Whether the capacity has been learned from a saturated observation (not the prior).
  bool capacity_learned() const;

 private:
  struct Sample {
    Nanos at;
    double arrival_rps;
    double completion_rps;
    double queue_depth;
  };
  void add_sample(const Sample& s, int replicas, std::optional<bool> saturated);
  double wma_rps() const;
  double holt_rps() const;
  double level_rps() const;
  int clamp(double replicas) const;
  void decide(Nanos now, double queue_depth, double queue_requests, int replicas);

  const ScalerConfig config_;
  mutable std::mutex mu_;
  std::deque<Sample> history_;
  std::deque<std::pair<Nanos, int>> wanted_;  // desired counts within scale_down_window
  std::optional<Observation> prev_obs_;
  Nanos prev_at_ = 0;
  bool holt_init_ = false;
  double level_ = 0;
  double trend_ = 0;
  double capacity_rps_;
  bool capacity_learned_ = false;
  int recommended_ = 0;  // 0 = not yet initialised
  Nanos last_up_ = 0;
  Nanos last_change_ = 0;
  bool changed_once_ = false;
  Recommendation last_;
};

}  // namespace bw::telemetry
