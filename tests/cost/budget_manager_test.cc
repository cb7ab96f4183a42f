#include "cost/budget_manager.h"

#include "cost/budget_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>
#include <thread>

namespace bw::cost {
namespace {

constexpr std::int64_t kJan1 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z
constexpr std::int64_t kFeb1 = kJan1 + 31 * kMillisPerDay;
const std::string kGlobal = global_budget_id(BudgetPeriod::kMonthly);
const std::string kTenant = tenant_budget_id("acme", BudgetPeriod::kMonthly);
const std::string kKeyDaily = key_budget_id("key_1", BudgetPeriod::kDaily);

std::unique_ptr<BudgetManager> make_manager(CostGuardOptions o = {}) {
  auto mp = std::make_unique<BudgetManager>(std::move(o));
  BudgetManager& m = *mp;
  EXPECT_TRUE(m.upsert_budget({kGlobal, 1'000'000, BudgetPeriod::kMonthly}));
  EXPECT_TRUE(m.upsert_budget({kTenant, 500'000, BudgetPeriod::kMonthly}));
  EXPECT_TRUE(m.upsert_budget({kKeyDaily, 100'000, BudgetPeriod::kDaily}));
  return mp;
}

BudgetSnapshot snap(const BudgetManager& m, const std::string& id, std::int64_t now = kJan1) {
  auto s = m.snapshot(id, now);
  EXPECT_TRUE(s.has_value());
  return s.value_or(BudgetSnapshot{});
}

TEST(BudgetIds, Conventions) {
  EXPECT_EQ(kGlobal, "global/monthly");
  EXPECT_EQ(kTenant, "tenant:acme/monthly");
  EXPECT_EQ(kKeyDaily, "key:key_1/daily");
}

TEST(BudgetManager, ReserveSettleArithmetic) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  auto r = m.reserve({kGlobal, kTenant, kKeyDaily}, 60'000, kJan1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.reservation->amount(), 60'000);
  EXPECT_EQ(snap(m, kKeyDaily).reserved_micro, 60'000);
  EXPECT_EQ(snap(m, kGlobal).reserved_micro, 60'000);
  EXPECT_EQ(snap(m, kGlobal).spent_micro, 0);

  SettleOutcome out = m.settle(*r.reservation, 25'001, kJan1 + 10);
  EXPECT_TRUE(out.settled);
  EXPECT_EQ(out.overshoot_micro, 0);
  EXPECT_FALSE(r.reservation->active());
  for (const auto& id : {kGlobal, kTenant, kKeyDaily}) {
    EXPECT_EQ(snap(m, id).spent_micro, 25'001) << id;
    EXPECT_EQ(snap(m, id).reserved_micro, 0) << id;
  }
  // Settling twice is a no-op: no drift.
  EXPECT_FALSE(m.settle(*r.reservation, 25'001, kJan1).settled);
  EXPECT_EQ(snap(m, kGlobal).spent_micro, 25'001);
}

TEST(BudgetManager, RefusalIsAllOrNothingAndNamesTheBudget) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  // 100'001 fits global and tenant but not the key's daily cap.
  auto r = m.reserve({kGlobal, kTenant, kKeyDaily}, 100'001, kJan1 + 3'600'000);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.refusal.reason, BudgetRefusal::Reason::kOverCap);
  EXPECT_EQ(r.refusal.budget_id, kKeyDaily);
  EXPECT_EQ(r.refusal.reset_unix_ms, kJan1 + kMillisPerDay);
  EXPECT_EQ(r.refusal.cap_micro, 100'000);
  for (const auto& id : {kGlobal, kTenant, kKeyDaily}) {
    EXPECT_EQ(snap(m, id).reserved_micro, 0) << id;
  }
  // Exactly the cap fits; one more micro does not.
  auto full = m.reserve({kKeyDaily}, 100'000, kJan1);
  ASSERT_TRUE(full.ok());
  auto more = m.reserve({kKeyDaily}, 1, kJan1);
  EXPECT_FALSE(more.ok());
  EXPECT_EQ(more.refusal.committed_micro, 100'000);
  // Zero-cost requests still pass at the cap.
  EXPECT_TRUE(m.reserve({kKeyDaily}, 0, kJan1).ok());
}

TEST(BudgetManager, UnknownBudgetRefuses) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  auto r = m.reserve({kGlobal, "key:ghost/daily"}, 1, kJan1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.refusal.reason, BudgetRefusal::Reason::kUnknownBudget);
  EXPECT_EQ(r.refusal.budget_id, "key:ghost/daily");
  EXPECT_EQ(snap(m, kGlobal).reserved_micro, 0);
}

TEST(BudgetManager, DuplicateIdsChargeOnce) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  auto r = m.reserve({kGlobal, kGlobal}, 10, kJan1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(snap(m, kGlobal).reserved_micro, 10);
  (void)m.settle(*r.reservation, 7, kJan1);
  EXPECT_EQ(snap(m, kGlobal).spent_micro, 7);
}

TEST(BudgetManager, ReleaseAndDestructorGiveEverythingBack) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  {
    auto r = m.reserve({kGlobal, kTenant}, 400'000, kJan1);
    ASSERT_TRUE(r.ok());
    m.release(*r.reservation);
    EXPECT_EQ(snap(m, kTenant).reserved_micro, 0);
    m.release(*r.reservation);  // idempotent
    EXPECT_EQ(snap(m, kTenant).reserved_micro, 0);
  }
  {
    auto r = m.reserve({kGlobal, kTenant}, 400'000, kJan1);
    ASSERT_TRUE(r.ok());
    Reservation moved = std::move(*r.reservation);
    EXPECT_EQ(snap(m, kTenant).reserved_micro, 400'000);
  }  // destroyed unsettled
  EXPECT_EQ(snap(m, kTenant).reserved_micro, 0);
  EXPECT_EQ(snap(m, kGlobal).reserved_micro, 0);
  EXPECT_EQ(snap(m, kGlobal).spent_micro, 0);
}

TEST(BudgetManager, OvershootIsChargedAndRecorded) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  auto r = m.reserve({kKeyDaily}, 90'000, kJan1);
  ASSERT_TRUE(r.ok());
  SettleOutcome out = m.settle(*r.reservation, 120'000, kJan1);
  EXPECT_EQ(out.overshoot_micro, 30'000);
  const auto s = snap(m, kKeyDaily);
  EXPECT_EQ(s.spent_micro, 120'000);
  EXPECT_EQ(s.reserved_micro, 0);
  EXPECT_EQ(s.overshoot_micro, 30'000);
  EXPECT_FALSE(m.reserve({kKeyDaily}, 1, kJan1).ok());
}

TEST(BudgetManager, SaturatesInsteadOfWrapping) {
  BudgetManager m;
  ASSERT_TRUE(m.upsert_budget({"big", kMaxMicros, BudgetPeriod::kTotal}));
  auto a = m.reserve({"big"}, kMaxMicros - 5, kJan1);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(m.reserve({"big"}, kMaxMicros, kJan1).ok());  // would wrap negative
  (void)m.settle(*a.reservation, kMaxMicros, kJan1);
  auto s = snap(m, "big");
  EXPECT_EQ(s.spent_micro, kMaxMicros);
  EXPECT_EQ(s.reserved_micro, 0);
  auto b = m.reserve({"big"}, 0, kJan1);
  ASSERT_TRUE(b.ok());
  (void)m.settle(*b.reservation, kMaxMicros, kJan1);
  EXPECT_EQ(snap(m, "big").spent_micro, kMaxMicros);
  // Negative amounts are treated as zero, never credit.
  auto c = m.reserve({"big"}, -100, kJan1);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.reservation->amount(), 0);
  (void)m.settle(*c.reservation, -100, kJan1);
  EXPECT_EQ(snap(m, "big").spent_micro, kMaxMicros);
}

TEST(BudgetManager, PeriodRollover) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  auto a = m.reserve({kKeyDaily, kGlobal}, 80'000, kJan1 + 1000);
  ASSERT_TRUE(a.ok());
  (void)m.settle(*a.reservation, 80'000, kJan1 + 2000);
  EXPECT_FALSE(m.reserve({kKeyDaily}, 30'000, kJan1 + 3000).ok());

  // A request starting just before midnight and finishing after it.
  auto late = m.reserve({kKeyDaily}, 20'000, kJan1 + kMillisPerDay - 1);
  ASSERT_TRUE(late.ok());
  const std::int64_t day2 = kJan1 + kMillisPerDay;
  auto s = snap(m, kKeyDaily, day2);
  EXPECT_EQ(s.spent_micro, 0);          // new day
  EXPECT_EQ(s.reserved_micro, 20'000);  // in-flight still holds headroom
  EXPECT_EQ(s.period_start_unix_ms, day2);
  EXPECT_EQ(s.reset_unix_ms, day2 + kMillisPerDay);
  (void)m.settle(*late.reservation, 15'000, day2 + 5);
  s = snap(m, kKeyDaily, day2 + 10);
  EXPECT_EQ(s.spent_micro, 0);  // belongs to day 1
  EXPECT_EQ(s.reserved_micro, 0);
  EXPECT_TRUE(m.reserve({kKeyDaily}, 100'000, day2 + 20).ok());
  // The monthly global budget kept day 1's spend.
  EXPECT_EQ(snap(m, kGlobal, day2).spent_micro, 80'000);
  EXPECT_EQ(snap(m, kGlobal, kFeb1).spent_micro, 0);
}

TEST(BudgetManager, CapUpdateKeepsCountersAndPeriodIsFixed) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  auto a = m.reserve({kTenant}, 300'000, kJan1);
  ASSERT_TRUE(a.ok());
  (void)m.settle(*a.reservation, 300'000, kJan1);
  EXPECT_TRUE(m.upsert_budget({kTenant, 350'000, BudgetPeriod::kMonthly}));
  EXPECT_EQ(snap(m, kTenant).spent_micro, 300'000);
  EXPECT_FALSE(m.reserve({kTenant}, 50'001, kJan1).ok());
  EXPECT_FALSE(m.upsert_budget({kTenant, 1, BudgetPeriod::kDaily}));
  EXPECT_FALSE(m.upsert_budget({"x", -1, BudgetPeriod::kDaily}));
  EXPECT_TRUE(m.remove_budget(kTenant));
  EXPECT_FALSE(m.has_budget(kTenant));
}

// The gateway skips should_downgrade() when the store says it cannot answer: only without a
// downgrade configured, whatever the budgets' state.
TEST(Downgrade, LocalStoreMayDowngradeOnlyWithAMap) {
  auto plain = make_manager();
  EXPECT_FALSE(LocalBudgetStore(*plain).may_downgrade());
  CostGuardOptions o;
  o.downgrade = {{"gpt-4.1", "deepseek-v3.2"}};
  auto mapped = make_manager(o);
  EXPECT_TRUE(LocalBudgetStore(*mapped).may_downgrade());
}

TEST(Downgrade, FollowsMapAboveSoftThreshold) {
  CostGuardOptions o;
  o.soft_threshold = 0.9;
  o.downgrade = {{"gpt-4.1", "deepseek-v3.2"}, {"claude-sonnet-4.5", "gemini-2.5-flash"}};
  auto mp = make_manager(o);
  BudgetManager& m = *mp;
  const std::vector<std::string> ids = {kGlobal, kTenant};
  EXPECT_EQ(m.should_downgrade(ids, "gpt-4.1", false, kJan1), std::nullopt);
  // Tenant at 449'999 / 500'000 < 0.9: no downgrade.
  auto a = m.reserve(ids, 449'999, kJan1);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(m.should_downgrade(ids, "gpt-4.1", false, kJan1), std::nullopt);
  // Reserved counts too: 450'000 / 500'000 = 0.9 exactly.
  auto b = m.reserve(ids, 1, kJan1);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(m.should_downgrade(ids, "gpt-4.1", false, kJan1), "deepseek-v3.2");
  EXPECT_EQ(m.should_downgrade(ids, "claude-sonnet-4.5", false, kJan1), "gemini-2.5-flash");
  // Opt-out keys refuse at the cap instead; models without a target stay.
  EXPECT_EQ(m.should_downgrade(ids, "gpt-4.1", true, kJan1), std::nullopt);
  EXPECT_EQ(m.should_downgrade(ids, "deepseek-v3.2", false, kJan1), std::nullopt);
  // Only the listed budgets matter.
  EXPECT_EQ(m.should_downgrade({kKeyDaily}, "gpt-4.1", false, kJan1), std::nullopt);
  m.release(*b.reservation);
  EXPECT_EQ(m.should_downgrade(ids, "gpt-4.1", false, kJan1), std::nullopt);
  // Next month the tenant is back to zero.
  (void)m.settle(*a.reservation, 449'999, kJan1);
  EXPECT_EQ(m.should_downgrade(ids, "gpt-4.1", false, kFeb1), std::nullopt);
}

TEST(Alerts, FireOncePerThresholdPerPeriod) {
  auto mp = make_manager();
  BudgetManager& m = *mp;  // thresholds 0.5 0.8 0.9 1.0; key cap 100'000 daily
  auto settle = [&](Micros amount, std::int64_t now) {
    auto r = m.reserve({kKeyDaily}, amount, now);
    EXPECT_TRUE(r.ok());
    return r.ok() ? m.settle(*r.reservation, amount, now).alerts : std::vector<BudgetAlert>{};
  };
  EXPECT_TRUE(settle(49'999, kJan1).empty());
  auto a = settle(1, kJan1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].budget_id, kKeyDaily);
  EXPECT_DOUBLE_EQ(a[0].threshold, 0.5);
  EXPECT_EQ(a[0].spent_micro, 50'000);
  EXPECT_EQ(a[0].cap_micro, 100'000);
  EXPECT_EQ(a[0].period_end_unix_ms, kJan1 + kMillisPerDay);
  // One jump across two thresholds fires both, in order.
  a = settle(40'000, kJan1);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_DOUBLE_EQ(a[0].threshold, 0.8);
  EXPECT_DOUBLE_EQ(a[1].threshold, 0.9);
  EXPECT_TRUE(settle(1, kJan1).empty());
  a = settle(9'999, kJan1);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_DOUBLE_EQ(a[0].threshold, 1.0);
  // Next day: fire again.
  a = settle(60'000, kJan1 + kMillisPerDay);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_DOUBLE_EQ(a[0].threshold, 0.5);
}

// Alerts fire exactly when spend * 1e6 >= cap * ppm, each once per period, through caps that do
// not divide evenly, thresholds of 0 and above 1, cap changes, partial settlements, restored
// spend and period rolls (the manager keeps the least spend that can fire next; the reference
// here takes the product every time).
TEST(Alerts, FireAtExactlyTheThresholdsRandomized) {
  std::mt19937_64 rng(99);
  int fired = 0;
  for (int round = 0; round < 60; ++round) {
    CostGuardOptions o;
    o.alert_thresholds.clear();
    const int n = static_cast<int>(rng() % 5);
    for (int i = 0; i < n; ++i) {
      const double picks[] = {0.0, 0.1, 0.333333, 0.5, 0.7, 0.9, 0.999999, 1.0, 1.5, 3.0};
      o.alert_thresholds.push_back(picks[rng() % std::size(picks)]);
    }
    BudgetManager m(o);
    std::vector<double> sorted = o.alert_thresholds;
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::int64_t> ppm;
    for (double t : sorted) ppm.push_back(std::llround(t * 1e6));
    const Micros caps[] = {1, 3, 7, 999'999, 1'000'001, 12'345'679, kMaxMicros / 3, kMaxMicros};
    Micros cap = caps[rng() % std::size(caps)];
    ASSERT_TRUE(m.upsert_budget({"b/daily", cap, BudgetPeriod::kDaily}));
    std::uint64_t mask = 0;  // the reference's fired thresholds
    Micros spent = 0;
    std::int64_t now = kJan1;
    for (int step = 0; step < 80; ++step) {
      const auto r = rng() % 100;
      if (r < 5) {  // next day: everything may fire again
        now += kMillisPerDay;
        spent = 0;
        mask = 0;
        continue;
      }
      if (r < 10) {  // the cap changes; what fired stays fired
        cap = caps[rng() % std::size(caps)];
        ASSERT_TRUE(m.upsert_budget({"b/daily", cap, BudgetPeriod::kDaily}));
        continue;
      }
      const Micros amount = static_cast<Micros>(rng() % 4) == 0
                                ? static_cast<Micros>(rng() % 3)
                                : static_cast<Micros>(rng() % static_cast<std::uint64_t>(
                                                                  std::max<Micros>(cap / 4, 1)));
      if (r < 15) {  // restored spend: marks what it reaches as fired, alerts nothing
        m.restore_spent({"b/daily"}, amount, now, now);
        spent = sat_add(spent, amount);
        for (std::size_t i = 0; i < ppm.size(); ++i) {
          if (static_cast<__int128>(spent) * 1'000'000 >= static_cast<__int128>(cap) * ppm[i]) {
            mask |= std::uint64_t{1} << i;
          }
        }
        continue;
      }
      auto res = m.reserve({"b/daily"}, amount, now);
      if (!res.ok()) continue;  // over the cap: nothing spent
      const SettleOutcome out = r < 55 ? m.settle(*res.reservation, amount, now)
                                       : m.settle_part(*res.reservation, amount, now);
      if (r >= 55) m.release(*res.reservation);
      spent = sat_add(spent, amount);
      std::vector<double> want;
      for (std::size_t i = 0; i < ppm.size(); ++i) {
        const std::uint64_t bit = std::uint64_t{1} << i;
        if ((mask & bit) == 0 &&
            static_cast<__int128>(spent) * 1'000'000 >= static_cast<__int128>(cap) * ppm[i]) {
          mask |= bit;
          want.push_back(sorted[i]);
        }
      }
      std::vector<double> got;
      for (const auto& a : out.alerts) got.push_back(a.threshold);
      ASSERT_EQ(got, want) << round << "/" << step << " cap " << cap << " spent " << spent;
      fired += static_cast<int>(got.size());
    }
  }
  EXPECT_GT(fired, 100);
}

TEST(Recovery, RestoreBypassesCapAndMarksAlerts) {
  auto mp = make_manager();
  BudgetManager& m = *mp;
  m.restore_spent({kKeyDaily}, 85'000, kJan1, kJan1 + 5);
  m.restore_spent({kKeyDaily}, 99'000, kJan1 - kMillisPerDay, kJan1 + 5);  // yesterday: ignored
  m.restore_spent({"key:unknown/daily"}, 1, kJan1, kJan1);                 // skipped
  Reservation open = m.restore_open({kKeyDaily, kGlobal}, 10'000, kJan1 + 1, kJan1 + 5);
  auto s = snap(m, kKeyDaily);
  EXPECT_EQ(s.spent_micro, 85'000);
  EXPECT_EQ(s.reserved_micro, 10'000);
  EXPECT_FALSE(m.reserve({kKeyDaily}, 5'001, kJan1).ok());
  // 0.5 and 0.8 were crossed before the restart: only 0.9 may fire now.
  auto out = m.settle(open, 6'000, kJan1 + 10);
  ASSERT_EQ(out.alerts.size(), 1u);
  EXPECT_DOUBLE_EQ(out.alerts[0].threshold, 0.9);
  EXPECT_EQ(snap(m, kKeyDaily).spent_micro, 91'000);
  EXPECT_EQ(snap(m, kGlobal).spent_micro, 6'000);
}

// $1.00 cap, 200 threads reserving worst cases that together far exceed it, then settling an
// actual <= reserved. Settled spend must stay within the cap and every refusal must leave nothing
// behind.
TEST(BudgetManagerConcurrency, CapHoldsUnderContention) {
  BudgetManager m;
  ASSERT_TRUE(m.upsert_budget({"global/total", 1'000'000, BudgetPeriod::kTotal}));
  ASSERT_TRUE(m.upsert_budget({"tenant:t/total", 1'000'000, BudgetPeriod::kTotal}));
  const std::vector<std::string> ids = {"global/total", "tenant:t/total"};
  constexpr int kThreads = 200;
  constexpr int kIterations = 20;
  std::atomic<Micros> settled_sum{0};
  std::atomic<int> ok{0}, refused{0};
  std::atomic<bool> violated{false};
  std::atomic<bool> done{false};
  std::thread checker([&] {
    while (!done.load()) {
      for (const auto& id : ids) {
        auto s = m.snapshot(id, kJan1);
        if (s && s->spent_micro + s->reserved_micro > s->cap_micro) violated = true;
      }
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      for (int i = 0; i < kIterations; ++i) {
        const Micros worst = 5'000 + static_cast<Micros>(rng() % 45'000);  // $0.005..$0.05
        auto r = m.reserve(ids, worst, kJan1);
        if (!r.ok()) {
          ++refused;
          continue;
        }
        ++ok;
        const Micros actual = static_cast<Micros>(rng() % static_cast<unsigned>(worst + 1));
        (void)m.settle(*r.reservation, actual, kJan1);
        settled_sum += actual;
      }
    });
  }
  for (auto& th : threads) th.join();
  done = true;
  checker.join();
  EXPECT_FALSE(violated.load());
  EXPECT_EQ(ok + refused, kThreads * kIterations);
  EXPECT_GT(refused.load(), 0);  // 4000 * ~$0.0275 is ~$110 of worst cases against $1
  for (const auto& id : ids) {
    auto s = m.snapshot(id, kJan1);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->reserved_micro, 0) << id;
    EXPECT_EQ(s->spent_micro, settled_sum.load()) << id;
    EXPECT_LE(s->spent_micro, 1'000'000) << id;
    EXPECT_EQ(s->overshoot_micro, 0) << id;
  }
}

}  // namespace
}  // namespace bw::cost
