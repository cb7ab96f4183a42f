#include "admission/admission_controller.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/name_memo.h"

namespace bw::admission {

namespace asio = boost::asio;

namespace detail {

struct DeploymentCap {
  DeploymentCap(std::string i, RateCapacity c) : id(std::move(i)), cap(std::move(c)) {}
  const std::string id;
  RateCapacity cap;  // guarded by its group's mu
};

struct Group {
  Group(std::string n, const LimiterConfig& l, const QueueConfig& q)
      : name(std::move(n)), limiter(l), queue(q) {}
  const std::string name;
  std::mutex mu;
  // Guarded by mu:
  ConcurrencyLimiter limiter;
  WaitQueue<std::shared_ptr<Waiter>> queue;
  std::vector<std::shared_ptr<DeploymentCap>> deps;  // empty: no rate gating
  std::size_t rr = 0;                                // round robin over deps
  Nanos rate_next_at = 0;                  // > 0: the head waits for rate capacity until then
  WaitReason blocked = WaitReason::kNone;  // what the head of the queue waits for
  PerPriority<std::int64_t> tokens_waiting{};
  bool turn = false;  // a key-limit turn (concurrency 1)
};

struct Waiter {
  enum class State { kQueued, kGranted, kTimedOut, kShed, kDone };

  Waiter(const asio::any_io_executor& ex, AdmissionController* o, std::shared_ptr<Group> g)
      : timer(ex), owner(o), group(std::move(g)) {}
  // A slot was granted but the coroutine never resumed to claim it (its executor was shut
  // down): give the slot back so the group does not shrink for good.
  ~Waiter() {
    if (state == State::kGranted) owner->release_slot(group, ticket, 0, SampleOutcome::kIgnored);
  }

  asio::steady_timer timer;  // touched only on its own executor
  AdmissionController* const owner;
  const std::shared_ptr<Group> group;
  // Guarded by group->mu:
  State state = State::kQueued;
  WaitHandle handle;
  ConcurrencyLimiter::Ticket ticket;
  Nanos waited = 0;
  int priority = 0;
  std::int64_t tokens = 0;
  WaitReason reason = WaitReason::kNone;
  std::shared_ptr<DeploymentCap> dep;  // reserved at grant
  Nanos reserved_at = 0;
};

}  // namespace detail

using detail::DeploymentCap;
using detail::Group;
using detail::Waiter;

namespace {

WaitReason reason_of(Binding b) {
  switch (b) {
    case Binding::kRequests:
      return WaitReason::kDeploymentRpm;
    case Binding::kTokens:
      return WaitReason::kDeploymentTpm;
    case Binding::kNone:
      break;
  }
  return WaitReason::kNone;
}

bool is_rate_reason(WaitReason r) {
  return r == WaitReason::kDeploymentRpm || r == WaitReason::kDeploymentTpm;
}

// Whether some deployment of `g` takes `tokens` now; if so `out` is it (round robin), else
// `at`/`why` say when the first one will and what it waits for. No deployments: always true.
bool choose_locked(Group& g, Nanos now, std::int64_t tokens, std::shared_ptr<DeploymentCap>& out,
                   Nanos& at, WaitReason& why) {
  out.reset();
  const std::size_t n = g.deps.size();
  // No rate in force anywhere (none configured, none learned yet): the balancer chooses freely.
  bool limited = false;
  for (const auto& d : g.deps) limited = limited || d->cap.limited(now);
  if (!limited) return true;
  at = kNeverTime;
  why = WaitReason::kDeploymentRpm;
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t i = (g.rr + k) % n;
    const RateCapacity& cap = g.deps[i]->cap;
    const Nanos t = cap.available_at(now, tokens);
    if (t <= now) {
      g.rr = i + 1;
      out = g.deps[i];
      return true;
    }
    if (t < at) {
      at = t;
      why = reason_of(cap.binding(now, tokens));
      if (why == WaitReason::kNone) why = WaitReason::kDeploymentRpm;
    }
  }
  return false;
}

}  // namespace

