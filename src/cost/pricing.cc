#include "cost/pricing.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace bw::cost {

Micros usd_to_micros(double usd) {
  if (!(usd == usd)) return 0;  // NaN
  const double m = std::round(usd * static_cast<double>(kMicrosPerUsd));
  if (m >= 9.2e18) return kMaxMicros;
  if (m <= -9.2e18) return kMinMicros;
  return static_cast<Micros>(m);
}

namespace {

constexpr __int128 kTokensPerPriceUnit = 1'000'000;

Micros clamp_to_micros(__int128 v) {
  if (v > static_cast<__int128>(kMaxMicros)) return kMaxMicros;
  if (v < 0) return 0;
  return static_cast<Micros>(v);
}

}  // namespace

Micros cost_micros(const ModelPrice& price, std::int64_t prompt_tokens,
                   std::int64_t completion_tokens, std::int64_t cached_tokens,
                   std::int64_t cache_write_tokens) {
  prompt_tokens = std::max<std::int64_t>(prompt_tokens, 0);
  completion_tokens = std::max<std::int64_t>(completion_tokens, 0);
  cached_tokens = std::clamp<std::int64_t>(cached_tokens, 0, prompt_tokens);
  cache_write_tokens =
      std::clamp<std::int64_t>(cache_write_tokens, 0, prompt_tokens - cached_tokens);
  const Micros cached_rate =
      price.cached_input_per_mtok < 0 ? price.input_per_mtok : price.cached_input_per_mtok;
  const Micros write_rate =
      price.cache_write_per_mtok < 0 ? price.input_per_mtok : price.cache_write_per_mtok;
  // 63-bit token counts times 63-bit prices fit in 126 bits; the sum of four stays below 2^127.
  const __int128 numerator =
      static_cast<__int128>(prompt_tokens - cached_tokens - cache_write_tokens) *
          std::max<Micros>(price.input_per_mtok, 0) +
      static_cast<__int128>(cached_tokens) * std::max<Micros>(cached_rate, 0) +
      static_cast<__int128>(cache_write_tokens) * std::max<Micros>(write_rate, 0) +
      static_cast<__int128>(completion_tokens) * std::max<Micros>(price.output_per_mtok, 0);
  // Rounded up to a whole micro-dollar. A 128-bit division is a library call; the numerator of
  // any realistic request fits 64 bits, where dividing by the constant is a multiply.
  const __int128 rounded = numerator + kTokensPerPriceUnit - 1;
  if (rounded <= static_cast<__int128>(std::numeric_limits<std::uint64_t>::max())) {
    return clamp_to_micros(static_cast<std::uint64_t>(rounded) /
                           static_cast<std::uint64_t>(kTokensPerPriceUnit));
  }
  return clamp_to_micros(rounded / kTokensPerPriceUnit);
}

std::int64_t estimate_prompt_tokens(std::int64_t text_chars, std::int64_t message_count) {
  text_chars = std::max<std::int64_t>(text_chars, 0);
  message_count = std::max<std::int64_t>(message_count, 0);
  const std::int64_t text_tokens = text_chars / 3 + (text_chars % 3 != 0 ? 1 : 0);
  std::int64_t framing = 0;
  constexpr std::int64_t kMaxTokens = std::numeric_limits<std::int64_t>::max();
  if (__builtin_mul_overflow(message_count, std::int64_t{4}, &framing)) return kMaxTokens;
  std::int64_t total = 0;
  if (__builtin_add_overflow(text_tokens, framing, &total)) return kMaxTokens;
  if (__builtin_add_overflow(total, std::int64_t{3}, &total)) return kMaxTokens;
  return total;
}

std::int64_t completion_token_limit(const ModelPrice& price,
                                    std::optional<std::int64_t> max_tokens) {
  const std::int64_t cap =
      price.max_output_tokens > 0 ? price.max_output_tokens : kDefaultMaxOutputTokens;
  if (max_tokens && *max_tokens > 0) return std::min(*max_tokens, cap);
  return cap;
}

WorstCase worst_case(const ModelPrice& price, std::int64_t estimated_prompt_tokens,
                     std::optional<std::int64_t> max_tokens) {
  WorstCase w;
  w.prompt_tokens = std::max<std::int64_t>(estimated_prompt_tokens, 0);
  w.completion_tokens = completion_token_limit(price, max_tokens);
  w.cost = worst_case_micros(price, w.prompt_tokens, w.completion_tokens);
  return w;
}

Micros worst_case_micros(const ModelPrice& price, std::int64_t prompt_tokens,
                         std::int64_t completion_tokens) {
  return cost_micros(price, prompt_tokens, completion_tokens, 0,
                     price.cache_write_per_mtok > price.input_per_mtok ? prompt_tokens : 0);
}

std::int64_t image_token_bound(const ModelPrice& price) {
  return price.image_tokens > 0 ? price.image_tokens : kDefaultImageTokens;
}

namespace {

// Whether `a` never has a larger worst case than `b`, for any prompt, max_tokens or endpoint
// (embeddings price the prompt at the plain input rate).
bool covered_by(const ModelPrice& a, const ModelPrice& b) {
  auto worst_input = [](const ModelPrice& p) {
    return std::max(p.input_per_mtok, p.cache_write_per_mtok);
  };
  auto cap = [](const ModelPrice& p) {
    return p.max_output_tokens > 0 ? p.max_output_tokens : kDefaultMaxOutputTokens;
  };
  return a.input_per_mtok <= b.input_per_mtok && worst_input(a) <= worst_input(b) &&
         a.output_per_mtok <= b.output_per_mtok && cap(a) <= cap(b) &&
         image_token_bound(a) <= image_token_bound(b);
}

}  // namespace

std::vector<const ModelPrice*> covering_prices(const std::vector<const ModelPrice*>& prices) {
  std::vector<const ModelPrice*> out;
  for (std::size_t i = 0; i < prices.size(); ++i) {
    const ModelPrice* a = prices[i];
    if (a == nullptr) continue;
    bool covered = false;
    for (std::size_t j = 0; j < prices.size() && !covered; ++j) {
      const ModelPrice* b = prices[j];
      if (j == i || b == nullptr || !covered_by(*a, *b)) continue;
      // Two prices that cover each other are equal for the worst case: keep the first only.
      covered = !covered_by(*b, *a) || j < i;
    }
    if (!covered) out.push_back(a);
  }
  return out;
}

PriceTable PriceTable::defaults() {
  PriceTable t;
  t.set("gpt-4.1", {2'500'000, 8'000'000, 500'000, 32'768});
  t.set("claude-sonnet-4.5", {3'000'000, 15'000'000, 300'000, 64'000, 3'750'000});
  t.set("gemini-2.5-flash", {300'000, 2'500'000, 30'000, 65'536, -1, 4'128});
  t.set("deepseek-v3.2", {100'000, 420'000, 10'000, 8'192});
  return t;
}

void PriceTable::set(std::string model, ModelPrice price) {
  prices_.insert_or_assign(std::move(model), price);
}

const ModelPrice* PriceTable::find(std::string_view model) const {
  auto it = prices_.find(model);
  return it == prices_.end() ? nullptr : &it->second;
}

}  // namespace bw::cost
