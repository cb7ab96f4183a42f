// The flow of one LLM request, in the phase order of DESIGN.md ("Life of a request"). Each
// phase lives in its own file and has the shape of phases.h: try_now() decides without a
// coroutine when it can, run() when it must wait. A phase that refuses returns an error, which
// is answered here; the later phases are skipped. finish (finish.cc) is not called here: the
// caller (handle_request, or a dead-letter replay) runs it for every request, whatever ended it.
#include "gateway/pipeline.h"

#include "gateway/phases.h"

namespace bw::gateway {

namespace asio = boost::asio;

namespace {
// gen_ai.operation.name of the OpenTelemetry GenAI conventions.
std::string_view operation_name(providers::Endpoint e) {
  switch (e) {
    case providers::Endpoint::kCompletions:
      return "text_completion";
    case providers::Endpoint::kEmbeddings:
      return "embeddings";
    default:
      return "chat";
  }
}

// Where the flow stands: the phase whose verdict it has or waits for (1 authenticate to
// 7 admission), or what is left to do once the phases before forward have decided.
enum class Stage : std::uint8_t {
  kAuth,
  kResolve,
  kCache,
  kRateLimit,
  kCost,
  kAdmission,
  kForward,  // every phase let the request through: 8 forward and 9 respond
  kReply,    // a phase refused: its error is answered
  kServe,    // a cache hit, answered from the cache
};

// Whether a phase's verdict `r` lets the request go on; otherwise it becomes the flow's `v` (an
// error to answer, or none: the phase must wait). A verdict that lets the request through is not
// moved into `v` (an out-of-line assignment per phase).
bool passes(std::optional<Verdict>&& r, std::optional<Verdict>& v) {
  if (r && r->ok()) return true;
  v = std::move(r);
  return false;
}

// The verdict `v` of the phase at `s` (none: that phase must wait, and is where the flow
// stands), then the phases after it as far as they decide without waiting. The stage the flow
// stands at: a phase to run(), or what is left once the phases have decided.
Stage go_on(Ctx& c, providers::Endpoint endpoint, Stage s, std::optional<Verdict>& v) {
  if (!v) return s;
  if (!v->ok()) return Stage::kReply;
  switch (s) {
    case Stage::kAuth:
      c.w.watch_disconnect([&c] { on_client_gone(c); });
      // 2 decode, 3 resolve: the body in the client's API, the model group
      if (!passes(phase_resolve::try_now(c, endpoint), v))
        return v ? Stage::kReply : Stage::kResolve;
      [[fallthrough]];
    case Stage::kResolve:
      // 4 cache: exact or semantic lookup; a miss may wait for an identical request in flight
      if (!passes(phase_cache::try_now(c), v)) return v ? Stage::kReply : Stage::kCache;
      [[fallthrough]];
    case Stage::kCache:
      // 5 rate limit: all limits at once; `wait` limits hold the request (a hit counts as a
      // request and reserves no tokens)
      if (!passes(phase_rate_limit::try_now(c), v)) return v ? Stage::kReply : Stage::kRateLimit;
      [[fallthrough]];
    case Stage::kRateLimit:
      c.extra.add_known_valid(
          "x-bellwether-priority",
          admission::kPriorityDigits[static_cast<std::size_t>(c.priority.priority)]);
      if (c.priority.lowered) c.extra.add_known_valid("x-bellwether-priority-lowered", "true");
      phase_cache::note(c);
      // A hit is answered here: no budget hold, no concurrency slot, no upstream.
      if (phase_cache::hit(c)) return Stage::kServe;
      // 6 cost guard: reserve the worst case against every budget (may downgrade the model)
      if (!passes(phase_cost::try_now(c), v)) return v ? Stage::kReply : Stage::kCost;
      [[fallthrough]];
    case Stage::kCost:
      // 7 admission: a slot of the model group's concurrency, waiting in priority order
      if (!passes(phase_admission::try_now(c), v)) return v ? Stage::kReply : Stage::kAdmission;
      [[fallthrough]];
    default:
      return Stage::kForward;
  }
}

// The wait of the phase at `s` (one that has a run()).
asio::awaitable<Verdict> wait_for(Ctx& c, providers::Endpoint endpoint, Stage s) {
  switch (s) {
    case Stage::kResolve:
      return phase_resolve::run(c, endpoint);
    case Stage::kCache:
      return phase_cache::run(c);
    case Stage::kRateLimit:
      return phase_rate_limit::run(c);
    case Stage::kCost:
      return phase_cost::run(c);
    default:
      return phase_admission::run(c);
  }
}

// The flow from stage `s` on, for a request that waits for a phase, is refused or is a cache
// hit. `v` is held here by value: the caller's is gone.
asio::awaitable<void> rest_of_flow(Ctx& c, providers::Endpoint endpoint, Stage s,
                                   std::optional<Verdict> v) {
  while (s < Stage::kForward) {
    v = co_await wait_for(c, endpoint, s);
    s = go_on(c, endpoint, s, v);
  }
  if (s == Stage::kReply) co_return co_await reply_error(c, v->error());
  if (s == Stage::kServe) co_return co_await phase_cache::serve(c);
  co_await forward::run(c);
}

}  // namespace

// Not a coroutine: the phases that decide at once run here, and a request that every phase lets
// through without a wait gets forward::run's awaitable itself, one coroutine frame (and one
// level of resumption) fewer for every such request.
asio::awaitable<void> run_llm(Ctx& c, providers::Endpoint endpoint) {
  c.sh.llm_arrivals.fetch_add(1, std::memory_order_relaxed);
  tracing::begin(c, operation_name(endpoint));
  // 1 authenticate: the key, its plan and the request's priority
  std::optional<Verdict> v = phase_auth::try_now(c);
  const Stage s = go_on(c, endpoint, Stage::kAuth, v);
  // 8 forward and 9 respond: deployment, retries, fallbacks, the answer relayed
  if (s == Stage::kForward) return forward::run(c);
  return rest_of_flow(c, endpoint, s, std::move(v));
}

}  // namespace bw::gateway
