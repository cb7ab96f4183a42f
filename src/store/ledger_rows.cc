#include "store/ledger_rows.h"

namespace bw::store {

cost::LedgerStatus parse_ledger_status(std::string_view s) {
  if (s == "settled") return cost::LedgerStatus::kSettled;
  if (s == "released") return cost::LedgerStatus::kReleased;
  return cost::LedgerStatus::kOpen;
}

const char* spend_group_expr(cost::SpendGroup group, const char* day_expr) {
  switch (group) {
    case cost::SpendGroup::kKey:
      return "key_id";
    case cost::SpendGroup::kTenant:
      return "tenant_id";
    case cost::SpendGroup::kModel:
      return "model";
    case cost::SpendGroup::kDay:
      return day_expr;
  }
  return "key_id";
}

Error duplicate_request_error(const std::string& request_id) {
  return make_error(409, "invalid_request_error", "duplicate_request_id",
                    "ledger already has request " + request_id);
}

Error leases_unsupported_error(const std::string& request_id) {
  return make_error(500, "server_error", "leases_unsupported",
                    "this ledger does not take budget leases (request " + request_id + ")");
}

Error not_open_error(const std::string& request_id) {
  return make_error(409, "invalid_request_error", "not_open",
                    "no open ledger reservation for request " + request_id);
}

}  // namespace bw::store
