#include "limits/algorithms.h"

#include <algorithm>

namespace bw::limits {
namespace {

// Products such as cost * period or (ns * rate) exceed 64 bits for day-long token limits.
using i128 = __int128;

constexpr Nanos kMinNanos = std::numeric_limits<Nanos>::min();

Nanos saturate(i128 v) {
  if (v >= static_cast<i128>(kNever)) return kNever;
  if (v <= static_cast<i128>(kMinNanos)) return kMinNanos;
  return static_cast<Nanos>(v);
}

// 128-bit division is a library call (tens of instructions); the operands of most limits fit in
// 64 bits, where it is one instruction. Same results as a / b and a % b.
bool fits_u64(i128 v) {
  return static_cast<unsigned __int128>(v) <=
         std::numeric_limits<std::uint64_t>::max();  // also false for v < 0
}
i128 div(i128 a, i128 b) {
  if (fits_u64(a) && fits_u64(b))
    return static_cast<std::uint64_t>(a) / static_cast<std::uint64_t>(b);
  return a / b;
}
i128 mod(i128 a, i128 b) {
  if (fits_u64(a) && fits_u64(b))
    return static_cast<std::uint64_t>(a) % static_cast<std::uint64_t>(b);
  return a % b;
}

i128 ceil_div(i128 a, i128 b) {
  return a <= 0 ? 0 : div(a + b - 1, b);
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  std::int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// GCRA and the token bucket are the same meter seen from two sides. `level` is the usage in
// scaled units: one unit of cost is `period`, and the level drains by `rate` per nanosecond, so
// every quantity stays an exact integer.
Decision decide(i128 level, const BucketParams& p, std::int64_t cost) {
  const i128 period = p.period, rate = p.rate, cap_units = p.capacity();
  const i128 cap = cap_units * period;
  const i128 need = static_cast<i128>(std::max<std::int64_t>(cost, 0)) * period;
  Decision d;
  d.limit = p.capacity();
  if (level + need <= cap) {
    const i128 after = level + need;
    d.allowed = true;
    d.remaining = static_cast<std::int64_t>(div(cap - after, period));
    d.retry_after = 0;
    d.reset_after = saturate(ceil_div(after, rate));
  } else {
    d.allowed = false;
    d.remaining = level >= cap ? 0 : static_cast<std::int64_t>(div(cap - level, period));
    d.reset_after = saturate(ceil_div(level, rate));
    d.retry_after = cost > p.capacity() ? kNever : saturate(ceil_div(level + need - cap, rate));
  }
  return d;
}

// Above every capacity a bucket can have (int64 units of a period of at most a day) and
// low enough that adding a charge or a refund to it stays within 128 bits.
constexpr i128 kLevelCeiling = static_cast<i128>(1) << 125;

i128 gcra_level(const GcraState& s, const BucketParams& p, Nanos now) {
  if (s.tat == kMinNanos) return 0;
  if (s.rate <= 0 || (s.rate == p.rate && s.period == p.period)) {
    const i128 level = (static_cast<i128>(s.tat) - now) * p.rate + s.frac;
    return level > 0 ? level : 0;
  }
  // Reloaded with other parameters: keep the units in use (rounded up), not the drain time.
  // Whole old periods and the rest apart, so that no product leaves 128 bits; a level beyond any
  // bucket's capacity is held at kLevelCeiling.
  const i128 old_level = (static_cast<i128>(s.tat) - now) * s.rate + s.frac;
  if (old_level <= 0) return 0;
  const i128 old_period = std::max<Nanos>(s.period, 1);
  const i128 whole = div(old_level, old_period), rest = mod(old_level, old_period);
  if (whole > kLevelCeiling / p.period) return kLevelCeiling;
  return std::min(kLevelCeiling, whole * p.period + ceil_div(rest * p.period, old_period));
}

void gcra_set_level(GcraState& s, const BucketParams& p, Nanos now, i128 level) {
  s.tat = saturate(static_cast<i128>(now) + div(level, p.rate));
  s.frac = static_cast<std::int64_t>(mod(level, p.rate));
  s.rate = p.rate;
  s.period = p.period;
}

TokenBucketState refilled(const TokenBucketState& s, const BucketParams& p, Nanos now) {
  TokenBucketState r = s;
  const std::int64_t cap = p.capacity();
  if (r.last == kMinNanos) return TokenBucketState{cap, 0, now};
  r.frac = std::min<std::int64_t>(r.frac, p.period - 1);
  if (now > r.last) {
    const i128 acc = static_cast<i128>(r.frac) + static_cast<i128>(now - r.last) * p.rate;
    const i128 tokens = r.tokens + div(acc, p.period);
    if (tokens >= cap) {
      r.tokens = cap;
      r.frac = 0;
    } else {
      r.tokens = static_cast<std::int64_t>(tokens);
      r.frac = static_cast<std::int64_t>(mod(acc, p.period));
    }
    r.last = now;
  }
  if (r.tokens >= cap) {  // also covers a capacity lowered by a reload
    r.tokens = cap;
    r.frac = 0;
  }
  return r;
}

i128 tb_level(const TokenBucketState& r, const BucketParams& p) {
  return (static_cast<i128>(p.capacity()) - r.tokens) * p.period - r.frac;
}

int ring_index(std::int64_t slot) {
  // Slots of times since the epoch are never negative: one remainder then.
  if (slot >= 0) return static_cast<int>(slot % SlidingWindowState::kRing);
  return static_cast<int>(((slot % SlidingWindowState::kRing) + SlidingWindowState::kRing) %
                          SlidingWindowState::kRing);
}

// Where advanced() would leave the ring's head and total at `now`, read without copying the
// ring (~200 bytes). False for a ring advanced() would rebuild (fresh, or its slots of another
// width after a reload): take the copy then.
bool advanced_total(const SlidingWindowState& s, Nanos g, Nanos now, std::int64_t& head,
                    i128& total) {
  if (s.head == kMinNanos || s.slot != g) return false;
  const std::int64_t cur = floor_div(now, g);
  if (cur <= s.head) {
    head = s.head;
    total = s.total;
    return true;
  }
  head = cur;
  if (static_cast<i128>(cur) - s.head >= SlidingWindowState::kRing) {
    total = 0;
    return true;
  }
  total = s.total;
  for (std::int64_t i = s.head + 1; i <= cur; ++i) total -= s.counts[ring_index(i)];
  return true;
}

// Moves the ring's head forward to `head` (not behind the current one), zeroing the slots that
// leave the window; the total is the caller's (advanced_total gives it).
void move_head(SlidingWindowState& s, std::int64_t head) {
  if (head == s.head) return;
  if (static_cast<i128>(head) - s.head >= SlidingWindowState::kRing) {
    s.counts.fill(0);
  } else {
    for (std::int64_t i = s.head + 1; i <= head; ++i) s.counts[ring_index(i)] = 0;
  }
  s.head = head;
}

// Moves the ring forward to the slot of `now`, zeroing slots that left the window. Time that
// appears to go backwards (a thread that read the clock a moment earlier) keeps the newer head.
SlidingWindowState advanced(const SlidingWindowState& s, const BucketParams& p, Nanos now) {
  SlidingWindowState a = s;
  const Nanos g = SlidingWindow::slot_width(p);
  const std::int64_t cur = floor_div(now, g);
  if (a.head != kMinNanos && a.slot != g) {
    // Reloaded with another period: the old slot indexes mean nothing now. Keep the usage,
    // counted in the current slot (conservative: it expires one window from now).
    const Nanos kept = saturate(a.total);
    a.counts.fill(0);
    a.counts[ring_index(cur)] = kept;
    a.total = kept;
    a.head = cur;
  }
  a.slot = g;
  if (a.head == kMinNanos) {
    a.counts.fill(0);
    a.total = 0;
    a.head = cur;
  } else if (cur > a.head) {
    std::int64_t head = cur;
    i128 total = 0;
    advanced_total(a, g, now, head, total);
    move_head(a, head);
    a.total = total;
  }
  return a;
}

// Slot `b` stops being counted at the start of slot b + kRing.
Nanos slot_expiry(std::int64_t b, Nanos g, Nanos now) {
  std::int64_t end, at;
  if (!__builtin_add_overflow(b, std::int64_t{SlidingWindowState::kRing}, &end) &&
      !__builtin_mul_overflow(end, g, &at) && !__builtin_sub_overflow(at, now, &at)) {
    return at;  // the same figure in 64 bits (within them it needs no saturation)
  }
  return saturate((static_cast<i128>(b) + SlidingWindowState::kRing) * g - now);
}

Nanos sw_reset_after(const SlidingWindowState& a, Nanos g, Nanos now) {
  for (std::int64_t b = a.head; b > a.head - SlidingWindowState::kRing; --b) {
    if (a.counts[ring_index(b)] != 0) return std::max<Nanos>(0, slot_expiry(b, g, now));
  }
  return 0;
}

Decision sw_decide(const SlidingWindowState& a, const BucketParams& p, std::int64_t cost,
                   Nanos now) {
  const Nanos g = SlidingWindow::slot_width(p);
  const i128 cap = p.capacity();
  const i128 sum = a.total;
  const i128 need = std::max<std::int64_t>(cost, 0);
  Decision d;
  d.limit = p.capacity();
  if (sum + need <= cap) {
    d.allowed = true;
    d.remaining = static_cast<std::int64_t>(cap - sum - need);
    // After the charge the newest slot holds usage (counts are never negative), so the bucket
    // is empty again when that slot expires: what sw_reset_after of the charged ring gives.
    d.reset_after =
        need > 0 ? std::max<Nanos>(0, slot_expiry(a.head, g, now)) : sw_reset_after(a, g, now);
    return d;
  }
  d.allowed = false;
  d.remaining = sum >= cap ? 0 : static_cast<std::int64_t>(cap - sum);
  d.reset_after = sw_reset_after(a, g, now);
  if (need > cap) {
    d.retry_after = kNever;
    return d;
  }
  const i128 excess = sum + need - cap;
  i128 dropped = 0;
  for (std::int64_t b = a.head - SlidingWindowState::kSlots; b <= a.head; ++b) {
    dropped += a.counts[ring_index(b)];
    if (dropped >= excess) {
      d.retry_after = std::max<Nanos>(1, slot_expiry(b, g, now));
      break;
    }
  }
  return d;
}

// The common decision, an admitted cost > 0, as sw_decide gives it on the advanced ring (head
// and total from advanced_total). False when the cost does not pass, is 0 or the ring needs
// rebuilding: sw_decide on the advanced copy decides then.
bool sw_admits(const SlidingWindowState& s, const BucketParams& p, std::int64_t cost, Nanos now,
               Decision& d, std::int64_t& head, i128& total) {
  const Nanos g = SlidingWindow::slot_width(p);
  if (cost <= 0 || !advanced_total(s, g, now, head, total)) return false;
  const i128 cap = p.capacity();
  if (total + cost > cap) return false;
  d.allowed = true;
  d.limit = p.capacity();
  d.remaining = static_cast<std::int64_t>(cap - total - cost);
  d.retry_after = 0;
  d.reset_after = std::max<Nanos>(0, slot_expiry(head, g, now));
  return true;
}

}  // namespace

// ---- GCRA ----

Decision Gcra::check(const GcraState& s, const BucketParams& p, std::int64_t cost, Nanos now) {
  return decide(gcra_level(s, p, now), p, cost);
}

namespace {

// Gcra::consume beyond Gcra::admit_fast: out of line, so that the common call does not set up
// the 128-bit path's registers and frame.
[[gnu::noinline]] Decision gcra_consume_general(GcraState& s, const BucketParams& p,
                                                std::int64_t cost, Nanos now) {
  const i128 level = gcra_level(s, p, now);
  Decision d = decide(level, p, cost);
  if (d.allowed) {
    gcra_set_level(s, p, now,
                   level + static_cast<i128>(std::max<std::int64_t>(cost, 0)) * p.period);
  }
  return d;
}

}  // namespace

Decision Gcra::consume(GcraState& s, const BucketParams& p, std::int64_t cost, Nanos now) {
  Decision d;  // the one object returned
  if (!admit_fast(s, p, cost, now, d)) [[unlikely]]
    d = gcra_consume_general(s, p, cost, now);
  return d;
}

void Gcra::adjust(GcraState& s, const BucketParams& p, std::int64_t delta, Nanos now) {
  i128 level = gcra_level(s, p, now) + static_cast<i128>(delta) * p.period;
  gcra_set_level(s, p, now, level > 0 ? level : 0);
}

Nanos Gcra::idle_at(const GcraState& s, const BucketParams& p, Nanos now) {
  return saturate(static_cast<i128>(now) + ceil_div(gcra_level(s, p, now), p.rate));
}

// ---- Token bucket ----

Decision TokenBucket::check(const TokenBucketState& s, const BucketParams& p, std::int64_t cost,
                            Nanos now) {
  return decide(tb_level(refilled(s, p, now), p), p, cost);
}

Decision TokenBucket::consume(TokenBucketState& s, const BucketParams& p, std::int64_t cost,
                              Nanos now) {
  TokenBucketState r = refilled(s, p, now);
  Decision d = decide(tb_level(r, p), p, cost);
  if (d.allowed) {
    r.tokens -= std::max<std::int64_t>(cost, 0);
    s = r;
  }
  return d;
}

void TokenBucket::adjust(TokenBucketState& s, const BucketParams& p, std::int64_t delta,
                         Nanos now) {
  TokenBucketState r = refilled(s, p, now);
  const i128 tokens = static_cast<i128>(r.tokens) - delta;
  if (tokens >= p.capacity()) {
    r.tokens = p.capacity();
    r.frac = 0;
  } else {
    r.tokens = saturate(tokens);
  }
  s = r;
}

Nanos TokenBucket::idle_at(const TokenBucketState& s, const BucketParams& p, Nanos now) {
  if (s.last == kMinNanos) return kMinNanos;
  return saturate(static_cast<i128>(now) + ceil_div(tb_level(refilled(s, p, now), p), p.rate));
}

// ---- Sliding window ----

Nanos SlidingWindow::slot_width(const BucketParams& p) {
  return std::max<Nanos>(1, p.period / SlidingWindowState::kSlots);
}

Decision SlidingWindow::check(const SlidingWindowState& s, const BucketParams& p, std::int64_t cost,
                              Nanos now) {
  SlidingWindowCharge unused;
  return check(s, p, cost, now, unused);
}

Decision SlidingWindow::check(const SlidingWindowState& s, const BucketParams& p, std::int64_t cost,
                              Nanos now, SlidingWindowCharge& charge) {
  Decision d;
  charge.ready = sw_admits(s, p, cost, now, d, charge.head, charge.total);
  if (charge.ready) {
    charge.cost = cost;
    return d;
  }
  return sw_decide(advanced(s, p, now), p, cost, now);
}

void SlidingWindow::charge(SlidingWindowState& s, const SlidingWindowCharge& c) {
  // Advanced in place, as advanced() would; the cost goes to the newest slot.
  move_head(s, c.head);
  s.counts[ring_index(c.head)] += c.cost;
  s.total = c.total + c.cost;
}

Decision SlidingWindow::consume(SlidingWindowState& s, const BucketParams& p, std::int64_t cost,
                                Nanos now) {
  SlidingWindowCharge c;
  Decision d;
  if (sw_admits(s, p, cost, now, d, c.head, c.total)) {
    c.cost = cost;
    charge(s, c);
    return d;
  }
  SlidingWindowState a = advanced(s, p, now);
  d = sw_decide(a, p, cost, now);
  if (d.allowed) {
    const std::int64_t add = std::max<std::int64_t>(cost, 0);
    a.counts[ring_index(a.head)] += add;
    a.total += add;
    s = a;
  }
  return d;
}

void SlidingWindow::adjust(SlidingWindowState& s, const BucketParams& p, std::int64_t delta,
                           Nanos now) {
  SlidingWindowState a = advanced(s, p, now);
  if (delta >= 0) {
    auto& c = a.counts[ring_index(a.head)];
    const std::int64_t charged = saturate(static_cast<i128>(c) + delta);
    a.total += charged - static_cast<i128>(c);
    c = charged;
  } else {
    // A refund belongs to a recent charge, so it comes off the newest slots first.
    i128 refund = -static_cast<i128>(delta);
    for (std::int64_t b = a.head; b > a.head - SlidingWindowState::kRing && refund > 0; --b) {
      auto& c = a.counts[ring_index(b)];
      const i128 take = std::min<i128>(c, refund);
      c -= static_cast<std::int64_t>(take);
      a.total -= take;
      refund -= take;
    }
  }
  s = a;
}

Nanos SlidingWindow::idle_at(const SlidingWindowState& s, const BucketParams& p, Nanos now) {
  if (s.head == kMinNanos) return kMinNanos;
  const SlidingWindowState a = advanced(s, p, now);
  return saturate(static_cast<i128>(now) + sw_reset_after(a, slot_width(p), now));
}

}  // namespace bw::limits
