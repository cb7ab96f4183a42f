#include "common/json_util.h"

#include <algorithm>
#include <bit>
#include <charconv>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace bw {

namespace {

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlong forms, no surrogates,
// nothing above U+10FFFF), or 0 if the bytes there are not one.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const auto cont = [&](std::size_t k) { return i + k < s.size() && (b(k) & 0xC0) == 0x80; };
  const unsigned char c = b(0);
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;  // overlong
    if (c == 0xED && b(1) > 0x9F) return 0;  // UTF-16 surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;  // overlong
    if (c == 0xF4 && b(1) > 0x8F) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

// Whether any of the 8 bytes of `x` needs a closer look: a control byte (< 0x20), '"', '\\' or a
// byte >= 0x80 (UTF-8 to validate). Exact as a yes/no (the classic has-zero-byte tests), so
// the plain ASCII of a typical value is copied 8 bytes per step.
inline bool needs_look8(std::uint64_t x) {
  constexpr std::uint64_t k01 = 0x0101010101010101ULL;
  constexpr std::uint64_t k80 = 0x8080808080808080ULL;
  const std::uint64_t control = (x - k01 * 0x20) & ~x & k80;
  const std::uint64_t q = x ^ (k01 * '"');
  const std::uint64_t quote = (q - k01) & ~q & k80;
  const std::uint64_t b = x ^ (k01 * '\\');
  const std::uint64_t backslash = (b - k01) & ~b & k80;
  return ((x & k80) | control | quote | backslash) != 0;
}

// Appends to a std::string.
struct StringSink {
  std::string& out;
  void append(const char* p, std::size_t n) { out.append(p, n); }
  void push_back(char c) { out.push_back(c); }
};

// Writes at a pointer into room the caller has made (json_string_max_size).
struct PointerSink {
  char* p;
  void append(const char* s, std::size_t n) {
    if (n != 0) std::memcpy(p, s, n);  // s may be null for an empty view
    p += n;
  }
  void push_back(char c) { *p++ = c; }
};

// Bytes that are not well-formed UTF-8 (a raw path, a header value) become U+FFFD, so that the
// output is always valid UTF-8 JSON whatever a client sent.
template <class Sink>
void escape_json_string(Sink& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of a run of bytes that need no escaping
  for (std::size_t i = 0; i < s.size(); ++i) {
    for (std::uint64_t x; i + 8 <= s.size(); i += 8) {
      std::memcpy(&x, s.data() + i, 8);
      if (needs_look8(x)) break;
    }
    if (i >= s.size()) break;
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const std::size_t len = utf8_sequence(s, i);
      if (len > 0) {
        i += len - 1;
        continue;
      }
      out.append(s.data() + run, i - run);
      run = i + 1;
      out.append("\xEF\xBF\xBD", 3);  // U+FFFD REPLACEMENT CHARACTER
      continue;
    }
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out.append("\\\"", 2);
        break;
      case '\\':
        out.append("\\\\", 2);
        break;
      case '\n':
        out.append("\\n", 2);
        break;
      case '\r':
        out.append("\\r", 2);
        break;
      case '\t':
        out.append("\\t", 2);
        break;
      case '\b':
        out.append("\\b", 2);
        break;
      case '\f':
        out.append("\\f", 2);
        break;
      default: {
        const char u[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
        out.append(u, 6);
      }
    }
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  StringSink sink{out};
  escape_json_string(sink, s);
}

namespace {

// Copies `s` to `out` with a few fixed-size moves if no byte of it needs escaping; false (and
// `out` holds nothing useful) if some byte needs a look.
bool copy_plain(char* out, std::string_view s) {
  const char* in = s.data();
  const std::size_t n = s.size();
#if defined(__SSE2__)
  if (n >= 16) {
    // 16 bytes a step: a signed compare below 0x20 finds the control bytes and those >= 0x80
    // at once; the last step the string's last 16 bytes, overlapping what was copied.
    const __m128i space = _mm_set1_epi8(0x20);
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const auto plain16 = [&](const char* from, char* to) {
      const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from));
      const __m128i look =
          _mm_or_si128(_mm_cmplt_epi8(x, space),
                       _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)));
      if (_mm_movemask_epi8(look) != 0) return false;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(to), x);
      return true;
    };
    for (std::size_t i = 0; i + 16 < n; i += 16) {
      if (!plain16(in + i, out + i)) return false;
    }
    return plain16(in + n - 16, out + n - 16);
  }
