// Phases 8 and 9: forward and respond. Pick a deployment (balancer, breakers, capacity), send
// it the request through Shared::upstream, and relay the answer (streamed or buffered) in the
// client's API. Retries go to another deployment where there is one, with backoff and within
// the retry budget, and only while nothing has reached the client; fallback models follow when a
// model has nothing left.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cmath>
#include <random>

#include "common/json_util.h"
#include "gateway/phases.h"
#include "http/sse.h"

namespace bw::gateway {

namespace asio = boost::asio;
using http::Response;
using providers::Endpoint;

namespace {

// An attempt dropped because its client went away: it says nothing about the upstream (a
// cancelled outcome: no breaker or balancer signal, no retry). The provider has read the prompt
// and may bill it, and what it generated before the cancel is unknown. The prompt is charged
// (estimated, as for an abandoned stream), so that disconnecting cannot be a way around a budget
// or a TPM limit.
void abandon_attempt(Ctx& c, routing::RequestPlan& plan, routing::Ticket& ticket, Nanos now,
                     routing::Rng& rng) {
  routing::Outcome o;
  o.kind = routing::OutcomeKind::kCancelled;
  plan.finish(ticket, o, now, false, rng);
  note_client_gone(c);
  if (c.usage.present) return;
  c.usage.prompt_tokens = providers::estimate_prompt_tokens(c.llm);
  c.usage.completion_tokens = 0;
}

const std::string& target_for(const Deployment& d, Endpoint e) {
  switch (e) {
    case Endpoint::kChat:
      return d.chat_target;
    case Endpoint::kCompletions:
      return d.completions_target;
    case Endpoint::kEmbeddings:
      return d.embeddings_target;
  }
  return d.chat_target;
}

// Request headers that are forwarded to a provider; everything else (the client's credentials,
// hop-by-hop headers, gateway controls such as x-priority) stays here.
constexpr std::array<std::string_view, 3> kForwardRequestHeaders = {"user-agent", "openai-beta",
                                                                    "accept-language"};
// Response headers passed back from a provider.
constexpr std::array<std::string_view, 3> kForwardResponseHeaders = {
    "openai-processing-ms", "openai-version", "x-ratelimit-limit-requests-provider"};

http::OutboundRequest build_upstream_request(Ctx& c, const Deployment& d, std::string body) {
  http::OutboundRequest out;
  out.headers.reserve(160 + d.provider->authorization.size());
  out.method = "POST";
  out.target = target_for(d, c.llm.endpoint);
  out.headers.add("content-type", "application/json");
  out.headers.add("accept", c.llm.stream ? "text/event-stream" : "application/json");
  out.headers.add("x-request-id", c.request_id);
  if (!d.provider->authorization.empty()) {
    out.headers.add("authorization", d.provider->authorization);
  }
  for (auto name : kForwardRequestHeaders) {
    if (auto v = c.req.header(name); !v.empty()) out.headers.add(name, v);
  }
  out.body = std::move(body);
  out.cancel = &c.upstream_cancel;
  return out;
}

void copy_response_headers(const http::Headers& from, http::Headers& to) {
  for (const auto& [k, v] : from.items()) {
    for (auto name : kForwardResponseHeaders) {
      if (http::iequals(k, name)) to.add(k, v);
    }
  }
}

// Phase 8 for a stream: pass events through one by one, counting usage on the way. The extra
// usage chunk is only shown to a client that asked for it.
asio::awaitable<void> relay_stream(Ctx& c, http::UpstreamResponse& up, http::Headers headers) {
  // `headers` holds neither (gateway headers and kForwardResponseHeaders only).
  headers.add("content-type", "text/event-stream");
  headers.add("cache-control", "no-cache");
  if (!co_await c.w.begin_stream(200, headers)) {
    c.cancelled = true;
    up.abort();
    co_return;
  }
  c.status = 200;
  http::SseSplitter splitter;
  std::string out, scratch;
  std::size_t text_chars = 0, text_chunks = 0;
  bool saw_done = false;
  for (;;) {
    auto piece = co_await up.read_some();
    if (!piece && c.client_gone) break;  // we dropped the upstream ourselves
    if (!piece) {
      // The upstream failed after bytes reached the client: no retry is possible. End the stream
      // cleanly with an error event so the client sees why it stopped.
      c.outcome.set(OutcomeKind::kUpstream, piece.error().code);
      std::string ev = "data: " +
                       openai_error_body("The upstream stream failed: " + piece.error().message,
                                         "upstream_error", piece.error().code) +
                       "\n\n";
      c.bytes_out += ev.size();
      co_await c.w.write_chunk(ev);
      break;
    }
    if (piece->empty()) break;
    if (c.ttft < 0) c.ttft = c.now() - c.start;
    if (!splitter.feed(*piece)) {
      c.outcome.set(OutcomeKind::kUpstream, "sse_event_too_large");
      up.abort();
      break;
    }
    out.clear();
    std::string_view event;
    while (splitter.next(event)) {
      auto data = http::sse_data(event, scratch);
      auto info = providers::inspect_chunk(data);
      if (info.done) saw_done = true;
      if (info.has_text) {
        text_chars += info.text_chars;
        ++text_chunks;
      }
      if (info.usage.present) c.usage = info.usage;
      phase_cache::capture_event(c, event);
      if (info.usage_only && !c.llm.client_wants_usage) continue;
      out.append(event);
    }
    splitter.compact();
    if (!out.empty()) {
      c.bytes_out += out.size();
      if (!co_await c.w.write_chunk(out)) {
        // The client went away: drop the upstream connection so the provider stops generating.
        c.cancelled = true;
        up.abort();
        break;
      }
    }
  }
  phase_cache::capture_stream_end(c, saw_done);
  if (!saw_done && !c.cancelled && c.outcome.none()) {
    // The upstream ended the body without [DONE]: a truncated stream, not a success.
    c.outcome.set(OutcomeKind::kUpstream, "upstream_truncated");
    std::string ev = "data: " +
                     openai_error_body("The upstream stream ended before it was complete.",
                                       "upstream_error", "upstream_truncated") +
                     "\n\n";
    c.bytes_out += ev.size();
    co_await c.w.write_chunk(ev);
  }
  if (!c.usage.present) {
    // An abandoned or broken stream is charged for what was generated up to that point.
    c.usage.prompt_tokens = providers::estimate_prompt_tokens(c.llm);
    c.usage.completion_tokens = std::max<std::int64_t>(
        static_cast<std::int64_t>(text_chunks), static_cast<std::int64_t>((text_chars + 3) / 4));
  }
  if (!c.cancelled) co_await c.w.end_stream();
}

routing::Rng& thread_rng(Nanos now) {
  thread_local routing::Rng rng(std::random_device{}() ^ static_cast<std::uint64_t>(now));
  return rng;
}

asio::awaitable<void> sleep_for(Nanos n) {
  if (n <= 0) co_return;
  asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::nanoseconds(n));
  co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
}

Nanos parse_retry_after(std::string_view v) {
  if (v.empty()) return 0;
  char* end = nullptr;
  std::string s(v);
  double secs = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || !std::isfinite(secs) || secs < 0) return 0;  // HTTP dates: ignored
  return static_cast<Nanos>(std::min(secs, 86400.0) * 1e9);
}

