#pragma once
// Bytes as printable text for a test's failure message: other bytes as \xNN, cut after `most`.
#include <cstddef>
#include <string>
#include <string_view>

namespace bw::test {

inline std::string show_bytes(std::string_view s, std::size_t most = 400) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out.size() > most ? out.substr(0, most) + "..." : out;
}

}  // namespace bw::test
