// test-label: unit postgres
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sched.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <set>

#include <thread>
#include <tuple>

#include "backends.h"
#include "cost/recovery.h"

namespace bw::store {
using namespace bw::cost;
namespace {

constexpr std::int64_t kJan1 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z
constexpr std::int64_t kDay = kMillisPerDay;

// Builds "<prefix><n>" by appending: g++ 12 at -O3 emits a false -Wrestrict for "x" + to_string().
std::string id_of(std::string prefix, long n) {
  prefix += std::to_string(n);
  return prefix;
}

std::string crash_id(int cycle, long i) {
  return id_of(id_of("c", cycle) + "-", i);
}

LedgerReservation reservation(std::string id, std::string key, std::string tenant,
                              std::string model, Micros amount, std::int64_t created,
                              std::vector<std::string> budgets = {}) {
  return {std::move(id), std::move(key), std::move(tenant), std::move(model), std::move(budgets),
          amount,        created};
}

LedgerSettlement settlement(std::string id, Micros actual, std::int64_t when,
                            LedgerStatus status = LedgerStatus::kSettled) {
  return {std::move(id), status, actual, 100, 50, when};
}

// The same cases run against every backend (tests/cost/backends.h): SQLite and PostgreSQL must
// behave identically for recovery and the spend report to work on either.
template <class B>
class LedgerParity : public testing::BackendTest<B> {};
TYPED_TEST_SUITE(LedgerParity, testing::Backends, testing::BackendNames);
template <class B>
class Recovery : public testing::BackendTest<B> {};
TYPED_TEST_SUITE(Recovery, testing::Backends, testing::BackendNames);
template <class B>
class Migrations : public testing::BackendTest<B> {};
TYPED_TEST_SUITE(Migrations, testing::Backends, testing::BackendNames);
template <class B>
class LedgerCrashSafety : public testing::BackendTest<B> {};
TYPED_TEST_SUITE(LedgerCrashSafety, testing::Backends, testing::BackendNames);

// Appends and waits for the commit; returns the callback's result.
Result<Ok> append_sync(Ledger& l, const LedgerReservation& r) {
  std::optional<Result<Ok>> out;
  EXPECT_TRUE(l.append_reservation(r, [&](const Result<Ok>& res) { out = res; }));
  l.flush();
  return out.value_or(Result<Ok>(make_error(500, "", "", "no callback")));
}
Result<Ok> append_sync(Ledger& l, const LedgerSettlement& s) {
  std::optional<Result<Ok>> out;
  EXPECT_TRUE(l.append_settlement(s, [&](const Result<Ok>& res) { out = res; }));
  l.flush();
  return out.value_or(Result<Ok>(make_error(500, "", "", "no callback")));
}

TYPED_TEST(LedgerParity, GroupCommitRunsEveryCallbackAfterCommit) {
  auto ledger = this->backend().open_ledger();
  ASSERT_TRUE(ledger);
  constexpr int kRecords = 500;
  std::atomic<int> ok{0};
  for (int i = 0; i < kRecords; ++i) {
    ASSERT_TRUE(ledger->append_reservation(
        reservation(id_of("r", i), "key_a", "acme", "gpt-4.1", 10, kJan1 + i),
        [&](const Result<Ok>& r) { ok += r.ok() ? 1 : 0; }));
  }
  ledger->flush();
  EXPECT_EQ(ok.load(), kRecords);
  const LedgerStats s = ledger->stats();
  EXPECT_EQ(s.records_committed, static_cast<std::uint64_t>(kRecords));
  EXPECT_EQ(s.records_failed, 0u);
  EXPECT_GE(s.commits, 1u);
  EXPECT_LE(s.commits, static_cast<std::uint64_t>(kRecords));
  EXPECT_EQ(s.queue_depth, 0u);
  auto row = ledger->find("r499");
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(row->has_value());
  EXPECT_EQ((*row)->status, LedgerStatus::kOpen);
  EXPECT_EQ((*row)->reserved_micro, 10);
  EXPECT_EQ((*row)->created_unix_ms, kJan1 + 499);
}

// Records queued without waking the writer share one group commit once kicked; without a kick
// they are still committed (the writer's safety wake), never left queued.
TYPED_TEST(LedgerParity, DeferredRecordsShareACommitAfterOneKick) {
  auto ledger = this->backend().open_ledger();
  ASSERT_TRUE(ledger);
  std::atomic<int> ok{0};
  ASSERT_TRUE(append_sync(*ledger, reservation("warm", "key_a", "acme", "gpt-4.1", 1, kJan1)).ok());
  const std::uint64_t commits_before = ledger->stats().commits;
  constexpr int kRecords = 20;
  const auto appends_from = std::chrono::steady_clock::now();
  for (int i = 0; i < kRecords; ++i) {
    ASSERT_TRUE(ledger->append_reservation(
        reservation(id_of("d", i), "key_a", "acme", "gpt-4.1", 10, kJan1 + i),
        [&](const Result<Ok>& r) { ok += r.ok() ? 1 : 0; }, Ledger::Wake::kDeferred));
  }
  const auto appends_took = std::chrono::steady_clock::now() - appends_from;
  ledger->kick();
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (ok.load() < kRecords && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(ok.load(), kRecords);
  // One kick, one transaction for all of them (the writer slept while they were queued); one
  // more for each 10 ms safety wake that fell between two of the appends: one at most when they
  // take microseconds, more only when this thread was descheduled in the middle of them.
  const auto safety_wakes =
      1 + static_cast<std::uint64_t>(appends_took / std::chrono::milliseconds(10));
  EXPECT_LE(ledger->stats().commits - commits_before, 1 + safety_wakes)
      << "the appends took "
      << std::chrono::duration_cast<std::chrono::microseconds>(appends_took).count() << " us";

  ASSERT_TRUE(
      ledger->append_settlement(settlement("d0", 5, kJan1 + 100), {}, Ledger::Wake::kDeferred));
  bool settled = false;
  const auto settle_until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!settled && std::chrono::steady_clock::now() < settle_until) {
    // No kick: the safety wake commits it.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    auto row = ledger->find("d0");
    settled = row.ok() && row->has_value() && (*row)->status == LedgerStatus::kSettled;
  }
  EXPECT_TRUE(settled);
}

TYPED_TEST(LedgerParity, SettleReleaseAndPerRecordErrors) {
  auto ledger = this->backend().open_ledger();
  ASSERT_TRUE(ledger);
  ASSERT_TRUE(append_sync(*ledger, reservation("a", "key_a", "acme", "gpt-4.1", 1000, kJan1,
                                               {"global/monthly", "key:key_a/daily"}))
                  .ok());
  ASSERT_TRUE(append_sync(*ledger, reservation("b", "key_a", "acme", "gpt-4.1", 2000, kJan1)).ok());
  auto dup = append_sync(*ledger, reservation("a", "key_a", "acme", "gpt-4.1", 1, kJan1));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, "duplicate_request_id");

  ASSERT_TRUE(append_sync(*ledger, settlement("a", 750, kJan1 + 5)).ok());
  ASSERT_TRUE(append_sync(*ledger, settlement("b", 999, kJan1 + 6, LedgerStatus::kReleased)).ok());
  auto again = append_sync(*ledger, settlement("a", 1, kJan1 + 7));
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, "not_open");
  EXPECT_FALSE(append_sync(*ledger, settlement("ghost", 1, kJan1)).ok());

  auto a = ledger->find("a");
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ((*a)->status, LedgerStatus::kSettled);
  EXPECT_EQ((*a)->actual_micro, 750);
  EXPECT_EQ((*a)->prompt_tokens, 100);
  EXPECT_EQ((*a)->completion_tokens, 50);
  EXPECT_EQ((*a)->settled_unix_ms, kJan1 + 5);
  EXPECT_EQ((*a)->budgets, (std::vector<std::string>{"global/monthly", "key:key_a/daily"}));
  auto b = ledger->find("b");
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->status, LedgerStatus::kReleased);
  EXPECT_EQ((*b)->actual_micro, 0);
  EXPECT_EQ(ledger->stats().records_failed, 3u);
  auto none = ledger->find("zzz");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TYPED_TEST(LedgerParity, BoundedQueueRefusesWhenFull) {
  auto ledger = this->backend().open_ledger(/*capacity=*/4);
  ASSERT_TRUE(ledger);
  // Hold the writer inside the first callback so the queue cannot drain.
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, release = false;
  ASSERT_TRUE(ledger->append_reservation(reservation("block", "k", "t", "m", 1, kJan1),
                                         [&](const Result<Ok>&) {
                                           std::unique_lock lock(mu);
                                           entered = true;
                                           cv.notify_all();
                                           cv.wait(lock, [&] { return release; });
                                         }));
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return entered; });
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(
        ledger->append_reservation(reservation(id_of("q", i), "k", "t", "m", 1, kJan1), nullptr));
  }
  EXPECT_FALSE(ledger->append_reservation(reservation("over", "k", "t", "m", 1, kJan1), nullptr));
  EXPECT_EQ(ledger->stats().queue_full, 1u);
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  ledger->flush();
  EXPECT_EQ(ledger->stats().records_committed, 5u);
}

