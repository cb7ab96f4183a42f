#pragma once
// Pure client-side policies: token bucket, sliding-window RPM+RPS limiter, circuit breaker and
// retry/backoff math. They take `now` as an argument and never read a clock or sleep. None of
// them is thread-safe on its own; Client guards each instance with a mutex.
#include <cstdint>
#include <deque>
#include <optional>
#include <string_view>

#include "bellwether/types.h"

namespace bellwether {

struct TokenBucketConfig {
  double rate_per_s = 0;  // refill rate in tokens/s; 0 disables the bucket
  double burst = 1;       // capacity in tokens (>= 1)
};

// Classic token bucket. try_acquire either takes `cost` tokens and returns 0, or takes nothing
// and returns how long until `cost` tokens will be available.
class TokenBucket {
 public:
  explicit TokenBucket(TokenBucketConfig config, Nanos now = 0);
  Nanos try_acquire(Nanos now, double cost = 1);
  double available(Nanos now);
  // Gives back tokens taken by a try_acquire whose request was then held back by another limit.
  void refund(double cost = 1);
  bool enabled() const { return config_.rate_per_s > 0; }

 private:
  void refill(Nanos now);
  TokenBucketConfig config_;
  double tokens_;
  Nanos last_;
};

struct SlidingWindowConfig {
  std::int64_t requests_per_minute = 0;  // 0 = no per-minute limit
  std::int64_t requests_per_second = 0;  // 0 = no per-second limit
};

// Exact sliding log over the last 60 s (and 1 s). Memory is bounded by the larger limit: a
// timestamp is stored only for admitted requests and evicted once it leaves the window.
class SlidingWindowLimiter {
 public:
  explicit SlidingWindowLimiter(SlidingWindowConfig config);
  Nanos try_acquire(Nanos now);  // 0 = admitted and recorded, else time until a slot frees
  std::int64_t in_last_minute(Nanos now);
  std::int64_t in_last_second(Nanos now);
  bool enabled() const {
    return config_.requests_per_minute > 0 || config_.requests_per_second > 0;
  }

 private:
  void evict(Nanos now);
  SlidingWindowConfig config_;
  Nanos window_;
  std::deque<Nanos> log_;
};

struct BreakerConfig {
  bool enabled = true;
  int failure_threshold = 5;          // consecutive failures that open the breaker
  Nanos open_duration = seconds(30);  // time open before letting a probe through
  int half_open_max_probes = 1;       // concurrent probes while half-open
  int success_threshold = 1;          // probe successes needed to close again
};

enum class BreakerState { kClosed, kOpen, kHalfOpen };
const char* to_string(BreakerState state);

class CircuitBreaker {
 public:
  explicit CircuitBreaker(BreakerConfig config = {});
  // true = the caller may send now; in half-open this takes one probe slot that must be
  // returned through on_success/on_failure/on_abandon.
  bool allow(Nanos now);
  void on_success(Nanos now);
  void on_failure(Nanos now);
  void on_abandon();  // a permitted request ended without a verdict (e.g. 429, cancelled)
  BreakerState state(Nanos now);
  Nanos open_until() const { return open_until_; }

 private:
  BreakerConfig config_;
  BreakerState state_ = BreakerState::kClosed;
  int consecutive_failures_ = 0;
  int probes_in_flight_ = 0;
  int probe_successes_ = 0;
  Nanos open_until_ = 0;
};

struct RetryPolicy {
  int max_attempts = 4;                 // total HTTP attempts including the first (>= 1)
  Nanos base_delay = millis(250);       // backoff base: attempt n waits U(0, base * 2^n)
  Nanos max_delay = seconds(20);        // cap of one backoff delay
  Nanos total_deadline = seconds(120);  // whole call including waits; 0 = none
  bool honor_retry_after = true;        // wait at least Retry-After / x-ratelimit-reset-*
  Nanos max_retry_after = seconds(60);  // a longer server hint ends the call instead of waiting
};

// Full-jitter exponential backoff: U(0, min(max_delay, base_delay * 2^retry)), `uniform01` in
// [0,1). `retry` counts from 0 for the first retry.
Nanos backoff_delay(const RetryPolicy& policy, int retry, double uniform01);

// The server's wait hint for a 429/503: Retry-After if present, else the reset time of an
// exhausted x-ratelimit-remaining-* counter. nullopt when the response gives none.
std::optional<Nanos> server_wait_hint(const RateLimitInfo& info);

// Delay before the next attempt: the server hint plus a small jitter (so synchronised clients do
// not return together) when honoured, else full-jitter backoff.
Nanos retry_delay(const RetryPolicy& policy, int retry, double uniform01,
                  const std::optional<Nanos>& hint);

// Go-style duration as used by OpenAI's x-ratelimit-reset-*: "1s", "6m0s", "20ms", "1.5s",
// "1h2m3s", "250us", "0s". Bare numbers are seconds. nullopt on malformed input.
std::optional<Nanos> parse_go_duration(std::string_view text);

// Retry-After in delta-seconds (integer or decimal). HTTP-date values return nullopt: turning
// them into a delay needs the wall clock, which the server's own clock may not match.
std::optional<double> parse_retry_after(std::string_view text);

}  // namespace bellwether
