#include "routing/router.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <optional>
#include <thread>
#include <vector>

namespace bw::routing {
namespace {

constexpr Nanos kT0 = seconds(1000);

DeploymentConfig dep(std::string id, std::uint32_t weight = 1, std::int64_t rpm = 0,
                     std::int64_t tpm = 0) {
  return DeploymentConfig{id, "sim-" + id, "model-" + id, weight, rpm, tpm};
}

RouterConfig base_config() {
  RouterConfig c;
  c.breaker.consecutive_failures = 3;
  c.breaker.failure_rate = 0;
  c.breaker.open_jitter = 0;
  c.breaker.half_open_probes = 1;
  ModelGroupConfig g;
  g.name = "gpt-4.1";
  g.deployments = {dep("a"), dep("b")};
  g.fallbacks = {"gemini-2.5-flash"};
  c.groups.push_back(g);
  ModelGroupConfig f;
  f.name = "gemini-2.5-flash";
  f.deployments = {dep("g1")};
  c.groups.push_back(f);
  return c;
}

Outcome ok(Nanos latency = millis(100), std::int64_t tokens = 0) {
  Outcome o;
  o.kind = OutcomeKind::kSuccess;
  o.status = 200;
  o.latency_ns = latency;
  o.tokens = tokens;
  return o;
}
Outcome failure(OutcomeKind k, int status = 0, Nanos retry_after = 0) {
  Outcome o;
  o.kind = k;
  o.status = status;
  o.retry_after_ns = retry_after;
  o.latency_ns = millis(10);
  return o;
}

// One full attempt: pick, start, finish. Returns the deployment id or "" with the failure.
std::string run(Router& r, std::string_view group, Nanos now, Rng& rng, const Outcome& o,
                PickFailure* why = nullptr) {
  PickResult p = r.pick(group, now, 0, rng);
  if (!p.ticket) {
    if (why) *why = p.failure;
    return "";
  }
  std::string id = p.ticket->deployment().id;
  r.on_start(*p.ticket, now);
  r.on_finish(*p.ticket, o, now, rng);
  return id;
}

TEST(Router, RejectsInvalidConfig) {
  Router r;
  RouterConfig c = base_config();
  c.groups[0].deployments.push_back(dep("a"));
  auto res = r.reload(c);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.error().message, "deployment id 'a' used twice");
  c = base_config();
  c.groups[0].fallbacks = {"nope"};
  EXPECT_EQ(r.reload(c).error().message, "model 'gpt-4.1': unknown fallback model 'nope'");
  EXPECT_FALSE(r.has_group("gpt-4.1"));
  EXPECT_TRUE(r.reload(base_config()).ok());
  EXPECT_TRUE(r.has_group("gpt-4.1"));
}

TEST(Router, UnknownGroup) {
  Router r;
  ASSERT_TRUE(r.reload(base_config()).ok());
  Rng rng(1);
  EXPECT_EQ(r.pick("nope", kT0, 0, rng).failure, PickFailure::kUnknownGroup);
}

TEST(Router, WeightedRoundRobinExactThroughRouter) {
  RouterConfig c = base_config();
  c.groups[0].balancer = BalancerKind::kWeightedRoundRobin;
  c.groups[0].deployments = {dep("a", 2), dep("b", 1)};
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(1);
  std::map<std::string, int> n;
  for (int i = 0; i < 300; ++i) ++n[run(r, "gpt-4.1", kT0 + i * millis(10), rng, ok())];
  EXPECT_EQ(n["a"], 200);
  EXPECT_EQ(n["b"], 100);
}

TEST(Router, P2cMovesAwayFromSlowDeployment) {
  RouterConfig c = base_config();
  c.groups[0].deployments = {dep("fast1"), dep("slow"), dep("fast2")};
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(2024);
  std::map<std::string, int> n;
  constexpr int kN = 6000;
  Nanos now = kT0;
  for (int i = 0; i < kN; ++i) {
    now += millis(10);
    PickResult p = r.pick("gpt-4.1", now, 0, rng);
    ASSERT_TRUE(p.ticket);
    const std::string id = p.ticket->deployment().id;
    r.on_start(*p.ticket, now);
    r.on_finish(*p.ticket, ok(id == "slow" ? millis(800) : millis(100)), now, rng);
    ++n[id];
  }
  const double slow_share = n["slow"] / double(kN);
  std::printf("[ p2c slow ] slow deployment (800 ms vs 100 ms) got %.2f%% of %d requests\n",
              100 * slow_share, kN);
  EXPECT_LT(slow_share, 0.05);
  EXPECT_GT(n["slow"], 0);  // idle decay lets it be re-probed now and then
  EXPECT_NEAR(n["fast1"] / double(kN), n["fast2"] / double(kN), 0.1);
}

TEST(Router, P2cSpreadByWeightWithEqualLatency) {
  RouterConfig c = base_config();
  c.groups[0].deployments = {dep("a", 3), dep("b", 1)};
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(77);
  std::map<std::string, int> n;
  constexpr int kN = 20000;
  for (int i = 0; i < kN; ++i) ++n[run(r, "gpt-4.1", kT0 + i * millis(1), rng, ok())];
  std::printf("[ p2c weight ] weights 3/1 -> %.3f / %.3f\n", n["a"] / double(kN),
              n["b"] / double(kN));
  EXPECT_NEAR(n["a"] / double(kN), 0.75, 0.02);
}

TEST(Router, CapacityIsAvoidedAndReportedWithAvailability) {
  RouterConfig c = base_config();
  c.groups[0].balancer = BalancerKind::kWeightedRoundRobin;
  c.groups[0].deployments = {dep("a", 10, /*rpm=*/2), dep("b", 1, /*rpm=*/3)};
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(1);
  std::string seq;
  for (int i = 0; i < 5; ++i) seq += run(r, "gpt-4.1", kT0 + millis(i), rng, ok());
  EXPECT_EQ(seq, "aabbb");
  PickResult p = r.pick("gpt-4.1", kT0 + seconds(30), 0, rng);
  ASSERT_FALSE(p.ticket);
  EXPECT_EQ(p.failure, PickFailure::kAllAtCapacity);
  EXPECT_EQ(p.available_at, kT0 + seconds(60));  // the first second's requests leave the minute
  EXPECT_EQ(run(r, "gpt-4.1", kT0 + seconds(60), rng, ok()), "a");
}

TEST(Router, TokensPerMinuteCapacity) {
  RouterConfig c = base_config();
  c.groups[0].deployments = {dep("a", 1, 0, /*tpm=*/1000)};
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(1);
  EXPECT_EQ(run(r, "gpt-4.1", kT0, rng, ok(millis(100), 600)), "a");
  EXPECT_EQ(run(r, "gpt-4.1", kT0 + seconds(1), rng, ok(millis(100), 400)), "a");
  PickResult p = r.pick("gpt-4.1", kT0 + seconds(2), 0, rng);
  EXPECT_EQ(p.failure, PickFailure::kAllAtCapacity);
  // Dropping the first 600 tokens brings usage to 400 < 1000.
  EXPECT_EQ(p.available_at, kT0 + seconds(60));
}

TEST(Router, RetryAfterCoolsDownDeployment) {
  Router r;
  ASSERT_TRUE(r.reload(base_config()).ok());
  Rng rng(1);
  // Find deployment a and hand it a 429 with Retry-After 30 s.
  PickResult p = r.pick("gpt-4.1", kT0, /*exclude b=*/0b10, rng);
  ASSERT_TRUE(p.ticket);
  ASSERT_EQ(p.ticket->deployment().id, "a");
  r.on_start(*p.ticket, kT0);
  r.on_finish(*p.ticket, failure(OutcomeKind::kHttp429, 429, seconds(30)), kT0, rng);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(run(r, "gpt-4.1", kT0 + seconds(29), rng, ok()), "b");
  }
  auto only_a = r.pick("gpt-4.1", kT0 + seconds(1), 0b10, rng);
  EXPECT_EQ(only_a.failure, PickFailure::kAllCooling);
  EXPECT_EQ(only_a.available_at, kT0 + seconds(30));
  auto st = r.status(kT0 + seconds(10));
  ASSERT_EQ(st[0].id, "a");
  EXPECT_DOUBLE_EQ(st[0].cooldown_remaining_s, 20.0);
  EXPECT_EQ(st[0].state, BreakerState::kClosed);
  int a = 0;
  for (int i = 0; i < 100; ++i) a += run(r, "gpt-4.1", kT0 + seconds(30), rng, ok()) == "a";
  EXPECT_GT(a, 0);
}

