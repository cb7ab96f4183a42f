#include "admission/admission_controller.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace bw::admission {
namespace {

namespace asio = boost::asio;

LimiterConfig fixed(int n) {
  LimiterConfig c;
  c.mode = LimitMode::kFixed;
  c.initial = n;
  return c;
}

AdmissionConfig config_with_limit(int n) {
  AdmissionConfig c;
  c.default_limiter = fixed(n);
  c.queue.aging = 0;
  return c;
}

// Runs acquire() in a coroutine and keeps its result for the test body to inspect.
struct Pending {
  std::optional<AdmitResult> result;
  bool done() const { return result.has_value(); }
};

std::shared_ptr<Pending> start(asio::io_context& io, AdmissionController& ac, std::string group,
                               int priority, Nanos max_wait = AdmissionController::kConfiguredWait,
                               asio::cancellation_signal* cancel = nullptr) {
  auto p = std::make_shared<Pending>();
  auto body = [&ac, p, group, priority, max_wait]() -> asio::awaitable<void> {
    p->result = co_await ac.acquire(group, priority, max_wait);
  };
  if (cancel != nullptr) {
    asio::co_spawn(io, body, asio::bind_cancellation_slot(cancel->slot(), asio::detached));
  } else {
    asio::co_spawn(io, body, asio::detached);
  }
  io.poll();
  io.restart();
  return p;
}

void poll(asio::io_context& io) {
  io.poll();
  io.restart();
}

TEST(AdmissionController, AdmitsUpToTheLimitThenServesByPriority) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(2), clock);
  asio::io_context io;
  auto a = start(io, ac, "g", 1);
  auto b = start(io, ac, "g", 1);
  ASSERT_TRUE(a->done() && a->result->ok());
  ASSERT_TRUE(b->done() && b->result->ok());
  EXPECT_EQ(ac.in_flight(), 2u);

  auto batch = start(io, ac, "g", 2);
  auto standard = start(io, ac, "g", 1);
  auto urgent = start(io, ac, "g", 0);
  EXPECT_FALSE(batch->done() || standard->done() || urgent->done());
  EXPECT_EQ(ac.queued(), 3u);
  auto snap = ac.snapshot();
  EXPECT_EQ(snap.depth, (PerPriority<std::size_t>{1, 1, 1}));
  EXPECT_EQ(snap.in_flight, 2u);

  clock.advance(millis(30));
  a->result->permit.complete(millis(25), 200);
  poll(io);
  ASSERT_TRUE(urgent->done());
  EXPECT_TRUE(urgent->result->ok());
  EXPECT_EQ(urgent->result->waited, millis(30));
  EXPECT_FALSE(standard->done());
  EXPECT_FALSE(batch->done());

  b->result->permit.release();
  poll(io);
  ASSERT_TRUE(standard->done());
  EXPECT_TRUE(standard->result->ok());
  EXPECT_FALSE(batch->done());

  urgent->result->permit = Permit();  // move-assign releases
  poll(io);
  ASSERT_TRUE(batch->done());
  EXPECT_TRUE(batch->result->ok());
  EXPECT_EQ(ac.in_flight(), 2u);
  EXPECT_EQ(ac.queued(), 0u);

  standard->result.reset();
  batch->result.reset();
  EXPECT_EQ(ac.in_flight(), 0u);
  snap = ac.snapshot();
  EXPECT_DOUBLE_EQ(snap.wait_ms[0].p50, 30.208);  // 30000 us -> bucket [29696, 30720)
  EXPECT_DOUBLE_EQ(snap.throughput_rpm, 5.0);
}

TEST(AdmissionController, WaiterTimesOutAndLeavesTheQueue) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(1), clock);
  asio::io_context io;
  auto holder = start(io, ac, "g", 0);
  ASSERT_TRUE(holder->result->ok());
  auto w = start(io, ac, "g", 2, millis(20));
  EXPECT_FALSE(w->done());
  io.run();  // only the 20 ms deadline timer is left
  ASSERT_TRUE(w->done());
  EXPECT_EQ(w->result->refusal, Refusal::kTimedOut);
  EXPECT_FALSE(w->result->permit.valid());
  EXPECT_GE(w->result->retry_after_s, 1.0);
  EXPECT_EQ(ac.queued(), 0u);
  EXPECT_EQ(ac.snapshot().timed_out, (PerPriority<std::uint64_t>{0, 0, 1}));
  // Zero wait: refuse at once instead of queueing.
  io.restart();
  auto now_or_never = start(io, ac, "g", 0, 0);
  ASSERT_TRUE(now_or_never->done());
  EXPECT_EQ(now_or_never->result->refusal, Refusal::kTimedOut);
  EXPECT_EQ(ac.queued(), 0u);
}

