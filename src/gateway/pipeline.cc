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
// Awaits a phase that must wait into the flow's verdict. A co_await's result is a temporary of
// the awaiting coroutine's frame, one per co_await expression: six Verdicts (about 160 bytes
// each) made run_llm's frame larger than Asio's recycling allocator keeps (1020 bytes), which
// cost an aligned malloc and free per request. Only a request that waits pays this small frame.
asio::awaitable<void> into(asio::awaitable<Verdict> phase, std::optional<Verdict>& v) {
  v = co_await std::move(phase);
}

}  // namespace

asio::awaitable<void> run_llm(Ctx& c, providers::Endpoint endpoint) {
  c.sh.llm_arrivals.fetch_add(1, std::memory_order_relaxed);
  tracing::begin(c, operation_name(endpoint));
  std::optional<Verdict> v;

  // 1 authenticate: the key, its plan and the request's priority
  v = phase_auth::try_now(c);
  if (!v->ok()) co_return co_await reply_error(c, v->error());
  c.w.watch_disconnect([&c] { on_client_gone(c); });

  // 2 decode, 3 resolve: the body in the client's API, the model group
  v = phase_resolve::try_now(c, endpoint);
  if (!v) co_await into(phase_resolve::run(c, endpoint), v);
  if (!v->ok()) co_return co_await reply_error(c, v->error());

  // 4 cache: exact or semantic lookup; a miss may wait for an identical request in flight
  v = phase_cache::try_now(c);
  if (!v) co_await into(phase_cache::run(c), v);
  if (!v->ok()) co_return co_await reply_error(c, v->error());

  // 5 rate limit: all limits at once; `wait` limits hold the request (a hit counts as a
  // request and reserves no tokens)
  v = phase_rate_limit::try_now(c);
  if (!v) co_await into(phase_rate_limit::run(c), v);
  if (!v->ok()) co_return co_await reply_error(c, v->error());
  c.extra.add_known_valid(
      "x-bellwether-priority",
      admission::kPriorityDigits[static_cast<std::size_t>(c.priority.priority)]);
  if (c.priority.lowered) c.extra.add_known_valid("x-bellwether-priority-lowered", "true");
  phase_cache::note(c);
  // A hit is answered here: no budget hold, no concurrency slot, no upstream.
  if (phase_cache::hit(c)) co_return co_await phase_cache::serve(c);

  // 6 cost guard: reserve the worst case against every budget (may downgrade the model)
  v = phase_cost::try_now(c);
  if (!v) co_await into(phase_cost::run(c), v);
  if (!v->ok()) co_return co_await reply_error(c, v->error());

  // 7 admission: a slot of the model group's concurrency, waiting in priority order
  v = phase_admission::try_now(c);
  if (!v) co_await into(phase_admission::run(c), v);
  if (!v->ok()) co_return co_await reply_error(c, v->error());

  // 8 forward and 9 respond: deployment, retries, fallbacks, the answer relayed
  co_await forward::run(c, v);
  if (!v->ok()) co_await reply_error(c, v->error());
  c.permit.complete(c.upstream_latency, c.upstream_status);
}

}  // namespace bw::gateway
