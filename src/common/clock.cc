#include "common/clock.h"

#include <cstdio>
#include <ctime>

namespace bw {

Nanos SteadyClock::now() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::int64_t SteadyClock::unix_millis() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
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
