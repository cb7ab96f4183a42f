// The entry point of every request: the request's context, the route table, the fixed
// endpoints (health, readiness, models, metrics, queue metrics), the admin API's table and the
// LLM pipeline; then finish, for every request, whatever ended it.
#include "gateway/routes.h"

#include <algorithm>
#include <cstddef>
#include <exception>
#include <memory>
#include <new>
#include <random>
#include <vector>

#include "api/messages.h"
#include "common/buffer_stash.h"
#include "common/same_text.h"
#include "gateway/admin.h"
#include "gateway/phases.h"
#include "gateway/pipeline.h"
#include "limits/client_ip.h"

namespace bw::gateway {

namespace asio = boost::asio;
using http::Request;
using http::ResponseWriter;
using providers::Endpoint;

std::string_view endpoint_label(std::string_view path) {
  for (const auto& r : kRoutes) {
    if (path == r.path) return r.path;
  }
  if (path == "/admin" || path.starts_with("/admin/")) return "/admin";
  return "other";
}

namespace {

// "req_" + 24 hex digits: the time in milliseconds (11 digits, most significant first) and 52
// random bits. Ids that sort by time make the ledger's primary key grow at one end, so a group
// commit writes a few B-tree pages instead of one random page per row.
void new_request_id(std::int64_t unix_ms, std::string& id) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  id.assign(28, '0');
  id[0] = 'r';
  id[1] = 'e';
  id[2] = 'q';
  id[3] = '_';
  const auto t = static_cast<std::uint64_t>(unix_ms);
  for (int i = 0; i < 11; ++i) id[4 + i] = kHex[(t >> ((10 - i) * 4)) & 0xf];
  const std::uint64_t r = rng();
  for (int i = 0; i < 13; ++i) id[15 + i] = kHex[(r >> (i * 4)) & 0xf];
}

// A client-supplied x-request-id is kept if it is short and printable; else one is generated.
void request_id_for(const Request& req, std::int64_t unix_ms, std::string& out) {
  auto id = req.header("x-request-id");
  if (!id.empty() && id.size() <= 128 &&
      std::all_of(id.begin(), id.end(), [](char c) { return c > 0x20 && c < 0x7f; })) {
    out.assign(id);
    return;
  }
  new_request_id(unix_ms, out);
}

asio::awaitable<void> readyz(Ctx& c) {
  auto& sh = c.sh;
  if (sh.draining.load()) co_return co_await send_json(c, 503, "{\"status\":\"draining\"}");
  if (sh.budget_store && sh.budget_store->degraded()) {
    // Budgets run on the local share (cap / replicas): still serving, never overspending.
    co_return co_await send_json(
        c, 200,
        "{\"status\":\"degraded\",\"reason\":\"redis unreachable: budgets on local share\"}");
  }
  if (sh.limiter->degraded()) {
    // Still ready: every replica would be degraded at once, and dropping them all would turn
    // a Redis outage into a full outage. Limits follow their failure policy meanwhile.
    co_return co_await send_json(c, 200,
                                 "{\"status\":\"degraded\",\"reason\":\"redis unreachable\"}");
  }
  co_await send_json(c, 200, "{\"status\":\"ready\"}");
}

asio::awaitable<void> models(Ctx& c) {
  auto key = authenticate(*c.rt, c.req);
  if (!key) co_return co_await reply_error(c, key.error());
  co_await send_json(c, 200, c.rt->models_json());
}

// Client keys may read it when configured so; the admin key always may.
asio::awaitable<void> queue_metrics(Ctx& c) {
  bool allowed = admin_authorized(*c.rt, c.req);
  if (!allowed && c.rt->config().queue_metrics_public) allowed = authenticate(*c.rt, c.req).ok();
  if (!allowed) {
    co_return co_await reply_error(
        c, errors::make(errors::kInvalidApiKey, "Reading queue metrics needs an API key."));
  }
  // The admission queue's figures plus the scaling plan (scaling.h). Replica counts change the
  // learned capacity and a group's concurrency: taken from the admin key only.
  std::string body = queue_metrics_body(
      c.sh, admin_authorized(*c.rt, c.req) ? c.req.header("x-bellwether-replicas") : "");
  co_await send_json(c, 200, std::move(body));
}

asio::awaitable<void> metrics(Ctx& c) {
  http::Response r;
  r.status = 200;
  r.headers.add("content-type", std::string(telemetry::Registry::kContentType));
  r.body = render_metrics(c.sh);
  c.status = 200;
  c.bytes_out += r.body.size();
  co_await c.w.send(std::move(r));
}

// POST /v1/messages/count_tokens: the gateway's own estimate (the one its limits use); no
// provider is called. Fields the estimate cannot read (unknown ones, server tools) are treated
// as /v1/messages treats what a translated route cannot carry: named in
// x-bellwether-dropped-params, or the request refused with 400 under strict_params.
asio::awaitable<void> count_tokens(Ctx& c) {
  auto key = authenticate(*c.rt, c.req);
  if (!key) co_return co_await reply_error(c, key.error());
  auto r = api::decode_messages_request(c.req.body, false);
  if (!r) co_return co_await reply_error(c, r.error());
  auto& fields = r->unmapped;
  std::sort(fields.begin(), fields.end());
  fields.erase(std::unique(fields.begin(), fields.end()), fields.end());
  std::string ignored;
  for (const auto& f : fields) {
    if (!ignored.empty()) ignored += ", ";
    ignored += f;
  }
  const bool strict = r->strict_params || c.req.header("x-bellwether-strict-params") == "true";
  if (!ignored.empty() && strict) {
    co_return co_await reply_error(
        c, errors::make(errors::kUnsupportedParams,
                        "count_tokens cannot count: " + ignored + " (strict_params is set).",
                        fields.front()));
  }
  auto answer = http::Response::json(
      200, "{\"input_tokens\":" + std::to_string(api::count_input_tokens(*r)) + "}");
  if (!ignored.empty()) answer.headers.add("x-bellwether-dropped-params", ignored);
  co_await send_response(c, std::move(answer));
}

asio::awaitable<void> no_route(Ctx& c, bool path_known) {
  const auto path = c.req.path();
  if (!path_known) {
    co_return co_await reply_error(
        c, errors::make(errors::kUnknownUrl, "Unknown request URL: " + std::string(c.req.method) +
                                                 " " + std::string(path) + "."));
  }
  auto r = error_response(c, errors::make(errors::kMethodNotAllowed,
                                          "Method " + std::string(c.req.method) +
                                              " is not allowed on " + std::string(path) + "."));
  for (const auto& rt : kRoutes) {
    if (rt.path == path) r.headers.add("allow", std::string(rt.method));
  }
  c.status = 405;
  co_await c.w.send(std::move(r));
}

asio::awaitable<void> console(Ctx& c, bool admin_listener) {
  if (!admin_listener && !c.rt->config().admin_listen.empty()) {
    co_return co_await reply_error(
        c, errors::make(errors::kUnknownUrl, "The console is on the admin listener (/ui/)."));
  }
  auto r = handle_console(c.sh, *c.rt, c.req, c.client_ip);
  co_await send_response(c, std::move(r));
}

asio::awaitable<void> admin_elsewhere(Ctx& c) {
  co_await reply_error(
      c, errors::make(errors::kUnknownUrl, "The admin API is on the admin listener."));
}

// Everything a request can be, by path. Not a coroutine: it returns the awaitable of the
// handler, so a request costs no frame for routing (hence no temporaries passed by reference).
asio::awaitable<void> route(Ctx& c, bool admin_listener) {
  const auto path = c.req.path();
  // Nearly every request: a chat completion on the API listener, which the table below
  // routes to the same place.
  if (same_text(path, "/v1/chat/completions") && same_text(c.req.method, "POST") &&
      !admin_listener) {
    return run_llm(c, Endpoint::kChat);
  }
  const auto starts = [&path](std::string_view prefix) {
    return path.size() >= prefix.size() && same_text(path.substr(0, prefix.size()), prefix);
  };
  if (same_text(path, "/ui") || starts("/ui/")) return console(c, admin_listener);
  if (starts("/admin/")) {
    if (admin_listener || c.rt->config().admin_listen.empty()) {
      return admin_table().dispatch(c);
    }
    return admin_elsewhere(c);
  }
  const Route* found = nullptr;
  bool path_known = false;
  for (const auto& r : kRoutes) {
    if (!same_text(r.path, path)) continue;
    path_known = true;
    // HEAD is GET without a body (RFC 9110 9.3.2); the server drops the body of a HEAD answer.
    if (same_text(r.method, c.req.method) ||
        (same_text(c.req.method, "HEAD") && same_text(r.method, "GET"))) {
      found = &r;
    }
  }
  // The admin listener serves the admin API and the probes only.
  if (admin_listener && path != "/healthz" && path != "/readyz")
    found = nullptr, path_known = false;
  if (!found) return no_route(c, path_known);
  if (same_text(path, "/v1/chat/completions")) return run_llm(c, Endpoint::kChat);
  if (path == "/v1/responses") {
    c.inbound = api::Format::kResponses;
    return run_llm(c, Endpoint::kChat);
  }
  if (path == "/v1/messages") {
    c.inbound = api::Format::kMessages;
    return run_llm(c, Endpoint::kChat);
  }
  if (path == "/v1/messages/count_tokens") {
    c.inbound = api::Format::kMessages;
    return count_tokens(c);
  }
  if (path == "/v1/completions") return run_llm(c, Endpoint::kCompletions);
  if (path == "/v1/embeddings") return run_llm(c, Endpoint::kEmbeddings);
  if (path == "/healthz") return send_json(c, 200, "{\"status\":\"ok\"}");
  if (path == "/readyz") return readyz(c);
  if (path == "/v1/models") return models(c);
  if (path == "/v1/metrics/queue") return queue_metrics(c);
  if (path == "/metrics") return metrics(c);
  return no_route(c, false);
}

// A request's Ctx, outside its coroutine's frame. Ctx is about 2.5 KB: in the frame, it made
// handle_request's frame larger than Asio's recycling allocator keeps (1020 bytes), so every
// request paid an aligned malloc and free for it, and each such allocation also evicted one of
// the smaller frames the allocator had cached. Blocks come from a small per-thread free list.
class PooledCtx {
 public:
  PooledCtx(Shared& sh, std::shared_ptr<const Runtime> rt, Request& req, ResponseWriter& w) {
    auto block = acquire();
    ctx_ = new (block.get()) Ctx(sh, std::move(rt), req, w);
    block_ = block.release();
  }
  ~PooledCtx() {
    stash::give(ctx_->request_id);
    ctx_->~Ctx();
    release(block_);
  }
  PooledCtx(const PooledCtx&) = delete;
  PooledCtx& operator=(const PooledCtx&) = delete;
  Ctx& get() { return *ctx_; }