TEST(Router, OpenBreakerAndHalfOpenProbeThroughRouter) {
  RouterConfig c = base_config();
  c.groups[0].deployments = {dep("a")};
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(1);
  for (int i = 0; i < 3; ++i) run(r, "gpt-4.1", kT0, rng, failure(OutcomeKind::kHttp5xx, 503));
  PickResult p = r.pick("gpt-4.1", kT0 + seconds(1), 0, rng);
  EXPECT_EQ(p.failure, PickFailure::kAllOpen);
  EXPECT_EQ(p.available_at, kT0 + seconds(5));
  {
    PickResult probe = r.pick("gpt-4.1", kT0 + seconds(5), 0, rng);
    ASSERT_TRUE(probe.ticket);
    EXPECT_TRUE(probe.ticket->probe());
    r.on_start(*probe.ticket, kT0 + seconds(5));
    EXPECT_EQ(r.status(kT0 + seconds(5))[0].in_flight, 1);
    EXPECT_EQ(r.pick("gpt-4.1", kT0 + seconds(5), 0, rng).failure, PickFailure::kAllOpen);
    // Dropped without a report (client went away): the destructor frees the slot.
  }
  EXPECT_EQ(r.status(kT0 + seconds(5))[0].in_flight, 0);
  PickResult probe = r.pick("gpt-4.1", kT0 + seconds(5), 0, rng);
  ASSERT_TRUE(probe.ticket);
  r.on_start(*probe.ticket, kT0 + seconds(5));
  r.on_finish(*probe.ticket, ok(), kT0 + seconds(5), rng);
  EXPECT_EQ(r.status(kT0 + seconds(5))[0].state, BreakerState::kClosed);
}

