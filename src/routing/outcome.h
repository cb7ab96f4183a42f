#pragma once
// Outcome: what the forward phase reports back about one upstream attempt. The breaker, the load
// balancer, the capacity tracker and the retry policy all read the same record.
#include <cstdint>

#include "common/clock.h"

namespace bw::routing {

enum class OutcomeKind : std::uint8_t {
  kSuccess,       // 2xx (also a stream that completed)
  kConnectError,  // TCP/TLS connect failed or connection reset before a response
  kTimeout,       // no (complete) response within the attempt deadline
  kHttp5xx,       // upstream 5xx; `status` has the code
  kHttp429,       // upstream rate limit; `retry_after_ns` may carry Retry-After
  kClientError,   // other 4xx: the request is at fault, the deployment is healthy
  kCancelled,     // abandoned before an outcome (client went away): no health signal at all
};

const char* to_string(OutcomeKind kind);

struct Outcome {
  OutcomeKind kind = OutcomeKind::kSuccess;
  int status = 0;                 // HTTP status if one was received, else 0
  Nanos latency_ns = 0;           // send -> last byte (or -> failure)
  Nanos ttft_ns = 0;              // send -> first token for streams, 0 if unknown
  Nanos retry_after_ns = 0;       // parsed upstream Retry-After, 0 if absent
  std::int64_t tokens = 0;        // prompt + completion tokens billed by this attempt
  bool context_overflow = false;  // client_error caused by the context window (may re-route)
};

// True for outcomes that count against a deployment's health (breaker failures).
constexpr bool is_failure(OutcomeKind k) {
  return k == OutcomeKind::kConnectError || k == OutcomeKind::kTimeout ||
         k == OutcomeKind::kHttp5xx || k == OutcomeKind::kHttp429;
}

}  // namespace bw::routing
