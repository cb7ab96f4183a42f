#include "routing/circuit_breaker.h"

#include <algorithm>
#include <cmath>

namespace bw::routing {

namespace {
constexpr std::size_t kRequests = 0;
constexpr std::size_t kFailures = 1;
}  // namespace

const char* to_string(BreakerState s) {
  switch (s) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

const char* to_string(OutcomeKind kind) {
  switch (kind) {
    case OutcomeKind::kSuccess:
      return "success";
    case OutcomeKind::kConnectError:
      return "connect_error";
    case OutcomeKind::kTimeout:
      return "timeout";
    case OutcomeKind::kHttp5xx:
      return "http_5xx";
    case OutcomeKind::kHttp429:
      return "http_429";
    case OutcomeKind::kClientError:
      return "client_error";
    case OutcomeKind::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

CircuitBreaker::CircuitBreaker(const BreakerConfig& cfg)
    : cfg_(cfg), window_(cfg.window, cfg.window_buckets) {}

void CircuitBreaker::reconfigure(const BreakerConfig& cfg) {
  const bool window_changed =
      cfg.window != cfg_.window || cfg.window_buckets != cfg_.window_buckets;
  cfg_ = cfg;
  if (window_changed) window_ = RollingWindow<2>(cfg.window, cfg.window_buckets);
}

Admission CircuitBreaker::check(Nanos now) {
  if (now < cooldown_until_) return Admission::kCooling;
  switch (state_) {
    case BreakerState::kClosed:
      return Admission::kAllowed;
    case BreakerState::kOpen:
      if (now < open_until_) return Admission::kOpen;
      state_ = BreakerState::kHalfOpen;
      probes_taken_ = 0;
      probe_successes_ = 0;
      [[fallthrough]];
    case BreakerState::kHalfOpen:
      return probes_taken_ < std::max(1, cfg_.half_open_probes) ? Admission::kProbe
                                                                : Admission::kOpen;
  }
  return Admission::kOpen;
}

Admission CircuitBreaker::acquire(Nanos now) {
  const Admission a = check(now);
  if (a == Admission::kProbe) ++probes_taken_;
  return a;
}

void CircuitBreaker::release_probe() {
  if (state_ == BreakerState::kHalfOpen && probes_taken_ > 0) --probes_taken_;
}

void CircuitBreaker::on_result(Admission admitted, OutcomeKind kind, Nanos retry_after, Nanos now,
                               Rng& rng) {
  if (kind == OutcomeKind::kCancelled) {
    if (admitted == Admission::kProbe) release_probe();
    return;
  }
  if (kind == OutcomeKind::kHttp429) {
    Nanos cool = retry_after > 0 ? retry_after : cfg_.cooldown_429;
    cool = std::min(cool, cfg_.cooldown_max);
    if (cool > 0) cooldown_until_ = std::max(cooldown_until_, now + cool);
  }
  const bool failed = is_failure(kind);
  if (admitted == Admission::kProbe) {
    // A probe result only counts in the half-open episode it was admitted in.
    if (state_ != BreakerState::kHalfOpen) return;
    if (failed) {
      trip(now, rng);
    } else if (++probe_successes_ >= std::max(1, cfg_.half_open_probes)) {
      close();
    }
    return;
  }
  // Results of requests admitted before the breaker opened say nothing new about the open state.
  if (state_ != BreakerState::kClosed) return;
  window_.add(now, kRequests, 1);
  if (!failed) {
    consecutive_ = 0;
    return;
  }
  window_.add(now, kFailures, 1);
  ++consecutive_;
  bool trip_now = cfg_.consecutive_failures > 0 && consecutive_ >= cfg_.consecutive_failures;
  if (!trip_now && cfg_.failure_rate > 0) {
    const std::int64_t total = window_.sum(now, kRequests);
    const std::int64_t fails = window_.sum(now, kFailures);
    trip_now = total >= std::max(1, cfg_.min_requests) &&
               static_cast<double>(fails) >= cfg_.failure_rate * static_cast<double>(total);
  }
  if (trip_now) trip(now, rng);
}

void CircuitBreaker::trip(Nanos now, Rng& rng) {
  ++openings_;
  // base * 2^(openings-1), computed in double so a long outage cannot overflow the shift.
  const double grown =
      static_cast<double>(cfg_.open_base) * std::ldexp(1.0, std::min(openings_ - 1, 62));
  const double capped =
      std::min(grown, static_cast<double>(std::max(cfg_.open_base, cfg_.open_max)));
  const double jitter = std::clamp(cfg_.open_jitter, 0.0, 1.0);
  // Jitter only shortens, so the cap holds and breakers opened together do not re-probe together.
  const double timeout = capped * (1.0 - jitter * rng.uniform());
  state_ = BreakerState::kOpen;
  open_until_ = now + static_cast<Nanos>(timeout);
  consecutive_ = 0;
  probes_taken_ = 0;
  probe_successes_ = 0;
  window_.clear();
}

void CircuitBreaker::close() {
  state_ = BreakerState::kClosed;
  openings_ = 0;
  consecutive_ = 0;
  probes_taken_ = 0;
  probe_successes_ = 0;
  window_.clear();
}

Nanos CircuitBreaker::available_at(Nanos now) {
  Nanos t = now;
  if (now < cooldown_until_) t = cooldown_until_;
  if (state_ == BreakerState::kOpen) t = std::max(t, open_until_);
  if (state_ == BreakerState::kHalfOpen && probes_taken_ >= std::max(1, cfg_.half_open_probes)) {
    t = std::max(t, now + cfg_.open_base);
  }
  return t;
}

}  // namespace bw::routing