 private:
  struct alignas(Ctx) Block {
    std::byte bytes[sizeof(Ctx)];
  };
  // Blocks kept per thread: as many as requests were in flight at once, up to this bound. With
  // more than kept, every block given back past it was freed and the next request's came cold
  // from malloc (at 256 busy keep-alive connections, most requests).
  static constexpr std::size_t kKeep = 512;
  static std::vector<std::unique_ptr<Block>>& free_list() {
    thread_local std::vector<std::unique_ptr<Block>> blocks;
    return blocks;
  }
  static std::unique_ptr<Block> acquire() {
    auto& blocks = free_list();
    if (blocks.empty()) return std::make_unique<Block>();
    auto b = std::move(blocks.back());
    blocks.pop_back();
    return b;
  }
  static void release(Block* b) {
    std::unique_ptr<Block> owned(b);
    auto& blocks = free_list();
    if (blocks.size() < kKeep) blocks.push_back(std::move(owned));
  }

  Block* block_ = nullptr;
  Ctx* ctx_ = nullptr;
};

}  // namespace

asio::awaitable<void> handle_request(Shared& sh, Request& req, ResponseWriter& w,
                                     bool admin_listener) {
  PooledCtx pooled(sh, sh.runtime->load(), req, w);
  Ctx& c = pooled.get();
  // The turn's reading: the request arrived when the reactor's return began this turn, so a
  // reading taken earlier in it counts the time the request waited behind the turn's others.
  c.start = c.turn_now();
  c.request_id = stash::take(28);
  request_id_for(req, sh.clock.turn_unix_millis(), c.request_id);
  // Without trusted proxies the client is the peer; an IPv4 peer address from the socket is
  // already in canonical form (IPv6 ones are normalised by client_ip, e.g. v4-mapped).
  const auto& cfg = c.rt->config();
  if (cfg.trusted_cidrs.empty() && req.peer_ip.find(':') == std::string::npos) {
    c.client_ip = req.peer_ip;
  } else {
    c.client_ip = limits::client_ip(req.peer_ip, req.header("x-forwarded-for"), cfg.trusted_cidrs);
  }
  sh.requests.fetch_add(1, std::memory_order_relaxed);
  // finish runs whatever ended the request, also an exception (rethrown after it).
  std::exception_ptr failed;
  try {
    co_await route(c, admin_listener);
  } catch (...) {
    failed = std::current_exception();
  }
  if (!finish::try_now(c)) co_await finish::run(c);
  if (failed) std::rethrow_exception(failed);
}

