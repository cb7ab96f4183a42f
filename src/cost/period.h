#pragma once
// Budget periods and their UTC windows. Pure functions of a unix-ms timestamp passed in.
#include <cstdint>
#include <optional>
#include <string_view>

namespace bw::cost {

enum class BudgetPeriod { kDaily, kMonthly, kTotal };

std::string_view to_string(BudgetPeriod p);
std::optional<BudgetPeriod> parse_period(std::string_view s);  // "daily" | "monthly" | "total"

constexpr std::int64_t kMillisPerDay = 86'400'000;
constexpr std::int64_t kForeverUnixMs = INT64_MAX;

// [start, end) of the period containing `now_unix_ms`, in UTC. Daily starts at 00:00 UTC, monthly
// on the 1st at 00:00 UTC. kTotal is [INT64_MIN, kForeverUnixMs): it never resets. `end` is the
// reset time reported to clients in refusals.
struct PeriodWindow {
  std::int64_t start_unix_ms = 0;
  std::int64_t end_unix_ms = 0;
};
PeriodWindow period_window(BudgetPeriod period, std::int64_t now_unix_ms);

// Start of the UTC day containing t (floor division, correct for negative t).
std::int64_t utc_day_start(std::int64_t unix_ms);

}  // namespace bw::cost
