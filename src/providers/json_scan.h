#pragma once
// The strings of JSON, for the scans that read JSON without a DOM parse (chunk_scan.cc,
// request_scan.cc): where a string's plain text ends, and its escapes. Each scan does its
// own accounting of what an escape stands for; the reading itself, and what it refuses, is the
// same for both.
#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <immintrin.h>
#endif

namespace bw::providers::json_scan {

// The first flagged byte is the lowest one: the byte at the lowest address.
static_assert(std::endian::native == std::endian::little);

// The first quote, backslash or control character at or after p (a string's text), before
// end; past end it reads zero bytes, which are control characters, so the result is end for an
// unterminated string. Notes in `high` whether any byte read is non-ASCII (bytes past the
// string may be noted too: that only costs the caller a UTF-8 check).
#if defined(__SSE2__)
// 16 bytes a step, in locals.
// A quote or a control character is a byte that, with bit 1 flipped, is at most 0x20: the
// control characters stay below 0x20, the quote (0x22) becomes 0x20, every other byte (0x20
// itself becomes 0x22) is above it. One test for both.
inline __m128i special_bytes(__m128i x) {
  const __m128i backslash = _mm_set1_epi8('\\');
  const __m128i y = _mm_xor_si128(x, _mm_set1_epi8(0x02));
  return _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(y, _mm_set1_epi8(0x20)), y),
                      _mm_cmpeq_epi8(x, backslash));
}

inline const char* find_special(const char* p, const char* end, std::uint64_t& high_out) {
  __m128i high = _mm_setzero_si128();
  for (;;) {
    __m128i x;
    const auto left = end - p;
    if (left >= 16) {
      x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    } else {
      alignas(16) char tail[16] = {};
      std::memcpy(tail, p, static_cast<std::size_t>(left));
      x = _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
    }
    high = _mm_or_si128(high, x);
    if (const auto mask = static_cast<unsigned>(_mm_movemask_epi8(special_bytes(x)))) {
      high_out |= static_cast<unsigned>(_mm_movemask_epi8(high));
      const auto at = static_cast<std::ptrdiff_t>(__builtin_ctz(mask));
      return at < left ? p + at : end;
    }
    p += 16;
  }
}

// The 64-byte steps of find_special_long from p, after a first 16-byte step that found nothing
// (`high` holds what it read), with one test for the four blocks.
inline const char* find_special_steps_sse2(const char* p, const char* end, __m128i high,
                                           std::uint64_t& high_out) {
  while (end - p >= 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 48));
    high = _mm_or_si128(high, _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d)));
    const __m128i sa = special_bytes(a), sb = special_bytes(b);
    const __m128i sc = special_bytes(c), sd = special_bytes(d);
    if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(sa, sb), _mm_or_si128(sc, sd))) != 0) {
      const std::uint64_t mask =
          static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(sa))) |
          static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(sb))) << 16 |
          static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(sc))) << 32 |
          static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(sd))) << 48;
      high_out |= static_cast<unsigned>(_mm_movemask_epi8(high));
      return p + __builtin_ctzll(mask);
    }
    p += 64;
  }
  high_out |= static_cast<unsigned>(_mm_movemask_epi8(high));
  return find_special(p, end, high_out);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__AVX2__)
#define BW_JSON_SCAN_AVX2 1
[[gnu::target("avx2")]] inline __m256i special_bytes32(__m256i x) {
  const __m256i backslash = _mm256_set1_epi8('\\');
  const __m256i y = _mm256_xor_si256(x, _mm256_set1_epi8(0x02));  // as special_bytes
  return _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_min_epu8(y, _mm256_set1_epi8(0x20)), y),
                         _mm256_cmpeq_epi8(x, backslash));
}

