#pragma once
// ConcurrencyLimiter: how many requests of one model group (or one deployment) may be in flight.
//
// Modes:
//  - fixed:    the limit is `initial`, always.
//  - aimd:     additive increase (+aimd_increase per `limit` successful samples, i.e. about +1 per
//              round trip of the whole window) while the window is in use; multiplicative decrease
//              (x decrease_factor) when a sample is slower than aimd_latency_threshold.
//  - gradient: Netflix concurrency-limits Gradient2: compares a short-term latency (EMA over
//              `short_window` samples) with a long-term baseline (EMA over `long_window` samples);
//              new = limit * clamp(tolerance * long / short, 0.5, 1) + queue_allowance, smoothed.
//              Latency above baseline shrinks the limit, latency at baseline lets it grow.
// In both adaptive modes an upstream overload signal (429/503) decreases the limit at once by
// decrease_factor, at most once per "generation": only requests that started after the last
// decrease can trigger the next one, so a burst of 429s from one window counts as one signal.
// The limit never leaves [min_limit, max_limit]. A lower limit never revokes running requests.
//
// Pure and single threaded; the AdmissionController guards it with its group's mutex.
#include <cstdint>

#include "common/clock.h"

namespace bw::admission {

enum class LimitMode { kFixed, kAimd, kGradient };

struct LimiterConfig {
  LimitMode mode = LimitMode::kFixed;
  int initial = 32;     // starting limit (the limit itself in fixed mode)
  int min_limit = 1;    // adaptive lower bound
  int max_limit = 256;  // adaptive upper bound
  // Multiplicative decrease on 429/503 (both adaptive modes) and on slow samples (aimd).
  double decrease_factor = 0.75;
  // aimd: a sample slower than this counts as congestion; 0 = react to 429/503 only.
  Nanos aimd_latency_threshold = 0;
  double aimd_increase = 1.0;  // limit units added per full window of successes
  // gradient (Gradient2 defaults):
  int short_window = 10;       // samples in the short-term latency EMA
  int long_window = 600;       // samples in the long-term baseline EMA
  double tolerance = 1.5;      // latency may reach tolerance * baseline before shrinking
  double smoothing = 0.2;      // weight of a new limit estimate
  double queue_allowance = 4;  // headroom added to each estimate so the limit can grow
};

enum class SampleOutcome {
  kSuccess,     // a latency sample that says something about upstream capacity
  kOverloaded,  // upstream said 429/503: decrease at once
  kIgnored,     // client cancelled, transport error, 5xx: says nothing about capacity
};

// Maps an upstream HTTP status to a sample outcome (0 = no response).
SampleOutcome classify_upstream_status(int status);

class ConcurrencyLimiter {
 public:
  explicit ConcurrencyLimiter(LimiterConfig config = {});

  const LimiterConfig& config() const { return config_; }
  int limit() const { return limit_; }
  int in_flight() const { return in_flight_; }
  bool has_capacity() const { return in_flight_ < limit_; }

  // Takes a slot if one is free.
  bool try_acquire() {
    if (in_flight_ >= limit_) return false;
    ++in_flight_;
    return true;
  }
  // Taken right after a successful try_acquire(); handed back to on_complete().
  struct Ticket {
    Nanos started_at = 0;
    int in_flight_at_start = 0;
  };
  Ticket ticket(Nanos now) const { return Ticket{now, in_flight_}; }

  // Frees the slot and feeds the adaptive algorithm. `latency` is the upstream latency only
  // (queue wait excluded).
  void on_complete(const Ticket& t, Nanos now, Nanos latency, SampleOutcome outcome);

  // Frees a slot without a sample (request never reached upstream).
  void release() {
    if (in_flight_ > 0) --in_flight_;
  }

  double estimated_limit() const { return estimate_; }

  // Applies a new configuration (config reload); requests in flight keep their slots.
  void reconfigure(LimiterConfig config) {
    const int in_flight = in_flight_;
    *this = ConcurrencyLimiter(config);
    in_flight_ = in_flight;
  }

 private:
  void set_estimate(double v);
  void decrease(Nanos now);
  void aimd_sample(const Ticket& t, Nanos latency);
  void gradient_sample(const Ticket& t, Nanos latency);

  LimiterConfig config_;
  int limit_;
  int in_flight_ = 0;
  double estimate_;
  Nanos last_decrease_at_ = INT64_MIN;
  // Gradient2 state: exponential moving averages in nanoseconds (0 = no sample yet).
  double short_rtt_ = 0;
  double long_rtt_ = 0;
  std::int64_t samples_ = 0;
};

}  // namespace bw::admission
