#include "routing/router.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <unordered_set>
#include <utility>

#include "common/json_util.h"
#include "common/light_mutex.h"

namespace bw::routing {

namespace {
constexpr std::size_t kUsageRequests = 0;
constexpr std::size_t kUsageTokens = 1;
constexpr Nanos kMinute = seconds(60);
constexpr int kMinuteBuckets = 60;  // one-second resolution for RPM/TPM

}  // namespace

struct DeploymentRuntime {
  DeploymentRuntime(const BreakerConfig& b, Nanos tau)
      : breaker(b), ewma(tau), usage(kMinute, kMinuteBuckets) {}
  // Guards breaker, ewma and usage. Held for a few hundred instructions at most, twice per
  // attempt: a LightMutex (no libpthread call when uncontended).
  LightMutex mu;
  CircuitBreaker breaker;
  PeakEwma ewma;
  RollingWindow<2> usage;  // requests and tokens over the sliding minute
  // Attempts sent and not finished: a hint for the balancer, counted without the mutex.
  std::atomic<std::int64_t> in_flight{0};
};

struct GroupState {
  ModelGroupConfig cfg;
  std::vector<std::shared_ptr<DeploymentRuntime>> rts;  // parallel to cfg.deployments
  std::shared_ptr<RetryBudget> budget;
  mutable LightMutex wrr_mu;
  mutable SmoothWrr wrr;
};

struct RouterSnapshot {
  RouterConfig cfg;
  std::vector<std::unique_ptr<GroupState>> groups;
  std::unordered_map<std::string, std::size_t, StringHash, std::equal_to<>> by_name;
  FallbackTable fallbacks;

