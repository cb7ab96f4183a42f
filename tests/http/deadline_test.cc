#include "http/deadline.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <ctime>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace bw::http {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Deadlines are measured on CLOCK_MONOTONIC_COARSE. On that clock a deadline never fires early;
// on a precise clock it may seem to, by as much as the coarse clock's lag varies between arming
// and firing: a tick on an idle machine, more on a virtual machine whose ticks arrive late. The
// lower bounds below are therefore checked on the coarse clock, exactly.
milliseconds coarse_tick() {
  timespec res{};
  clock_getres(CLOCK_MONOTONIC_COARSE, &res);
  const auto ns = static_cast<std::int64_t>(res.tv_sec) * 1'000'000'000 + res.tv_nsec;
  return milliseconds(ns / 1'000'000 + 1);
}

// Generous: CI runs these beside load on 2 cores, where a timer wake-up can be hundreds of ms
// late. The tests that detect a misordered schedule use waits far longer than this.
constexpr auto kSlack = milliseconds(1000);

// A deadline's owner: records when (and how often) its cancel function ran.
struct Probe {
  std::string name;
  std::vector<std::string>* order = nullptr;
  Clock::time_point start;
  std::optional<milliseconds> fired_after;
  Clock::time_point due;
  Clock::time_point fire_time;
  Nanos coarse_start = 0;  // the service's clock, read just before arming
  Nanos coarse_due = 0;
  Nanos coarse_fire = 0;
  int fired = 0;
  Deadline deadline;
  std::function<void(Probe&)> on_fire;

  Probe(std::string n, asio::io_context& ioc, std::vector<std::string>* o = nullptr)
      : name(std::move(n)), order(o), start(Clock::now()) {
    deadline.bind(ioc.get_executor(), &Probe::cancel, this);
  }
  static void cancel(void* self) {
    auto& p = *static_cast<Probe*>(self);
    ++p.fired;
    p.fire_time = Clock::now();
    p.coarse_fire = coarse_now();
    p.fired_after = std::chrono::duration_cast<milliseconds>(p.fire_time - p.start);
    if (p.order) p.order->push_back(p.name);
    if (p.on_fire) p.on_fire(p);
  }
  void arm(milliseconds d) {
    start = Clock::now();
    due = start + d;
    coarse_start = coarse_now();
    coarse_due = coarse_start + millis(d.count());
    deadline.arm(millis(d.count()));
  }
  // Since the last arm() on the service's clock; a deadline never fires before its duration.
  [[nodiscard]] Nanos coarse_fired_after() const { return coarse_fire - coarse_start; }
};

// Runs `f` on the io_context after `after`.
void at(asio::io_context& ioc, milliseconds after, std::function<void()> f) {
  auto t = std::make_shared<asio::steady_timer>(ioc, after);
  t->async_wait([t, f = std::move(f)](const boost::system::error_code& ec) {
    if (!ec) f();
  });
}

TEST(Deadline, FiresAfterItsDuration) {
  asio::io_context ioc;
  Probe p("a", ioc);
  p.arm(milliseconds(50));
  EXPECT_TRUE(p.deadline.armed());
  EXPECT_FALSE(p.deadline.expired());
  EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 1u);
  const auto t0 = Clock::now();
  ioc.run();
  const auto ran = Clock::now() - t0;
  ASSERT_EQ(p.fired, 1);
  ASSERT_TRUE(p.fired_after);
  EXPECT_GE(p.coarse_fired_after(), millis(50));
  EXPECT_LT(*p.fired_after, milliseconds(50) + kSlack);
  EXPECT_LT(ran, milliseconds(50) + kSlack);  // nothing left waiting afterwards
  EXPECT_TRUE(p.deadline.expired());
  EXPECT_FALSE(p.deadline.armed());
  EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 0u);
  // Arming again clears expired().
  p.deadline.arm(seconds(10));
  EXPECT_FALSE(p.deadline.expired());
  p.deadline.disarm();
  EXPECT_FALSE(p.deadline.expired());
}

