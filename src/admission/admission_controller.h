#pragma once
// AdmissionController: concurrency slots per model group, handed out in priority order to
// coroutines running on any worker thread.
//
//   AdmitResult r = co_await admission.acquire("gpt-4.1", priority, max_wait);
//   if (!r.ok()) return error_response(admission_error(r));   // 503 + Retry-After
//   ... forward ...
//   r.permit.complete(upstream_latency, upstream_status);      // or let it go out of scope
//
// Contract:
//  - Thread safe. Each group has its own mutex, held only for O(1)/O(log n) queue work and never
//    across a co_await. A waiter sleeps on a steady_timer of its OWN executor; whoever frees a
//    slot decides who gets it under the group mutex and then posts a wake-up to that waiter's
//    executor. The coroutine calling acquire()/wait_until() must run on a single-threaded
//    executor (one io_context per worker thread, or a strand).
//  - A slot handed to a waiter is never lost: the Permit releases it on destruction, and a waiter
//    whose coroutine is destroyed before it resumes releases it too.
//  - Cancellation: when the awaiting coroutine's cancellation slot fires (client disconnect,
//    `||` with a timeout), the waiter leaves the queue at once and gets Refusal::kCancelled.
//  - The controller must outlive every Permit and every pending acquire()/wait_until().
//  - Groups are created on first use with AdmissionConfig::default_limiter, or up front with
//    configure_group(). A deployment-level limit is just another group name (e.g.
//    "gpt-4.1/azure-east") used with try_acquire() so that the balancer can pick another one.
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>

#include <boost/asio/awaitable.hpp>

#include "admission/admission.h"
#include "admission/rate_capacity.h"
#include "common/clock.h"
#include "common/result.h"

namespace bw::admission {

struct AdmissionConfig {
  QueueConfig queue;                 // per group: max_size, max_wait per priority, aging
  OverloadConfig overload;           // process wide
  LimiterConfig default_limiter;     // for groups not configured with configure_group()
  Nanos stats_window = seconds(60);  // window of the wait-time percentiles
  double min_retry_after_s = 1;      // bounds of the Retry-After suggestion
  double max_retry_after_s = 30;
  std::size_t max_groups = 4096;  // more distinct names share the group "_other"
  PacingConfig pacing;            // how deployments' RPM/TPM are paced (rate_capacity.h)
};

// One deployment's provider rate tier, as configured (0 = none; learned limits still apply).
struct DeploymentCapacityConfig {
  std::string id;
  RateLimits limits;
};

enum class Refusal {
  kNone,                  // admitted
  kQueueFull,             // queue full of equal or higher priority work
  kShedByHigherPriority,  // was waiting, evicted by a more important arrival
  kOverload,              // process-wide threshold for this priority reached
  kTimedOut,              // waited max_wait without getting a slot
  kCancelled,             // the awaiting coroutine was cancelled (client went away)
};
std::string_view refusal_name(Refusal r);

namespace detail {
struct Group;
struct Waiter;
struct DeploymentCap;
}  // namespace detail

class AdmissionController;

// A held concurrency slot. Move-only; releasing (complete(), release() or destruction) frees
// the slot and wakes the next waiter of the group.
class Permit {
 public:
  Permit() = default;
  Permit(Permit&& o) noexcept;
  Permit& operator=(Permit&& o) noexcept;
  Permit(const Permit&) = delete;
  Permit& operator=(const Permit&) = delete;
  ~Permit() { release(); }

  bool valid() const { return owner_ != nullptr; }
  explicit operator bool() const { return valid(); }

  // Releases with an upstream sample for the adaptive limit. upstream_latency: time from sending
  // to the upstream until its answer (headers or first token; queue wait excluded).
  // upstream_status: HTTP status, 0 when no response (429/503 lower the limit at once).
  void complete(Nanos upstream_latency, int upstream_status);
  // Releases without a sample (request never reached the upstream, client went away).
  void release();

  // The deployment whose rate capacity this permit reserved ("" when the group declares no
  // deployments): the first attempt must go there, so the admitted rate stays within its tier.
  const std::string& deployment() const;
  std::int64_t reserved_tokens() const { return tokens_; }
  // The real token usage is known: corrects the reservation (frees or takes token capacity).
  // Valid after release()/complete() too (the Permit keeps its reservation data).
  void settle_tokens(std::int64_t actual);

