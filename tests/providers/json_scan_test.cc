#include "providers/json_scan.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace bw::providers::json_scan {
namespace {

// The byte-by-byte answer: the first quote, backslash or control character, else end.
const char* reference(const char* p, const char* end) {
  for (; p < end; ++p) {
    const auto c = static_cast<unsigned char>(*p);
    if (c == '"' || c == '\\' || c < 0x20) return p;
  }
  return end;
}

bool any_high(const char* p, const char* end) {
  for (; p < end; ++p) {
    if (static_cast<unsigned char>(*p) >= 0x80) return true;
  }
  return false;
}

using Finder = const char* (*)(const char*, const char*, std::uint64_t&);

// Every variant of the search: the short one, the long one's SSE2 form and the long one as
// callers get it (its AVX2 steps on a CPU that has AVX2).
std::vector<std::pair<std::string, Finder>> finders() {
  std::vector<std::pair<std::string, Finder>> out = {
      {"short", &find_special},
      {"long", &find_special_long},
  };
#if defined(__SSE2__)
  out.emplace_back("long sse2", &find_special_long_sse2);
#endif
  return out;
}

// Texts of every length up to 300 bytes from every start offset within a 16-byte line, with a
// special byte (each of them) at every position or none; non-ASCII bytes before, at or after
// the stop. The stop is the byte-by-byte one; a non-ASCII byte before it is always noted, and
// none is noted in a text of ASCII bytes alone (the bytes read past the stop are in the text).
TEST(FindSpecial, EverySpecialByteAtEveryPositionOfEveryLength) {
  std::string specials = "\"\\";
  for (int c = 0; c < 0x20; ++c) specials.push_back(static_cast<char>(c));
  std::string buf(320 + 16, 'a');
  // Every byte that is not special, ASCII, around the stop (the neighbours of the quote and the
  // backslash, space and DEL too).
  std::string plain;
  for (int c = 0x20; c < 0x80; ++c) {
    if (c != '"' && c != '\\') plain.push_back(static_cast<char>(c));
  }
  int checked = 0;
  for (std::size_t len = 0; len <= 300; ++len) {
    for (std::size_t offset : {0u, 1u, 7u, 15u}) {
      // None, then each position with a rotating special byte.
      for (std::size_t at = 0; at <= len; at += (len > 100 && at > 20 && at + 20 < len) ? 7 : 1) {
        for (int high_at : {-1, 0, 1}) {  // none, before the stop, after it
          for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = plain[(i + len) % plain.size()];
          char* const p = buf.data() + offset;
          char* const end = p + len;
          if (at < len) p[at] = specials[(len + at) % specials.size()];
          if (high_at == 0 && at > 0) p[(at * 5) % at] = static_cast<char>(0xc3);
          if (high_at == 1 && at + 1 < len)
            p[at + 1 + (len - at - 1) / 2] = static_cast<char>(0xe9);
          const char* want = reference(p, end);
          for (const auto& [name, find] : finders()) {
            std::uint64_t high = 0;
            const char* got = find(p, end, high);
            ASSERT_EQ(got, want) << "len " << len << " offset " << offset << " at " << at << " ("
                                 << name << ")";
            if (any_high(p, want)) {
              ASSERT_NE(high, 0u) << "len " << len << " at " << at << " (" << name << ")";
            }
            if (!any_high(p, end)) {
              ASSERT_EQ(high, 0u) << "len " << len << " at " << at << " (" << name << ")";
            }
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 100000);
}

}  // namespace
}  // namespace bw::providers::json_scan