TEST(Router, ReloadKeepsStateOfSurvivingDeployments) {
  Router r;
  ASSERT_TRUE(r.reload(base_config()).ok());
  Rng rng(1);
  for (int i = 0; i < 3; ++i) {
    auto p = r.pick("gpt-4.1", kT0, 0b10, rng);
    r.on_finish(*p.ticket, failure(OutcomeKind::kTimeout), kT0, rng);
  }
  // A ticket taken before the reload reports into the same state after it.
  auto held = r.pick("gpt-4.1", kT0, 0b01, rng);
  ASSERT_EQ(held.ticket->deployment().id, "b");
  r.on_start(*held.ticket, kT0);

  RouterConfig c = base_config();
  c.groups[0].deployments = {dep("c"), dep("a"), dep("b")};
  ASSERT_TRUE(r.reload(c).ok());
  auto st = r.status(kT0 + seconds(1));
  ASSERT_EQ(st.size(), 4u);
  EXPECT_EQ(st[0].id, "c");
  EXPECT_EQ(st[0].state, BreakerState::kClosed);
  EXPECT_EQ(st[1].id, "a");
  EXPECT_EQ(st[1].state, BreakerState::kOpen);
  EXPECT_EQ(st[2].in_flight, 1);
  r.on_finish(*held.ticket, ok(), kT0, rng);
  EXPECT_EQ(r.status(kT0 + seconds(1))[2].in_flight, 0);

  // Removed and re-added later: fresh state.
  c.groups[0].deployments = {dep("c")};
  ASSERT_TRUE(r.reload(c).ok());
  c.groups[0].deployments = {dep("c"), dep("a")};
  ASSERT_TRUE(r.reload(c).ok());
  EXPECT_EQ(r.status(kT0 + seconds(1))[1].state, BreakerState::kClosed);
}

TEST(Router, StatusJson) {
  Router r;
  ASSERT_TRUE(r.reload(base_config()).ok());
  const std::string j = status_json(r.status(kT0));
  EXPECT_NE(j.find(R"("id":"a")"), std::string::npos) << j;
  EXPECT_NE(j.find(R"("state":"closed")"), std::string::npos) << j;
  EXPECT_NE(j.find(R"("in_flight":0)"), std::string::npos) << j;
}