 private:
  friend class AdmissionController;
  Permit(AdmissionController* owner, std::shared_ptr<detail::Group> group,
         ConcurrencyLimiter::Ticket ticket);
  AdmissionController* owner_ = nullptr;
  std::shared_ptr<detail::Group> group_;
  ConcurrencyLimiter::Ticket ticket_;
  // The rate reservation (outlives the slot: corrected when usage is known).
  AdmissionController* rate_owner_ = nullptr;
  std::shared_ptr<detail::Group> rate_group_;
  std::shared_ptr<detail::DeploymentCap> dep_;
  Nanos reserved_at_ = 0;
  std::int64_t tokens_ = 0;
};

struct AdmitResult {
  Permit permit;  // valid iff refusal == kNone
  Refusal refusal = Refusal::kNone;
  double retry_after_s = 0;               // suggestion for the Retry-After header when refused
  Nanos waited = 0;                       // time spent in the queue
  WaitReason reason = WaitReason::kNone;  // what it waited for (or was refused for)
  bool ok() const { return refusal == Refusal::kNone; }
};

struct WaitResult {
  Refusal refusal = Refusal::kNone;  // kNone, kOverload or kCancelled
  double retry_after_s = 0;
  bool ok() const { return refusal == Refusal::kNone; }
};

// OpenAI-style error for a refusal: 503 "server_error" with codes queue_full,
// shed_by_higher_priority, overloaded, queue_timeout; 499 for cancelled (nobody will read it).
Error admission_error(Refusal refusal, double retry_after_s);

class AdmissionController {
 public:
  // max_wait for acquire(): use the priority's configured maximum.
  static constexpr Nanos kConfiguredWait = -1;

  explicit AdmissionController(AdmissionConfig config,
                               const Clock& clock = SteadyClock::instance());
  ~AdmissionController();
  AdmissionController(const AdmissionController&) = delete;
  AdmissionController& operator=(const AdmissionController&) = delete;

  // Creates the group or changes its limiter (slots in use are kept).
  void configure_group(std::string_view group, const LimiterConfig& limiter);

  // Declares the deployments of a group and their provider rate tiers. From then on every grant
  // of the group also reserves one request and the request's token estimate on a deployment
  // that has room now (round robin among them); when none has, the group's queue waits, in the
  // same priority order, for the earliest refill (pump()). State of deployments whose id stays
  // is kept. An empty list removes rate gating.
  void configure_capacity(std::string_view group, const std::vector<DeploymentCapacityConfig>& d);

  // A provider reported its limits on a response of `deployment` (learned values win while
  // fresh; a 429's Retry-After blocks that deployment until it passes).
  void learn(std::string_view group, std::string_view deployment, const ProviderLimits& p);

  // Rate refills are time-driven: the gateway calls pump() at next_pump_at() (or at least every
  // few milliseconds while something waits for rate); it grants what now fits.
  void pump();
  Nanos next_pump_at() const { return pump_at_.load(std::memory_order_relaxed); }
  // Called (under a group lock: keep it short, e.g. notify a condition variable) when
  // next_pump_at() moves earlier. Set once before traffic starts.
  void set_pump_notifier(std::function<void()> f) { pump_notifier_ = std::move(f); }

  // Waits for a slot of `group`. priority: 0..2 (clamped). max_wait: kConfiguredWait for the
  // priority's maximum, 0 to not wait at all, otherwise min(max_wait, configured maximum).
  // Never throws for admission reasons; a cancelled caller gets Refusal::kCancelled.
  // tokens: the request's token estimate (prompt + output cap) for TPM pacing.
  // A request of a group that waits for rate capacity is refused at once (kTimedOut, with the
  // predicted wait as Retry-After) when its predicted wait already exceeds its max_wait.
  boost::asio::awaitable<AdmitResult> acquire(std::string_view group, int priority,
                                              Nanos max_wait = kConfiguredWait,
                                              std::int64_t tokens = 0);

  // The turn of a key (or tenant) whose request-rate limit is exhausted: a concurrency-1 group
  // `turn_group` per key, so that the key's waiters pass its limit one at a time in priority
  // order while other keys are not affected. The holder waits for the limit (wait_until) and
  // then drops the Permit. Counted under the reason key_limit. An empty Permit with kNone means
  // "no turn available" (too many groups): wait without one.
  boost::asio::awaitable<AdmitResult> acquire_turn(std::string_view turn_group, int priority,
                                                   Nanos max_wait);
  // Waiters (priority <= `priority`) and holders of a turn group, for a wait prediction.
  std::size_t turn_ahead(std::string_view turn_group, int priority) const;
  // Counts a refusal decided outside the queue (a key-limit wait predicted beyond max_wait), so
  // that refusals by reason and priority cover every resource.
  void note_refusal(WaitReason reason, int priority) { count_refusal(reason, priority); }

