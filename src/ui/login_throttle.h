#pragma once
// Failed console logins are throttled per client IP, so the admin key cannot be guessed at the
// data plane's speed: after `max_failures` wrong keys within `window`, that IP's logins are
// refused (429 with Retry-After) until the window that began with its first failure ends. A
// right key clears the IP's record. The table is bounded: when full, the entry whose window
// ends first makes room (an attacker who cycles through addresses still costs one entry each).
// Thread safety: every method may be called from any thread (one internal mutex).
#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/clock.h"

namespace bw::ui {

struct LoginThrottleOptions {
  int max_failures = 5;
  Nanos window = seconds(60);
  std::size_t max_entries = 4096;
};

class LoginThrottle {
 public:
  explicit LoginThrottle(LoginThrottleOptions o = {}) : opt_(o) {}
  // 0 when `ip` may try a key now; otherwise how long until it may.
  Nanos blocked_for(std::string_view ip, Nanos now) const;
  void failed(std::string_view ip, Nanos now);
  void succeeded(std::string_view ip);
  std::size_t size() const;

 private:
  struct Entry {
    Nanos window_start = 0;
    int failures = 0;
  };
  void make_room(Nanos now);
  LoginThrottleOptions opt_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace bw::ui