TEST(RequestPlan, RetriesOtherDeploymentThenFallsBack) {
  Router r;
  RouterConfig c = base_config();
  c.retry.max_attempts = 4;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(3);
  RequestPlan plan = r.plan("gpt-4.1", kT0);
  EXPECT_EQ(plan.deadline_at(), kT0 + seconds(60));
  std::vector<std::string> tried;
  Nanos now = kT0;
  for (;;) {
    auto step = plan.next(now, rng);
    ASSERT_TRUE(step.ticket) << to_string(step.failure);
    tried.push_back(step.ticket->deployment().id);
    r.on_start(*step.ticket, now);
    const bool last = step.ticket->group() == "gemini-2.5-flash";
    auto d = plan.finish(*step.ticket, last ? ok() : failure(OutcomeKind::kHttp5xx, 503), now,
                         false, rng);
    if (!d.retry()) {
      EXPECT_EQ(d.verdict, RetryVerdict::kSucceeded);
      break;
    }
    EXPECT_LE(d.delay, millis(400));
    now += d.delay;
  }
  ASSERT_EQ(tried.size(), 3u);
  EXPECT_NE(tried[0], tried[1]);  // the failed deployment is excluded
  EXPECT_EQ(tried[2], "g1");
  EXPECT_EQ(plan.visited(), (std::vector<std::string>{"gpt-4.1", "gemini-2.5-flash"}));
  EXPECT_EQ(plan.attempts(), 3);
}

TEST(RequestPlan, AttemptCapAndStreamingStop) {
  Router r;
  ASSERT_TRUE(r.reload(base_config()).ok());  // max_attempts 3
  Rng rng(3);
  RequestPlan plan = r.plan("gpt-4.1", kT0);
  RetryDecision d;
  for (int i = 0; i < 3; ++i) {
    auto step = plan.next(kT0, rng);
    ASSERT_TRUE(step.ticket);
    d = plan.finish(*step.ticket, failure(OutcomeKind::kTimeout), kT0, false, rng);
  }
  EXPECT_EQ(d.verdict, RetryVerdict::kAttemptsExhausted);

  RequestPlan streaming = r.plan("gpt-4.1", kT0);
  auto step = streaming.next(kT0, rng);
  EXPECT_EQ(streaming.finish(*step.ticket, failure(OutcomeKind::kTimeout), kT0, true, rng).verdict,
            RetryVerdict::kResponseStarted);
}

TEST(RequestPlan, EverythingOpenReportsEarliestAvailability) {
  RouterConfig c = base_config();
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(3);
  // Trip a at t0, b at t0+1s, the fallback g1 with a 429 for 2 s at t0+1s.
  auto report = [&](std::string_view group, Nanos now, std::uint64_t mask, const Outcome& o) {
    PickResult p = r.pick(group, now, mask, rng);
    ASSERT_TRUE(p.ticket);
    r.on_finish(*p.ticket, o, now, rng);
  };
  for (int i = 0; i < 3; ++i) report("gpt-4.1", kT0, 0b10, failure(OutcomeKind::kTimeout));
  for (int i = 0; i < 3; ++i) {
    report("gpt-4.1", kT0 + seconds(1), 0b01, failure(OutcomeKind::kTimeout));
  }
  report("gemini-2.5-flash", kT0 + seconds(1), 0, failure(OutcomeKind::kHttp429, 429, seconds(2)));
  RequestPlan plan = r.plan("gpt-4.1", kT0 + seconds(2));
  auto step = plan.next(kT0 + seconds(2), rng);
  ASSERT_FALSE(step.ticket);
  EXPECT_EQ(step.failure, PickFailure::kAllCooling);
  EXPECT_EQ(step.available_at, kT0 + seconds(3));
}

