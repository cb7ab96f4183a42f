#pragma once
// Client-side counters exposed as a snapshot. RateWindow is pure (now passed in) and not
// thread-safe; Client guards it.
#include <array>
#include <cstdint>
#include <optional>

#include "bellwether/types.h"

namespace bellwether {

struct MetricsSnapshot {
  std::uint64_t requests = 0;        // calls started
  std::uint64_t successes = 0;       // calls that ended 2xx
  std::uint64_t rate_limited = 0;    // calls that ended with HTTP 429
  std::uint64_t circuit_open = 0;    // calls refused because every breaker was open
  std::uint64_t budget_refused = 0;  // calls refused by the local budget cap
  std::uint64_t local_limited = 0;   // calls refused by the client-side limiter wait bound
  std::uint64_t errors = 0;          // calls that ended with any other error
  std::uint64_t responses_429 = 0;   // every 429 received, including retried ones
  std::uint64_t retries = 0;         // extra attempts (retries + fallbacks)
  std::uint64_t fallbacks = 0;       // attempts on a fallback model
  std::uint64_t prompt_tokens = 0;
  std::uint64_t completion_tokens = 0;
  double requests_per_minute = 0;  // calls started in the last 60 s
  double spend_usd = 0;
  double reserved_usd = 0;
  std::optional<double> budget_cap_usd;
};

// Counts events over the last 60 s in 1 s buckets.
class RateWindow {
 public:
  void add(Nanos now, std::uint64_t n = 1);
  std::uint64_t last_minute(Nanos now);

 private:
  void advance(Nanos now);
  std::array<std::uint64_t, 60> buckets_{};
  std::int64_t current_second_ = -1;
};

}  // namespace bellwether
