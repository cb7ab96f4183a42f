#pragma once
// What the SQLite and PostgreSQL ledgers share: the record type of their write queue, the column
// list and its encodings, the readers of a result row, and the per-record errors. Both backends
// store the same rows in the same text form, so a database can move between them.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.h"
#include "cost/ledger.h"
#include "store/group_commit.h"
#include "store/text_columns.h"

namespace bw::store {

using LedgerRecord =
    std::variant<cost::LedgerReservation, cost::LedgerSettlement, cost::LedgerCovered>;
using LedgerQueue = GroupCommitQueue<LedgerRecord>;

// The columns read_ledger_row() expects, in order.
inline constexpr const char* kLedgerColumns =
    "request_id, key_id, tenant_id, model, budgets, reserved_micro, actual_micro, prompt_tokens,"
    " completion_tokens, status, created_unix_ms, settled_unix_ms, lease";

cost::LedgerStatus parse_ledger_status(std::string_view s);

// Readers of one result row, for any backend: `text(col)` returns the column as a string and
// `int64(col)` as an integer.
template <class Text, class Int>
cost::LedgerRow read_ledger_row(const Text& text, const Int& int64) {
  cost::LedgerRow row;
  row.request_id = text(0);
  row.key_id = text(1);
  row.tenant_id = text(2);
  row.model = text(3);
  row.budgets = split_lines(text(4));
  row.reserved_micro = int64(5);
  row.actual_micro = int64(6);
  row.prompt_tokens = int64(7);
  row.completion_tokens = int64(8);
  row.status = parse_ledger_status(text(9));
  row.created_unix_ms = int64(10);
  row.settled_unix_ms = int64(11);
  row.lease = int64(12) != 0;
  return row;
}

// Columns: budgets, key_id, tenant_id, day start, sum of actual_micro.
template <class Text, class Int>
cost::SpendAggregate read_spend_aggregate(const Text& text, const Int& int64) {
  cost::SpendAggregate a;
  a.budgets = split_lines(text(0));
  a.key_id = text(1);
  a.tenant_id = text(2);
  a.day_start_unix_ms = int64(3);
  a.actual_micro = int64(4);
  return a;
}

// Columns: group, count, settled actual, open reserved, prompt tokens, completion tokens.
template <class Text, class Int>
cost::SpendReportRow read_spend_report_row(const Text& text, const Int& int64) {
  cost::SpendReportRow r;
  r.group = text(0);
  r.requests = int64(1);
  r.actual_micro = int64(2);
  r.open_reserved_micro = int64(3);
  r.prompt_tokens = int64(4);
  r.completion_tokens = int64(5);
  return r;
}

// The SQL expression a spend report groups by; `day_expr` is the backend's UTC-date expression.
const char* spend_group_expr(cost::SpendGroup group, const char* day_expr);

// Values written for a closed row (a settlement, a covered row): its status column, and what it
// bills: nothing when released.
inline std::string_view closed_status_text(cost::LedgerStatus status) {
  return status == cost::LedgerStatus::kReleased ? "released" : "settled";
}
inline cost::Micros closed_actual(cost::LedgerStatus status, cost::Micros actual_micro) {
  return status == cost::LedgerStatus::kReleased ? cost::Micros{0}
                                                 : std::max<cost::Micros>(actual_micro, 0);
}
inline std::string_view settlement_status_text(const cost::LedgerSettlement& s) {
  return closed_status_text(s.status);
}
inline cost::Micros settlement_actual(const cost::LedgerSettlement& s) {
  return closed_actual(s.status, s.actual_micro);
}

Error duplicate_request_error(const std::string& request_id);
Error leases_unsupported_error(const std::string& request_id);
Error not_open_error(const std::string& request_id);

}  // namespace bw::store