  // Takes a slot only if one is free right now and nobody of the group is waiting. No overload
  // check: meant for deployment-level limits of a request that was already admitted. It and a
  // slot's release take the clock's turn reading (Clock::turn_now): their times are the
  // limiter's and the rate capacity's, not the end of a duration.
  Permit try_acquire(std::string_view group, std::int64_t tokens = 0);

  // acquire()'s immediate path without a coroutine: a slot if the overload policy admits the
  // priority and a slot is free with nobody waiting; an empty Permit otherwise (then call
  // acquire(), which queues, sheds or refuses).
  Permit admit_now(std::string_view group, int priority, std::int64_t tokens = 0);

  // Sleeps until `deadline` (Clock time) for a rate limit, counted in the queue depth of
  // `priority` and in the overload load meanwhile. Refused at entry by the overload policy; a
  // cancelled caller returns at once with kCancelled. Needs no slot.
  boost::asio::awaitable<WaitResult> wait_until(Nanos deadline, int priority);

  QueueSnapshot snapshot() const;

  // For autoscaling: per deployment, whether its RPM/TPM quota binds now (binding reason) and
  // its remaining capacity; and the backlog by reason (what the waiting requests wait for).
  struct BindingState {
    std::vector<DeploymentCapacityRow> deployments;
    std::array<std::size_t, kNumWaitReasons> backlog_by_reason{};
  };
  BindingState binding_state() const;
  std::string metrics_json() const { return render_queue_metrics_json(snapshot()); }

  // Current totals (cheap, lock free).
  std::size_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  std::size_t queued() const;               // slot waiters + rate-limit waiters
  int limit(std::string_view group) const;  // -1 for an unknown group
  // Waiters of one group for a concurrency slot (0 for an unknown group).
  std::size_t queued(std::string_view group) const;

 private:
  friend class Permit;
  friend struct detail::Waiter;
  using WakeList = std::vector<std::shared_ptr<detail::Waiter>>;

  std::shared_ptr<detail::Group> group_for(std::string_view name);
  std::shared_ptr<detail::Group> turn_group_for(std::string_view name);
  boost::asio::awaitable<AdmitResult> acquire_in(std::shared_ptr<detail::Group> g, int priority,
                                                 Nanos max_wait, std::int64_t tokens, bool turn);
  bool reserve_now_locked(detail::Group& g, Nanos now, std::int64_t tokens, Permit& p);
  double predicted_wait_locked(const detail::Group& g, Nanos now, int priority,
                               std::int64_t tokens) const;
  void note_pump_at(Nanos at);
  void count_refusal(WaitReason r, int priority);
  void fill_capacity(std::vector<DeploymentCapacityRow>& rows,
                     std::array<std::size_t, kNumWaitReasons>& backlog, Nanos now) const;
  std::shared_ptr<detail::Group> find_group(std::string_view name) const;
  void grant_locked(detail::Group& g, Nanos now, WakeList& wake);
  void release_slot(const std::shared_ptr<detail::Group>& g, const ConcurrencyLimiter::Ticket& t,
                    Nanos latency, SampleOutcome outcome);
  static void wake_all(WakeList& wake);
  void abandon(detail::Waiter& w);
  std::size_t load() const;
  double retry_after(Nanos now) const;

  AdmissionConfig config_;
  const Clock& clock_;

  mutable std::shared_mutex groups_mu_;
  std::map<std::string, std::shared_ptr<detail::Group>, std::less<>> groups_;
  const std::uint64_t memo_owner_;  // this controller in the threads' memos of groups_

  mutable std::mutex stats_mu_;  // leaf lock: taken under a group mutex, never the reverse
  AdmissionStats stats_;

  std::atomic<std::size_t> in_flight_{0};
  PerPriority<std::atomic<std::int64_t>> slot_waiting_{};
  PerPriority<std::atomic<std::int64_t>> rate_waiting_{};
  std::atomic<Nanos> pump_at_{kNeverTime};
  std::function<void()> pump_notifier_;
  std::vector<std::shared_ptr<detail::Group>> rate_groups_;  // guarded by groups_mu_
  std::array<PerPriority<std::atomic<std::uint64_t>>, kNumWaitReasons> waits_by_reason_{};
  std::array<PerPriority<std::atomic<std::uint64_t>>, kNumWaitReasons> refusals_by_reason_{};
};

}  // namespace bw::admission