routing::Outcome outcome_for_error(const Error& e, Nanos latency) {
  routing::Outcome o;
  o.latency_ns = latency;
  o.kind = e.code == http::kUpstreamTimeout ? routing::OutcomeKind::kTimeout
                                            : routing::OutcomeKind::kConnectError;
  // The gateway's own pool bound refused it before anything was sent: the upstream's health is
  // unknown, so it must neither trip the breaker nor look like a fast failure to the balancer.
  if (e.code == http::kUpstreamConnectionLimit) o.kind = routing::OutcomeKind::kCancelled;
  return o;
}

routing::Outcome outcome_for_status(int status, const http::Headers& h, std::string_view body,
                                    Nanos latency) {
  routing::Outcome o;
  o.status = status;
  o.latency_ns = latency;
  if (status < 400) {
    o.kind = routing::OutcomeKind::kSuccess;
  } else if (status == 429) {
    o.kind = routing::OutcomeKind::kHttp429;
    o.retry_after_ns = parse_retry_after(h.get("retry-after"));
  } else if (status >= 500) {
    o.kind = routing::OutcomeKind::kHttp5xx;
    o.retry_after_ns = parse_retry_after(h.get("retry-after"));
  } else {
    o.kind = routing::OutcomeKind::kClientError;
    o.context_overflow = body.find("context_length_exceeded") != std::string_view::npos;
  }
  return o;
}

