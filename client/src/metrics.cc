#include "bellwether/metrics.h"

#include <numeric>

namespace bellwether {

void RateWindow::advance(Nanos now) {
  const std::int64_t sec = now / kNanosPerSecond;
  if (current_second_ < 0) {
    current_second_ = sec;
    return;
  }
  if (sec <= current_second_) return;
  const std::int64_t gap = sec - current_second_;
  if (gap >= 60) {
    buckets_.fill(0);
  } else {
    for (std::int64_t s = current_second_ + 1; s <= sec; ++s) buckets_[s % 60] = 0;
  }
  current_second_ = sec;
}

void RateWindow::add(Nanos now, std::uint64_t n) {
  advance(now);
  buckets_[(now / kNanosPerSecond) % 60] += n;
}

std::uint64_t RateWindow::last_minute(Nanos now) {
  advance(now);
  return std::accumulate(buckets_.begin(), buckets_.end(), std::uint64_t{0});
}

}  // namespace bellwether
