#pragma once
// The request's trace: what the phases record into it, and its hand-over to the exporter.
//
// - begin() reads the caller's trace context (W3C traceparent/tracestate, or B3) and, when the
//   config exports traces, opens the request's span. Without an export endpoint nothing is
//   recorded: the caller's context is still passed upstream and logged.
// - A phase that waits or calls out wraps it in a child span (start/end). Every call is a no-op
//   (kNoSpan) when the request is not recorded, so the phases need no `if`.
// - finish() (from phase 10) fills the request span's attributes from Ctx, takes the tail
//   sampling decision, and submits the trace without blocking.
// Thread safety: one request's coroutine only; the exporter is thread-safe.
#include <string_view>

#include <memory>

#include "http/http.h"
#include "telemetry/trace_exporter.h"
#include "telemetry/tracing.h"

namespace bw::gateway {

struct Ctx;
struct Deployment;
struct Shared;

namespace tracing {

using SpanRef = telemetry::RequestTrace::SpanRef;
inline constexpr SpanRef kNoSpan = static_cast<SpanRef>(-1);

// Per-request state (Ctx::trace), allocated only when there is something to record or pass on.
struct State {
  std::optional<telemetry::TraceContext> parent;  // what the caller sent
  std::optional<telemetry::RequestTrace> trace;   // recorded when exporting
  std::string_view operation = "chat";
  std::string output;  // captured answer (capture_content), bounded
  std::string queue_reason;
  std::string cache_status;
  std::string trace_hex, span_hex;  // kept for the access log once the spans are handed over
};

void begin(Ctx& c, std::string_view operation);
SpanRef start(Ctx& c, std::string_view name);
// Ends a child span; `reason` becomes bellwether.queue_reason (queue and limit waits).
void end(Ctx& c, SpanRef s, std::string_view reason = {});
// Ends the cache lookup's span with its outcome (hit, miss, bypass) as bellwether.cache, which
// the request's span carries too.
void end_cache(Ctx& c, SpanRef s, std::string_view status);

// An upstream attempt: a CLIENT span with the GenAI attributes of the deployment.
SpanRef attempt_start(Ctx& c, const Deployment& d, bool fallback);
// status 0 = no HTTP answer (error_code says why).
void attempt_end(Ctx& c, SpanRef s, int status, std::string_view error_code = {});
// traceparent/tracestate for the upstream: the attempt's span as the parent when recording, the
// caller's context unchanged when only passing on, nothing when there is no trace.
void add_upstream_headers(const Ctx& c, SpanRef attempt, http::Headers& h);
// Keeps (a bounded prefix of) the answer for gen_ai.output.messages, response model and finish
// reasons. Cheap no-op unless the request is recorded.
void observe_output(Ctx& c, std::string_view bytes);

// The trace and the request's span ids as lower-case hex for the access log ("" when none).
std::string_view trace_id_hex(const Ctx& c, std::string& scratch);
std::string_view span_id_hex(const Ctx& c, std::string& scratch);

void finish(Ctx& c);

}  // namespace tracing

// The exporter of `cfg` (an endpoint must be set), counting into Shared's registry:
// bellwether_trace_spans_total{outcome="exported"} and
// bellwether_trace_spans_dropped_total{reason="queue_full"|"export_failed"}.
std::unique_ptr<telemetry::TraceExporter> make_trace_exporter(Shared& sh,
                                                              const telemetry::TracingConfig& cfg);
}  // namespace bw::gateway
