#pragma once
// Ctx: one request's state, shared by the phases (pipeline.cc runs them in order) and read at
// the end by finish (access log, metrics). Also the few helpers every phase uses to answer.
// Thread safety: a Ctx lives on one worker, inside one request's coroutine.
#include <array>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <memory>
#include <optional>
#include <string>

#include "admission/admission_controller.h"
#include "api/canonical.h"
#include "api/responses.h"
#include "cache/cache.h"
#include "cache/single_flight.h"
#include "common/lazy.h"
#include "config/config.h"
#include "cost/budget_store.h"
#include "cost/pricing.h"
#include "gateway/errors.h"
#include "gateway/request_tracing.h"
#include "gateway/shared.h"
#include "http/server.h"
#include "limits/limiter.h"
#include "providers/adapter.h"
#include "providers/openai.h"

namespace bw::gateway {

// What a phase decided: ok = go on to the next phase; an error = answer the client with it
// (the flow sends it, and finish still runs).
using Verdict = Result<Ok>;

// How a request ended, for the access log ("error") and the metrics. `detail` is the limit,
// budget or error code the kind refers to.
enum class OutcomeKind : std::uint8_t {
  kNone,         // no error
  kError,        // a client-visible error; detail = its code (errors.h)
  kRateLimited,  // refused by a rate limit; detail = the limit's name
  kBudget,       // refused by a budget; detail = the budget id
  kAdmission,    // refused by the admission queue (full, shed, timed out, cancelled)
  kClientGone,   // the client closed the connection first (logged as 499)
  kUpstream,     // the upstream failed; detail = upstream_timeout, upstream_502, ...
};

struct Outcome {
  OutcomeKind kind = OutcomeKind::kNone;
  std::string detail;
  bool none() const { return kind == OutcomeKind::kNone; }
  void set(OutcomeKind k, std::string d = {}) {
    kind = k;
    detail = std::move(d);
  }
  // The access log's "error" field: "rate_limited:<limit>", "budget:<id>", "admission", or the
  // code.
  std::string label() const;
};

// The response cache's view of one request (phase_cache.cc): what was looked up, what was
// served, and on a miss what the answer will be stored as.
struct CacheState {
  enum class Status : std::uint8_t { kOff, kBypass, kMiss, kHit };
  Status status = Status::kOff;
  config::CacheModeConfig cfg;  // the group's, with the key's overrides
  bool read = false;            // the request may be served from the cache
  bool write = false;           // its answer may be stored
  std::string key;              // the exact key
  std::string buffered_key;     // a stream's: the same request's buffered answer, replayable as one
  std::shared_ptr<const cache::Entry> entry;  // the hit
  float similarity = -1;                      // a semantic hit's
  cache::SingleFlight::Leader leader;         // this miss leads identical concurrent ones
  // Semantic: the prompt's embedding and the partition it is filed under when stored.
  std::vector<float> embedding;
  std::string partition;
  // The answer captured on the way to the client (forward), stored by finish when complete.
  bool capturing = false;
  bool complete = false;
  std::string captured;
  std::string content_type;
  std::string_view status_text() const;
};

struct alignas(64) Ctx {
  Ctx(Shared& s, std::shared_ptr<const Runtime> r, http::Request& q, http::ResponseWriter& wr)
      : sh(s), rt(std::move(r)), req(q), w(wr) {}
  // The members are in the order of their use, not of the phases (numbered in the comments):
  // those that every request reads or writes are packed into as few cache lines as they fit,
  // between the large ones that only some requests use, of which the others touch only a flag
  // or a pointer. Hundreds of requests are in flight at once on a worker, and by the time a
  // request's answer arrives its lines have left the core's caches: every line it touches
  // again is a miss. The first member's flag lies at its end, in the line of the members after
  // it; a Lazy's lies at its start.
  //
  // 2 decode: the canonical request (see `inbound`)
  std::optional<api::Request> canon;
  Shared& sh;
  std::shared_ptr<const Runtime> rt;  // the config snapshot this request started with
  http::Request& req;
  http::ResponseWriter& w;
  Nanos start = 0;
  // 1 authenticate, 3 resolve
  const KeyInfo* key = nullptr;
  const limits::Plan* plan = nullptr;
  const ModelGroup* group = nullptr;
  // 6 cost guard: the price of the model that answers (forward may change it)
  const cost::ModelPrice* price = nullptr;
  // Outcome, for the access log: the deployment that answered (its metric series are cached
  // there)
  const Deployment* deployment = nullptr;
  const KeyInfo* replay_key = nullptr;  // set when an admin replays a dead letter
  admission::PriorityDecision priority;
  Nanos ttft = -1;
  // 7 admission: how long the request waited, 8 forward: the last attempt's latency
  Nanos queue_wait = 0;
  Nanos upstream_latency = 0;
  // 5 rate limit: the tokens reserved, settled by finish
  std::int64_t reserved_tokens = 0;
  std::int64_t reserved_unix_ms = 0;  // 6 cost guard, with a reservation or lease
  // The output cap asked for (max_tokens, else the group's default; 0 = no cost guard), and the
  // one forwarded to the answering model: the requested cap under that model's own limit.
  std::int64_t completion_cap = 0;
  std::int64_t forced_max_tokens = 0;
  cost::Micros cost_micro = 0;
  std::size_t bytes_out = 0;
  std::int64_t attempts = 0;
  int status = 0;           // the client's
  int upstream_status = 0;  // last upstream answer (0 = none)
  // The client's API, and (for Responses, Messages, or a chat body bound for another provider
  // type) its canonical request (`canon`, above). history_expanded: previous_response_id was
  // found in the store and its turns put before the input; history_unavailable: the store
  // could not be asked; history_upstream: it is the caller's response stored by an `openai`
  // provider (a marker), to be passed through.
  api::Format inbound = api::Format::kChat;
  bool history_expanded = false;
  bool history_unavailable = false;
  bool history_upstream = false;
  // What the request waited for (concurrency, deployment_rpm/_tpm, key_limit); kNone = no wait.
  admission::WaitReason wait_reason = admission::WaitReason::kNone;
  bool reservation_logged = false;  // the ledger has the reservation's row (`budget`)
  bool forward_failed = false;      // every deployment and fallback failed (DLQ candidate)
  // cost_micro is final: a covered request's settlement computed it before the answer's last
  // bytes, and finish reuses it (the ledger row and the access log show the same figure).
  bool cost_computed = false;
  bool cancelled = false;
  // The client closed its connection before the response ended (ResponseWriter's watch): the
  // queue wait is cancelled through `gone_signal`, the upstream attempt through
  // `upstream_cancel`, and nothing is retried.
  bool client_gone = false;
  bool finished = false;  // finish ran (it runs exactly once per request)
  // What phase_cost::try_now worked out for run(), when the request needs a reservation of its
  // own or opens a lease: its worst case, the time it reserves at, and whether it opens a lease.
  struct CostStep {
    cost::Micros worst = 0;
    std::int64_t now_ms = 0;
    bool open_lease = false;
  } cost_step;
  // The request's trace (request_tracing.h); null when there is none to record or pass on.
  std::unique_ptr<tracing::State> trace;
  boost::asio::cancellation_signal gone_signal;
  http::UpstreamCancel upstream_cancel;
  std::string request_id;
  std::string client_ip;
  std::string route_model;  // the model routed to (differs after a downgrade)
  // Outcome, for the access log.
  std::string model_served;
  std::string upstream;
  Outcome outcome;
  providers::Usage usage;
  std::string last_failure;    // 8 forward
  std::string dropped_params;  // fields a translation could not carry (x-bellwether-dropped-params)
  http::Headers extra;         // added to every response from the rate-limit phase on
  // Budget leases (cost/lease.h): a covered request holds a share of its set's lease instead
  // of `budget`, and has no ledger row until it is settled. `lease_set` is non-empty while the
  // request counts in its set's in-flight requests.
  cost::LeaseClaim lease_claim;
  std::string lease_set;
  // 7 admission: the concurrency slot, released by finish.
  admission::Permit permit;
  // 2 decode
  providers::LlmRequest llm;
  // The members that only some requests use, each built on its first use: those that few
  // requests build behind a pointer, the verdict (built by every request of a key with limits)
  // last.
  LazyBox<api::ResponseMeta> response_meta;  // Responses: this response's id and echoed fields
  // 4 cache: a hit answers after the rate limit counted it; a miss's answer is stored by finish.
  LazyBox<CacheState> cache;  // built by a group with a cache only
  // 6 cost guard: one hold on the budgets, settled by finish.
  LazyBox<cost::BudgetHold> budget;  // built by a reservation only
  // The last provider answer's rate-limit headers, provider-neutral (translated routes).
  LazyBox<providers::RateLimitInfo> upstream_limits;
  // 5 rate limit: the decision; its token reservation is settled by finish.
  Lazy<limits::Verdict> verdict;  // built by a key with limits only

