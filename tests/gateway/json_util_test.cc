// The JSON text helpers the access log builds its line with (src/common/json_util.h): the
// pointer form of the string escaper against the appending one, and decimal numbers from
// integers.
#include "common/json_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace bw {
namespace {

std::string written(std::string_view s) {
  std::string out(json_string_max_size(s.size()), '\0');
  char* end = write_json_string(out.data(), s);
  out.resize(static_cast<std::size_t>(end - out.data()));
  return out;
}

std::string appended(std::string_view s) {
  std::string out;
  append_json_string(out, s);
  return out;
}

TEST(WriteJsonString, SameAsAppendForEveryOneAndTwoByteString) {
  EXPECT_EQ(written({}), "\"\"");
  EXPECT_EQ(written(std::string_view()), appended(std::string_view()));
  for (int a = 0; a < 256; ++a) {
    const char one[1] = {static_cast<char>(a)};
    ASSERT_EQ(written({one, 1}), appended({one, 1})) << a;
    for (int b = 0; b < 256; ++b) {
      const char two[2] = {static_cast<char>(a), static_cast<char>(b)};
      ASSERT_EQ(written({two, 2}), appended({two, 2})) << a << " " << b;
    }
  }
}

TEST(WriteJsonString, SameAsAppendForLongerMixedStrings) {
  // Bytes that take every path: plain ASCII (the 8-byte steps), escapes, control bytes, UTF-8
  // lead and continuation bytes, bytes that are never UTF-8.
  const std::string alphabet = std::string("aZ09 /-_.:\"\\\n\r\t\b\f\x01\x1f\x7f") +
                               "\xC2\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xC0\xED\xA0\xF4\x90\xFF\x80";
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = alphabet[rng() % alphabet.size()];
    ASSERT_EQ(written(s), appended(s)) << i;
  }
  for (std::string_view s :
       {"team \"a\"", "/v1/chat/completions", "caf\xC3\xA9", "\xC3",
        "0af7651916cd43dd8448eb211c80319c", "\x01\x02\x03\x04\x05\x06\x07\x08"}) {
    EXPECT_EQ(written(s), appended(s)) << s;
  }
  // The bound holds for the worst case: every byte a control byte.
  const std::string controls(100, '\x01');
  EXPECT_EQ(written(controls).size(), json_string_max_size(controls.size()));
}

// A plain string is copied in steps of 8 or 16 bytes (the last step overlapping): a byte that
// needs escaping is found at every place of every length, and the bytes that need none at
// the edges (0x1f / 0x20, 0x7f / 0x80) are told apart.
TEST(WriteJsonString, EveryPlaceOfEveryLengthIsLookedAt) {
  for (std::size_t n = 1; n <= 80; ++n) {
    const std::string plain(n, 'a');
    ASSERT_EQ(written(plain), "\"" + plain + "\"") << n;
    for (std::size_t at = 0; at < n; ++at) {
      for (const char c : {'"', '\\', '\n', '\x1f', '\x20', '\x7f', '\x80', '\xff'}) {
        std::string s = plain;
        s[at] = c;
        ASSERT_EQ(written(s), appended(s)) << n << " " << at << " " << int(c);
      }
    }
  }
}

std::string decimal(std::int64_t units, int scale, int significant = 0) {
  char buf[kDecimalMaxSize];
  return std::string(buf, write_decimal(buf, units, scale, significant));
}

// write_decimal as it was written digit by digit, for the test below.
std::string decimal_digit_by_digit(std::int64_t units, int scale, int significant) {
  std::uint64_t pow10[20];
  pow10[0] = 1;
  for (int i = 1; i < 20; ++i) pow10[i] = pow10[i - 1] * 10;
  auto digits_of = [&](std::uint64_t v) {
    int n = 1;
    while (n < 20 && v >= pow10[n]) ++n;
    return n;
  };
  std::string out;
  scale = std::clamp(scale, 0, 18);
  std::uint64_t u =
      units < 0 ? 0 - static_cast<std::uint64_t>(units) : static_cast<std::uint64_t>(units);
  if (significant > 0 && significant < 19 && u >= pow10[significant]) {
    const int drop = digits_of(u) - significant;
    const std::uint64_t q = pow10[drop];
    std::uint64_t t = u / q;
    const std::uint64_t r = u % q;
    if (r > q / 2 || (r == q / 2 && (t & 1) != 0)) ++t;
    if (units < 0) out += '-';
    const int cut = std::min(drop, scale);
    u = t * pow10[drop - cut];
    scale -= cut;
  } else if (units < 0 && u != 0) {
    out += '-';
  }
  if (scale == 0) return out + std::to_string(u);
  const std::uint64_t one = pow10[scale];
  std::uint64_t frac = u % one;
  out += std::to_string(u / one);
  if (frac == 0) return out;
  int digits = scale;
  while (frac % 10 == 0) {
    frac /= 10;
    --digits;
  }
  std::string f(static_cast<std::size_t>(digits), '0');
  for (int i = digits; i-- > 0;) {
    f[static_cast<std::size_t>(i)] = static_cast<char>('0' + frac % 10);
    frac /= 10;
  }
  return out + "." + f;
}

