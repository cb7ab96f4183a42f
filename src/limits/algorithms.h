#pragma once
// Pure rate-limit algorithms with exact integer arithmetic in nanoseconds.
//
// All three meters share one model: a limit admits at most `capacity = rate + burst` units at
// once and regains `rate` units per `period`. Costs are whole units (1 per request, n per token
// batch). Fractions of a unit are carried exactly (never rounded), so over any run the number of
// admitted units equals the closed-form allowance to the unit.
//
// Contract: every function is pure (no clock reads, no I/O, no allocation); the caller passes
// `now`. States are plain values and not thread safe; the LimitStore serialises access to them.
// `check` never mutates, `consume` mutates only when the decision is `allowed`, so a caller can
// check several limits first and consume all or none. `adjust` corrects a charge after the fact
// (positive: more cost, may go into debt; negative: refund, never below empty).
#include <array>
#include <cstdint>
#include <limits>

#include "common/clock.h"

namespace bw::limits {

// retry_after for a cost that can never pass (cost > capacity).
inline constexpr Nanos kNever = std::numeric_limits<Nanos>::max();

struct Decision {
  bool allowed = true;
  std::int64_t limit = 0;      // capacity (rate + burst), the most the bucket ever admits at once
  std::int64_t remaining = 0;  // whole units left after this request (or now, when rejected)
  Nanos retry_after = 0;       // 0 when allowed; else exact ns until this cost would pass; kNever
  Nanos reset_after = 0;       // ns until the bucket is completely full/empty of usage again
};

// Normalised parameters of one limit. rate >= 1, period >= 1 ns, burst >= 0.
struct BucketParams {
  std::int64_t rate = 1;
  Nanos period = kNanosPerSecond;
  std::int64_t burst = 0;
  std::int64_t capacity() const { return rate + burst; }
};

// GCRA: the state is the theoretical arrival time (TAT) of the next unit, kept exactly as
// tat + frac/rate ns. Identical admissions to the token bucket, smaller state, no last-update time.
// The rate and period the TAT was computed with are kept so that a reload that changes them
// preserves the units used rather than the time to drain.
struct GcraState {
  Nanos tat = std::numeric_limits<Nanos>::min();  // min() = never used (empty)
  std::int64_t frac = 0;                          // sub-ns part of TAT, in 1/rate ns, [0, rate)
  std::int64_t rate = 0;                          // params of tat/frac
  Nanos period = 0;
};

// Token bucket: whole tokens plus an exact fraction (in 1/period of a token) as of `last`.
struct TokenBucketState {
  std::int64_t tokens = 0;
  std::int64_t frac = 0;                           // [0, period)
  Nanos last = std::numeric_limits<Nanos>::min();  // min() = never used (full)
};

// Sliding window over sub-window buckets. The window W = period is cut into kSlots slots of
// g = W / kSlots; a request is counted against every slot that intersects [now - W - g, now].
// Guarantee: in ANY interval of length W at most `capacity` units are admitted (no edge double
// burst). Error: usage is forgotten up to g later than an exact log would forget it, i.e. a
// request may be rejected for at most g = W/20 longer than strictly necessary.
struct SlidingWindowState {
  static constexpr int kSlots = 20;                              // sub-windows per window
  static constexpr int kRing = kSlots + 1;                       // slots counted at any time
  std::int64_t head = std::numeric_limits<std::int64_t>::min();  // newest slot index in the ring
  Nanos slot = 0;  // slot width the indexes refer to (a reload may change the period)
  std::array<std::int64_t, kRing> counts{};
  // The sum of `counts`, kept with them so that a decision does not add up the ring. 128 bits:
  // counts saturated by adjust() cannot overflow it.
  __int128 total = 0;
};

struct Gcra {
  static Decision check(const GcraState& s, const BucketParams& p, std::int64_t cost, Nanos now);
  static Decision consume(GcraState& s, const BucketParams& p, std::int64_t cost, Nanos now);
  // consume when it admits and every quantity fits 64 bits (nearly always), inline: the same
  // state and decision (in `d`). False, with nothing changed: call consume.
  static bool admit_fast(GcraState& s, const BucketParams& p, std::int64_t cost, Nanos now,
                         Decision& d);
  // adjust when every quantity fits 64 bits (nearly always), inline: the same state, and `idle`
  // = idle_at(s, p, now) after it. False, with nothing changed: call adjust.
  static bool adjust_fast(GcraState& s, const BucketParams& p, std::int64_t delta, Nanos now,
                          Nanos& idle);
  // idle_at of a state that admit_fast has just charged: its TAT, rounded up to whole ns.
  static Nanos idle_after_admit(const GcraState& s) {
    return s.frac != 0 && s.tat != kNever ? s.tat + 1 : s.tat;
  }
  // The level (in 1/period units) at `now` of a state of these parameters, when it fits 64 bits.
  static bool level_fast(const GcraState& s, const BucketParams& p, Nanos now, std::int64_t& level);
  static void adjust(GcraState& s, const BucketParams& p, std::int64_t delta, Nanos now);
  // Time from which the state carries no information (equals a fresh state).
  static Nanos idle_at(const GcraState& s, const BucketParams& p, Nanos now);
};

// The same integers as consume's general path, without 128-bit products, comparisons and
// saturation. With L = the level, c = the cost and C = the capacity, in units of 1/period:
// L + c*period <= C*period exactly when ceil(L / period) <= C - c, and then
// (C*period - L - c*period) / period rounded down is C - c - ceil(L / period), so the capacity in
// scaled units (beyond 64 bits for day-long token limits) is never formed.
inline bool Gcra::admit_fast(GcraState& s, const BucketParams& p, std::int64_t cost, Nanos now,
                             Decision& d) {
  const std::int64_t rate = p.rate, period = p.period;
  std::int64_t level;
  if (!level_fast(s, p, now, level)) return false;
  const std::int64_t units = cost > 0 ? cost : 0;
  std::int64_t capacity, need, after;
  if (__builtin_add_overflow(rate, p.burst, &capacity) || units > capacity ||
      __builtin_mul_overflow(units, period, &need) || __builtin_add_overflow(level, need, &after)) {
    return false;
  }
  const std::int64_t used = level == 0 ? 0 : (level - 1) / period + 1;  // ceil(level / period)
  if (used > capacity - units) return false;  // refused: the general path reports it
  // after >= 0: its quotient and remainder by the rate give both the TAT and ceil(after / rate).
  const std::int64_t whole = after / rate, rest = after % rate;
  std::int64_t tat;
  if (__builtin_add_overflow(now, whole, &tat)) return false;
  d.allowed = true;
  d.limit = capacity;
  d.remaining = capacity - units - used;
  d.retry_after = 0;
  d.reset_after = whole + (rest != 0 ? 1 : 0);
  s.tat = tat;
  s.frac = rest;
  s.rate = rate;
  s.period = period;
  return true;
}

inline bool Gcra::level_fast(const GcraState& s, const BucketParams& p, Nanos now,
                             std::int64_t& level) {
  level = 0;
  if (s.tat == std::numeric_limits<Nanos>::min()) return true;
  if (s.rate != p.rate || s.period != p.period) return false;  // reloaded: keep the units
  // frac in [0, rate) (rate >= 1): one unsigned comparison.
  if (static_cast<std::uint64_t>(s.frac) >= static_cast<std::uint64_t>(p.rate)) return false;
  std::int64_t ahead;
  if (__builtin_sub_overflow(s.tat, now, &ahead)) return false;
  // A TAT in the past leaves no level (frac < rate).
  return ahead < 0 || (!__builtin_mul_overflow(ahead, p.rate, &level) &&
                       !__builtin_add_overflow(level, s.frac, &level));
}

inline bool Gcra::adjust_fast(GcraState& s, const BucketParams& p, std::int64_t delta, Nanos now,
                              Nanos& idle) {
  const std::int64_t rate = p.rate;
  std::int64_t level, change, tat;
  if (!level_fast(s, p, now, level) || __builtin_mul_overflow(delta, p.period, &change) ||
      __builtin_add_overflow(level, change, &level)) {
    return false;
  }
  if (level < 0) level = 0;  // never below empty
  // idle = now + ceil(level / rate): at most tat + 1.
  const std::int64_t whole = level / rate, rest = level % rate;
  if (__builtin_add_overflow(now, whole, &tat) ||
      __builtin_add_overflow(tat, rest != 0 ? 1 : 0, &idle)) {
    return false;
  }
  s.tat = tat;
  s.frac = rest;
  s.rate = rate;
  s.period = p.period;
  return true;
}

struct TokenBucket {
  static Decision check(const TokenBucketState& s, const BucketParams& p, std::int64_t cost,
                        Nanos now);
  static Decision consume(TokenBucketState& s, const BucketParams& p, std::int64_t cost, Nanos now);
  static void adjust(TokenBucketState& s, const BucketParams& p, std::int64_t delta, Nanos now);
  static Nanos idle_at(const TokenBucketState& s, const BucketParams& p, Nanos now);
};

// An admitted charge that SlidingWindow::check decided from the ring as it is (`ready`), for
// SlidingWindow::charge to apply to that same, unchanged ring: what consume would have done.
struct SlidingWindowCharge {
  bool ready = false;
  std::int64_t head = 0;  // the ring's head once advanced
  __int128 total = 0;     // its total once advanced, before the cost
  std::int64_t cost = 0;
};

struct SlidingWindow {
  static Decision check(const SlidingWindowState& s, const BucketParams& p, std::int64_t cost,
                        Nanos now);
  // check, and when the cost is admitted from the ring as it is (no rebuild), what charging it
  // takes (`charge->ready`; else consume decides it).
  static Decision check(const SlidingWindowState& s, const BucketParams& p, std::int64_t cost,
                        Nanos now, SlidingWindowCharge& charge);
  // Applies a ready charge of check() to the ring it was decided on, unchanged since: the ring
  // and the decision are then what consume() at the same time would have left and given.
  static void charge(SlidingWindowState& s, const SlidingWindowCharge& c);
  static Decision consume(SlidingWindowState& s, const BucketParams& p, std::int64_t cost,
                          Nanos now);
  static void adjust(SlidingWindowState& s, const BucketParams& p, std::int64_t delta, Nanos now);
  static Nanos idle_at(const SlidingWindowState& s, const BucketParams& p, Nanos now);
  // Slot width g for a window: period / kSlots, at least 1 ns.
  static Nanos slot_width(const BucketParams& p);
};

}  // namespace bw::limits
