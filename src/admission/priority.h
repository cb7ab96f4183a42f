#pragma once
// Request priorities and the helper that turns an `X-Priority` style header into one.
// Pure functions, thread safe.
#include <array>
#include <cstddef>
#include <string_view>

namespace bw::admission {

// Lower number = more important. P0 urgent, P1 standard, P2 batch.
inline constexpr int kPriorityUrgent = 0;
inline constexpr int kPriorityStandard = 1;
inline constexpr int kPriorityBatch = 2;
inline constexpr int kNumPriorities = 3;
// How a priority is spelled: in /v1/metrics/queue, the metric labels and the docs ("p0"), and in
// the X-Priority and x-bellwether-priority headers ("0").
inline constexpr std::array<std::string_view, kNumPriorities> kPriorityLabels{"p0", "p1", "p2"};
inline constexpr std::array<std::string_view, kNumPriorities> kPriorityDigits{"0", "1", "2"};

template <class T>
using PerPriority = std::array<T, kNumPriorities>;

constexpr bool valid_priority(int p) {
  return p >= 0 && p < kNumPriorities;
}
constexpr int clamp_priority(int p) {
  return p < 0 ? 0 : (p >= kNumPriorities ? kNumPriorities - 1 : p);
}

std::string_view priority_name(int priority);  // "urgent", "standard", "batch"

struct PriorityDecision {
  int priority = kPriorityStandard;
  // The request asked for (or defaulted to) a higher priority than its key allows and was moved
  // down to the key's highest allowed priority; the gateway may say so in a response header.
  bool lowered = false;
  // The header was present but not understood; the key's default was used instead.
  bool unrecognized = false;
};

// header: the raw header value ("" when absent). Accepts "0"/"1"/"2" and
// "urgent"/"standard"/"batch" (case-insensitive, surrounding blanks ignored).
// key_default: the API key's default priority. key_highest: the most important priority the key
// may use (0 allows everything, 2 allows only batch). Out-of-range inputs are clamped to [0, 2].
PriorityDecision resolve_priority(std::string_view header, int key_default, int key_highest);

}  // namespace bw::admission