TEST(AdmissionController, QueueDeadlinesAreEnforcedOnRelease) {
  FakeClock clock;
  AdmissionConfig c = config_with_limit(1);
  c.queue.max_wait = {seconds(30), seconds(20), seconds(10)};
  AdmissionController ac(c, clock);
  asio::io_context io;
  auto holder = start(io, ac, "g", 0);
  auto late = start(io, ac, "g", 2);
  auto ok = start(io, ac, "g", 1);
  clock.advance(seconds(15));  // past P2's maximum, within P1's
  holder->result->permit.release();
  poll(io);
  ASSERT_TRUE(late->done());
  EXPECT_EQ(late->result->refusal, Refusal::kTimedOut);
  ASSERT_TRUE(ok->done());
  EXPECT_TRUE(ok->result->ok());
  EXPECT_EQ(ac.snapshot().timed_out, (PerPriority<std::uint64_t>{0, 0, 1}));
}

TEST(AdmissionController, CancelledWaiterIsRemovedAndLosesNoSlot) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(1), clock);
  asio::io_context io;
  auto holder = start(io, ac, "g", 0);
  asio::cancellation_signal cancel;
  auto w = start(io, ac, "g", 1, AdmissionController::kConfiguredWait, &cancel);
  auto next = start(io, ac, "g", 2);
  EXPECT_EQ(ac.queued(), 2u);
  cancel.emit(asio::cancellation_type::terminal);
  poll(io);
  ASSERT_TRUE(w->done());
  EXPECT_EQ(w->result->refusal, Refusal::kCancelled);
  EXPECT_EQ(ac.queued(), 1u);
  EXPECT_EQ(ac.snapshot().cancelled, (PerPriority<std::uint64_t>{0, 1, 0}));
  holder->result->permit.release();
  poll(io);
  ASSERT_TRUE(next->done());
  EXPECT_TRUE(next->result->ok());
  next->result.reset();
  EXPECT_EQ(ac.in_flight(), 0u);
  EXPECT_EQ(ac.queued(), 0u);
}

TEST(AdmissionController, HigherPriorityArrivalShedsNewestLowerWaiter) {
  FakeClock clock;
  AdmissionConfig c = config_with_limit(1);
  c.queue.max_size = 2;
  AdmissionController ac(c, clock);
  asio::io_context io;
  auto holder = start(io, ac, "g", 1);
  auto b1 = start(io, ac, "g", 2);
  auto b2 = start(io, ac, "g", 2);
  auto u = start(io, ac, "g", 0);
  ASSERT_TRUE(b2->done());
  EXPECT_EQ(b2->result->refusal, Refusal::kShedByHigherPriority);
  EXPECT_FALSE(b1->done());
  auto s = start(io, ac, "g", 1);
  ASSERT_TRUE(b1->done());
  EXPECT_EQ(b1->result->refusal, Refusal::kShedByHigherPriority);
  auto refused = start(io, ac, "g", 1);
  ASSERT_TRUE(refused->done());
  EXPECT_EQ(refused->result->refusal, Refusal::kQueueFull);
  EXPECT_GE(refused->result->retry_after_s, 1.0);
  EXPECT_EQ(ac.snapshot().shed, (PerPriority<std::uint64_t>{0, 1, 2}));
  EXPECT_EQ(ac.queued(), 2u);
  holder->result->permit.release();
  poll(io);
  EXPECT_TRUE(u->done() && u->result->ok());
  EXPECT_FALSE(s->done());
}

