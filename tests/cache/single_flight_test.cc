#include "cache/single_flight.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace bw::cache {
namespace {

namespace asio = boost::asio;

// The io_context runs until every coroutine is parked; nothing sleeps: followers park on a timer
// whose expiry (an hour) is never reached in these tests, and are woken by the leader.
struct Harness {
  asio::io_context io;
  SingleFlight sf{3};
  std::vector<SingleFlight::Joined> joined;
  void spawn_join(const std::string& key, Nanos wait = seconds(3600)) {
    asio::co_spawn(
        io,
        [this, key, wait]() -> asio::awaitable<void> {
          auto j = co_await sf.join(key, wait);
          joined.push_back(std::move(j));
        },
        asio::detached);
  }
  void settle() {
    io.restart();
    io.poll();
  }
};

TEST(SingleFlight, FollowersGetTheLeadersEntry) {
  Harness h;
  h.spawn_join("k");
  h.settle();
  ASSERT_EQ(h.joined.size(), 1u);
  ASSERT_TRUE(h.joined[0].leader.valid());
  auto leader = std::move(h.joined[0].leader);
  h.joined.clear();
  h.spawn_join("k");
  h.spawn_join("k");
  h.spawn_join("other");  // another key: its own leader
  h.settle();
  ASSERT_EQ(h.joined.size(), 1u);
  EXPECT_TRUE(h.joined[0].leader.valid());
  h.joined.clear();
  auto e = std::make_shared<Entry>();
  e->body = "answer";
  leader.done(e);
  h.settle();
  ASSERT_EQ(h.joined.size(), 2u);
  for (auto& j : h.joined) {
    EXPECT_FALSE(j.leader.valid());
    EXPECT_TRUE(j.waited);
    ASSERT_NE(j.entry, nullptr);
    EXPECT_EQ(j.entry->body, "answer");
  }
  EXPECT_EQ(h.sf.in_flight(), 0u);  // the "other" leader was dropped with `joined`
}

TEST(SingleFlight, AFailedLeaderSendsFollowersUpstream) {
  Harness h;
  h.spawn_join("k");
  h.settle();
  auto leader = std::move(h.joined[0].leader);
  h.joined.clear();
  h.spawn_join("k");
  h.settle();
  EXPECT_TRUE(h.joined.empty());
  { auto gone = std::move(leader); }  // destroyed without an entry: a failure
  h.settle();
  ASSERT_EQ(h.joined.size(), 1u);
  EXPECT_TRUE(h.joined[0].waited);
  EXPECT_EQ(h.joined[0].entry, nullptr);
  EXPECT_FALSE(h.joined[0].leader.valid());
  EXPECT_EQ(h.sf.in_flight(), 0u);
  // The next request leads a new flight.
  h.joined.clear();
  h.spawn_join("k");
  h.settle();
  ASSERT_EQ(h.joined.size(), 1u);
  EXPECT_TRUE(h.joined[0].leader.valid());
}

TEST(SingleFlight, WaitersAreBounded) {
  Harness h;  // at most 3 waiters per key
  h.spawn_join("k");
  h.settle();
  auto leader = std::move(h.joined[0].leader);
  h.joined.clear();
  for (int i = 0; i < 5; ++i) h.spawn_join("k");
  h.settle();
  // Two found the flight full and go upstream at once, neither leading nor waiting.
  ASSERT_EQ(h.joined.size(), 2u);
  for (auto& j : h.joined) {
    EXPECT_FALSE(j.leader.valid());
    EXPECT_FALSE(j.waited);
    EXPECT_EQ(j.entry, nullptr);
  }
  h.joined.clear();
  leader.done(std::make_shared<Entry>());
  h.settle();
  EXPECT_EQ(h.joined.size(), 3u);
}

TEST(SingleFlight, ZeroWaitGoesUpstream) {
  Harness h;
  h.spawn_join("k");
  h.settle();
  auto leader = std::move(h.joined[0].leader);
  h.joined.clear();
  h.spawn_join("k", 0);
  h.settle();
  ASSERT_EQ(h.joined.size(), 1u);
  EXPECT_FALSE(h.joined[0].waited);
}

}  // namespace
}  // namespace bw::cache
