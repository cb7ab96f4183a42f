#pragma once
// LedgerWithoutRows: the read side of a ledger that holds no rows (no open reservations, no
// settled spend, nothing found, an empty report, zero stats), for the test ledgers that only
// take records and complete their callbacks.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cost/ledger.h"

namespace bw::testing {

class LedgerWithoutRows : public cost::Ledger {
 public:
  Result<std::vector<cost::LedgerRow>> open_reservations() override {
    return std::vector<cost::LedgerRow>{};
  }
  Result<std::vector<cost::SpendAggregate>> settled_since(std::int64_t) override {
    return std::vector<cost::SpendAggregate>{};
  }
  Result<std::optional<cost::LedgerRow>> find(const std::string&) override {
    return std::optional<cost::LedgerRow>{};
  }
  Result<std::vector<cost::SpendReportRow>> spend_report(cost::SpendGroup, std::int64_t,
                                                         std::int64_t) override {
    return std::vector<cost::SpendReportRow>{};
  }
  cost::LedgerStats stats() const override { return {}; }
};

}  // namespace bw::testing
