// Phase 5: rate limits. Every applicable limit is checked at once, all or nothing. A limit set
// to `wait` holds the request until it would pass (bounded by the limit's own retry time, the
// priority's max wait and the request deadline) instead of refusing it. The token reservation
// taken here is corrected to the real usage by finish (settle).
#include <spdlog/spdlog.h>

#include "gateway/phases.h"

namespace bw::gateway {

namespace {

limits::RequestScope limit_scope(const Ctx& c) {
  limits::RequestScope scope;
  scope.key_id = c.key->cfg->name;
  scope.tenant_id = c.key->cfg->tenant;
  scope.client_ip = c.client_ip;
  scope.target = c.req.target;  // the endpoint is cut from it only if a limit needs it
  scope.model = c.llm.model;
  scope.plan = c.plan;
  scope.key_overrides =
      c.key->cfg->limit_overrides.empty() ? nullptr : &c.key->cfg->limit_overrides;
  scope.prepared = c.key->limits.get();
  return scope;
}

// The x-ratelimit-* lines take at most ~300 bytes (append_rate_headers).
constexpr std::size_t kExtraRoom = 480;

// The x-ratelimit-* headers of the verdict, and the shadow-limit log line.
void note_verdict(Ctx& c) {
  const auto& v = c.verdict.get();
  c.extra.clear();
  // Room for the rate-limit lines and the gateway's own headers after them, from the thread's
  // buffer stash (the list gives it back when it goes): neither append allocates.
  c.extra.reserve(kExtraRoom);
  limits::append_rate_headers(c.extra.raw(), v);
  if (!v.shadow_rejections.empty()) {
    c.sh.shadow_rejections.fetch_add(1, std::memory_order_relaxed);
    spdlog::info("shadow limit would reject request {} (key {}): {}", c.request_id,
                 c.key->cfg->name, v.shadow_rejections.front());
  }
}

}  // namespace

// In-process limits decide without a coroutine: passed (the common case) is final; a refusal,
// a wait or a shared store goes to run().
std::optional<Verdict> phase_rate_limit::try_now(Ctx& c) {
  const std::int64_t output_cap =
      c.llm.endpoint == providers::Endpoint::kEmbeddings
          ? 0
          : (c.llm.max_tokens > 0 ? c.llm.max_tokens : c.group->cfg->max_output_tokens);
  // A cache hit costs the provider nothing: it counts against request limits only.
  c.reserved_tokens = phase_cache::hit(c)
                          ? 0
                          : providers::estimate_prompt_tokens(c.llm) +
                                providers::completion_reservation(c.llm, output_cap);
  if (c.sh.limiter->remote()) return std::nullopt;
  // The verdict is built in c.verdict; a request that no limit applies to leaves it unused.
  if (!c.sh.limiter->check(limit_scope(c), c.reserved_tokens, c.sh.limiter_now(), c.verdict)) {
    c.extra.clear();
    return Ok{};
  }
  const auto& v = c.verdict.get();
  if (v.allowed && !v.unavailable && !v.requests.present && !v.tokens.present &&
      v.shadow_rejections.empty() && v.reservation.token_limits.empty()) {
    c.extra.clear();  // nothing to settle, no header
    return Ok{};
  }
  if (!v.allowed || v.unavailable) return std::nullopt;
  note_verdict(c);
  return Ok{};
}

namespace {

// Time between two requests admitted by the enforced limit `name` (0 if unknown).
Nanos limit_interval(const Ctx& c, std::string_view name) {
  auto find = [&](const std::vector<limits::LimitSpec>* specs) -> const limits::LimitSpec* {
    if (specs == nullptr) return nullptr;
    for (const auto& s : *specs) {
      if (s.name == name && s.unit == limits::Unit::kRequests) return &s;
    }
    return nullptr;
  };
  const limits::LimitSpec* s =
      find(c.key->cfg->limit_overrides.empty() ? nullptr : &c.key->cfg->limit_overrides);
  if (s == nullptr && c.plan != nullptr) s = find(&c.plan->limits);
  if (s == nullptr) s = find(&c.rt->config().limits);
  if (s == nullptr) return 0;
  const auto p = s->params();
  return p.period / std::max<std::int64_t>(1, p.rate);
}

}  // namespace

boost::asio::awaitable<Verdict> phase_rate_limit::run(Ctx& c) {
  const auto& cfg = c.rt->config();
  const limits::RequestScope scope = limit_scope(c);
  const Nanos deadline = c.start + cfg.retry.deadline;
  const Nanos entered = c.now();
  const int prio = c.priority.priority;
  // A key-limit wait is bounded by the priority's max_wait (and the request deadline).
  const Nanos max_wait =
      std::min(cfg.admission.queue.max_wait[static_cast<std::size_t>(prio)], deadline - entered);
  // The key's turn at its limit: its waiters pass one at a time, in priority order; another
  // key has its own turn and is never delayed by this one's burst.
  admission::Permit turn;
  bool turn_taken = false;
  const std::string turn_group = "key:" + c.key->cfg->name;
  // With in-process limits, try_now already holds this request's first check in c.verdict.
  bool checked = !c.sh.limiter->remote();
  for (;;) {
    const Nanos now = c.now();
    if (!checked) {
      c.verdict.mut() =
          co_await c.sh.limiter->check_async(scope, c.reserved_tokens, c.sh.limiter_now());
    }
    checked = false;
    const auto& v = c.verdict.get();
    if (v.unavailable) {
      // The shared limit store is unreachable and this limit is set to fail closed.
      Error e = errors::make(errors::kLimitsUnavailable,
                             "Rate limits cannot be checked right now (limit '" + v.limit_name +
                                 "' fails closed). Retry later.");
      e.retry_after_s = std::max(1.0, to_seconds(v.retry_after_ns));
      co_return e;
    }
    note_verdict(c);
    if (v.allowed) {
      c.queue_wait += now - entered;
      co_return Ok{};
    }
    const Nanos left = max_wait - (now - entered);
    Nanos predicted = v.retry_after_ns;
    if (v.wait_ok && v.retry_after_ns != limits::kNever && !turn_taken) {
      // Those ahead in this key's turn pass first, one interval of the limit each.
      predicted += static_cast<Nanos>(c.sh.admission->turn_ahead(turn_group, prio)) *
                   limit_interval(c, v.limit_name);
      if (predicted <= left) {
        c.wait_reason = admission::WaitReason::kKeyLimit;
        const auto span = tracing::start(c, "bellwether.rate_limit");
        auto t = co_await unless_client_gone(
            c, c.sh.admission->acquire_turn(turn_group, prio, std::max<Nanos>(1, left)));
        tracing::end(c, span, "key_turn");
        turn_taken = true;
        if (t.ok()) {
          turn = std::move(t.permit);  // empty when no turn is available: wait without one
          continue;                    // check again: it is this request's turn now
        }
        if (t.refusal == admission::Refusal::kCancelled) {
          co_return admission::admission_error(t.refusal, 0);
        }
        predicted = max_wait + limit_interval(c, v.limit_name);  // waited its whole bound
      }
    } else if (v.wait_ok && v.retry_after_ns != limits::kNever &&
               v.retry_after_ns <= left + (turn_taken ? limit_interval(c, v.limit_name) : 0)) {
      // This request's turn: wait for the limit itself. The wait counts in the queue depth, and
      // the overload policy may refuse it. A request that was let wait and then got its turn may
      // overrun its bound by up to one interval of the limit (the turns ahead of it took a little
      // longer than predicted): refusing it then would throw away the whole wait.
      const auto span = tracing::start(c, "bellwether.rate_limit");
      auto waited =
          co_await unless_client_gone(c, c.sh.admission->wait_until(now + v.retry_after_ns, prio));
      tracing::end(c, span, "key_limit");
      if (!waited.ok()) {
        auto e = admission::admission_error(waited.refusal, waited.retry_after_s);
        e.status = 429;
        e.type = "rate_limit_exceeded";
        co_return e;
      }
      continue;
    }
    c.queue_wait += now - entered;
    Error e = errors::make(errors::kRateLimited, "Rate limit reached for limit '" + v.limit_name +
                                                     "' of key '" + c.key->cfg->name +
                                                     "'. Retry after the time in Retry-After.");
    if (v.retry_after_ns != limits::kNever) {
      e.retry_after_s = std::max(0.001, to_seconds(predicted));
      if (v.wait_ok) c.sh.admission->note_refusal(admission::WaitReason::kKeyLimit, prio);
    } else {
      e.message = "The request is larger than the limit '" + v.limit_name + "' can ever admit.";
    }
    c.outcome.set(OutcomeKind::kRateLimited, v.limit_name);
    co_return e;
  }
}

bool phase_rate_limit::settle_now(Ctx& c, Nanos now) {
  const auto& r = c.verdict->reservation;
  if (r.token_limits.empty() || r.settled) return true;
  if (c.sh.limiter->remote()) return false;
  c.sh.limiter->settle(c.verdict.mut().reservation,
                       c.usage.prompt_tokens + c.usage.completion_tokens, c.sh.limiter_time(now));
  return true;
}

boost::asio::awaitable<void> phase_rate_limit::settle(Ctx& c) {
  const std::int64_t actual = c.usage.prompt_tokens + c.usage.completion_tokens;
  co_await c.sh.limiter->settle_async(c.verdict.mut().reservation, actual, c.sh.limiter_now());
}

}  // namespace bw::gateway