TEST(Deadline, ZeroAndNegativeDurationsFireSoon) {
  asio::io_context ioc;
  Probe a("zero", ioc), b("negative", ioc);
  a.arm(milliseconds(0));
  b.deadline.arm(-seconds(5));
  ioc.run();
  EXPECT_EQ(a.fired, 1);
  EXPECT_EQ(b.fired, 1);
  ASSERT_TRUE(a.fired_after);
  EXPECT_LT(*a.fired_after, kSlack);
}

TEST(Deadline, HugeDurationDoesNotOverflow) {
  asio::io_context ioc;
  Probe a("huge", ioc), b("short", ioc);
  a.deadline.arm(std::numeric_limits<Nanos>::max());
  b.arm(milliseconds(10));
  ioc.run_for(milliseconds(10) + kSlack);
  EXPECT_EQ(a.fired, 0);
  EXPECT_TRUE(a.deadline.armed());
  EXPECT_EQ(b.fired, 1);
  a.deadline.disarm();
}

TEST(Deadline, DisarmPreventsFiring) {
  asio::io_context ioc;
  Probe p("a", ioc);
  p.arm(milliseconds(30));
  p.deadline.disarm();
  EXPECT_FALSE(p.deadline.armed());
  EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 0u);
  ioc.run_for(milliseconds(120));
  EXPECT_EQ(p.fired, 0);
  EXPECT_FALSE(p.deadline.expired());
}

