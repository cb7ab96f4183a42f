// test-label: redis
// RedisBudgetStore against a real redis-server started by the test (loopback, free port, temp dir)
// and a real SQLite ledger as the durable record to rebuild from.
#include "cost/redis_budget.h"

#include <gtest/gtest.h>

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/redis_server.h"
#include "support/run_awaitable.h"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include "store/sqlite_ledger.h"
#include "support/temp_dir.h"

namespace bw::cost {
namespace {

namespace asio = boost::asio;
using bw::testing::run;

using test::RedisServer;

Nanos steady() {
  return SteadyClock::instance().now();
}

// Noon UTC today and tomorrow: keys expire relative to the real clock (PEXPIREAT).
const std::int64_t kDay1 = utc_day_start(SteadyClock::instance().unix_millis()) + kMillisPerDay / 2;
const std::int64_t kDay2 = kDay1 + kMillisPerDay;

std::string key_of(const std::string& id, BudgetPeriod p, std::int64_t now_ms) {
  return "bw:bg:" + id + "|" + std::to_string(period_window(p, now_ms).start_unix_ms);
}

void commit_reservation(Ledger& ledger, const std::string& request_id,
                        std::vector<std::string> budgets, Micros amount, std::int64_t at) {
  LedgerReservation r;
  r.request_id = request_id;
  r.key_id = "k";
  r.model = "m";
  r.budgets = std::move(budgets);
  r.reserved_micro = amount;
  r.created_unix_ms = at;
  std::promise<bool> p;
  ASSERT_TRUE(ledger.append_reservation(r, [&](const Result<Ok>& x) { p.set_value(x.ok()); }));
  ASSERT_TRUE(p.get_future().get());
}

void commit_settlement(Ledger& ledger, const std::string& request_id, Micros actual,
                       std::int64_t at) {
  LedgerSettlement s;
  s.request_id = request_id;
  s.actual_micro = actual;
  s.settled_unix_ms = at;
  std::promise<bool> p;
  ASSERT_TRUE(ledger.append_settlement(s, [&](const Result<Ok>& x) { p.set_value(x.ok()); }));
  ASSERT_TRUE(p.get_future().get());
}

class RedisBudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    budgets.upsert_budget({"global/daily", 1'000, BudgetPeriod::kDaily});
    budgets.upsert_budget({"key:a/monthly", 500, BudgetPeriod::kMonthly});
    store::SqliteLedgerOptions lo;
    lo.path = dir.file("ledger.db");
    lo.synchronous_full = false;
    auto l = store::SqliteLedger::open(lo);
    ASSERT_TRUE(l.ok()) << l.error().message;
    ledger = std::move(*l);
  }

  // Detached release/flush coroutines hold the store: let them finish while the io_context lives.
  void TearDown() override { ioc.run_for(std::chrono::milliseconds(50)); }

  std::shared_ptr<RedisBudgetStore> make_store(RedisBudgetOptions o = {}, bool with_ledger = true) {
    o.url = redis.url();
    if (o.timeout == 20 * kNanosPerMilli) o.timeout = 200 * kNanosPerMilli;  // loaded CI machine
    o.rebuild_grace = 5 * kNanosPerMilli;
    auto s = RedisBudgetStore::create(o, budgets, with_ledger ? ledger.get() : nullptr,
                                      pool.get_executor());
    EXPECT_TRUE(s.ok());
    return *s;
  }

  RedisReserveResult reserve(RedisBudgetStore& s, std::vector<std::string> ids, Micros amount,
                             std::int64_t now_ms = kDay1) {
    return run(ioc, s.reserve(std::move(ids), amount, now_ms, steady()));
  }
  SettleOutcome settle(RedisBudgetStore& s, RedisBudgetReservation& r, Micros actual,
                       std::int64_t now_ms = kDay1) {
    return run(ioc, s.settle(r, actual, now_ms, steady()));
  }
  std::string field(const std::string& key, const std::string& f) {
    return redis.command({"HGET", key, f});
  }

  RedisServer redis;
  testing::TempDir dir;
  BudgetManager budgets;
  std::unique_ptr<store::SqliteLedger> ledger;
  asio::thread_pool pool{1};
  asio::io_context ioc;
  const std::vector<std::string> both{"global/daily", "key:a/monthly"};
  const std::string gkey = key_of("global/daily", BudgetPeriod::kDaily, kDay1);
  const std::string kkey = key_of("key:a/monthly", BudgetPeriod::kMonthly, kDay1);
};

TEST_F(RedisBudgetTest, ReserveIsAllOrNothingAndHoldsTheCap) {
  auto store = make_store();
  auto a = reserve(*store, both, 300);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a.reservation->local());
  EXPECT_EQ(field(gkey, "r"), "300");
  EXPECT_EQ(field(kkey, "r"), "300");
  // 300 + 250 > 500 on the key budget: neither budget may keep the 250.
  auto b = reserve(*store, both, 250);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.refusal.reason, BudgetRefusal::Reason::kOverCap);
  EXPECT_EQ(b.refusal.budget_id, "key:a/monthly");
  EXPECT_EQ(b.refusal.cap_micro, 500);
  EXPECT_EQ(b.refusal.committed_micro, 300);
  EXPECT_EQ(b.refusal.reset_unix_ms, period_window(BudgetPeriod::kMonthly, kDay1).end_unix_ms);
  EXPECT_EQ(field(gkey, "r"), "300");
  // Exactly up to the cap is allowed.
  auto c = reserve(*store, both, 200);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(field(kkey, "r"), "500");
  EXPECT_FALSE(reserve(*store, {"key:a/monthly"}, 1).ok());
  auto u = reserve(*store, {"nope/daily"}, 1);
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.refusal.reason, BudgetRefusal::Reason::kUnknownBudget);
}

