#pragma once
// CircuitBreaker: per-deployment health state machine, plus the 429 cooldown.
// clang-format off
//   closed    --(N consecutive failures | failure rate >= R over window with >= M requests)--> open
//   open      --(open timeout elapsed)--> half_open
//                 (timeout = base * 2^(openings-1), capped, jittered)
//   half_open: admits at most `half_open_probes` probes; that many successes -> closed,
//              any probe failure -> open again with a longer timeout.
// clang-format on
// A 429 additionally sets a cooldown (Retry-After, or a default) during which nothing is admitted,
// not even probes. Pure: time comes in as `now`, jitter from the caller's Rng.
// Thread safety: none; the Router guards each breaker with its deployment's mutex.
#include <cstdint>

#include "common/clock.h"
#include "routing/outcome.h"
#include "routing/rng.h"
#include "routing/rolling_window.h"

namespace bw::routing {

struct BreakerConfig {
  int consecutive_failures = 5;       // trip after this many failures in a row; 0 disables
  double failure_rate = 0.5;          // trip when failures/requests >= this in `window`; 0 disables
  Nanos window = seconds(10);         // rolling window for the failure rate
  int window_buckets = 10;            // resolution of that window
  int min_requests = 20;              // the rate rule needs at least this many requests in window
  Nanos open_base = seconds(5);       // first open timeout
  Nanos open_max = seconds(60);       // cap of the growing open timeout
  double open_jitter = 0.2;           // timeout drawn uniformly in [t*(1-jitter), t]
  int half_open_probes = 2;           // probes admitted in half-open; all must succeed to close
  Nanos cooldown_429 = seconds(1);    // cooldown after a 429 without Retry-After; 0 = none
  Nanos cooldown_max = seconds(300);  // clamp on an upstream Retry-After
};

enum class BreakerState : std::uint8_t { kClosed, kOpen, kHalfOpen };
const char* to_string(BreakerState s);

enum class Admission : std::uint8_t {
  kAllowed,  // closed and not cooling
  kProbe,    // half-open with a free probe slot
  kOpen,     // open, or half-open with every probe slot taken
  kCooling,  // inside a 429 cooldown
};

class CircuitBreaker {
 public:
  explicit CircuitBreaker(const BreakerConfig& cfg = {});

  // Applies new parameters; keeps the state. A changed window resets the failure-rate counters.
  void reconfigure(const BreakerConfig& cfg);

  // What a request would get right now. Advances open -> half_open when the timeout elapsed.
  Admission check(Nanos now);
  // check() and, for a probe, takes the probe slot. Returns the admission granted.
  Admission acquire(Nanos now);
  // The result of a request admitted with `admission` (allowed or probe).
  void on_result(Admission admitted, OutcomeKind kind, Nanos retry_after, Nanos now, Rng& rng);
  // Gives back a probe slot of an attempt that produced no outcome (cancelled).
  void release_probe();

  // When this deployment can take traffic again (>= now when currently blocked; `now` otherwise).
  // For a half-open breaker without free slots this is unknown; returns now + open_base.
  Nanos available_at(Nanos now);

  BreakerState state() const { return state_; }
  int consecutive_failures() const { return consecutive_; }
  int openings() const { return openings_; }
  Nanos open_until() const { return open_until_; }
  Nanos cooldown_until() const { return cooldown_until_; }
  const BreakerConfig& config() const { return cfg_; }

 private:
  void trip(Nanos now, Rng& rng);
  void close();

  BreakerConfig cfg_;
  BreakerState state_ = BreakerState::kClosed;
  int consecutive_ = 0;
  int openings_ = 0;  // openings since the last close; drives the timeout growth
  Nanos open_until_ = 0;
  Nanos cooldown_until_ = 0;
  int probes_taken_ = 0;
  int probe_successes_ = 0;
  RollingWindow<2> window_;  // field 0 = requests, 1 = failures
};

}  // namespace bw::routing