TEST(Deadline, DisarmOneOfManyInTheSameQueue) {
  asio::io_context ioc;
  std::vector<std::string> order;
  Probe a("a", ioc, &order), b("b", ioc, &order), c("c", ioc, &order);
  a.arm(milliseconds(30));
  b.arm(milliseconds(30));
  c.arm(milliseconds(30));
  b.deadline.disarm();  // from the middle of the queue
  EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 2u);
  ioc.run();
  EXPECT_EQ(order, (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(b.fired, 0);
}

TEST(Deadline, RearmMovesItLater) {
  asio::io_context ioc;
  Probe p("a", ioc);
  p.deadline.arm(millis(20));
  // At 10 ms, push it out to 10 + 80 ms.
  Clock::time_point rearmed_at;
  Nanos coarse_rearmed_at = 0;
  at(ioc, milliseconds(10), [&] {
    rearmed_at = Clock::now();
    coarse_rearmed_at = coarse_now();
    p.deadline.arm(millis(80));
  });
  ioc.run();
  ASSERT_EQ(p.fired, 1);
  const auto since_rearm =
      std::chrono::duration_cast<milliseconds>(p.start + *p.fired_after - rearmed_at);
  EXPECT_GE(p.coarse_fire - coarse_rearmed_at, millis(80));
  EXPECT_LT(since_rearm, milliseconds(80) + kSlack);
}

TEST(Deadline, RearmMovesItEarlier) {
  asio::io_context ioc;
  Probe p("a", ioc);
  p.arm(milliseconds(5000));
  p.arm(milliseconds(30));
  const auto t0 = Clock::now();
  ioc.run_for(milliseconds(30) + kSlack + milliseconds(500));
  EXPECT_LT(Clock::now() - t0, milliseconds(30) + kSlack);  // the 5 s wait is gone
  ASSERT_EQ(p.fired, 1);
  EXPECT_GE(p.coarse_fired_after(), millis(30));
  EXPECT_LT(*p.fired_after, milliseconds(30) + kSlack);
}

// Checks the firing order against the due times: a deadline never fires before it is due, and
// one due later never fires before one due earlier, unless both were already overdue when the
// first of them fired (one timer wake-up then cancels every overdue deadline at once).
void expect_time_order(const std::vector<Probe*>& fired_in_order) {
  const Nanos tick_ns = millis(coarse_tick().count());
  for (const Probe* p : fired_in_order) {
    ASSERT_TRUE(p->fired_after) << p->name;
    EXPECT_GE(p->coarse_fire, p->coarse_due) << p->name << " fired early";
    EXPECT_LT(p->fire_time, p->due + kSlack) << p->name << " fired late";
  }
  for (std::size_t i = 0; i < fired_in_order.size(); ++i) {
    for (std::size_t j = i + 1; j < fired_in_order.size(); ++j) {
      const Probe& x = *fired_in_order[i];
      const Probe& y = *fired_in_order[j];
      EXPECT_TRUE(x.coarse_due <= y.coarse_due + tick_ns || y.coarse_due <= x.coarse_fire)
          << x.name << " fired before " << y.name << ", which was due "
          << (x.coarse_due - y.coarse_due) / millis(1) << " ms earlier and not yet overdue";
    }
  }
}

TEST(Deadline, SeveralDurationsFireInTimeOrder) {
  asio::io_context ioc;
  std::vector<std::string> order;
  std::vector<Probe*> fired;
  Probe d90("d90", ioc, &order), d20("d20", ioc, &order), d55("d55", ioc, &order),
      d20b("d20b", ioc, &order), late("late72", ioc, &order), d90b("d90b", ioc, &order);
  for (Probe* p : {&d90, &d20, &d55, &d20b, &late, &d90b}) {
    p->on_fire = [&fired](Probe& self) { fired.push_back(&self); };
  }
  d90.arm(milliseconds(90));
  d20.arm(milliseconds(20));
  d55.arm(milliseconds(55));
  // Armed later into existing queues and a new one.
  at(ioc, milliseconds(15), [&] {
    d20b.arm(milliseconds(20));  // due at 35
    d90b.arm(milliseconds(90));  // due at 105
  });
  at(ioc, milliseconds(30), [&] { late.arm(milliseconds(42)); });  // due at 72
  ioc.run();
  for (Probe* p : {&d90, &d20, &d55, &d20b, &late, &d90b}) EXPECT_EQ(p->fired, 1) << p->name;
  ASSERT_EQ(fired.size(), 6u);
  expect_time_order(fired);
  // On an idle machine (no wake-up late by more than the gaps of 15+ ms) the order is exact.
  if (std::all_of(fired.begin(), fired.end(),
                  [](Probe* p) { return p->fire_time < p->due + milliseconds(10); })) {
    EXPECT_EQ(order, (std::vector<std::string>{"d20", "d20b", "d55", "late72", "d90", "d90b"}));
  }
}

TEST(Deadline, ManyDeadlinesInManyQueues) {
  asio::io_context ioc;
  std::vector<std::string> order;
  std::vector<std::unique_ptr<Probe>> probes;
  for (int i = 0; i < 40; ++i) {
    probes.push_back(std::make_unique<Probe>(std::to_string(i), ioc, &order));
    probes.back()->arm(milliseconds(10 + (i % 4) * 20));  // 4 queues: 10, 30, 50, 70 ms
  }
  for (int i = 0; i < 40; i += 5) probes[static_cast<std::size_t>(i)]->deadline.disarm();
  ioc.run();
  EXPECT_EQ(order.size(), 32u);
  // Queue by queue: every 10 ms deadline before every 30 ms one, and so on.
  int last_queue = 0;
  for (const auto& name : order) {
    const int q = std::stoi(name) % 4;
    EXPECT_GE(q, last_queue) << name;
    last_queue = q;
    EXPECT_NE(std::stoi(name) % 5, 0) << name << " was disarmed";
  }
  EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 0u);
}

