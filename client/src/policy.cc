#include "bellwether/policy.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>

namespace bellwether {

TokenBucket::TokenBucket(TokenBucketConfig config, Nanos now)
    : config_(config), tokens_(std::max(1.0, config.burst)), last_(now) {
  config_.burst = std::max(1.0, config_.burst);
}

void TokenBucket::refill(Nanos now) {
  if (now <= last_) return;  // time never runs backwards for the bucket
  tokens_ = std::min(config_.burst,
                     tokens_ + static_cast<double>(now - last_) * 1e-9 * config_.rate_per_s);
  last_ = now;
}

Nanos TokenBucket::try_acquire(Nanos now, double cost) {
  if (!enabled()) return 0;
  refill(now);
  if (tokens_ >= cost) {
    tokens_ -= cost;
    return 0;
  }
  // A cost above the burst can never be satisfied; report the wait for a full bucket so the
  // caller's wait bound turns it into an error instead of spinning.
  const double missing = std::min(cost, config_.burst) - tokens_;
  const double wait_s = std::max(missing, 0.0) / config_.rate_per_s;
  return std::max<Nanos>(1, static_cast<Nanos>(std::ceil(wait_s * 1e9)));
}

void TokenBucket::refund(double cost) {
  tokens_ = std::min(config_.burst, tokens_ + cost);
}

double TokenBucket::available(Nanos now) {
  refill(now);
  return tokens_;
}

SlidingWindowLimiter::SlidingWindowLimiter(SlidingWindowConfig config)
    : config_(config), window_(config.requests_per_minute > 0 ? seconds(60) : seconds(1)) {}

void SlidingWindowLimiter::evict(Nanos now) {
  while (!log_.empty() && log_.front() <= now - window_) log_.pop_front();
}

std::int64_t SlidingWindowLimiter::in_last_minute(Nanos now) {
  evict(now);
  return static_cast<std::int64_t>(
      std::count_if(log_.begin(), log_.end(), [&](Nanos t) { return t > now - seconds(60); }));
}

std::int64_t SlidingWindowLimiter::in_last_second(Nanos now) {
  evict(now);
  // The log is sorted: count from the back.
  std::int64_t n = 0;
  for (auto it = log_.rbegin(); it != log_.rend() && *it > now - kNanosPerSecond; ++it) ++n;
  return n;
}

Nanos SlidingWindowLimiter::try_acquire(Nanos now) {
  if (!enabled()) return 0;
  evict(now);
  Nanos wait = 0;
  const auto size = static_cast<std::int64_t>(log_.size());
  if (config_.requests_per_minute > 0 && size >= config_.requests_per_minute) {
    // The entry that must leave the window before one more fits.
    const Nanos oldest = log_[static_cast<std::size_t>(size - config_.requests_per_minute)];
    wait = std::max(wait, oldest + seconds(60) - now);
  }
  if (config_.requests_per_second > 0 && in_last_second(now) >= config_.requests_per_second) {
    const Nanos oldest = log_[static_cast<std::size_t>(size - config_.requests_per_second)];
    wait = std::max(wait, oldest + kNanosPerSecond - now);
  }
  if (wait > 0) return wait;
  log_.push_back(std::max(now, log_.empty() ? now : log_.back()));
  return 0;
}

const char* to_string(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

CircuitBreaker::CircuitBreaker(BreakerConfig config) : config_(config) {
  config_.failure_threshold = std::max(1, config_.failure_threshold);
  config_.half_open_max_probes = std::max(1, config_.half_open_max_probes);
  config_.success_threshold = std::max(1, config_.success_threshold);
}

BreakerState CircuitBreaker::state(Nanos now) {
  if (state_ == BreakerState::kOpen && now >= open_until_) {
    state_ = BreakerState::kHalfOpen;
    probes_in_flight_ = 0;
    probe_successes_ = 0;
  }
  return state_;
}

bool CircuitBreaker::allow(Nanos now) {
  if (!config_.enabled) return true;
  switch (state(now)) {
    case BreakerState::kClosed:
      return true;
    case BreakerState::kOpen:
      return false;
    case BreakerState::kHalfOpen:
      if (probes_in_flight_ >= config_.half_open_max_probes) return false;
      ++probes_in_flight_;
      return true;
  }
  return false;
}

void CircuitBreaker::on_success(Nanos now) {
  if (!config_.enabled) return;
  consecutive_failures_ = 0;
  if (state(now) == BreakerState::kHalfOpen) {
    probes_in_flight_ = std::max(0, probes_in_flight_ - 1);
    if (++probe_successes_ >= config_.success_threshold) state_ = BreakerState::kClosed;
  }
}

void CircuitBreaker::on_failure(Nanos now) {
  if (!config_.enabled) return;
  const BreakerState s = state(now);
  if (s == BreakerState::kHalfOpen || ++consecutive_failures_ >= config_.failure_threshold) {
    state_ = BreakerState::kOpen;
    open_until_ = now + config_.open_duration;
    consecutive_failures_ = 0;
    probes_in_flight_ = 0;
    probe_successes_ = 0;
  }
}

void CircuitBreaker::on_abandon() {
  if (state_ == BreakerState::kHalfOpen) probes_in_flight_ = std::max(0, probes_in_flight_ - 1);
}

Nanos backoff_delay(const RetryPolicy& policy, int retry, double uniform01) {
  const double cap = static_cast<double>(policy.max_delay);
  const double exp =
      static_cast<double>(policy.base_delay) * std::pow(2.0, std::clamp(retry, 0, 62));
  const double ceiling = std::min(cap, exp);
  return static_cast<Nanos>(std::clamp(uniform01, 0.0, 1.0) * ceiling);
}

std::optional<Nanos> server_wait_hint(const RateLimitInfo& info) {
  if (info.retry_after_s && *info.retry_after_s >= 0) return seconds(*info.retry_after_s);
  std::optional<Nanos> hint;
  if (info.remaining_requests && *info.remaining_requests <= 0 && info.reset_requests)
    hint = *info.reset_requests;
  if (info.remaining_tokens && *info.remaining_tokens <= 0 && info.reset_tokens)
    hint = std::max(hint.value_or(0), *info.reset_tokens);
  return hint;
}

Nanos retry_delay(const RetryPolicy& policy, int retry, double uniform01,
                  const std::optional<Nanos>& hint) {
  if (policy.honor_retry_after && hint) {
    // Jitter of up to 10% of the hint (at most one base delay) spreads clients that were told
    // the same instant, without waking any of them early.
    const Nanos jitter =
        static_cast<Nanos>(std::clamp(uniform01, 0.0, 1.0) *
                           static_cast<double>(std::min(policy.base_delay, *hint / 10)));
    return *hint + jitter;
  }
  return backoff_delay(policy, retry, uniform01);
}

std::optional<Nanos> parse_go_duration(std::string_view text) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  if (text.empty()) return std::nullopt;
  double total_ns = 0;
  bool any = false;
  while (!text.empty()) {
    std::size_t i = 0;
    while (i < text.size() && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.')) ++i;
    if (i == 0) return std::nullopt;
    double value = 0;
    const std::string number(text.substr(0, i));
    char* end = nullptr;
    value = std::strtod(number.c_str(), &end);
    if (end != number.c_str() + number.size()) return std::nullopt;
    text.remove_prefix(i);
    std::size_t j = 0;
    while (j < text.size() && !((text[j] >= '0' && text[j] <= '9') || text[j] == '.')) ++j;
    const std::string_view unit = text.substr(0, j);
    text.remove_prefix(j);
    double scale = 0;
    if (unit.empty()) {
      if (any || !text.empty()) return std::nullopt;
      scale = 1e9;  // a bare number means seconds
    } else if (unit == "h") {
      scale = 3600e9;
    } else if (unit == "m") {
      scale = 60e9;
    } else if (unit == "s") {
      scale = 1e9;
    } else if (unit == "ms") {
      scale = 1e6;
    } else if (unit == "us" || unit == "\xc2\xb5s") {
      scale = 1e3;
    } else if (unit == "ns") {
      scale = 1;
    } else {
      return std::nullopt;
    }
    total_ns += value * scale;
    any = true;
  }
  if (total_ns > 9e18) return std::nullopt;
  return static_cast<Nanos>(std::llround(total_ns));
}

std::optional<double> parse_retry_after(std::string_view text) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  if (text.empty()) return std::nullopt;
  for (char c : text)
    if (!((c >= '0' && c <= '9') || c == '.')) return std::nullopt;
  const std::string s(text);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || v < 0 || !std::isfinite(v)) return std::nullopt;
  return v;
}

}  // namespace bellwether
