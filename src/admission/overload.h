#pragma once
// OverloadPolicy: process-wide load shedding by priority. `load` is everything the process holds
// (requests in flight + waiting for a slot + waiting for a rate limit). Batch work goes first,
// urgent work last:
//   load >= shed_p2_at  -> new P2 refused
//   load >= shed_p1_at  -> new P1 refused
//   load >= hard_limit  -> everything refused
// Pure, thread safe (const).
#include <cstddef>

namespace bw::admission {

struct OverloadConfig {
  std::size_t shed_p2_at = 2'000;
  std::size_t shed_p1_at = 5'000;
  std::size_t hard_limit = 10'000;
};

inline bool overload_admits(const OverloadConfig& c, int priority, std::size_t load) {
  if (load >= c.hard_limit) return false;
  if (priority >= 2) return load < c.shed_p2_at;
  if (priority == 1) return load < c.shed_p1_at;
  return true;
}

}  // namespace bw::admission
