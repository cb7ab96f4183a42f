#pragma once
// The phases of an LLM request, in the order pipeline.cc runs them (DESIGN.md "Life of a
// request"). Every phase has the same shape:
//
//   std::optional<Verdict> try_now(Ctx&);     // the synchronous fast path: a verdict, or
//                                             // nullopt when the phase must wait (then run it)
//   boost::asio::awaitable<Verdict> run(Ctx&); // the whole phase, may wait; call only after
//                                             // try_now returned nullopt
//
// try_now costs no coroutine frame, so a request that waits for nothing allocates none. A phase
// that never waits has only try_now (it never returns nullopt). A phase that refuses returns the
// error (and may set Ctx::outcome first); the flow answers with it. Whatever a phase took (a
// token reservation, a budget hold, a permit) it leaves in Ctx, and finish gives it back.
// Files: phase_auth.cc, phase_resolve.cc, phase_rate_limit.cc, phase_cost.cc,
// phase_admission.cc, forward.cc, finish.cc.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <optional>

#include "gateway/context.h"

namespace bw::gateway {

// 1 authenticate: the API key → KeyInfo, plan and priority.
namespace phase_auth {
std::optional<Verdict> try_now(Ctx& c);
}  // namespace phase_auth
// The key behind the request's Authorization or x-api-key header (401 if none matches).
Result<const KeyInfo*> authenticate(const Runtime& rt, const http::Request& req);
// The request carries the admin (master) key.
bool admin_authorized(const Runtime& rt, const http::Request& req);

// 2 decode and 3 resolve: the body → LlmRequest; the model → its group, if the key may use it.
namespace phase_resolve {
std::optional<Verdict> try_now(Ctx& c, providers::Endpoint endpoint);
// Only when a previous_response_id must be looked up in a store that waits (Redis).
boost::asio::awaitable<Verdict> run(Ctx& c, providers::Endpoint endpoint);
// Each input image estimated at the largest image bound of the models that may answer (the
// group's AnswerChain at the request's priority). Again whenever c.group changes (a downgrade).
void apply_image_bound(Ctx& c);
}  // namespace phase_resolve

// 4 cache: exact (and semantic) lookup. The hit is served by serve() after the rate limit
// counted the request (requests only: a hit reserves no tokens and no budget).
namespace phase_cache {
std::optional<Verdict> try_now(Ctx& c);
boost::asio::awaitable<Verdict> run(Ctx& c);
// x-bellwether-cache on every answer from here on (called after the rate limit set c.extra).
void note(Ctx& c);
bool hit(const Ctx& c);
boost::asio::awaitable<void> serve(Ctx& c);
// forward: the answer on its way to the client.
void capture_body(Ctx& c, int status, std::string_view content_type, std::string_view body);
void capture_event(Ctx& c, std::string_view event);
void capture_stream_end(Ctx& c, bool complete);
bool capturing(const Ctx& c);
// SSE events without the usage-only chat chunk (for a client that did not ask for usage).
std::string without_usage_chunks(std::string_view events);
// finish: store a complete answer (and release single-flight followers).
bool store_needed(const Ctx& c);
void release(Ctx& c);  // no store: the followers go upstream
boost::asio::awaitable<void> store(Ctx& c);
}  // namespace phase_cache
// A semantic index record as kept in Redis beside its entry (partition and vector).
bool semantic_record_parse(std::string_view rec, std::string& partition, std::vector<float>& v);

// 5 rate limit: every applicable limit at once; `wait` limits hold the request.
namespace phase_rate_limit {
std::optional<Verdict> try_now(Ctx& c);
boost::asio::awaitable<Verdict> run(Ctx& c);
// finish: the token reservation corrected to the real usage. settle_now settles in-process
// limits (or finds nothing to settle) at `now`, the gateway clock's time (c.now()), and returns
// true; false when settle() must be awaited.
bool settle_now(Ctx& c, Nanos now);
boost::asio::awaitable<void> settle(Ctx& c);
}  // namespace phase_rate_limit

// 6 cost guard: price, maybe downgrade, reserve the worst case, make it durable.
namespace phase_cost {
// try_now settles the unbudgeted and the lease-covered requests; run() continues (only) after
// try_now returned nullopt.
std::optional<Verdict> try_now(Ctx& c);
boost::asio::awaitable<Verdict> run(Ctx& c);
// finish: the actual cost (no I/O), then, when a hold is active, settle or release it.
// compute_cost computes once per request: a later call keeps the first figure.
void compute_cost(Ctx& c);
bool settle_needed(const Ctx& c);
boost::asio::awaitable<void> settle(Ctx& c);
// A request covered by a budget lease has no ledger row until it is settled: forward settles it
// before the client has the whole answer (before a buffered answer is written, before a
// stream's last events), and waits for that row's group commit. No-op for other requests.
inline bool covered(const Ctx& c) {
  return c.lease_claim.active();
}
// A covered request's row before its answer, without a coroutine when it needs no wait (a
// journal takes it; nothing to do for a request that is not covered): nullopt. Otherwise the
// row, for settle_before_answer to queue and wait for its commit.
std::optional<cost::LedgerCovered> settle_before_answer_now(Ctx& c,
                                                            const boost::asio::any_io_executor& ex);
boost::asio::awaitable<void> settle_before_answer(Ctx& c, cost::LedgerCovered row);
}  // namespace phase_cost

// 7 admission: a slot of the model group's concurrency, waiting in priority order.
namespace phase_admission {
std::optional<Verdict> try_now(Ctx& c);
boost::asio::awaitable<Verdict> run(Ctx& c);
}  // namespace phase_admission

// 8 forward and 9 respond: pick a deployment, send, retry or fall back, relay the answer, or
// answer the client with the error that ended the attempts; then the concurrency slot is told
// how the request went. Always waits (no try_now). The flow's last step: run_llm returns its
// awaitable itself when no phase before it waited.
namespace forward {
boost::asio::awaitable<void> run(Ctx& c);
}  // namespace forward

// 10 finish: runs once for every request that entered handle_request, whatever ended it.
// Settles limits and cost, releases the permit, writes the dead letter, metrics and access log.
namespace finish {
std::optional<Verdict> try_now(Ctx& c);
boost::asio::awaitable<Verdict> run(Ctx& c);
}  // namespace finish

}  // namespace bw::gateway
