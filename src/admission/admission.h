#pragma once
// Admission (pipeline phase 6): decides when a request may go upstream.
//
//  - priority.h            P0 urgent / P1 standard / P2 batch; header parsing and clamping.
//  - wait_queue.h          WaitQueue<T>: bounded priority queue with aging, per-priority maximum
//                          waits, eviction of the newest lowest-priority waiter when full, O(1)
//                          removal on cancel.
//  - concurrency_limiter.h ConcurrencyLimiter: fixed / AIMD / Gradient2 limit per model group or
//                          deployment, driven by upstream latency; 429/503 cut it at once.
//  - overload.h            process-wide shedding thresholds by priority.
//  - queue_stats.h         bounded-memory statistics and the GET /v1/metrics/queue JSON body.
//  - admission_controller.h AdmissionController: the thread-safe, coroutine-facing part that
//                          the gateway calls (acquire -> Permit, wait_until for rate limits).
//
// Everything except admission_controller.h is pure: single threaded, takes `now`, no Asio.
// See docs/priority-queue.md for behaviour, parameters and a worked example.
#include "admission/concurrency_limiter.h"
#include "admission/overload.h"
#include "admission/priority.h"
#include "admission/queue_stats.h"
#include "admission/wait_queue.h"
