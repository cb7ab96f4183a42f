// Recovery of open lease rows: a lease row left open by a crash comes back marked as a lease (the
// admin API lists it so) and is held in the budgets until reconciled.
#include <gtest/gtest.h>

#include <optional>

#include "cost/recovery.h"
#include "store/sqlite_ledger.h"
#include "support/temp_dir.h"

namespace bw::store {
namespace {

using namespace bw::cost;

constexpr std::int64_t kNow = 1'767'225'600'000;  // 2026-01-01T00:00:00Z

Result<Ok> wait_for(Ledger& l, bool queued, std::optional<Result<Ok>>& out) {
  EXPECT_TRUE(queued);
  l.flush();
  return out.value_or(Result<Ok>(make_error(500, "", "", "no callback")));
}

TEST(RecoveredRows, LeaseRowsComeBackAsLeasesAndAreHeldUntilReleased) {
  bw::testing::TempDir dir;
  SqliteLedgerOptions o;
  o.path = dir.file("ledger.db");
  const std::vector<std::string> ids{"global/total"};
  {
    auto ledger = SqliteLedger::open(o);
    ASSERT_TRUE(ledger.ok());
    std::optional<Result<Ok>> a, b;
    LedgerReservation lease{"lease-1", "k", "t", "", ids, 500, kNow - 10, /*lease=*/true};
    LedgerReservation req{"req-1", "k", "t", "m", ids, 70, kNow - 5};
    auto done_a = [&](const Result<Ok>& r) { a = r; };
    auto done_b = [&](const Result<Ok>& r) { b = r; };
    ASSERT_TRUE(wait_for(**ledger, (*ledger)->append_reservation(lease, done_a), a).ok());
    ASSERT_TRUE(wait_for(**ledger, (*ledger)->append_reservation(req, done_b), b).ok());
  }
  auto ledger = SqliteLedger::open(o);
  ASSERT_TRUE(ledger.ok());
  BudgetManager m;
  ASSERT_TRUE(m.upsert_budget({"global/total", 10'000, BudgetPeriod::kTotal}));
  auto report = recover_budgets(**ledger, m, kNow);
  ASSERT_TRUE(report.ok()) << report.error().message;
  ASSERT_EQ(report->open.size(), 2u);
  EXPECT_EQ(report->open[0].row.request_id, "lease-1");
  EXPECT_TRUE(report->open[0].row.lease);
  EXPECT_FALSE(report->open[1].row.lease);
  EXPECT_EQ(m.snapshot("global/total", kNow)->reserved_micro, 570);

  ASSERT_TRUE(reconcile(**ledger, m, report->open[0], std::nullopt, kNow + 1).ok());
  EXPECT_EQ(m.snapshot("global/total", kNow)->reserved_micro, 70);
  EXPECT_EQ(m.snapshot("global/total", kNow)->spent_micro, 0);
  EXPECT_EQ((*(*ledger)->find("lease-1"))->status, LedgerStatus::kReleased);
  ASSERT_TRUE(reconcile(**ledger, m, report->open[1], Micros{40}, kNow + 1).ok());
  EXPECT_EQ(m.snapshot("global/total", kNow)->reserved_micro, 0);
  EXPECT_EQ(m.snapshot("global/total", kNow)->spent_micro, 40);
  auto open = (*ledger)->open_reservations();
  ASSERT_TRUE(open.ok());
  EXPECT_TRUE(open->empty());
}

}  // namespace
}  // namespace bw::store
