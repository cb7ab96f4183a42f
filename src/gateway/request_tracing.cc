#include "gateway/request_tracing.h"

#include <algorithm>

#include "gateway/context.h"
#include "telemetry/trace_exporter.h"

namespace bw::gateway {
namespace tracing {

namespace tel = telemetry;

namespace {

tel::RequestTrace* recording(Ctx& c) {
  return c.trace && c.trace->trace ? &*c.trace->trace : nullptr;
}
const tel::RequestTrace* recording(const Ctx& c) {
  return c.trace && c.trace->trace ? &*c.trace->trace : nullptr;
}

// The provider names of the GenAI conventions (gen_ai.provider.name).
std::string_view provider_name(std::string_view type) {
  if (type == "anthropic") return "anthropic";
  if (type == "gemini") return "gcp.gemini";
  if (type == "azure") return "azure.ai.openai";
  return "openai";  // openai, sim and every OpenAI-compatible server
}

// The first value of "key":"…" in a JSON text or an SSE stream (no unescaping: model ids and
// finish reasons are plain tokens).
std::string_view first_string_field(std::string_view text, std::string_view quoted_key) {
  auto p = text.find(quoted_key);
  if (p == std::string_view::npos) return {};
  p = text.find('"', p + quoted_key.size());
  if (p == std::string_view::npos) return {};
  auto e = text.find('"', p + 1);
  if (e == std::string_view::npos || e - p - 1 > 200) return {};
  return text.substr(p + 1, e - p - 1);
}

std::vector<std::string> finish_reasons(std::string_view text) {
  std::vector<std::string> out;
  static constexpr std::string_view kKey = "\"finish_reason\":";
  for (auto p = text.find(kKey); p != std::string_view::npos; p = text.find(kKey, p + 1)) {
    auto v = text.substr(p + kKey.size());
    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    if (v.empty() || v.front() != '"') continue;  // null in a delta chunk
    auto e = v.find('"', 1);
    if (e == std::string_view::npos || e > 64) continue;
    std::string r(v.substr(1, e - 1));
    if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

void begin(Ctx& c, std::string_view operation) {
  const auto& cfg = c.rt->config().tracing;
  std::optional<tel::TraceContext> parent;
  if (auto tp = c.req.header("traceparent"); !tp.empty()) {
    parent = tel::parse_traceparent(tp);
    if (parent) {
      auto ts = c.req.header("tracestate");
      if (!ts.empty() && tel::valid_tracestate(ts)) parent->trace_state = std::string(ts);
    }
  } else if (cfg.accept_b3) {
    if (auto b3 = c.req.header("b3"); !b3.empty()) parent = tel::parse_b3(b3);
  }
  const bool exporting = c.sh.tracer != nullptr && cfg.exporting();
  if (!parent && !exporting) return;  // nothing to record or pass on: no allocation
  c.trace = std::make_unique<State>();
  c.trace->operation = operation;
  c.trace->parent = std::move(parent);
  if (!exporting) return;
  const tel::TraceId id = c.trace->parent ? c.trace->parent->trace_id : tel::new_trace_id();
  const bool head = tel::head_sample(cfg.sampling, c.trace->parent, id);
  const std::int64_t offset = c.sh.clock.unix_millis() * kNanosPerMilli - c.now();
  std::optional<tel::TraceContext> parent_for_trace = c.trace->parent;
  if (!parent_for_trace) {
    // A new trace: RequestTrace would draw another id; hand it the one sampled above.
    parent_for_trace.emplace();
    parent_for_trace->trace_id = id;
  }
  c.trace->trace.emplace(parent_for_trace, head, std::string(operation), tel::SpanKind::kServer,
                         c.start, offset);
}

SpanRef start(Ctx& c, std::string_view name) {
  auto* t = recording(c);
  return t ? t->start(std::string(name), tel::SpanKind::kInternal, c.now()) : kNoSpan;
}

void end(Ctx& c, SpanRef s, std::string_view reason) {
  auto* t = recording(c);
  if (!t || s == kNoSpan) return;
  t->end(s, c.now());
  if (!reason.empty()) {
    t->span(s).set("bellwether.queue_reason", std::string(reason));
    c.trace->queue_reason = std::string(reason);
  }
}

void end_cache(Ctx& c, SpanRef s, std::string_view status) {
  auto* t = recording(c);
  if (!t) return;
  c.trace->cache_status = std::string(status);
  if (s == kNoSpan) return;
  t->end(s, c.now());
  t->span(s).set("bellwether.cache", std::string(status));
}

SpanRef attempt_start(Ctx& c, const Deployment& d, bool fallback) {
  auto* t = recording(c);
  if (!t) return kNoSpan;
  const auto& model = d.cfg->model;
  auto s = t->start(std::string(c.trace->operation) + " " + model, tel::SpanKind::kClient, c.now());
  auto& span = t->span(s);
  span.set("gen_ai.operation.name", std::string(c.trace->operation));
  span.set("gen_ai.provider.name", std::string(provider_name(d.provider->cfg->type)));
  span.set("gen_ai.request.model", model);
  span.set("bellwether.deployment", d.cfg->id);
  span.set("bellwether.attempt", c.attempts);
  span.set("bellwether.fallback", fallback);
  span.set("server.address", d.provider->endpoint.host);
  return s;
}

void attempt_end(Ctx& c, SpanRef s, int status, std::string_view error_code) {
  auto* t = recording(c);
  if (!t || s == kNoSpan) return;
  t->end(s, c.now());
  auto& span = t->span(s);
  if (status > 0) span.set("http.response.status_code", std::int64_t{status});
  // A CLIENT span is an error for any 4xx/5xx or a failed exchange (HTTP conventions).
  if (status == 0 || status >= 400) {
    span.status = tel::SpanStatus::kError;
    span.set("error.type", error_code.empty() ? std::to_string(status) : std::string(error_code));
  }
}

void add_upstream_headers(const Ctx& c, SpanRef attempt, http::Headers& h) {
  if (!c.trace || !c.rt->config().tracing.propagate) return;
  if (const auto* t = recording(c); t && attempt != kNoSpan) {
    h.add("traceparent", t->traceparent_from(attempt));
    if (!t->trace_state().empty()) h.add("tracestate", t->trace_state());
    return;
  }
  if (const auto& p = c.trace->parent) {
    h.add("traceparent", tel::format_traceparent(p->trace_id, p->parent_span_id, p->sampled));
    if (!p->trace_state.empty()) h.add("tracestate", p->trace_state);
  }
}

void observe_output(Ctx& c, std::string_view bytes) {
  if (!recording(c)) return;
  // Enough of the answer for the model id and the finish reasons; the whole (bounded) text when
  // content capture is on.
  const auto& cfg = c.rt->config().tracing;
  const std::size_t bound =
      cfg.capture_content ? std::max<std::size_t>(cfg.max_content_bytes, 4096) : 4096;
  auto& out = c.trace->output;
  if (out.size() < bound) {
    out.append(bytes.substr(0, bound - out.size()));
  } else if (auto p = bytes.rfind("\"finish_reason\""); p != std::string_view::npos) {
    // A long stream: keep its last finish reason too (it comes in the final chunks).
    out.append(bytes.substr(p, std::min<std::size_t>(bytes.size() - p, 64)));
  }
}

std::string_view trace_id_hex(const Ctx& c, std::string& scratch) {
  if (!c.trace) return {};
  if (!c.trace->trace_hex.empty()) return c.trace->trace_hex;
  if (const auto* t = recording(c)) {
    scratch = tel::to_hex(t->trace_id());
  } else if (c.trace->parent) {
    scratch = tel::to_hex(c.trace->parent->trace_id);
  } else {
    return {};
  }
  return scratch;
}

std::string_view span_id_hex(const Ctx& c, std::string& scratch) {
  if (c.trace && !c.trace->span_hex.empty()) return c.trace->span_hex;
  const auto* t = recording(c);
  if (!t) return {};
  scratch = tel::to_hex(t->span_id(tel::RequestTrace::kRoot));
  return scratch;
}

void finish(Ctx& c) {
  auto* t = recording(c);
  if (!t) return;
  const auto& cfg = c.rt->config().tracing;
  auto& root = t->span(tel::RequestTrace::kRoot);
  const std::string op(c.trace->operation);
  root.name = c.llm.model.empty() ? op : op + " " + c.llm.model;
  root.set("gen_ai.operation.name", op);
  if (!c.llm.model.empty()) root.set("gen_ai.request.model", c.llm.model);
  if (c.llm.max_tokens > 0) root.set("gen_ai.request.max_tokens", c.llm.max_tokens);
  const std::string_view out = c.trace->output;
  if (auto m = first_string_field(out, "\"model\":"); !m.empty()) {
    root.set("gen_ai.response.model", std::string(m));
  }
  if (auto reasons = finish_reasons(out); !reasons.empty()) {
    root.set("gen_ai.response.finish_reasons", std::move(reasons));
  }
  if (c.usage.present || c.usage.prompt_tokens > 0) {
    root.set("gen_ai.usage.input_tokens", c.usage.prompt_tokens);
    root.set("gen_ai.usage.output_tokens", c.usage.completion_tokens);
  }
  if (cfg.capture_content) {
    root.set("gen_ai.input.messages", tel::truncate_utf8(c.req.body, cfg.max_content_bytes));
    if (!out.empty()) {
      root.set("gen_ai.output.messages", tel::truncate_utf8(out, cfg.max_content_bytes));
    }
  }
  root.set("http.request.method", std::string(c.req.method));
  root.set("url.path", std::string(c.req.path()));
  if (c.status > 0) root.set("http.response.status_code", std::int64_t{c.status});
  root.set("bellwether.request_id", c.request_id);
  if (c.key) {
    root.set("bellwether.key_id", c.key->cfg->name);
    if (!c.key->cfg->tenant.empty()) root.set("bellwether.tenant", c.key->cfg->tenant);
    root.set(
        "bellwether.priority",
        std::string(admission::kPriorityLabels[static_cast<std::size_t>(c.priority.priority)]));
  }
  root.set("bellwether.stream", c.llm.stream);
  const std::string& group = c.model_served.empty() ? c.route_model : c.model_served;
  if (!group.empty()) root.set("bellwether.model_group", group);
  if (!c.route_model.empty() && !c.llm.model.empty() && c.route_model != c.llm.model) {
    root.set("bellwether.downgraded_from", c.llm.model);
  }
  if (!c.model_served.empty() && c.model_served != c.route_model) {
    root.set("bellwether.fallback_from", c.route_model);
  }
  if (c.cost_micro > 0) root.set("bellwether.cost_usd", static_cast<double>(c.cost_micro) / 1e6);
  if (!c.trace->queue_reason.empty()) root.set("bellwether.queue_reason", c.trace->queue_reason);
  if (!c.trace->cache_status.empty()) root.set("bellwether.cache", c.trace->cache_status);
  if (c.cancelled || c.client_gone) root.set("bellwether.cancelled", true);
  // Judged by what the client got: a retry that failed before a success is not a failure.
  const bool failed = c.status >= 400 || c.status == 0;
  if (failed) {
    const std::string label = c.outcome.label();
    root.set("error.type", label.empty() ? std::to_string(c.status) : label);
  }
  // A SERVER span is an error for a 5xx only (HTTP conventions): a 4xx is the client's.
  if (c.status >= 500) root.status = tel::SpanStatus::kError;
  const Nanos now = c.now();
  if (!tel::keep_trace(cfg.sampling, t->head_sampled(), failed, now - c.start)) return;
  c.trace->trace_hex = tel::to_hex(t->trace_id());
  c.trace->span_hex = tel::to_hex(t->span_id(tel::RequestTrace::kRoot));
  c.sh.tracer->submit(t->finish(now));
  c.trace->trace.reset();
}

}  // namespace tracing

std::unique_ptr<telemetry::TraceExporter> make_trace_exporter(Shared& sh,
                                                              const telemetry::TracingConfig& cfg) {
  telemetry::TraceExporterOptions o;
  o.endpoint = cfg.endpoint;
  o.headers = cfg.headers;
  o.ca_file = cfg.ca_file;
  o.resource = {{"service.name", cfg.service_name},
                {"telemetry.sdk.name", std::string("bellwether")},
                {"telemetry.sdk.language", std::string("cpp")}};
  o.queue_capacity = cfg.queue_spans;
  o.max_batch_spans = cfg.batch_spans;
  o.flush_interval = cfg.flush_interval;
  o.timeout = cfg.timeout;
  auto& exported =
      sh.registry.counter("bellwether_trace_spans_total",
                          "Spans handed to the trace collector, by outcome.", {"outcome"});
  auto& dropped = sh.registry.counter(
      "bellwether_trace_spans_dropped_total",
      "Spans dropped: the export queue was full, or the collector did not take the batch.",
      {"reason"});
  o.exported_counter = &exported.with({"exported"});
  o.dropped_queue_full_counter = &dropped.with({"queue_full"});
  o.dropped_export_failed_counter = &dropped.with({"export_failed"});
  return std::make_unique<telemetry::TraceExporter>(std::move(o));
}

}  // namespace bw::gateway
