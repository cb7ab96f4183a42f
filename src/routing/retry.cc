#include "routing/retry.h"

#include <algorithm>
#include <cmath>

namespace bw::routing {

namespace {
constexpr int kBudgetBuckets = 10;
}  // namespace

Nanos backoff_ceiling(const RetryConfig& cfg, int retry) {
  if (retry < 1) retry = 1;
  const double grown = static_cast<double>(cfg.base) * std::ldexp(1.0, std::min(retry - 1, 62));
  return static_cast<Nanos>(std::min(grown, static_cast<double>(cfg.cap)));
}

Nanos full_jitter_backoff(const RetryConfig& cfg, int retry, Rng& rng) {
  const Nanos ceiling = backoff_ceiling(cfg, retry);
  if (ceiling <= 0) return 0;
  return static_cast<Nanos>(rng.below(static_cast<std::uint64_t>(ceiling) + 1));
}

bool is_retryable(const RetryConfig& cfg, const Outcome& o) {
  switch (o.kind) {
    case OutcomeKind::kConnectError:
    case OutcomeKind::kTimeout:
    case OutcomeKind::kHttp429:
      return true;
    case OutcomeKind::kHttp5xx:
      return std::find(cfg.retry_statuses.begin(), cfg.retry_statuses.end(), o.status) !=
             cfg.retry_statuses.end();
    default:
      return false;
  }
}

RetryBudget::RetryBudget(const RetryConfig& cfg)
    : requests_(cfg.budget_window, kBudgetBuckets),
      ratio_(cfg.budget_ratio),
      min_per_s_(cfg.budget_min_per_s),
      retries_(cfg.budget_window, kBudgetBuckets) {}

void RetryBudget::reconfigure(const RetryConfig& cfg) {
  std::lock_guard lock(mu_);
  ratio_ = cfg.budget_ratio;
  min_per_s_ = cfg.budget_min_per_s;
  RollingWindow<1> fresh(cfg.budget_window, kBudgetBuckets);
  if (retries_.window() != fresh.window()) {
    retries_ = fresh;
    requests_.reset(cfg.budget_window);
  }
}

void RetryBudget::record_request(Nanos now) {
  requests_.record(now);
}

bool RetryBudget::try_withdraw(Nanos now) {
  std::lock_guard lock(mu_);
  // Read under the lock: a withdrawal that another thread made before this one took the lock
  // comes after that thread's deposits, and so does this read of them. Read before the lock, a
  // thread held up between the two could weigh the others' later retries against its older
  // count of their requests, and refuse a retry the budget has room for.
  const auto requests = static_cast<double>(requests_.sum(now));
  const double allowed = ratio_ * requests + min_per_s_ * to_seconds(retries_.window());
  if (static_cast<double>(retries_.sum(now, 0) + 1) > allowed) return false;
  retries_.add(now, 0, 1);
  return true;
}

std::int64_t RetryBudget::requests(Nanos now) const {
  return static_cast<std::int64_t>(requests_.sum(now));
}

std::int64_t RetryBudget::retries(Nanos now) const {
  std::lock_guard lock(mu_);
  return retries_.sum(now, 0);
}

const char* to_string(RetryVerdict v) {
  switch (v) {
    case RetryVerdict::kRetry:
      return "retry";
    case RetryVerdict::kSucceeded:
      return "succeeded";
    case RetryVerdict::kNotRetryable:
      return "not_retryable";
    case RetryVerdict::kResponseStarted:
      return "response_started";
    case RetryVerdict::kAttemptsExhausted:
      return "attempts_exhausted";
    case RetryVerdict::kDeadline:
      return "deadline";
    case RetryVerdict::kBudgetExhausted:
      return "budget_exhausted";
  }
  return "unknown";
}

RetryDecision decide_retry(const RetryConfig& cfg, const AttemptState& st, const Outcome& o,
                           Nanos now, RetryBudget* budget, Rng& rng) {
  if (o.kind == OutcomeKind::kSuccess) return {RetryVerdict::kSucceeded, 0};
  // Nobody is waiting for a cancelled request's answer.
  if (o.kind == OutcomeKind::kCancelled) return {RetryVerdict::kNotRetryable, 0};
  if (!is_retryable(cfg, o)) return {RetryVerdict::kNotRetryable, 0};
  if (st.response_started) return {RetryVerdict::kResponseStarted, 0};
  if (st.attempts >= cfg.max_attempts) return {RetryVerdict::kAttemptsExhausted, 0};
  const Nanos delay = std::max(full_jitter_backoff(cfg, st.attempts, rng), o.retry_after_ns);
  if (now + delay >= st.deadline_at) return {RetryVerdict::kDeadline, 0};
  // Withdraw last, so a retry that would be refused anyway does not spend budget.
  if (budget != nullptr && !budget->try_withdraw(now)) return {RetryVerdict::kBudgetExhausted, 0};
  return {RetryVerdict::kRetry, delay};
}

}  // namespace bw::routing
