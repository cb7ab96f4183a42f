#pragma once
// Published<T>: an immutable value that one writer replaces now and then (a config, a routing
// snapshot) and every request reads. Each thread keeps its own copy of the shared_ptr and
// refreshes it only when the publication changed, so a read is one acquire load and a compare:
// no lock and no shared reference count per request.
// Generations are unique in the process, so a thread's copy can never be mistaken for another
// Published's value (or an earlier one), even if one is rebuilt at the same address.
// Thread safety: every member may be called from any thread. The reference get() returns is
// valid until the calling thread calls get() on any Published<T> again: copy it to keep the value
// across a suspension.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>

namespace bw {

namespace published_detail {
inline std::atomic<std::uint64_t> last_generation{0};
inline std::uint64_t next_generation() {
  return last_generation.fetch_add(1, std::memory_order_relaxed) + 1;
}
}  // namespace published_detail

template <class T>
class Published {
 public:
  explicit Published(std::shared_ptr<const T> value)
      : generation_(published_detail::next_generation()), value_(std::move(value)) {}

  // The calling thread's copy, refreshed when a publish() happened since it last looked.
  const std::shared_ptr<const T>& get() const {
    Cache& cache = cache_;
    if (cache.generation != generation_.load(std::memory_order_acquire)) [[unlikely]] {
      std::lock_guard lock(mu_);
      cache.value = value_;
      cache.generation = generation_.load(std::memory_order_relaxed);
    }
    return cache.value;
  }

  // The current value, read under the lock (for callers that keep it).
  std::shared_ptr<const T> load() const {
    std::lock_guard lock(mu_);
    return value_;
  }

  // Replaces the value; returns the previous one, so that the caller frees it outside the lock.
  std::shared_ptr<const T> publish(std::shared_ptr<const T> value) {
    std::lock_guard lock(mu_);
    auto previous = std::exchange(value_, std::move(value));
    generation_.store(published_detail::next_generation(), std::memory_order_release);
    return previous;
  }

 private:
  struct Cache {
    std::uint64_t generation = 0;  // 0: empty
    std::shared_ptr<const T> value;
  };
  static thread_local Cache cache_;

  // Read by every request, written only by publish(): a cache line of its own, apart from the
  // mutex that publish() and a thread's refresh write to.
  alignas(64) std::atomic<std::uint64_t> generation_;
  alignas(64) mutable std::mutex mu_;  // guards value_ (the pointer only)
  std::shared_ptr<const T> value_;
};

template <class T>
thread_local typename Published<T>::Cache Published<T>::cache_;

}  // namespace bw