TYPED_TEST(LedgerParity, SpendReports) {
  auto ledger = this->backend().open_ledger();
  ASSERT_TRUE(ledger);
  struct Row {
    const char* id;
    const char* key;
    const char* tenant;
    const char* model;
    std::int64_t created;
    Micros reserved;
    std::optional<Micros> actual;  // nullopt = stays open
  };
  const Row rows[] = {
      {"1", "key_a", "acme", "gpt-4.1", kJan1 + 10, 100, 40},
      {"2", "key_a", "acme", "deepseek-v3.2", kJan1 + kDay + 10, 100, 60},
      {"3", "key_b", "acme", "gpt-4.1", kJan1 + kDay + 20, 300, std::nullopt},
      {"4", "key_c", "beta", "gpt-4.1", kJan1 + 30, 500, 500},
      {"5", "key_c", "beta", "gpt-4.1", kJan1 + 40 * kDay, 1, 1},  // outside the window
  };
  for (const auto& r : rows) {
    ASSERT_TRUE(
        append_sync(*ledger, reservation(r.id, r.key, r.tenant, r.model, r.reserved, r.created))
            .ok());
    if (r.actual) {
      ASSERT_TRUE(append_sync(*ledger, settlement(r.id, *r.actual, r.created)).ok());
    }
  }
  const std::int64_t from = kJan1, to = kJan1 + 31 * kDay;
  auto by_key = ledger->spend_report(SpendGroup::kKey, from, to);
  ASSERT_TRUE(by_key.ok());
  ASSERT_EQ(by_key->size(), 3u);
  EXPECT_EQ((*by_key)[0].group, "key_a");
  EXPECT_EQ((*by_key)[0].requests, 2);
  EXPECT_EQ((*by_key)[0].actual_micro, 100);
  EXPECT_EQ((*by_key)[0].prompt_tokens, 200);
  EXPECT_EQ((*by_key)[1].group, "key_b");
  EXPECT_EQ((*by_key)[1].actual_micro, 0);
  EXPECT_EQ((*by_key)[1].open_reserved_micro, 300);
  EXPECT_EQ((*by_key)[2].actual_micro, 500);

  auto by_tenant = ledger->spend_report(SpendGroup::kTenant, from, to);
  ASSERT_TRUE(by_tenant.ok());
  ASSERT_EQ(by_tenant->size(), 2u);
  EXPECT_EQ((*by_tenant)[0].group, "acme");
  EXPECT_EQ((*by_tenant)[0].actual_micro, 100);
  EXPECT_EQ((*by_tenant)[1].group, "beta");
  EXPECT_EQ((*by_tenant)[1].requests, 1);

  auto by_model = ledger->spend_report(SpendGroup::kModel, from, to);
  ASSERT_TRUE(by_model.ok());
  ASSERT_EQ(by_model->size(), 2u);
  EXPECT_EQ((*by_model)[0].group, "deepseek-v3.2");
  EXPECT_EQ((*by_model)[1].group, "gpt-4.1");
  EXPECT_EQ((*by_model)[1].actual_micro, 540);

  auto by_day = ledger->spend_report(SpendGroup::kDay, from, to);
  ASSERT_TRUE(by_day.ok());
  ASSERT_EQ(by_day->size(), 2u);
  EXPECT_EQ((*by_day)[0].group, "2026-01-01");
  EXPECT_EQ((*by_day)[0].actual_micro, 540);
  EXPECT_EQ((*by_day)[1].group, "2026-01-02");
  EXPECT_EQ((*by_day)[1].actual_micro, 60);
  EXPECT_EQ((*by_day)[1].open_reserved_micro, 300);
}

// Days are UTC calendar days at their edges (the last millisecond of a leap day, a century
// that is not a leap year), and the settled spend groups by budgets, key, tenant and day, sorted.
TYPED_TEST(LedgerParity, SpendGroupsByUtcDayAndBudgetSet) {
  auto ledger = this->backend().open_ledger();
  ASSERT_TRUE(ledger);
  constexpr std::int64_t kLeapDay = 1709164800000;  // 2024-02-29T00:00:00Z
  constexpr std::int64_t kMar2100 = 4107542400000;  // 2100-03-01T00:00:00Z
  const std::vector<std::string> b1 = {"global/monthly", "key:k1/monthly"};
  const std::vector<std::string> b2 = {"global/monthly"};
  struct Row {
    const char* id;
    std::int64_t created;
    const std::vector<std::string>* budgets;
    Micros actual;
  };
  const Row rows[] = {
      {"d1", kLeapDay + kDay - 1, &b1, 10},  // 2024-02-29, its last millisecond
      {"d2", kLeapDay + kDay, &b1, 20},      // 2024-03-01
      {"d3", kLeapDay + kDay + 5, &b1, 30},  // 2024-03-01
      {"d4", kLeapDay + 7, &b2, 40},         // 2024-02-29, other budgets
      {"d5", kMar2100 - 1, &b2, 50},         // 2100-02-28 (2100 has no 29 February)
  };
  for (const auto& r : rows) {
    ASSERT_TRUE(
        append_sync(*ledger, reservation(r.id, "k1", "t1", "gpt-4.1", 100, r.created, *r.budgets))
            .ok());
    ASSERT_TRUE(append_sync(*ledger, settlement(r.id, r.actual, r.created)).ok());
  }
  auto by_day = ledger->spend_report(SpendGroup::kDay, kLeapDay - kDay, kMar2100);
  ASSERT_TRUE(by_day.ok());
  ASSERT_EQ(by_day->size(), 3u);
  EXPECT_EQ((*by_day)[0].group, "2024-02-29");
  EXPECT_EQ((*by_day)[0].actual_micro, 50);
  EXPECT_EQ((*by_day)[0].requests, 2);
  EXPECT_EQ((*by_day)[1].group, "2024-03-01");
  EXPECT_EQ((*by_day)[1].actual_micro, 50);
  EXPECT_EQ((*by_day)[2].group, "2100-02-28");
  EXPECT_EQ((*by_day)[2].prompt_tokens, 100);

  auto settled = ledger->settled_since(kLeapDay);
  ASSERT_TRUE(settled.ok());
  ASSERT_EQ(settled->size(), 4u);
  std::sort(settled->begin(), settled->end(), [](const auto& a, const auto& b) {
    return std::tie(a.budgets, a.day_start_unix_ms) < std::tie(b.budgets, b.day_start_unix_ms);
  });
  const auto expect = [&](std::size_t i, const std::vector<std::string>& budgets, std::int64_t day,
                          Micros actual) {
    SCOPED_TRACE(i);
    EXPECT_EQ((*settled)[i].budgets, budgets);
    EXPECT_EQ((*settled)[i].key_id, "k1");
    EXPECT_EQ((*settled)[i].tenant_id, "t1");
    EXPECT_EQ((*settled)[i].day_start_unix_ms, day);
    EXPECT_EQ((*settled)[i].actual_micro, actual);
  };
  expect(0, b2, kLeapDay, 40);
  expect(1, b2, kMar2100 - kDay, 50);
  expect(2, b1, kLeapDay, 10);
  expect(3, b1, kLeapDay + kDay, 50);
}