// A queue that has emptied is taken by the next new duration; a deadline armed with the queue's
// old duration afterwards must go to a queue of its own, not follow a remembered queue number.
TEST(Deadline, EmptiedQueueTakenByAnotherDuration) {
  asio::io_context ioc;
  std::vector<std::string> order;
  Probe first("first10", ioc, &order), slow("slow300", ioc, &order), fast("fast10", ioc, &order);
  first.arm(milliseconds(10));
  first.on_fire = [&](Probe&) {
    // The 10 ms queue is empty now: 300 ms takes it, then 10 ms needs another.
    slow.arm(milliseconds(300));
    fast.arm(milliseconds(10));
  };
  ioc.run();
  EXPECT_EQ(order, (std::vector<std::string>{"first10", "fast10", "slow300"}));
  ASSERT_TRUE(fast.fired_after.has_value());
  EXPECT_LT(*fast.fired_after, milliseconds(300)) << "fired with the 300 ms deadline before it";
}

// More durations than the service remembers: each still fires after its own duration.
TEST(Deadline, ManyDurations) {
  asio::io_context ioc;
  std::vector<std::string> order;
  std::vector<std::unique_ptr<Probe>> probes;
  for (int i = 0; i < 80; ++i) {
    probes.push_back(std::make_unique<Probe>(std::to_string(i), ioc, &order));
  }
  // Each probe re-armed a few times with changing durations, then its last: 5 + 2i ms.
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 80; ++i)
      probes[static_cast<std::size_t>(i)]->arm(milliseconds(1000 + round * 7 + i));
  }
  for (int i = 0; i < 80; ++i) probes[static_cast<std::size_t>(i)]->arm(milliseconds(5 + 2 * i));
  ioc.run();
  ASSERT_EQ(order.size(), 80u);
  for (const auto& p : probes) {
    EXPECT_EQ(p->fired, 1) << p->name;
    ASSERT_TRUE(p->fired_after.has_value());
    EXPECT_GE(p->coarse_fired_after(), p->coarse_due - p->coarse_start) << p->name;
    EXPECT_LT(*p->fired_after, milliseconds(900)) << p->name << " fired with a deadline it left";
  }
  EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 0u);
}

TEST(Deadline, DestroyingAnArmedDeadlineIsSafe) {
  asio::io_context ioc;
  std::vector<std::string> order;
  Probe keep("keep", ioc, &order);
  {
    auto gone = std::make_unique<Probe>("gone", ioc, &order);
    gone->arm(milliseconds(10));
    auto gone2 = std::make_unique<Probe>("gone2", ioc, &order);
    gone2->arm(milliseconds(10));
    keep.arm(milliseconds(10));
    EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 3u);
  }
  EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 1u);
  ioc.run();
  EXPECT_EQ(order, (std::vector<std::string>{"keep"}));
}

TEST(Deadline, CancelCallbackMayDisarmOrDestroyOthers) {
  asio::io_context ioc;
  std::vector<std::string> order;
  Probe first("first", ioc, &order);
  auto second = std::make_unique<Probe>("second", ioc, &order);
  Probe third("third", ioc, &order);
  first.arm(milliseconds(20));
  second->arm(milliseconds(20));
  third.arm(milliseconds(20));
  // `second` is due in the same on_timer pass as `first`; the callback destroys it.
  first.on_fire = [&](Probe&) {
    second.reset();
    third.deadline.disarm();
  };
  ioc.run();
  EXPECT_EQ(order, (std::vector<std::string>{"first"}));
  EXPECT_EQ(third.fired, 0);
}

// A cancel callback that arms a deadline (a retry, a periodic check) must not delay deadlines
// that are already armed.
TEST(Deadline, ArmingFromACancelCallbackDoesNotDelayOtherDeadlines) {
  asio::io_context ioc;
  Probe first("first", ioc), second("second", ioc), rearmed("rearmed", ioc);
  first.arm(milliseconds(20));
  second.arm(milliseconds(100));
  first.on_fire = [&](Probe&) { rearmed.arm(milliseconds(5000)); };  // due at 5.02 s
  const auto t0 = Clock::now();
  ioc.run_for(milliseconds(100) + kSlack);
  EXPECT_EQ(first.fired, 1);
  EXPECT_EQ(second.fired, 1) << "second (due at 100 ms) had not fired "
                             << std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count()
                             << " ms after start";
  if (second.fired_after) {
    EXPECT_GE(second.coarse_fired_after(), millis(100));
    EXPECT_LT(*second.fired_after, milliseconds(100) + kSlack);
  }
  EXPECT_EQ(rearmed.fired, 0);
  rearmed.deadline.disarm();
}

