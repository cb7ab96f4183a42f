#pragma once
// Router: the routing state of the gateway. Holds an immutable config snapshot (model groups,
// deployments, policies) that reload() swaps atomically, while the runtime state of every
// deployment (breaker, latency EWMA, minute usage, in-flight count) and every group's retry
// budget survives a reload when the deployment id / group name stays the same.
//
// Per request the forward phase does:
//   RequestPlan plan = router.plan(model, now);        // deposits into the retry budget
//   for (;;) {
//     auto step = plan.next(now, rng);                 // LB + breaker + capacity + fallbacks
//     if (!step.ticket) -> answer 503/429 from step.failure, Retry-After from step.available_at
//     router.on_start(*step.ticket, now);              // just before the request is sent
//     ... send to step.ticket->deployment() ...
//     auto d = plan.finish(*step.ticket, outcome, now, response_started, rng);
//     if (!d.retry()) -> done (answer the outcome)
//     co_await sleep(d.delay);
//   }
// Thread safety: Router, pick(), on_start(), on_finish() and status() are safe from any thread;
// each deployment has its own short mutex, never held across I/O (its in-flight count is an
// atomic, so on_start takes no lock), and a request reads the snapshot through a per-thread
// cache that reload() invalidates (no lock unless it changed). A Ticket and a RequestPlan
// belong to one request (one coroutine). A Ticket dropped without on_finish() is reported as
// cancelled by its destructor, so probe slots and in-flight counts never leak.
// Lifetime: a Ticket from Router::pick() keeps the snapshot it was picked from; one from
// RequestPlan::next() uses its plan's and must not outlive that plan.
// Cost: a request that is answered at its first attempt builds no retry or fallback state (it
// is made at the first failure), and a group of one deployment is checked and claimed under
// one acquisition of its mutex: breaker, RPM/TPM, probe slot, in-flight count, as for any
// group, without the balancer.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/published.h"
#include "common/result.h"
#include "routing/balancer.h"
#include "routing/circuit_breaker.h"
#include "routing/fallback.h"
#include "routing/outcome.h"
#include "routing/retry.h"
#include "routing/rng.h"

namespace bw::routing {

constexpr std::size_t kMaxDeploymentsPerGroup = 64;  // exclude masks are 64-bit

struct DeploymentConfig {
  std::string id;            // unique across all groups; runtime state is keyed by it
  std::string provider;      // provider name (the gateway resolves endpoint and key)
  std::string model;         // provider-side model id
  std::uint32_t weight = 1;  // relative share, >= 1
  std::int64_t rpm = 0;      // requests per sliding minute allowed by the provider tier; 0 = none
  std::int64_t tpm = 0;      // tokens per sliding minute; 0 = none
};

struct ModelGroupConfig {
  std::string name;  // public model name, e.g. "gpt-4.1"
  BalancerKind balancer = BalancerKind::kP2cPeakEwma;
  std::vector<DeploymentConfig> deployments;
  std::vector<std::string> fallbacks;  // ordered other group names
  std::string context_fallback;        // group with a larger context window; empty = none
};

struct RouterConfig {
  std::vector<ModelGroupConfig> groups;
  BreakerConfig breaker;
  RetryConfig retry;
  Nanos ewma_tau = seconds(10);  // decay time constant of the peak-EWMA latency
};

// Config error message, or nullopt if valid.
std::optional<std::string> validate_router_config(const RouterConfig& cfg);

enum class PickFailure : std::uint8_t {
  kNone,
  kUnknownGroup,
  kExhausted,      // every deployment was excluded (already failed in this request) or none
  kAllOpen,        // breakers open, or half-open with no free probe slot
  kAllCooling,     // 429 cooldowns
  kAllAtCapacity,  // RPM/TPM of the current minute used up
};
const char* to_string(PickFailure f);

struct DeploymentRuntime;  // router.cc
struct GroupState;         // router.cc
struct RouterSnapshot;     // router.cc

// One attempt on one deployment; move-only.
class Ticket {
  struct Key {
    explicit Key() = default;
  };

 public:
  // Made by the Router only (Key is private).
  explicit Ticket(Key) {}
  Ticket(Ticket&& o) noexcept;
  Ticket& operator=(Ticket&& o) noexcept;
  Ticket(const Ticket&) = delete;
  Ticket& operator=(const Ticket&) = delete;
  ~Ticket();

  const DeploymentConfig& deployment() const;
  const std::string& group() const;
  std::uint32_t index() const { return index_; }
  bool probe() const { return admission_ == Admission::kProbe; }

 private:
  friend class Router;
  void release();