TEST(AdmissionController, OverloadShedsBatchThenStandardThenUrgent) {
  FakeClock clock;
  AdmissionConfig c = config_with_limit(10);
  c.overload = OverloadConfig{.shed_p2_at = 1, .shed_p1_at = 2, .hard_limit = 3};
  AdmissionController ac(c, clock);
  asio::io_context io;
  auto first = start(io, ac, "g", 1);  // load 0 -> admitted
  ASSERT_TRUE(first->result->ok());
  auto batch = start(io, ac, "g", 2);  // load 1
  EXPECT_EQ(batch->result->refusal, Refusal::kOverload);
  auto second = start(io, ac, "g", 1);  // load 1
  EXPECT_TRUE(second->result->ok());
  auto third = start(io, ac, "g", 1);  // load 2
  EXPECT_EQ(third->result->refusal, Refusal::kOverload);
  auto urgent = start(io, ac, "g", 0);  // load 2
  EXPECT_TRUE(urgent->result->ok());
  auto urgent2 = start(io, ac, "g", 0);  // load 3 = hard limit
  EXPECT_EQ(urgent2->result->refusal, Refusal::kOverload);
  EXPECT_EQ(ac.snapshot().shed, (PerPriority<std::uint64_t>{1, 1, 1}));
  const Error e = admission_error(urgent2->result->refusal, urgent2->result->retry_after_s);
  EXPECT_EQ(e.status, 503);
  EXPECT_EQ(e.code, "overloaded");
  EXPECT_GE(e.retry_after_s, 1.0);
}

TEST(AdmissionController, Upstream429LowersAdaptiveLimit) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(4), clock);
  LimiterConfig aimd;
  aimd.mode = LimitMode::kAimd;
  aimd.initial = 8;
  aimd.min_limit = 2;
  aimd.max_limit = 64;
  ac.configure_group("gpt", aimd);
  EXPECT_EQ(ac.limit("gpt"), 8);
  EXPECT_EQ(ac.limit("unknown"), -1);
  asio::io_context io;
  auto p = start(io, ac, "gpt", 1);
  clock.advance(millis(1));
  p->result->permit.complete(millis(100), 429);
  EXPECT_EQ(ac.limit("gpt"), 6);
  EXPECT_EQ(ac.in_flight(), 0u);
}

TEST(AdmissionController, RaisingTheLimitAdmitsWaiters) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(1), clock);
  asio::io_context io;
  auto holder = start(io, ac, "g", 1);
  auto w1 = start(io, ac, "g", 1);
  auto w2 = start(io, ac, "g", 1);
  ac.configure_group("g", fixed(3));
  poll(io);
  EXPECT_TRUE(w1->done() && w1->result->ok());
  EXPECT_TRUE(w2->done() && w2->result->ok());
  EXPECT_EQ(ac.in_flight(), 3u);
}

TEST(AdmissionController, TryAcquireNeverWaitsNorOvertakes) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(1), clock);
  Permit p = ac.try_acquire("dep");
  EXPECT_TRUE(p.valid());
  EXPECT_FALSE(ac.try_acquire("dep").valid());
  p.complete(millis(5), 200);
  EXPECT_FALSE(p.valid());
  EXPECT_TRUE(ac.try_acquire("dep").valid());
  EXPECT_EQ(ac.in_flight(), 0u);
}

TEST(AdmissionController, GrantedButNeverResumedWaiterReturnsItsSlot) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(1), clock);
  {
    asio::io_context io;
    auto holder = start(io, ac, "g", 1);
    auto w = start(io, ac, "g", 1);
    holder->result->permit.release();  // grants w; its wake-up is posted but never run
    EXPECT_EQ(ac.in_flight(), 1u);
  }  // io_context destroyed with the waiter suspended
  EXPECT_EQ(ac.in_flight(), 0u);
  EXPECT_EQ(ac.queued(), 0u);
}

TEST(AdmissionController, WaiterOfADestroyedWorkerLeavesTheQueue) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(1), clock);
  asio::io_context holder_io;
  auto holder = start(holder_io, ac, "g", 1);
  {
    asio::io_context io;
    auto w = start(io, ac, "g", 0);
    EXPECT_EQ(ac.queued(), 1u);
  }  // destroyed while the waiter is still queued
  EXPECT_EQ(ac.queued(), 0u);
  EXPECT_EQ(ac.snapshot().cancelled, (PerPriority<std::uint64_t>{1, 0, 0}));
  holder->result->permit.release();  // must not hand the slot to the dead waiter
  EXPECT_EQ(ac.in_flight(), 0u);
  auto next = start(holder_io, ac, "g", 2);
  EXPECT_TRUE(next->done() && next->result->ok());
}