// The 64-byte steps of find_special_long with 32-byte vectors, from p (after a first 16-byte
// step that found nothing; `high` holds what it read): a third of the SSE2 steps' instructions
// per byte (VEX forms need no register copies). Only where the CPU has AVX2 (has_avx2).
[[gnu::target("avx2")]] inline const char* find_special_steps_avx2(const char* p, const char* end,
                                                                   __m128i first_high,
                                                                   std::uint64_t& high_out) {
  __m256i high = _mm256_castsi128_si256(first_high);
  while (end - p >= 64) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    high = _mm256_or_si256(high, _mm256_or_si256(a, b));
    const __m256i sa = special_bytes32(a), sb = special_bytes32(b);
    const __m256i any = _mm256_or_si256(sa, sb);
    if (!_mm256_testz_si256(any, any)) {
      const std::uint64_t mask =
          static_cast<std::uint64_t>(static_cast<unsigned>(_mm256_movemask_epi8(sa))) |
          static_cast<std::uint64_t>(static_cast<unsigned>(_mm256_movemask_epi8(sb))) << 32;
      high_out |= static_cast<unsigned>(_mm256_movemask_epi8(high));
      return p + __builtin_ctzll(mask);
    }
    p += 64;
  }
  high_out |= static_cast<unsigned>(_mm256_movemask_epi8(high));
  return find_special(p, end, high_out);
}

// Whether this CPU (and its OS) runs AVX2, asked once.
inline bool has_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return yes;
}
#endif

// find_special for text that may be long (a prompt's): the first 16 bytes here (a key or a
// short value ends in them), the rest in 64-byte steps, by AVX2 where the CPU has it unless
// kSse2Only. For short strings alone (an answer's, an event's) find_special is as fast and
// smaller.
template <bool kSse2Only = false>
inline const char* find_special_long(const char* p, const char* end, std::uint64_t& high_out) {
  if (end - p < 16 + 64) return find_special(p, end, high_out);
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (const auto mask = static_cast<unsigned>(_mm_movemask_epi8(special_bytes(x)))) {
    high_out |= static_cast<unsigned>(_mm_movemask_epi8(x));
    return p + __builtin_ctz(mask);
  }
#if defined(BW_JSON_SCAN_AVX2)
  if (!kSse2Only && has_avx2()) return find_special_steps_avx2(p + 16, end, x, high_out);
#endif
  return find_special_steps_sse2(p + 16, end, x, high_out);
}

// The SSE2 form, whatever the CPU (for the tests).
inline const char* find_special_long_sse2(const char* p, const char* end, std::uint64_t& high_out) {
  return find_special_long<true>(p, end, high_out);
}

// The closing quote of a string whose text starts at p when it is among the 16 bytes there
// with no backslash or control character before it (a key, a short value); null otherwise
// (then find_special decides), and when fewer than 16 bytes are left before end. Notes non-ASCII
// bytes as find_special does.
inline const char* short_string_end(const char* p, const char* end, std::uint64_t& high_out) {
  if (end - p < 16) return nullptr;
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const auto mask = static_cast<unsigned>(_mm_movemask_epi8(special_bytes(x)));
  if (mask == 0) return nullptr;
  const char* const at = p + __builtin_ctz(mask);
  if (*at != '"') return nullptr;
  high_out |= static_cast<unsigned>(_mm_movemask_epi8(x));
  return at;
}
#else
inline constexpr std::uint64_t kOnes = 0x0101010101010101ULL;
inline constexpr std::uint64_t kHighBits = 0x8080808080808080ULL;

// Exact for "is any byte of v zero" / "is any byte of v below n (n <= 128)", eight bytes at once.
constexpr std::uint64_t any_zero_byte(std::uint64_t v) {
  return (v - kOnes) & ~v & kHighBits;
}
constexpr std::uint64_t any_byte_below(std::uint64_t v, std::uint64_t n) {
  return (v - kOnes * n) & ~v & kHighBits;
}

// Eight bytes at a time: the lowest flagged byte of the masks is the first special one (a flag
// above it may be a borrow, never one below).
inline const char* find_special(const char* p, const char* end, std::uint64_t& high_out) {
  for (;; p += 8) {
    const auto left = end - p;
    std::uint64_t x = 0;  // past the end: zero bytes
    std::memcpy(&x, p, left >= 8 ? 8 : static_cast<std::size_t>(left));
    const std::uint64_t special = any_zero_byte(x ^ (kOnes * '"')) |
                                  any_zero_byte(x ^ (kOnes * '\\')) | any_byte_below(x, 0x20);
    high_out |= x & kHighBits;
    if (special != 0) {
      const auto at = static_cast<std::ptrdiff_t>(__builtin_ctzll(special) / 8);
      return at < left ? p + at : end;
    }
  }
}
inline const char* find_special_long(const char* p, const char* end, std::uint64_t& high_out) {
  return find_special(p, end, high_out);
}
inline const char* short_string_end(const char*, const char*, std::uint64_t&) {
  return nullptr;
}
#endif

