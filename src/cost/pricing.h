#pragma once
// Prices per model and request cost estimation. Pure functions and an immutable-after-build
// table: safe to share across threads once constructed (build a new table on config reload).
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/string_hash.h"
#include "cost/money.h"

namespace bw::cost {

// Prices in micro-dollars per million tokens, i.e. numerically equal to "USD per 1M tokens * 1e6".
// $2.50 / 1M tokens is input_per_mtok = 2'500'000.
struct ModelPrice {
  Micros input_per_mtok = 0;
  Micros output_per_mtok = 0;
  // Price of prompt tokens served from the provider's prompt cache; < 0 means "same as input".
  Micros cached_input_per_mtok = -1;
  // Output cap used for the worst case when the request has no max_tokens, and the upper clamp
  // of max_tokens. 0 means "unknown": kDefaultMaxOutputTokens is used.
  std::int64_t max_output_tokens = 0;
  // Price of prompt tokens written to the provider's prompt cache (Anthropic bills them above
  // the input rate); < 0 means "same as input".
  Micros cache_write_per_mtok = -1;
  // The most one input image is billed by this model, in input tokens; 0 means "not set":
  // kDefaultImageTokens is used. Providers bill images very differently per model (OpenAI's
  // gpt-4o-mini about 33 times gpt-4o's tokens), and the gateway never decodes an image, so this
  // is the bound for the largest image the model takes (docs/cost-guard.md).
  std::int64_t image_tokens = 0;
};

constexpr std::int64_t kDefaultMaxOutputTokens = 16'384;

// The image bound of a price entry without image_tokens: Anthropic's Claude (an image is scaled
// to at most ~1.15 megapixels, at width x height / 750 tokens: about 1,600) and OpenAI's GPT-4o
// and GPT-4.1 (85 + 170 per 512 px tile, at most 2 x 4 tiles: 1,445).
constexpr std::int64_t kDefaultImageTokens = 1'600;

// The input tokens one image may be billed by `price`'s model.
std::int64_t image_token_bound(const ModelPrice& price);

// Exact cost of a completed request, rounded UP to the next micro-dollar (rounding is applied
// once, to the sum, so splitting a request never changes its price by more than 1 micro).
// `prompt_tokens` includes `cached_tokens` (OpenAI usage semantics); cached tokens are priced at
// the cached-input rate, cache writes (also part of `prompt_tokens`) at the cache-write rate, the
// rest at the input rate. Negative counts are treated as 0; cached and written are clamped to
// prompt. Saturates at kMaxMicros.
Micros cost_micros(const ModelPrice& price, std::int64_t prompt_tokens,
                   std::int64_t completion_tokens, std::int64_t cached_tokens = 0,
                   std::int64_t cache_write_tokens = 0);

// Conservative prompt token estimate, before tokenisation is possible:
//   ceil(text_chars / 3) + 4 * message_count + 3
// Real tokenisers average ~4 characters per token for English and code; 3 leaves headroom for
// other scripts. Pass the UTF-8 byte length of all message text (bytes >= code points, which only
// makes the estimate larger). 4 per message and 3 per request cover role and framing tokens.
std::int64_t estimate_prompt_tokens(std::int64_t text_chars, std::int64_t message_count);

// The output token budget the request is allowed: min(max_tokens, model cap) when max_tokens is
// given and positive, else the model cap. The gateway must forward exactly this as max_tokens
// (when the client sent none) so the actual cost cannot exceed the worst case.
std::int64_t completion_token_limit(const ModelPrice& price,
                                    std::optional<std::int64_t> max_tokens);

struct WorstCase {
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  Micros cost = 0;
};

// Worst case: estimated prompt at the full (uncached) input price + the completion limit at the
// output price. This is the amount reserved against budgets before forwarding.
WorstCase worst_case(const ModelPrice& price, std::int64_t estimated_prompt_tokens,
                     std::optional<std::int64_t> max_tokens);

// The worst-case price of `prompt_tokens` and `completion_tokens` (all choices together): every
// prompt token at the dearer of input and cache write, since the provider decides what it caches.
Micros worst_case_micros(const ModelPrice& price, std::int64_t prompt_tokens,
                         std::int64_t completion_tokens);

// When any of `prices` may answer a request (a model and its fallbacks), the reservation is the
// largest worst case over them. This drops each price another one covers (no lower input,
// worst-case input, output rate, output cap and image bound, so never a smaller worst case for
// any request):
// the largest worst case over the result is the same, and usually one price is left. Order is
// kept; of equal prices the first stays; null entries are dropped.
std::vector<const ModelPrice*> covering_prices(const std::vector<const ModelPrice*>& prices);

class PriceTable {
 public:
  // The built-in table (USD per 1M tokens, input/output/cached input):
  //   gpt-4.1 2.50/8.00/0.50, claude-sonnet-4.5 3.00/15.00/0.30 (cache writes 3.75),
  //   gemini-2.5-flash 0.30/2.50/0.03, deepseek-v3.2 0.10/0.42/0.01
  // Image bounds: the default (kDefaultImageTokens), except gemini-2.5-flash: 4,128 (Gemini
  // bills 258 tokens per 768 x 768 tile; 16 tiles is a 3072 px square).
  static PriceTable defaults();

  void set(std::string model, ModelPrice price);
  // nullptr when the model has no price: the caller must refuse (money never fails open).
  const ModelPrice* find(std::string_view model) const;
  std::size_t size() const { return prices_.size(); }
  using Map = std::unordered_map<std::string, ModelPrice, StringHash, std::equal_to<>>;
  const Map& all() const { return prices_; }

 private:
  // Transparent: find() looks a model name up as it is, without building a string (a name
  // longer than the short-string buffer would cost an allocation per request).
  Map prices_;
};

}  // namespace bw::cost
