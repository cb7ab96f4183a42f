#pragma once
// The \uXXXX escapes of a JSON string, for the scans that read JSON without a DOM parse
// (chunk_scan.cc, request_scan.cc). Each scan does its own accounting of what an escape stands
// for; the reading of the escape itself, and what it refuses, is the same for both.
#include <cstdint>

namespace bw::providers::json_escape {

inline int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The four hex digits at p as a code unit; false when one is not a hex digit.
inline bool hex4(const char* p, std::uint32_t& out) {
  out = 0;
  for (int i = 0; i < 4; ++i) {
    const int h = hex_digit(p[i]);
    if (h < 0) return false;
    out = (out << 4) | static_cast<std::uint32_t>(h);
  }
  return true;
}

// A \u escape at p (p[0] == '\\', p[1] == 'u', before end): the code point it stands for and
// its length, 6 bytes, or 12 for a well-formed surrogate pair (whose `cp` is then the high
// half). Length 0: short, not hex, or a lone surrogate, which the scans leave to the parser.
struct UEscape {
  std::uint32_t cp = 0;
  int bytes = 0;
};

inline UEscape read_u(const char* p, const char* end) {
  UEscape u;
  if (end - p < 6 || !hex4(p + 2, u.cp)) return {};
  if (u.cp >= 0xDC00 && u.cp <= 0xDFFF) return {};
  if (u.cp >= 0xD800 && u.cp <= 0xDBFF) {
    std::uint32_t low = 0;
    if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, low) || low < 0xDC00 ||
        low > 0xDFFF) {
      return {};
    }
    u.bytes = 12;
    return u;
  }
  u.bytes = 6;
  return u;
}

}  // namespace bw::providers::json_escape