  // The snapshot that group_ and rt_ live in, for a ticket of Router::pick(); empty for one of
  // a RequestPlan, which keeps that snapshot itself (no shared count per attempt).
  std::shared_ptr<const RouterSnapshot> snap_;
  const GroupState* group_ = nullptr;
  DeploymentRuntime* rt_ = nullptr;
  std::uint32_t index_ = 0;
  Admission admission_ = Admission::kAllowed;
  bool started_ = false;
  bool finished_ = false;
};

struct PickResult {
  std::optional<Ticket> ticket;
  PickFailure failure = PickFailure::kNone;
  Nanos available_at = 0;  // when failing: earliest time a deployment frees up (0 = unknown)
};

// Admin view of one deployment (render with status_json()).
struct DeploymentStatus {
  std::string group;
  std::string id;
  std::string provider;
  std::string model;
  BreakerState state = BreakerState::kClosed;
  int consecutive_failures = 0;
  int openings = 0;
  double open_remaining_s = 0;      // > 0 while open
  double cooldown_remaining_s = 0;  // > 0 while cooling after a 429
  std::int64_t in_flight = 0;
  double ewma_ms = 0;
  std::int64_t rpm_used = 0;  // requests in the sliding minute
  std::int64_t tpm_used = 0;  // tokens in the sliding minute
};
std::string status_json(const std::vector<DeploymentStatus>& s);

class RequestPlan;

class Router {
 public:
  Router();
  ~Router();

  // Validates and installs `cfg`. State of deployments whose id survives is kept.
  Result<Ok> reload(RouterConfig cfg);
  std::shared_ptr<const RouterSnapshot> snapshot() const;
  bool has_group(std::string_view name) const;

  // Picks a deployment of `group` not in `exclude_mask` (bit i = deployment i).
  PickResult pick(std::string_view group, Nanos now, std::uint64_t exclude_mask, Rng& rng);
  PickResult pick(const std::shared_ptr<const RouterSnapshot>& snap, std::string_view group,
                  Nanos now, std::uint64_t exclude_mask, Rng& rng);
  // The request is being sent upstream (counts as in flight for the balancer).
  void on_start(Ticket& t, Nanos now);
  // The attempt ended. Exactly once per ticket (later calls are ignored).
  void on_finish(Ticket& t, const Outcome& o, Nanos now, Rng& rng);

  // Starts routing one client request for public model `model`.
  RequestPlan plan(std::string_view model, Nanos now);

  std::vector<DeploymentStatus> status(Nanos now) const;
  // Retry budget counters of a group (for metrics); {requests, retries} in the window.
  std::pair<std::int64_t, std::int64_t> retry_budget_usage(std::string_view group, Nanos now) const;

 private:
  friend class RequestPlan;
  // Picks a deployment of `g` into `res` (empty). `keep`: the snapshot `g` is in, for the ticket
  // to keep; null when the caller keeps it for as long as the ticket lives.
  static void pick_in(PickResult& res, const GroupState& g,
                      const std::shared_ptr<const RouterSnapshot>* keep, Nanos now,
                      std::uint64_t exclude_mask, Rng& rng);

  Published<RouterSnapshot> snap_;
};

class RequestPlan {
 public:
  // The ticket, or why nothing can be tried; available_at: the earliest availability over the
  // models tried (0 = unknown).
  using Step = PickResult;

  // The next attempt, or why nothing can be tried.
  Step next(Nanos now, Rng& rng);
  // The same into `step` (its ticket released first), where the caller keeps it: the ticket is
  // made in place.
  void next(Step& step, Nanos now, Rng& rng);
  // Reports the outcome to the Router and decides about retrying (delay 0 for a context-window
  // move to a larger model).
  RetryDecision finish(Ticket& t, const Outcome& o, Nanos now, bool response_started, Rng& rng);

  // The first attempt goes to deployment `id` of the requested model if it can take it (the
  // admission queue reserved that deployment's rate capacity for this request).
  void pin_first(std::string_view id);

  const std::string& model() const { return planner().model(); }
  const std::vector<std::string>& visited() const { return planner().visited(); }
  int attempts() const { return st_.attempts; }
  Nanos deadline_at() const { return st_.deadline_at; }

 private:
  friend class Router;
  RequestPlan(Router* router, std::shared_ptr<const RouterSnapshot> snap, std::string_view model,
              Nanos now);
  // The fallback walk, made when first needed: until then the request is on the requested
  // model with nothing excluded, which is where a new walk starts.
  AttemptPlanner& planner() const;
  // The walk over models and exclusions from a failed pick `r` on planner().model() on.
  void walk(Step& step, PickResult& r, Nanos now, Rng& rng);
  // Whether a retry after a failure on deployment `failed_index` of model() has somewhere else
  // to go: another deployment not yet failed in this request, or a pending fallback model.
  bool has_other_target(std::uint32_t failed_index) const;

  Router* router_;
  std::shared_ptr<const RouterSnapshot> snap_;
  const GroupState* group_;  // the requested model's; null if unknown (then planner_ is made)
  mutable std::unique_ptr<AttemptPlanner> planner_;
  AttemptState st_;
  RetryBudget* budget_ = nullptr;
  int pinned_ = -1;  // deployment index for the first pick; -1 = none
};

}  // namespace bw::routing
