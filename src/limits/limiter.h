#pragma once
// Limiter: the rate-limit phase of the gateway pipeline (phase 4 in DESIGN.md).
//
// check() gathers every limit that applies to a request (global config limits by scope/match,
// the key's plan limits with its overrides, the plan's daily quota), asks the LimitStore to check
// and consume them in ONE atomic call, and turns the outcome into a Verdict (429 data, OpenAI
// x-ratelimit-* header data, shadow rejections, the tokens reserved). settle() later corrects the
// token reservation to the real usage; call it exactly once for every allowed request, also when
// the request failed or the client went away (actual_tokens = what was really produced, or 0).
//
// Thread safety: check/settle/reload may be called concurrently from any worker. The config is an
// immutable snapshot swapped atomically; a request keeps the snapshot it started with. Bucket
// state is keyed by limit name + scope id, so it survives reloads that keep the name.
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "limits/client_ip.h"
#include "limits/limit_spec.h"
#include "limits/limit_store.h"

namespace bw::limits {

struct LimiterConfig {
  // Limits that apply regardless of the key: scope global, ip, endpoint, model (key and tenant
  // scope here mean "each key / tenant separately, whatever its plan").
  std::vector<LimitSpec> limits;
};

struct RequestScope {
  std::string_view key_id;  // stable API key id (not the secret); "" = unauthenticated
  std::string_view tenant_id;
  std::string_view client_ip;  // from client_ip()
  std::string_view endpoint;   // route path, e.g. "/v1/chat/completions"
  std::string_view model;      // requested model (after alias resolution)
  const Plan* plan = nullptr;  // nullptr: no plan limits
  const std::vector<LimitSpec>* key_overrides = nullptr;
};

// Data for x-ratelimit-{limit,remaining,reset}-{requests,tokens}.
struct RateHeaders {
  bool present = false;
  std::int64_t limit = 0;
  std::int64_t remaining = 0;
  Nanos reset_after = 0;  // format with format_reset()
};

struct ChargedLimit {
  std::string key;       // bucket key
  LimitSpec spec;        // copy: the config may be reloaded before the request settles
  std::int64_t charged;  // tokens charged at check time
};

struct Reservation {
  std::vector<ChargedLimit> token_limits;  // every token limit (enforced or shadow) charged
  std::int64_t reserved_tokens = 0;
  bool settled = false;
};

struct Verdict {
  bool allowed = true;
  std::string limit_name;    // the enforced limit that blocked (longest wait)
  Nanos retry_after_ns = 0;  // until the request passes every limit; kNever if it can't
  RateHeaders requests;      // most restrictive enforced request limit
  RateHeaders tokens;        // most restrictive enforced token limit
  std::vector<std::string> shadow_rejections;  // shadow limits that would have rejected
  bool wait_ok = false;   // every blocking limit is on_exceed: wait (and can pass)
  bool overflow = false;  // store at its entry cap (see OverflowPolicy)
  // The shared store (Redis) is unreachable and a blocking limit fails closed: answer 503 with
  // Retry-After = retry_after_ns (not 429).
  bool unavailable = false;
  Reservation reservation;  // pass to settle() when the request ends
};

class Limiter {
 public:
  Limiter(std::shared_ptr<const LimiterConfig> config, std::shared_ptr<LimitStore> store);

  void reload(std::shared_ptr<const LimiterConfig> config);
  std::shared_ptr<const LimiterConfig> config() const;

  // token_cost: tokens to reserve on token limits (e.g. prompt estimate + max_tokens).
  Verdict check(const RequestScope& scope, std::int64_t token_cost, Nanos now);
  // Charges actual - reserved to every token limit that was charged (refund when negative).
  // Idempotent: a second call does nothing.
  void settle(Reservation& reservation, std::int64_t actual_tokens, Nanos now);

  // Distributed limits (docs/distributed.md). With an async store set, check_async/settle_async
  // use it (one round trip per request); without one they run the synchronous path above. Call
  // set_async_store before serving; the gateway should always use the *_async forms.
  void set_async_store(std::shared_ptr<AsyncLimitStore> store);
  boost::asio::awaitable<Verdict> check_async(const RequestScope& scope, std::int64_t token_cost,
                                              Nanos now);
  boost::asio::awaitable<void> settle_async(Reservation& reservation, std::int64_t actual_tokens,
                                            Nanos now);
  // The async store cannot reach its backend and answers by failure policy (for /readyz).
  bool degraded() const;

 private:
  struct Gathered;
  void gather(Gathered& g, const RequestScope& scope, std::int64_t token_cost) const;
  static Verdict make_verdict(std::span<const LimitCheck> checks, const BatchResult& r,
                              std::int64_t token_cost);

  std::atomic<std::shared_ptr<const LimiterConfig>> config_;
  std::shared_ptr<LimitStore> store_;
  std::atomic<std::shared_ptr<AsyncLimitStore>> async_store_;
};

// OpenAI-style duration for x-ratelimit-reset-*: rounded UP to whole milliseconds (a client that
// waits that long will pass), Go duration syntax: "20ms", "1s", "1.5s", "6m0s", "1h2m3s".
std::string format_reset(Nanos ns);

}  // namespace bw::limits
