// The scheduler of a worker's io_context (one thread, src/common/scheduler.ipp): handlers run in
// the order they were posted, from this thread and from others; stop() ends run() before the
// next handler, and what was left runs after restart(); a handler's exception leaves run() with
// the rest kept; run() returns once no work is left.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;

// The hint of Bellwether's workers, and a hint of 1: both make a one-thread scheduler.
class EventLoop : public ::testing::TestWithParam<int> {};

INSTANTIATE_TEST_SUITE_P(Hints, EventLoop,
                         ::testing::Values(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO, 1),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(info.param == 1 ? "One" : "UnsafeIo");
                         });

TEST_P(EventLoop, HandlersRunInTheOrderTheyWerePostedAndRunReturnsWhenNoWorkIsLeft) {
  asio::io_context ioc{GetParam()};
  std::vector<int> order;
  asio::post(ioc, [&] {
    order.push_back(1);
    asio::post(ioc, [&] {
      order.push_back(3);
      asio::post(ioc, [&] { order.push_back(5); });
    });
    asio::post(ioc, [&] { order.push_back(4); });
  });
  asio::post(ioc, [&] { order.push_back(2); });
  EXPECT_EQ(ioc.run(), 5u);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5}));
  EXPECT_TRUE(ioc.stopped());
}

TEST_P(EventLoop, StopInAHandlerEndsRunBeforeTheNextHandlerAndRestartRunsWhatWasLeft) {
  asio::io_context ioc{GetParam()};
  std::vector<int> order;
  asio::post(ioc, [&] {
    order.push_back(1);
    asio::post(ioc, [&] { order.push_back(3); });
    ioc.stop();
  });
  asio::post(ioc, [&] { order.push_back(2); });
  EXPECT_EQ(ioc.run(), 1u);
  EXPECT_EQ(order, (std::vector<int>{1}));
  ioc.restart();
  EXPECT_EQ(ioc.run(), 2u);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

TEST_P(EventLoop, AHandlersExceptionLeavesRunAndTheRestRunsNext) {
  asio::io_context ioc{GetParam()};
  std::vector<int> order;
  asio::post(ioc, [&] {
    order.push_back(1);
    asio::post(ioc, [&] { order.push_back(3); });
    throw std::runtime_error("handler");
  });
  asio::post(ioc, [&] { order.push_back(2); });
  EXPECT_THROW(ioc.run(), std::runtime_error);
  EXPECT_EQ(order, (std::vector<int>{1}));
  EXPECT_FALSE(ioc.stopped());
  EXPECT_EQ(ioc.run(), 2u);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
  EXPECT_TRUE(ioc.stopped());
}

TEST_P(EventLoop, TimersKeepRunGoingUntilTheyFire) {
  asio::io_context ioc{GetParam()};
  int fired = 0;
  const auto t0 = std::chrono::steady_clock::now();
  asio::steady_timer a(ioc, std::chrono::milliseconds(20));
  asio::steady_timer b(ioc, std::chrono::milliseconds(5));
  a.async_wait([&](const boost::system::error_code& ec) { fired += ec ? 100 : 1; });
  b.async_wait([&](const boost::system::error_code& ec) {
    fired += ec ? 100 : 1;
    // Work added by a handler (two posts) keeps the loop alive as well.
    asio::post(ioc, [&] { ++fired; });
    asio::post(ioc, [&] { ++fired; });
  });
  ioc.run();
  EXPECT_EQ(fired, 4);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(20));
}

TEST_P(EventLoop, PostsFromOtherThreadsWakeTheLoopAndRunInTheirOrder) {
  asio::io_context ioc{GetParam()};
  // A timer object starts the reactor: an idle loop then waits in epoll_wait, which a post from
  // another thread must interrupt.
  asio::steady_timer reactor_on(ioc);
  auto guard = asio::make_work_guard(ioc);
  constexpr int kPerThread = 2000;
  std::vector<int> seen[2];
  std::atomic<int> ran{0};
  int local = 0;
  std::thread loop([&] { ioc.run(); });
  std::vector<std::thread> posters;
  for (int t = 0; t < 2; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        asio::post(ioc, [&, t, i] {
          seen[t].push_back(i);
          // A local post in between: it must not hold up or reorder the others' posts.
          asio::post(ioc, [&] { ++local; });
          if (ran.fetch_add(1) + 1 == 2 * kPerThread) guard.reset();
        });
        if (i % 256 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
  }
  for (auto& p : posters) p.join();
  loop.join();  // returns once the guard is gone and every handler has run
  EXPECT_EQ(ran.load(), 2 * kPerThread);
  EXPECT_EQ(local, 2 * kPerThread);
  for (const auto& s : seen) {
    ASSERT_EQ(s.size(), static_cast<std::size_t>(kPerThread));
    for (int i = 0; i < kPerThread; ++i) ASSERT_EQ(s[static_cast<std::size_t>(i)], i);
  }
}

TEST_P(EventLoop, StopFromAnotherThreadEndsABlockedRun) {
  asio::io_context ioc{GetParam()};
  asio::steady_timer reactor_on(ioc);  // the loop waits in epoll_wait
  auto guard = asio::make_work_guard(ioc);
  std::atomic<bool> returned{false};
  std::thread loop([&] {
    ioc.run();
    returned = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(returned.load());
  ioc.stop();
  loop.join();
  EXPECT_TRUE(returned.load());
  EXPECT_TRUE(ioc.stopped());
}

}  // namespace
