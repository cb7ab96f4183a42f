#include "common/clock.h"

#include <cstdio>
#include <ctime>

#include "common/loop_turn.h"

namespace bw {

namespace {

thread_local loop::TurnReading turn_steady;
thread_local loop::TurnReading turn_wall;

}  // namespace

// CLOCK_MONOTONIC and CLOCK_REALTIME are std::chrono::steady_clock's and system_clock's clocks,
// read here without their calls in between.
Nanos SteadyClock::read_monotonic() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<Nanos>(ts.tv_sec) * kNanosPerSecond + ts.tv_nsec;
}

std::int64_t SteadyClock::read_unix_millis() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / kNanosPerMilli;
}

Nanos SteadyClock::now() const {
  return turn_steady.keep(read_monotonic());
}

std::int64_t SteadyClock::unix_millis() const {
  return turn_wall.keep(read_unix_millis());
}

Nanos SteadyClock::turn_now() const {
  return turn_steady.get(read_monotonic);
}

std::int64_t SteadyClock::turn_unix_millis() const {
  return turn_wall.get(read_unix_millis);
}

std::string utc_iso8601(std::int64_t unix_ms, bool with_millis) {
  const auto t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  if (with_millis) {
    n += static_cast<std::size_t>(
        std::snprintf(buf + n, sizeof buf - n, ".%03d", static_cast<int>(unix_ms % 1000)));
  }
  buf[n++] = 'Z';
  return std::string(buf, n);
}

const SteadyClock& SteadyClock::instance() {
  static const SteadyClock clock;
  return clock;
}

}  // namespace bw