TEST(RequestPlan, ContextOverflowMovesToLargerModelWithoutDelay) {
  RouterConfig c = base_config();
  c.groups[0].context_fallback = "gemini-2.5-flash";
  c.groups[0].fallbacks.clear();
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng(3);
  RequestPlan plan = r.plan("gpt-4.1", kT0);
  auto step = plan.next(kT0, rng);
  Outcome overflow = failure(OutcomeKind::kClientError, 400);
  overflow.context_overflow = true;
  auto d = plan.finish(*step.ticket, overflow, kT0, false, rng);
  EXPECT_EQ(d.verdict, RetryVerdict::kRetry);
  EXPECT_EQ(d.delay, 0);
  EXPECT_EQ(plan.model(), "gemini-2.5-flash");
  step = plan.next(kT0, rng);
  ASSERT_TRUE(step.ticket);
  EXPECT_EQ(step.ticket->deployment().id, "g1");
  EXPECT_EQ(plan.finish(*step.ticket, overflow, kT0, false, rng).verdict,
            RetryVerdict::kNotRetryable);
  EXPECT_EQ(r.retry_budget_usage("gpt-4.1", kT0), (std::pair<std::int64_t, std::int64_t>{1, 0}));
}

// A model whose group has one deployment ("solo" -> s1), optionally backed by gemini-2.5-flash.
RouterConfig solo_config(bool with_fallback, std::int64_t rpm = 0, std::int64_t tpm = 0) {
  RouterConfig c = base_config();
  ModelGroupConfig g;
  g.name = "solo";
  g.deployments = {dep("s1", 1, rpm, tpm)};
  if (with_fallback) g.fallbacks = {"gemini-2.5-flash"};
  c.groups.push_back(g);
  return c;
}

DeploymentStatus status_of(const Router& r, std::string_view id, Nanos now) {
  for (const auto& s : r.status(now)) {
    if (s.id == id) return s;
  }
  ADD_FAILURE() << "no deployment " << id;
  return {};
}

// Trips s1's breaker (3 consecutive failures) at `now`.
void trip_solo(Router& r, Nanos now, Rng& rng) {
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(run(r, "solo", now, rng, failure(OutcomeKind::kHttp5xx, 503)), "s1");
  }
  ASSERT_EQ(status_of(r, "s1", now).state, BreakerState::kOpen);
}

TEST(RequestPlanOneDeployment, AttemptMovesTheDeploymentsCounters) {
  Router r;
  ASSERT_TRUE(r.reload(solo_config(false, /*rpm=*/10, /*tpm=*/1000)).ok());
  Rng rng(5);
  RequestPlan plan = r.plan("solo", kT0);
  auto step = plan.next(kT0, rng);
  ASSERT_TRUE(step.ticket) << to_string(step.failure);
  EXPECT_EQ(step.ticket->deployment().id, "s1");
  EXPECT_EQ(step.ticket->group(), "solo");
  EXPECT_FALSE(step.ticket->probe());
  DeploymentStatus s = status_of(r, "s1", kT0);
  EXPECT_EQ(s.rpm_used, 1);   // claimed at the pick
  EXPECT_EQ(s.in_flight, 0);  // not sent yet
  r.on_start(*step.ticket, kT0);
  EXPECT_EQ(status_of(r, "s1", kT0).in_flight, 1);
  const RetryDecision d = plan.finish(*step.ticket, ok(millis(120), 250), kT0, false, rng);
  EXPECT_EQ(d.verdict, RetryVerdict::kSucceeded);
  s = status_of(r, "s1", kT0);
  EXPECT_EQ(s.in_flight, 0);
  EXPECT_EQ(s.rpm_used, 1);
  EXPECT_EQ(s.tpm_used, 250);
  EXPECT_DOUBLE_EQ(s.ewma_ms, 120.0);  // the balancer's latency, kept for a later second one
  EXPECT_EQ(plan.attempts(), 1);
  EXPECT_EQ(plan.visited(), (std::vector<std::string>{"solo"}));
  EXPECT_EQ(plan.model(), "solo");
  EXPECT_EQ(r.retry_budget_usage("solo", kT0), (std::pair<std::int64_t, std::int64_t>{1, 0}));

  // A failure is counted by the breaker through the plan as well.
  for (int i = 0; i < 3; ++i) {
    RequestPlan p = r.plan("solo", kT0 + seconds(1));
    auto st = p.next(kT0 + seconds(1), rng);
    ASSERT_TRUE(st.ticket);
    r.on_start(*st.ticket, kT0 + seconds(1));
    p.finish(*st.ticket, failure(OutcomeKind::kHttp5xx, 500), kT0 + seconds(1), false, rng);
    EXPECT_EQ(status_of(r, "s1", kT0 + seconds(1)).in_flight, 0);
  }
  EXPECT_EQ(status_of(r, "s1", kT0 + seconds(1)).state, BreakerState::kOpen);
}