TEST(AdmissionController, WaitUntilCountsInDepthAndCanBeCancelled) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(1), clock);
  asio::io_context io;
  std::optional<WaitResult> done;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        done = co_await ac.wait_until(clock.now() + millis(10), 2);
      },
      asio::detached);
  poll(io);
  EXPECT_FALSE(done);
  EXPECT_EQ(ac.snapshot().depth, (PerPriority<std::size_t>{0, 0, 1}));
  io.run();
  ASSERT_TRUE(done);
  EXPECT_TRUE(done->ok());
  EXPECT_EQ(ac.queued(), 0u);

  io.restart();
  std::optional<WaitResult> cancelled;
  asio::cancellation_signal sig;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        cancelled = co_await ac.wait_until(clock.now() + seconds(60), 0);
      },
      asio::bind_cancellation_slot(sig.slot(), asio::detached));
  poll(io);
  EXPECT_EQ(ac.queued(), 1u);
  sig.emit(asio::cancellation_type::terminal);
  poll(io);
  ASSERT_TRUE(cancelled);
  EXPECT_EQ(cancelled->refusal, Refusal::kCancelled);
  EXPECT_EQ(ac.queued(), 0u);
}

TEST(AdmissionController, MetricsJsonHasTheDocumentedShape) {
  FakeClock clock;
  AdmissionController ac(config_with_limit(3), clock);
  ac.configure_group("gpt-4.1", fixed(7));
  asio::io_context io;
  auto p = start(io, ac, "gpt-4.1", 0);
  EXPECT_EQ(
      ac.metrics_json(),
      R"({"queue_depth":0,"depth_by_priority":{"p0":0,"p1":0,"p2":0},"in_flight":1,)"
      R"("throughput_rpm":0,"wait_ms":{"p0":{"p50":0,"p95":0,"p99":0},)"
      R"("p1":{"p50":0,"p95":0,"p99":0},"p2":{"p50":0,"p95":0,"p99":0}},)"
      R"("shed":{"p0":0,"p1":0,"p2":0},"timed_out":{"p0":0,"p1":0,"p2":0},)"
      R"("cancelled":{"p0":0,"p1":0,"p2":0},)"
      R"("estimated_drain_seconds":0,"concurrency_limits":{"gpt-4.1":7},)"
      R"("waiting_by_reason":{"concurrency":0,"deployment_rpm":0,"deployment_tpm":0,"key_limit":0},)"
      R"("waits_by_reason":{"concurrency":{"p0":0,"p1":0,"p2":0},"deployment_rpm":{"p0":0,"p1":0,"p2":0},)"
      R"("deployment_tpm":{"p0":0,"p1":0,"p2":0},"key_limit":{"p0":0,"p1":0,"p2":0}},)"
      R"("refusals_by_reason":{"concurrency":{"p0":0,"p1":0,"p2":0},"deployment_rpm":{"p0":0,"p1":0,"p2":0},)"
      R"("deployment_tpm":{"p0":0,"p1":0,"p2":0},"key_limit":{"p0":0,"p1":0,"p2":0}},)"
      R"("deployments":[]})");
}

