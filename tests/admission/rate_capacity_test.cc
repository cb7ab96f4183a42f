#include "admission/rate_capacity.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace bw::admission {
namespace {

// Largest number of sends (weighted by `weights`) in any window of `len` over sorted `times`.
std::int64_t max_in_any_window(const std::vector<Nanos>& times,
                               const std::vector<std::int64_t>& weights, Nanos len) {
  std::int64_t best = 0, sum = 0;
  std::size_t lo = 0;
  for (std::size_t hi = 0; hi < times.size(); ++hi) {
    sum += weights[hi];
    while (times[hi] - times[lo] >= len) sum -= weights[lo++];
    best = std::max(best, sum);
  }
  return best;
}

struct Sends {
  std::vector<Nanos> at;
  std::vector<std::int64_t> requests, tokens;
};

// A sender with an endless backlog: sends as soon as the capacity allows, for `duration`.
Sends greedy(RateCapacity& cap, Nanos start, Nanos duration, std::int64_t tokens) {
  Sends s;
  Nanos t = start;
  while (true) {
    t = cap.available_at(t, tokens);
    if (t >= start + duration) break;
    cap.reserve(t, tokens);
    s.at.push_back(t);
    s.requests.push_back(1);
    s.tokens.push_back(tokens);
  }
  return s;
}

TEST(RateCapacity, UnlimitedWithoutLimits) {
  RateCapacity cap;
  EXPECT_FALSE(cap.limited(seconds(10)));
  for (int i = 0; i < 1000; ++i) cap.reserve(seconds(10), 100);
  EXPECT_EQ(cap.available_at(seconds(10), 100), seconds(10));
}

TEST(RateCapacity, PacingNeverExceedsRpmOverAnyWindow) {
  RateCapacity cap({.rpm = 600, .tpm = 0});
  const Nanos start = seconds(1000);
  auto s = greedy(cap, start, seconds(300), 1);
  // Never above the limit over any window of the provider's minute ...
  EXPECT_LE(max_in_any_window(s.at, s.requests, seconds(60)), 600);
  EXPECT_LE(max_in_any_window(s.at, s.requests, seconds(61)), 600);
  // ... nor above the steady rate plus one second of burst over any shorter window.
  EXPECT_LE(max_in_any_window(s.at, s.requests, seconds(1)), 10 + 10);
  EXPECT_LE(max_in_any_window(s.at, s.requests, seconds(10)), 100 + 10);
  // And not needlessly below it: the margin costs about 1/61.
  EXPECT_GE(static_cast<double>(s.at.size()), 0.97 * 600 * 5);
}

TEST(RateCapacity, PacingNeverExceedsTpmOverAnyWindow) {
  RateCapacity cap({.rpm = 0, .tpm = 60'000});
  const Nanos start = seconds(1000);
  auto s = greedy(cap, start, seconds(180), 700);
  EXPECT_LE(max_in_any_window(s.at, s.tokens, seconds(61)), 60'000);
  EXPECT_LE(max_in_any_window(s.at, s.tokens, seconds(1)), 1000 + 1000);
  EXPECT_GE(static_cast<double>(s.at.size()) * 700, 0.95 * 60'000 * 3);
}

TEST(RateCapacity, BothLimitsTheTighterBinds) {
  RateCapacity cap({.rpm = 6000, .tpm = 60'000});
  const Nanos t = seconds(1000);
  // 1000 tokens per request: TPM allows 60/min, RPM 6000/min.
  EXPECT_EQ(cap.binding(t, 1000), Binding::kNone);
  for (int i = 0; i < 2; ++i) cap.reserve(t, 1000);
  EXPECT_EQ(cap.binding(t, 1000), Binding::kTokens);
  RateCapacity req_only({.rpm = 60, .tpm = 1'000'000});
  req_only.reserve(t, 1);
  EXPECT_EQ(req_only.binding(t, 1), Binding::kRequests);
  EXPECT_EQ(req_only.available_at(t, 1), t + seconds(1));
}

TEST(RateCapacity, BurstOfOneSecondThenSteadyRate) {
  RateCapacity cap({.rpm = 1200, .tpm = 0});  // 20/s
  const Nanos t = seconds(1000);
  int at_once = 0;
  while (cap.available_at(t, 1) == t) {
    cap.reserve(t, 1);
    ++at_once;
  }
  EXPECT_EQ(at_once, 20);
  EXPECT_EQ(cap.available_at(t, 1), t + millis(50));
}

TEST(RateCapacity, TokenCorrectionFreesCapacity) {
  RateCapacity cap({.rpm = 0, .tpm = 6000});  // burst 100 tokens
  const Nanos t = seconds(1000);
  cap.reserve(t, 100);  // estimate
  EXPECT_GT(cap.available_at(t, 100), t);
  cap.correct(t, 100, 10, t + millis(1));  // the answer used 10 tokens
  EXPECT_EQ(cap.available_at(t + millis(1), 90), t + millis(1));
  auto s = cap.status(t + millis(1));
  EXPECT_EQ(s.remaining_tokens, 5990);
}

TEST(RateCapacity, LargerThanTheLimitFitsWhenTheWindowIsEmpty) {
  RateCapacity cap({.rpm = 0, .tpm = 1000});
  const Nanos t = seconds(1000);
  EXPECT_EQ(cap.available_at(t, 5000), t);
}

std::map<std::string, std::string, std::less<>> openai_headers(std::string limit,
                                                               std::string remaining,
                                                               std::string reset) {
  return {{"x-ratelimit-limit-requests", limit},     {"x-ratelimit-remaining-requests", remaining},
          {"x-ratelimit-reset-requests", reset},     {"x-ratelimit-limit-tokens", "40000"},
          {"x-ratelimit-remaining-tokens", "39000"}, {"x-ratelimit-reset-tokens", "1.5s"}};
}

auto lookup(const std::map<std::string, std::string, std::less<>>& h) {
  return [&h](std::string_view name) -> std::string_view {
    auto it = h.find(name);
    return it == h.end() ? std::string_view() : std::string_view(it->second);
  };
}

TEST(ProviderLimits, ParsesOpenAiHeaders) {
  auto h = openai_headers("500", "12", "6m0s");
  auto p = parse_provider_limits(lookup(h), 200, 0);
  EXPECT_EQ(p.limit_requests, 500);
  EXPECT_EQ(p.remaining_requests, 12);
  EXPECT_EQ(p.reset_requests, seconds(360));
  EXPECT_EQ(p.limit_tokens, 40000);
  EXPECT_EQ(p.remaining_tokens, 39000);
  EXPECT_EQ(p.reset_tokens, millis(1500));
  EXPECT_EQ(p.retry_after, -1);  // only on a 429
}

TEST(ProviderLimits, ParsesAnthropicHeadersAndRetryAfter) {
  const std::int64_t now_ms = parse_rfc3339_ms("2026-12-04T23:59:00Z");
  ASSERT_GT(now_ms, 0);
  std::map<std::string, std::string, std::less<>> h = {
      {"anthropic-ratelimit-requests-limit", "50"},
      {"anthropic-ratelimit-requests-remaining", "0"},
      {"anthropic-ratelimit-requests-reset", "2026-12-04T23:59:30Z"},
      {"anthropic-ratelimit-input-tokens-limit", "30000"},
      {"anthropic-ratelimit-input-tokens-remaining", "29000"},
      {"anthropic-ratelimit-input-tokens-reset", "2026-12-04T23:59:01.500Z"},
      {"retry-after", "30"}};
  auto p = parse_provider_limits(lookup(h), 429, now_ms);
  EXPECT_EQ(p.limit_requests, 50);
  EXPECT_EQ(p.remaining_requests, 0);
  EXPECT_EQ(p.reset_requests, seconds(30));
  EXPECT_EQ(p.limit_tokens, 30000);
  EXPECT_EQ(p.remaining_tokens, 29000);
  EXPECT_EQ(p.reset_tokens, millis(1500));
  EXPECT_EQ(p.retry_after, seconds(30));
}

TEST(ProviderLimits, ParsesDurationsAndTimes) {
  EXPECT_EQ(parse_reset_duration("1s"), seconds(1));
  EXPECT_EQ(parse_reset_duration("20ms"), millis(20));
  EXPECT_EQ(parse_reset_duration("1h2m3.5s"), seconds(3723.5));
  EXPECT_EQ(parse_reset_duration("0.5"), millis(500));
  EXPECT_EQ(parse_reset_duration("abc"), -1);
  EXPECT_EQ(parse_reset_duration(""), -1);
  EXPECT_EQ(parse_rfc3339_ms("1970-01-01T00:00:01Z"), 1000);
  EXPECT_EQ(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), 0);
  EXPECT_EQ(parse_rfc3339_ms("not a date"), -1);
  EXPECT_EQ(parse_retry_after_value("2.5"), millis(2500));
  EXPECT_EQ(parse_retry_after_value("Wed, 21 Oct 2015 07:28:00 GMT"), -1);
}

TEST(RateCapacity, LearnedRemainingWinsWhileFresh) {
  // Configured far above what the provider really gives this account.
  RateCapacity cap({.rpm = 60'000, .tpm = 0});
  const Nanos t = seconds(1000);
  ProviderLimits p;
  p.limit_requests = 600;
  p.remaining_requests = 2;
  p.reset_requests = seconds(60);  // refills 598 over 60 s, about 10/s
  cap.learn(t, p);
  auto s = cap.status(t);
  EXPECT_TRUE(s.learned_fresh);
  EXPECT_EQ(s.effective.rpm, 600);
  EXPECT_EQ(s.learned_remaining_requests, 2);
  cap.reserve(t, 1);
  cap.reserve(t, 1);
  // Spent: the next one waits for the linear refill (60 s / 598 per request).
  const Nanos next = cap.available_at(t, 1);
  EXPECT_GT(next, t);
  EXPECT_LE(next, t + millis(101));
  // Once stale (learned_ttl), the configured limit is in force again.
  const Nanos later = t + seconds(61);
  EXPECT_FALSE(cap.status(later).learned_fresh);
  EXPECT_EQ(cap.status(later).effective.rpm, 60'000);
}

TEST(RateCapacity, RetryAfterBlocksUntilItPasses) {
  RateCapacity cap({.rpm = 6000, .tpm = 0});
  const Nanos t = seconds(1000);
  ProviderLimits p;
  p.retry_after = seconds(7);
  cap.learn(t, p);
  EXPECT_EQ(cap.available_at(t, 1), t + seconds(7));
  EXPECT_EQ(cap.binding(t, 1), Binding::kRequests);
  EXPECT_EQ(cap.available_at(t + seconds(7), 1), t + seconds(7));
}

TEST(RateCapacity, LearnedLimitPacesAGreedySender) {
  // Nothing configured: the provider's headers alone keep a greedy sender within its tier.
  RateCapacity cap;
  const Nanos t = seconds(1000);
  ProviderLimits p;
  p.limit_requests = 120;
  p.remaining_requests = 120;
  p.reset_requests = seconds(60);
  cap.learn(t, p);
  EXPECT_TRUE(cap.limited(t));
  auto s = greedy(cap, t, seconds(50), 1);
  EXPECT_LE(max_in_any_window(s.at, s.requests, seconds(60)), 120);
  EXPECT_GE(s.at.size(), 90u);
}

}  // namespace
}  // namespace bw::admission
