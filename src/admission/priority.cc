#include "admission/priority.h"

#include <cctype>

namespace bw::admission {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != b[i]) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Returns -1 when the text names no priority.
int parse(std::string_view v) {
  static constexpr std::array<std::string_view, kNumPriorities> kDigits{"0", "1", "2"};
  static constexpr std::array<std::string_view, kNumPriorities> kNames{"urgent", "standard",
                                                                       "batch"};
  for (int p = 0; p < kNumPriorities; ++p) {
    if (v == kDigits[p] || iequals(v, kNames[p])) return p;
  }
  return -1;
}

}  // namespace

std::string_view priority_name(int priority) {
  switch (priority) {
    case kPriorityUrgent:
      return "urgent";
    case kPriorityStandard:
      return "standard";
    case kPriorityBatch:
      return "batch";
    default:
      return "unknown";
  }
}

PriorityDecision resolve_priority(std::string_view header, int key_default, int key_highest) {
  PriorityDecision d;
  const int highest = clamp_priority(key_highest);
  header = trim(header);
  int p = -1;
  if (!header.empty()) {
    p = parse(header);
    d.unrecognized = p < 0;
  }
  if (p < 0) p = clamp_priority(key_default);
  if (p < highest) {
    p = highest;
    d.lowered = true;
  }
  d.priority = p;
  return d;
}

}  // namespace bw::admission