  Nanos now() const { return sh.clock.now(); }
  // This turn's reading of the clock (common/clock.h, Clock::turn_now): for decisions and the
  // start of durations, not for their end.
  Nanos turn_now() const { return sh.clock.turn_now(); }
};

// Who owns the Responses this key stores, and so who may continue them with previous_response_id
// (docs/api-responses.md, "Who can continue a response"): the key's tenant, so that keys of one
// tenant share their conversations as keys of one OpenAI project do; a key without a tenant
// owns its own. The prefixes keep a tenant and a key of the same name apart. Empty without a key.
std::string response_owner(const Ctx& c);

// --- Answering (context.cc) -----------------------------------------------------------------
// An error in the client's API shape, with x-request-id, the rate-limit headers and Retry-After.
http::Response error_response(const Ctx& c, const Error& e);
// Sends `e`; the outcome becomes kError with its code unless a phase already set one.
boost::asio::awaitable<void> reply_error(Ctx& c, const Error& e);
boost::asio::awaitable<void> send_json(Ctx& c, int status, std::string body);
// Sends `r` as it is (adds x-request-id), counting its bytes.
boost::asio::awaitable<void> send_response(Ctx& c, http::Response r);

// --- Client disconnects ---------------------------------------------------------------------
// The ResponseWriter's watch: cancels the queue wait and the upstream attempt.
void on_client_gone(Ctx& c);
// Marks a request whose client went away (nginx's 499 in the access log).
void note_client_gone(Ctx& c);

// Awaits `op` (a queue wait: an AdmitResult or a WaitResult) so that the client going away
// cancels it. A client already gone is refused without starting the wait: a signal emitted
// before the wait binds its slot would be lost.
template <class T>
boost::asio::awaitable<T> unless_client_gone(Ctx& c, boost::asio::awaitable<T> op) {
  namespace asio = boost::asio;
  if (c.client_gone) {
    T refused;
    refused.refusal = admission::Refusal::kCancelled;
    co_return refused;
  }
  co_return co_await asio::co_spawn(
      co_await asio::this_coro::executor, std::move(op),
      asio::bind_cancellation_slot(c.gone_signal.slot(), asio::use_awaitable));
}

// Runs blocking work (SQLite) on the blocking pool and resumes on the caller's worker.
template <class F>
auto run_blocking(Shared& sh, F f) -> boost::asio::awaitable<decltype(f())> {
  namespace asio = boost::asio;
  auto home = co_await asio::this_coro::executor;
  co_await asio::post(sh.blocking->get_executor(), asio::use_awaitable);
  auto r = f();
  co_await asio::post(home, asio::use_awaitable);
  co_return r;
}

}  // namespace bw::gateway
