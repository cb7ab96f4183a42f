// The clock's turn readings (Clock::turn_now, turn_unix_millis) on a real event loop: one
// reading per turn of a worker's loop (a one-thread io_context, src/common/scheduler.ipp), taken
// after the reactor's return that began the turn; a fresh reading anywhere else: outside run(),
// after it returned, in a loop of several threads. No sleeps: the tests wait for the clock to
// move by spinning on it.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <ctime>
#include <string>

#include "common/clock.h"

namespace bw {
namespace {

namespace asio = boost::asio;

// Spins until the monotonic clock is past `t` (and the wall clock past `ms`), read directly, not
// through SteadyClock's now() (whose fresh reads are kept for the turn).
void pass(Nanos t, std::int64_t ms = 0) {
  while (SteadyClock::read_monotonic() <= t || SteadyClock::read_unix_millis() <= ms) {
  }
}

const Clock& steady() {
  return SteadyClock::instance();
}

// The hints of Bellwether's workers (and of a thread pool of one thread): a one-thread loop.
class LoopClock : public ::testing::TestWithParam<int> {};

INSTANTIATE_TEST_SUITE_P(Hints, LoopClock,
                         ::testing::Values(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO, 1),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(info.param == 1 ? "One" : "UnsafeIo");
                         });

TEST_P(LoopClock, OneReadingServesATurnAndTheNextTurnReadsAfterTheReactorReturned) {
  asio::io_context ioc{GetParam()};
  asio::steady_timer timer(ioc, std::chrono::milliseconds(1));  // the loop has a reactor
  Nanos first = 0, again = 0, fresh = 0, after_fresh = 0, posted_at = 0, next = 0;
  std::int64_t wall = 0, wall_again = 0;
  timer.async_wait([&](const boost::system::error_code&) {
    first = steady().turn_now();
    wall = steady().turn_unix_millis();
    pass(first + millis(1), wall);
    again = steady().turn_now();
    wall_again = steady().turn_unix_millis();
    // A fresh reading is kept for the rest of the turn: readings never go back.
    fresh = steady().now();
    after_fresh = steady().turn_now();
    posted_at = SteadyClock::read_monotonic();
    // What a handler posts runs in a later turn of the loop.
    asio::post(ioc, [&] { next = steady().turn_now(); });
  });
  ioc.run();
  EXPECT_EQ(again, first);
  EXPECT_EQ(wall_again, wall);
  EXPECT_GT(fresh, first + millis(1));
  EXPECT_EQ(after_fresh, fresh);
  EXPECT_GE(next, posted_at);
}

// A timer's handler reads no earlier than the timer's expiry, although the thread kept a reading
// of an earlier turn: a wait for a limit's Retry-After wakes up to a time past it.
TEST_P(LoopClock, ATimersHandlerReadsNoEarlierThanItsExpiry) {
  asio::io_context ioc{GetParam()};
  asio::steady_timer timer(ioc);
  Nanos before = 0, at = 0, woke = 0;
  asio::post(ioc, [&] {
    before = steady().turn_now();
    at = before + millis(2);
    timer.expires_at(std::chrono::steady_clock::time_point(std::chrono::nanoseconds(at)));
    timer.async_wait([&](const boost::system::error_code&) { woke = steady().turn_now(); });
  });
  ioc.run();
  EXPECT_GE(woke, at);
}

TEST_P(LoopClock, AReadingDoesNotOutliveTheRunItWasTakenIn) {
  asio::io_context ioc{GetParam()};
  asio::steady_timer timer(ioc, std::chrono::milliseconds(1));
  Nanos inside = 0;
  timer.async_wait([&](const boost::system::error_code&) { inside = steady().turn_now(); });
  ioc.run();
  // Outside the run: each use reads.
  pass(inside);
  const Nanos outside = steady().turn_now();
  EXPECT_GT(outside, inside);
  pass(outside);
  EXPECT_GT(steady().turn_now(), outside);
  // The next run: its first handler does not get a reading of the last run.
  Nanos rerun = 0;
  ioc.restart();
  asio::post(ioc, [&] { rerun = steady().turn_now(); });
  pass(outside + millis(1));
  ioc.run();
  EXPECT_GT(rerun, outside + millis(1));
}

// A FakeClock drives what tests see, in a loop too: its turn readings are its readings.
TEST_P(LoopClock, AFakeClockIsReadAsItIsInsideALoop) {
  asio::io_context ioc{GetParam()};
  asio::steady_timer timer(ioc, std::chrono::milliseconds(1));
  FakeClock fake;
  Nanos first = 0, second = 0;
  timer.async_wait([&](const boost::system::error_code&) {
    first = fake.turn_now();
    fake.advance(millis(5));
    second = fake.turn_now();
  });
  ioc.run();
  EXPECT_EQ(second, first + millis(5));
}

// A loop that several threads may run keeps nothing: a thread's handlers may follow another
// thread's reactor.
TEST(LoopClockSeveralThreads, EveryUseReads) {
  asio::io_context ioc;  // the default hint: any number of threads
  asio::steady_timer timer(ioc, std::chrono::milliseconds(1));
  Nanos first = 0, second = 0;
  timer.async_wait([&](const boost::system::error_code&) {
    first = steady().turn_now();
    pass(first);
    second = steady().turn_now();
  });
  ioc.run();
  EXPECT_GT(second, first);
}

}  // namespace
}  // namespace bw