TEST(RequestPlanOneDeployment, OpenBreakerFallsBackOrReportsWhenItOpens) {
  {
    Router r;
    ASSERT_TRUE(r.reload(solo_config(true)).ok());
    Rng rng(6);
    trip_solo(r, kT0, rng);
    RequestPlan plan = r.plan("solo", kT0 + seconds(1));
    auto step = plan.next(kT0 + seconds(1), rng);
    ASSERT_TRUE(step.ticket) << to_string(step.failure);
    EXPECT_EQ(step.ticket->deployment().id, "g1");
    EXPECT_EQ(plan.visited(), (std::vector<std::string>{"solo", "gemini-2.5-flash"}));
    EXPECT_EQ(plan.attempts(), 1);
    // The open deployment gave nothing: no RPM unit, no probe slot.
    EXPECT_EQ(status_of(r, "s1", kT0 + seconds(1)).rpm_used, 3);
  }
  Router r;
  ASSERT_TRUE(r.reload(solo_config(false)).ok());
  Rng rng(7);
  trip_solo(r, kT0, rng);
  {
    RequestPlan plan = r.plan("solo", kT0 + seconds(1));
    auto step = plan.next(kT0 + seconds(1), rng);
    ASSERT_FALSE(step.ticket);
    EXPECT_EQ(step.failure, PickFailure::kAllOpen);
    EXPECT_EQ(step.available_at, kT0 + seconds(5));  // open_base, no jitter
    EXPECT_EQ(plan.attempts(), 0);
  }
  // Half-open: one probe (half_open_probes = 1). While it is out, nothing else is let through;
  // dropped unfinished, its slot and in-flight count come back.
  const Nanos later = kT0 + seconds(5);
  {
    RequestPlan plan = r.plan("solo", later);
    auto probe = plan.next(later, rng);
    ASSERT_TRUE(probe.ticket);
    EXPECT_TRUE(probe.ticket->probe());
    r.on_start(*probe.ticket, later);
    EXPECT_EQ(status_of(r, "s1", later).in_flight, 1);
    RequestPlan other = r.plan("solo", later);
    auto none = other.next(later, rng);
    EXPECT_FALSE(none.ticket);
    EXPECT_EQ(none.failure, PickFailure::kAllOpen);
  }
  EXPECT_EQ(status_of(r, "s1", later).in_flight, 0);
  RequestPlan plan = r.plan("solo", later);
  auto probe = plan.next(later, rng);
  ASSERT_TRUE(probe.ticket);
  EXPECT_TRUE(probe.ticket->probe());
  r.on_start(*probe.ticket, later);
  EXPECT_EQ(plan.finish(*probe.ticket, ok(), later, false, rng).verdict, RetryVerdict::kSucceeded);
  EXPECT_EQ(status_of(r, "s1", later).state, BreakerState::kClosed);
}

TEST(RequestPlanOneDeployment, RetryGoesBackToTheOnlyDeployment) {
  Router r;
  ASSERT_TRUE(r.reload(solo_config(false)).ok());
  Rng rng(8);
  RequestPlan plan = r.plan("solo", kT0);
  auto step = plan.next(kT0, rng);
  ASSERT_TRUE(step.ticket);
  r.on_start(*step.ticket, kT0);
  RetryDecision d = plan.finish(*step.ticket, failure(OutcomeKind::kHttp5xx, 503), kT0, false, rng);
  ASSERT_EQ(d.verdict, RetryVerdict::kRetry);
  EXPECT_LE(d.delay, millis(100));
  plan.next(step, kT0 + d.delay, rng);  // in place: the same deployment, its exclusion cleared
  ASSERT_TRUE(step.ticket) << to_string(step.failure);
  EXPECT_EQ(step.ticket->deployment().id, "s1");
  r.on_start(*step.ticket, kT0 + d.delay);
  d = plan.finish(*step.ticket, ok(), kT0 + d.delay, false, rng);
  EXPECT_EQ(d.verdict, RetryVerdict::kSucceeded);
  EXPECT_EQ(plan.attempts(), 2);
  EXPECT_EQ(plan.visited(), (std::vector<std::string>{"solo"}));
  EXPECT_EQ(r.retry_budget_usage("solo", kT0), (std::pair<std::int64_t, std::int64_t>{1, 1}));
  const DeploymentStatus s = status_of(r, "s1", kT0 + seconds(1));
  EXPECT_EQ(s.consecutive_failures, 0);
  EXPECT_EQ(s.rpm_used, 2);
  EXPECT_EQ(s.in_flight, 0);
}

