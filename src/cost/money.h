#pragma once
// Money is integer micro-dollars (1 USD = 1'000'000 micros), never floating point, so that sums are
// exact and reconcile with the ledger to the last micro. Arithmetic saturates instead of wrapping:
// an overflow must never turn a huge cost into a negative (i.e. free) one.
#include <cstdint>
#include <limits>

namespace bw::cost {

using Micros = std::int64_t;

constexpr Micros kMicrosPerUsd = 1'000'000;
constexpr Micros kMaxMicros = std::numeric_limits<Micros>::max();
constexpr Micros kMinMicros = std::numeric_limits<Micros>::min();

constexpr Micros sat_add(Micros a, Micros b) {
  Micros r = 0;
  if (__builtin_add_overflow(a, b, &r)) return b > 0 ? kMaxMicros : kMinMicros;
  return r;
}

constexpr Micros sat_sub(Micros a, Micros b) {
  Micros r = 0;
  if (__builtin_sub_overflow(a, b, &r)) return b < 0 ? kMaxMicros : kMinMicros;
  return r;
}

constexpr Micros sat_mul(Micros a, Micros b) {
  Micros r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return ((a < 0) != (b < 0)) ? kMinMicros : kMaxMicros;
  return r;
}

// USD amount from configuration (e.g. 2.50) to micros, rounded to the nearest micro. Only for
// loading configuration; the data plane never touches doubles.
Micros usd_to_micros(double usd);
// For payloads and metrics only.
constexpr double micros_to_usd(Micros m) {
  return static_cast<double>(m) / kMicrosPerUsd;
}

}  // namespace bw::cost