namespace {

// A counter that mirrors a running total kept elsewhere moves up to it at a scrape: counters
// only move forward. Scrapes may run on two workers at once, so the caller holds a lock around
// the read-then-add.
void advance_to(telemetry::Counter& counter, std::uint64_t total) {
  if (total > counter.units()) counter.add(total - counter.units());
}

}  // namespace

std::string render_metrics(Shared& sh) {
  auto& m = *sh.metrics;
  const Nanos now = sh.clock.now();
  if (sh.admission) {
    auto snap = sh.admission->snapshot();
    for (std::size_t p = 0; p < 3; ++p) {
      m.queue_depth.with({admission::kPriorityLabels[p]}).set(static_cast<double>(snap.depth[p]));
    }
    m.in_flight.get().set(static_cast<double>(sh.admission->in_flight()));
    for (int r = 1; r < admission::kNumWaitReasons; ++r) {
      const auto reason = admission::kWaitReasonNames[static_cast<std::size_t>(r)];
      m.queue_waiting.with({reason}).set(static_cast<double>(snap.waiting_by_reason[r]));
      static std::mutex mu;  // see advance_to
      std::lock_guard lock(mu);
      for (std::size_t p = 0; p < 3; ++p) {
        advance_to(m.admission_waits.with({admission::kPriorityLabels[p], reason}),
                   snap.waits_by_reason[r][p]);
        advance_to(m.admission_refusals.with({admission::kPriorityLabels[p], reason}),
                   snap.refusals_by_reason[r][p]);
      }
    }
    for (const auto& d : snap.deployments) {
      const std::string_view id = d.deployment;
      m.deployment_limit.with({id, "requests", "configured"})
          .set(static_cast<double>(d.configured_rpm));
      m.deployment_limit.with({id, "tokens", "configured"})
          .set(static_cast<double>(d.configured_tpm));
      m.deployment_limit.with({id, "requests", "learned"})
          .set(d.learned_fresh ? static_cast<double>(d.effective_rpm) : 0);
      m.deployment_limit.with({id, "tokens", "learned"})
          .set(d.learned_fresh ? static_cast<double>(d.effective_tpm) : 0);
      m.deployment_limit.with({id, "requests", "in_force"})
          .set(static_cast<double>(d.effective_rpm));
      m.deployment_limit.with({id, "tokens", "in_force"}).set(static_cast<double>(d.effective_tpm));
      m.deployment_remaining.with({id, "requests"}).set(static_cast<double>(d.remaining_requests));
      m.deployment_remaining.with({id, "tokens"}).set(static_cast<double>(d.remaining_tokens));
      m.deployment_binding.with({id, "deployment_rpm"})
          .set(d.binding == admission::WaitReason::kDeploymentRpm ? 1 : 0);
      m.deployment_binding.with({id, "deployment_tpm"})
          .set(d.binding == admission::WaitReason::kDeploymentTpm ? 1 : 0);
    }
  }
  for (const auto& d : sh.router.status(now)) {
    const double v =
        d.state == routing::BreakerState::kOpen       ? telemetry::GatewayMetrics::kBreakerOpen
        : d.state == routing::BreakerState::kHalfOpen ? telemetry::GatewayMetrics::kBreakerHalfOpen
                                                      : telemetry::GatewayMetrics::kBreakerClosed;
    m.breaker_state.with({d.id}).set(v);
  }
  if (sh.dead_letters) {
    static std::mutex dlq_mu;  // see advance_to
    std::lock_guard lock(dlq_mu);
    advance_to(m.dlq_entries.get(), sh.dead_letters->added_total());
    advance_to(m.dlq_dropped.get(), sh.dead_letters->dropped_total());
  }
  if (sh.ledger) {
    const cost::LedgerStats st = sh.ledger->stats();
    static std::mutex ledger_mu;  // see advance_to
    std::lock_guard lock(ledger_mu);
    advance_to(m.ledger_records.with({"committed"}), st.records_committed);
    advance_to(m.ledger_records.with({"failed"}), st.records_failed);
    advance_to(m.ledger_commits.get(), st.commits);
    advance_to(m.ledger_queue_full.get(), st.queue_full);
    advance_to(m.ledger_journaled.get(), st.journaled);
    advance_to(m.ledger_journal_full.get(), st.journal_full);
    m.ledger_queue_depth.get().set(static_cast<double>(st.queue_depth));
  }
  if (sh.leases) {
    const cost::LeaseStats st = sh.leases->stats();
    static std::mutex lease_mu;  // see advance_to
    std::lock_guard lock(lease_mu);
    advance_to(m.budget_leases.with({"opened"}), st.opened);
    advance_to(m.budget_leases.with({"closed"}), st.closed);
    advance_to(m.budget_leases.with({"stuck"}), st.stuck);
    advance_to(m.budget_lease_covered.get(), st.covered);
    m.budget_leases_open.get().set(static_cast<double>(st.open_now));
  }
  if (m.budget_utilization && sh.budget_store) {
    for (const auto& [id, u] : sh.budget_store->utilisation(sh.clock.unix_millis())) {
      m.budget_utilization->with({id}).set(u);
    }
  }
  if (sh.scaling) export_scaling_metrics(sh.scaling->last(), m);
  return sh.registry.expose();
}

}  // namespace bw::gateway