TEST(Deadline, RearmingItselfFromTheCallbackFiresAgain) {
  asio::io_context ioc;
  Probe p("tick", ioc);
  p.on_fire = [](Probe& self) {
    if (self.fired < 3) self.arm(milliseconds(10));
  };
  p.arm(milliseconds(10));
  ioc.run_for(milliseconds(30) + 3 * kSlack);  // returns once nothing is armed
  EXPECT_EQ(p.fired, 3);
  EXPECT_FALSE(p.deadline.armed());
  EXPECT_TRUE(p.deadline.expired());
}

// The queues link nodes that are reused once freed: deadlines disarmed from the middle, the
// head and the tail of their queues, in another order than they were armed, and re-armed with
// other durations, still fire each once, in time order, and the disarmed ones never.
TEST(Deadline, FreedPlacesAreReusedWithoutMixingQueues) {
  asio::io_context ioc;
  std::vector<std::string> order;
  std::vector<std::unique_ptr<Probe>> probes;
  for (int i = 0; i < 12; ++i) {
    probes.push_back(std::make_unique<Probe>("p" + std::to_string(i), ioc, &order));
    probes.back()->arm(milliseconds(i % 2 == 0 ? 400 : 600));
  }
  auto& svc = DeadlineService::of(ioc.get_executor());
  EXPECT_EQ(svc.armed(), 12u);
  // Disarm a head, a tail and middles of both queues, in an order unlike arming.
  for (int i : {7, 0, 10, 11, 3, 4}) probes[static_cast<std::size_t>(i)]->deadline.disarm();
  EXPECT_EQ(svc.armed(), 6u);
  // Their places are taken by deadlines of two new durations (due first) and a re-armed one.
  probes[0]->arm(milliseconds(100));
  probes[7]->arm(milliseconds(200));
  probes[4]->arm(milliseconds(100));
  auto extra = std::make_unique<Probe>("extra", ioc, &order);
  extra->arm(milliseconds(200));
  EXPECT_EQ(svc.armed(), 10u);
  ioc.run();
  EXPECT_EQ(order, (std::vector<std::string>{"p0", "p4", "p7", "extra", "p2", "p6", "p8", "p1",
                                             "p5", "p9"}));
  for (int i : {3, 10, 11}) EXPECT_EQ(probes[static_cast<std::size_t>(i)]->fired, 0) << i;
  EXPECT_EQ(svc.armed(), 0u);
}

// A cancel callback that arms many deadlines (the service's table grows under the pass that
// runs it) leaves the pass to fire the others that are due, and the new ones later.
TEST(Deadline, ArmingManyFromACancelCallbackWhileOthersAreDue) {
  asio::io_context ioc;
  std::vector<std::string> order;
  Probe first("first", ioc, &order), second("second", ioc, &order);
  std::vector<std::unique_ptr<Probe>> armed_later;
  first.arm(milliseconds(20));
  second.arm(milliseconds(20));
  first.on_fire = [&](Probe&) {
    for (int i = 0; i < 200; ++i) {
      armed_later.push_back(std::make_unique<Probe>("later", ioc));
      armed_later.back()->arm(milliseconds(i % 2 == 0 ? 40 : 60));
    }
  };
  ioc.run();
  EXPECT_EQ(order, (std::vector<std::string>{"first", "second"}));
  ASSERT_EQ(armed_later.size(), 200u);
  for (const auto& p : armed_later) EXPECT_EQ(p->fired, 1);
  EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 0u);
}

