#pragma once
// Outcome: what the forward phase reports back about one upstream attempt. The breaker, the load
// balancer, the capacity tracker and the retry policy all read the same record.
#include <cstdint>

#include "common/clock.h"

namespace bw::routing {

enum class OutcomeKind : std::uint8_t {
  success,        // 2xx (also a stream that completed)
  connect_error,  // TCP/TLS connect failed or connection reset before a response
  timeout,        // no (complete) response within the attempt deadline
  http_5xx,       // upstream 5xx; `status` has the code
  http_429,       // upstream rate limit; `retry_after_ns` may carry Retry-After
  client_error,   // other 4xx: the request is at fault, the deployment is healthy
  cancelled,      // abandoned before an outcome (client went away): no health signal at all
};

const char* to_string(OutcomeKind kind);

struct Outcome {
  OutcomeKind kind = OutcomeKind::success;
  int status = 0;                 // HTTP status if one was received, else 0
  Nanos latency_ns = 0;           // send -> last byte (or -> failure)
  Nanos ttft_ns = 0;              // send -> first token for streams, 0 if unknown
  Nanos retry_after_ns = 0;       // parsed upstream Retry-After, 0 if absent
  std::int64_t tokens = 0;        // prompt + completion tokens billed by this attempt
  bool context_overflow = false;  // client_error caused by the context window (may re-route)
};

// True for outcomes that count against a deployment's health (breaker failures).
constexpr bool is_failure(OutcomeKind k) {
  return k == OutcomeKind::connect_error || k == OutcomeKind::timeout ||
         k == OutcomeKind::http_5xx || k == OutcomeKind::http_429;
}

}  // namespace bw::routing
