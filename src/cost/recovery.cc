#include "cost/recovery.h"

#include <algorithm>
#include <future>

namespace bw::cost {

std::vector<std::string> legacy_budget_ids(const BudgetManager& budgets, std::string_view key_id,
                                           std::string_view tenant_id) {
  const std::string key_prefix = "key:" + std::string(key_id) + "/";
  const std::string tenant_prefix = "tenant:" + std::string(tenant_id) + "/";
  std::vector<std::string> out;
  for (auto& id : budgets.budget_ids()) {
    if (id.starts_with("global/") || (!key_id.empty() && id.starts_with(key_prefix)) ||
        (!tenant_id.empty() && id.starts_with(tenant_prefix))) {
      out.push_back(std::move(id));
    }
  }
  return out;
}

Result<RecoveryReport> recover_budgets(Ledger& ledger, BudgetManager& budgets,
                                       std::int64_t now_unix_ms) {
  RecoveryReport report;
  const auto snaps = budgets.snapshots(now_unix_ms);
  if (!snaps.empty()) {
    std::int64_t since = now_unix_ms;
    for (const auto& s : snaps) since = std::min(since, s.period_start_unix_ms);
    auto settled = ledger.settled_since(since);
    if (!settled.ok()) return settled.error();
    for (const auto& agg : *settled) {
      const auto ids =
          agg.budgets.empty() ? legacy_budget_ids(budgets, agg.key_id, agg.tenant_id) : agg.budgets;
      budgets.restore_spent(ids, agg.actual_micro, agg.day_start_unix_ms, now_unix_ms);
      report.settled_micro = sat_add(report.settled_micro, agg.actual_micro);
    }
  }
  auto open = ledger.open_reservations();
  if (!open.ok()) return open.error();
  report.open.reserve(open->size());
  for (auto& row : *open) {
    const bool inferred = row.budgets.empty();
    auto ids = inferred ? legacy_budget_ids(budgets, row.key_id, row.tenant_id) : row.budgets;
    Reservation r = budgets.restore_open(ids, row.reserved_micro, row.created_unix_ms, now_unix_ms);
    report.open.push_back({std::move(row), std::move(r), std::move(ids), inferred});
  }
  return report;
}

Result<Ok> reconcile(Ledger& ledger, BudgetManager& budgets, RecoveredReservation& open,
                     std::optional<Micros> actual_micro, std::int64_t now_unix_ms) {
  LedgerSettlement s;
  s.request_id = open.row.request_id;
  s.status = actual_micro ? LedgerStatus::kSettled : LedgerStatus::kReleased;
  s.actual_micro = actual_micro.value_or(0);
  s.settled_unix_ms = now_unix_ms;
  auto promise = std::make_shared<std::promise<Result<Ok>>>();
  auto future = promise->get_future();
  if (!ledger.append_settlement(std::move(s),
                                [promise](const Result<Ok>& r) { promise->set_value(r); })) {
    return make_error(503, "server_error", "ledger_busy", "ledger queue is full");
  }
  Result<Ok> r = future.get();
  if (!r.ok()) return r;
  if (actual_micro) {
    (void)budgets.settle(open.reservation, *actual_micro, now_unix_ms);
  } else {
    budgets.release(open.reservation);
  }
  open.row.status = actual_micro ? LedgerStatus::kSettled : LedgerStatus::kReleased;
  return Ok{};
}

}  // namespace bw::cost
