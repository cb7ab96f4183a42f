// Ids that grant access to stored data (a stored response's) come from the kernel's CSPRNG:
// well-formed, never repeated, and every character equally likely (no modulo bias).
#include <gtest/gtest.h>

#include <array>
#include <cctype>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/canonical.h"
#include "common/secure_random.h"

namespace bw::api {
namespace {

bool well_formed(const std::string& id, std::string_view prefix) {
  if (!id.starts_with(prefix) || id.size() != prefix.size() + kIdChars) return false;
  for (std::size_t i = prefix.size(); i < id.size(); ++i) {
    if (!std::isalnum(static_cast<unsigned char>(id[i]))) return false;
  }
  return true;
}

TEST(NewId, IsThePrefixAndTwentyFourAlphanumericCharacters) {
  for (std::string_view prefix : {"resp_", "msg_", "call_", "chatcmpl-", "toolu_", ""}) {
    for (int i = 0; i < 100; ++i) {
      const std::string id = new_id(prefix);
      EXPECT_TRUE(well_formed(id, prefix)) << id;
    }
  }
}

// 200,000 ids, drawn on four threads at once (each thread has its own buffer): none repeats.
// At 143 bits a repeat is impossible unless the generator is broken or two buffers share a state.
TEST(NewId, NeverRepeatsOverManyDrawsAcrossThreads) {
  constexpr int kThreads = 4, kPerThread = 50'000;
  std::vector<std::vector<std::string>> drawn(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&drawn, t] {
      drawn[t].reserve(kPerThread);
      for (int i = 0; i < kPerThread; ++i) drawn[t].push_back(new_id("resp_"));
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> seen;
  for (const auto& ids : drawn) {
    for (const auto& id : ids) {
      ASSERT_TRUE(well_formed(id, "resp_")) << id;
      ASSERT_TRUE(seen.insert(id).second) << "repeated: " << id;
    }
  }
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(kThreads * kPerThread));
  // Nor do two share their first 12 characters (71 bits: a collision by chance is ~1e-11).
  std::set<std::string> heads;
  for (const auto& id : seen) heads.insert(id.substr(5, 12));
  EXPECT_EQ(heads.size(), seen.size());
}

// Each of the 62 characters is equally likely: a chi-square test over 620,000 characters. A
// generator with modulo bias (a byte % 62 makes the first 8 characters a quarter likelier) fails
// it; a uniform one exceeds the bound with probability about 1e-9 (61 degrees of freedom).
TEST(SecureRandom, AlphanumericCharactersAreUniform) {
  constexpr std::size_t kPerSymbol = 10'000;
  std::string s;
  append_secure_alnum(s, 62 * kPerSymbol);
  ASSERT_EQ(s.size(), 62 * kPerSymbol);
  std::array<std::size_t, 256> counts{};
  for (unsigned char ch : s) ++counts[ch];
  double chi2 = 0;
  std::size_t symbols = 0;
  for (std::size_t ch = 0; ch < 256; ++ch) {
    if (counts[ch] == 0) continue;
    ASSERT_TRUE(std::isalnum(static_cast<int>(ch))) << ch;
    ++symbols;
    const double d = static_cast<double>(counts[ch]) - kPerSymbol;
    chi2 += d * d / kPerSymbol;
  }
  EXPECT_EQ(symbols, 62u);
  EXPECT_LT(chi2, 150.0);
}

TEST(SecureRandom, FillsFromTheKernelAndTheBufferRefills) {
  // Far more bytes than one block: the per-thread buffer is refilled many times, and the bytes of
  // two blocks are not the same.
  std::array<std::uint8_t, 4 * kSecureRandomBlock> a{};
  for (auto& b : a) b = secure_random_byte();
  EXPECT_NE(std::vector<std::uint8_t>(a.begin(), a.begin() + kSecureRandomBlock),
            std::vector<std::uint8_t>(a.begin() + kSecureRandomBlock,
                                      a.begin() + 2 * kSecureRandomBlock));
  std::array<std::uint8_t, 64> x{}, y{};
  secure_random_fill(x.data(), x.size());
  secure_random_fill(y.data(), y.size());
  EXPECT_NE(x, y);
}

}  // namespace
}  // namespace bw::api
