#include "cost/period.h"

#include <chrono>

namespace bw::cost {

std::string_view to_string(BudgetPeriod p) {
  switch (p) {
    case BudgetPeriod::kDaily:
      return "daily";
    case BudgetPeriod::kMonthly:
      return "monthly";
    case BudgetPeriod::kTotal:
      return "total";
  }
  return "total";
}

std::optional<BudgetPeriod> parse_period(std::string_view s) {
  if (s == "daily") return BudgetPeriod::kDaily;
  if (s == "monthly") return BudgetPeriod::kMonthly;
  if (s == "total") return BudgetPeriod::kTotal;
  return std::nullopt;
}

std::int64_t utc_day_start(std::int64_t unix_ms) {
  std::int64_t day = unix_ms / kMillisPerDay;
  if (unix_ms % kMillisPerDay < 0) --day;
  return day * kMillisPerDay;
}

PeriodWindow period_window(BudgetPeriod period, std::int64_t now_unix_ms) {
  using namespace std::chrono;
  switch (period) {
    case BudgetPeriod::kDaily: {
      const std::int64_t start = utc_day_start(now_unix_ms);
      return {start, start + kMillisPerDay};
    }
    case BudgetPeriod::kMonthly: {
      const sys_days day{days{utc_day_start(now_unix_ms) / kMillisPerDay}};
      const year_month_day ymd{day};
      const year_month first = ymd.year() / ymd.month();
      const year_month next = first + months{1};
      const sys_days start{first / 1};
      const sys_days end{next / 1};
      return {start.time_since_epoch().count() * kMillisPerDay,
              end.time_since_epoch().count() * kMillisPerDay};
    }
    case BudgetPeriod::kTotal:
      return {INT64_MIN, kForeverUnixMs};
  }
  return {INT64_MIN, kForeverUnixMs};
}

}  // namespace bw::cost