// A Retry-After is waited for when the retry must return to the deployment that sent it, and
// not when a fallback can take the retry.
TEST(RequestPlanOneDeployment, RetryAfterWaitedForOnlyWithoutAnotherTarget) {
  for (const bool with_fallback : {false, true}) {
    Router r;
    ASSERT_TRUE(r.reload(solo_config(with_fallback)).ok());
    Rng rng(9);
    RequestPlan plan = r.plan("solo", kT0);
    auto step = plan.next(kT0, rng);
    ASSERT_TRUE(step.ticket);
    r.on_start(*step.ticket, kT0);
    const RetryDecision d =
        plan.finish(*step.ticket, failure(OutcomeKind::kHttp429, 429, seconds(2)), kT0, false, rng);
    ASSERT_EQ(d.verdict, RetryVerdict::kRetry) << with_fallback;
    const Nanos at = kT0 + d.delay;
    if (with_fallback) {
      EXPECT_LE(d.delay, millis(100));
      // s1 cools down for 2 s and is excluded: the fallback takes the retry.
      plan.next(step, at, rng);
      ASSERT_TRUE(step.ticket);
      EXPECT_EQ(step.ticket->deployment().id, "g1");
    } else {
      EXPECT_GE(d.delay, seconds(2));
      plan.next(step, at, rng);
      ASSERT_TRUE(step.ticket) << to_string(step.failure);
      EXPECT_EQ(step.ticket->deployment().id, "s1");
    }
  }
}

TEST(RequestPlanOneDeployment, AtCapacityReportsWhenItFreesUpOrFallsBack) {
  for (const bool with_fallback : {false, true}) {
    Router r;
    ASSERT_TRUE(r.reload(solo_config(with_fallback, /*rpm=*/1)).ok());
    Rng rng(10);
    EXPECT_EQ(run(r, "solo", kT0, rng, ok()), "s1");
    RequestPlan plan = r.plan("solo", kT0 + seconds(1));
    auto step = plan.next(kT0 + seconds(1), rng);
    if (with_fallback) {
      ASSERT_TRUE(step.ticket);
      EXPECT_EQ(step.ticket->deployment().id, "g1");
    } else {
      ASSERT_FALSE(step.ticket);
      EXPECT_EQ(step.failure, PickFailure::kAllAtCapacity);
      EXPECT_EQ(step.available_at, kT0 + seconds(60));
    }
    EXPECT_EQ(status_of(r, "s1", kT0 + seconds(1)).rpm_used, 1);
  }
}

TEST(RequestPlanOneDeployment, PinnedAndUnknown) {
  Router r;
  ASSERT_TRUE(r.reload(solo_config(false)).ok());
  Rng rng(11);
  RequestPlan plan = r.plan("solo", kT0);
  plan.pin_first("s1");
  auto step = plan.next(kT0, rng);
  ASSERT_TRUE(step.ticket);
  EXPECT_EQ(step.ticket->deployment().id, "s1");
  EXPECT_EQ(plan.attempts(), 1);
  step.ticket.reset();  // unfinished: nothing stays counted
  EXPECT_EQ(status_of(r, "s1", kT0).in_flight, 0);

  RequestPlan unknown = r.plan("nope", kT0);
  unknown.pin_first("s1");
  auto none = unknown.next(kT0, rng);
  EXPECT_FALSE(none.ticket);
  EXPECT_EQ(none.failure, PickFailure::kUnknownGroup);
  EXPECT_EQ(unknown.visited(), (std::vector<std::string>{"nope"}));
  EXPECT_EQ(unknown.attempts(), 0);
}