// The fraction written two digits a step gives the text the digit-by-digit loop gave: every
// scale and significant count, values of every length, zeros inside and at both ends.
TEST(WriteDecimal, PairsGiveTheDigitByDigitText) {
  std::mt19937_64 rng(4242);
  int checked = 0;
  for (int n = 0; n < 200'000; ++n) {
    std::uint64_t bits = rng();
    const int len = static_cast<int>(rng() % 20);
    std::int64_t v = static_cast<std::int64_t>(bits >> (rng() % 64));
    if (len < 19) {
      std::int64_t p = 1;
      for (int i = 0; i < len; ++i) p *= 10;
      v = v % p;
      if (rng() % 4 == 0) v = v / 1000 * 1000 + (rng() % 2 ? 500 : 0);  // zeros and halves
    }
    if (rng() % 3 == 0) v = -v;
    if (n % 1000 == 0) v = n % 2000 ? std::numeric_limits<std::int64_t>::min() : 0;
    const int scale = static_cast<int>(rng() % 20) - 1;
    const int significant = rng() % 3 == 0 ? 0 : static_cast<int>(rng() % 20);
    ASSERT_EQ(decimal(v, scale, significant), decimal_digit_by_digit(v, scale, significant))
        << v << " " << scale << " " << significant;
    ++checked;
  }
  EXPECT_EQ(checked, 200'000);
}

TEST(WriteDecimal, ExactFromIntegers) {
  EXPECT_EQ(decimal(0, 6), "0");
  EXPECT_EQ(decimal(0, 0), "0");
  EXPECT_EQ(decimal(1500, 6), "0.0015");
  EXPECT_EQ(decimal(12, 6), "0.000012");
  EXPECT_EQ(decimal(250, 6), "0.00025");
  EXPECT_EQ(decimal(1'000'000, 6), "1");
  EXPECT_EQ(decimal(1'234'567, 6), "1.234567");
  EXPECT_EQ(decimal(100'000'000'000, 6), "100000");
  EXPECT_EQ(decimal(120, 0), "120");  // the whole part keeps its zeros
  EXPECT_EQ(decimal(120, 1), "12");
  EXPECT_EQ(decimal(100, 2), "1");
  EXPECT_EQ(decimal(105, 2), "1.05");
  EXPECT_EQ(decimal(7, 1), "0.7");
  EXPECT_EQ(decimal(1, 18), "0.000000000000000001");
  EXPECT_EQ(decimal(-5, 1), "-0.5");
  EXPECT_EQ(decimal(-1500, 6), "-0.0015");
  EXPECT_EQ(decimal(-2'000'000, 6), "-2");
  constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
  constexpr auto kMin = std::numeric_limits<std::int64_t>::min();
  EXPECT_EQ(decimal(kMax, 0), "9223372036854775807");
  EXPECT_EQ(decimal(kMin, 0), "-9223372036854775808");
  EXPECT_EQ(decimal(kMax, 18), "9.223372036854775807");
  EXPECT_EQ(decimal(kMin, 18), "-9.223372036854775808");
  EXPECT_EQ(decimal(kMin, 6), "-9223372036854.775808");
  EXPECT_EQ(decimal(1, 40), "0.000000000000000001");  // scale clamped to 18
  EXPECT_EQ(decimal(15, -3), "15");                   // and to 0
  EXPECT_LE(decimal(kMin, 18).size(), kDecimalMaxSize);
}

TEST(WriteDecimal, SignificantDigitsRoundHalfToEven) {
  EXPECT_EQ(decimal(12'345'678, 6, 6), "12.3457");
  EXPECT_EQ(decimal(12'345'650, 6, 6), "12.3456");  // half, even stays
  EXPECT_EQ(decimal(12'345'750, 6, 6), "12.3458");  // half, odd goes up
  EXPECT_EQ(decimal(12'345'651, 6, 6), "12.3457");  // above half
  EXPECT_EQ(decimal(12'345'649, 6, 6), "12.3456");  // below half
  EXPECT_EQ(decimal(9'999'995, 0, 6), "10000000");  // the carry adds a digit
  EXPECT_EQ(decimal(9'999'995, 6, 6), "10");
  EXPECT_EQ(decimal(-1'234'567, 3, 6), "-1234.57");
  EXPECT_EQ(decimal(-1'234'565, 3, 6), "-1234.56");
  EXPECT_EQ(decimal(123'456, 6, 6), "0.123456");  // already six digits: unchanged
  EXPECT_EQ(decimal(12, 6, 6), "0.000012");       // fewer: unchanged
  EXPECT_EQ(decimal(0, 6, 6), "0");
  EXPECT_EQ(decimal(1'000'000'000, 9, 6), "1");
  constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
  constexpr auto kMin = std::numeric_limits<std::int64_t>::min();
  EXPECT_EQ(decimal(kMin, 0, 6), "-9223370000000000000");
  // Rounding up past INT64_MAX: the magnitude is unsigned, so the carry does not overflow.
  EXPECT_EQ(decimal(kMax, 0, 18), "9223372036854775810");
  EXPECT_EQ(decimal(kMax, 0, 1), "9000000000000000000");
  EXPECT_EQ(decimal(kMax, 0, 19), "9223372036854775807");
}

// Milliseconds formatted from integer picoseconds at six significant digits have the value that
// printf("%.6g") gives the double (only the notation differs: no exponent). The values are the
// gateway's: whole nanoseconds divided by 1e6.
TEST(WriteDecimal, SixSignificantDigitsMatchPrintf) {
  // Skips the exact ties (the dropped digits are 5000...), where printf rounds the double's
  // binary value, a little above or below the tie, rather than the decimal one.
  auto tie = [](std::int64_t ns) {
    const std::int64_t ps = ns * 1000;
    int digits = 1;
    for (std::int64_t v = ps; v >= 10; v /= 10) ++digits;
    if (digits <= 6) return false;
    std::int64_t q = 1;
    for (int k = 0; k < digits - 6; ++k) q *= 10;
    return ps % q == q / 2;
  };
  int checked = 0;
  auto check = [&](std::int64_t ns) {
    if (tie(ns)) return;
    ++checked;
    const double ms = static_cast<double>(ns) / 1e6;
    char want[64];
    std::snprintf(want, sizeof want, "%.6g", ms);
    const std::string got = decimal(std::llround(ms * 1e9), 9, 6);
    ASSERT_EQ(std::strtod(got.c_str(), nullptr), std::strtod(want, nullptr))
        << ns << ": " << got << " vs " << want;
  };
  // Every value below 2 ms, and a spread of larger ones (up to ~11 days).
  for (std::int64_t ns = 0; ns < 2'000'000; ++ns) check(ns);
  std::mt19937_64 rng(11);
  for (int i = 0; i < 200'000; ++i) {
    check(static_cast<std::int64_t>(rng() % 1'000'000'000'000'000ull));
  }
  EXPECT_GT(checked, 2'000'000);
}

std::string std_chars(std::int64_t v) {
  char buf[24];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}

std::string std_chars(std::uint64_t v) {
  char buf[24];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}

std::string ints(std::int64_t v) {
  char buf[24];
  return std::string(buf, write_int(buf, v));
}

std::string uints(std::uint64_t v) {
  char buf[24];
  return std::string(buf, write_uint(buf, v));
}

// The same text as std::to_chars: every value up to 100,000, every power of ten and its
// neighbours, every power of two and its neighbours, the extremes, and random values of every
// length.
TEST(WriteInt, SameAsToChars) {
  for (std::int64_t v = -100'000; v <= 100'000; ++v) ASSERT_EQ(ints(v), std_chars(v)) << v;
  std::vector<std::uint64_t> edges = {0, std::numeric_limits<std::uint64_t>::max(),
                                      std::numeric_limits<std::uint64_t>::max() - 1};
  for (std::uint64_t p = 1, i = 0; i < 20; ++i, p *= 10) {
    edges.insert(edges.end(), {p - 1, p, p + 1});
  }
  for (int b = 0; b < 64; ++b) {
    const std::uint64_t p = std::uint64_t{1} << b;
    edges.insert(edges.end(), {p - 1, p, p + 1});
  }
  for (std::uint64_t v : edges) {
    ASSERT_EQ(uints(v), std_chars(v)) << v;
    const auto s = static_cast<std::int64_t>(v);
    ASSERT_EQ(ints(s), std_chars(s)) << s;
  }
  EXPECT_EQ(ints(std::numeric_limits<std::int64_t>::min()), "-9223372036854775808");
  EXPECT_EQ(ints(std::numeric_limits<std::int64_t>::max()), "9223372036854775807");
  EXPECT_EQ(uints(std::numeric_limits<std::uint64_t>::max()), "18446744073709551615");
  std::mt19937_64 rng(5);
  for (int i = 0; i < 200'000; ++i) {
    const std::uint64_t v = rng() >> (rng() % 64);  // every bit length
    ASSERT_EQ(uints(v), std_chars(v)) << v;
    ASSERT_EQ(ints(static_cast<std::int64_t>(v)), std_chars(static_cast<std::int64_t>(v)));
  }
}

std::string json_double(double v) {
  JsonWriter j;
  j.value(v);
  return j.take();
}

// JsonWriter writes a double so that reading it back gives the same double: money in the admin
// API (spend, caps, reservations in USD) once lost everything past six significant digits
// ("1234.57" for a spend of 1234.56789). Values that six digits hold keep their old text.
TEST(WriteDoubleRoundTrip, ReadsBackAsTheSameDouble) {
  EXPECT_EQ(json_double(1234.56789), "1234.56789");
  EXPECT_EQ(json_double(1234567.891234), "1234567.891234");
  EXPECT_EQ(json_double(static_cast<double>(1'234'567'891) / 1e6), "1234.567891");
  EXPECT_EQ(json_double(static_cast<double>(999'999'999'999'999) / 1e6), "999999999.999999");
  EXPECT_EQ(json_double(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(json_double(0.1), "0.1");
  EXPECT_EQ(json_double(0.000423), "0.000423");
  EXPECT_EQ(json_double(4.23e-07), "4.23e-07");
  EXPECT_EQ(json_double(100000), "100000");
  EXPECT_EQ(json_double(1000), "1000");
  EXPECT_EQ(json_double(0), "0");
  EXPECT_EQ(json_double(-2.5), "-2.5");
  EXPECT_EQ(json_double(1e9), "1e+09");
  EXPECT_EQ(json_double(std::numeric_limits<double>::infinity()), "null");
  EXPECT_EQ(json_double(std::nan("")), "null");
  auto round_trips = [](double v) {
    char buf[kDoubleMaxSize + 1] = {};
    char* end = write_double_round_trip(buf, v);
    ASSERT_LE(end - buf, static_cast<std::ptrdiff_t>(kDoubleMaxSize));
    ASSERT_EQ(std::strtod(buf, nullptr), v) << buf;
  };
  for (double v : {std::numeric_limits<double>::max(), std::numeric_limits<double>::lowest(),
                   std::numeric_limits<double>::min(), std::numeric_limits<double>::denorm_min(),
                   -std::numeric_limits<double>::denorm_min(), 1.0 / 3, 2.0 / 3}) {
    round_trips(v);
  }
  // Every micro-dollar amount is written as its exact decimal, and random doubles read back.
  std::mt19937_64 rng(17);
  for (int i = 0; i < 200'000; ++i) {
    const auto micro = static_cast<std::int64_t>(rng() % 1'000'000'000'000'000ull);
    const double usd = static_cast<double>(micro) / 1e6;
    round_trips(usd);
    char buf[kDecimalMaxSize];
    ASSERT_EQ(std::strtod(std::string(buf, write_decimal(buf, micro, 6)).c_str(), nullptr),
              std::strtod(json_double(usd).c_str(), nullptr));
    double any = 0;
    const std::uint64_t bits = rng();
    std::memcpy(&any, &bits, sizeof any);
    if (std::isfinite(any)) round_trips(any);
  }
}

}  // namespace
}  // namespace bw