std::string_view refusal_name(Refusal r) {
  switch (r) {
    case Refusal::kNone:
      return "none";
    case Refusal::kQueueFull:
      return "queue_full";
    case Refusal::kShedByHigherPriority:
      return "shed_by_higher_priority";
    case Refusal::kOverload:
      return "overload";
    case Refusal::kTimedOut:
      return "timed_out";
    case Refusal::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

Error admission_error(Refusal refusal, double retry_after_s) {
  Error e;
  e.status = 503;
  e.type = "server_error";
  switch (refusal) {
    case Refusal::kQueueFull:
      e.code = "queue_full";
      e.message = "The model is busy and its queue is full; retry later.";
      break;
    case Refusal::kShedByHigherPriority:
      e.code = "shed_by_higher_priority";
      e.message = "The request was displaced from the queue by more urgent work; retry later.";
      break;
    case Refusal::kOverload:
      e.code = "overloaded";
      e.message = "The gateway is overloaded; requests of this priority are refused for now.";
      break;
    case Refusal::kTimedOut:
      e.code = "queue_timeout";
      e.message = "The request waited too long for capacity; retry later.";
      break;
    case Refusal::kCancelled:
      e.status = 499;
      e.type = "invalid_request_error";
      e.code = "client_closed_request";
      e.message = "The client closed the request.";
      return e;
    case Refusal::kNone:
      e.status = 200;
      e.type.clear();
      return e;
  }
  e.retry_after_s = retry_after_s;
  return e;
}

// ---- Permit ------------------------------------------------------------------------------

Permit::Permit(AdmissionController* owner, std::shared_ptr<detail::Group> group,
               ConcurrencyLimiter::Ticket ticket)
    : owner_(owner), group_(std::move(group)), ticket_(ticket) {}

Permit::Permit(Permit&& o) noexcept
    : owner_(std::exchange(o.owner_, nullptr)),
      group_(std::move(o.group_)),
      ticket_(o.ticket_),
      rate_owner_(std::exchange(o.rate_owner_, nullptr)),
      rate_group_(std::move(o.rate_group_)),
      dep_(std::move(o.dep_)),
      reserved_at_(o.reserved_at_),
      tokens_(o.tokens_) {}

Permit& Permit::operator=(Permit&& o) noexcept {
  if (this != &o) {
    release();
    owner_ = std::exchange(o.owner_, nullptr);
    group_ = std::move(o.group_);
    ticket_ = o.ticket_;
    rate_owner_ = std::exchange(o.rate_owner_, nullptr);
    rate_group_ = std::move(o.rate_group_);
    dep_ = std::move(o.dep_);
    reserved_at_ = o.reserved_at_;
    tokens_ = o.tokens_;
  }
  return *this;
}

const std::string& Permit::deployment() const {
  static const std::string kNone;
  return dep_ ? dep_->id : kNone;
}

void Permit::settle_tokens(std::int64_t actual) {
  if (!dep_ || rate_owner_ == nullptr || actual < 0 || actual == tokens_) return;
  AdmissionController& ac = *rate_owner_;
  const Nanos now = ac.clock_.now();
  AdmissionController::WakeList wake;
  {
    std::lock_guard lock(rate_group_->mu);
    dep_->cap.correct(reserved_at_, tokens_, actual, now);
    const bool freed = actual < tokens_;
    tokens_ = actual;
    // Fewer tokens than estimated may let the head of the queue go now.
    if (freed && rate_group_->rate_next_at > 0) ac.grant_locked(*rate_group_, now, wake);
  }
  AdmissionController::wake_all(wake);
}

void Permit::complete(Nanos upstream_latency, int upstream_status) {
  if (owner_ == nullptr) return;
  auto* owner = std::exchange(owner_, nullptr);
  owner->release_slot(group_, ticket_, upstream_latency, classify_upstream_status(upstream_status));
  group_.reset();
}

void Permit::release() {
  if (owner_ == nullptr) return;
  auto* owner = std::exchange(owner_, nullptr);
  owner->release_slot(group_, ticket_, 0, SampleOutcome::kIgnored);
  group_.reset();
}

// ---- AdmissionController -----------------------------------------------------------------

AdmissionController::AdmissionController(AdmissionConfig config, const Clock& clock)
    : config_(std::move(config)),
      clock_(clock),
      memo_owner_(next_memo_owner()),
      stats_(config_.stats_window) {}

AdmissionController::~AdmissionController() = default;

void AdmissionController::configure_group(std::string_view name, const LimiterConfig& limiter) {
  std::unique_lock lock(groups_mu_);
  auto it = groups_.find(name);
  if (it == groups_.end()) {
    groups_.emplace(std::string(name),
                    std::make_shared<Group>(std::string(name), limiter, config_.queue));
    return;
  }
  Group& g = *it->second;
  WakeList wake;
  {
    std::lock_guard glock(g.mu);
    g.limiter.reconfigure(limiter);
    grant_locked(g, clock_.now(), wake);
  }
  lock.unlock();
  wake_all(wake);
}

std::shared_ptr<Group> AdmissionController::find_group(std::string_view name) const {
  std::shared_lock lock(groups_mu_);
  auto it = groups_.find(name);
  return it == groups_.end() ? nullptr : it->second;
}

namespace {
struct GroupMemo;  // the threads' memo of groups_
}  // namespace

std::shared_ptr<Group> AdmissionController::group_for(std::string_view name) {
  // Groups are never removed or replaced: the map entry found for a name stays that name's, and
  // a worker thread remembers it (its node is stable in the map).
  using Memo = NameMemo<GroupMemo, const std::shared_ptr<Group>*>;
  if (const auto* kept = Memo::find(memo_owner_, name)) return *kept;
  {
    std::shared_lock lock(groups_mu_);
    if (auto it = groups_.find(name); it != groups_.end()) {
      Memo::keep(memo_owner_, name, &it->second);
      return it->second;
    }
  }
  std::unique_lock lock(groups_mu_);
  auto it = groups_.find(name);
  if (it != groups_.end()) return it->second;
  // Group names come from configuration; the cap only guards against a caller passing
  // client-controlled strings.
  if (groups_.size() >= config_.max_groups) name = "_other";
  it = groups_.find(name);
  if (it != groups_.end()) return it->second;
  auto g = std::make_shared<Group>(std::string(name), config_.default_limiter, config_.queue);
  groups_.emplace(std::string(name), g);
  return g;
}

std::size_t AdmissionController::queued() const {
  std::int64_t n = 0;
  for (int p = 0; p < kNumPriorities; ++p) {
    n += slot_waiting_[p].load(std::memory_order_relaxed) +
         rate_waiting_[p].load(std::memory_order_relaxed);
  }
  return static_cast<std::size_t>(std::max<std::int64_t>(0, n));
}

std::size_t AdmissionController::turn_ahead(std::string_view name, int priority) const {
  auto g = find_group(name);
  if (!g) return 0;
  std::lock_guard lock(g->mu);
  std::size_t n = static_cast<std::size_t>(g->limiter.in_flight());
  for (int p = 0; p <= clamp_priority(priority); ++p) n += g->queue.depth(p);
  return n;
}

std::size_t AdmissionController::load() const {
  return in_flight() + queued();
}

int AdmissionController::limit(std::string_view name) const {
  auto g = find_group(name);
  if (!g) return -1;
  std::lock_guard lock(g->mu);
  return g->limiter.limit();
}

std::size_t AdmissionController::queued(std::string_view name) const {
  auto g = find_group(name);
  if (!g) return 0;
  std::lock_guard lock(g->mu);
  return g->queue.size();
}

double AdmissionController::retry_after(Nanos now) const {
  const auto depth = static_cast<double>(queued());
  const double rate = stats_.completion_rate(now);  // lock-free: no stats_mu_
  // The time the current backlog needs to drain is when a retry has a fair chance.
  double s = rate > 0 ? std::ceil(depth / rate) : config_.max_retry_after_s;
  return std::clamp(s, config_.min_retry_after_s, config_.max_retry_after_s);
}

void AdmissionController::grant_locked(Group& g, Nanos now, WakeList& wake) {
  g.queue.expire(now, [&](Departed<std::shared_ptr<Waiter>>&& d) {
    d.value->state = Waiter::State::kTimedOut;
    slot_waiting_[d.priority].fetch_sub(1, std::memory_order_relaxed);
    g.tokens_waiting[d.priority] -= d.value->tokens;
    count_refusal(d.value->reason, d.priority);
    {
      std::lock_guard lock(stats_mu_);
      stats_.record_timeout(d.priority);
    }
    wake.push_back(std::move(d.value));
  });
  g.rate_next_at = 0;
  for (;;) {
    if (!g.limiter.has_capacity()) {
      g.blocked = g.queue.empty() ? WaitReason::kNone
                                  : (g.turn ? WaitReason::kKeyLimit : WaitReason::kConcurrency);
      break;
    }
    const std::shared_ptr<Waiter>* head = g.queue.peek(now);
    if (head == nullptr) {
      g.blocked = WaitReason::kNone;
      break;
    }
    std::shared_ptr<DeploymentCap> dep;
    Nanos at = 0;
    WaitReason why = WaitReason::kNone;
    if (!choose_locked(g, now, (*head)->tokens, dep, at, why)) {
      // One queue for every resource: the head waits for its rate refill and nobody passes it.
      g.blocked = why;
      g.rate_next_at = at;
      note_pump_at(at);
      break;
    }
    auto d = g.queue.pop(now);
    g.limiter.try_acquire();
    Waiter& w = *d->value;
    if (dep) {
      dep->cap.reserve(now, w.tokens);
      w.dep = std::move(dep);
      w.reserved_at = now;
    }
    g.tokens_waiting[d->priority] -= w.tokens;
    w.ticket = g.limiter.ticket(now);
    w.waited = d->waited;
    w.state = Waiter::State::kGranted;
    in_flight_.fetch_add(1, std::memory_order_relaxed);
    slot_waiting_[d->priority].fetch_sub(1, std::memory_order_relaxed);
    waits_by_reason_[static_cast<std::size_t>(w.reason)][d->priority].fetch_add(
        1, std::memory_order_relaxed);
    {
      std::lock_guard lock(stats_mu_);
      stats_.record_wait(d->priority, now, d->waited);
    }
    wake.push_back(std::move(d->value));
  }
}

void AdmissionController::note_pump_at(Nanos at) {
  Nanos cur = pump_at_.load(std::memory_order_relaxed);
  while (at < cur) {
    if (pump_at_.compare_exchange_weak(cur, at, std::memory_order_relaxed)) {
      if (pump_notifier_) pump_notifier_();
      return;
    }
  }
}

void AdmissionController::count_refusal(WaitReason r, int priority) {
  refusals_by_reason_[static_cast<std::size_t>(r)][priority].fetch_add(1,
                                                                       std::memory_order_relaxed);
}

bool AdmissionController::reserve_now_locked(Group& g, Nanos now, std::int64_t tokens, Permit& p) {
  std::shared_ptr<DeploymentCap> dep;
  Nanos at = 0;
  WaitReason why = WaitReason::kNone;
  if (!choose_locked(g, now, tokens, dep, at, why)) return false;
  if (dep) {
    dep->cap.reserve(now, tokens);
    p.dep_ = std::move(dep);
    p.reserved_at_ = now;
    p.tokens_ = tokens;
    p.rate_owner_ = this;
  }
  return true;
}

double AdmissionController::predicted_wait_locked(const Group& g, Nanos now, int priority,
                                                  std::int64_t tokens) const {
  if (g.deps.empty()) return 0;
  const double span = to_seconds(config_.pacing.window + std::max<Nanos>(0, config_.pacing.margin));
  double req_rate = 0, tok_rate = 0;  // per second, steady state
  bool req_unlimited = false, tok_unlimited = false;
  for (const auto& d : g.deps) {
    const RateLimits e = d->cap.effective(now);
    if (e.rpm > 0) {
      req_rate += static_cast<double>(e.rpm) / span;
    } else {
      req_unlimited = true;
    }
    if (e.tpm > 0) {
      tok_rate += static_cast<double>(e.tpm) / span;
    } else {
      tok_unlimited = true;
    }
  }
  double ahead = 1;
  double ahead_tokens = static_cast<double>(tokens);
  for (int p = 0; p <= priority; ++p) {
    ahead += static_cast<double>(g.queue.depth(p));
    ahead_tokens += static_cast<double>(g.tokens_waiting[p]);
  }
  double t = g.rate_next_at > now ? to_seconds(g.rate_next_at - now) : 0;
  if (!req_unlimited && req_rate > 0) t = std::max(t, ahead / req_rate);
  if (!tok_unlimited && tok_rate > 0) t = std::max(t, ahead_tokens / tok_rate);
  return t;
}

void AdmissionController::configure_capacity(std::string_view name,
                                             const std::vector<DeploymentCapacityConfig>& deps) {
  auto g = group_for(name);
  WakeList wake;
  {
    std::unique_lock lock(groups_mu_);
    std::lock_guard glock(g->mu);
    std::vector<std::shared_ptr<DeploymentCap>> next;
    next.reserve(deps.size());
    for (const auto& d : deps) {
      std::shared_ptr<DeploymentCap> kept;
      for (const auto& old : g->deps) {
        if (old->id == d.id) kept = old;
      }
      if (kept) {
        kept->cap.reconfigure(d.limits);
      } else {
        kept = std::make_shared<DeploymentCap>(d.id, RateCapacity(d.limits, config_.pacing));
      }
      next.push_back(std::move(kept));
    }
    g->deps = std::move(next);
    std::erase(rate_groups_, g);
    if (!g->deps.empty()) rate_groups_.push_back(g);
    grant_locked(*g, clock_.now(), wake);
  }
  wake_all(wake);
}

void AdmissionController::learn(std::string_view name, std::string_view deployment,
                                const ProviderLimits& p) {
  if (!p.any()) return;
  auto g = find_group(name);
  if (!g) return;
  const Nanos now = clock_.now();
  WakeList wake;
  {
    std::lock_guard lock(g->mu);
    for (const auto& d : g->deps) {
      if (d->id == deployment) d->cap.learn(now, p);
    }
    if (!g->queue.empty()) grant_locked(*g, now, wake);
  }
  wake_all(wake);
}

void AdmissionController::pump() {
  const Nanos now = clock_.now();
  pump_at_.store(kNeverTime, std::memory_order_relaxed);
  WakeList wake;
  {
    std::shared_lock lock(groups_mu_);
    for (const auto& g : rate_groups_) {
      std::lock_guard glock(g->mu);
      if (g->rate_next_at <= 0) continue;
      if (g->rate_next_at <= now) grant_locked(*g, now, wake);
      if (g->rate_next_at > 0) note_pump_at(g->rate_next_at);
    }
  }
  wake_all(wake);
}

std::shared_ptr<Group> AdmissionController::turn_group_for(std::string_view name) {
  if (auto g = find_group(name)) return g;
  std::unique_lock lock(groups_mu_);
  auto it = groups_.find(name);
  if (it != groups_.end()) return it->second;
  // A shared "_other" turn would let one key's burst delay another key: no turn instead.
  if (groups_.size() >= config_.max_groups) return nullptr;
  LimiterConfig one;
  one.mode = LimitMode::kFixed;
  one.initial = 1;
  auto g = std::make_shared<Group>(std::string(name), one, config_.queue);
  g->turn = true;
  groups_.emplace(std::string(name), g);
  return g;
}

void AdmissionController::wake_all(WakeList& wake) {
  for (auto& w : wake) {
    // The timer belongs to the waiter's executor: cancel it there. Moving the reference into
    // the handler makes the waiter's own thread the one that usually drops it last.
    auto ex = w->timer.get_executor();
    asio::post(ex, [w = std::move(w)] { w->timer.cancel(); });
  }
  wake.clear();
}

void AdmissionController::release_slot(const std::shared_ptr<Group>& g,
                                       const ConcurrencyLimiter::Ticket& t, Nanos latency,
                                       SampleOutcome outcome) {
  const Nanos now = clock_.turn_now();
  WakeList wake;
  {
    std::lock_guard lock(g->mu);
    g->limiter.on_complete(t, now, latency, outcome);
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    grant_locked(*g, now, wake);
  }
  stats_.record_completion(now);  // lock-free: no stats_mu_
  wake_all(wake);
}

Permit AdmissionController::try_acquire(std::string_view name, std::int64_t tokens) {
  auto g = group_for(name);
  const Nanos now = clock_.turn_now();
  std::lock_guard lock(g->mu);
  if (!g->queue.empty() || !g->limiter.has_capacity()) return Permit();
  Permit p;
  if (!reserve_now_locked(*g, now, tokens, p)) return Permit();
  g->limiter.try_acquire();
  in_flight_.fetch_add(1, std::memory_order_relaxed);
  p.owner_ = this;
  p.group_ = g;
  p.ticket_ = g->limiter.ticket(now);
  if (p.dep_) p.rate_group_ = g;
  return p;
}

Permit AdmissionController::admit_now(std::string_view name, int priority, std::int64_t tokens) {
  if (!overload_admits(config_.overload, clamp_priority(priority), load())) return Permit();
  return try_acquire(name, tokens);
}

asio::awaitable<AdmitResult> AdmissionController::acquire(std::string_view name, int priority,
                                                          Nanos max_wait, std::int64_t tokens) {
  co_return co_await acquire_in(group_for(name), priority, max_wait, tokens, false);
}

asio::awaitable<AdmitResult> AdmissionController::acquire_turn(std::string_view name, int priority,
                                                               Nanos max_wait) {
  auto g = turn_group_for(name);
  if (!g) co_return AdmitResult{};
  co_return co_await acquire_in(std::move(g), priority, max_wait, 0, true);
}

asio::awaitable<AdmitResult> AdmissionController::acquire_in(std::shared_ptr<Group> g, int priority,
                                                             Nanos max_wait, std::int64_t tokens,
                                                             bool turn) {
  const asio::any_io_executor ex = co_await asio::this_coro::executor;
  const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
  priority = clamp_priority(priority);
  AdmitResult result;
  Nanos now = clock_.now();
  if (cs.cancelled() != asio::cancellation_type::none) {
    result.refusal = Refusal::kCancelled;
    co_return result;
  }
  if (!turn && !overload_admits(config_.overload, priority, load())) {
    {
      std::lock_guard lock(stats_mu_);
      stats_.record_refused_overload(priority);
    }
    result.refusal = Refusal::kOverload;
    result.retry_after_s = retry_after(now);
    {
      std::lock_guard lock(g->mu);
      result.reason = g->blocked == WaitReason::kNone ? WaitReason::kConcurrency : g->blocked;
    }
    count_refusal(result.reason, priority);
    co_return result;
  }

  auto w = std::make_shared<Waiter>(ex, this, g);
  w->priority = priority;
  w->tokens = std::max<std::int64_t>(0, tokens);
  Nanos wait = config_.queue.max_wait[priority];
  if (max_wait >= 0 && max_wait < wait) wait = max_wait;
  WakeList wake;
  {
    std::lock_guard lock(g->mu);
    // Nobody may overtake the queue: the fast path is only for an idle queue.
    if (g->queue.empty() && g->limiter.has_capacity() &&
        reserve_now_locked(*g, now, w->tokens, result.permit)) {
      g->limiter.try_acquire();
      in_flight_.fetch_add(1, std::memory_order_relaxed);
      w->state = Waiter::State::kDone;
      result.permit.owner_ = this;
      result.permit.group_ = g;
      result.permit.ticket_ = g->limiter.ticket(now);
      if (result.permit.dep_) result.permit.rate_group_ = g;
      co_return result;
    }
    // What it waits for: the slot, or (slots free) the rate of every deployment.
    if (g->turn) {
      w->reason = WaitReason::kKeyLimit;
    } else if (!g->limiter.has_capacity()) {
      w->reason = WaitReason::kConcurrency;
    } else {
      std::shared_ptr<DeploymentCap> none;
      Nanos at = 0;
      WaitReason why = WaitReason::kConcurrency;
      if (g->queue.empty()) {
        choose_locked(*g, now, w->tokens, none, at, why);
      } else if (g->blocked != WaitReason::kNone) {
        why = g->blocked;
      }
      w->reason = why;
    }
    result.reason = w->reason;
    double predicted = 0;
    if (is_rate_reason(w->reason)) predicted = predicted_wait_locked(*g, now, priority, w->tokens);
    if (wait <= 0) {
      w->state = Waiter::State::kDone;
      result.refusal = Refusal::kTimedOut;
      count_refusal(w->reason, priority);
    } else if (predicted > to_seconds(wait)) {
      // The refill rate says it cannot be served within its max_wait: say so now, with the time
      // the backlog ahead of it needs.
      w->state = Waiter::State::kDone;
      result.refusal = Refusal::kTimedOut;
      result.retry_after_s = predicted;
      count_refusal(w->reason, priority);
      std::lock_guard slock(stats_mu_);
      stats_.record_timeout(priority);
    } else {
      auto pushed = g->queue.push(priority, now, wait, w);
      if (pushed.outcome == PushOutcome::kRefusedFull) {
        w->state = Waiter::State::kDone;
        count_refusal(w->reason, priority);
        std::lock_guard slock(stats_mu_);
        stats_.record_refused_full(priority);
        result.refusal = Refusal::kQueueFull;
      } else {
        w->handle = pushed.handle;
        slot_waiting_[priority].fetch_add(1, std::memory_order_relaxed);
        g->tokens_waiting[priority] += w->tokens;
        if (pushed.evicted) {
          auto& victim = pushed.evicted->value;
          victim->state = Waiter::State::kShed;
          slot_waiting_[pushed.evicted->priority].fetch_sub(1, std::memory_order_relaxed);
          g->tokens_waiting[pushed.evicted->priority] -= victim->tokens;
          count_refusal(victim->reason, pushed.evicted->priority);
          {
            std::lock_guard slock(stats_mu_);
            stats_.record_evicted(pushed.evicted->priority);
          }
          wake.push_back(std::move(victim));
        }
        // Normally a no-op (a non-empty queue means no free slot); keeps the invariant even if
        // the limit grew without a release.
        grant_locked(*g, now, wake);
      }
    }
  }
  wake_all(wake);
  if (result.refusal != Refusal::kNone) {
    if (result.retry_after_s <= 0) result.retry_after_s = retry_after(now);
    co_return result;
  }

  // If the coroutine is destroyed while suspended (its io_context shut down), the frame's
  // destructors run: take the waiter out of the queue so no slot is ever handed to it.
  struct AbandonGuard {
    AdmissionController* self;
    std::shared_ptr<Waiter> waiter;
    ~AbandonGuard() {
      if (waiter) self->abandon(*waiter);
    }
  } guard{this, w};

  // Cancellation is reported as a value; the caller's own setting is restored afterwards.
  const bool previous_throw = co_await asio::this_coro::throw_if_cancelled();
  co_await asio::this_coro::throw_if_cancelled(false);
  w->timer.expires_after(std::chrono::nanoseconds(wait));
  auto [ec] = co_await w->timer.async_wait(asio::as_tuple(asio::use_awaitable));
  co_await asio::this_coro::throw_if_cancelled(previous_throw);

  now = clock_.now();
  {
    std::lock_guard lock(g->mu);
    switch (w->state) {
      case Waiter::State::kGranted:
        w->state = Waiter::State::kDone;
        result.waited = w->waited;
        result.permit = Permit(this, g, w->ticket);
        if (w->dep) {
          result.permit.rate_owner_ = this;
          result.permit.rate_group_ = g;
          result.permit.dep_ = std::move(w->dep);
          result.permit.reserved_at_ = w->reserved_at;
          result.permit.tokens_ = w->tokens;
        }
        break;
      case Waiter::State::kQueued: {
        // Still queued: either our own deadline timer fired or the caller was cancelled.
        auto d = g->queue.remove(w->handle, now);
        w->state = Waiter::State::kDone;
        if (d) {
          slot_waiting_[priority].fetch_sub(1, std::memory_order_relaxed);
          g->tokens_waiting[priority] -= w->tokens;
          result.waited = d->waited;
        }
        // Wake-ups from other threads always change the state first, so an aborted wait of a
        // still-queued waiter can only come from the caller's cancellation slot.
        const bool timed_out = !ec;
        result.refusal = timed_out ? Refusal::kTimedOut : Refusal::kCancelled;
        if (timed_out) count_refusal(w->reason, priority);
        if (timed_out && is_rate_reason(w->reason)) {
          result.retry_after_s = predicted_wait_locked(*g, now, priority, w->tokens);
        }
        std::lock_guard slock(stats_mu_);
        if (timed_out) {
          stats_.record_timeout(priority);
        } else {
          stats_.record_cancelled(priority);
        }
        break;
      }
      case Waiter::State::kTimedOut:
        w->state = Waiter::State::kDone;
        result.refusal = Refusal::kTimedOut;
        break;
      case Waiter::State::kShed:
        w->state = Waiter::State::kDone;
        result.refusal = Refusal::kShedByHigherPriority;
        break;
      case Waiter::State::kDone:
        break;
    }
  }
  guard.waiter.reset();
  if (!result.ok() && result.refusal != Refusal::kCancelled && result.retry_after_s <= 0) {
    result.retry_after_s = retry_after(now);
  }
  co_return result;
}

void AdmissionController::abandon(Waiter& w) {
  std::lock_guard lock(w.group->mu);
  if (w.state != Waiter::State::kQueued) return;  // a granted slot is returned by ~Waiter
  if (w.group->queue.remove(w.handle, clock_.now())) {
    slot_waiting_[w.priority].fetch_sub(1, std::memory_order_relaxed);
    w.group->tokens_waiting[w.priority] -= w.tokens;
  }
  w.state = Waiter::State::kDone;
  std::lock_guard slock(stats_mu_);
  stats_.record_cancelled(w.priority);
}

asio::awaitable<WaitResult> AdmissionController::wait_until(Nanos deadline, int priority) {
  const asio::any_io_executor ex = co_await asio::this_coro::executor;
  const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
  priority = clamp_priority(priority);
  WaitResult result;
  const Nanos now = clock_.now();
  if (cs.cancelled() != asio::cancellation_type::none) {
    result.refusal = Refusal::kCancelled;
    co_return result;
  }
  if (deadline <= now) co_return result;
  if (!overload_admits(config_.overload, priority, load())) {
    {
      std::lock_guard lock(stats_mu_);
      stats_.record_refused_overload(priority);
    }
    result.refusal = Refusal::kOverload;
    result.retry_after_s = std::max(to_seconds(deadline - now), retry_after(now));
    co_return result;
  }
  rate_waiting_[priority].fetch_add(1, std::memory_order_relaxed);
  asio::steady_timer timer(ex, std::chrono::nanoseconds(deadline - now));
  const bool previous_throw = co_await asio::this_coro::throw_if_cancelled();
  co_await asio::this_coro::throw_if_cancelled(false);
  auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  co_await asio::this_coro::throw_if_cancelled(previous_throw);
  rate_waiting_[priority].fetch_sub(1, std::memory_order_relaxed);
  if (ec) {
    result.refusal = Refusal::kCancelled;
    std::lock_guard lock(stats_mu_);
    stats_.record_cancelled(priority);
  }
  co_return result;
}

QueueSnapshot AdmissionController::snapshot() const {
  const Nanos now = clock_.now();
  QueueSnapshot s;
  for (int p = 0; p < kNumPriorities; ++p) {
    const std::int64_t d = slot_waiting_[p].load(std::memory_order_relaxed) +
                           rate_waiting_[p].load(std::memory_order_relaxed);
    s.depth[p] = static_cast<std::size_t>(std::max<std::int64_t>(0, d));
  }
  s.in_flight = in_flight();
  {
    std::shared_lock lock(groups_mu_);
    s.concurrency_limits.reserve(groups_.size());
    for (const auto& [name, g] : groups_) {
      std::lock_guard glock(g->mu);
      if (!g->turn) s.concurrency_limits.emplace_back(name, g->limiter.limit());
    }
  }
  fill_capacity(s.deployments, s.waiting_by_reason, now);
  for (int r = 0; r < kNumWaitReasons; ++r) {
    for (int p = 0; p < kNumPriorities; ++p) {
      s.waits_by_reason[r][p] = waits_by_reason_[r][p].load(std::memory_order_relaxed);
      s.refusals_by_reason[r][p] = refusals_by_reason_[r][p].load(std::memory_order_relaxed);
    }
  }
  std::lock_guard lock(stats_mu_);
  stats_.fill(now, s);
  return s;
}

void AdmissionController::fill_capacity(std::vector<DeploymentCapacityRow>& rows,
                                        std::array<std::size_t, kNumWaitReasons>& backlog,
                                        Nanos now) const {
  std::shared_lock lock(groups_mu_);
  for (const auto& [name, g] : groups_) {
    std::lock_guard glock(g->mu);
    if (const std::size_t depth = g->queue.size(); depth > 0) {
      WaitReason r = g->blocked;
      if (r == WaitReason::kNone) r = g->turn ? WaitReason::kKeyLimit : WaitReason::kConcurrency;
      backlog[static_cast<std::size_t>(r)] += depth;
    }
    for (const auto& d : g->deps) {
      const CapacityStatus st = d->cap.status(now);
      DeploymentCapacityRow row;
      row.group = name;
      row.deployment = d->id;
      row.configured_rpm = st.configured.rpm;
      row.configured_tpm = st.configured.tpm;
      row.effective_rpm = st.effective.rpm;
      row.effective_tpm = st.effective.tpm;
      row.learned_fresh = st.learned_fresh;
      row.remaining_requests = st.remaining_requests;
      row.remaining_tokens = st.remaining_tokens;
      row.learned_remaining_requests = st.learned_remaining_requests;
      row.learned_remaining_tokens = st.learned_remaining_tokens;
      row.blocked_s = st.blocked_until > now ? to_seconds(st.blocked_until - now) : 0;
      row.binding = reason_of(st.binding);
      rows.push_back(std::move(row));
    }
  }
  for (int p = 0; p < kNumPriorities; ++p) {
    backlog[static_cast<std::size_t>(WaitReason::kKeyLimit)] += static_cast<std::size_t>(
        std::max<std::int64_t>(0, rate_waiting_[p].load(std::memory_order_relaxed)));
  }
}

AdmissionController::BindingState AdmissionController::binding_state() const {
  BindingState b;
  fill_capacity(b.deployments, b.backlog_by_reason, clock_.now());
  return b;
}

}  // namespace bw::admission
