#include "admission/concurrency_limiter.h"

#include <algorithm>
#include <cmath>

namespace bw::admission {

SampleOutcome classify_upstream_status(int status) {
  if (status == 429 || status == 503) return SampleOutcome::kOverloaded;
  if (status >= 200 && status < 500) return SampleOutcome::kSuccess;
  return SampleOutcome::kIgnored;
}

ConcurrencyLimiter::ConcurrencyLimiter(LimiterConfig config) : config_(config) {
  config_.min_limit = std::max(1, config_.min_limit);
  config_.max_limit = std::max(config_.min_limit, config_.max_limit);
  if (!(config_.decrease_factor > 0 && config_.decrease_factor < 1)) config_.decrease_factor = 0.75;
  config_.short_window = std::max(1, config_.short_window);
  config_.long_window = std::max(config_.short_window, config_.long_window);
  if (config_.mode == LimitMode::kFixed) {
    limit_ = std::max(1, config_.initial);
    estimate_ = limit_;
  } else {
    limit_ = std::clamp(config_.initial, config_.min_limit, config_.max_limit);
    estimate_ = limit_;
  }
}

void ConcurrencyLimiter::set_estimate(double v) {
  estimate_ =
      std::clamp(v, static_cast<double>(config_.min_limit), static_cast<double>(config_.max_limit));
  // The epsilon keeps rounding noise (27.999999) from costing a whole slot.
  limit_ = static_cast<int>(std::floor(estimate_ + 1e-9));
}

void ConcurrencyLimiter::decrease(Nanos now) {
  set_estimate(std::floor(estimate_ * config_.decrease_factor));
  last_decrease_at_ = now;
}

void ConcurrencyLimiter::on_complete(const Ticket& t, Nanos now, Nanos latency,
                                     SampleOutcome outcome) {
  release();
  if (config_.mode == LimitMode::kFixed || outcome == SampleOutcome::kIgnored) return;
  if (outcome == SampleOutcome::kOverloaded) {
    // Requests admitted before the last decrease were sent under the old, larger limit: their
    // 429s are echoes of the congestion we already reacted to.
    if (t.started_at > last_decrease_at_) decrease(now);
    return;
  }
  if (latency < 0) latency = 0;
  if (config_.mode == LimitMode::kAimd) {
    if (config_.aimd_latency_threshold > 0 && latency > config_.aimd_latency_threshold) {
      if (t.started_at > last_decrease_at_) decrease(now);
      return;
    }
    aimd_sample(t, latency);
  } else {
    gradient_sample(t, latency);
  }
}

void ConcurrencyLimiter::aimd_sample(const Ticket& t, Nanos /*latency*/) {
  // Only grow when the window is actually used; an idle group must not drift to max_limit.
  if (2 * t.in_flight_at_start < limit_) return;
  set_estimate(estimate_ + config_.aimd_increase / std::max(1.0, estimate_));
}

void ConcurrencyLimiter::gradient_sample(const Ticket& t, Nanos latency) {
  const double rtt = static_cast<double>(std::max<Nanos>(latency, 1));
  ++samples_;
  const double short_alpha = 2.0 / (config_.short_window + 1);
  // Until the long window has data, a plain average warms the baseline up faster than an EMA.
  const double long_alpha = samples_ < config_.short_window ? 1.0 / static_cast<double>(samples_)
                                                            : 2.0 / (config_.long_window + 1);
  short_rtt_ = short_rtt_ == 0 ? rtt : short_rtt_ + short_alpha * (rtt - short_rtt_);
  long_rtt_ = long_rtt_ == 0 ? rtt : long_rtt_ + long_alpha * (rtt - long_rtt_);
  // Latency improved a lot (e.g. upstream scaled up): let the baseline follow down quickly.
  if (long_rtt_ / short_rtt_ > 2) long_rtt_ *= 0.95;
  // App limited: little traffic says nothing about how much more upstream could take.
  if (2 * t.in_flight_at_start < limit_) return;
  const double gradient = std::clamp(config_.tolerance * long_rtt_ / short_rtt_, 0.5, 1.0);
  const double proposed = estimate_ * gradient + config_.queue_allowance;
  set_estimate(estimate_ * (1 - config_.smoothing) + proposed * config_.smoothing);
}

}  // namespace bw::admission
