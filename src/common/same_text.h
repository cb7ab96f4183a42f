#pragma once
// same_text(a, b): a == b for the short strings compared on every request (JSON keys, paths,
// methods), inline. libstdc++'s operator== goes through string_view::compare, which GCC leaves
// out of line at -O2: a call and a three-way result for each key compared.
// Thread safety: a pure function.
#include <cstring>
#include <string_view>

namespace bw {

inline bool same_text(std::string_view a, std::string_view b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

}  // namespace bw