  const GroupState* find(std::string_view name) const {
    // A few names are compared faster than one is hashed; every request looks its group up.
    constexpr std::size_t kCompared = 8;
    if (groups.size() <= kCompared) {
      for (const auto& g : groups) {
        if (g->cfg.name.size() == name.size() &&
            std::char_traits<char>::compare(g->cfg.name.data(), name.data(), name.size()) == 0) {
          return g.get();
        }
      }
      return nullptr;
    }
    auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : groups[it->second].get();
  }
};

const char* to_string(PickFailure f) {
  switch (f) {
    case PickFailure::kNone:
      return "none";
    case PickFailure::kUnknownGroup:
      return "unknown_group";
    case PickFailure::kExhausted:
      return "exhausted";
    case PickFailure::kAllOpen:
      return "all_open";
    case PickFailure::kAllCooling:
      return "all_cooling";
    case PickFailure::kAllAtCapacity:
      return "all_at_capacity";
  }
  return "unknown";
}

std::optional<std::string> validate_router_config(const RouterConfig& cfg) {
  std::unordered_set<std::string_view> groups;
  std::unordered_set<std::string_view> ids;
  FallbackTable table;
  for (const auto& g : cfg.groups) {
    if (g.name.empty()) return std::string("model group with an empty name");
    if (!groups.insert(g.name).second) return "model group '" + g.name + "' defined twice";
    if (g.deployments.empty()) return "model group '" + g.name + "' has no deployments";
    if (g.deployments.size() > kMaxDeploymentsPerGroup) {
      return "model group '" + g.name + "' has more than 64 deployments";
    }
    for (const auto& d : g.deployments) {
      if (d.id.empty()) return "model group '" + g.name + "': deployment with an empty id";
      if (!ids.insert(d.id).second) return "deployment id '" + d.id + "' used twice";
      if (d.weight < 1) return "deployment '" + d.id + "': weight must be >= 1";
      if (d.rpm < 0 || d.tpm < 0) return "deployment '" + d.id + "': rpm/tpm must be >= 0";
    }
    table[g.name] = FallbackEntry{g.fallbacks, g.context_fallback};
  }
  if (auto err = validate_fallbacks(table)) return err;
  const auto& b = cfg.breaker;
  if (b.consecutive_failures < 0) return std::string("breaker.consecutive_failures must be >= 0");
  if (b.failure_rate < 0 || b.failure_rate > 1) {
    return std::string("breaker.failure_rate must be in [0, 1]");
  }
  if (b.window <= 0 || b.window_buckets < 1) return std::string("breaker.window must be > 0");
  if (b.open_base <= 0 || b.open_max < b.open_base) {
    return std::string("breaker.open_base must be > 0 and <= open_max");
  }
  if (b.open_jitter < 0 || b.open_jitter > 1) return std::string("breaker.open_jitter in [0, 1]");
  if (b.half_open_probes < 1) return std::string("breaker.half_open_probes must be >= 1");
  const auto& r = cfg.retry;
  if (r.max_attempts < 1) return std::string("retry.max_attempts must be >= 1");
  if (r.base < 0 || r.cap < r.base) return std::string("retry.base must be >= 0 and <= cap");
  if (r.deadline <= 0) return std::string("retry.deadline must be > 0");
  if (r.budget_ratio < 0 || r.budget_min_per_s < 0 || r.budget_window <= 0) {
    return std::string("retry budget parameters must be >= 0 (window > 0)");
  }
  if (cfg.ewma_tau <= 0) return std::string("ewma_tau must be > 0");
  return std::nullopt;
}

// ---- Ticket ----

Ticket::Ticket(Ticket&& o) noexcept
    : snap_(std::move(o.snap_)),
      group_(o.group_),
      rt_(std::move(o.rt_)),
      index_(o.index_),
      admission_(o.admission_),
      started_(o.started_),
      finished_(o.finished_) {
  o.finished_ = true;
}

Ticket& Ticket::operator=(Ticket&& o) noexcept {
  if (this != &o) {
    release();
    snap_ = std::move(o.snap_);
    group_ = o.group_;
    rt_ = std::move(o.rt_);
    index_ = o.index_;
    admission_ = o.admission_;
    started_ = o.started_;
    finished_ = o.finished_;
    o.finished_ = true;
  }
  return *this;
}

Ticket::~Ticket() {
  release();
}

void Ticket::release() {
  if (finished_ || rt_ == nullptr) return;
  finished_ = true;
  if (started_) rt_->in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (admission_ == Admission::kProbe) {
    std::lock_guard lock(rt_->mu);
    rt_->breaker.release_probe();
  }
}

const DeploymentConfig& Ticket::deployment() const {
  return group_->cfg.deployments[index_];
}
const std::string& Ticket::group() const {
  return group_->cfg.name;
}

// ---- Router ----

Router::Router() : snap_(std::make_shared<const RouterSnapshot>()) {}
Router::~Router() = default;

std::shared_ptr<const RouterSnapshot> Router::snapshot() const {
  return snap_.get();
}

bool Router::has_group(std::string_view name) const {
  return snapshot()->find(name) != nullptr;
}

Result<Ok> Router::reload(RouterConfig cfg) {
  if (auto err = validate_router_config(cfg)) {
    return make_error(500, "server_error", "invalid_routing_config", *err);
  }
  auto old = snapshot();
  std::unordered_map<std::string_view, std::shared_ptr<DeploymentRuntime>> old_rts;
  for (const auto& g : old->groups) {
    for (std::size_t i = 0; i < g->rts.size(); ++i) old_rts[g->cfg.deployments[i].id] = g->rts[i];
  }
  auto snap = std::make_shared<RouterSnapshot>();
  snap->cfg = std::move(cfg);
  for (const auto& gc : snap->cfg.groups) {
    auto g = std::make_unique<GroupState>();
    g->cfg = gc;
    for (const auto& d : gc.deployments) {
      if (auto it = old_rts.find(d.id); it != old_rts.end()) {
        std::lock_guard lock(it->second->mu);
        it->second->breaker.reconfigure(snap->cfg.breaker);
        it->second->ewma.set_tau(snap->cfg.ewma_tau);
        g->rts.push_back(it->second);
      } else {
        g->rts.push_back(
            std::make_shared<DeploymentRuntime>(snap->cfg.breaker, snap->cfg.ewma_tau));
      }
    }
    if (const GroupState* prev = old->find(gc.name)) {
      g->budget = prev->budget;
      g->budget->reconfigure(snap->cfg.retry);
    } else {
      g->budget = std::make_shared<RetryBudget>(snap->cfg.retry);
    }
    g->wrr = SmoothWrr(gc.deployments.size());
    snap->fallbacks[gc.name] = FallbackEntry{gc.fallbacks, gc.context_fallback};
    snap->by_name[gc.name] = snap->groups.size();
    snap->groups.push_back(std::move(g));
  }
  snap_.publish(std::move(snap));  // the previous snapshot is released outside the lock
  return Ok{};
}

PickResult Router::pick(std::string_view group, Nanos now, std::uint64_t exclude_mask, Rng& rng) {
  return pick(snapshot(), group, now, exclude_mask, rng);
}

PickResult Router::pick(const std::shared_ptr<const RouterSnapshot>& snap, std::string_view group,
                        Nanos now, std::uint64_t exclude_mask, Rng& rng) {
  PickResult res;
  const GroupState* g = snap->find(group);
  if (g == nullptr) {
    res.failure = PickFailure::kUnknownGroup;
    return res;
  }
  pick_in(res, *g, &snap, now, exclude_mask, rng);
  return res;
}

void Router::pick_in(PickResult& res, const GroupState& group,
                     const std::shared_ptr<const RouterSnapshot>* keep, Nanos now,
                     std::uint64_t exclude_mask, Rng& rng) {
  const GroupState* g = &group;
  const std::size_t n = g->cfg.deployments.size();
  // The ticket for deployment idx, its probe slot (if any) and RPM unit taken.
  auto make_ticket = [&](std::uint32_t idx, DeploymentRuntime& rt, Admission a) {
    Ticket& t = res.ticket.emplace(Ticket::Key{});
    if (keep != nullptr) t.snap_ = *keep;
    t.group_ = g;
    t.rt_ = &rt;
    t.index_ = idx;
    t.admission_ = a;
  };

  const std::uint64_t all = n >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
  const std::uint64_t open = all & ~exclude_mask;
  if (open != 0 && (open & (open - 1)) == 0) {
    // One deployment to consider (a group of one, or the others already failed): found eligible
    // and claimed under one acquisition of its mutex, so no other thread can come between, and
    // nothing found under it needs checking again.
    const auto idx = static_cast<std::uint32_t>(std::countr_zero(open));
    const DeploymentConfig& d = g->cfg.deployments[idx];
    DeploymentRuntime& rt = *g->rts[idx];
    std::lock_guard lock(rt.mu);
    Admission a = rt.breaker.check(now);
    if (a == Admission::kOpen || a == Admission::kCooling) {
      res.failure = a == Admission::kOpen ? PickFailure::kAllOpen : PickFailure::kAllCooling;
      res.available_at = rt.breaker.available_at(now);
      return;
    }
    Nanos cap_free = now;
    if (d.rpm > 0) cap_free = std::max(cap_free, rt.usage.time_below(now, kUsageRequests, d.rpm));
    if (d.tpm > 0) cap_free = std::max(cap_free, rt.usage.time_below(now, kUsageTokens, d.tpm));
    if (cap_free > now) {
      res.failure = PickFailure::kAllAtCapacity;
      res.available_at = cap_free;
      return;
    }
    if (a == Admission::kProbe) a = rt.breaker.acquire(now);  // the free slot check() saw
    rt.usage.add(now, kUsageRequests, 1);
    make_ticket(idx, rt, a);
    return;
  }

  PickFailure earliest_reason = PickFailure::kExhausted;
  Nanos earliest = 0;
  auto note_blocked = [&](PickFailure reason, Nanos at) {
    if (earliest == 0 || at < earliest) {
      earliest = at;
      earliest_reason = reason;
    }
  };
  // Whether deployment i may take the request now (its mutex held); notes why not otherwise.
  auto eligible = [&](std::size_t i, DeploymentRuntime& rt) {
    const DeploymentConfig& d = g->cfg.deployments[i];
    const Admission a = rt.breaker.check(now);
    if (a == Admission::kOpen || a == Admission::kCooling) {
      note_blocked(a == Admission::kOpen ? PickFailure::kAllOpen : PickFailure::kAllCooling,
                   rt.breaker.available_at(now));
      return false;
    }
    Nanos cap_free = now;
    if (d.rpm > 0) cap_free = std::max(cap_free, rt.usage.time_below(now, kUsageRequests, d.rpm));
    if (d.tpm > 0) cap_free = std::max(cap_free, rt.usage.time_below(now, kUsageTokens, d.tpm));
    if (cap_free > now) {
      note_blocked(PickFailure::kAllAtCapacity, cap_free);
      return false;
    }
    return true;
  };
  // Takes deployment idx for this request (its mutex held): the probe slot if half-open, one
  // unit of its RPM. False if another thread took the last of either since it was found
  // eligible.
  auto claim = [&](std::uint32_t idx, DeploymentRuntime& rt) {
    const DeploymentConfig& d = g->cfg.deployments[idx];
    const bool has_capacity = (d.rpm == 0 || rt.usage.sum(now, kUsageRequests) < d.rpm) &&
                              (d.tpm == 0 || rt.usage.sum(now, kUsageTokens) < d.tpm);
    const Admission a = has_capacity ? rt.breaker.acquire(now) : Admission::kOpen;
    if (a != Admission::kAllowed && a != Admission::kProbe) return false;
    rt.usage.add(now, kUsageRequests, 1);
    make_ticket(idx, rt, a);
    return true;
  };

  // Room for the candidates, not initialised (Candidate has no member initialisers): filling all
  // 64 would cost more than the scan of a small group.
  Candidate cands[kMaxDeploymentsPerGroup];
  std::size_t count = 0;
  bool raced = false;
  for (std::size_t i = 0; i < n; ++i) {
    if ((open & (std::uint64_t{1} << i)) == 0) continue;
    DeploymentRuntime& rt = *g->rts[i];
    std::lock_guard lock(rt.mu);
    if (!eligible(i, rt)) continue;
    cands[count++] = Candidate{static_cast<std::uint32_t>(i), g->cfg.deployments[i].weight,
                               rt.in_flight.load(std::memory_order_relaxed), rt.ewma.value(now)};
  }
  // Another thread may take the last probe slot or RPM unit between the scan and the claim;
  // then drop that candidate and choose again.
  while (count > 0) {
    std::span<const Candidate> view(cands, count);
    std::size_t chosen = 0;
    switch (g->cfg.balancer) {
      case BalancerKind::kP2cPeakEwma:
        chosen = pick_p2c(view, rng);
        break;
      case BalancerKind::kLeastOutstanding:
        chosen = pick_least_outstanding(view, rng);
        break;
      case BalancerKind::kWeightedRoundRobin: {
        std::lock_guard lock(g->wrr_mu);
        chosen = g->wrr.pick(view);
        break;
      }
    }
    const std::uint32_t idx = cands[chosen].index;
    {
      std::lock_guard lock(g->rts[idx]->mu);
      if (claim(idx, *g->rts[idx])) return;
    }
    raced = true;
    cands[chosen] = cands[--count];
  }
  if (raced && earliest == 0) {
    // Lost every race for a slot: it frees up as soon as the winners finish.
    earliest_reason = PickFailure::kAllOpen;
    earliest = now;
  }
  res.failure = earliest_reason;
  res.available_at = earliest;
}

void Router::on_start(Ticket& t, Nanos /*now*/) {
  if (t.rt_ == nullptr || t.started_ || t.finished_) return;
  t.rt_->in_flight.fetch_add(1, std::memory_order_relaxed);
  t.started_ = true;
}

void Router::on_finish(Ticket& t, const Outcome& o, Nanos now, Rng& rng) {
  if (t.rt_ == nullptr || t.finished_) return;
  if (o.kind == OutcomeKind::kCancelled) {
    t.release();
    return;
  }
  t.finished_ = true;
  DeploymentRuntime& rt = *t.rt_;
  if (t.started_) rt.in_flight.fetch_sub(1, std::memory_order_relaxed);
  std::lock_guard lock(rt.mu);
  if (o.tokens > 0) rt.usage.add(now, kUsageTokens, o.tokens);
  // Streams are compared by time to first token; total time depends on the answer's length.
  Nanos sample = o.ttft_ns > 0 ? o.ttft_ns : o.latency_ns;
  if (is_failure(o.kind)) {
    // A deployment that fails fast must not look fast to the balancer.
    sample = std::max<Nanos>(sample, static_cast<Nanos>(2 * rt.ewma.value(now)));
  }
  if (sample > 0) rt.ewma.observe(now, sample);
  rt.breaker.on_result(t.admission_, o.kind, o.retry_after_ns, now, rng);
}

RequestPlan Router::plan(std::string_view model, Nanos now) {
  return RequestPlan(this, snapshot(), model, now);
}

std::vector<DeploymentStatus> Router::status(Nanos now) const {
  auto snap = snapshot();
  std::vector<DeploymentStatus> out;
  for (const auto& g : snap->groups) {
    for (std::size_t i = 0; i < g->rts.size(); ++i) {
      const DeploymentConfig& d = g->cfg.deployments[i];
      DeploymentRuntime& rt = *g->rts[i];
      DeploymentStatus s;
      s.group = g->cfg.name;
      s.id = d.id;
      s.provider = d.provider;
      s.model = d.model;
      std::lock_guard lock(rt.mu);
      rt.breaker.check(now);  // so an elapsed open timeout shows as half_open
      s.state = rt.breaker.state();
      s.consecutive_failures = rt.breaker.consecutive_failures();
      s.openings = rt.breaker.openings();
      if (s.state == BreakerState::kOpen) {
        s.open_remaining_s = to_seconds(std::max<Nanos>(0, rt.breaker.open_until() - now));
      }
      s.cooldown_remaining_s = to_seconds(std::max<Nanos>(0, rt.breaker.cooldown_until() - now));
      s.in_flight = rt.in_flight.load(std::memory_order_relaxed);
      s.ewma_ms = rt.ewma.value(now) / 1e6;
      s.rpm_used = rt.usage.sum(now, kUsageRequests);
      s.tpm_used = rt.usage.sum(now, kUsageTokens);
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::pair<std::int64_t, std::int64_t> Router::retry_budget_usage(std::string_view group,
                                                                 Nanos now) const {
  auto snap = snapshot();
  const GroupState* g = snap->find(group);
  if (g == nullptr) return {0, 0};
  return {g->budget->requests(now), g->budget->retries(now)};
}

std::string status_json(const std::vector<DeploymentStatus>& all) {
  JsonWriter w;
  w.begin_object().key("deployments").begin_array();
  for (const auto& s : all) {
    w.begin_object()
        .key("group")
        .value(s.group)
        .key("id")
        .value(s.id)
        .key("provider")
        .value(s.provider)
        .key("model")
        .value(s.model)
        .key("state")
        .value(to_string(s.state))
        .key("consecutive_failures")
        .value(s.consecutive_failures)
        .key("openings")
        .value(s.openings)
        .key("open_remaining_s")
        .value(s.open_remaining_s)
        .key("cooldown_remaining_s")
        .value(s.cooldown_remaining_s)
        .key("in_flight")
        .value(s.in_flight)
        .key("ewma_ms")
        .value(s.ewma_ms)
        .key("rpm_used")
        .value(s.rpm_used)
        .key("tpm_used")
        .value(s.tpm_used)
        .end_object();
  }
  w.end_array().end_object();
  return w.take();
}

// ---- RequestPlan ----

RequestPlan::RequestPlan(Router* router, std::shared_ptr<const RouterSnapshot> snap,
                         std::string_view model, Nanos now)
    : router_(router), snap_(std::move(snap)), group_(snap_->find(model)) {
  st_.deadline_at = now + snap_->cfg.retry.deadline;
  if (group_ != nullptr) {
    budget_ = group_->budget.get();
    budget_->record_request(now);
  } else {
    planner_ = std::make_unique<AttemptPlanner>(&snap_->fallbacks, model);
  }
}

AttemptPlanner& RequestPlan::planner() const {
  if (!planner_) planner_ = std::make_unique<AttemptPlanner>(&snap_->fallbacks, group_->cfg.name);
  return *planner_;
}

void RequestPlan::pin_first(std::string_view id) {
  pinned_ = -1;
  // Before the first attempt: the requested model's group.
  const GroupState* g = planner_ ? snap_->find(planner_->model()) : group_;
  if (g != nullptr) {
    for (std::size_t i = 0; i < g->cfg.deployments.size() && i < 64; ++i) {
      if (g->cfg.deployments[i].id == id) pinned_ = static_cast<int>(i);
    }
  }
}

RequestPlan::Step RequestPlan::next(Nanos now, Rng& rng) {
  Step step;
  next(step, now, rng);
  return step;
}

void RequestPlan::next(Step& step, Nanos now, Rng& rng) {
  step.ticket.reset();
  step.failure = PickFailure::kNone;
  step.available_at = 0;
  if (!planner_) {
    // Nothing failed yet: the requested model's group, no exclusions.
    if (pinned_ >= 0) {
      const std::uint64_t only = ~(std::uint64_t{1} << pinned_);
      pinned_ = -1;
      Router::pick_in(step, *group_, nullptr, now, only, rng);
      if (step.ticket) {
        ++st_.attempts;
        return;
      }
      step.failure = PickFailure::kNone;
      step.available_at = 0;
    }
    Router::pick_in(step, *group_, nullptr, now, 0, rng);
    if (step.ticket) {
      ++st_.attempts;
      return;
    }
    PickResult r;
    r.failure = step.failure;
    r.available_at = step.available_at;
    step.failure = PickFailure::kNone;
    step.available_at = 0;
    walk(step, r, now, rng);
    return;
  }
  if (pinned_ >= 0) {
    const std::uint64_t only = ~(std::uint64_t{1} << pinned_) | planner_->exclude_mask();
    pinned_ = -1;
    PickResult r = router_->pick(snap_, planner_->model(), now, only, rng);
    if (r.ticket) {
      ++st_.attempts;
      step.ticket = std::move(r.ticket);
      return;
    }
  }
  PickResult r = router_->pick(snap_, planner_->model(), now, planner_->exclude_mask(), rng);
  walk(step, r, now, rng);
}

void RequestPlan::walk(Step& step, PickResult& r, Nanos now, Rng& rng) {
  AttemptPlanner& p = planner();
  // Each round either returns or enters a model not visited before (or clears the exclusions
  // once), so the walk is bounded by the number of groups.
  const std::size_t last = 2 * snap_->groups.size() + 2;
  for (std::size_t guard = 0;; ++guard) {
    if (r.ticket) {
      ++st_.attempts;
      step.ticket = std::move(r.ticket);
      step.failure = PickFailure::kNone;
      step.available_at = 0;
      return;
    }
    // Report the blocking reason that clears soonest: a Retry-After should point at it.
    const bool blocked =
        r.failure != PickFailure::kExhausted && r.failure != PickFailure::kUnknownGroup;
    const bool step_blocked = step.failure != PickFailure::kNone &&
                              step.failure != PickFailure::kExhausted &&
                              step.failure != PickFailure::kUnknownGroup;
    if (step.failure == PickFailure::kNone ||
        (blocked &&
         (!step_blocked || (r.available_at != 0 && r.available_at < step.available_at)))) {
      step.failure = r.failure;
      step.available_at = r.available_at;
    }
    if (p.on_unavailable(r.failure == PickFailure::kExhausted) ==
        AttemptPlanner::Move::kExhausted) {
      return;
    }
    if (guard == last) return;
    r = router_->pick(snap_, p.model(), now, p.exclude_mask(), rng);
  }
}

RetryDecision RequestPlan::finish(Ticket& t, const Outcome& o, Nanos now, bool response_started,
                                  Rng& rng) {
  router_->on_finish(t, o, now, rng);
  st_.response_started = response_started;
  // Nothing to retry (what decide_retry answers first): the retry state is not needed.
  if (o.kind == OutcomeKind::kSuccess) return {RetryVerdict::kSucceeded, 0};
  if (o.kind == OutcomeKind::kCancelled) return {RetryVerdict::kNotRetryable, 0};
  const RetryConfig& cfg = snap_->cfg.retry;
  if (o.kind == OutcomeKind::kClientError && o.context_overflow && !response_started) {
    // Re-routing a request that does not fit is not a retry of a failure: no backoff, no budget.
    if (st_.attempts >= cfg.max_attempts) return {RetryVerdict::kAttemptsExhausted, 0};
    if (now >= st_.deadline_at) return {RetryVerdict::kDeadline, 0};
    if (planner().on_context_overflow()) return {RetryVerdict::kRetry, 0};
    return {RetryVerdict::kNotRetryable, 0};
  }
  // A Retry-After speaks for the deployment that sent it, and that deployment is excluded for the
  // rest of this request (a 429 also cools it down for everyone). When the retry can go to another
  // deployment or a fallback model, waiting for it would only delay the client; it is honoured
  // when the retry has to return to the deployment that asked for the pause.
  Outcome eff = o;
  if (o.retry_after_ns > 0 && has_other_target(t.index())) eff.retry_after_ns = 0;
  RetryDecision d = decide_retry(cfg, st_, eff, now, budget_, rng);
  if (d.retry()) planner().on_failed(t.index());
  return d;
}

bool RequestPlan::has_other_target(std::uint32_t failed_index) const {
  const AttemptPlanner& p = planner();
  if (const GroupState* g = snap_->find(p.model())) {
    std::uint64_t mask = p.exclude_mask();
    if (failed_index < 64) mask |= std::uint64_t{1} << failed_index;
    for (std::size_t i = 0; i < g->cfg.deployments.size() && i < 64; ++i) {
      if ((mask & (std::uint64_t{1} << i)) == 0) return true;
    }
  }
  return p.has_pending_fallback();
}

}  // namespace bw::routing