TYPED_TEST(Recovery, RebuildsCountersAndReconcilesOpenReservations) {
  const std::string gm = global_budget_id(BudgetPeriod::kMonthly);
  const std::string kd = key_budget_id("key_a", BudgetPeriod::kDaily);
  const std::string tt = tenant_budget_id("acme", BudgetPeriod::kTotal);
  const std::int64_t now = kJan1 + 3 * kDay + 5000;  // Jan 4th
  {
    auto ledger = this->backend().open_ledger();
    ASSERT_TRUE(ledger);
    const std::vector<std::string> all = {gm, kd, tt};
    // Last month (counts only in the total budget).
    ASSERT_TRUE(
        append_sync(*ledger, reservation("dec", "key_a", "acme", "m", 900, kJan1 - 5, all)).ok());
    ASSERT_TRUE(append_sync(*ledger, settlement("dec", 800, kJan1 - 4)).ok());
    // Earlier this month (global + total).
    ASSERT_TRUE(
        append_sync(*ledger, reservation("jan2", "key_a", "acme", "m", 500, kJan1 + kDay, all))
            .ok());
    ASSERT_TRUE(append_sync(*ledger, settlement("jan2", 300, kJan1 + kDay)).ok());
    // Today (all three).
    ASSERT_TRUE(
        append_sync(*ledger, reservation("t1", "key_a", "acme", "m", 200, now - 1000, all)).ok());
    ASSERT_TRUE(append_sync(*ledger, settlement("t1", 120, now - 900)).ok());
    // Released today: counts nowhere.
    ASSERT_TRUE(
        append_sync(*ledger, reservation("t2", "key_a", "acme", "m", 999, now - 800, all)).ok());
    ASSERT_TRUE(append_sync(*ledger, settlement("t2", 0, now - 700, LedgerStatus::kReleased)).ok());
    // Open when the process died.
    ASSERT_TRUE(
        append_sync(*ledger, reservation("o1", "key_a", "acme", "m", 70, now - 600, all)).ok());
    ASSERT_TRUE(
        append_sync(*ledger, reservation("o2", "key_a", "acme", "m", 30, now - 500, all)).ok());
  }
  auto ledger = this->backend().open_ledger();
  ASSERT_TRUE(ledger);
  BudgetManager m;
  ASSERT_TRUE(m.upsert_budget({gm, 10'000, BudgetPeriod::kMonthly}));
  ASSERT_TRUE(m.upsert_budget({kd, 10'000, BudgetPeriod::kDaily}));
  ASSERT_TRUE(m.upsert_budget({tt, 10'000, BudgetPeriod::kTotal}));
  auto report = recover_budgets(*ledger, m, now);
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->settled_micro, 1220);
  ASSERT_EQ(report->open.size(), 2u);
  EXPECT_EQ(report->open[0].row.request_id, "o1");
  EXPECT_EQ(m.snapshot(kd, now)->spent_micro, 120);
  EXPECT_EQ(m.snapshot(gm, now)->spent_micro, 420);
  EXPECT_EQ(m.snapshot(tt, now)->spent_micro, 1220);
  for (const auto& id : {gm, kd, tt}) EXPECT_EQ(m.snapshot(id, now)->reserved_micro, 100) << id;

  // Settle o1 at 50, release o2.
  ASSERT_TRUE(reconcile(*ledger, m, report->open[0], Micros{50}, now + 1).ok());
  ASSERT_TRUE(reconcile(*ledger, m, report->open[1], std::nullopt, now + 1).ok());
  EXPECT_EQ(m.snapshot(kd, now)->spent_micro, 170);
  EXPECT_EQ(m.snapshot(tt, now)->spent_micro, 1270);
  for (const auto& id : {gm, kd, tt}) EXPECT_EQ(m.snapshot(id, now)->reserved_micro, 0) << id;
  auto open = ledger->open_reservations();
  ASSERT_TRUE(open.ok());
  EXPECT_TRUE(open->empty());
  EXPECT_EQ((*ledger->find("o1"))->actual_micro, 50);
  EXPECT_EQ((*ledger->find("o2"))->status, LedgerStatus::kReleased);
  // Reconciling twice fails in the ledger and leaves memory unchanged.
  EXPECT_FALSE(reconcile(*ledger, m, report->open[0], Micros{50}, now + 2).ok());
  EXPECT_EQ(m.snapshot(kd, now)->spent_micro, 170);
}

TYPED_TEST(Migrations, UpgradesAnOldDatabaseAndKeepsRows) {
  testing::Backend& db = this->backend();
  {
    ASSERT_TRUE(db.migrate_to(1).ok());
    EXPECT_EQ(*db.schema_version(), 1);
    // A v1 binary's rows: no budgets column yet.
    ASSERT_TRUE(db.exec("INSERT INTO ledger (request_id, key_id, tenant_id, model, reserved_micro,"
                        " actual_micro, status, created_unix_ms) VALUES"
                        " ('old1', 'key_a', 'acme', 'gpt-4.1', 500, 400, 'settled', 1767225600001),"
                        " ('old2', 'key_a', 'acme', 'gpt-4.1', 90, 0, 'open', 1767225600002)")
                    .ok());
  }
  auto ledger = db.open_ledger();
  ASSERT_TRUE(ledger);
  {
    EXPECT_EQ(*db.schema_version(), db.current_version());
    EXPECT_EQ(*db.query_int("SELECT COUNT(*) FROM api_keys"), 0);
  }
  auto row = ledger->find("old1");
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_TRUE((*row)->budgets.empty());
  EXPECT_EQ((*row)->actual_micro, 400);
  // Legacy rows are attributed by key/tenant/global prefix.
  BudgetManager m;
  ASSERT_TRUE(m.upsert_budget({"global/monthly", 10'000, BudgetPeriod::kMonthly}));
  ASSERT_TRUE(m.upsert_budget({"key:key_a/daily", 10'000, BudgetPeriod::kDaily}));
  ASSERT_TRUE(m.upsert_budget({"key:key_b/daily", 10'000, BudgetPeriod::kDaily}));
  ASSERT_TRUE(m.upsert_budget({"tenant:acme/total", 10'000, BudgetPeriod::kTotal}));
  auto report = recover_budgets(*ledger, m, kJan1 + 1000);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(m.snapshot("global/monthly", kJan1)->spent_micro, 400);
  EXPECT_EQ(m.snapshot("key:key_a/daily", kJan1)->spent_micro, 400);
  EXPECT_EQ(m.snapshot("key:key_a/daily", kJan1)->reserved_micro, 90);
  EXPECT_EQ(m.snapshot("tenant:acme/total", kJan1)->spent_micro, 400);
  EXPECT_EQ(m.snapshot("key:key_b/daily", kJan1)->spent_micro, 0);
  // New rows work on the upgraded schema.
  EXPECT_TRUE(
      append_sync(*ledger, reservation("new", "k", "t", "m", 1, kJan1, {"global/monthly"})).ok());
}

TYPED_TEST(Migrations, RefusesANewerDatabase) {
  ASSERT_TRUE(this->backend().mark_schema_version(99).ok());
  auto l = this->backend().try_open_ledger(65'536, 4'096);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.error().message.find("newer"), std::string::npos);
}

// Reads newline-terminated acks from `fd` into `acks` until `want` lines (or EOF when want < 0).
void read_acks(int fd, std::string& buf, std::vector<std::string>& acks, long want) {
  char chunk[4096];
  while (want < 0 || static_cast<long>(acks.size()) < want) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    buf.append(chunk, static_cast<std::size_t>(n));
    std::size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      acks.push_back(buf.substr(0, nl));
      buf.erase(0, nl + 1);
    }
  }
}

[[noreturn]] void crash_child(testing::Backend& backend, int cycle, int ack_fd) {
  auto opened = backend.try_open_ledger(/*capacity=*/256, /*max_batch=*/4'096);
  if (!opened.ok()) _exit(2);
  auto ledger = std::move(*opened);
  auto ack = [ack_fd](std::string line) {
    return [ack_fd, line = std::move(line)](const Result<Ok>& r) {
      if (!r.ok()) return;
      const std::string msg = line + "\n";
      // < PIPE_BUF: atomic, never interleaved with another ack.
      if (::write(ack_fd, msg.data(), msg.size()) < 0) _exit(3);
    };
  };
  for (long i = 0;; ++i) {
    const std::string id = crash_id(cycle, i);
    while (!ledger->append_reservation(
        reservation(id, "key_a", "acme", "gpt-4.1", 1000 + i, kJan1 + i, {"global/monthly"}),
        ack("R " + id))) {
      sched_yield();
    }
    if (i % 2 == 1) {
      const std::string prev = crash_id(cycle, i - 1);
      while (!ledger->append_settlement(settlement(prev, 500, kJan1 + i), ack("S " + prev))) {
        sched_yield();
      }
    }
  }
}

// A writer process is SIGKILLed at a random moment, 20 times over the same file. Every record
// whose completion callback fired must survive, and the database must stay intact.
TYPED_TEST(LedgerCrashSafety, AckedRecordsSurviveSigkill) {
  std::mt19937 rng(20261129);
  std::size_t total_acked = 0;
  for (int cycle = 0; cycle < 20; ++cycle) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      crash_child(this->backend(), cycle, fds[1]);
    }
    ::close(fds[1]);
    std::string buf;
    std::vector<std::string> acks;
    // Kill after a random number of acks: somewhere inside a batch, a commit or a callback run.
    const long kill_after = 1 + static_cast<long>(rng() % 400);
    read_acks(fds[0], buf, acks, kill_after);
    ASSERT_GE(static_cast<long>(acks.size()), kill_after) << "child died early, cycle " << cycle;
    ::kill(pid, SIGKILL);
    read_acks(fds[0], buf, acks, -1);  // acks written before death
    ::close(fds[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    total_acked += acks.size();

    EXPECT_EQ(this->backend().integrity_problem(), "") << "cycle " << cycle;
    auto ledger = this->backend().open_ledger();
    ASSERT_TRUE(ledger);
    for (const auto& a : acks) {
      const std::string id = a.substr(2);
      auto row = ledger->find(id);
      ASSERT_TRUE(row.ok());
      ASSERT_TRUE(row->has_value()) << "lost acked record " << a << " in cycle " << cycle;
      if (a[0] == 'S') {
        EXPECT_EQ((*row)->status, LedgerStatus::kSettled) << a;
        EXPECT_EQ((*row)->actual_micro, 500) << a;
      }
    }
  }
  EXPECT_GE(total_acked, 20u);
}

// The callback means "committed": another connection must already see the row when it runs.
TYPED_TEST(LedgerParity, CallbackRunsAfterTheCommitIsVisible) {
  auto ledger = this->backend().open_ledger();
  auto observer = this->backend().open_ledger();
  ASSERT_TRUE(ledger && observer);
  constexpr int kRecords = 50;
  std::atomic<int> visible{0};
  for (int i = 0; i < kRecords; ++i) {
    const std::string id = id_of("v", i);
    ASSERT_TRUE(ledger->append_reservation(
        reservation(id, "key_a", "acme", "gpt-4.1", 7, kJan1 + i), [&, id](const Result<Ok>& r) {
          if (!r.ok()) return;
          auto row = observer->find(id);
          if (row.ok() && row->has_value() && (*row)->status == LedgerStatus::kOpen) ++visible;
        }));
  }
  ledger->flush();
  EXPECT_EQ(visible.load(), kRecords);
}

TYPED_TEST(LedgerParity, ConcurrentAppendsFromSeveralThreads) {
  auto ledger = this->backend().open_ledger();
  ASSERT_TRUE(ledger);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string id = id_of(id_of("t", t) + "-", i);
        auto cb = [&](const Result<Ok>& r) { (r.ok() ? ok : failed) += 1; };
        while (!ledger->append_reservation(
            reservation(id, id_of("key_", t), "acme", "gpt-4.1", 100, kJan1 + i), cb)) {
          std::this_thread::yield();
        }
        // Every second request settles at once: a settlement may share the batch of its
        // reservation and must be applied after it.
        if (i % 2 == 0) {
          while (!ledger->append_settlement(settlement(id, 40, kJan1 + i), cb)) {
            std::this_thread::yield();
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  ledger->flush();
  constexpr int kRecords = kThreads * kPerThread + kThreads * kPerThread / 2;
  EXPECT_EQ(ok.load(), kRecords);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(ledger->stats().records_committed, static_cast<std::uint64_t>(kRecords));
  auto by_key = ledger->spend_report(SpendGroup::kKey, kJan1, kJan1 + kDay);
  ASSERT_TRUE(by_key.ok());
  ASSERT_EQ(by_key->size(), static_cast<std::size_t>(kThreads));
  for (int t = 0; t < kThreads; ++t) {
    const auto& row = (*by_key)[static_cast<std::size_t>(t)];
    EXPECT_EQ(row.group, id_of("key_", t));
    EXPECT_EQ(row.requests, kPerThread);
    EXPECT_EQ(row.actual_micro, 40 * kPerThread / 2);
    EXPECT_EQ(row.open_reserved_micro, 100 * kPerThread / 2);
  }
  auto open = ledger->open_reservations();
  ASSERT_TRUE(open.ok());
  EXPECT_EQ(open->size(), static_cast<std::size_t>(kThreads * kPerThread / 2));
}

// Two gateway replicas on one ledger: both append at the same time, each sees the other's rows,
// and a request id is unique across both.
TYPED_TEST(LedgerParity, TwoInstancesOnOneStorageBothAppend) {
  auto a = this->backend().open_ledger();
  auto b = this->backend().open_ledger();
  ASSERT_TRUE(a && b);
  constexpr int kPerReplica = 300;
  std::atomic<int> ok{0}, failed{0};
  auto cb = [&](const Result<Ok>& r) { (r.ok() ? ok : failed) += 1; };
  std::thread ta([&] {
    for (int i = 0; i < kPerReplica; ++i) {
      while (!a->append_reservation(reservation(id_of("a", i), "key_a", "acme", "m", 3, kJan1 + i),
                                    cb)) {
        std::this_thread::yield();
      }
    }
  });
  std::thread tb([&] {
    for (int i = 0; i < kPerReplica; ++i) {
      while (!b->append_reservation(reservation(id_of("b", i), "key_b", "acme", "m", 5, kJan1 + i),
                                    cb)) {
        std::this_thread::yield();
      }
    }
  });
  ta.join();
  tb.join();
  a->flush();
  b->flush();
  EXPECT_EQ(ok.load(), 2 * kPerReplica);
  EXPECT_EQ(failed.load(), 0);
  // Replica b settles a row that replica a reserved (e.g. the settle ran after a failover).
  ASSERT_TRUE(append_sync(*b, settlement("a7", 2, kJan1 + 10)).ok());
  auto dup = append_sync(*a, reservation("b3", "key_b", "acme", "m", 1, kJan1));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, "duplicate_request_id");
  auto row = a->find("a7");
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->status, LedgerStatus::kSettled);
  EXPECT_EQ((*row)->actual_micro, 2);
  auto by_tenant = b->spend_report(SpendGroup::kTenant, kJan1, kJan1 + kDay);
  ASSERT_TRUE(by_tenant.ok());
  ASSERT_EQ(by_tenant->size(), 1u);
  EXPECT_EQ((*by_tenant)[0].requests, 2 * kPerReplica);
  EXPECT_EQ((*by_tenant)[0].actual_micro, 2);
  EXPECT_EQ((*by_tenant)[0].open_reserved_micro, 3 * kPerReplica + 5 * kPerReplica - 3);
}

TYPED_TEST(Migrations, EmptyThenAlreadyMigratedStorage) {
  testing::Backend& db = this->backend();
  EXPECT_EQ(*db.schema_version(), 0);
  {
    auto ledger = db.open_ledger();
    ASSERT_TRUE(ledger);
    EXPECT_EQ(*db.schema_version(), db.current_version());
    ASSERT_TRUE(append_sync(*ledger, reservation("keep", "k", "t", "m", 11, kJan1)).ok());
  }
  // Re-opening (a restart, or another replica) applies nothing and keeps the rows.
  auto keys = db.open_key_store();
  ASSERT_TRUE(keys);
  auto ledger = db.open_ledger();
  ASSERT_TRUE(ledger);
  EXPECT_EQ(*db.schema_version(), db.current_version());
  ASSERT_TRUE(db.migrate_to(db.current_version()).ok());
  EXPECT_EQ(*db.schema_version(), db.current_version());
  auto row = ledger->find("keep");
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->reserved_micro, 11);
  EXPECT_EQ(*db.query_int("SELECT COUNT(*) FROM ledger"), 1);
}

// Replicas starting at the same moment on an empty database: every one opens, and each
// migration step is applied exactly once.
TYPED_TEST(Migrations, ConcurrentOpenersMigrateOnce) {
  testing::Backend& db = this->backend();
  constexpr int kOpeners = 6;
  std::vector<std::unique_ptr<Ledger>> ledgers(kOpeners);
  std::vector<std::string> errors(kOpeners);
  std::vector<std::thread> threads;
  for (int i = 0; i < kOpeners; ++i) {
    threads.emplace_back([&, i] {
      auto l = db.try_open_ledger(1'024, 256);
      if (l.ok()) {
        ledgers[static_cast<std::size_t>(i)] = std::move(*l);
      } else {
        errors[static_cast<std::size_t>(i)] = l.error().message;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kOpeners; ++i) {
    EXPECT_EQ(errors[static_cast<std::size_t>(i)], "") << "opener " << i;
    EXPECT_TRUE(ledgers[static_cast<std::size_t>(i)]) << "opener " << i;
  }
  EXPECT_EQ(*db.schema_version(), db.current_version());
  for (int i = 0; i < kOpeners; ++i) {
    if (!ledgers[static_cast<std::size_t>(i)]) continue;
    EXPECT_TRUE(append_sync(*ledgers[static_cast<std::size_t>(i)],
                            reservation(id_of("m", i), "k", "t", "m", 1, kJan1))
                    .ok());
  }
}

}  // namespace
}  // namespace bw::store

namespace bw::store::testing {

// A SQLite ledger (synchronous=NORMAL) in a fresh temporary file, removed with its WAL and
// shared-memory files when the test ends.
struct TempSqliteLedger {
  explicit TempSqliteLedger(const std::string& name, int busy_timeout_ms = 5'000,
                            const std::function<void(SqliteLedgerOptions&)>& tweak = {})
      : path((std::filesystem::temp_directory_path() /
              (name + "_" + std::to_string(::getpid()) + ".db"))
                 .string()) {
    remove_files();
    SqliteLedgerOptions o;
    o.path = path;
    o.synchronous_full = false;
    o.busy_timeout_ms = busy_timeout_ms;
    if (tweak) tweak(o);
    auto opened = SqliteLedger::open(o);
    if (opened.ok()) {
      ledger = std::move(*opened);
    } else {
      error = opened.error().message;
    }
  }
  ~TempSqliteLedger() {
    ledger.reset();
    remove_files();
  }
  void remove_files() const {
    for (const char* ext : {"", "-wal", "-shm"}) std::filesystem::remove(path + ext);
  }
  const std::string path;
  std::unique_ptr<SqliteLedger> ledger;
  std::string error;
};

// A request of key_a (tenant acme) covered by `lease_id`, settled at `actual`.
LedgerCovered covered_row(std::string id, std::string lease_id, const std::string& budget,
                          Micros actual) {
  LedgerCovered c;
  c.request_id = std::move(id);
  c.lease_id = std::move(lease_id);
  c.set_party("key_a", "acme", {budget});
  c.model = "gpt-4.1";
  c.reserved_micro = 10'000;
  c.actual_micro = actual;
  c.prompt_tokens = 3;
  c.completion_tokens = 4;
  c.created_unix_ms = kJan1 + 1;
  c.settled_unix_ms = kJan1 + 2;
  return c;
}

// A lease row `id` of `key` (tenant acme) holding 1,000,000 micros of `budget`, committed
// before the call returns.
Result<Ok> append_lease(Ledger& ledger, std::string id, std::string key,
                        const std::string& budget) {
  auto lease = reservation(std::move(id), std::move(key), "acme", "", 1'000'000, kJan1);
  lease.budgets = {budget};
  lease.lease = true;
  return append_sync(ledger, lease);
}

// The names of this process's threads (/proc/self/task/*/comm).
std::multiset<std::string> thread_names() {
  std::multiset<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    if (std::getline(comm, name)) names.insert(name);
  }
  return names;
}

// The writer and the checkpointer are named threads (top -H, perf sched, ps -L tell their CPU
// time and waits from the event loop's), and they go with their ledger.
TEST(SqliteThreads, TheWriterAndTheCheckpointerAreNamedAndGoWithTheLedger) {
  {
    TempSqliteLedger db("bw_thread_names");
    ASSERT_TRUE(db.ledger) << db.error;
    ASSERT_TRUE(append_sync(*db.ledger, reservation("n1", "key_a", "acme", "m", 1, kJan1)).ok());
    // Each thread names itself when it starts: the checkpointer may not have run yet (bounded).
    auto names = thread_names();
    for (int i = 0; i < 2000 && names.count("bw-checkpoint") == 0; ++i) {  // up to 20 s
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      names = thread_names();
    }
    EXPECT_EQ(names.count("bw-ledger"), 1u);
    EXPECT_EQ(names.count("bw-checkpoint"), 1u);
  }
  const auto after = thread_names();
  EXPECT_EQ(after.count("bw-ledger"), 0u);
  EXPECT_EQ(after.count("bw-checkpoint"), 0u);
}

// Checkpoints run off the writer's thread and keep the WAL bounded under steady writes: a
// passive one once the WAL holds kCheckpointFrames pages, a restart once it reaches
// kRestartFrames.
TEST(SqliteCheckpoints, RunInTheBackgroundAndBoundTheWal) {
  TempSqliteLedger db("bw_ckpt");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  std::uintmax_t max_wal = 0;
  // ~100 rows per commit; tens of thousands of WAL frames in all.
  constexpr int kCommits = 600;
  for (int c = 0; c < kCommits; ++c) {
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE(ledger.append_reservation(
          reservation(id_of("ck", c * 100L + i), "key_a", "acme", "gpt-4.1", 10, kJan1 + c), {},
          Ledger::Wake::kDeferred));
    }
    ledger.flush();
    std::error_code ec;
    max_wal = std::max<std::uintmax_t>(max_wal, std::filesystem::file_size(db.path + "-wal", ec));
  }
  // The first passive checkpoint started long before the last commit, but it yields the core
  // between its pieces: on a loaded machine it may still be copying pages (bounded wait).
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (ledger.checkpoints() == 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GT(ledger.checkpoints(), 0u);
  // The restart threshold in 4 KiB pages, plus what arrives while a checkpoint runs.
  EXPECT_LT(max_wal, 2u * SqliteLedger::kRestartFrames * 4096u) << max_wal;
  auto row = ledger.find(id_of("ck", kCommits * 100L - 1));
  ASSERT_TRUE(row.ok());
  EXPECT_TRUE(row->has_value());
  std::printf("[ checkpoints ] %llu checkpoints, largest WAL %.1f MB\n",
              static_cast<unsigned long long>(ledger.checkpoints()),
              static_cast<double>(max_wal) / 1e6);
}

}  // namespace bw::store::testing

namespace bw::store::testing {

// Budget leases on the SQLite ledger: a lease row, covered rows written settled with the lease
// lowered in the same transaction, a reused request id folded into the lease, the close; the
// reports and the recovery count the spend once and the lease row never as a request.
// Waits until the ledger has answered `n` records in all, without a kick or flush (which would
// tell the writer that somebody waits).
bool answered_without_waking(const Ledger& ledger, std::uint64_t n) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < until) {
    const LedgerStats s = ledger.stats();
    if (s.records_committed + s.records_failed >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

void queue_deferred(Ledger& ledger, const std::string& prefix, int rows) {
  for (int i = 0; i < rows; ++i) {
    ASSERT_TRUE(ledger.append_reservation(
        reservation(id_of(prefix, i), "key_a", "acme", "gpt-4.1", 10, kJan1 + i), {},
        Ledger::Wake::kDeferred));
  }
}

// Queues a record (a kick: somebody waits) whose callback holds the writer, after its commit,
// until the promise returned is set; returns once the writer is held (its batch is that record
// alone).
std::promise<void> hold_writer(Ledger& ledger) {
  std::promise<void> go;
  std::shared_future<void> released = go.get_future().share();
  auto held = std::make_shared<std::promise<void>>();
  std::future<void> writer_held = held->get_future();
  EXPECT_TRUE(ledger.append_reservation(reservation("gate", "key_a", "acme", "gpt-4.1", 1, kJan1),
                                        [released, held](const Result<Ok>&) {
                                          held->set_value();
                                          released.wait();
                                        }));
  writer_held.wait();
  return go;
}

// A batch of rows nobody waits for is written in pieces (the writer lets the core go between
// its INSERT statements); a batch with a record somebody waits for (a kick, a flush) is written
// through.
TEST(SqliteWriterPieces, OnlyABatchNobodyWaitsForIsWrittenInPieces) {
  TempSqliteLedger db("bw_pieces", 5'000, [](SqliteLedgerOptions& o) {
    o.yield_after = std::chrono::microseconds(1);  // every statement boundary is due
  });
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  ASSERT_TRUE(append_sync(ledger, reservation("first", "key_a", "acme", "gpt-4.1", 1, kJan1)).ok());
  EXPECT_EQ(ledger.yields(), 0u);
  // A batch taken after every wake-up asked for so far (the flush's may come after its take).
  queue_deferred(ledger, "warm", 10);
  ASSERT_TRUE(answered_without_waking(ledger, 11));
  const std::uint64_t warm = ledger.yields();

  // 1,000 rows: 64 a statement, 16 statements. Nobody waits: taken after the writer's own wait.
  queue_deferred(ledger, "quiet", 1'000);
  ASSERT_TRUE(answered_without_waking(ledger, 1'011));
  const std::uint64_t quiet = ledger.yields();
  EXPECT_GE(quiet, warm + 1);

  // The same rows, and a kick before the writer takes them (it is held in a callback meanwhile):
  // somebody waits, the batch goes through.
  std::promise<void> go = hold_writer(ledger);
  queue_deferred(ledger, "waited", 1'000);
  ledger.kick();
  go.set_value();
  ledger.flush();
  EXPECT_EQ(ledger.yields(), quiet);
  for (const char* id : {"quiet999", "waited999"}) {
    auto row = ledger.find(id);
    ASSERT_TRUE(row.ok() && row->has_value()) << id;
  }
}

// A writer that falls behind (half a batch queued behind the one it writes) writes through: of
// two full batches taken one after the other, only the last (nothing queued behind it) is
// written in pieces.
TEST(SqliteWriterPieces, AWriterThatFallsBehindWritesThrough) {
  TempSqliteLedger db("bw_pieces_behind", 5'000, [](SqliteLedgerOptions& o) {
    o.yield_after = std::chrono::microseconds(1);
    o.max_batch = 1'000;
  });
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  // The first record's callback holds the writer until the rest are queued.
  std::promise<void> go = hold_writer(ledger);
  queue_deferred(ledger, "behind", 1'999);
  go.set_value();
  ASSERT_TRUE(answered_without_waking(ledger, 2'000));
  // One batch of 999 rows in pieces: 17 statements (15 of 64 rows, 32, 7) and the COMMIT, at
  // most 17 pauses (33 with the batch of 1,000 before it).
  EXPECT_GE(ledger.yields(), 1u);
  EXPECT_LE(ledger.yields(), 17u);
  auto row = ledger.find("behind1998");
  ASSERT_TRUE(row.ok() && row->has_value());
}

// The writer in pieces shares one CPU with a thread that never sleeps (an event loop at full
// load): it keeps its share of the core, and a record somebody waits for, queued behind a
// backlog of rows nobody waits for, is committed promptly.
TEST(SqliteWriterPieces, AWaitedRecordIsCommittedPromptlyWhileABusyThreadSharesTheCore) {
  cpu_set_t one;
  CPU_ZERO(&one);
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof mine, &mine), 0);
  int cpu = 0;
  while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &mine)) ++cpu;
  CPU_SET(cpu, &one);
  // The ledger's threads, and the busy one, start on this thread's CPU only.
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  struct Restore {
    cpu_set_t set;
    ~Restore() { sched_setaffinity(0, sizeof set, &set); }
  } restore{mine};
  {
    TempSqliteLedger db("bw_pieces_busy");
    ASSERT_TRUE(db.ledger);
    auto& ledger = *db.ledger;
    ASSERT_TRUE(
        append_sync(ledger, reservation("first", "key_a", "acme", "gpt-4.1", 1, kJan1)).ok());
    std::atomic<bool> stop{false};
    std::thread busy([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
    queue_deferred(ledger, "backlog", 3'000);
    std::this_thread::sleep_for(std::chrono::milliseconds(25));  // the writer's own wait
    std::promise<std::chrono::steady_clock::time_point> done;
    auto committed = done.get_future();
    const auto asked = std::chrono::steady_clock::now();
    ASSERT_TRUE(ledger.append_reservation(
        reservation("waited", "key_a", "acme", "gpt-4.1", 1, kJan1), [&done](const Result<Ok>& r) {
          EXPECT_TRUE(r.ok());
          done.set_value(std::chrono::steady_clock::now());
        }));
    const bool in_time = committed.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    stop = true;
    busy.join();
    ASSERT_TRUE(in_time);
    const auto took = committed.get() - asked;
    // ~3,000 rows of backlog ahead of it: a few ms of CPU, at half the core.
    EXPECT_LT(took, std::chrono::milliseconds(1'000))
        << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
    ledger.flush();
    auto row = ledger.find("backlog2999");
    EXPECT_TRUE(row.ok() && row->has_value());
  }
}

// A passive checkpoint copies its pages in pieces too, and still bounds the WAL.
TEST(SqliteWriterPieces, APassiveCheckpointCopiesItsPagesInPieces) {
  TempSqliteLedger db("bw_pieces_ckpt", 5'000,
                      [](SqliteLedgerOptions& o) { o.yield_after = std::chrono::microseconds(1); });
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  // ~25 WAL pages a commit: a passive checkpoint after ~40 of them. The checkpointer is a thread
  // of its own: on a loaded machine it may not run during 300 commits, so the commits go on for
  // up to 20 s (a count of them bounded no time; ~160 ms when the machine is idle).
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (int c = 0; ledger.checkpoint_yields() == 0 && std::chrono::steady_clock::now() < until;
       ++c) {
    queue_deferred(ledger, id_of("ck", c) + "-", 1'000);
    ledger.flush();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_GT(ledger.checkpoints(), 0u);
  EXPECT_GT(ledger.checkpoint_yields(), 0u);
}

// A covered row's queue item (the row, in the variant of records, and its callback) is what the
// event loop writes and the writer reads per covered request: four cache lines.
TEST(LedgerQueueItems, ACoveredRowsItemTakesFourCacheLines) {
  EXPECT_LE(sizeof(LedgerQueue::Item), std::size_t{256});
}

// A covered row without a party has an empty key, tenant and budget list; set_party() gives it
// one of its own.
TEST(LedgerQueueItems, ACoveredRowsStringsAreItsParty) {
  LedgerCovered c;
  EXPECT_EQ(c.key(), "");
  EXPECT_EQ(c.tenant(), "");
  EXPECT_TRUE(c.budget_ids().empty());
  c.set_party("key_a", "acme", {"global/total"});
  EXPECT_EQ(c.key(), "key_a");
  EXPECT_EQ(c.tenant(), "acme");
  EXPECT_EQ(c.budget_ids(), std::vector<std::string>{"global/total"});
}

TEST(SqliteLeases, CoveredRowsLowerTheLeaseAndRecoveryCountsItExactly) {
  TempSqliteLedger db("bw_lease");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  EXPECT_TRUE(ledger.supports_leases());
  const std::string budget = key_budget_id("key_a", BudgetPeriod::kTotal);
  auto lease = reservation("lease:x-1", "key_a", "acme", "", 50'000, kJan1);
  lease.budgets = {budget};
  lease.lease = true;
  ASSERT_TRUE(ledger.append_reservation(lease, {}));
  auto covered = [&](std::string id, Micros actual) {
    return covered_row(std::move(id), "lease:x-1", budget, actual);
  };
  std::atomic<int> ok{0};
  auto count = [&](const Result<Ok>& r) { ok += r.ok(); };
  ASSERT_TRUE(ledger.append_covered(covered("r1", 7'000), count));
  ASSERT_TRUE(ledger.append_covered(covered("r2", 5'000), count));
  // A client reused r1's id: its spend stays on the lease row (reserved while open).
  ASSERT_TRUE(ledger.append_covered(covered("r1", 2'000), count));
  ledger.flush();
  EXPECT_EQ(ok.load(), 3);
  auto row = ledger.find("r1");
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->status, LedgerStatus::kSettled);
  EXPECT_EQ((*row)->actual_micro, 7'000);
  EXPECT_EQ((*row)->completion_tokens, 4);
  auto l = ledger.find("lease:x-1");
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->status, LedgerStatus::kOpen);
  EXPECT_EQ((*l)->reserved_micro, 38'000);  // 50k - 7k - 5k; the folded 2k stays reserved
  auto report = ledger.spend_report(SpendGroup::kKey, 0, kJan1 + 10);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->size(), 1u);
  EXPECT_EQ(report->front().requests, 2);  // the lease row is not a request
  EXPECT_EQ(report->front().actual_micro, 12'000);
  EXPECT_EQ(report->front().open_reserved_micro, 38'000);

  // A crash now: the open lease counts at its reserved amount, settled rows at their actual.
  {
    BudgetManager budgets;
    budgets.upsert_budget({budget, 1'000'000, BudgetPeriod::kTotal});
    auto rec = recover_budgets(ledger, budgets, kJan1 + 10);
    ASSERT_TRUE(rec.ok());
    auto s = budgets.snapshot(budget, kJan1 + 10);
    EXPECT_EQ(s->spent_micro, 12'000);
    EXPECT_EQ(s->reserved_micro, 38'000);
  }

  // The close: the lease row is settled with the spend folded into it.
  LedgerSettlement close;
  close.request_id = "lease:x-1";
  close.settled_unix_ms = kJan1 + 3;
  close.lease = true;
  ASSERT_TRUE(ledger.append_settlement(close, {}));
  ledger.flush();
  report = ledger.spend_report(SpendGroup::kKey, 0, kJan1 + 10);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->front().requests, 2);
  EXPECT_EQ(report->front().actual_micro, 14'000);
  EXPECT_EQ(report->front().open_reserved_micro, 0);
  {
    BudgetManager budgets;
    budgets.upsert_budget({budget, 1'000'000, BudgetPeriod::kTotal});
    auto rec = recover_budgets(ledger, budgets, kJan1 + 10);
    ASSERT_TRUE(rec.ok());
    auto s = budgets.snapshot(budget, kJan1 + 10);
    EXPECT_EQ(s->spent_micro, 14'000);
    EXPECT_EQ(s->reserved_micro, 0);
  }
  // The close always comes after a lease's last covered row; a late one would still keep its
  // spend (there is nothing left to lower).
  ASSERT_TRUE(ledger.append_covered(covered("r3", 1'000), count));
  ledger.flush();
  EXPECT_EQ(ok.load(), 4);
  row = ledger.find("r3");
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->actual_micro, 1'000);
}

// Request ids that a row keeps in itself (a generated one) and on the heap (a long client one)
// reach the ledger whole.
TEST(SqliteLeases, CoveredRowsKeepRequestIdsOfEveryLength) {
  TempSqliteLedger db("bw_lease_ids");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_a", BudgetPeriod::kTotal);
  ASSERT_TRUE(append_lease(ledger, "lease:i-1", "key_a", budget).ok());
  const std::vector<std::string> ids = {"req_0193a4c5e6f7a1b2c3d4e5f6", std::string(100, 'q')};
  std::atomic<int> ok{0};
  for (const auto& id : ids) {
    ASSERT_TRUE(ledger.append_covered(covered_row(id, "lease:i-1", budget, 1'000),
                                      [&](const Result<Ok>& r) { ok += r.ok(); }));
  }
  ledger.flush();
  EXPECT_EQ(ok.load(), 2);
  for (const auto& id : ids) {
    auto row = ledger.find(id);
    ASSERT_TRUE(row.ok() && row->has_value()) << id;
    EXPECT_EQ((*row)->request_id, id);
    EXPECT_EQ((*row)->actual_micro, 1'000);
  }
}

// A covered row lost to a failed transaction never lowered its lease row: the lease must then
// stay open, so that its row keeps that spend reserved. Closing it would drop the spend from the
// ledger and a restart would rebuild the budgets without it.
TEST(SqliteLeases, ALeaseWhoseCoveredRowWasLostIsNeverClosed) {
  TempSqliteLedger db("bw_lease_lost", 50);
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_a", BudgetPeriod::kTotal);
  auto lease = reservation("lease:y-1", "key_a", "acme", "", 50'000, kJan1);
  lease.budgets = {budget};
  lease.lease = true;
  ASSERT_TRUE(append_sync(ledger, lease).ok());

  const LedgerCovered c = covered_row("r1", "lease:y-1", budget, 7'000);
  std::atomic<int> failed{0};
  {
    // Another connection holds the write lock: the covered row's transaction cannot begin.
    auto other = SqliteDb::open(db.path, false, 50);
    ASSERT_TRUE(other.ok());
    ASSERT_TRUE(other->exec("BEGIN IMMEDIATE").ok());
    ASSERT_TRUE(
        ledger.append_covered(LedgerCovered(c), [&](const Result<Ok>& r) { failed += !r.ok(); }));
    ledger.flush();
    ASSERT_TRUE(other->exec("ROLLBACK").ok());
  }
  ASSERT_EQ(failed.load(), 1);
  EXPECT_TRUE(ledger.find("r1").ok());
  EXPECT_FALSE(ledger.find("r1")->has_value());

  LedgerSettlement close;
  close.request_id = "lease:y-1";
  close.settled_unix_ms = kJan1 + 3;
  close.lease = true;
  auto closed = append_sync(ledger, close);
  ASSERT_FALSE(closed.ok()) << "a lease that owes a lost row's spend was closed";
  EXPECT_EQ(closed.error().code, "lease_owes");
  auto l = ledger.find("lease:y-1");
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->status, LedgerStatus::kOpen);
  EXPECT_EQ((*l)->reserved_micro, 50'000);

  // A restart holds the lost spend within the open lease.
  BudgetManager budgets;
  budgets.upsert_budget({budget, 1'000'000, BudgetPeriod::kTotal});
  auto rec = recover_budgets(ledger, budgets, kJan1 + 10);
  ASSERT_TRUE(rec.ok());
  auto s = budgets.snapshot(budget, kJan1 + 10);
  EXPECT_EQ(s->reserved_micro, 50'000);
}

}  // namespace bw::store::testing

namespace bw::store::testing {

// The writer puts a batch's runs of rows into multi-row INSERTs. A statement that fails (here a
// request id that is already taken, in the batch or before it) is undone whole, and its rows go
// one by one: every record still gets its own result, as if each had its own statement.
TEST(SqliteBatches, RowsSharingAStatementKeepTheirOwnResults) {
  TempSqliteLedger db("bw_batch_rows");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  ASSERT_TRUE(
      ledger.append_reservation(reservation("old", "key_a", "acme", "gpt-4.1", 9, kJan1), {}));
  ledger.flush();

  constexpr int kRows = 40;
  std::vector<std::string> codes(kRows + 3, "pending");
  auto record = [&](int slot) {
    return [&codes, slot](const Result<Ok>& r) { codes[slot] = r.ok() ? "ok" : r.error().code; };
  };
  for (int i = 0; i < kRows; ++i) {
    // Row 25 reuses row 3's id; row 30 reuses the id of a row committed before.
    const std::string id = i == 25 ? id_of("b", 3) : i == 30 ? std::string("old") : id_of("b", i);
    ASSERT_TRUE(ledger.append_reservation(
        reservation(id, "key_a", "acme", "gpt-4.1", 100 + i, kJan1 + i, {"global/total"}),
        record(i), Ledger::Wake::kDeferred));
    if (i == 10) {
      // Settlements between the reservations: an open row and an unknown one.
      ASSERT_TRUE(ledger.append_settlement(settlement("old", 7, kJan1 + 50), record(kRows),
                                           Ledger::Wake::kDeferred));
      ASSERT_TRUE(ledger.append_settlement(settlement("nobody", 7, kJan1 + 50), record(kRows + 1),
                                           Ledger::Wake::kDeferred));
    }
  }
  ledger.flush();
  for (int i = 0; i < kRows; ++i) {
    const char* want = i == 25 || i == 30 ? "duplicate_request_id" : "ok";
    EXPECT_EQ(codes[i], want) << "row " << i;
  }
  EXPECT_EQ(codes[kRows], "ok");
  EXPECT_EQ(codes[kRows + 1], "not_open");
  auto three = ledger.find(id_of("b", 3));
  ASSERT_TRUE(three.ok() && three->has_value());
  EXPECT_EQ((*three)->reserved_micro, 103);  // the first of the two, not row 25
  EXPECT_EQ((*three)->budgets, std::vector<std::string>{"global/total"});
  auto last = ledger.find(id_of("b", kRows - 1));
  ASSERT_TRUE(last.ok() && last->has_value());
  EXPECT_EQ((*last)->reserved_micro, 100 + kRows - 1);
  EXPECT_EQ((*last)->status, LedgerStatus::kOpen);
  auto old = ledger.find("old");
  ASSERT_TRUE(old.ok() && old->has_value());
  EXPECT_EQ((*old)->status, LedgerStatus::kSettled);
  EXPECT_EQ((*old)->reserved_micro, 9);
  auto open = ledger.open_reservations();
  ASSERT_TRUE(open.ok());
  EXPECT_EQ(open->size(), static_cast<std::size_t>(kRows - 2));
}

// Covered rows in one batch: the lease row goes down by each written row's actual, a row whose
// id is taken (in the batch or before it) keeps its spend on the lease row.
TEST(SqliteBatches, CoveredRowsSharingAStatementLowerTheLeaseOnce) {
  TempSqliteLedger db("bw_batch_covered");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_a", BudgetPeriod::kTotal);
  auto lease = reservation("lease:z-1", "key_a", "acme", "", 1'000'000, kJan1);
  lease.budgets = {budget};
  lease.lease = true;
  ASSERT_TRUE(ledger.append_reservation(lease, {}));
  ASSERT_TRUE(ledger.append_covered(covered_row("before", "lease:z-1", budget, 1'000), {}));
  ledger.flush();

  constexpr int kRows = 37;
  std::atomic<int> ok{0};
  Micros lowered = 1'000;
  Micros folded = 0;
  for (int i = 0; i < kRows; ++i) {
    const Micros actual = 100 * (i + 1);
    std::string id = id_of("c", i);
    if (i == 20) id = id_of("c", 2);  // taken in this batch
    if (i == 33) id = "before";       // taken before
    auto row = covered_row(id, "lease:z-1", budget, actual);
    if (i == 5) row.status = LedgerStatus::kReleased;  // bills nothing
    const bool taken = i == 20 || i == 33;
    if (row.status != LedgerStatus::kReleased) (taken ? folded : lowered) += actual;
    ASSERT_TRUE(ledger.append_covered(
        std::move(row), [&](const Result<Ok>& r) { ok += r.ok(); }, Ledger::Wake::kDeferred));
  }
  ledger.flush();
  EXPECT_EQ(ok.load(), kRows);
  auto l = ledger.find("lease:z-1");
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->reserved_micro, 1'000'000 - lowered);
  EXPECT_EQ((*l)->actual_micro, folded);
  auto two = ledger.find(id_of("c", 2));
  ASSERT_TRUE(two.ok() && two->has_value());
  EXPECT_EQ((*two)->actual_micro, 300);
  auto five = ledger.find(id_of("c", 5));
  ASSERT_TRUE(five.ok() && five->has_value());
  EXPECT_EQ((*five)->status, LedgerStatus::kReleased);
  EXPECT_EQ((*five)->actual_micro, 0);
  auto report = ledger.spend_report(SpendGroup::kKey, 0, kJan1 + 10);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->size(), 1u);
  EXPECT_EQ(report->front().requests, kRows - 2 + 1);  // "before" and the 35 written
}

// Settled covered rows of one key, in every size a batch splits its rows into, are written by
// statements prepared when the ledger opens: none is prepared while rows wait.
TEST(SqliteBatches, SettledCoveredRowsUseStatementsPreparedAhead) {
  TempSqliteLedger db("bw_batch_prepared");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_a", BudgetPeriod::kTotal);
  auto lease = reservation("lease:p-1", "key_a", "acme", "", 1'000'000'000, kJan1);
  lease.budgets = {budget};
  lease.lease = true;
  ASSERT_TRUE(ledger.append_reservation(lease, {}));
  ledger.flush();
  std::atomic<int> ok{0};
  int rows = 0;
  for (int batch = 2; batch <= 140; batch += batch < 20 ? 1 : 7) {
    for (int i = 0; i < batch; ++i) {
      ASSERT_TRUE(ledger.append_covered(
          covered_row(id_of("p", rows++), "lease:p-1", budget, 10),
          [&](const Result<Ok>& r) { ok += r.ok(); }, Ledger::Wake::kDeferred));
    }
    ledger.flush();
  }
  EXPECT_EQ(ok.load(), rows);
  EXPECT_EQ(ledger.prepared_in_batches(), 0u);
  auto l = ledger.find("lease:p-1");
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->reserved_micro, 1'000'000'000 - 10 * rows);
}

// One batch with the covered rows of three leases, interleaved: each lease row goes down by the
// sum of its own rows only.
TEST(SqliteBatches, CoveredRowsOfSeveralLeasesLowerEachLeaseByItsOwnRows) {
  TempSqliteLedger db("bw_batch_leases");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_a", BudgetPeriod::kTotal);
  const std::vector<std::string> leases = {"lease:m-1", "lease:m-2", "lease:m-3"};
  for (const auto& id : leases) {
    auto lease = reservation(id, "key_a", "acme", "", 1'000'000, kJan1);
    lease.budgets = {budget};
    lease.lease = true;
    ASSERT_TRUE(ledger.append_reservation(lease, {}));
  }
  ledger.flush();
  std::vector<Micros> lowered(leases.size(), 0);
  std::atomic<int> ok{0};
  constexpr int kRows = 40;
  for (int i = 0; i < kRows; ++i) {
    // Runs of one lease, then another, then back to the first: m-1 x3, m-2 x2, m-3, m-1, ...
    const std::size_t l = static_cast<std::size_t>((i % 6) < 3 ? 0 : (i % 6) < 5 ? 1 : 2);
    const Micros actual = 10 * (i + 1);
    lowered[l] += actual;
    ASSERT_TRUE(ledger.append_covered(
        covered_row(id_of("m", i), leases[l], budget, actual),
        [&](const Result<Ok>& r) { ok += r.ok(); }, Ledger::Wake::kDeferred));
  }
  ledger.flush();
  EXPECT_EQ(ok.load(), kRows);
  for (std::size_t l = 0; l < leases.size(); ++l) {
    auto row = ledger.find(leases[l]);
    ASSERT_TRUE(row.ok() && row->has_value()) << leases[l];
    EXPECT_EQ((*row)->reserved_micro, 1'000'000 - lowered[l]) << leases[l];
    EXPECT_EQ((*row)->actual_micro, 0) << leases[l];
  }
}

// Rows of one party whose models differ only in their last character (as long as each other) do
// not share a statement's model: each keeps its own.
TEST(SqliteBatches, CoveredRowsOfAPartyKeepModelsThatDifferInOneCharacter) {
  TempSqliteLedger db("bw_batch_models");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_m", BudgetPeriod::kTotal);
  ASSERT_TRUE(append_lease(ledger, "lease:n-1", "key_m", budget).ok());
  const auto party = std::make_shared<const LedgerParty>(LedgerParty{"key_m", "acme", {budget}});
  auto model_of = [](int i) { return std::string(i == 5 ? "gpt-4.2" : "gpt-4.1"); };
  constexpr int kRows = 8;
  std::atomic<int> ok{0};
  for (int i = 0; i < kRows; ++i) {
    LedgerCovered c;
    c.request_id = id_of("n", i);
    c.lease_id = "lease:n-1";
    c.party = party;
    c.model = model_of(i);
    c.actual_micro = 10;
    c.created_unix_ms = kJan1;
    c.settled_unix_ms = kJan1 + 1;
    ASSERT_TRUE(ledger.append_covered(
        std::move(c), [&](const Result<Ok>& r) { ok += r.ok(); }, Ledger::Wake::kDeferred));
  }
  ledger.flush();
  EXPECT_EQ(ok.load(), kRows);
  for (int i = 0; i < kRows; ++i) {
    auto c = ledger.find(id_of("n", i));
    ASSERT_TRUE(c.ok() && c->has_value()) << i;
    EXPECT_EQ((*c)->model, model_of(i)) << i;
  }
}

// An INSERT whose rows all have one key, tenant, model and budgets takes those once; one whose
// rows differ in any of them binds each row's own. Either way every row keeps its own columns.
TEST(SqliteBatches, RowsWithAndWithoutSharedStringsKeepTheirOwnColumns) {
  TempSqliteLedger db("bw_batch_shared");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string lease_budget = key_budget_id("key_a", BudgetPeriod::kTotal);
  ASSERT_TRUE(append_lease(ledger, "lease:s-1", "key_a", lease_budget).ok());

  // What row i carries: rows 0-15 alike (one shared INSERT), rows 16-31 each differing from
  // row 16 in one string, rows 32-39 alike again but not as rows 0-15 (a shared INSERT of 8).
  struct Strings {
    std::string key, tenant, model;
    std::vector<std::string> budgets;
  };
  auto strings = [](int i) {
    Strings s{"key_a", "acme", "gpt-4.1", {"global/total", "key:key_a/total"}};
    if (i < 16) return s;
    if (i >= 32) return Strings{"key_c", "third", "gpt-5", {"tenant:third/monthly"}};
    switch (i % 4) {
      case 0:
        s.key = "key_b";
        break;
      case 1:
        s.tenant = "other";
        break;
      case 2:
        s.model = "gpt-4.1-mini";
        break;
      default:
        s.budgets = {"global/total"};
        break;
    }
    return s;
  };
  constexpr int kRows = 40;
  std::atomic<int> ok{0};
  auto count = [&](const Result<Ok>& r) { ok += r.ok(); };
  for (int i = 0; i < kRows; ++i) {
    const Strings s = strings(i);
    ASSERT_TRUE(ledger.append_reservation(
        reservation(id_of("r", i), s.key, s.tenant, s.model, 100 + i, kJan1 + i, s.budgets), count,
        Ledger::Wake::kDeferred));
  }
  for (int i = 0; i < kRows; ++i) {
    const Strings s = strings(i);
    LedgerCovered c = covered_row(id_of("c", i), "lease:s-1", "", 10 + i);
    c.set_party(s.key, s.tenant, s.budgets);
    c.model = s.model;
    c.prompt_tokens = i;
    c.completion_tokens = 2 * i;
    c.created_unix_ms = kJan1 + 100 + i;
    c.settled_unix_ms = kJan1 + 200 + i;
    ASSERT_TRUE(ledger.append_covered(std::move(c), count, Ledger::Wake::kDeferred));
  }
  ledger.flush();
  EXPECT_EQ(ok.load(), 2 * kRows);
  for (int i = 0; i < kRows; ++i) {
    const Strings s = strings(i);
    auto r = ledger.find(id_of("r", i));
    ASSERT_TRUE(r.ok() && r->has_value()) << i;
    EXPECT_EQ((*r)->key_id, s.key) << i;
    EXPECT_EQ((*r)->tenant_id, s.tenant) << i;
    EXPECT_EQ((*r)->model, s.model) << i;
    EXPECT_EQ((*r)->budgets, s.budgets) << i;
    EXPECT_EQ((*r)->reserved_micro, 100 + i) << i;
    EXPECT_EQ((*r)->created_unix_ms, kJan1 + i) << i;
    EXPECT_EQ((*r)->status, LedgerStatus::kOpen) << i;
    EXPECT_FALSE((*r)->lease) << i;
    auto c = ledger.find(id_of("c", i));
    ASSERT_TRUE(c.ok() && c->has_value()) << i;
    EXPECT_EQ((*c)->key_id, s.key) << i;
    EXPECT_EQ((*c)->tenant_id, s.tenant) << i;
    EXPECT_EQ((*c)->model, s.model) << i;
    EXPECT_EQ((*c)->budgets, s.budgets) << i;
    EXPECT_EQ((*c)->actual_micro, 10 + i) << i;
    EXPECT_EQ((*c)->prompt_tokens, i) << i;
    EXPECT_EQ((*c)->completion_tokens, 2 * i) << i;
    EXPECT_EQ((*c)->created_unix_ms, kJan1 + 100 + i) << i;
    EXPECT_EQ((*c)->settled_unix_ms, kJan1 + 200 + i) << i;
    EXPECT_EQ((*c)->status, LedgerStatus::kSettled) << i;
  }
  auto l = ledger.find("lease:s-1");
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->reserved_micro, 1'000'000 - (kRows * 10 + kRows * (kRows - 1) / 2));
}

// Covered rows as the gateway writes them (a key's party shared by its rows): a statement whose
// rows are all settled writes the status as a literal, one with a released row binds each row's
// status; a party's rows with another model, or another party with the same strings, keep their
// own columns.
TEST(SqliteBatches, CoveredRowsOfAPartyKeepTheirStatusAndStrings) {
  TempSqliteLedger db("bw_batch_party");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_p", BudgetPeriod::kTotal);
  ASSERT_TRUE(append_lease(ledger, "lease:p-1", "key_p", budget).ok());
  const auto party = std::make_shared<const LedgerParty>(LedgerParty{"key_p", "acme", {budget}});
  const auto twin = std::make_shared<const LedgerParty>(*party);
  const auto other =
      std::make_shared<const LedgerParty>(LedgerParty{"key_q", "beta", {"global/total"}});
  // Three batches. Rows 0-15: all settled. Rows 16-31: row 19 released. Rows 32-39: all
  // settled, row 34 of another model, row 36 of a twin party, row 38 of another party.
  constexpr int kRows = 40;
  auto party_of = [&](int i) {
    if (i == 36) return twin;
    if (i == 38) return other;
    return party;
  };
  auto released = [](int i) { return i == 19; };
  auto model_of = [](int i) { return std::string(i == 34 ? "gpt-5" : "gpt-4.1"); };
  std::atomic<int> ok{0};
  Micros lowered = 0;
  for (int i = 0; i < kRows; ++i) {
    LedgerCovered c;
    c.request_id = id_of("p", i);
    c.lease_id = "lease:p-1";
    c.party = party_of(i);
    c.model = model_of(i);
    c.reserved_micro = 5'000;
    c.status = released(i) ? LedgerStatus::kReleased : LedgerStatus::kSettled;
    c.actual_micro = released(i) ? 0 : 10 + i;
    c.prompt_tokens = i;
    c.completion_tokens = 3 * i;
    c.created_unix_ms = kJan1 + 100 + i;
    c.settled_unix_ms = kJan1 + 300 + i;
    lowered += c.actual_micro;
    ASSERT_TRUE(ledger.append_covered(
        std::move(c), [&](const Result<Ok>& r) { ok += r.ok(); }, Ledger::Wake::kDeferred));
    if (i == 15 || i == 31) ledger.flush();
  }
  ledger.flush();
  EXPECT_EQ(ok.load(), kRows);
  for (int i = 0; i < kRows; ++i) {
    auto c = ledger.find(id_of("p", i));
    ASSERT_TRUE(c.ok() && c->has_value()) << i;
    const LedgerParty& p = *party_of(i);
    EXPECT_EQ((*c)->key_id, p.key_id) << i;
    EXPECT_EQ((*c)->tenant_id, p.tenant_id) << i;
    EXPECT_EQ((*c)->budgets, p.budgets) << i;
    EXPECT_EQ((*c)->model, model_of(i)) << i;
    EXPECT_EQ((*c)->status, released(i) ? LedgerStatus::kReleased : LedgerStatus::kSettled) << i;
    EXPECT_EQ((*c)->actual_micro, released(i) ? 0 : 10 + i) << i;
    EXPECT_EQ((*c)->reserved_micro, 5'000) << i;
    EXPECT_EQ((*c)->prompt_tokens, i) << i;
    EXPECT_EQ((*c)->completion_tokens, 3 * i) << i;
    EXPECT_EQ((*c)->created_unix_ms, kJan1 + 100 + i) << i;
    EXPECT_EQ((*c)->settled_unix_ms, kJan1 + 300 + i) << i;
    EXPECT_FALSE((*c)->lease) << i;
  }
  auto l = ledger.find("lease:p-1");
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->reserved_micro, 1'000'000 - lowered);
}

// Every column of a ledger row, as one line.
std::string row_text(const LedgerRow& r) {
  std::string budgets;
  for (const auto& b : r.budgets) budgets += b + ";";
  return r.request_id + "|" + r.key_id + "|" + r.tenant_id + "|" + r.model + "|" + budgets + "|" +
         std::to_string(r.reserved_micro) + "|" + std::to_string(r.actual_micro) + "|" +
         std::to_string(r.prompt_tokens) + "|" + std::to_string(r.completion_tokens) + "|" +
         to_string(r.status) + "|" + std::to_string(r.created_unix_ms) + "|" +
         std::to_string(r.settled_unix_ms) + "|" + (r.lease ? "lease" : "request");
}

// One batch of more covered rows than one statement takes, in runs of two parties, one run with
// a released row and one row with a party of its own: every statement's rows keep every column, and
// a row whose id is taken in the batch (in a later statement than the first) keeps its spend on the
// lease row while the rows after it are written.
// The writer's page cache is small (256 KiB): a group commit that dirties more pages than it holds
// (here ~2,000 rows of ~300 bytes or more in one batch, over 150 pages) spills pages to the WAL
// before its end, and still commits every row, with the lease lowered by them all.
TEST(SqliteBatches, ABatchLargerThanTheWritersPageCacheCommitsEveryRow) {
  TempSqliteLedger db("bw_batch_spill");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_p", BudgetPeriod::kTotal);
  ASSERT_TRUE(append_lease(ledger, "lease:s-1", "key_p", budget).ok());
  const auto party = std::make_shared<const LedgerParty>(LedgerParty{"key_p", "acme", {budget}});
  constexpr int kRows = 6'000;
  std::atomic<int> ok{0};
  for (int i = 0; i < kRows; ++i) {
    LedgerCovered c;
    c.request_id = id_of("s", i);
    c.lease_id = "lease:s-1";
    c.party = party;
    c.model = std::string(200, 'm') + std::to_string(i % 7);
    c.reserved_micro = 50;
    c.actual_micro = 1 + i % 3;
    c.created_unix_ms = kJan1 + i;
    c.settled_unix_ms = kJan1 + i + 1;
    ASSERT_TRUE(ledger.append_covered(
        std::move(c), [&](const Result<Ok>& r) { ok += r.ok(); }, Ledger::Wake::kDeferred));
  }
  ledger.flush();
  EXPECT_EQ(ok.load(), kRows);
  EXPECT_GE(ledger.stats().max_batch, 2'048u);
  Micros lowered = 0;
  for (int i = 0; i < kRows; ++i) lowered += 1 + i % 3;
  auto report = ledger.spend_report(SpendGroup::kKey, 0, kJan1 + kRows + 10);
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->size(), 1u);
  EXPECT_EQ((*report)[0].requests, kRows);
  EXPECT_EQ((*report)[0].actual_micro, lowered);
  auto l = ledger.find("lease:s-1");
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->reserved_micro, 1'000'000 - lowered);
  auto last = ledger.find(id_of("s", kRows - 1));
  ASSERT_TRUE(last.ok() && last->has_value());
  EXPECT_EQ((*last)->model, std::string(200, 'm') + std::to_string((kRows - 1) % 7));
}

TEST(SqliteBatches, ABatchOfManyCoveredRowsKeepsEveryColumnOfEveryRow) {
  TempSqliteLedger db("bw_batch_many");
  ASSERT_TRUE(db.ledger) << db.error;
  auto& ledger = *db.ledger;
  const std::string budget = key_budget_id("key_p", BudgetPeriod::kTotal);
  ASSERT_TRUE(append_lease(ledger, "lease:m-1", "key_p", budget).ok());
  const auto first = std::make_shared<const LedgerParty>(LedgerParty{"key_p", "acme", {budget}});
  const auto second = std::make_shared<const LedgerParty>(
      LedgerParty{"key_q", "beta", {"global/total", "tenant:beta/monthly"}});
  constexpr int kRows = 200;
  constexpr int kTaken = 150;  // reuses row 7's id
  auto party_of = [&](int i) { return (i / 50) % 2 == 0 ? first : second; };
  auto released = [](int i) { return i == 70; };
  auto bare = [](int i) { return i == 120; };  // a party of its own, not shared
  auto model_of = [](int i) { return std::string(i % 40 == 39 ? "gpt-5" : "gpt-4.1"); };
  auto id = [&](int i) { return id_of("m", i == kTaken ? 7 : i); };
  std::atomic<int> ok{0};
  Micros lowered = 0;
  std::vector<std::string> want(kRows);  // each row's columns, as row_text() gives them
  for (int i = 0; i < kRows; ++i) {
    LedgerCovered c;
    c.request_id = id(i);
    c.lease_id = "lease:m-1";
    if (bare(i)) {
      c.set_party("key_r", "gamma", {"global/total"});  // a party of its own
    } else {
      c.party = party_of(i);
    }
    c.model = model_of(i);
    c.reserved_micro = 5'000 + i;
    c.status = released(i) ? LedgerStatus::kReleased : LedgerStatus::kSettled;
    c.actual_micro = released(i) ? 0 : 10 + i;
    c.prompt_tokens = i;
    c.completion_tokens = 3 * i;
    c.created_unix_ms = kJan1 + 100 + i;
    c.settled_unix_ms = kJan1 + 300 + i;
    if (i != kTaken) lowered += c.actual_micro;
    want[i] =
        row_text(LedgerRow{c.request_id.str(), c.key(), c.tenant(), c.model.str(), c.budget_ids(),
                           c.reserved_micro, c.actual_micro, c.prompt_tokens, c.completion_tokens,
                           c.status, c.created_unix_ms, c.settled_unix_ms, false});
    ASSERT_TRUE(ledger.append_covered(
        std::move(c), [&](const Result<Ok>& r) { ok += r.ok(); }, Ledger::Wake::kDeferred));
  }
  ledger.flush();
  EXPECT_EQ(ok.load(), kRows);
  for (int i = 0; i < kRows; ++i) {
    if (i == kTaken) continue;
    auto c = ledger.find(id_of("m", i));
    ASSERT_TRUE(c.ok() && c->has_value()) << i;
    EXPECT_EQ(row_text(**c), want[i]);
  }
  auto l = ledger.find("lease:m-1");
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((*l)->reserved_micro, 1'000'000 - lowered);
  EXPECT_EQ((*l)->actual_micro, 10 + kTaken);
  auto report = ledger.spend_report(SpendGroup::kKey, 0, kJan1 + 1'000);
  ASSERT_TRUE(report.ok());
  std::int64_t requests = 0;
  for (const auto& r : *report) requests += r.requests;
  EXPECT_EQ(requests, kRows - 1);
}

}  // namespace bw::store::testing

namespace bw::store::testing {

// A database written by a v4 binary (with the ledger_created index): every kind of row it wrote
// is read, rebuilt and reconciled after the upgrade, and the writer goes on with new rows.
TEST(SqliteMigrations, AVersion4LedgerIsReadAndReconciledAfterTheUpgrade) {
  SqliteBackend db;
  const std::string gm = global_budget_id(BudgetPeriod::kMonthly);
  const std::string ka = key_budget_id("key_a", BudgetPeriod::kTotal);
  const std::int64_t now = kJan1 + 3 * kDay;
  ASSERT_TRUE(db.migrate_to(4).ok());
  ASSERT_EQ(*db.schema_version(), 4);
  ASSERT_EQ(*db.query_int("SELECT COUNT(*) FROM sqlite_master WHERE name = 'ledger_created'"), 1);
  // As a v4 binary wrote them: last month's settled row, this month's settled row, a covered
  // row (settled at once), a released row, an open reservation and an open lease row.
  const auto row = [&](const char* id, const char* model, Micros reserved, Micros actual,
                       const char* status, std::int64_t created, std::int64_t settled, int lease) {
    return std::string("('") + id + "', 'key_a', 'acme', '" + model + "', '" + gm + "\n" + ka +
           "', " + std::to_string(reserved) + ", " + std::to_string(actual) + ", 1, 1, '" + status +
           "', " + std::to_string(created) + ", " + std::to_string(settled) + ", " +
           std::to_string(lease) + ")";
  };
  ASSERT_TRUE(
      db.exec("INSERT INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro,"
              " actual_micro, prompt_tokens, completion_tokens, status, created_unix_ms,"
              " settled_unix_ms, lease) VALUES " +
              row("dec", "m", 900, 800, "settled", kJan1 - 5, kJan1 - 4, 0) + ", " +
              row("jan", "m", 500, 300, "settled", kJan1 + kDay, kJan1 + kDay, 0) + ", " +
              row("cov", "m", 100, 40, "settled", now - 100, now - 90, 0) + ", " +
              row("rel", "m", 999, 0, "released", now - 80, now - 70, 0) + ", " +
              row("o1", "m", 70, 0, "open", now - 60, 0, 0) + ", " +
              row("lease:a-1", "", 5'000, 0, "open", now - 50, 0, 1))
          .ok());

  auto ledger = db.open_ledger();
  ASSERT_TRUE(ledger);
  EXPECT_EQ(*db.schema_version(), kSchemaVersion);
  EXPECT_EQ(*db.query_int("SELECT COUNT(*) FROM sqlite_master WHERE name = 'ledger_created'"), 0);
  EXPECT_EQ(*db.query_int("SELECT COUNT(*) FROM sqlite_master WHERE name = 'ledger_open'"), 1);
  EXPECT_EQ(db.integrity_problem(), "");

  BudgetManager m;
  ASSERT_TRUE(m.upsert_budget({gm, 100'000, BudgetPeriod::kMonthly}));
  ASSERT_TRUE(m.upsert_budget({ka, 100'000, BudgetPeriod::kTotal}));
  auto report = recover_budgets(*ledger, m, now);
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->settled_micro, 1'140);
  ASSERT_EQ(report->open.size(), 2u);
  EXPECT_EQ(report->open[0].row.request_id, "o1");
  EXPECT_EQ(report->open[1].row.request_id, "lease:a-1");
  EXPECT_TRUE(report->open[1].row.lease);
  EXPECT_EQ(m.snapshot(gm, now)->spent_micro, 340);  // this month's rows only
  EXPECT_EQ(m.snapshot(ka, now)->spent_micro, 1'140);
  EXPECT_EQ(m.snapshot(gm, now)->reserved_micro, 5'070);
  EXPECT_EQ(m.snapshot(ka, now)->reserved_micro, 5'070);

  auto spend = ledger->spend_report(SpendGroup::kKey, kJan1, now);
  ASSERT_TRUE(spend.ok());
  ASSERT_EQ(spend->size(), 1u);
  EXPECT_EQ(spend->front().requests, 4);  // jan, cov, rel, o1: the lease row is not a request
  EXPECT_EQ(spend->front().actual_micro, 340);
  EXPECT_EQ(spend->front().open_reserved_micro, 5'070);

  // The old open rows reconcile on the new schema: o1 billed 50, the lease row released.
  ASSERT_TRUE(reconcile(*ledger, m, report->open[0], Micros{50}, now + 1).ok());
  ASSERT_TRUE(reconcile(*ledger, m, report->open[1], std::nullopt, now + 1).ok());
  EXPECT_EQ(m.snapshot(ka, now)->spent_micro, 1'190);
  EXPECT_EQ(m.snapshot(ka, now)->reserved_micro, 0);
  auto open = ledger->open_reservations();
  ASSERT_TRUE(open.ok());
  EXPECT_TRUE(open->empty());
  EXPECT_EQ((*ledger->find("o1"))->status, LedgerStatus::kSettled);
  EXPECT_EQ((*ledger->find("lease:a-1"))->status, LedgerStatus::kReleased);
  // An old row's id is still taken, and new rows go on.
  EXPECT_FALSE(append_sync(*ledger, reservation("jan", "key_a", "acme", "m", 1, now, {ka})).ok());
  EXPECT_TRUE(append_sync(*ledger, reservation("new", "key_a", "acme", "m", 1, now, {ka})).ok());
  EXPECT_EQ(*db.query_int("SELECT COUNT(*) FROM ledger"), 7);
}

}  // namespace bw::store::testing
