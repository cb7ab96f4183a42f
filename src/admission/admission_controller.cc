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

namespace bw::admission {

namespace asio = boost::asio;

namespace detail {

struct Group {
  Group(std::string n, const LimiterConfig& l, const QueueConfig& q)
      : name(std::move(n)), limiter(l), queue(q) {}
  const std::string name;
  std::mutex mu;
  ConcurrencyLimiter limiter;                // guarded by mu
  WaitQueue<std::shared_ptr<Waiter>> queue;  // guarded by mu
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
};

}  // namespace detail

using detail::Group;
using detail::Waiter;

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
    : owner_(std::exchange(o.owner_, nullptr)), group_(std::move(o.group_)), ticket_(o.ticket_) {}

Permit& Permit::operator=(Permit&& o) noexcept {
  if (this != &o) {
    release();
    owner_ = std::exchange(o.owner_, nullptr);
    group_ = std::move(o.group_);
    ticket_ = o.ticket_;
  }
  return *this;
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
    : config_(std::move(config)), clock_(clock), stats_(config_.stats_window) {}

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

std::shared_ptr<Group> AdmissionController::group_for(std::string_view name) {
  if (auto g = find_group(name)) return g;
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
  double rate;
  {
    std::lock_guard lock(stats_mu_);
    rate = stats_.completion_rate(now);
  }
  // The time the current backlog needs to drain is when a retry has a fair chance.
  double s = rate > 0 ? std::ceil(depth / rate) : config_.max_retry_after_s;
  return std::clamp(s, config_.min_retry_after_s, config_.max_retry_after_s);
}

void AdmissionController::grant_locked(Group& g, Nanos now, WakeList& wake) {
  g.queue.expire(now, [&](Departed<std::shared_ptr<Waiter>>&& d) {
    d.value->state = Waiter::State::kTimedOut;
    slot_waiting_[d.priority].fetch_sub(1, std::memory_order_relaxed);
    {
      std::lock_guard lock(stats_mu_);
      stats_.record_timeout(d.priority);
    }
    wake.push_back(std::move(d.value));
  });
  while (g.limiter.has_capacity()) {
    auto d = g.queue.pop(now);
    if (!d) break;
    g.limiter.try_acquire();
    Waiter& w = *d->value;
    w.ticket = g.limiter.ticket(now);
    w.waited = d->waited;
    w.state = Waiter::State::kGranted;
    in_flight_.fetch_add(1, std::memory_order_relaxed);
    slot_waiting_[d->priority].fetch_sub(1, std::memory_order_relaxed);
    {
      std::lock_guard lock(stats_mu_);
      stats_.record_wait(d->priority, now, d->waited);
    }
    wake.push_back(std::move(d->value));
  }
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
  const Nanos now = clock_.now();
  WakeList wake;
  {
    std::lock_guard lock(g->mu);
    g->limiter.on_complete(t, now, latency, outcome);
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    grant_locked(*g, now, wake);
  }
  {
    std::lock_guard lock(stats_mu_);
    stats_.record_completion(now);
  }
  wake_all(wake);
}

Permit AdmissionController::try_acquire(std::string_view name) {
  auto g = group_for(name);
  std::lock_guard lock(g->mu);
  if (!g->queue.empty() || !g->limiter.try_acquire()) return Permit();
  in_flight_.fetch_add(1, std::memory_order_relaxed);
  return Permit(this, g, g->limiter.ticket(clock_.now()));
}

Permit AdmissionController::admit_now(std::string_view name, int priority) {
  if (!overload_admits(config_.overload, clamp_priority(priority), load())) return Permit();
  return try_acquire(name);
}

asio::awaitable<AdmitResult> AdmissionController::acquire(std::string_view name, int priority,
                                                          Nanos max_wait) {
  const asio::any_io_executor ex = co_await asio::this_coro::executor;
  const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
  priority = clamp_priority(priority);
  AdmitResult result;
  Nanos now = clock_.now();
  if (cs.cancelled() != asio::cancellation_type::none) {
    result.refusal = Refusal::kCancelled;
    co_return result;
  }
  if (!overload_admits(config_.overload, priority, load())) {
    {
      std::lock_guard lock(stats_mu_);
      stats_.record_refused_overload(priority);
    }
    result.refusal = Refusal::kOverload;
    result.retry_after_s = retry_after(now);
    co_return result;
  }

  auto g = group_for(name);
  auto w = std::make_shared<Waiter>(ex, this, g);
  w->priority = priority;
  Nanos wait = config_.queue.max_wait[priority];
  if (max_wait >= 0 && max_wait < wait) wait = max_wait;
  WakeList wake;
  {
    std::lock_guard lock(g->mu);
    // Nobody may overtake the queue: the fast path is only for an idle queue.
    if (g->queue.empty() && g->limiter.try_acquire()) {
      in_flight_.fetch_add(1, std::memory_order_relaxed);
      w->state = Waiter::State::kDone;
      result.permit = Permit(this, g, g->limiter.ticket(now));
      co_return result;
    }
    if (wait <= 0) {
      w->state = Waiter::State::kDone;
      result.refusal = Refusal::kTimedOut;
    } else {
      auto pushed = g->queue.push(priority, now, wait, w);
      if (pushed.outcome == PushOutcome::kRefusedFull) {
        w->state = Waiter::State::kDone;
        std::lock_guard slock(stats_mu_);
        stats_.record_refused_full(priority);
        result.refusal = Refusal::kQueueFull;
      } else {
        w->handle = pushed.handle;
        slot_waiting_[priority].fetch_add(1, std::memory_order_relaxed);
        if (pushed.evicted) {
          auto& victim = pushed.evicted->value;
          victim->state = Waiter::State::kShed;
          slot_waiting_[pushed.evicted->priority].fetch_sub(1, std::memory_order_relaxed);
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
    result.retry_after_s = retry_after(now);
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
        break;
      case Waiter::State::kQueued: {
        // Still queued: either our own deadline timer fired or the caller was cancelled.
        auto d = g->queue.remove(w->handle, now);
        w->state = Waiter::State::kDone;
        if (d) {
          slot_waiting_[priority].fetch_sub(1, std::memory_order_relaxed);
          result.waited = d->waited;
        }
        // Wake-ups from other threads always change the state first, so an aborted wait of a
        // still-queued waiter can only come from the caller's cancellation slot.
        const bool timed_out = !ec;
        result.refusal = timed_out ? Refusal::kTimedOut : Refusal::kCancelled;
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
  if (!result.ok() && result.refusal != Refusal::kCancelled) {
    result.retry_after_s = retry_after(now);
  }
  co_return result;
}

void AdmissionController::abandon(Waiter& w) {
  std::lock_guard lock(w.group->mu);
  if (w.state != Waiter::State::kQueued) return;  // a granted slot is returned by ~Waiter
  if (w.group->queue.remove(w.handle, clock_.now())) {
    slot_waiting_[w.priority].fetch_sub(1, std::memory_order_relaxed);
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
      s.concurrency_limits.emplace_back(name, g->limiter.limit());
    }
  }
  std::lock_guard lock(stats_mu_);
  stats_.fill(now, s);
  return s;
}

}  // namespace bw::admission