TEST(RouterThreads, ConcurrentPickFinishKeepsCountsConsistent) {
  RouterConfig c = base_config();
  c.groups[0].deployments = {dep("a", 1, 0, 0), dep("b", 2), dep("c", 1)};
  c.breaker.consecutive_failures = 2;
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  std::atomic<int> picked{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Rng rng(100 + t);
      for (int i = 0; i < 5000; ++i) {
        const Nanos now = kT0 + i * millis(1);
        auto p = r.pick("gpt-4.1", now, 0, rng);
        if (!p.ticket) continue;
        ++picked;
        r.on_start(*p.ticket, now);
        const bool fail = rng.below(10) == 0;
        r.on_finish(*p.ticket, fail ? failure(OutcomeKind::kHttp5xx, 502) : ok(), now, rng);
        if (t == 0 && i == 2500) {
          EXPECT_TRUE(r.reload(c).ok());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_GT(picked.load(), 0);
  for (const auto& s : r.status(kT0 + seconds(100))) EXPECT_EQ(s.in_flight, 0) << s.id;
}

// A group of one deployment is found eligible and claimed under one lock: half-open probes
// are never handed out beyond the configured number, whatever the threads do.
TEST(RouterThreads, SingleDeploymentProbesStayBounded) {
  RouterConfig c = base_config();
  c.groups[1].deployments = {dep("g1")};
  c.breaker.consecutive_failures = 1;
  c.breaker.half_open_probes = 2;
  c.breaker.open_base = seconds(1);
  c.breaker.open_max = seconds(1);
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  Rng rng0(1);
  EXPECT_EQ(run(r, "gemini-2.5-flash", kT0, rng0, failure(OutcomeKind::kHttp5xx, 502)), "g1");
  PickFailure why = PickFailure::kNone;
  EXPECT_EQ(run(r, "gemini-2.5-flash", kT0, rng0, ok(), &why), "");
  EXPECT_EQ(why, PickFailure::kAllOpen);
  // Half-open from kT0 + 1 s: the threads hold their tickets, so at most two are granted.
  const Nanos later = kT0 + seconds(2);
  std::atomic<int> granted{0};
  std::vector<std::optional<Ticket>> held(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      Rng rng(200 + t);
      auto p = r.pick("gemini-2.5-flash", later, 0, rng);
      if (!p.ticket) return;
      ++granted;
      r.on_start(*p.ticket, later);
      held[t] = std::move(p.ticket);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(granted.load(), 2);
  std::int64_t in_flight = 0;
  for (const auto& s : r.status(later)) {
    if (s.id == "g1") in_flight = s.in_flight;
  }
  EXPECT_EQ(in_flight, 2);
  held.clear();  // dropped unfinished: reported as cancelled, counts and probe slots return
  for (const auto& s : r.status(later)) {
    if (s.id == "g1") {
      EXPECT_EQ(s.in_flight, 0);
    }
  }
  EXPECT_EQ(run(r, "gemini-2.5-flash", later, rng0, ok()), "g1");
}

// Each thread reads the routing snapshot through its own cache: a reload is seen by a thread
// that had cached the previous one.
TEST(RouterThreads, ReloadIsSeenByAThreadThatCachedTheOldSnapshot) {
  RouterConfig c = base_config();
  Router r;
  ASSERT_TRUE(r.reload(c).ok());
  std::atomic<int> phase{0};
  bool before = true, after = false;
  std::thread reader([&] {
    before = r.has_group("o3");
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
    after = r.has_group("o3");
  });
  while (phase.load() != 1) std::this_thread::yield();
  ModelGroupConfig g;
  g.name = "o3";
  g.deployments = {dep("o3-a")};
  c.groups.push_back(g);
  ASSERT_TRUE(r.reload(c).ok());
  phase = 2;
  reader.join();
  EXPECT_FALSE(before);
  EXPECT_TRUE(after);
  // Two routers on one thread never read each other's snapshot from the cache.
  Router other;
  EXPECT_FALSE(other.has_group("o3"));
  EXPECT_TRUE(r.has_group("o3"));
}

}  // namespace
}  // namespace bw::routing
