#pragma once
// LightMutex: a mutex for short critical sections on the request path (a few loads and stores,
// no I/O, no allocation that may block long). Uncontended, lock() is one compare-and-swap and
// unlock() one exchange, inline: no call into libpthread, whose lock and unlock cost ~30
// instructions each besides their atomic operation. Contended, a waiter spins briefly, then
// sleeps on a futex, so that a holder preempted on a busy core is not spun against.
// The classic three-state futex mutex (0 free, 1 held, 2 held and maybe waited for): unlock()
// makes a system call only when someone may be waiting.
// Not recursive, not fair; use with std::lock_guard / std::unique_lock (not with
// std::condition_variable).
// Thread safety: lock(), try_lock() and unlock() from any thread, as for std::mutex.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace bw {

class LightMutex {
 public:
  LightMutex() = default;
  LightMutex(const LightMutex&) = delete;
  LightMutex& operator=(const LightMutex&) = delete;

  void lock() {
    std::uint32_t free = 0;
    if (state_.compare_exchange_strong(free, 1, std::memory_order_acquire,
                                       std::memory_order_relaxed)) [[likely]] {
      return;
    }
    lock_contended();
  }

  bool try_lock() {
    std::uint32_t free = 0;
    return state_.compare_exchange_strong(free, 1, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }

  void unlock() {
    if (state_.exchange(0, std::memory_order_release) == 2) [[unlikely]]
      wake_one();
  }

 private:
  // A critical section guarded by this mutex lasts well under a microsecond: a short spin
  // usually finds it free, without a sleep and a wake-up (two system calls).
  static constexpr int kSpins = 64;

  [[gnu::noinline]] void lock_contended() {
    for (int i = 0; i < kSpins; ++i) {
      relax();
      std::uint32_t free = 0;
      if (state_.load(std::memory_order_relaxed) == 0 &&
          state_.compare_exchange_strong(free, 1, std::memory_order_acquire,
                                         std::memory_order_relaxed)) {
        return;
      }
    }
    // Marked as waited for (2) while it is held: its unlock() then wakes a sleeper. Taken with
    // 2 too, since other sleepers may remain.
    while (state_.exchange(2, std::memory_order_acquire) != 0) {
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAIT_PRIVATE, 2, nullptr,
              nullptr, 0);
    }
  }

  static void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  [[gnu::noinline]] void wake_one() {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAKE_PRIVATE, 1, nullptr,
            nullptr, 0);
  }

  std::atomic<std::uint32_t> state_{0};
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
};

}  // namespace bw