// The first byte at or after p that is not JSON whitespace, or end.
inline const char* skip_ws(const char* p, const char* end) {
  while (p != end && static_cast<unsigned char>(*p) <= ' ' &&
         (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) {
    ++p;
  }
  return p;
}

// Whether the byte at p, or past the whitespace there, is c (p then at it). Between the tokens
// of compact JSON there is none: c is tried first.
inline bool at_byte(const char*& p, const char* end, char c) {
  if (p != end && *p == c) return true;
  p = skip_ws(p, end);
  return p != end && *p == c;
}

// p past the whitespace there, and whether a byte is left (where a value must start).
inline bool at_value(const char*& p, const char* end) {
  if (p == end) return false;
  if (static_cast<unsigned char>(*p) > ' ') return true;
  p = skip_ws(p, end);
  return p != end;
}

// After a member's key (p past its closing quote): the value's first byte past the colon and
// the whitespace around it, or null.
inline const char* member_value(const char* p, const char* end) {
  if (!at_byte(p, end, ':')) return nullptr;
  ++p;
  return at_value(p, end) ? p : nullptr;
}

// After a value in an object or an array that closes with `close`: kMore past a comma, kClosed
// past `close`, kBad for anything else.
enum class Next { kMore, kClosed, kBad };
inline Next after_value(const char*& p, const char* end, char close) {
  if (at_byte(p, end, ',')) {
    ++p;
    return Next::kMore;
  }
  if (p == end || *p != close) return Next::kBad;
  ++p;
  return Next::kClosed;
}

// The closing quote of a key whose opening quote is at p, when the key is a string (terminated
// before end, no control character) written without an escape; null otherwise.
[[gnu::noinline]] inline const char* long_key_end(const char* p, const char* end,
                                                  std::uint64_t& high_out) {
  const char* const at = find_special(p + 1, end, high_out);
  return at < end && *at == '"' ? at : nullptr;
}
[[gnu::always_inline]] inline const char* plain_key_end(const char* p, const char* end,
                                                        std::uint64_t& high_out) {
  if (const char* at = short_string_end(p + 1, end, high_out)) return at;
  return long_key_end(p, end, high_out);
}

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

// An escape at p (p[0] == '\\', before end): its length (2, 6, or 12 for a surrogate pair; 0 for
// one the scans leave to the parser: an unknown letter, a short or non-hex \u, a lone
// surrogate), how many bytes of UTF-8 it stands for, and the code point (the high half of a
// pair).
struct Escape {
  int bytes = 0;
  int utf8 = 0;
  std::uint32_t cp = 0;
};

inline Escape read_escape(const char* p, const char* end) {
  if (end - p < 2) return {};
  switch (p[1]) {
    case '"':
      return {2, 1, '"'};
    case '\\':
      return {2, 1, '\\'};
    case '/':
      return {2, 1, '/'};
    case 'b':
      return {2, 1, '\b'};
    case 'f':
      return {2, 1, '\f'};
    case 'n':
      return {2, 1, '\n'};
    case 'r':
      return {2, 1, '\r'};
    case 't':
      return {2, 1, '\t'};
    case 'u':
      break;
    default:
      return {};
  }
  const UEscape u = read_u(p, end);
  if (u.bytes == 0) return {};
  if (u.bytes == 12) return {12, 4, u.cp};
  return {6, u.cp < 0x80 ? 1 : u.cp < 0x800 ? 2 : 3, u.cp};
}

// Past the closing quote of a string whose text starts at p (before end), its escapes checked as
// the scans check them (read_escape), by find_special_long; null when the scans leave it to the
// parser: unterminated, a control character, an escape read_escape does not take. Notes
// non-ASCII bytes as find_special does.
inline const char* string_end_long(const char* p, const char* end, std::uint64_t& high_out) {
  for (;;) {
    const char* at = find_special_long(p, end, high_out);
    if (at >= end) return nullptr;  // unterminated
    if (*at == '"') return at + 1;
    if (*at != '\\') return nullptr;  // a control character
    const Escape e = read_escape(at, end);
    if (e.bytes == 0) return nullptr;
    p = at + e.bytes;
  }
}

}  // namespace bw::providers::json_scan