void record_attempt(Ctx& c, const std::string& deployment, int status, Nanos latency) {
  auto& m = *c.sh.metrics;
  m.upstream_requests
      .with({deployment, status == 0 ? std::string_view("error") : telemetry::status_class(status)})
      .inc();
  m.upstream_latency.with({deployment}).observe(to_seconds(latency));
  if (c.sh.scaling) c.sh.scaling->note_attempt(deployment, latency);
}

}  // namespace

asio::awaitable<Verdict> forward::run(Ctx& c) {
  auto& router = c.sh.router;
  auto& rng = thread_rng(c.now());
  auto plan = router.plan(c.route_model, c.now());
  std::optional<Response> last_response;  // the last upstream answer, passed on if we give up
  std::optional<Error> last_error;
  // A retry that must wait longer than the backoff cap (a long upstream Retry-After) is not
  // worth holding a concurrency slot for: the client gets the answer and its Retry-After now.
  const Nanos max_retry_wait = c.rt->config().retry.cap;
  for (;;) {
    if (c.client_gone) {  // nobody is waiting for the answer: no (further) attempt
      note_client_gone(c);
      co_return Ok{};
    }
    Nanos now = c.now();
    auto step = plan.next(now, rng);
    if (!step.ticket) {
      c.forward_failed = true;
      if (last_response) {
        c.last_failure = "upstream answered " + std::to_string(last_response->status);
        c.status = last_response->status;
        c.bytes_out += last_response->body.size();
        co_await c.w.send(std::move(*last_response));
        co_return Ok{};
      }
      if (last_error) c.last_failure = last_error->message;
      if (last_error && last_error->code == http::kUpstreamTimeout) co_return *last_error;
      const double wait_s = step.available_at > now ? to_seconds(step.available_at - now) : 1.0;
      Error e = errors::make(errors::kUpstreamDegraded,
                             "The service is degraded: no deployment of '" + c.route_model +
                                 "' or its fallbacks can take the request now (" +
                                 routing::to_string(step.failure) + "). Retry later.");
      if (step.failure == routing::PickFailure::kAllAtCapacity ||
          step.failure == routing::PickFailure::kAllCooling) {
        // The providers' own rate limits: say so as a rate limit, with their reset time.
        e = errors::make(errors::kUpstreamRateLimited,
                         "Every deployment of '" + c.route_model +
                             "' is at its provider's rate limit or cooling down after a 429. "
                             "Retry after the time in Retry-After.");
      }
      e.retry_after_s = std::max(1.0, wait_s);
      if (last_error) c.outcome.set(OutcomeKind::kUpstream, last_error->code);
      co_return e;
    }
    routing::Ticket& ticket = *step.ticket;
    const auto& dep_cfg = ticket.deployment();
    const Deployment* d = c.rt->deployment(dep_cfg.id);
    if (!d) {  // a reload removed it between pick and use
      routing::Outcome o;
      o.kind = routing::OutcomeKind::kCancelled;
      plan.finish(ticket, o, now, false, rng);
      continue;
    }
    auto body =
        providers::rewrite_request(c.req.body, dep_cfg.model, c.llm.stream, c.forced_max_tokens);
    if (!body) co_return body.error();
    ++c.attempts;
    c.upstream = dep_cfg.id;
    c.model_served = ticket.group();
    router.on_start(ticket, now);
    const Nanos sent_at = now;
    auto resp = co_await c.sh.upstream->send(
        *d->provider, build_upstream_request(c, *d, std::move(body.value())));
    if (!resp) {
      now = c.now();
      c.upstream_status = 0;
      c.upstream_latency = now - sent_at;
      if (c.client_gone) {  // cancelled by us
        abandon_attempt(c, plan, ticket, now, rng);
        co_return Ok{};
      }
      record_attempt(c, dep_cfg.id, 0, now - sent_at);
      auto o = outcome_for_error(resp.error(), now - sent_at);
      last_error = resp.error();
      last_response.reset();
      auto decision = plan.finish(ticket, o, now, false, rng);
      if (decision.retry() && decision.delay <= max_retry_wait) {
        co_await sleep_for(decision.delay);
        continue;
      }
      if (decision.retry() || decision.verdict == routing::RetryVerdict::kAttemptsExhausted ||
          decision.verdict == routing::RetryVerdict::kDeadline ||
          decision.verdict == routing::RetryVerdict::kBudgetExhausted ||
          decision.verdict == routing::RetryVerdict::kNotRetryable) {
        c.forward_failed = true;
        c.last_failure = resp.error().message;
        co_return resp.error();
      }
      continue;
    }
    auto& up = resp.value();
    http::Headers headers;
    headers.reserve(256 + c.extra.wire().size());
    headers.add("x-request-id", c.request_id);
    headers.add("x-bellwether-model", c.model_served);
    if (c.model_served != c.route_model) headers.add("x-bellwether-fallback-from", c.route_model);
    headers.append(c.extra);
    copy_response_headers(up.headers(), headers);
    const bool is_sse = up.content_type().starts_with("text/event-stream");
    if (up.status() == 200 && c.llm.stream && is_sse) {
      c.upstream_status = 200;
      co_await relay_stream(c, up, std::move(headers));
      now = c.now();
      c.upstream_latency = now - sent_at;
      record_attempt(c, dep_cfg.id, 200, now - sent_at);
      routing::Outcome o;
      o.status = 200;
      o.latency_ns = now - sent_at;
      o.ttft_ns = c.ttft;
      o.tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
      o.kind = c.cancelled        ? routing::OutcomeKind::kCancelled
               : c.outcome.none() ? routing::OutcomeKind::kSuccess
                                  : routing::OutcomeKind::kHttp5xx;
      plan.finish(ticket, o, now, true, rng);
      co_return Ok{};
    }
    c.upstream_status = up.status();
    auto all = co_await up.read_all(c.rt->config().max_upstream_response_bytes);
    now = c.now();
    c.upstream_latency = now - sent_at;
    if (!all && c.client_gone) {  // cancelled by us
      abandon_attempt(c, plan, ticket, now, rng);
      co_return Ok{};
    }
    record_attempt(c, dep_cfg.id, all ? up.status() : 0, now - sent_at);
    if (!all) {
      auto o = outcome_for_error(all.error(), now - sent_at);
      last_error = all.error();
      last_response.reset();
      auto decision = plan.finish(ticket, o, now, false, rng);
      if (decision.retry() && decision.delay <= max_retry_wait) {
        co_await sleep_for(decision.delay);
        continue;
      }
      co_return all.error();
    }
    if (c.ttft < 0) c.ttft = now - c.start;
    auto o = outcome_for_status(up.status(), up.headers(), *all, now - sent_at);
    if (up.status() == 200) {
      c.usage = providers::extract_usage(*all);
      o.tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
    }
    Response r;
    r.status = up.status();
    r.headers = std::move(headers);
    auto ct = up.content_type();
    // `headers` holds no content-type (gateway headers and kForwardResponseHeaders only).
    r.headers.add("content-type", ct.empty() ? std::string_view("application/json") : ct);
    if (auto ra = up.retry_after(); !ra.empty() && up.status() >= 400) {
      r.headers.add("retry-after", std::string(ra));
    }
    r.body = std::move(all.value());
    auto decision = plan.finish(ticket, o, now, false, rng);
    if (decision.retry() && decision.delay <= max_retry_wait) {
      last_response = std::move(r);
      last_error.reset();
      c.outcome.set(OutcomeKind::kUpstream, "upstream_" + std::to_string(up.status()));
      co_await sleep_for(decision.delay);
      continue;
    }
    c.status = r.status;
    if (r.status >= 400)
      c.outcome.set(OutcomeKind::kUpstream, "upstream_" + std::to_string(r.status));
    if (r.status >= 500 || r.status == 429) {
      c.forward_failed = true;
      c.last_failure = "upstream answered " + std::to_string(r.status);
    }
    phase_cache::capture_body(c, r.status, ct, r.body);
    c.bytes_out += r.body.size();
    co_await c.w.send(std::move(r));
    co_return Ok{};
  }
}

}  // namespace bw::gateway