TEST_F(RedisBudgetTest, SettleMovesActualToSpentAndReleasesTheRest) {
  auto store = make_store();
  auto a = reserve(*store, both, 300);
  ASSERT_TRUE(a.ok());
  auto out = settle(*store, *a.reservation, 120);
  EXPECT_TRUE(out.settled);
  EXPECT_EQ(out.overshoot_micro, 0);
  EXPECT_FALSE(a.reservation->active());
  EXPECT_EQ(field(gkey, "s"), "120");
  EXPECT_EQ(field(gkey, "r"), "0");
  EXPECT_EQ(field(kkey, "s"), "120");
  // Second settle of the same handle does nothing.
  EXPECT_FALSE(settle(*store, *a.reservation, 120).settled);
  EXPECT_EQ(field(kkey, "s"), "120");
  auto b = reserve(*store, both, 100);
  ASSERT_TRUE(b.ok());
  run(ioc, store->release(*b.reservation, steady()));
  EXPECT_EQ(field(kkey, "r"), "0");
  EXPECT_EQ(field(kkey, "s"), "120");
  // Crossing 50% of the key budget (250 of 500) alerts once, from this settlement only.
  auto c = reserve(*store, both, 200);
  ASSERT_TRUE(c.ok());
  auto crossed = settle(*store, *c.reservation, 200);
  ASSERT_EQ(crossed.alerts.size(), 1u);
  EXPECT_EQ(crossed.alerts[0].budget_id, "key:a/monthly");
  EXPECT_DOUBLE_EQ(crossed.alerts[0].threshold, 0.5);
  EXPECT_EQ(crossed.alerts[0].spent_micro, 320);
}

TEST_F(RedisBudgetTest, DestroyingAnActiveReservationReleasesIt) {
  auto store = make_store();
  {
    auto a = reserve(*store, both, 300);
    ASSERT_TRUE(a.ok());
  }
  // Up to 20 s: run_one_for() returns after each handler, so a count of calls bounds no time.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (field(kkey, "r") != "0" && std::chrono::steady_clock::now() < until)
    ioc.run_one_for(std::chrono::milliseconds(10));
  EXPECT_EQ(field(kkey, "r"), "0");
}

TEST_F(RedisBudgetTest, EachPeriodHasItsOwnKeyWithExpiry) {
  auto store = make_store();
  auto a = reserve(*store, {"global/daily"}, 700, kDay1);
  ASSERT_TRUE(a.ok());
  settle(*store, *a.reservation, 700, kDay1);
  EXPECT_FALSE(reserve(*store, {"global/daily"}, 400, kDay1).ok());
  // The next day starts from the ledger's figure for it: nothing yet.
  auto b = reserve(*store, {"global/daily"}, 400, kDay2);
  ASSERT_TRUE(b.ok());
  const std::string day2 = key_of("global/daily", BudgetPeriod::kDaily, kDay2);
  EXPECT_EQ(field(day2, "r"), "400");
  EXPECT_EQ(field(day2, "s"), "0");
  const auto w = period_window(BudgetPeriod::kDaily, kDay2);
  EXPECT_EQ(redis.command({"PEXPIRETIME", day2}), std::to_string(w.end_unix_ms + kMillisPerDay));
}

