#pragma once
// Distributed tracing: W3C trace context (and B3) in and out, the spans of one request, the
// sampling decisions, and the OTLP/JSON encoding of finished spans. trace_exporter.h ships them.
//
// Contract
//  - parse_*, format_*, head_sample, keep_trace and encode_otlp_json are pure functions.
//  - Span times are Unix nanoseconds. RequestTrace converts the caller's monotonic `now` with an
//    offset fixed when the request began, so a trace never goes backwards when the wall clock is
//    stepped, and a fake clock gives exact times in tests.
//  - RequestTrace belongs to one request (one coroutine): not thread-safe, no locks, no I/O.
//  - new_trace_id/new_span_id use a per-thread generator: safe from any thread.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "common/clock.h"

namespace bw::telemetry {

using TraceId = std::array<std::uint8_t, 16>;
using SpanId = std::array<std::uint8_t, 8>;

// What a caller told us about its trace: the trace, the caller's span (our parent), its sampling
// decision and its vendor state.
struct TraceContext {
  TraceId trace_id{};
  SpanId parent_span_id{};
  bool sampled = false;
  bool deferred = false;    // the caller left the decision to us (B3 without a sampling state)
  std::string trace_state;  // W3C tracestate, passed through unchanged
};

// W3C traceparent "00-<32 hex>-<16 hex>-<2 hex>" (lower-case hex; all-zero ids are invalid).
// A later version is read by its first four fields, as the spec asks. nullopt: absent or invalid,
// and the spec says to start a new trace then.
std::optional<TraceContext> parse_traceparent(std::string_view value);
std::string format_traceparent(const TraceId& trace, const SpanId& span, bool sampled);
// B3 single header "<trace>-<span>[-<sampled>[-<parent>]]", 64- or 128-bit trace ids; a lone
// sampling state ("0", "1", "d") carries no ids and gives nullopt.
std::optional<TraceContext> parse_b3(std::string_view value);
// tracestate is passed on only when it is at most 512 characters of list members
// ("key=value" separated by commas, at most 32); anything else is dropped, as the spec allows.
bool valid_tracestate(std::string_view value);

std::string to_hex(const TraceId& id);
std::string to_hex(const SpanId& id);
TraceId new_trace_id();
SpanId new_span_id();
bool is_zero(const SpanId& id);

using AttrValue = std::variant<std::string, std::int64_t, double, bool, std::vector<std::string>>;
struct Attribute {
  std::string key;
  AttrValue value;
};

// The OTLP enum values, so encoding is a cast.
enum class SpanKind : std::uint8_t { kInternal = 1, kServer = 2, kClient = 3 };
enum class SpanStatus : std::uint8_t { kUnset = 0, kOk = 1, kError = 2 };

struct Span {
  SpanId span_id{};
  SpanId parent_span_id{};  // all zero: the root of the trace
  std::string name;
  SpanKind kind = SpanKind::kInternal;
  std::int64_t start_unix_nanos = 0;
  std::int64_t end_unix_nanos = 0;
  SpanStatus status = SpanStatus::kUnset;
  std::string status_message;
  std::vector<Attribute> attributes;

  // Sets an attribute, replacing one of the same key.
  void set(std::string_view key, AttrValue value);
  const AttrValue* find(std::string_view key) const;
};

// The spans of one request, ready to encode.
struct FinishedTrace {
  TraceId trace_id{};
  std::string trace_state;
  std::vector<Span> spans;
};

struct SamplingConfig {
  enum class Mode : std::uint8_t { kAlways, kNever, kRatio, kParentBased };
  Mode mode = Mode::kParentBased;
  double ratio = 1.0;         // kRatio, and the decision for new traces under kParentBased
  bool always_errors = true;  // keep a failed request's trace whatever the head decision
  std::int64_t slow_ms = 0;   // > 0: keep the traces of requests slower than this
};

// The `tracing:` section of the config.
struct TracingConfig {
  std::string endpoint;  // OTLP/HTTP JSON, e.g. http://127.0.0.1:4318/v1/traces; "" = no export
  std::vector<std::pair<std::string, std::string>> headers;  // sent with every export
  std::string ca_file;                                       // https endpoints
  std::string service_name = "bellwether";
  SamplingConfig sampling;
  bool capture_content = false;  // export prompts and completions
  std::size_t max_content_bytes = 4096;
  std::size_t queue_spans = 4096;
  std::size_t batch_spans = 512;
  Nanos flush_interval = millis(1000);
  Nanos timeout = millis(2000);
  bool propagate = true;  // send traceparent/tracestate upstream
  bool accept_b3 = true;  // read the B3 single header when there is no traceparent
  bool exporting() const { return !endpoint.empty(); }
};

// The decision taken when the request arrives (and propagated upstream as the sampled flag).
// kRatio and the root case of kParentBased sample a trace when the last 8 bytes of its id, read
// big-endian, fall below ratio * 2^64, so every hop that uses the same rule agrees.
bool head_sample(const SamplingConfig& cfg, const std::optional<TraceContext>& parent,
                 const TraceId& trace_id);
// The decision taken when the request ends: the head decision, or an error or a slow request.
bool keep_trace(const SamplingConfig& cfg, bool head_sampled, bool error, Nanos duration);

class RequestTrace {
 public:
  using SpanRef = std::size_t;
  static constexpr SpanRef kRoot = 0;

  // Starts the request's span at monotonic `now`: a child of `parent` when the caller sent a
  // valid context, else the root of a new trace. `unix_offset` = Unix nanoseconds - monotonic
  // nanoseconds at the request's start.
  RequestTrace(const std::optional<TraceContext>& parent, bool head_sampled, std::string name,
               SpanKind kind, Nanos now, std::int64_t unix_offset);

  const TraceId& trace_id() const { return trace_id_; }
  const std::string& trace_state() const { return trace_state_; }
  bool head_sampled() const { return head_sampled_; }
  const SpanId& span_id(SpanRef s) const { return spans_[s].span_id; }

  // Opens a child of the request's span. The reference stays valid for the trace's life.
  SpanRef start(std::string name, SpanKind kind, Nanos now);
  void end(SpanRef s, Nanos now);
  Span& span(SpanRef s) { return spans_[s]; }
  const Span& span(SpanRef s) const { return spans_[s]; }
  std::size_t size() const { return spans_.size(); }

  // The traceparent to send upstream from span `s` (an attempt span): same trace, `s` as parent.
  std::string traceparent_from(SpanRef s) const;

  // Ends the spans still open at `now` and hands over the whole trace.
  FinishedTrace finish(Nanos now);

 private:
  std::int64_t unix(Nanos t) const { return t + unix_offset_; }
  TraceId trace_id_{};
  std::string trace_state_;
  bool head_sampled_ = false;
  std::int64_t unix_offset_ = 0;
  std::vector<Span> spans_;
};

// Bounds a captured text (prompt or completion) to `max_bytes`, cutting at a UTF-8 boundary and
// marking the cut with "…".
std::string truncate_utf8(std::string_view text, std::size_t max_bytes);

// OTLP/JSON (opentelemetry-proto ExportTraceServiceRequest, JSON mapping): resourceSpans ->
// scopeSpans -> spans; ids as lower-case hex, 64-bit integers as decimal strings, enums as numbers.
std::string encode_otlp_json(const std::vector<Attribute>& resource,
                             const std::vector<FinishedTrace>& traces);

}  // namespace bw::telemetry