TEST(Deadline, DestroyingTheIoContextWithArmedDeadlinesIsSafe) {
  // Declared before the io_context: outlives it.
  auto outlives = std::make_unique<Deadline>();
  int fired = 0;
  {
    asio::io_context ioc;
    outlives->bind(
        ioc.get_executor(), [](void* f) { ++*static_cast<int*>(f); }, &fired);
    outlives->arm(seconds(10));
    Deadline inner;
    inner.bind(
        ioc.get_executor(), [](void* f) { ++*static_cast<int*>(f); }, &fired);
    inner.arm(seconds(10));
    Deadline second_queue;
    second_queue.bind(
        ioc.get_executor(), [](void* f) { ++*static_cast<int*>(f); }, &fired);
    second_queue.arm(seconds(20));
    ioc.run_for(milliseconds(5));
    EXPECT_EQ(DeadlineService::of(ioc.get_executor()).armed(), 3u);
    // `second_queue` and `inner` are destroyed first (normal disarm), then the io_context with
    // `outlives` still armed.
  }
  EXPECT_FALSE(outlives->armed());  // forgotten by the service's shutdown
  outlives->disarm();
  outlives.reset();
  EXPECT_EQ(fired, 0);
}

TEST(Deadline, DestroyingTheIoContextWithPendingHandlersThatOwnDeadlines) {
  int fired = 0;
  {
    asio::io_context ioc;
    // A handler that owns an armed deadline and is destroyed, never run, with the io_context,
    // the way a suspended session coroutine is.
    auto owned = std::make_shared<Deadline>();
    owned->bind(
        ioc.get_executor(), [](void* f) { ++*static_cast<int*>(f); }, &fired);
    owned->arm(seconds(30));
    auto timer = std::make_shared<asio::steady_timer>(ioc, std::chrono::hours(1));
    timer->async_wait([owned, timer](const boost::system::error_code&) {});
    owned.reset();
    timer.reset();
    ioc.run_for(milliseconds(5));
    // A posted handler that never runs is destroyed by the scheduler, which shuts down after
    // the DeadlineService.
    auto posted = std::make_shared<Deadline>();
    posted->bind(
        ioc.get_executor(), [](void* f) { ++*static_cast<int*>(f); }, &fired);
    posted->arm(seconds(30));
    asio::post(ioc, [posted] { posted->disarm(); });
    posted.reset();
  }
  EXPECT_EQ(fired, 0);
}

TEST(Deadline, UnboundDeadlineIsInert) {
  Deadline d;
  d.arm(millis(1));
  EXPECT_FALSE(d.armed());
  EXPECT_FALSE(d.expired());
  d.disarm();
}

TEST(Deadline, CoarseNowIsMonotonicAndCloseToSteadyClock) {
  const auto steady = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
  };
  const auto s0 = steady();
  const Nanos a = coarse_now();
  const auto s = steady();
  const Nanos b = coarse_now();
  EXPECT_LE(a, b);
  // steady_clock is CLOCK_MONOTONIC on Linux: the coarse clock lags it, by a tick on an idle
  // machine; a virtual machine's late ticks add to that. The lag is bounded with the precise
  // clock read first: a thread descheduled between the two reads only makes it seem smaller.
  EXPECT_LE(a, s);
  EXPECT_LT(s0 - a, millis(coarse_tick().count()) + millis(50));
}

// Inside an io_context's run the clock is read once per turn of the loop: two reads in one
// handler agree however long it runs. Outside a run, each read reads the clock again, although
// the thread's last turn is still the same.
TEST(Deadline, CoarseNowIsKeptForATurnOfTheLoopOnlyInsideItsRun) {
  boost::asio::io_context ioc;
  boost::asio::steady_timer t(ioc, std::chrono::milliseconds(1));  // the reactor turns
  Nanos first = 0, second = 0;
  t.async_wait([&](const boost::system::error_code&) {
    first = coarse_now();
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    second = coarse_now();
  });
  ioc.run();
  EXPECT_EQ(first, second);
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  const Nanos after = coarse_now();
  EXPECT_GE(after - second, millis(20));
}

}  // namespace
}  // namespace bw::http