TEST_F(RedisBudgetTest, LostCountersAreRebuiltFromTheLedger) {
  // Durable history: 150 settled and 90 still open in this period, 1000 in an earlier month.
  commit_reservation(*ledger, "r1", both, 200, kDay1 - 1000);
  commit_settlement(*ledger, "r1", 150, kDay1 - 500);
  commit_reservation(*ledger, "r2", both, 90, kDay1 - 400);
  commit_reservation(*ledger, "old", {"key:a/monthly"}, 1000, kDay1 - 40LL * kMillisPerDay);
  commit_settlement(*ledger, "old", 1000, kDay1 - 40LL * kMillisPerDay);
  auto store = make_store();
  auto a = reserve(*store, both, 100);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(field(kkey, "s"), "150");
  EXPECT_EQ(field(kkey, "r"), "190");
  EXPECT_EQ(store->stats().rebuilds, 2u);
  // FLUSHALL: the next reservation rebuilds again (a's row is not in this ledger, so it is gone
  // from r; the ledger is the record).
  EXPECT_EQ(redis.command({"FLUSHALL"}), "OK");
  auto b = reserve(*store, both, 260);  // 150 + 90 + 260 = 500: exactly the key cap
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(field(kkey, "r"), "350");
  EXPECT_FALSE(reserve(*store, both, 1).ok());
  EXPECT_EQ(store->stats().rebuilds, 4u);
}

TEST_F(RedisBudgetTest, SettleAfterFlushRebuildsAndKeepsTheRequestCounted) {
  auto store = make_store();
  auto a = reserve(*store, both, 300);
  ASSERT_TRUE(a.ok());
  commit_reservation(*ledger, "a", both, 300, kDay1);  // what the gateway does next
  EXPECT_EQ(redis.command({"FLUSHALL"}), "OK");
  settle(*store, *a.reservation, 100);
  EXPECT_EQ(field(kkey, "s"), "100");
  EXPECT_EQ(field(kkey, "r"), "0");
}

