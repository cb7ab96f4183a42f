#include "common/same_text.h"

#include <gtest/gtest.h>

#include <string>

namespace bw {
namespace {

// Every length up to past the inline words, with a difference at each position (first and last
// characters included) and in the length.
TEST(SameText, EqualsStringEqualityAtEveryLengthAndPosition) {
  for (std::size_t n = 0; n <= 40; ++n) {
    std::string a(n, 'x');
    for (std::size_t i = 0; i < n; ++i) a[i] = static_cast<char>('a' + (i * 7) % 26);
    const std::string same = a;  // another buffer
    EXPECT_TRUE(same_text(a, same)) << n;
    for (std::size_t i = 0; i < n; ++i) {
      std::string b = a;
      b[i] = static_cast<char>(b[i] ^ 0x20);
      EXPECT_FALSE(same_text(a, b)) << n << " " << i;
      EXPECT_FALSE(same_text(b, a)) << n << " " << i;
    }
    EXPECT_FALSE(same_text(a, a + "y")) << n;
    EXPECT_FALSE(same_text(a + "y", a)) << n;
  }
  EXPECT_TRUE(same_text("", std::string_view{}));
  EXPECT_TRUE(same_text("bench", "bench"));
  EXPECT_FALSE(same_text("bench", "bencH"));
}

// same_bytes, inline up to 64 bytes (its steps of 16), by memcmp past that: every length across
// both, a difference at each position.
TEST(SameText, SameBytesEqualsMemcmpAtEveryLengthAndPosition) {
  for (std::size_t n = 0; n <= 100; ++n) {
    std::string a(n, 'x');
    for (std::size_t i = 0; i < n; ++i) a[i] = static_cast<char>('a' + (i * 7) % 26);
    const std::string same = a;  // another buffer
    EXPECT_TRUE(same_bytes(a.data(), same.data(), n)) << n;
    for (std::size_t i = 0; i < n; ++i) {
      std::string b = a;
      b[i] = static_cast<char>(b[i] ^ 0x20);
      EXPECT_FALSE(same_bytes(a.data(), b.data(), n)) << n << " " << i;
      EXPECT_FALSE(same_bytes(b.data(), a.data(), n)) << n << " " << i;
    }
  }
}

}  // namespace
}  // namespace bw
