#pragma once
// same_text(a, b): a == b for the short strings compared on every request (JSON keys, paths,
// methods, model and deployment names), inline. libstdc++'s operator== goes through
// string_view::compare, which GCC leaves out of line at -O2: a call and a three-way result for
// each key compared. Texts of 4 to 16 characters (most names) are compared as two words that may
// overlap, without a call to memcmp; a literal's size folds the branches away.
// Thread safety: a pure function.
#include <cstdint>
#include <cstring>
#include <string_view>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bw {

namespace detail {
// The first and the last sizeof(Word) bytes of two texts of n bytes (sizeof(Word) <= n <=
// 2 * sizeof(Word)): all of them, as two words each that may overlap.
template <class Word>
bool same_ends(const char* x, const char* y, std::size_t n) {
  Word head[2], tail[2];
  std::memcpy(&head[0], x, sizeof(Word));
  std::memcpy(&head[1], y, sizeof(Word));
  std::memcpy(&tail[0], x + n - sizeof(Word), sizeof(Word));
  std::memcpy(&tail[1], y + n - sizeof(Word), sizeof(Word));
  return ((head[0] ^ head[1]) | (tail[0] ^ tail[1])) == 0;
}
}  // namespace detail

inline bool same_text(std::string_view a, std::string_view b) {
  const std::size_t n = a.size();
  if (n != b.size()) return false;
  if (n >= 8 && n <= 16) return detail::same_ends<std::uint64_t>(a.data(), b.data(), n);
  if (n >= 4 && n < 8) return detail::same_ends<std::uint32_t>(a.data(), b.data(), n);
  return n == 0 || std::memcmp(a.data(), b.data(), n) == 0;
}

// The n bytes at x and at y are the same: same_text for stretches of a few dozen bytes too (the
// fixed bytes between a JSON text's values), 16 bytes a step without a call to memcmp up to 64
// bytes, the last step overlapping the one before.
inline bool same_bytes(const char* x, const char* y, std::size_t n) {
#if defined(__SSE2__)
  if (n > 16 && n <= 64) {
    const auto differ = [&](std::size_t at) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + at));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(y + at));
      return _mm_movemask_epi8(_mm_cmpeq_epi8(a, b)) != 0xFFFF;
    };
    for (std::size_t at = 0; at + 16 < n; at += 16) {
      if (differ(at)) return false;
    }
    return !differ(n - 16);
  }
#endif
  return same_text(std::string_view(x, n), std::string_view(y, n));
}

}  // namespace bw
