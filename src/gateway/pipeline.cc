#include "gateway/pipeline.h"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <random>

#include "common/clock.h"
#include "common/json_util.h"
#include "config/config.h"
#include "cost/pricing.h"
#include "gateway/keys.h"
#include "http/client.h"
#include "http/sse.h"
#include "limits/client_ip.h"
#include "providers/openai.h"

namespace bw::gateway {

namespace asio = boost::asio;
using http::Request;
using http::Response;
using http::ResponseWriter;
using providers::Endpoint;

namespace {

// ---------------------------------------------------------------------------------------------
// Per-request context: everything the phases share, and what the access log records at the end.
struct Ctx {
  Ctx(Shared& s, std::shared_ptr<const Runtime> r, Request& q, ResponseWriter& wr)
      : sh(s), rt(std::move(r)), req(q), w(wr) {}
  Shared& sh;
  std::shared_ptr<const Runtime> rt;
  Request& req;
  ResponseWriter& w;
  Nanos start = 0;
  std::string request_id;
  std::string client_ip;
  const KeyInfo* key = nullptr;
  providers::LlmRequest llm;
  const ModelGroup* group = nullptr;
  const limits::Plan* plan = nullptr;
  std::vector<limits::LimitSpec> key_limits;  // the key's plan limits with its overrides applied
  limits::Verdict verdict;  // rate-limit decision (reservation settled at the end)
  std::int64_t reserved_tokens = 0;
  admission::PriorityDecision priority;
  admission::Permit permit;
  Nanos queue_wait = 0;
  int upstream_status = 0;      // last upstream answer (0 = none)
  Nanos upstream_latency = 0;   // of the last attempt
  bool forward_failed = false;  // every deployment and fallback failed (DLQ candidate)
  std::string last_failure;
  const KeyInfo* replay_key = nullptr;  // set when an admin replays a dead letter
  std::string route_model;              // the model routed to (differs after a downgrade)
  const cost::ModelPrice* price = nullptr;
  std::int64_t forced_max_tokens = 0;  // the cost guard's output cap, forwarded upstream
  cost::Reservation budget;
  cost::RedisBudgetReservation shared_budget;  // distributed mode (Shared::redis_budgets)
  std::vector<std::string> budget_ids;
  cost::Micros cost_micro = 0;
  bool reservation_logged = false;
  http::Headers extra;  // added to every response from the rate-limit phase on
  // Outcome, for the access log.
  int status = 0;
  std::string model_served;
  std::string upstream;
  std::string error_code;
  Nanos ttft = -1;
  providers::Usage usage;
  std::size_t bytes_out = 0;
  std::int64_t attempts = 0;
  bool cancelled = false;
  // The client closed its connection before the response ended (ResponseWriter's watch): the
  // queue wait is cancelled through `gone_signal`, the upstream attempt through
  // `upstream_cancel`, and nothing is retried.
  bool client_gone = false;
  asio::cancellation_signal gone_signal;
  http::UpstreamCancel upstream_cancel;
};

void on_client_gone(Ctx& c) {
  c.client_gone = true;
  c.cancelled = true;
  c.gone_signal.emit(asio::cancellation_type::terminal);
  c.upstream_cancel.cancel();
}

// Awaits `op` (a queue wait: an AdmitResult or a WaitResult) so that the client going away
// cancels it. A client already gone is refused without starting the wait: a signal emitted
// before the wait binds its slot would be lost.
template <class T>
asio::awaitable<T> unless_client_gone(Ctx& c, asio::awaitable<T> op) {
  if (c.client_gone) {
    T refused;
    refused.refusal = admission::Refusal::kCancelled;
    co_return refused;
  }
  co_return co_await asio::co_spawn(
      co_await asio::this_coro::executor, std::move(op),
      asio::bind_cancellation_slot(c.gone_signal.slot(), asio::use_awaitable));
}

// Marks a request whose client went away (nginx's 499 in the access log).
void note_client_gone(Ctx& c) {
  c.cancelled = true;
  c.status = 499;
  c.error_code = std::string(http::kUpstreamCancelled);
}

// An attempt dropped because its client went away: it says nothing about the upstream (a
// cancelled outcome: no breaker or balancer signal, no retry). The provider has read the prompt
// and may bill it, and what it generated before the cancel is unknown. The prompt is charged
// (estimated, as for an abandoned stream), so that disconnecting cannot be a way around a budget
// or a TPM limit.
void abandon_attempt(Ctx& c, routing::RequestPlan& plan, routing::Ticket& ticket, Nanos now,
                     routing::Rng& rng) {
  routing::Outcome o;
  o.kind = routing::OutcomeKind::cancelled;
  plan.finish(ticket, o, now, false, rng);
  note_client_gone(c);
  if (c.usage.present) return;
  c.usage.prompt_tokens = providers::estimate_prompt_tokens(c.llm);
  c.usage.completion_tokens = 0;
}

// The limiter's view of time. BELLWETHER_CLOCK_OFFSET_MS (hidden, tests only) shifts it to
// simulate a replica whose clock is off; everything else keeps the real clock.
Nanos limiter_now() {
  static const Nanos offset = [] {
    const char* v = std::getenv("BELLWETHER_CLOCK_OFFSET_MS");
    return v ? static_cast<Nanos>(std::atoll(v)) * kNanosPerMilli : Nanos{0};
  }();
  return SteadyClock::instance().now() + offset;
}

bool budget_active(const Ctx& c) {
  return c.budget.active() || c.shared_budget.active();
}

std::string new_request_id() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "req_";
  auto a = rng(), b = rng();
  for (int i = 0; i < 16; ++i) id.push_back(kHex[(a >> (i * 4)) & 0xf]);
  for (int i = 0; i < 8; ++i) id.push_back(kHex[(b >> (i * 4)) & 0xf]);
  return id;
}

// A client-supplied x-request-id is kept if it is short and printable; else one is generated.
std::string request_id_for(const Request& req) {
  auto id = req.header("x-request-id");
  if (!id.empty() && id.size() <= 128 &&
      std::all_of(id.begin(), id.end(), [](char c) { return c > 0x20 && c < 0x7f; })) {
    return std::string(id);
  }
  return new_request_id();
}

Response error_response(const Ctx& c, const Error& e) {
  auto r = Response::json(e.status, openai_error_body(e.message, e.type, e.code, e.param));
  r.headers.add("x-request-id", c.request_id);
  r.headers.append(c.extra);
  if (e.retry_after_s >= 0) {
    r.headers.add("retry-after",
                  std::to_string(static_cast<long>(std::ceil(std::max(e.retry_after_s, 0.0)))));
  }
  return r;
}

asio::awaitable<void> reply_error(Ctx& c, const Error& e) {
  c.status = e.status;
  if (c.error_code.empty()) c.error_code = e.code.empty() ? e.type : e.code;
  auto r = error_response(c, e);
  c.bytes_out += r.body.size();
  co_await c.w.send(std::move(r));
}

// Priority label values, spelled as in /v1/metrics/queue and the docs.
constexpr std::array<std::string_view, 3> kPriorityLabel = {"p0", "p1", "p2"};

// The endpoint label: a known route, or "other", so that clients cannot mint series by probing
// URLs (label cardinality stays bounded).
std::string_view endpoint_label(std::string_view path) {
  static constexpr std::array<std::string_view, 9> kKnown = {"/v1/chat/completions",
                                                             "/v1/completions",
                                                             "/v1/embeddings",
                                                             "/v1/models",
                                                             "/healthz",
                                                             "/readyz",
                                                             "/metrics",
                                                             "/v1/metrics/queue",
                                                             "/admin"};
  for (auto k : kKnown) {
    if (path == k) return k;
  }
  if (path.starts_with("/admin/")) return "/admin";
  return "other";
}

void record_metrics(Ctx& c) {
  auto& m = *c.sh.metrics;
  const auto path = endpoint_label(c.req.path());
  const std::string_view model = c.group ? std::string_view(c.group->cfg->name) : "";
  const std::string_view prio =
      c.key ? kPriorityLabel[static_cast<std::size_t>(c.priority.priority)] : "";
  m.requests.with({path, model, telemetry::status_class(c.status), prio}).inc();
  if (!c.key || !c.group) return;  // not an authenticated LLM request: no model series
  c.sh.llm_completions.fetch_add(1, std::memory_order_relaxed);
  const Nanos now = SteadyClock::instance().now();
  m.request_duration.with({path, model}).observe(to_seconds(now - c.start));
  m.priority_duration.with({prio}).observe(to_seconds(now - c.start));
  if (c.ttft >= 0 && c.llm.stream) {
    m.ttft.with({model}).observe(to_seconds(c.ttft));
    m.priority_ttft.with({prio}).observe(to_seconds(c.ttft));
  }
  if (c.usage.prompt_tokens > 0) {
    m.tokens.with({c.model_served.empty() ? model : std::string_view(c.model_served), "prompt"})
        .add(static_cast<std::uint64_t>(c.usage.prompt_tokens));
  }
  if (c.usage.completion_tokens > 0) {
    m.tokens.with({c.model_served.empty() ? model : std::string_view(c.model_served), "completion"})
        .add(static_cast<std::uint64_t>(c.usage.completion_tokens));
  }
  if (c.cost_micro > 0)
    m.cost_usd.with({c.route_model}).add(static_cast<std::uint64_t>(c.cost_micro));
  if (c.error_code.starts_with("rate_limited:")) {
    m.rate_limited.with({std::string_view(c.error_code).substr(13)}).inc();
  }
  m.queue_wait.with({prio}).observe(to_seconds(c.queue_wait));
  if (c.attempts > 1) m.retries.with({model}).add(static_cast<std::uint64_t>(c.attempts - 1));
  if (!c.model_served.empty() && c.model_served != c.route_model) {
    m.fallbacks.with({c.route_model, c.model_served}).inc();
  }
}

void write_access_log(Ctx& c) {
  record_metrics(c);
  AccessRecord r;
  r.request_id = c.request_id;
  r.key_id = c.key ? std::string_view(c.key->cfg->name) : std::string_view{};
  r.method = c.req.method;
  r.path = c.req.path();
  r.client_ip = c.client_ip;
  r.model_requested = c.llm.model;
  r.model_served = c.model_served;
  r.upstream = c.upstream;
  r.error_code = c.error_code;
  r.status = c.status;
  r.stream = c.llm.stream;
  r.cancelled = c.cancelled;
  const Nanos now = SteadyClock::instance().now();
  r.latency_ms = static_cast<double>(now - c.start) / 1e6;
  r.ttft_ms = c.ttft >= 0 ? static_cast<double>(c.ttft) / 1e6 : -1;
  r.prompt_tokens = c.usage.prompt_tokens;
  r.completion_tokens = c.usage.completion_tokens;
  r.attempts = c.attempts;
  r.cost_micro_usd = c.cost_micro;
  r.priority = c.key ? c.priority.priority : -1;
  r.priority_lowered = c.priority.lowered;
  r.queue_ms = static_cast<double>(c.queue_wait) / 1e6;
  r.bytes_in = c.req.body.size();
  r.bytes_out = c.bytes_out;
  c.sh.access_log->log(r);
}

// ---------------------------------------------------------------------------------------------
// Phase 1: authenticate. The presented key is hashed and looked up by hash; the stored and
// computed hashes are compared in constant time.
Result<const KeyInfo*> authenticate(const Runtime& rt, const Request& req) {
  std::string_view presented;
  auto auth = req.header("authorization");
  if (auth.size() > 7 && http::iequals(auth.substr(0, 7), "bearer ")) {
    presented = auth.substr(7);
  } else if (auto k = req.header("x-api-key"); !k.empty()) {
    presented = k;
  }
  while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
  if (presented.empty()) {
    return make_error(401, "invalid_request_error", "invalid_api_key",
                      "You didn't provide an API key. Provide it in the Authorization header "
                      "(Authorization: Bearer YOUR_KEY) or in x-api-key.");
  }
  const std::string hash = config::sha256_hex(presented);
  const KeyInfo* key = rt.key_by_hash(hash);
  if (!key || CRYPTO_memcmp(key->cfg->secret_hash.data(), hash.data(), hash.size()) != 0) {
    return make_error(401, "invalid_request_error", "invalid_api_key",
                      "Incorrect API key provided.");
  }
  return key;
}

bool admin_authorized(const Runtime& rt, const Request& req) {
  const auto& want = rt.config().admin_key_hash;
  if (want.empty()) return false;
  std::string_view presented;
  auto auth = req.header("authorization");
  if (auth.size() > 7 && http::iequals(auth.substr(0, 7), "bearer ")) presented = auth.substr(7);
  if (presented.empty()) presented = req.header("x-api-key");
  if (presented.empty()) return false;
  const std::string hash = config::sha256_hex(presented);
  return hash.size() == want.size() && CRYPTO_memcmp(hash.data(), want.data(), hash.size()) == 0;
}

// Phase 2: resolve the public model name to its group, and check the key may use it.
Result<const ModelGroup*> resolve(const Runtime& rt, const KeyInfo& key, const std::string& model) {
  const ModelGroup* g = rt.group(model);
  if (!g) {
    return make_error(404, "invalid_request_error", "model_not_found",
                      "The model '" + model + "' does not exist or you do not have access to it.",
                      "model");
  }
  const auto& own = key.cfg->allowed_models;
  const limits::Plan* plan = rt.config().plan(key.cfg->plan);
  const bool allowed = own.empty() ? (!plan || plan->allows_model(model))
                                   : std::find(own.begin(), own.end(), model) != own.end();
  if (!allowed) {
    return make_error(403, "permission_error", "model_not_allowed",
                      "This API key may not use the model '" + model + "'.", "model");
  }
  return g;
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
      c.error_code = piece.error().code;
      std::string ev = "data: " +
                       openai_error_body("The upstream stream failed: " + piece.error().message,
                                         "upstream_error", piece.error().code) +
                       "\n\n";
      c.bytes_out += ev.size();
      co_await c.w.write_chunk(ev);
      break;
    }
    if (piece->empty()) break;
    if (c.ttft < 0) c.ttft = SteadyClock::instance().now() - c.start;
    if (!splitter.feed(*piece)) {
      c.error_code = "sse_event_too_large";
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
  if (!saw_done && !c.cancelled && c.error_code.empty()) {
    // The upstream ended the body without [DONE]: a truncated stream, not a success.
    c.error_code = "upstream_truncated";
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

routing::Rng& thread_rng() {
  thread_local routing::Rng rng(std::random_device{}() ^
                                static_cast<std::uint64_t>(SteadyClock::instance().now()));
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
  o.kind = e.code == http::kUpstreamTimeout ? routing::OutcomeKind::timeout
                                            : routing::OutcomeKind::connect_error;
  // The gateway's own pool bound refused it before anything was sent: the upstream's health is
  // unknown, so it must neither trip the breaker nor look like a fast failure to the balancer.
  if (e.code == http::kUpstreamConnectionLimit) o.kind = routing::OutcomeKind::cancelled;
  return o;
}

routing::Outcome outcome_for_status(int status, const http::Headers& h, std::string_view body,
                                    Nanos latency) {
  routing::Outcome o;
  o.status = status;
  o.latency_ns = latency;
  if (status < 400) {
    o.kind = routing::OutcomeKind::success;
  } else if (status == 429) {
    o.kind = routing::OutcomeKind::http_429;
    o.retry_after_ns = parse_retry_after(h.get("retry-after"));
  } else if (status >= 500) {
    o.kind = routing::OutcomeKind::http_5xx;
    o.retry_after_ns = parse_retry_after(h.get("retry-after"));
  } else {
    o.kind = routing::OutcomeKind::client_error;
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
}

// Phases 7 and 8: pick a deployment (balancer, breakers, capacity), send, and answer. Retries go
// to another deployment where there is one, with backoff and within the retry budget, and only
// while nothing has reached the client; fallback models follow when a model has nothing left.
asio::awaitable<void> forward(Ctx& c) {
  auto& router = c.sh.router;
  auto& rng = thread_rng();
  auto plan = router.plan(c.route_model, SteadyClock::instance().now());
  std::optional<Response> last_response;  // the last upstream answer, passed on if we give up
  std::optional<Error> last_error;
  // A retry that must wait longer than the backoff cap (a long upstream Retry-After) is not
  // worth holding a concurrency slot for: the client gets the answer and its Retry-After now.
  const Nanos max_retry_wait = c.rt->config().retry.cap;
  for (;;) {
    if (c.client_gone) {  // nobody is waiting for the answer: no (further) attempt
      note_client_gone(c);
      co_return;
    }
    Nanos now = SteadyClock::instance().now();
    auto step = plan.next(now, rng);
    if (!step.ticket) {
      c.forward_failed = true;
      if (last_response) {
        c.last_failure = "upstream answered " + std::to_string(last_response->status);
        c.status = last_response->status;
        c.bytes_out += last_response->body.size();
        co_await c.w.send(std::move(*last_response));
        co_return;
      }
      if (last_error) c.last_failure = last_error->message;
      if (last_error && last_error->code == http::kUpstreamTimeout) {
        co_await reply_error(c, *last_error);
        co_return;
      }
      const double wait_s = step.available_at > now ? to_seconds(step.available_at - now) : 1.0;
      Error e = make_error(503, "service_unavailable", "upstream_degraded",
                           "The service is degraded: no deployment of '" + c.route_model +
                               "' or its fallbacks can take the request now (" +
                               routing::to_string(step.failure) + "). Retry later.");
      if (step.failure == routing::PickFailure::all_at_capacity ||
          step.failure == routing::PickFailure::all_cooling) {
        // The providers' own rate limits: say so as a rate limit, with their reset time.
        e = make_error(429, "rate_limit_exceeded", "upstream_rate_limited",
                       "Every deployment of '" + c.route_model +
                           "' is at its provider's rate limit or cooling down after a 429. "
                           "Retry after the time in Retry-After.");
      }
      e.retry_after_s = std::max(1.0, wait_s);
      if (last_error) c.error_code = last_error->code;
      co_await reply_error(c, e);
      co_return;
    }
    routing::Ticket& ticket = *step.ticket;
    const auto& dep_cfg = ticket.deployment();
    const Deployment* d = c.rt->deployment(dep_cfg.id);
    if (!d) {  // a reload removed it between pick and use
      routing::Outcome o;
      o.kind = routing::OutcomeKind::cancelled;
      plan.finish(ticket, o, now, false, rng);
      continue;
    }
    auto body =
        providers::rewrite_request(c.req.body, dep_cfg.model, c.llm.stream, c.forced_max_tokens);
    if (!body) {
      co_await reply_error(c, body.error());
      co_return;
    }
    ++c.attempts;
    c.upstream = dep_cfg.id;
    c.model_served = ticket.group();
    router.on_start(ticket, now);
    const Nanos sent_at = now;
    auto& pool = http::ClientPool::for_this_thread();
    auto resp = co_await pool.send(d->provider->endpoint,
                                   build_upstream_request(c, *d, std::move(body.value())),
                                   d->provider->options);
    if (!resp) {
      now = SteadyClock::instance().now();
      c.upstream_status = 0;
      c.upstream_latency = now - sent_at;
      if (c.client_gone) {  // cancelled by us
        abandon_attempt(c, plan, ticket, now, rng);
        co_return;
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
      if (decision.retry() || decision.verdict == routing::RetryVerdict::attempts_exhausted ||
          decision.verdict == routing::RetryVerdict::deadline ||
          decision.verdict == routing::RetryVerdict::budget_exhausted ||
          decision.verdict == routing::RetryVerdict::not_retryable) {
        c.forward_failed = true;
        c.last_failure = resp.error().message;
        co_await reply_error(c, resp.error());
        co_return;
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
      now = SteadyClock::instance().now();
      c.upstream_latency = now - sent_at;
      record_attempt(c, dep_cfg.id, 200, now - sent_at);
      routing::Outcome o;
      o.status = 200;
      o.latency_ns = now - sent_at;
      o.ttft_ns = c.ttft;
      o.tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
      o.kind = c.cancelled            ? routing::OutcomeKind::cancelled
               : c.error_code.empty() ? routing::OutcomeKind::success
                                      : routing::OutcomeKind::http_5xx;
      plan.finish(ticket, o, now, true, rng);
      co_return;
    }
    c.upstream_status = up.status();
    auto all = co_await up.read_all(c.rt->config().max_upstream_response_bytes);
    now = SteadyClock::instance().now();
    c.upstream_latency = now - sent_at;
    if (!all && c.client_gone) {  // cancelled by us
      abandon_attempt(c, plan, ticket, now, rng);
      co_return;
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
      co_await reply_error(c, all.error());
      co_return;
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
      c.error_code = "upstream_" + std::to_string(up.status());
      co_await sleep_for(decision.delay);
      continue;
    }
    c.status = r.status;
    if (r.status >= 400) c.error_code = "upstream_" + std::to_string(r.status);
    if (r.status >= 500 || r.status == 429) {
      c.forward_failed = true;
      c.last_failure = "upstream answered " + std::to_string(r.status);
    }
    c.bytes_out += r.body.size();
    co_await c.w.send(std::move(r));
    co_return;
  }
}

// Waits for the ledger's group commit of one record (the callback runs on the writer thread).
asio::awaitable<Result<Ok>> ledger_commit(cost::Ledger& ledger, cost::LedgerReservation rec,
                                          bool& queued) {
  auto ex = co_await asio::this_coro::executor;
  queued = true;
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(Result<Ok>)>(
      [&](auto handler) {
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        const bool ok = ledger.append_reservation(std::move(rec), [h, ex](const Result<Ok>& r) {
          asio::post(ex, [h, r]() mutable { (*h)(r); });
        });
        if (!ok) {
          queued = false;
          asio::post(ex, [h]() mutable {
            (*h)(Result<Ok>(make_error(503, "server_error", "ledger_busy", "ledger queue full")));
          });
        }
      },
      asio::use_awaitable);
}

std::string utc_time(std::int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Phase 5: estimate the worst case, maybe downgrade near the cap, reserve against every budget
// that applies, and make the reservation durable before anything is forwarded.
// The synchronous part of phase 5: the price, and whether any budget applies at all (most
// requests of a deployment without budgets need no coroutine for the rest).
bool cost_guard_needed(Ctx& c) {
  const auto& cfg = c.rt->config();
  c.price = cfg.prices.find(c.route_model);
  if (!c.sh.budgets) return false;
  c.budget_ids = budget_ids_for(cfg, *c.key->cfg);
  return !c.budget_ids.empty();
}

asio::awaitable<bool> cost_guard(Ctx& c) {
  auto& sh = c.sh;
  const auto& cfg = c.rt->config();
  if (!c.price) {
    co_await reply_error(c, make_error(403, "invalid_request_error", "model_not_priced",
                                       "The model '" + c.route_model +
                                           "' has no price, so its spend cannot be held to a "
                                           "budget. Add it to the pricing table."));
    co_return false;
  }
  const std::int64_t now_ms = SteadyClock::instance().unix_millis();
  auto cheaper = sh.redis_budgets
                     ? sh.redis_budgets->should_downgrade(c.budget_ids, c.route_model,
                                                          c.key->cfg->downgrade_opt_out, now_ms)
                     : sh.budgets->should_downgrade(c.budget_ids, c.route_model,
                                                    c.key->cfg->downgrade_opt_out, now_ms);
  if (cheaper) {
    const ModelGroup* g = c.rt->group(*cheaper);
    const cost::ModelPrice* p = cfg.prices.find(*cheaper);
    if (g && p) {
      c.extra.add("x-bellwether-downgraded-from", c.route_model);
      sh.metrics->downgrades.with({c.route_model, *cheaper}).inc();
      c.route_model = *cheaper;
      c.group = g;
      c.price = p;
    }
  }
  // Embeddings produce no output tokens; everything else is capped at the worst case.
  cost::Micros worst = 0;
  const std::int64_t prompt_estimate = providers::estimate_prompt_tokens(c.llm);
  if (c.llm.endpoint == Endpoint::kEmbeddings) {
    worst = cost::cost_micros(*c.price, prompt_estimate, 0);
  } else {
    const std::int64_t cap =
        c.llm.max_tokens > 0 ? c.llm.max_tokens : c.group->cfg->max_output_tokens;
    auto wc = cost::worst_case(*c.price, prompt_estimate, cap);
    c.forced_max_tokens = wc.completion_tokens;
    worst = wc.cost;
  }
  // One Redis round trip in distributed mode (rebuilt from the ledger if Redis lost the
  // counters); the in-process budgets otherwise.
  bool reserved = false;
  cost::BudgetRefusal refusal;
  std::vector<std::string> held_ids;
  cost::Micros held = 0;
  if (sh.redis_budgets) {
    auto res = co_await sh.redis_budgets->reserve(c.budget_ids, worst, now_ms,
                                                  SteadyClock::instance().now());
    reserved = res.ok();
    if (reserved) {
      c.shared_budget = std::move(*res.reservation);
      held_ids = c.shared_budget.budget_ids();
      held = c.shared_budget.amount();
    } else {
      refusal = std::move(res.refusal);
    }
  } else {
    auto res = sh.budgets->reserve(c.budget_ids, worst, now_ms);
    reserved = res.ok();
    if (reserved) {
      c.budget = std::move(*res.reservation);
      held_ids = c.budget.budget_ids();
      held = c.budget.amount();
    } else {
      refusal = std::move(res.refusal);
    }
  }
  if (!reserved) {
    const auto& ref = refusal;
    Error e = make_error(429, "insufficient_quota", "insufficient_quota",
                         "The budget '" + ref.budget_id + "' would be exceeded by this request " +
                             "(cap $" + std::to_string(static_cast<double>(ref.cap_micro) / 1e6) +
                             "); it resets at " + utc_time(ref.reset_unix_ms) + ".");
    if (ref.reset_unix_ms > now_ms && ref.reset_unix_ms < now_ms + 400LL * 86400 * 1000) {
      e.retry_after_s = static_cast<double>(ref.reset_unix_ms - now_ms) / 1000.0;
    }
    c.error_code = "budget:" + ref.budget_id;
    sh.metrics->budget_refusals.with({ref.budget_id}).inc();
    co_await reply_error(c, e);
    co_return false;
  }
  if (sh.ledger) {
    cost::LedgerReservation rec;
    rec.request_id = c.request_id;
    rec.key_id = c.key->cfg->name;
    rec.tenant_id = c.key->cfg->tenant;
    rec.model = c.route_model;
    rec.budgets = std::move(held_ids);
    rec.reserved_micro = held;
    rec.created_unix_ms = now_ms;
    bool queued = false;
    auto committed = co_await ledger_commit(*sh.ledger, std::move(rec), queued);
    if (!committed) {
      if (c.shared_budget.active()) {
        co_await sh.redis_budgets->release(c.shared_budget, SteadyClock::instance().now());
      } else {
        sh.budgets->release(c.budget);
      }
      Error e = make_error(503, "server_error", "ledger_unavailable",
                           "Spend cannot be recorded right now; the request was not sent.");
      e.retry_after_s = 1;
      co_await reply_error(c, e);
      co_return false;
    }
    c.reservation_logged = true;
  }
  co_return true;
}

// Phase 9 (part): the actual cost goes to the budgets and the ledger; unused reservation is
// released; crossed alert thresholds go to the webhook sender.
// The actual cost from the usage (no I/O).
void compute_cost(Ctx& c) {
  const auto tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
  if (c.price && tokens > 0) {
    c.cost_micro = cost::cost_micros(*c.price, c.usage.prompt_tokens, c.usage.completion_tokens,
                                     c.usage.cached_tokens);
  }
}

// Call after compute_cost, when budget_active(c).
asio::awaitable<void> settle_cost(Ctx& c) {
  const auto tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
  auto& sh = c.sh;
  const std::int64_t now_ms = SteadyClock::instance().unix_millis();
  cost::LedgerSettlement rec;
  rec.request_id = c.request_id;
  rec.prompt_tokens = c.usage.prompt_tokens;
  rec.completion_tokens = c.usage.completion_tokens;
  rec.settled_unix_ms = now_ms;
  // The budget counters move before the ledger row closes: a rebuild of lost Redis counters in
  // between still sees the row open and counts it as reserved (redis_budget.h).
  if (tokens == 0) {
    if (c.shared_budget.active()) {
      co_await sh.redis_budgets->release(c.shared_budget, SteadyClock::instance().now());
    } else {
      sh.budgets->release(c.budget);
    }
    rec.status = cost::LedgerStatus::kReleased;
  } else {
    cost::SettleOutcome out;
    if (c.shared_budget.active()) {
      out = co_await sh.redis_budgets->settle(c.shared_budget, c.cost_micro, now_ms,
                                              SteadyClock::instance().now());
    } else {
      out = sh.budgets->settle(c.budget, c.cost_micro, now_ms);
    }
    rec.status = cost::LedgerStatus::kSettled;
    rec.actual_micro = c.cost_micro;
    if (out.overshoot_micro > 0) {
      spdlog::warn("request {} cost {} micro-USD more than its reservation", c.request_id,
                   out.overshoot_micro);
    }
    if (sh.webhooks) {
      for (const auto& a : out.alerts) sh.webhooks->enqueue(a);
    }
  }
  if (sh.ledger && c.reservation_logged) {
    if (!sh.ledger->append_settlement(rec, [](const Result<Ok>&) {})) {
      spdlog::error(
          "ledger queue full: settlement of {} not recorded (the reservation stays "
          "counted until reconciled)",
          c.request_id);
    }
  }
}

limits::RequestScope limit_scope(const Ctx& c) {
  limits::RequestScope scope;
  scope.key_id = c.key->cfg->name;
  scope.tenant_id = c.key->cfg->tenant;
  scope.client_ip = c.client_ip;
  scope.endpoint = c.req.path();
  scope.model = c.llm.model;
  scope.plan = c.plan;
  scope.key_overrides =
      c.key->cfg->limit_overrides.empty() ? nullptr : &c.key->cfg->limit_overrides;
  return scope;
}

// The x-ratelimit-* headers of the verdict, and the shadow-limit log line.
void note_verdict(Ctx& c) {
  const auto& v = c.verdict;
  c.extra.clear();
  limits::append_rate_headers(c.extra.raw(), v);
  if (!v.shadow_rejections.empty()) {
    c.sh.shadow_rejections.fetch_add(1, std::memory_order_relaxed);
    spdlog::info("shadow limit would reject request {} (key {}): {}", c.request_id,
                 c.key->cfg->name, v.shadow_rejections.front());
  }
}

// Phase 4 without a coroutine, for in-process limits: true when the request passed (the
// common case); false when rate_limit() must run (a refusal, a wait or a shared store).
bool rate_limit_passed_locally(Ctx& c) {
  const std::int64_t output_cap =
      c.llm.endpoint == Endpoint::kEmbeddings
          ? 0
          : (c.llm.max_tokens > 0 ? c.llm.max_tokens : c.group->cfg->max_output_tokens);
  c.reserved_tokens = providers::estimate_prompt_tokens(c.llm) + output_cap;
  if (c.sh.limiter->remote()) return false;
  c.verdict = c.sh.limiter->check(limit_scope(c), c.reserved_tokens, limiter_now());
  if (!c.verdict.allowed || c.verdict.unavailable) return false;
  note_verdict(c);
  return true;
}

// Phase 4: every applicable limit is checked at once, all or nothing. A limit set to `wait`
// holds the request until it would pass (bounded by the limit's own retry time and the request
// deadline) instead of refusing it. `checked`: c.verdict already holds this request's first
// check (from rate_limit_passed_locally).
asio::awaitable<bool> rate_limit(Ctx& c, bool checked) {
  const auto& cfg = c.rt->config();
  const limits::RequestScope scope = limit_scope(c);
  const Nanos deadline = c.start + cfg.retry.deadline;
  for (;;) {
    const Nanos now = SteadyClock::instance().now();
    if (!checked) {
      c.verdict = co_await c.sh.limiter->check_async(scope, c.reserved_tokens, limiter_now());
    }
    checked = false;
    auto& v = c.verdict;
    if (v.unavailable) {
      // The shared limit store is unreachable and this limit is set to fail closed.
      Error e = make_error(503, "service_unavailable", "limits_unavailable",
                           "Rate limits cannot be checked right now (limit '" + v.limit_name +
                               "' fails closed). Retry later.");
      e.retry_after_s = std::max(1.0, to_seconds(v.retry_after_ns));
      c.error_code = "limits_unavailable";
      co_await reply_error(c, e);
      co_return false;
    }
    note_verdict(c);
    if (v.allowed) co_return true;
    const Nanos max_wait =
        cfg.admission.queue.max_wait[static_cast<std::size_t>(c.priority.priority)];
    if (v.wait_ok && v.retry_after_ns != limits::kNever && now + v.retry_after_ns < deadline &&
        v.retry_after_ns <= max_wait) {
      // The wait counts in the queue depth, and the overload policy may refuse it.
      auto waited = co_await unless_client_gone(
          c, c.sh.admission->wait_until(now + v.retry_after_ns, c.priority.priority));
      if (!waited.ok()) {
        auto e = admission::admission_error(waited.refusal, waited.retry_after_s);
        e.status = 429;
        e.type = "rate_limit_exceeded";
        co_await reply_error(c, e);
        co_return false;
      }
      c.queue_wait += v.retry_after_ns;
      continue;
    }
    Error e = make_error(429, "rate_limit_exceeded", "rate_limit_exceeded",
                         "Rate limit reached for limit '" + v.limit_name + "' of key '" +
                             c.key->cfg->name + "'. Retry after the time in Retry-After.");
    if (v.retry_after_ns != limits::kNever) {
      e.retry_after_s = std::max(0.001, to_seconds(v.retry_after_ns));
    } else {
      e.message = "The request is larger than the limit '" + v.limit_name + "' can ever admit.";
    }
    c.error_code = "rate_limited:" + v.limit_name;
    co_await reply_error(c, e);
    co_return false;
  }
}

// ---------------------------------------------------------------------------------------------
// The pipeline of one LLM request, in phase order.
asio::awaitable<void> handle_llm(Ctx& c, Endpoint endpoint) {
  c.sh.llm_arrivals.fetch_add(1, std::memory_order_relaxed);
  // 1 authenticate
  if (c.replay_key) {
    c.key = c.replay_key;
  } else {
    auto key = authenticate(*c.rt, c.req);
    if (!key) co_return co_await reply_error(c, key.error());
    c.key = *key;
  }
  c.w.watch_disconnect([&c] { on_client_gone(c); });
  c.plan = c.rt->config().plan(c.key->cfg->plan);
  {
    // The priority: the X-Priority header or the key's default, never above the key's maximum.
    const int def = c.key->cfg->default_priority >= 0 ? c.key->cfg->default_priority
                                                      : (c.plan ? c.plan->default_priority : 1);
    const int highest = c.key->cfg->max_priority >= 0 ? c.key->cfg->max_priority
                                                      : (c.plan ? c.plan->max_priority : 0);
    c.priority = admission::resolve_priority(c.req.header("x-priority"), def, highest);
  }

  auto parsed = providers::parse_request(endpoint, c.req.body);
  if (!parsed) co_return co_await reply_error(c, parsed.error());
  c.llm = std::move(parsed.value());

  // 2 resolve
  auto group = resolve(*c.rt, *c.key, c.llm.model);
  if (!group) co_return co_await reply_error(c, group.error());
  c.group = *group;
  c.route_model = c.llm.model;

  // 4 rate limit
  if (!rate_limit_passed_locally(c) && !co_await rate_limit(c, !c.sh.limiter->remote())) co_return;
  {
    static constexpr std::array<std::string_view, 3> kDigit = {"0", "1", "2"};
    c.extra.add("x-bellwether-priority", kDigit[static_cast<std::size_t>(c.priority.priority)]);
  }
  if (c.priority.lowered) c.extra.add("x-bellwether-priority-lowered", "true");

  // 5 cost guard
  if (cost_guard_needed(c) && !co_await cost_guard(c)) co_return;

  // 6 admission: a slot of the model group's concurrency limit, waiting in priority order
  if (auto now_permit = c.sh.admission->admit_now(c.group->cfg->name, c.priority.priority);
      now_permit.valid()) {
    c.permit = std::move(now_permit);  // a free slot and nobody waiting: no queue, no coroutine
  } else {
    const Nanos t0 = SteadyClock::instance().now();
    auto admitted = co_await unless_client_gone(
        c, c.sh.admission->acquire(c.group->cfg->name, c.priority.priority));
    c.queue_wait += SteadyClock::instance().now() - t0;
    if (!admitted.ok()) {
      c.error_code = "admission";
      const auto pr = kPriorityLabel[static_cast<std::size_t>(c.priority.priority)];
      if (admitted.refusal == admission::Refusal::kTimedOut) {
        c.sh.metrics->queue_timeouts.with({pr}).inc();
      } else if (admitted.refusal != admission::Refusal::kCancelled) {
        c.sh.metrics->shed.with({pr, admission::admission_error(admitted.refusal, 0).code}).inc();
      }
      co_return co_await reply_error(
          c, admission::admission_error(admitted.refusal, admitted.retry_after_s));
    }
    c.permit = std::move(admitted.permit);
  }

  // 7 forward and 8 respond
  co_await forward(c);
  c.permit.complete(c.upstream_latency, c.upstream_status);
}

// Runs blocking work (SQLite) on the blocking pool and resumes on the caller's worker.
template <class F>
auto run_blocking(Shared& sh, F f) -> asio::awaitable<decltype(f())> {
  auto home = co_await asio::this_coro::executor;
  co_await asio::post(sh.blocking->get_executor(), asio::use_awaitable);
  auto r = f();
  co_await asio::post(home, asio::use_awaitable);
  co_return r;
}

// A batch (P2) request that failed after every retry and fallback is kept for a later replay.
bool dead_letter_needed(const Ctx& c) {
  return c.forward_failed && !c.replay_key && c.sh.dead_letters && c.priority.priority == 2 &&
         !c.cancelled;
}

// Call when dead_letter_needed(c).
asio::awaitable<void> dead_letter(Ctx& c) {
  routing::NewDeadLetter e;
  e.created_unix_ms = SteadyClock::instance().unix_millis();
  e.key_id = c.key->cfg->name;
  e.model = c.llm.model;
  e.endpoint = std::string(c.req.path());
  e.body = c.req.body;
  e.error = c.last_failure.empty() ? c.error_code : c.last_failure;
  e.attempts = static_cast<int>(c.attempts);
  auto r = co_await run_blocking(c.sh, [&] { return c.sh.dead_letters->add(e); });
  if (!r) spdlog::error("dead-letter queue: {}", r.error().message);
}

// Phase 9 (part): token reservations are corrected to real usage, also after errors.
bool settle_limits_needed(const Ctx& c) {
  return !c.verdict.reservation.token_limits.empty() && !c.verdict.reservation.settled;
}

// Settles in-process limits without a coroutine; returns false if the limiter is remote.
bool settle_limits_local(Ctx& c) {
  if (c.sh.limiter->remote()) return false;
  c.sh.limiter->settle(c.verdict.reservation, c.usage.prompt_tokens + c.usage.completion_tokens,
                       limiter_now());
  return true;
}

// Call when settle_limits_needed(c) and the limiter is remote (in-process: settle_limits_local).
asio::awaitable<void> settle_limits(Ctx& c) {
  std::int64_t actual = c.usage.prompt_tokens + c.usage.completion_tokens;
  co_await c.sh.limiter->settle_async(c.verdict.reservation, actual, limiter_now());
}

// Phase 9: token reservations and budgets settled to the real usage. Only the parts that apply
// are awaited (each is a coroutine frame).
asio::awaitable<void> settle(Ctx& c) {
  if (settle_limits_needed(c)) co_await settle_limits(c);
  compute_cost(c);
  if (budget_active(c)) co_await settle_cost(c);
}

asio::awaitable<void> send_json(Ctx& c, int status, std::string body) {
  auto r = Response::json(status, std::move(body));
  r.headers.add("x-request-id", c.request_id);
  c.status = status;
  c.bytes_out += r.body.size();
  co_await c.w.send(std::move(r));
}

struct Route {
  std::string_view path;
  std::string_view method;
};
constexpr std::array<Route, 8> kRoutes = {{{"/v1/chat/completions", "POST"},
                                           {"/v1/completions", "POST"},
                                           {"/v1/embeddings", "POST"},
                                           {"/v1/models", "GET"},
                                           {"/healthz", "GET"},
                                           {"/readyz", "GET"},
                                           {"/v1/metrics/queue", "GET"},
                                           {"/metrics", "GET"}}};

std::string dead_letter_json(const routing::DeadLetter& d, bool with_body) {
  JsonWriter j;
  j.begin_object()
      .key("id")
      .value(d.id)
      .key("created_unix_ms")
      .value(d.created_unix_ms)
      .key("key_id")
      .value(d.key_id)
      .key("model")
      .value(d.model)
      .key("endpoint")
      .value(d.endpoint)
      .key("error")
      .value(d.error)
      .key("attempts")
      .value(static_cast<std::int64_t>(d.attempts))
      .key("replayed_unix_ms");
  if (d.replayed_unix_ms) {
    j.value(*d.replayed_unix_ms);
  } else {
    j.null();
  }
  if (with_body) j.key("body").value(d.body);
  j.end_object();
  return j.take();
}

// The admin API (master key only): status, breakers, dead letters.
asio::awaitable<void> handle_admin(Ctx& c) {
  auto& sh = c.sh;
  const auto path = c.req.path();
  const auto method = c.req.method;
  if (!admin_authorized(*c.rt, c.req)) {
    // A page of the console may use the admin API with its session (and CSRF token).
    if (auto s = console_admin_auth(sh, *c.rt, c.req); !s) {
      co_return co_await reply_error(c, s.error());
    }
  }
  auto not_allowed = [&](const char* allow) -> asio::awaitable<void> {
    auto r = error_response(c, make_error(405, "invalid_request_error", "method_not_allowed",
                                          "Method not allowed on " + std::string(path) + "."));
    r.headers.add("allow", allow);
    c.status = 405;
    co_await c.w.send(std::move(r));
  };
  if (path == "/admin/status") {
    if (method != "GET") co_return co_await not_allowed("GET");
    JsonWriter j;
    j.begin_object()
        .key("config")
        .value(c.rt->config().source)
        .key("requests")
        .value(sh.requests.load())
        .key("model_groups")
        .value(static_cast<std::int64_t>(c.rt->config().model_groups.size()))
        .key("keys")
        .value(static_cast<std::int64_t>(c.rt->config().keys.size()))
        .key("shadow_rejections")
        .value(sh.shadow_rejections.load())
        .end_object();
    co_return co_await send_json(c, 200, j.take());
  }
  if (path == "/admin/breakers") {
    if (method != "GET") co_return co_await not_allowed("GET");
    co_return co_await send_json(
        c, 200, routing::status_json(sh.router.status(SteadyClock::instance().now())));
  }
  if (path == "/admin/keys" || path.starts_with("/admin/keys/") || path == "/admin/spend" ||
      path == "/admin/budgets") {
    auto resp = co_await run_blocking(sh, [&] {
      return handle_key_admin(sh, c.rt->config(), method, path, c.req.target, c.req.body);
    });
    resp.headers.add("x-request-id", c.request_id);
    c.status = resp.status;
    c.bytes_out += resp.body.size();
    co_await c.w.send(std::move(resp));
    co_return;
  }
  if (path == "/admin/dead-letters" || path.starts_with("/admin/dead-letters/")) {
    if (!sh.dead_letters) {
      co_return co_await reply_error(c, make_error(404, "invalid_request_error", "dlq_disabled",
                                                   "The dead-letter queue is not configured."));
    }
    auto& dlq = *sh.dead_letters;
    if (path == "/admin/dead-letters") {
      if (method != "GET") co_return co_await not_allowed("GET");
      const auto after = http::query_int(c.req.target, "after", 0);
      const int limit = static_cast<int>(
          std::clamp<std::int64_t>(http::query_int(c.req.target, "limit", 100), 1, 1000));
      auto list = co_await run_blocking(sh, [&] { return dlq.list(after, limit, false); });
      if (!list) co_return co_await reply_error(c, list.error());
      std::string body = "{\"object\":\"list\",\"data\":[";
      for (std::size_t i = 0; i < list->size(); ++i) {
        if (i) body += ",";
        body += dead_letter_json((*list)[i], false);
      }
      body += "],\"size\":" + std::to_string(dlq.size()) +
              ",\"added_total\":" + std::to_string(dlq.added_total()) +
              ",\"dropped_total\":" + std::to_string(dlq.dropped_total()) + "}";
      co_return co_await send_json(c, 200, std::move(body));
    }
    auto rest = path.substr(std::string_view("/admin/dead-letters/").size());
    const bool replay = rest.ends_with("/replay");
    if (replay) rest.remove_suffix(7);
    const std::int64_t id = std::atoll(std::string(rest).c_str());
    if (id <= 0) {
      co_return co_await reply_error(
          c, make_error(404, "invalid_request_error", "not_found", "No such dead letter."));
    }
    if (replay) {
      if (method != "POST") co_return co_await not_allowed("POST");
      auto entry = co_await run_blocking(sh, [&] { return dlq.get(id); });
      if (!entry) co_return co_await reply_error(c, entry.error());
      if (!entry->has_value()) {
        co_return co_await reply_error(
            c, make_error(404, "invalid_request_error", "not_found", "No such dead letter."));
      }
      const auto& d = **entry;
      const KeyInfo* key = c.rt->key_by_name(d.key_id);
      if (!key) {
        co_return co_await reply_error(
            c, make_error(409, "invalid_request_error", "key_gone",
                          "The key '" + d.key_id + "' of this entry no longer exists."));
      }
      // The replay goes through the whole pipeline again (limits and budgets included), as
      // the original key, and its answer is the admin's answer.
      Request replay_req;
      replay_req.method = "POST";
      replay_req.target = d.endpoint;
      replay_req.body = d.body;
      replay_req.peer_ip = c.req.peer_ip;
      replay_req.headers.emplace_back("x-priority", "2");
      Ctx rc(sh, c.rt, replay_req, c.w);
      rc.start = SteadyClock::instance().now();
      rc.request_id = c.request_id;
      rc.client_ip = c.client_ip;
      rc.replay_key = key;
      const Endpoint ep = d.endpoint == "/v1/completions"  ? Endpoint::kCompletions
                          : d.endpoint == "/v1/embeddings" ? Endpoint::kEmbeddings
                                                           : Endpoint::kChat;
      co_await handle_llm(rc, ep);
      co_await settle(rc);
      rc.permit.release();
      write_access_log(rc);
      c.status = rc.status;
      if (rc.status >= 200 && rc.status < 300) {
        auto now_ms = SteadyClock::instance().unix_millis();
        co_await run_blocking(sh, [&] { return dlq.mark_replayed(id, now_ms); });
      }
      co_return;
    }
    if (method == "GET") {
      auto entry = co_await run_blocking(sh, [&] { return dlq.get(id); });
      if (!entry) co_return co_await reply_error(c, entry.error());
      if (!entry->has_value()) {
        co_return co_await reply_error(
            c, make_error(404, "invalid_request_error", "not_found", "No such dead letter."));
      }
      co_return co_await send_json(c, 200, dead_letter_json(**entry, true));
    }
    if (method == "DELETE") {
      auto removed = co_await run_blocking(sh, [&] { return dlq.remove(id); });
      if (!removed) co_return co_await reply_error(c, removed.error());
      if (!*removed) {
        co_return co_await reply_error(
            c, make_error(404, "invalid_request_error", "not_found", "No such dead letter."));
      }
      co_return co_await send_json(c, 200, "{\"deleted\":true,\"id\":" + std::to_string(id) + "}");
    }
    co_return co_await not_allowed("GET, DELETE");
  }
  co_await reply_error(c, make_error(404, "invalid_request_error", "unknown_url",
                                     "Unknown admin URL: " + std::string(path) + "."));
}

}  // namespace

asio::awaitable<void> handle_request(Shared& sh, Request& req, ResponseWriter& w,
                                     bool admin_listener) {
  Ctx c{sh, sh.runtime->load(), req, w};
  c.start = SteadyClock::instance().now();
  c.request_id = request_id_for(req);
  // Without trusted proxies the client is the peer; an IPv4 peer address from the socket is
  // already in canonical form (IPv6 ones are normalised by client_ip, e.g. v4-mapped).
  if (c.rt->config().trusted_cidrs.empty() && req.peer_ip.find(':') == std::string::npos) {
    c.client_ip = req.peer_ip;
  } else {
    c.client_ip =
        limits::client_ip(req.peer_ip, req.header("x-forwarded-for"), c.rt->config().trusted_cidrs);
  }
  sh.requests.fetch_add(1, std::memory_order_relaxed);
  const auto path = req.path();
  const auto& cfg = c.rt->config();
  const bool admin_here = admin_listener || cfg.admin_listen.empty();

  if (path == "/ui" || path.starts_with("/ui/")) {
    if (admin_here) {
      auto r = handle_console(sh, *c.rt, req);
      r.headers.add("x-request-id", c.request_id);
      c.status = r.status;
      c.bytes_out += r.body.size();
      co_await w.send(std::move(r));
    } else {
      co_await reply_error(c, make_error(404, "invalid_request_error", "unknown_url",
                                         "The console is on the admin listener (/ui/)."));
    }
    write_access_log(c);
    co_return;
  }
  if (path.starts_with("/admin/")) {
    if (admin_here) {
      co_await handle_admin(c);
    } else {
      co_await reply_error(c, make_error(404, "invalid_request_error", "unknown_url",
                                         "The admin API is on the admin listener."));
    }
    write_access_log(c);
    co_return;
  }
  const Route* route = nullptr;
  bool path_known = false;
  for (const auto& r : kRoutes) {
    if (r.path == path) {
      path_known = true;
      if (r.method == req.method) route = &r;
    }
  }
  if (admin_listener && path != "/healthz" && path != "/readyz")
    route = nullptr, path_known = false;

  if (!route) {
    if (path_known) {
      auto r = error_response(c, make_error(405, "invalid_request_error", "method_not_allowed",
                                            "Method " + std::string(req.method) +
                                                " is not allowed on " + std::string(path) + "."));
      for (const auto& rt : kRoutes) {
        if (rt.path == path) r.headers.add("allow", std::string(rt.method));
      }
      c.status = 405;
      co_await w.send(std::move(r));
    } else {
      co_await reply_error(c, make_error(404, "invalid_request_error", "unknown_url",
                                         "Unknown request URL: " + std::string(req.method) + " " +
                                             std::string(path) + "."));
    }
  } else if (path == "/healthz") {
    co_await send_json(c, 200, "{\"status\":\"ok\"}");
  } else if (path == "/readyz") {
    if (sh.draining.load()) {
      co_await send_json(c, 503, "{\"status\":\"draining\"}");
    } else if (sh.redis_budgets && sh.redis_budgets->degraded()) {
      // Budgets run on the local share (cap / replicas): still serving, never overspending.
      co_await send_json(c, 200,
                         "{\"status\":\"degraded\",\"reason\":\"redis unreachable: budgets on "
                         "local share\"}");
    } else if (sh.limiter->degraded()) {
      // Still ready: every replica would be degraded at once, and dropping them all would turn
      // a Redis outage into a full outage. Limits follow their failure policy meanwhile.
      co_await send_json(c, 200, "{\"status\":\"degraded\",\"reason\":\"redis unreachable\"}");
    } else {
      co_await send_json(c, 200, "{\"status\":\"ready\"}");
    }
  } else if (path == "/v1/models") {
    auto key = authenticate(*c.rt, req);
    if (!key) {
      co_await reply_error(c, key.error());
    } else {
      co_await send_json(c, 200, c.rt->models_json());
    }
  } else if (path == "/v1/metrics/queue") {
    // Client keys may read it when configured so; the admin key always may.
    bool allowed = admin_authorized(*c.rt, req);
    if (!allowed && cfg.queue_metrics_public) allowed = authenticate(*c.rt, req).ok();
    if (!allowed) {
      co_await reply_error(c, make_error(401, "invalid_request_error", "invalid_api_key",
                                         "Reading queue metrics needs an API key."));
    } else {
      // The admission queue's figures plus the scaler's recommendation.
      std::string body = sh.admission->metrics_json();
      if (sh.scaler && !body.empty() && body.back() == '}') {
        auto rec = sh.scaler->last();
        body.pop_back();
        body += ",\"recommended_replicas\":" + std::to_string(rec.recommended_replicas) +
                ",\"scaling\":" + telemetry::to_json(rec) + "}";
      }
      co_await send_json(c, 200, std::move(body));
    }
  } else if (path == "/metrics") {
    auto r = Response();
    r.status = 200;
    r.headers.add("content-type", std::string(telemetry::Registry::kContentType));
    r.body = render_metrics(sh);
    c.status = 200;
    c.bytes_out += r.body.size();
    co_await w.send(std::move(r));
  } else if (path == "/v1/chat/completions") {
    co_await handle_llm(c, Endpoint::kChat);
  } else if (path == "/v1/completions") {
    co_await handle_llm(c, Endpoint::kCompletions);
  } else if (path == "/v1/embeddings") {
    co_await handle_llm(c, Endpoint::kEmbeddings);
  } else {
    co_await reply_error(c, make_error(404, "invalid_request_error", "unknown_url",
                                       "Not available yet: " + std::string(path)));
  }
  // 9 settle: always runs, also after errors and disconnects.
  // settle() inlined: on the hot path usually nothing needs awaiting, and every awaited
  // coroutine costs a frame.
  if (settle_limits_needed(c) && !settle_limits_local(c)) co_await settle_limits(c);
  compute_cost(c);
  if (budget_active(c)) co_await settle_cost(c);
  c.permit.release();
  if (dead_letter_needed(c)) co_await dead_letter(c);
  write_access_log(c);
}

std::vector<std::string> budget_ids_for(const config::Config& cfg, const config::KeyConfig& key) {
  std::vector<std::string> ids;
  for (const auto& b : cfg.global_budgets) ids.push_back(cost::global_budget_id(b.period));
  if (!key.tenant.empty()) {
    for (const auto& t : cfg.tenants) {
      if (t.name != key.tenant) continue;
      for (const auto& b : t.budgets) ids.push_back(cost::tenant_budget_id(t.name, b.period));
    }
  }
  for (const auto& b : key.budgets) ids.push_back(cost::key_budget_id(key.name, b.period));
  return ids;
}

void declare_budgets(Shared& sh, const config::Config& cfg,
                     const std::vector<config::KeyConfig>& stored_keys) {
  if (!sh.budgets) return;
  auto declare = [&](const std::string& id, const cost::KeyBudget& b) {
    if (!sh.budgets->upsert_budget(cost::BudgetSpec{id, b.cap_micro, b.period})) {
      spdlog::error("budget {} cannot change its period; keeping the old one", id);
    }
  };
  for (const auto& b : cfg.global_budgets) declare(cost::global_budget_id(b.period), b);
  for (const auto& t : cfg.tenants) {
    for (const auto& b : t.budgets) declare(cost::tenant_budget_id(t.name, b.period), b);
  }
  for (const auto* keys : {&cfg.keys, &stored_keys}) {
    for (const auto& k : *keys) {
      for (const auto& b : k.budgets) declare(cost::key_budget_id(k.name, b.period), b);
    }
  }
}

std::string render_metrics(Shared& sh) {
  auto& m = *sh.metrics;
  const Nanos now = SteadyClock::instance().now();
  if (sh.admission) {
    auto snap = sh.admission->snapshot();
    for (std::size_t p = 0; p < 3; ++p) {
      m.queue_depth.with({kPriorityLabel[p]}).set(static_cast<double>(snap.depth[p]));
    }
    m.in_flight.get().set(static_cast<double>(sh.admission->in_flight()));
  }
  for (const auto& d : sh.router.status(now)) {
    const double v =
        d.state == routing::BreakerState::open        ? telemetry::GatewayMetrics::kBreakerOpen
        : d.state == routing::BreakerState::half_open ? telemetry::GatewayMetrics::kBreakerHalfOpen
                                                      : telemetry::GatewayMetrics::kBreakerClosed;
    m.breaker_state.with({d.id}).set(v);
  }
  if (sh.dead_letters) {
    // Scrapes may run on two workers at once; the read-then-add below must not interleave.
    static std::mutex dlq_mu;
    std::lock_guard lock(dlq_mu);
    auto& added = m.dlq_entries.get();
    auto& dropped = m.dlq_dropped.get();
    // Counters only move forward: add the difference since the last scrape.
    if (sh.dead_letters->added_total() > added.units()) {
      added.add(sh.dead_letters->added_total() - added.units());
    }
    if (sh.dead_letters->dropped_total() > dropped.units()) {
      dropped.add(sh.dead_letters->dropped_total() - dropped.units());
    }
  }
  if (m.budget_utilization && sh.redis_budgets) {
    for (const auto& [id, u] :
         sh.redis_budgets->utilisation(SteadyClock::instance().unix_millis())) {
      m.budget_utilization->with({id}).set(u);
    }
  } else if (m.budget_utilization && sh.budgets) {
    for (const auto& b : sh.budgets->snapshots(SteadyClock::instance().unix_millis())) {
      m.budget_utilization->with({b.id}).set(b.utilisation);
    }
  }
  if (sh.scaler) m.replicas_recommended.get().set(sh.scaler->last().recommended_replicas);
  return sh.registry.expose();
}

Result<Ok> refresh_stored_keys(Shared& sh) {
  auto current = sh.runtime->load();
  std::vector<config::KeyConfig> stored;
  if (sh.key_store) {
    auto list = sh.key_store->list();
    if (!list) return list.error();
    for (const auto& r : *list) {
      if (!r.revoked) stored.push_back(key_config_from_record(r, current->config()));
    }
  }
  declare_budgets(sh, current->config(), stored);
  sh.runtime->store(std::make_shared<const Runtime>(current->config_ptr(), current->sim_port(),
                                                    std::move(stored)));
  return Ok{};
}

Result<Ok> apply_config(Shared& sh, const config::Config& cfg) {
  routing::RouterConfig rc;
  rc.breaker = cfg.breaker;
  rc.retry = cfg.retry;
  rc.ewma_tau = cfg.ewma_tau;
  for (const auto& g : cfg.model_groups) {
    routing::ModelGroupConfig rg;
    rg.name = g.name;
    rg.balancer =
        routing::parse_balancer(g.balancer).value_or(routing::BalancerKind::p2c_peak_ewma);
    rg.fallbacks = g.fallbacks;
    rg.context_fallback = g.context_fallback;
    for (const auto& d : g.deployments) {
      routing::DeploymentConfig rd;
      rd.id = d.id;
      rd.provider = d.provider;
      rd.model = d.model;
      rd.weight = static_cast<std::uint32_t>(d.weight);
      rd.rpm = d.rpm;
      rd.tpm = d.tpm;
      rg.deployments.push_back(std::move(rd));
    }
    rc.groups.push_back(std::move(rg));
  }
  if (auto r = sh.router.reload(std::move(rc)); !r) return r;
  if (!sh.admission) sh.admission = std::make_unique<admission::AdmissionController>(cfg.admission);
  for (const auto& g : cfg.model_groups) sh.admission->configure_group(g.name, g.concurrency);
  auto lc = std::make_shared<limits::LimiterConfig>();
  lc->limits = cfg.limits;
  if (!sh.limiter) {
    sh.limit_store = std::make_shared<limits::MemoryLimitStore>();
    sh.limiter = std::make_unique<limits::Limiter>(lc, sh.limit_store);
  } else {
    sh.limiter->reload(lc);
  }
  return Ok{};
}

}  // namespace bw::gateway
