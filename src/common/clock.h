#pragma once
// Clock: the one place time is read. Pure algorithms (limits/, admission/, routing/, cost/) never
// call it; they take `now` (monotonic nanoseconds) as an argument so tests are exact and instant.
// Thread safety: SteadyClock keeps its turn readings per thread; FakeClock is safe to read and
// advance from any thread.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace bw {

// Monotonic time in nanoseconds since an arbitrary epoch.
using Nanos = std::int64_t;

constexpr Nanos kNanosPerMicro = 1'000;
constexpr Nanos kNanosPerMilli = 1'000'000;
constexpr Nanos kNanosPerSecond = 1'000'000'000;

constexpr Nanos seconds(double s) {
  return static_cast<Nanos>(s * 1e9);
}
constexpr Nanos millis(std::int64_t ms) {
  return ms * kNanosPerMilli;
}
constexpr double to_seconds(Nanos n) {
  return static_cast<double>(n) / 1e9;
}

// "2026-12-01T00:00:00Z" (or "...00.123Z" with milliseconds) for a Unix time in milliseconds.
std::string utc_iso8601(std::int64_t unix_ms, bool with_millis = false);

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic now.
  virtual Nanos now() const = 0;
  // Wall clock, milliseconds since the Unix epoch (for ledgers, logs and daily resets).
  virtual std::int64_t unix_millis() const = 0;
  // The same clocks read once per turn of the thread's event loop (common/loop_turn.h): the
  // first use in a turn reads, the later ones in that turn get that reading, or a later one
  // that now() or unix_millis() took meanwhile on this thread (so readings never go back within
  // a turn). A turn's reading is no earlier than the reactor's return that began the turn, and
  // at most the turn's length (a few milliseconds under load) older than a fresh one. For the
  // time at which a handler decides (limits, admission, routing) and for the start of a
  // duration; the end of a duration that the user or a policy sees, or a reading after an
  // await that may not have left the turn, takes now(). Outside a loop's turn (other threads,
  // tests) these read anew, and a FakeClock's are its now() and unix_millis().
  virtual Nanos turn_now() const { return now(); }
  virtual std::int64_t turn_unix_millis() const { return unix_millis(); }
};

class SteadyClock final : public Clock {
 public:
  Nanos now() const override;
  std::int64_t unix_millis() const override;
  Nanos turn_now() const override;
  std::int64_t turn_unix_millis() const override;
  static const SteadyClock& instance();
  // The two clocks read directly: nothing is kept for the turn.
  static Nanos read_monotonic();
  static std::int64_t read_unix_millis();
};

// A clock for tests: starts at a fixed point and only moves when told.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(Nanos start = seconds(1000), std::int64_t unix_ms = 1'767'225'600'000)
      : now_(start), unix_offset_ms_(unix_ms - start / kNanosPerMilli) {}
  Nanos now() const override { return now_.load(std::memory_order_acquire); }
  std::int64_t unix_millis() const override { return now() / kNanosPerMilli + unix_offset_ms_; }
  void advance(Nanos d) { now_.fetch_add(d, std::memory_order_acq_rel); }
  void set(Nanos t) { now_.store(t, std::memory_order_release); }

 private:
  std::atomic<Nanos> now_;
  std::int64_t unix_offset_ms_;
};

}  // namespace bw
