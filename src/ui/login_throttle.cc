#include "ui/login_throttle.h"

#include <algorithm>

namespace bw::ui {

Nanos LoginThrottle::blocked_for(std::string_view ip, Nanos now) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(std::string(ip));
  if (it == entries_.end() || it->second.failures < opt_.max_failures) return 0;
  const Nanos ends = it->second.window_start + opt_.window;
  return ends > now ? ends - now : 0;
}

void LoginThrottle::failed(std::string_view ip, Nanos now) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(std::string(ip));
  if (it == entries_.end()) {
    if (entries_.size() >= opt_.max_entries) make_room(now);
    it = entries_.emplace(std::string(ip), Entry{now, 0}).first;
  }
  Entry& e = it->second;
  if (now - e.window_start >= opt_.window) e = Entry{now, 0};  // a new window
  ++e.failures;
}

void LoginThrottle::succeeded(std::string_view ip) {
  std::lock_guard lock(mu_);
  entries_.erase(std::string(ip));
}

std::size_t LoginThrottle::size() const {
  std::lock_guard lock(mu_);
  return entries_.size();
}

void LoginThrottle::make_room(Nanos now) {
  // Expired windows first; if none, the entry whose window ends soonest.
  std::erase_if(entries_,
                [&](const auto& kv) { return now - kv.second.window_start >= opt_.window; });
  if (entries_.size() < opt_.max_entries) return;
  auto oldest = std::min_element(
      entries_.begin(), entries_.end(),
      [](const auto& a, const auto& b) { return a.second.window_start < b.second.window_start; });
  entries_.erase(oldest);
}

}  // namespace bw::ui
