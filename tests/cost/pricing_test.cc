#include "cost/pricing.h"

#include <gtest/gtest.h>

#include "cost/period.h"

namespace bw::cost {
namespace {

TEST(Money, SaturatingArithmetic) {
  EXPECT_EQ(sat_add(kMaxMicros, 1), kMaxMicros);
  EXPECT_EQ(sat_add(kMinMicros, -1), kMinMicros);
  EXPECT_EQ(sat_sub(kMinMicros, 1), kMinMicros);
  EXPECT_EQ(sat_sub(0, kMinMicros), kMaxMicros);
  EXPECT_EQ(sat_mul(kMaxMicros / 2 + 1, 2), kMaxMicros);
  EXPECT_EQ(sat_mul(kMaxMicros, -2), kMinMicros);
  EXPECT_EQ(sat_add(40, 2), 42);
  EXPECT_EQ(usd_to_micros(2.50), 2'500'000);
  EXPECT_EQ(usd_to_micros(0.625), 625'000);
  EXPECT_EQ(usd_to_micros(0.42), 420'000);
  EXPECT_EQ(usd_to_micros(1e30), kMaxMicros);
}

TEST(Pricing, DefaultTable) {
  const PriceTable t = PriceTable::defaults();
  ASSERT_EQ(t.size(), 4u);
  const ModelPrice* gpt = t.find("gpt-4.1");
  ASSERT_NE(gpt, nullptr);
  EXPECT_EQ(gpt->input_per_mtok, 2'500'000);
  EXPECT_EQ(gpt->output_per_mtok, 8'000'000);
  EXPECT_EQ(t.find("claude-sonnet-4.5")->output_per_mtok, 15'000'000);
  EXPECT_EQ(t.find("gemini-2.5-flash")->input_per_mtok, 300'000);
  EXPECT_EQ(t.find("deepseek-v3.2")->output_per_mtok, 420'000);
  EXPECT_EQ(t.find("no-such-model"), nullptr);
}

TEST(Pricing, CostIsExactAndRoundsUpOnce) {
  const ModelPrice gpt{2'500'000, 8'000'000, 500'000, 32'768};
  // 1M prompt tokens at $2.50 + 1M completion at $8.00 = $10.50
  EXPECT_EQ(cost_micros(gpt, 1'000'000, 1'000'000), 10'500'000);
  // 1 prompt token = 2.5 micros -> 3
  EXPECT_EQ(cost_micros(gpt, 1, 0), 3);
  // 2 prompt tokens = 5 micros exactly
  EXPECT_EQ(cost_micros(gpt, 2, 0), 5);
  // 1 prompt + 1 completion = 2.5 + 8 = 10.5 -> 11 (rounded once, not 3 + 8)
  EXPECT_EQ(cost_micros(gpt, 1, 1), 11);
  EXPECT_EQ(cost_micros(gpt, 0, 0), 0);
  // 1000 prompt of which 400 cached: 600*2.5 + 400*0.5 = 1500 + 200 = 1700 micros
  EXPECT_EQ(cost_micros(gpt, 1000, 0, 400), 1700);
  // cached > prompt is clamped; negative counts count as 0
  EXPECT_EQ(cost_micros(gpt, 1000, 0, 5000), 500);
  EXPECT_EQ(cost_micros(gpt, -5, -7, -1), 0);
}

TEST(Pricing, CachedDefaultsToInputPrice) {
  const ModelPrice p{3'000'000, 15'000'000, -1, 0};
  EXPECT_EQ(cost_micros(p, 1000, 0, 1000), cost_micros(p, 1000, 0, 0));
  EXPECT_EQ(cost_micros(p, 1000, 0, 1000), 3000);
}

TEST(Pricing, CostSaturates) {
  const ModelPrice p{kMaxMicros, kMaxMicros, kMaxMicros, 0};
  EXPECT_EQ(cost_micros(p, kMaxMicros, kMaxMicros, 0), kMaxMicros);
  EXPECT_EQ(cost_micros(p, 1'000'000, 0), kMaxMicros);
  const ModelPrice cheap{1, 1, 1, 0};
  EXPECT_EQ(cost_micros(cheap, kMaxMicros, kMaxMicros),
            18'446'744'073'710);  // ceil(2*(2^63-1)/1e6)
}

TEST(Estimation, PromptTokensRule) {
  EXPECT_EQ(estimate_prompt_tokens(0, 0), 3);
  EXPECT_EQ(estimate_prompt_tokens(0, 1), 7);
  EXPECT_EQ(estimate_prompt_tokens(1, 1), 8);
  EXPECT_EQ(estimate_prompt_tokens(3, 1), 8);
  EXPECT_EQ(estimate_prompt_tokens(4, 1), 9);
  EXPECT_EQ(estimate_prompt_tokens(3000, 2), 1000 + 8 + 3);
  EXPECT_EQ(estimate_prompt_tokens(-10, -1), 3);
  EXPECT_EQ(estimate_prompt_tokens(kMaxMicros, kMaxMicros), kMaxMicros);
}

TEST(Estimation, WorstCaseUsesMaxTokensOrModelCap) {
  const ModelPrice gpt{2'500'000, 8'000'000, 500'000, 32'768};
  // 1011 prompt tokens * 2.5 + 500 * 8 = 2527.5 + 4000 = 6527.5 -> 6528
  WorstCase w = worst_case(gpt, 1011, 500);
  EXPECT_EQ(w.prompt_tokens, 1011);
  EXPECT_EQ(w.completion_tokens, 500);
  EXPECT_EQ(w.cost, 6528);
  // No max_tokens: model cap 32768 * 8 = 262144 + 2527.5 -> 264672
  w = worst_case(gpt, 1011, std::nullopt);
  EXPECT_EQ(w.completion_tokens, 32'768);
  EXPECT_EQ(w.cost, 264'672);
  // max_tokens above the cap is clamped to the cap; 0 / negative mean "not given"
  EXPECT_EQ(worst_case(gpt, 0, 1'000'000).completion_tokens, 32'768);
  EXPECT_EQ(worst_case(gpt, 0, 0).completion_tokens, 32'768);
  const ModelPrice unknown_cap{1'000'000, 1'000'000, -1, 0};
  EXPECT_EQ(completion_token_limit(unknown_cap, std::nullopt), kDefaultMaxOutputTokens);
}

TEST(Period, DailyWindow) {
  // 2026-01-01T00:00:00Z = 1767225600000
  const std::int64_t jan1 = 1'767'225'600'000;
  auto w = period_window(BudgetPeriod::kDaily, jan1 + 5 * 3'600'000);
  EXPECT_EQ(w.start_unix_ms, jan1);
  EXPECT_EQ(w.end_unix_ms, jan1 + kMillisPerDay);
  w = period_window(BudgetPeriod::kDaily, jan1 - 1);
  EXPECT_EQ(w.start_unix_ms, jan1 - kMillisPerDay);
  EXPECT_EQ(w.end_unix_ms, jan1);
  EXPECT_EQ(utc_day_start(-1), -kMillisPerDay);
}

TEST(Period, MonthlyWindowAcrossYearAndLeapDay) {
  const std::int64_t jan1_2026 = 1'767'225'600'000;
  const std::int64_t feb1_2026 = jan1_2026 + 31 * kMillisPerDay;
  auto w = period_window(BudgetPeriod::kMonthly, jan1_2026 + 10 * kMillisPerDay);
  EXPECT_EQ(w.start_unix_ms, jan1_2026);
  EXPECT_EQ(w.end_unix_ms, feb1_2026);
  // December 2025 ends on 2026-01-01
  w = period_window(BudgetPeriod::kMonthly, jan1_2026 - 1);
  EXPECT_EQ(w.start_unix_ms, jan1_2026 - 31 * kMillisPerDay);
  EXPECT_EQ(w.end_unix_ms, jan1_2026);
  // February 2028 has 29 days: 2028-02-01 = 1832976000000, 2028-03-01 = +29 days
  const std::int64_t feb1_2028 = 1'832'976'000'000;
  w = period_window(BudgetPeriod::kMonthly, feb1_2028 + 28 * kMillisPerDay + 1);
  EXPECT_EQ(w.start_unix_ms, feb1_2028);
  EXPECT_EQ(w.end_unix_ms, feb1_2028 + 29 * kMillisPerDay);
}

TEST(Period, TotalNeverResets) {
  auto w = period_window(BudgetPeriod::kTotal, 123);
  EXPECT_EQ(w.end_unix_ms, kForeverUnixMs);
  EXPECT_LT(w.start_unix_ms, 0);
  EXPECT_EQ(parse_period("monthly"), BudgetPeriod::kMonthly);
  EXPECT_EQ(parse_period("weekly"), std::nullopt);
  EXPECT_EQ(to_string(BudgetPeriod::kDaily), "daily");
}

}  // namespace
}  // namespace bw::cost

namespace bw::cost {
namespace {

TEST(PricingCacheWrites, CacheReadsAndWritesAtTheirOwnRates) {
  // $3 input, $15 output, $0.30 cache read, $3.75 cache write per 1M tokens.
  const ModelPrice claude{3'000'000, 15'000'000, 300'000, 64'000, 3'750'000};
  // 1M prompt tokens: 200k read, 100k written, 700k plain.
  EXPECT_EQ(cost_micros(claude, 1'000'000, 0, 200'000, 100'000),
            700'000 * 3 + 200'000 * 3 / 10 + 375'000);
  // Without a write price, writes cost the input rate.
  const ModelPrice plain{3'000'000, 15'000'000, 300'000, 0};
  EXPECT_EQ(cost_micros(plain, 1'000'000, 0, 0, 500'000), 3'000'000);
  // The worst case covers a prompt written to the cache in full.
  EXPECT_GE(worst_case(claude, 1'000'000, 1).cost, 3'750'000);
  EXPECT_EQ(PriceTable::defaults().find("claude-sonnet-4.5")->cache_write_per_mtok, 3'750'000);
}

TEST(CoveringPrices, DropsPricesAnotherCovers) {
  const ModelPrice cheap{1'000'000, 2'000'000, -1, 8'192};
  const ModelPrice dear{100'000'000, 1'000'000'000, -1, 8'192};
  const ModelPrice dear_again = dear;
  EXPECT_EQ(covering_prices({&cheap, &dear, &dear_again}), (std::vector<const ModelPrice*>{&dear}));
  EXPECT_EQ(covering_prices({&cheap}), (std::vector<const ModelPrice*>{&cheap}));
  EXPECT_EQ(covering_prices({nullptr, &cheap}), (std::vector<const ModelPrice*>{&cheap}));
  // A dearer output rate with a smaller output cap covers neither way: both stay.
  const ModelPrice dear_short{1'000'000, 50'000'000, -1, 1'024};
  const ModelPrice cheap_long{1'000'000, 2'000'000, -1, 65'536};
  EXPECT_EQ(covering_prices({&cheap_long, &dear_short}),
            (std::vector<const ModelPrice*>{&cheap_long, &dear_short}));
  // A cache-write rate above the input rate is the worst case's prompt rate; the plain input
  // rate still counts for embeddings, so neither covers the other here.
  const ModelPrice writes{3'000'000, 15'000'000, 300'000, 64'000, 3'750'000};
  const ModelPrice input{3'500'000, 15'000'000, -1, 64'000};
  EXPECT_EQ(covering_prices({&writes, &input}), (std::vector<const ModelPrice*>{&writes, &input}));
  // max_output_tokens 0 is the default cap.
  const ModelPrice default_cap{1'000'000, 2'000'000, -1, 0};
  const ModelPrice explicit_cap{1'000'000, 2'000'000, -1, kDefaultMaxOutputTokens};
  EXPECT_EQ(covering_prices({&default_cap, &explicit_cap}),
            (std::vector<const ModelPrice*>{&default_cap}));
}

// Images are billed per model; an entry without image_tokens gets the documented default.
TEST(ImageBound, PerModelWithADefault) {
  const ModelPrice plain{1'000'000, 2'000'000, -1, 8'192};
  EXPECT_EQ(image_token_bound(plain), kDefaultImageTokens);
  EXPECT_EQ(kDefaultImageTokens, 1'600);
  ModelPrice mini = plain;
  mini.image_tokens = 25'501;  // gpt-4o-mini: 2,833 + 5,667 per tile, a 1024 px square
  EXPECT_EQ(image_token_bound(mini), 25'501);
  // Gemini's built-in bound is 16 tiles of 258 tokens.
  EXPECT_EQ(image_token_bound(*PriceTable::defaults().find("gemini-2.5-flash")), 16 * 258);
  EXPECT_EQ(image_token_bound(*PriceTable::defaults().find("gpt-4.1")), kDefaultImageTokens);
  // A price with the same rates but a larger image bound is not covered by the other.
  EXPECT_EQ(covering_prices({&mini, &plain}), (std::vector<const ModelPrice*>{&mini}));
  const ModelPrice dear{2'000'000, 4'000'000, -1, 8'192};
  EXPECT_EQ(covering_prices({&mini, &dear}), (std::vector<const ModelPrice*>{&mini, &dear}));
}

TEST(CoveringPrices, TheLargestWorstCaseIsKept) {
  const ModelPrice a{1'000'000, 60'000'000, -1, 1'000};
  const ModelPrice b{2'000'000, 10'000'000, -1, 4'000};
  const ModelPrice c{1'000'000, 10'000'000, -1, 2'000};  // covered by b
  const ModelPrice d{3'000'000, 5'000'000, 3'500'000, 500};
  const std::vector<const ModelPrice*> all{&a, &b, &c, &d};
  const auto kept = covering_prices(all);
  EXPECT_EQ(kept.size(), 3u);
  for (std::int64_t prompt : {0, 10, 5'000, 200'000}) {
    for (std::int64_t cap : {1, 700, 1'500, 3'000, 100'000}) {
      Micros over_all = 0, over_kept = 0;
      for (const auto* p : all) {
        over_all =
            std::max(over_all, worst_case_micros(*p, prompt, completion_token_limit(*p, cap)));
      }
      for (const auto* p : kept) {
        over_kept =
            std::max(over_kept, worst_case_micros(*p, prompt, completion_token_limit(*p, cap)));
      }
      EXPECT_EQ(over_kept, over_all) << prompt << " " << cap;
    }
  }
}

}  // namespace
}  // namespace bw::cost