TEST_F(RedisBudgetTest, ConcurrentRebuildsOfTwoReplicasWriteOnce) {
  commit_reservation(*ledger, "r1", both, 100, kDay1);
  commit_settlement(*ledger, "r1", 100, kDay1);
  auto s1 = make_store();
  auto s2 = make_store();
  int ok = 0;
  auto go = [&](std::shared_ptr<RedisBudgetStore> s) -> asio::awaitable<void> {
    auto r = co_await s->reserve(both, 50, kDay1, steady());
    if (r.ok()) {
      ++ok;
      co_await s->settle(*r.reservation, 50, kDay1, steady());
    }
  };
  bool done1 = false, done2 = false;
  asio::co_spawn(ioc, go(s1), [&](std::exception_ptr) { done1 = true; });
  asio::co_spawn(ioc, go(s2), [&](std::exception_ptr) { done2 = true; });
  while (!(done1 && done2) && ioc.run_one() > 0) {
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(s1->stats().rebuilds + s2->stats().rebuilds, 2u);  // one per key, fleet-wide
  EXPECT_EQ(field(kkey, "s"), "200");
  EXPECT_EQ(field(kkey, "r"), "0");
}

TEST_F(RedisBudgetTest, TwoReplicasOnThreadsNeverExceedTheCap) {
  // The io_contexts outlive the stores (their connections live on them).
  asio::io_context io1, io2;
  auto s1 = make_store();
  auto s2 = make_store();
  std::atomic<Micros> granted{0};
  // The connections' reader loops never finish on their own: stop each loop after its 40 calls.
  auto spawn = [&](asio::io_context& io, std::shared_ptr<RedisBudgetStore> s) {
    auto left = std::make_shared<int>(40);
    for (int i = 0; i < 40; ++i) {
      asio::co_spawn(
          io,
          [&granted, &io, left, s]() -> asio::awaitable<void> {
            std::vector<std::string> ids(1, "key:a/monthly");
            auto r = co_await s->reserve(ids, 30, kDay1, steady());
            if (r.ok()) {
              granted += 30;
              co_await s->settle(*r.reservation, 30, kDay1, steady());
            }
            if (--*left == 0) io.stop();
          },
          asio::detached);
    }
  };
  spawn(io1, s1);
  spawn(io2, s2);
  std::thread t1([&] { io1.run(); }), t2([&] { io2.run(); });
  t1.join();
  t2.join();
  EXPECT_EQ(granted.load(), 480);  // 16 x 30 <= 500 < 17 x 30
  EXPECT_EQ(field(kkey, "s"), "480");
  EXPECT_EQ(field(kkey, "r"), "0");
  s1.reset();
  s2.reset();
}

TEST_F(RedisBudgetTest, UnreachableRedisUsesTheLocalShareWithinTheDeadline) {
  RedisBudgetOptions o;
  o.timeout = 30 * kNanosPerMilli;
  o.replicas = 2;
  o.breaker_failures = 2;
  o.stale_after = 100 * kNanosPerMilli;
  auto store = make_store(o);
  auto a = reserve(*store, {"key:a/monthly"}, 100);  // Redis sees 100 committed
  ASSERT_TRUE(a.ok());
  settle(*store, *a.reservation, 100);
  redis.pause();
  const auto t0 = std::chrono::steady_clock::now();
  auto b = reserve(*store, {"key:a/monthly"}, 150);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_LT(took, std::chrono::milliseconds(300));
  // Local share: (500 - 100) / 2 = 200.
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b.reservation->local());
  EXPECT_FALSE(reserve(*store, {"key:a/monthly"}, 51).ok());
  EXPECT_TRUE(store->degraded());
  auto c = reserve(*store, {"key:a/monthly"}, 50);  // breaker open: no waiting at all
  ASSERT_TRUE(c.ok());
  settle(*store, *b.reservation, 150);
  settle(*store, *c.reservation, 50);
  EXPECT_EQ(store->stats().backlog, 1u);
  // Long enough that the two calls stuck in Redis' socket buffer are stale when it wakes up.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  redis.resume();
  // After the cooldown one probe goes through; the locally settled 200 reaches Redis.
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  auto d = reserve(*store, {"key:a/monthly"}, 10);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d.reservation->local());
  // Up to 20 s: run_one_for() returns after each handler, so a count of calls bounds no time.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (field(kkey, "s") != "300" && std::chrono::steady_clock::now() < until) {
    ioc.run_one_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(field(kkey, "s"), "300") << store->stats().backlog << " " << store->stats().failures;
  // The two reservations that timed out reached Redis only after SIGCONT: dropped, not held.
  EXPECT_EQ(field(kkey, "r"), "10");
  EXPECT_FALSE(store->degraded());
  settle(*store, *d.reservation, 10);
}

TEST_F(RedisBudgetTest, WithoutALedgerALostCounterIsNeverRestartedAtZero) {
  RedisBudgetOptions o;
  o.replicas = 4;
  auto store = make_store(o, /*with_ledger=*/false);
  auto a = reserve(*store, {"key:a/monthly"}, 100);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a.reservation->local());  // 500 / 4 = 125 locally
  EXPECT_FALSE(reserve(*store, {"key:a/monthly"}, 26).ok());
  EXPECT_EQ(redis.command({"EXISTS", kkey}), "0");
  EXPECT_FALSE(store->degraded());  // Redis itself answers
}

TEST_F(RedisBudgetTest, LedgerTotalsFilterByBudgetAndWindow) {
  commit_reservation(*ledger, "x1", {"global/daily"}, 10, kDay1);
  commit_settlement(*ledger, "x1", 7, kDay1);
  commit_reservation(*ledger, "x2", {"global/daily"}, 20, kDay2);
  commit_reservation(*ledger, "x3", {"key:a/monthly"}, 30, kDay1);
  auto t = ledger_budget_totals(*ledger, budgets,
                                {{"global/daily", period_window(BudgetPeriod::kDaily, kDay1)},
                                 {"global/daily", period_window(BudgetPeriod::kDaily, kDay2)},
                                 {"key:a/monthly", period_window(BudgetPeriod::kMonthly, kDay1)}});
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->size(), 3u);
  EXPECT_EQ((*t)[0].spent_micro, 7);
  EXPECT_EQ((*t)[0].reserved_micro, 0);
  EXPECT_EQ((*t)[1].spent_micro, 0);
  EXPECT_EQ((*t)[1].reserved_micro, 20);
  EXPECT_EQ((*t)[2].reserved_micro, 30);
}

}  // namespace
}  // namespace bw::cost