#endif
  std::uint64_t x;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::memcpy(&x, in + i, 8);
    if (needs_look8(x)) return false;
    std::memcpy(out + i, &x, 8);
  }
  if (i == n) return true;
  if (n >= 8) {  // the last 1-7 bytes: the string's last 8, overlapping what was copied
    std::memcpy(&x, in + n - 8, 8);
    if (needs_look8(x)) return false;
    std::memcpy(out + n - 8, &x, 8);
    return true;
  }
  if (n >= 4) {  // two overlapping 4-byte halves
    std::uint32_t lo, hi;
    std::memcpy(&lo, in, 4);
    std::memcpy(&hi, in + n - 4, 4);
    if (needs_look8(lo | static_cast<std::uint64_t>(hi) << 32)) return false;
    std::memcpy(out, &lo, 4);
    std::memcpy(out + n - 4, &hi, 4);
    return true;
  }
  // 1-3 bytes: the first, middle and last (the rest of the word is spaces, which pass).
  const auto a = static_cast<unsigned char>(in[0]);
  const auto b = static_cast<unsigned char>(in[n / 2]);
  const auto c = static_cast<unsigned char>(in[n - 1]);
  x = a | static_cast<std::uint64_t>(b) << 8 | static_cast<std::uint64_t>(c) << 16 |
      0x2020202020ull << 24;
  if (needs_look8(x)) return false;
  out[0] = in[0];
  out[n / 2] = in[n / 2];
  out[n - 1] = in[n - 1];
  return true;
}

}  // namespace

char* write_json_string(char* p, std::string_view s) {
  // Most strings (ids, names, paths) need no escaping: copied without the byte-by-byte scan.
  if (copy_plain(p + 1, s)) {
    *p = '"';
    p[s.size() + 1] = '"';
    return p + s.size() + 2;
  }
  PointerSink sink{p};
  escape_json_string(sink, s);
  return sink.p;
}

namespace {

constexpr std::uint64_t kPow10[] = {1ull,
                                    10ull,
                                    100ull,
                                    1'000ull,
                                    10'000ull,
                                    100'000ull,
                                    1'000'000ull,
                                    10'000'000ull,
                                    100'000'000ull,
                                    1'000'000'000ull,
                                    10'000'000'000ull,
                                    100'000'000'000ull,
                                    1'000'000'000'000ull,
                                    10'000'000'000'000ull,
                                    100'000'000'000'000ull,
                                    1'000'000'000'000'000ull,
                                    10'000'000'000'000'000ull,
                                    100'000'000'000'000'000ull,
                                    1'000'000'000'000'000'000ull,
                                    10'000'000'000'000'000'000ull};

// Digits of v > 0: floor(log10(v)) + 1 from floor(log2(v)) + 1, corrected by one comparison.
int decimal_digits(std::uint64_t v) {
  const auto t = static_cast<int>((std::bit_width(v) * 1233) >> 12);
  return t + (v >= kPow10[t] ? 1 : 0);
}

}  // namespace

