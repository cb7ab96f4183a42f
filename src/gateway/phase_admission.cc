// Phase 7: admission. A slot of the model group's concurrency limit, taken at once when one is
// free and nobody waits, else waited for in priority order (the queue may refuse: full, shed,
// timed out, or the client left). finish releases the permit.
#include <algorithm>

#include "gateway/phases.h"

namespace bw::gateway {

std::optional<Verdict> phase_admission::try_now(Ctx& c) {
  auto permit =
      c.sh.admission->admit_now(c.group->cfg->name, c.priority.priority, c.reserved_tokens);
  if (!permit.valid()) return std::nullopt;
  c.permit = std::move(permit);
  return Ok{};
}

namespace {

// The group has no capacity now: a request of a priority with capacity fallbacks goes to the
// first of them that has room at once (its concurrency and its deployments' RPM/TPM) instead of
// waiting. The answer names the requested model in x-bellwether-capacity-fallback-from.
bool take_capacity_fallback(Ctx& c) {
  const auto& names =
      c.group->cfg
          ->capacity_fallbacks[static_cast<std::size_t>(std::clamp(c.priority.priority, 0, 2))];
  for (const auto& name : names) {
    const ModelGroup* g = c.rt->group(name);
    if (g == nullptr) continue;
    auto permit = c.sh.admission->admit_now(name, c.priority.priority, c.reserved_tokens);
    if (!permit.valid()) continue;
    c.permit = std::move(permit);
    c.extra.add("x-bellwether-capacity-fallback-from", c.route_model);
    c.route_model = name;
    c.group = g;
    if (const auto* p = c.rt->config().prices.find(name)) c.price = p;
    return true;
  }
  return false;
}

}  // namespace

boost::asio::awaitable<Verdict> phase_admission::run(Ctx& c) {
  if (take_capacity_fallback(c)) co_return Ok{};
  const Nanos t0 = c.now();
  const auto span = tracing::start(c, "bellwether.queue");
  auto admitted = co_await unless_client_gone(
      c,
      c.sh.admission->acquire(c.group->cfg->name, c.priority.priority,
                              admission::AdmissionController::kConfiguredWait, c.reserved_tokens));
  c.queue_wait += c.now() - t0;
  if (admitted.reason != admission::WaitReason::kNone) c.wait_reason = admitted.reason;
  tracing::end(c, span,
               admission::wait_reason_name(admitted.reason == admission::WaitReason::kNone
                                               ? admission::WaitReason::kConcurrency
                                               : admitted.reason));
  if (admitted.ok()) {
    c.permit = std::move(admitted.permit);
    co_return Ok{};
  }
  c.outcome.set(OutcomeKind::kAdmission);
  const auto pr = admission::kPriorityLabels[static_cast<std::size_t>(c.priority.priority)];
  if (admitted.refusal == admission::Refusal::kTimedOut) {
    c.sh.metrics->queue_timeouts.with({pr}).inc();
  } else if (admitted.refusal != admission::Refusal::kCancelled) {
    c.sh.metrics->shed.with({pr, admission::admission_error(admitted.refusal, 0).code}).inc();
  }
  Error e = admission::admission_error(admitted.refusal, admitted.retry_after_s);
  const bool rate = admitted.reason == admission::WaitReason::kDeploymentRpm ||
                    admitted.reason == admission::WaitReason::kDeploymentTpm;
  if (rate && admitted.refusal == admission::Refusal::kTimedOut) {
    // The providers' rate tier is the short resource: a rate limit, with the time the backlog
    // ahead of this request needs to drain at that rate.
    e = errors::make(errors::kUpstreamRateLimited,
                     "Every deployment of '" + c.group->cfg->name +
                         "' is at its provider's rate limit and the wait for capacity would "
                         "exceed this priority's max_wait. Retry after the time in Retry-After.");
    e.retry_after_s = admitted.retry_after_s;
  }
  co_return e;
}

}  // namespace bw::gateway
