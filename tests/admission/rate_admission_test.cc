// The admission queue waiting for deployments' RPM/TPM and for key-limit turns (fake clock; the
// waiters' timers only matter for their max_wait, which these tests never reach).
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "admission/admission_controller.h"

namespace bw::admission {
namespace {

namespace asio = boost::asio;

struct Pending {
  std::optional<AdmitResult> result;
  bool done() const { return result.has_value(); }
  bool ok() const { return done() && result->ok(); }
};

void poll(asio::io_context& io) {
  io.poll();
  io.restart();
}

std::shared_ptr<Pending> start(asio::io_context& io, AdmissionController& ac, std::string group,
                               int priority, std::int64_t tokens = 0,
                               Nanos max_wait = AdmissionController::kConfiguredWait) {
  auto p = std::make_shared<Pending>();
  asio::co_spawn(
      io,
      [&ac, p, group, priority, tokens, max_wait]() -> asio::awaitable<void> {
        p->result = co_await ac.acquire(group, priority, max_wait, tokens);
      },
      asio::detached);
  poll(io);
  return p;
}

std::shared_ptr<Pending> start_turn(asio::io_context& io, AdmissionController& ac,
                                    std::string group, int priority) {
  auto p = std::make_shared<Pending>();
  asio::co_spawn(
      io,
      [&ac, p, group, priority]() -> asio::awaitable<void> {
        p->result = co_await ac.acquire_turn(group, priority, AdmissionController::kConfiguredWait);
      },
      asio::detached);
  poll(io);
  return p;
}

AdmissionConfig config() {
  AdmissionConfig c;
  c.default_limiter.mode = LimitMode::kFixed;
  c.default_limiter.initial = 100;  // concurrency never binds here
  c.queue.aging = 0;
  c.queue.max_wait = {seconds(60), seconds(60), seconds(60)};
  return c;
}

void tick(FakeClock& clock, asio::io_context& io, AdmissionController& ac, Nanos d) {
  clock.advance(d);
  ac.pump();
  poll(io);
}

TEST(RateAdmission, WaitsForTheRpmRefillInPriorityOrder) {
  FakeClock clock;
  AdmissionController ac(config(), clock);
  ac.configure_capacity("g", {{"g/a", {.rpm = 60, .tpm = 0}}});  // 1/s, burst 1
  asio::io_context io;
  auto first = start(io, ac, "g", 1);
  ASSERT_TRUE(first->ok());
  EXPECT_EQ(first->result->permit.deployment(), "g/a");
  auto batch = start(io, ac, "g", 2);
  auto standard = start(io, ac, "g", 1);
  auto urgent = start(io, ac, "g", 0);
  EXPECT_FALSE(batch->done() || standard->done() || urgent->done());
  EXPECT_EQ(ac.next_pump_at(), clock.now() + seconds(1));
  auto snap = ac.snapshot();
  EXPECT_EQ(snap.waiting_by_reason[static_cast<int>(WaitReason::kDeploymentRpm)], 3u);
  ASSERT_EQ(snap.deployments.size(), 1u);
  EXPECT_EQ(snap.deployments[0].binding, WaitReason::kDeploymentRpm);
  EXPECT_EQ(snap.deployments[0].remaining_requests, 59);

  tick(clock, io, ac, millis(999));
  EXPECT_FALSE(urgent->done());  // never before the refill
  tick(clock, io, ac, millis(1));
  EXPECT_TRUE(urgent->ok());
  EXPECT_FALSE(standard->done() || batch->done());
  EXPECT_EQ(urgent->result->reason, WaitReason::kDeploymentRpm);
  tick(clock, io, ac, seconds(1));
  EXPECT_TRUE(standard->ok());
  EXPECT_FALSE(batch->done());
  tick(clock, io, ac, seconds(1));
  EXPECT_TRUE(batch->ok());
  snap = ac.snapshot();
  EXPECT_EQ(snap.waits_by_reason[static_cast<int>(WaitReason::kDeploymentRpm)][0], 1u);
  EXPECT_EQ(snap.waits_by_reason[static_cast<int>(WaitReason::kDeploymentRpm)][2], 1u);
}

TEST(RateAdmission, OneQueueForEveryResource) {
  // Concurrency 1 and an RPM: a P0 that arrives while a P2 waits for the slot is served first,
  // and then the rate decides, in the same order.
  FakeClock clock;
  AdmissionConfig c = config();
  c.default_limiter.initial = 1;
  AdmissionController ac(c, clock);
  ac.configure_capacity("g", {{"g/a", {.rpm = 120, .tpm = 0}}});  // 2/s, burst 2
  asio::io_context io;
  auto running = start(io, ac, "g", 1);
  ASSERT_TRUE(running->ok());
  auto batch = start(io, ac, "g", 2);
  auto urgent = start(io, ac, "g", 0);
  EXPECT_EQ(batch->done(), false);
  running->result->permit.release();  // the slot frees; the rate still has 1 of its burst
  poll(io);
  EXPECT_TRUE(urgent->ok());
  EXPECT_EQ(urgent->result->reason, WaitReason::kConcurrency);
  urgent->result->permit.release();
  poll(io);
  EXPECT_FALSE(batch->done());  // the slot is free, the rate is spent
  tick(clock, io, ac, millis(500));
  EXPECT_TRUE(batch->ok());
}

TEST(RateAdmission, WaiterIsServedByTheDeploymentThatFreesFirst) {
  FakeClock clock;
  AdmissionController ac(config(), clock);
  ac.configure_capacity("g", {{"g/a", {.rpm = 60, .tpm = 0}}, {"g/b", {.rpm = 60, .tpm = 0}}});
  ProviderLimits told;
  told.retry_after = seconds(30);
  ac.learn("g", "g/b", told);  // b answered 429, Retry-After 30 s
  asio::io_context io;
  auto p1 = start(io, ac, "g", 1);
  ASSERT_TRUE(p1->ok());
  EXPECT_EQ(p1->result->permit.deployment(), "g/a");
  auto p2 = start(io, ac, "g", 1);
  EXPECT_FALSE(p2->done());
  tick(clock, io, ac, seconds(1));
  ASSERT_TRUE(p2->ok());
  EXPECT_EQ(p2->result->permit.deployment(), "g/a");
  // Now a is blocked for long; b's pause ends at 30 s and the next waiter goes there.
  ProviderLimits long_pause;
  long_pause.retry_after = seconds(100);
  ac.learn("g", "g/a", long_pause);
  auto p3 = start(io, ac, "g", 1);
  EXPECT_FALSE(p3->done());
  EXPECT_EQ(ac.next_pump_at(), seconds(1000) + seconds(30));
  tick(clock, io, ac, seconds(28));
  EXPECT_FALSE(p3->done());
  tick(clock, io, ac, seconds(1));
  ASSERT_TRUE(p3->ok());
  EXPECT_EQ(p3->result->permit.deployment(), "g/b");
}

TEST(RateAdmission, TokenWaitUsesTheEstimateAndTheCorrection) {
  FakeClock clock;
  AdmissionController ac(config(), clock);
  ac.configure_capacity("g", {{"g/a", {.rpm = 0, .tpm = 6000}}});  // 100 tokens/s, burst 100
  asio::io_context io;
  auto big = start(io, ac, "g", 1, 100);
  ASSERT_TRUE(big->ok());
  auto next = start(io, ac, "g", 1, 100);
  EXPECT_FALSE(next->done());
  EXPECT_EQ(ac.snapshot().waiting_by_reason[static_cast<int>(WaitReason::kDeploymentTpm)], 1u);
  // Without a correction it would go at +1 s. The answer used 10 tokens: 90 come back, and it
  // goes as soon as the 10 used leave the one-second burst (+100 ms).
  big->result->permit.settle_tokens(10);
  poll(io);
  EXPECT_EQ(ac.next_pump_at(), clock.now() + millis(100));
  tick(clock, io, ac, millis(99));
  EXPECT_FALSE(next->done());
  tick(clock, io, ac, millis(1));
  ASSERT_TRUE(next->ok());
  EXPECT_EQ(next->result->reason, WaitReason::kDeploymentTpm);
}

TEST(RateAdmission, AWaitBeyondMaxWaitIsRefusedAtOnceWithTheExactRetryAfter) {
  FakeClock clock;
  AdmissionController ac(config(), clock);
  ac.configure_capacity("g", {{"g/a", {.rpm = 61, .tpm = 0}}});  // 1 per second over 61 s
  asio::io_context io;
  std::vector<std::shared_ptr<Pending>> waiting;
  auto first = start(io, ac, "g", 1);
  ASSERT_TRUE(first->ok());
  for (int i = 0; i < 9; ++i) waiting.push_back(start(io, ac, "g", 1));
  // 9 ahead + itself at 1/s: 10 s, more than its 5 s.
  auto late = start(io, ac, "g", 1, 0, seconds(5));
  ASSERT_TRUE(late->done());
  EXPECT_EQ(late->result->refusal, Refusal::kTimedOut);
  EXPECT_EQ(late->result->reason, WaitReason::kDeploymentRpm);
  EXPECT_NEAR(late->result->retry_after_s, 10.0, 0.01);
  // A P0 jumps the queue: only itself ahead, it fits.
  auto urgent = start(io, ac, "g", 0, 0, seconds(5));
  EXPECT_FALSE(urgent->done());
  EXPECT_EQ(ac.snapshot().refusals_by_reason[static_cast<int>(WaitReason::kDeploymentRpm)][1], 1u);
}

TEST(RateAdmission, LearnedHeadersPaceWithoutConfiguredLimits) {
  FakeClock clock;
  AdmissionController ac(config(), clock);
  ac.configure_capacity("g", {{"g/a", {}}});
  asio::io_context io;
  ProviderLimits p;
  p.limit_requests = 600;
  p.remaining_requests = 0;
  p.reset_requests = seconds(60);
  ac.learn("g", "g/a", p);
  auto w = start(io, ac, "g", 1);
  EXPECT_FALSE(w->done());
  tick(clock, io, ac, millis(101));  // 600 over 60 s refill one per 100 ms
  EXPECT_TRUE(w->ok());
  auto snap = ac.snapshot();
  ASSERT_EQ(snap.deployments.size(), 1u);
  EXPECT_TRUE(snap.deployments[0].learned_fresh);
  EXPECT_EQ(snap.deployments[0].configured_rpm, 0);
  EXPECT_EQ(snap.deployments[0].effective_rpm, 600);
}

TEST(RateAdmission, KeyTurnsGoInPriorityOrderAndKeysDoNotShareThem) {
  FakeClock clock;
  AdmissionController ac(config(), clock);
  asio::io_context io;
  auto holder = start_turn(io, ac, "key:a", 2);
  ASSERT_TRUE(holder->ok());
  auto batch = start_turn(io, ac, "key:a", 2);
  auto urgent = start_turn(io, ac, "key:a", 0);
  auto other_key = start_turn(io, ac, "key:b", 2);
  EXPECT_TRUE(other_key->ok());  // another key's burst does not delay it
  EXPECT_FALSE(batch->done() || urgent->done());
  EXPECT_EQ(ac.turn_ahead("key:a", 0), 2u);  // the holder and the P0
  EXPECT_EQ(ac.turn_ahead("key:a", 2), 3u);
  EXPECT_EQ(ac.snapshot().waiting_by_reason[static_cast<int>(WaitReason::kKeyLimit)], 2u);
  holder->result->permit.release();
  poll(io);
  EXPECT_TRUE(urgent->ok());
  EXPECT_EQ(urgent->result->reason, WaitReason::kKeyLimit);
  EXPECT_FALSE(batch->done());
  urgent->result->permit.release();
  poll(io);
  EXPECT_TRUE(batch->ok());
}

}  // namespace
}  // namespace bw::admission
