#pragma once
// WindowCount: events counted over a sliding window of time buckets, without a lock. Each bucket
// is one 64-bit word (the low 32 bits of its epoch, i.e. of now / bucket width, and a 32-bit
// count), so record() is one compare-and-swap and threads that record at once never wait for one
// another. Precision is one bucket width; a bucket's count stops at 2^32 - 1. A bucket left
// untouched for 2^32 bucket widths could read as live again (136 years at one second).
// Time must be non-negative monotonic nanoseconds.
// Thread safety: record() and sum() may run concurrently from any thread. reset() may run
// concurrently with them too; events recorded during a reset may be lost or kept.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

#include "common/clock.h"

namespace bw {

class WindowCount {
 public:
  WindowCount(Nanos window, int buckets)
      : n_(static_cast<std::size_t>(std::max(1, buckets))),
        buckets_(std::make_unique<std::atomic<std::uint64_t>[]>(n_)) {
    reset(window);
  }

  void record(Nanos now, std::uint32_t n = 1) {
    const std::int64_t e = now / width_.load(std::memory_order_relaxed);
    std::atomic<std::uint64_t>& b = buckets_[slot(e)];
    const std::uint64_t tag = static_cast<std::uint64_t>(static_cast<std::uint32_t>(e)) << 32;
    std::uint64_t old = b.load(std::memory_order_relaxed);
    for (;;) {
      std::uint64_t next;
      if ((old & kTagMask) == tag) {
        const std::uint64_t count = old & kCountMask;
        next = tag | std::min<std::uint64_t>(kCountMask, count + n);
      } else if (newer(old, e)) {
        return;  // a thread with a later clock reading already reused the bucket
      } else {
        next = tag | n;
      }
      if (b.compare_exchange_weak(old, next, std::memory_order_relaxed)) return;
    }
  }

  std::uint64_t sum(Nanos now) const {
    const std::int64_t cur = now / width_.load(std::memory_order_relaxed);
    const auto n = static_cast<std::int64_t>(n_);
    std::uint64_t total = 0;
    for (std::int64_t e = std::max<std::int64_t>(0, cur - n + 1); e <= cur; ++e) {
      const std::uint64_t w = buckets_[slot(e)].load(std::memory_order_relaxed);
      if ((w >> 32) == static_cast<std::uint32_t>(e)) total += w & kCountMask;
    }
    return total;
  }

  // Empties the window and sets its length (buckets of window / buckets each).
  void reset(Nanos window) {
    width_.store(std::max<Nanos>(1, window / static_cast<Nanos>(n_)), std::memory_order_relaxed);
    // Epoch 0's tag with a zero count: an empty bucket whatever epoch it is read at.
    for (std::size_t i = 0; i < n_; ++i) buckets_[i].store(0, std::memory_order_relaxed);
  }

  Nanos window() const { return width_.load(std::memory_order_relaxed) * static_cast<Nanos>(n_); }

 private:
  static constexpr std::uint64_t kCountMask = 0xffffffffULL;
  static constexpr std::uint64_t kTagMask = ~kCountMask;

  std::size_t slot(std::int64_t e) const {
    return static_cast<std::size_t>(static_cast<std::uint64_t>(e) % n_);
  }
  // Whether word `w` holds an epoch later than `e` (compared within 2^31 epochs).
  static bool newer(std::uint64_t w, std::int64_t e) {
    const auto diff = static_cast<std::int32_t>(static_cast<std::uint32_t>(w >> 32) -
                                                static_cast<std::uint32_t>(e));
    return diff > 0 && (w & kCountMask) != 0;
  }

  std::size_t n_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;
  std::atomic<Nanos> width_{1};
};

}  // namespace bw
