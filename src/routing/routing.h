#pragma once
// routing/: which deployment serves a request, and what happens when it fails.
// clang-format off
//   Router          (router.h)          config snapshot + per-deployment runtime state; pick(),
//                                       on_start(), on_finish(), plan(), status(). Thread-safe.
//   RequestPlan     (router.h)          one request's attempt loop: LB, breaker, retries,
//                                       fallbacks.
//   CircuitBreaker  (circuit_breaker.h) pure state machine + 429 cooldown.
//   balancers       (balancer.h)        P2C peak-EWMA, smooth WRR, least outstanding.
//   retry policy    (retry.h)           full-jitter backoff, Retry-After, deadline, RetryBudget.
//   fallbacks       (fallback.h)        validate_fallbacks(), AttemptPlanner.
//   DeadLetterQueue (dead_letter.h)     SQLite store of failed batch (P2) requests. Thread-safe.
// clang-format on
// Everything except the DLQ is pure (library bw_routing): time is passed in as `now`, randomness
// as an Rng (one per worker thread), no sockets, no sleeps. The DLQ is bw_routing_io. See
// docs/resilience.md for every parameter.
#include "routing/balancer.h"
#include "routing/circuit_breaker.h"
#include "routing/dead_letter.h"
#include "routing/fallback.h"
#include "routing/outcome.h"
#include "routing/retry.h"
#include "routing/rng.h"
#include "routing/router.h"
