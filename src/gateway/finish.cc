// Phase 10: finish. Runs once for every request that entered handle_request, whatever ended it
// (an answer, an early error, a disconnect, an exception, a dead-letter replay): token
// reservations and budgets are settled to the real usage, the permit is released, a failed
// batch request goes to the dead-letter queue, and the metrics and the access log are written.
#include <spdlog/spdlog.h>

#include "common/same_text.h"
#include "gateway/phases.h"
#include "gateway/routes.h"

namespace bw::gateway {

namespace asio = boost::asio;

namespace {

// kRoutes' index of an endpoint label (endpoint_label returns the route's own view), or
// kRoutes.size() for a label that is not a route.
std::size_t route_index(std::string_view label) {
  for (std::size_t i = 0; i < kRoutes.size(); ++i) {
    if (label.data() == kRoutes[i].path.data()) return i;
  }
  return kRoutes.size();
}

// `request_path` is c.req.path(), `now` the clock's time at the request's end: read once for the
// metrics and the access log.
void record_metrics(Ctx& c, std::string_view request_path, Nanos now) {
  static_assert(kRoutes.size() == GroupMetricCache::kRoutes);
  auto& m = *c.sh.metrics;
  const auto path = endpoint_label(request_path);
  const std::string_view model = c.group ? std::string_view(c.group->cfg->name) : "";
  const auto prio_index = static_cast<std::size_t>(c.priority.priority);
  const std::string_view prio = c.key ? admission::kPriorityLabels[prio_index] : "";
  const std::string_view status = telemetry::status_class(c.status);
  // An authenticated request of a group: its series are resolved once, in the group.
  GroupMetricCache* g = c.key && c.group && prio_index < GroupMetricCache::kPriorities
                            ? c.group->metrics.get()
                            : nullptr;
  const std::size_t route = route_index(path);
  const int cls = c.status / 100;
  if (g && route < kRoutes.size() && cls >= 1 && cls <= 5) {
    const std::size_t slot =
        (route * GroupMetricCache::kClasses + static_cast<std::size_t>(cls - 1)) *
            GroupMetricCache::kPriorities +
        prio_index;
    g->requests.get(m.requests, slot, path, model, status, prio).inc();
  } else {
    m.requests.with({path, model, status, prio}).inc();
  }
  if (!c.key || !c.group) return;  // not an authenticated LLM request: no model series
  c.sh.llm_completions.fetch_add(1, std::memory_order_relaxed);
  const double duration_s = to_seconds(now - c.start);
  auto& duration = g && route < kRoutes.size()
                       ? g->duration.get(m.request_duration, route, path, model)
                       : m.request_duration.with({path, model});
  duration.observe(duration_s);
  auto& by_priority = g ? g->priority_duration.get(m.priority_duration, prio_index, prio)
                        : m.priority_duration.with({prio});
  by_priority.observe(duration_s);
  if (c.ttft >= 0 && c.llm.stream) {
    const double ttft_s = to_seconds(c.ttft);
    (g ? g->ttft.get(m.ttft, 0, model) : m.ttft.with({model})).observe(ttft_s);
    (g ? g->priority_ttft.get(m.priority_ttft, prio_index, prio) : m.priority_ttft.with({prio}))
        .observe(ttft_s);
  }
  const std::string_view served = c.model_served.empty() ? model : std::string_view(c.model_served);
  // Each name compared once: the group's series serve the served and the routed model when they
  // are the group's, and a request served and routed within its group did not fall back.
  const bool served_group = same_text(served, model);
  const bool routed_group = same_text(c.route_model, model);
  auto tokens = [&](std::size_t slot, std::string_view kind) -> telemetry::Counter& {
    return g && served_group ? g->tokens.get(m.tokens, slot, served, kind)
                             : m.tokens.with({served, kind});
  };
  if (c.usage.prompt_tokens > 0) {
    tokens(0, "prompt").add(static_cast<std::uint64_t>(c.usage.prompt_tokens));
  }
  if (c.usage.completion_tokens > 0) {
    tokens(1, "completion").add(static_cast<std::uint64_t>(c.usage.completion_tokens));
  }
  if (!c.upstream.empty() && c.usage.prompt_tokens + c.usage.completion_tokens > 0) {
    note_deployment_tokens(c.sh, c.upstream, served,
                           c.usage.prompt_tokens + c.usage.completion_tokens, c.deployment);
  }
  if (c.cost_micro > 0) {
    auto& cost = g && routed_group ? g->cost_usd.get(m.cost_usd, 0, model)
                                   : m.cost_usd.with({c.route_model});
    cost.add(static_cast<std::uint64_t>(c.cost_micro));
  }
  if (c.usage.cached_tokens > 0) {
    m.cached_tokens.with({served}).add(static_cast<std::uint64_t>(c.usage.cached_tokens));
  }
  if (c.cache->status == CacheState::Status::kHit && c.cache->entry->cost_micro > 0) {
    m.cache_saved_usd.with({model}).add(static_cast<std::uint64_t>(c.cache->entry->cost_micro));
  }
  if (c.outcome.kind == OutcomeKind::kRateLimited) m.rate_limited.with({c.outcome.detail}).inc();
  auto& queue_wait =
      g ? g->queue_wait.get(m.queue_wait, prio_index, prio) : m.queue_wait.with({prio});
  queue_wait.observe(to_seconds(c.queue_wait));
  if (c.attempts > 1) m.retries.with({model}).add(static_cast<std::uint64_t>(c.attempts - 1));
  if (!c.model_served.empty() && !(served_group && routed_group) &&
      !same_text(c.model_served, c.route_model)) {
    m.fallbacks.with({c.route_model, c.model_served}).inc();
  }
}

// `now`: the clock's time at the request's end.
void write_access_log(Ctx& c, Nanos now) {
  const std::string_view request_path = c.req.path();
  record_metrics(c, request_path, now);
  if (!c.sh.access_log->enabled()) return;
  // The usual request has no outcome to label: no call, an empty string.
  const std::string error = c.outcome.none() ? std::string() : c.outcome.label();
  std::string trace_scratch, span_scratch;
  const std::string_view trace_id = tracing::trace_id_hex(c, trace_scratch);
  const std::string_view span_id = tracing::span_id_hex(c, span_scratch);
  const cache::Entry* hit =
      c.cache->status == CacheState::Status::kHit ? c.cache->entry.get() : nullptr;
  // Every field named, each by an expression: GCC then stores each once instead of zeroing the
  // whole record first (as it does when a field keeps its default or is a constant).
  const AccessRecord r{
      .request_id = c.request_id,
      .key_id = c.key ? std::string_view(c.key->cfg->name) : std::string_view{},
      .method = c.req.method,
      .path = request_path,
      .model_requested = c.llm.model,
      .model_served = c.model_served,
      .upstream = c.upstream,
      .error_code = error,
      .client_ip = c.client_ip,
      .trace_id = trace_id,
      .span_id = span_id,
      .status = c.status,
      .priority = c.key ? c.priority.priority : -1,
      .priority_lowered = c.priority.lowered,
      .stream = c.llm.stream,
      .cancelled = c.cancelled,
      .latency_ns = now - c.start,
      .ttft_ns = c.ttft >= 0 ? c.ttft : -1,
      .queue_ns = c.queue_wait,
      .wait_reason = c.wait_reason != admission::WaitReason::kNone
                         ? admission::wait_reason_name(c.wait_reason)
                         : std::string_view{},
      .prompt_tokens = c.usage.prompt_tokens,
      .completion_tokens = c.usage.completion_tokens,
      .cost_micro_usd = c.cost_micro,
      .attempts = c.attempts,
      .bytes_in = c.req.body.size(),
      .bytes_out = c.bytes_out,
      .cache = c.cache->status_text(),
      .cache_age_s =
          hit ? std::max<std::int64_t>(0, c.sh.clock.unix_millis() - hit->created_unix_ms) / 1000
              : -1,
      .cache_saved_micro_usd = hit ? hit->cost_micro : 0,
      .cache_similarity = hit ? c.cache->similarity : -1,
      .cached_tokens = c.usage.cached_tokens,
  };
  c.sh.access_log->log(r);
}

// The deployment's TPM reservation took the estimate; the answer's usage replaces it.
void settle_rate_tokens(Ctx& c) {
  const std::int64_t used = c.usage.prompt_tokens + c.usage.completion_tokens;
  if (used > 0) c.permit.settle_tokens(used);
}

// A batch (P2) request that failed after every retry and fallback is kept for a later replay.
bool dead_letter_needed(const Ctx& c) {
  return c.forward_failed && !c.replay_key && c.sh.dead_letters && c.priority.priority == 2 &&
         !c.cancelled;
}

asio::awaitable<void> dead_letter(Ctx& c) {
  routing::NewDeadLetter e;
  e.created_unix_ms = c.sh.clock.unix_millis();
  e.key_id = c.key->cfg->name;
  e.model = c.llm.model;
  e.endpoint = std::string(c.req.path());
  e.body = c.req.body;
  e.error = c.last_failure.empty() ? c.outcome.label() : c.last_failure;
  e.attempts = static_cast<int>(c.attempts);
  auto r = co_await run_blocking(c.sh, [&] { return c.sh.dead_letters->add(e); });
  if (!r) spdlog::error("dead-letter queue: {}", r.error().message);
}

// The end of every finish: once per request, at `now` (the clock's time).
void close_request(Ctx& c, Nanos now) {
  tracing::finish(c);
  write_access_log(c, now);
  c.finished = true;
  c.sh.finished.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

// Everything without a coroutine when nothing needs awaiting (in-process limits, no budget
// hold, no dead letter): the common case. It awaits nothing, so one reading of the clock serves
// the limits' settlement, the metrics and the access log.
std::optional<Verdict> finish::try_now(Ctx& c) {
  if (c.finished) return Ok{};
  const Nanos now = c.now();
  if (!phase_rate_limit::settle_now(c, now)) return std::nullopt;
  phase_cost::compute_cost(c);
  if (phase_cost::settle_needed(c) || dead_letter_needed(c) || phase_cache::store_needed(c))
    return std::nullopt;
  phase_cache::release(c);
  c.permit.release();
  settle_rate_tokens(c);
  close_request(c, now);
  return Ok{};
}

asio::awaitable<Verdict> finish::run(Ctx& c) {
  if (c.finished) co_return Ok{};
  if (!phase_rate_limit::settle_now(c, c.now())) co_await phase_rate_limit::settle(c);
  phase_cost::compute_cost(c);
  if (phase_cost::settle_needed(c)) co_await phase_cost::settle(c);
  if (phase_cache::store_needed(c)) {
    co_await phase_cache::store(c);
  } else {
    phase_cache::release(c);
  }
  c.permit.release();
  settle_rate_tokens(c);
  if (dead_letter_needed(c)) co_await dead_letter(c);
  close_request(c, c.now());
  co_return Ok{};
}

}  // namespace bw::gateway
