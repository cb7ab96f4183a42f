#pragma once
// RollingWindow: fixed-memory sliding-window counters (a ring of time buckets). Used for breaker
// failure rates, per-deployment RPM/TPM usage and the retry budget. Precision is one bucket width.
// Time must be non-negative monotonic nanoseconds. Thread safety: none; the owner locks.
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "common/clock.h"

namespace bw::routing {

template <std::size_t Fields>
class RollingWindow {
 public:
  RollingWindow(Nanos window, int buckets)
      : width_(std::max<Nanos>(1, window / std::max(1, buckets))),
        buckets_(static_cast<std::size_t>(std::max(1, buckets))) {}

  void add(Nanos now, std::size_t field, std::int64_t v) { bucket(now).v[field] += v; }

  std::int64_t sum(Nanos now, std::size_t field) const {
    const std::int64_t cur = now / width_;
    std::int64_t total = 0;
    for (const auto& b : buckets_) {
      if (live(b, cur)) total += b.v[field];
    }
    return total;
  }

  // Earliest time at which sum(field) drops below `limit` if nothing more is added; `now` if it
  // already is below.
  Nanos time_below(Nanos now, std::size_t field, std::int64_t limit) const {
    const std::int64_t cur = now / width_;
    std::int64_t total = sum(now, field);
    if (total < limit) return now;
    const std::int64_t n = static_cast<std::int64_t>(buckets_.size());
    for (std::int64_t e = cur - n + 1; e <= cur; ++e) {
      const Bucket& b = buckets_[static_cast<std::size_t>(e % n)];
      if (b.epoch != e) continue;
      total -= b.v[field];
      if (total < limit) return (e + n) * width_;
    }
    return (cur + n) * width_;
  }

  void clear() {
    for (auto& b : buckets_) b = Bucket{};
  }

  Nanos window() const { return width_ * static_cast<Nanos>(buckets_.size()); }

 private:
  struct Bucket {
    std::int64_t epoch = -1;
    std::array<std::int64_t, Fields> v{};
  };

  bool live(const Bucket& b, std::int64_t cur) const {
    return b.epoch > cur - static_cast<std::int64_t>(buckets_.size()) && b.epoch <= cur;
  }

  Bucket& bucket(Nanos now) {
    const std::int64_t cur = now / width_;
    Bucket& b =
        buckets_[static_cast<std::size_t>(cur % static_cast<std::int64_t>(buckets_.size()))];
    if (b.epoch != cur) {
      b.epoch = cur;
      b.v.fill(0);
    }
    return b;
  }

  Nanos width_;
  std::vector<Bucket> buckets_;
};

}  // namespace bw::routing