// The worked example of docs/priority-queue.md: limit 4, queue of 12, 20 arrivals at once.
TEST(AdmissionController, WorkedExampleFromTheDocs) {
  FakeClock clock;
  AdmissionConfig c = config_with_limit(4);
  c.queue.max_size = 12;
  c.queue.aging = seconds(5);
  AdmissionController ac(c, clock);
  asio::io_context io;
  const int prio[21] = {-1, 1, 2, 0, 1, 2, 2, 1, 2, 0, 2, 1, 2, 2, 1, 0, 2, 0, 2, 1, 0};
  std::vector<std::shared_ptr<Pending>> r(21);
  for (int id = 1; id <= 20; ++id) r[id] = start(io, ac, "g", prio[id]);
  auto ids_where = [&](auto pred) {
    std::vector<int> out;
    for (int id = 1; id <= 20; ++id) {
      if (pred(*r[id])) out.push_back(id);
    }
    return out;
  };
  auto running = [&] {
    return ids_where([](const Pending& p) { return p.done() && p.result->permit.valid(); });
  };
  auto refused = [&](Refusal why) {
    return ids_where([why](const Pending& p) { return p.done() && p.result->refusal == why; });
  };
  EXPECT_EQ(running(), (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(refused(Refusal::kShedByHigherPriority), (std::vector<int>{12, 13, 16}));
  EXPECT_EQ(refused(Refusal::kQueueFull), (std::vector<int>{18}));
  EXPECT_EQ(ac.snapshot().depth, (PerPriority<std::size_t>{4, 4, 4}));

  auto finish_running = [&] {
    for (int id : running()) r[id]->result->permit.complete(seconds(2), 200);
    poll(io);
  };
  clock.advance(seconds(2));
  finish_running();
  EXPECT_EQ(running(), (std::vector<int>{9, 15, 17, 20}));
  clock.advance(seconds(2));
  finish_running();
  EXPECT_EQ(running(), (std::vector<int>{7, 11, 14, 19}));
  clock.advance(seconds(2));
  finish_running();
  EXPECT_EQ(running(), (std::vector<int>{5, 6, 8, 10}));
  EXPECT_EQ(r[5]->result->waited, seconds(6));
  clock.advance(seconds(2));
  finish_running();
  EXPECT_EQ(ac.queued(), 0u);
  EXPECT_EQ(ac.in_flight(), 0u);
  EXPECT_EQ(ac.snapshot().shed, (PerPriority<std::uint64_t>{0, 0, 4}));
}

// Two workers, each with its own io_context and thread, hammer one small group. Releases on one
// thread wake waiters that live on the other.
TEST(AdmissionController, TwoWorkersNeverExceedTheLimit) {
  constexpr int kLimit = 3;
  constexpr int kPerWorker = 400;
  AdmissionController ac(config_with_limit(kLimit));
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  std::atomic<int> admitted{0};
  std::atomic<int> timed_out{0};
  std::atomic<int> other{0};

  auto worker = [&](asio::io_context& io, int seed) {
    for (int i = 0; i < kPerWorker; ++i) {
      const int priority = (i + seed) % 3;
      // Some waits are short enough to race the grant against the deadline timer.
      const Nanos max_wait = priority == 2 && i % 2 == 0 ? millis(1) : seconds(20);
      asio::co_spawn(
          io,
          [&, priority, max_wait]() -> asio::awaitable<void> {
            AdmitResult r = co_await ac.acquire("shared", priority, max_wait);
            if (r.refusal == Refusal::kTimedOut) {
              ++timed_out;
              co_return;
            }
            if (!r.ok()) {
              ++other;
              co_return;
            }
            ++admitted;
            const int now_running = ++running;
            int seen = max_running.load();
            while (now_running > seen && !max_running.compare_exchange_weak(seen, now_running)) {
            }
            asio::steady_timer t(co_await asio::this_coro::executor,
                                 std::chrono::microseconds(100));
            co_await t.async_wait(asio::use_awaitable);
            --running;
            r.permit.complete(millis(1), 200);
          },
          asio::detached);
    }
    io.run();
  };
  asio::io_context io1, io2;
  std::thread t1([&] { worker(io1, 0); });
  std::thread t2([&] { worker(io2, 1); });
  t1.join();
  t2.join();
  EXPECT_LE(max_running.load(), kLimit);
  EXPECT_EQ(max_running.load(), kLimit);  // the limit was actually reached
  EXPECT_EQ(admitted + timed_out, 2 * kPerWorker);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ac.queued(), 0u);
  EXPECT_EQ(ac.in_flight(), 0u);
  const auto snap = ac.snapshot();
  EXPECT_EQ(snap.queue_depth(), 0u);
  EXPECT_EQ(snap.timed_out[0] + snap.timed_out[1] + snap.timed_out[2],
            static_cast<std::uint64_t>(timed_out.load()));
}

}  // namespace
}  // namespace bw::admission