constexpr char kDigitPairs[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

char* write_uint(char* p, std::uint64_t v) {
  // Up to four digits (the counts and sizes of a request: tokens, bytes, a status) by their
  // width, in 32 bits, without the length from the bit width or the loop.
  if (v < 100) {
    if (v < 10) {
      *p = static_cast<char>('0' + v);
      return p + 1;
    }
    std::memcpy(p, kDigitPairs + v * 2, 2);
    return p + 2;
  }
  if (v < 10'000) {
    const auto u = static_cast<std::uint32_t>(v);
    const std::uint32_t hi = u / 100;  // 1..99
    const std::uint32_t lo = u - hi * 100;
    if (hi < 10) {
      *p = static_cast<char>('0' + hi);
      std::memcpy(p + 1, kDigitPairs + lo * 2, 2);
      return p + 3;
    }
    std::memcpy(p, kDigitPairs + hi * 2, 2);
    std::memcpy(p + 2, kDigitPairs + lo * 2, 2);
    return p + 4;
  }
  char* const end = p + decimal_digits(v);
  char* q = end;
  while (v >= 100) {
    q -= 2;
    std::memcpy(q, kDigitPairs + (v % 100) * 2, 2);
    v /= 100;
  }
  if (v >= 10) {
    std::memcpy(q - 2, kDigitPairs + v * 2, 2);
  } else {
    q[-1] = static_cast<char>('0' + v);
  }
  return end;
}

char* write_int(char* p, std::int64_t v) {
  if (v >= 0) return write_uint(p, static_cast<std::uint64_t>(v));
  *p = '-';
  return write_uint(p + 1, 0 - static_cast<std::uint64_t>(v));
}

char* write_decimal(char* p, std::int64_t units, int scale, int significant) {
  scale = std::clamp(scale, 0, 18);
  // The magnitude in unsigned arithmetic: -INT64_MIN and a rounding carry both fit.
  std::uint64_t u =
      units < 0 ? 0 - static_cast<std::uint64_t>(units) : static_cast<std::uint64_t>(units);
  if (significant > 0 && significant < 19 && u >= kPow10[significant]) {
    const int drop = decimal_digits(u) - significant;  // digits below the significant ones
    const std::uint64_t q = kPow10[drop];
    std::uint64_t t = u / q;
    const std::uint64_t r = u % q;
    // Half to even, as printf rounds a value that is exactly halfway.
    if (r > q / 2 || (r == q / 2 && (t & 1) != 0)) ++t;
    if (units < 0) *p++ = '-';
    // The dropped digits are zeros: leave them out of the fraction at once.
    const int cut = std::min(drop, scale);
    u = t * kPow10[drop - cut];
    scale -= cut;
  } else if (units < 0 && u != 0) {
    *p++ = '-';
  }
  if (scale == 0) return write_uint(p, u);
  const std::uint64_t one = kPow10[scale];
  std::uint64_t frac = u % one;
  p = write_uint(p, u / one);
  if (frac == 0) return p;
  // The fraction's `scale` digits with its leading zeros, two a step from the table, from the
  // end; then its trailing zeros dropped (frac != 0: one digit at least is not a zero).
  *p++ = '.';
  char* const all = p + scale;
  char* q = all;
  while (q - p >= 2) {
    q -= 2;
    std::memcpy(q, kDigitPairs + (frac % 100) * 2, 2);
    frac /= 100;
  }
  if (q != p) *p = static_cast<char>('0' + frac);
  char* end = all;
  while (end[-1] == '0') --end;
  return end;
}

char* write_double(char* p, double v) {
  if (!std::isfinite(v)) return write_literal(p, "null");
  // The same text as printf("%.6g") (the standard defines to_chars that way), without the
  // locale machinery.
  return std::to_chars(p, p + kDoubleMaxSize, v, std::chars_format::general, 6).ptr;
}

char* write_double_round_trip(char* p, double v) {
  if (!std::isfinite(v)) return write_literal(p, "null");
  // The shortest digits that read back as `v` (to_chars without a precision), counted; printf's
  // %g at that many digits (or six) rounds the exact value to a decimal at least as close, which
  // reads back as `v` too, and keeps %g's choice between plain and exponent notation.
  char shortest[kDoubleMaxSize];
  const char* end =
      std::to_chars(shortest, shortest + sizeof shortest, v, std::chars_format::scientific).ptr;
  int digits = 0;
  for (const char* q = shortest; q != end && *q != 'e'; ++q) digits += *q >= '0' && *q <= '9';
  return std::to_chars(p, p + kDoubleMaxSize, v, std::chars_format::general, std::max(digits, 6))
      .ptr;
}

std::string json_string(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  append_json_string(out, s);
  return out;
}

std::string openai_error_body(std::string_view message, std::string_view type,
                              std::string_view code, std::string_view param,
                              std::string_view request_id) {
  std::string out;
  out.reserve(96 + message.size());
  out += "{\"error\":{\"message\":";
  append_json_string(out, message);
  out += ",\"type\":";
  append_json_string(out, type);
  out += ",\"param\":";
  if (param.empty()) {
    out += "null";
  } else {
    append_json_string(out, param);
  }
  out += ",\"code\":";
  if (code.empty()) {
    out += "null";
  } else {
    append_json_string(out, code);
  }
  if (!request_id.empty()) {
    out += ",\"request_id\":";
    append_json_string(out, request_id);
  }
  out += "}}";
  return out;
}

void JsonWriter::comma() {
  if (need_comma_) out_.push_back(',');
  need_comma_ = true;
}
JsonWriter& JsonWriter::begin_object() {
  comma();
  out_.push_back('{');
  need_comma_ = false;
  return *this;
}
JsonWriter& JsonWriter::end_object() {
  out_.push_back('}');
  need_comma_ = true;
  return *this;
}
JsonWriter& JsonWriter::begin_array() {
  comma();
  out_.push_back('[');
  need_comma_ = false;
  return *this;
}
JsonWriter& JsonWriter::end_array() {
  out_.push_back(']');
  need_comma_ = true;
  return *this;
}
JsonWriter& JsonWriter::key(std::string_view k) {
  comma();
  append_json_string(out_, k);
  out_.push_back(':');
  need_comma_ = false;
  return *this;
}
JsonWriter& JsonWriter::plain_key(std::string_view k) {
  const std::size_t at = out_.size();
  const std::size_t comma = need_comma_ ? 1 : 0;
  out_.resize(at + comma + k.size() + 3);
  char* p = out_.data() + at;
  if (comma) *p++ = ',';
  *p++ = '"';
  if (!k.empty()) std::memcpy(p, k.data(), k.size());
  p += k.size();
  *p++ = '"';
  *p = ':';
  need_comma_ = false;
  return *this;
}
JsonWriter& JsonWriter::value(std::string_view v) {
  comma();
  append_json_string(out_, v);
  return *this;
}
JsonWriter& JsonWriter::value(std::int64_t v) {
  comma();
  char buf[24];
  out_.append(buf, write_int(buf, v));
  return *this;
}
JsonWriter& JsonWriter::value(std::uint64_t v) {
  comma();
  char buf[24];
  out_.append(buf, write_uint(buf, v));
  return *this;
}
JsonWriter& JsonWriter::value(double v) {
  comma();
  char buf[kDoubleMaxSize];
  out_.append(buf, write_double_round_trip(buf, v));
  return *this;
}
JsonWriter& JsonWriter::value(bool v) {
  comma();
  out_ += v ? "true" : "false";
  return *this;
}
JsonWriter& JsonWriter::null() {
  comma();
  out_ += "null";
  return *this;
}
JsonWriter& JsonWriter::raw(std::string_view json) {
  comma();
  out_ += json;
  return *this;
}

}  // namespace bw
