#pragma once
// Startup recovery: rebuild BudgetManager counters from the ledger, and reconcile reservations that
// were open when the previous process died. Call after the budgets are configured and before
// traffic is accepted. Blocking (it reads the ledger and waits for commits): never on the request
// path.
#include <cstdint>
#include <optional>
#include <vector>

#include "cost/budget_manager.h"
#include "cost/ledger.h"

namespace bw::cost {

// An open ledger row whose amount is held again in the budgets. Keep it until reconciled:
// dropping it releases the headroom in memory while the ledger still says open.
struct RecoveredReservation {
  LedgerRow row;
  Reservation reservation;
  // The budget ids the row is held against: its own (row.budgets), or for a row that names none
  // (written before the ledger had a budgets column, schema v2) the ids legacy_budget_ids()
  // attributes it to; for such a row nothing configured may match (then empty).
  std::vector<std::string> budgets;
  bool budgets_inferred = false;  // a row that names no budgets
};

struct RecoveryReport {
  Micros settled_micro = 0;  // settled spend applied to at least one budget
  std::vector<RecoveredReservation> open;
};

// Settled rows count in the budgets whose current period contains their created_unix_ms; open
// rows count at their reserved amount. Rows written before schema v2 (no budgets column) are
// attributed to every configured "global/*", "tenant:<tenant>/*" and "key:<key>/*" budget.
Result<RecoveryReport> recover_budgets(Ledger& ledger, BudgetManager& budgets,
                                       std::int64_t now_unix_ms);

// Closes a recovered reservation: settles at `actual_micro` (e.g. the amount the provider's usage
// export shows, or the reserved amount when unknown: the conservative choice), or releases it when
// nullopt. The ledger commit happens first; memory follows only on success.
Result<Ok> reconcile(Ledger& ledger, BudgetManager& budgets, RecoveredReservation& open,
                     std::optional<Micros> actual_micro, std::int64_t now_unix_ms);

// Budget ids a pre-v2 row (no budgets column) is attributed to.
std::vector<std::string> legacy_budget_ids(const BudgetManager& budgets, std::string_view key_id,
                                           std::string_view tenant_id);

}  // namespace bw::cost
