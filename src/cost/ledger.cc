#include "cost/ledger.h"

namespace bw::cost {

const char* to_string(LedgerStatus s) {
  switch (s) {
    case LedgerStatus::kOpen:
      return "open";
    case LedgerStatus::kSettled:
      return "settled";
    case LedgerStatus::kReleased:
      return "released";
  }
  return "open";
}

}  // namespace bw::cost
