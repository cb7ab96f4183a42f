#pragma once
// Retry policy: which failures are retried, how long to wait (exponential backoff with FULL
// jitter, at least the upstream Retry-After), within a per-request deadline and attempt cap, and
// subject to a RetryBudget that bounds retries to a share of recent requests (Finagle/Envoy).
// Pure functions take `now` and an Rng. Thread safety: RetryBudget is thread-safe (a request's
// deposit takes no lock; a withdrawal takes a short mutex); everything else is stateless.
#include <cstdint>
#include <mutex>
#include <vector>

#include "common/clock.h"
#include "common/window_count.h"
#include "routing/outcome.h"
#include "routing/rng.h"
#include "routing/rolling_window.h"

namespace bw::routing {

struct RetryConfig {
  int max_attempts = 3;               // attempts in total, first one included (fallbacks too)
  Nanos base = millis(100);           // backoff ceiling before the first retry
  Nanos cap = seconds(2);             // backoff ceiling never grows above this
  Nanos deadline = seconds(60);       // whole request, all attempts and waits included
  double budget_ratio = 0.2;          // retries allowed per request over budget_window
  double budget_min_per_s = 5;        // retries/s always allowed, so low traffic can retry
  Nanos budget_window = seconds(10);  // rolling window of the budget
  std::vector<int> retry_statuses = {502, 503, 504};  // 5xx statuses that are retried
};

// Ceiling of the backoff before retry number `retry` (1 = first retry): min(cap, base*2^(retry-1)).
Nanos backoff_ceiling(const RetryConfig& cfg, int retry);
// Full jitter: uniform in [0, backoff_ceiling(retry)].
Nanos full_jitter_backoff(const RetryConfig& cfg, int retry, Rng& rng);
// Connect errors, timeouts, 429 and the configured 5xx statuses.
bool is_retryable(const RetryConfig& cfg, const Outcome& o);

class RetryBudget {
 public:
  explicit RetryBudget(const RetryConfig& cfg = {});
  void reconfigure(const RetryConfig& cfg);
  // Every request (first attempt) deposits.
  void record_request(Nanos now);
  // A retry withdraws; false when the budget is spent (nothing is withdrawn then).
  bool try_withdraw(Nanos now);
  std::int64_t requests(Nanos now) const;
  std::int64_t retries(Nanos now) const;

 private:
  // Every request deposits, so the requests are counted without a lock.
  WindowCount requests_;
  mutable std::mutex mu_;  // guards the rest
  double ratio_;
  double min_per_s_;
  RollingWindow<1> retries_;
};

enum class RetryVerdict : std::uint8_t {
  kRetry,
  kSucceeded,        // not a failure: nothing to retry
  kNotRetryable,     // a failure the policy does not retry (e.g. 500, 4xx)
  kResponseStarted,  // bytes already reached the client
  kAttemptsExhausted,
  kDeadline,  // the wait (backoff or Retry-After) would end past the deadline
  kBudgetExhausted,
};
const char* to_string(RetryVerdict v);

struct RetryDecision {
  RetryVerdict verdict = RetryVerdict::kNotRetryable;
  Nanos delay = 0;  // wait before the next attempt when verdict == retry
  bool retry() const { return verdict == RetryVerdict::kRetry; }
};

struct AttemptState {
  int attempts = 0;               // attempts made so far, including the one that just ended
  Nanos deadline_at = 0;          // absolute deadline of the request
  bool response_started = false;  // something was already sent to the client
};

// Decides whether to retry after `o`. `budget` may be null (no budget).
RetryDecision decide_retry(const RetryConfig& cfg, const AttemptState& st, const Outcome& o,
                           Nanos now, RetryBudget* budget, Rng& rng);

}  // namespace bw::routing
