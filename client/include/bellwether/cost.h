#pragma once
// Cost tracking: a price table (USD per million tokens) and a budget tracker that reserves an
// estimate before a request is sent and settles it with the actual usage afterwards.
// PriceTable is immutable after construction; CostTracker is thread-safe.
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "bellwether/types.h"

namespace bellwether {

struct ModelPrice {
  double input_per_mtok = 0;   // USD per 1,000,000 prompt tokens
  double output_per_mtok = 0;  // USD per 1,000,000 completion tokens
};

class PriceTable {
 public:
  void set(const std::string& model, ModelPrice price) { prices_[model] = price; }
  std::optional<ModelPrice> find(const std::string& model) const;
  // Unknown models cost 0: the SDK cannot guess a price, and refusing would block new models.
  double cost(const std::string& model, const Usage& usage) const;
  double cost(const std::string& model, std::int64_t prompt_tokens,
              std::int64_t completion_tokens) const;
  bool empty() const { return prices_.empty(); }

 private:
  std::map<std::string, ModelPrice> prices_;
};

// Rough prompt size: 4 characters per token plus a few tokens per message of framing. The
// estimate only gates the budget; settlement uses the server's usage.
std::int64_t estimate_prompt_tokens(const ChatRequest& request);

class CostTracker {
 public:
  explicit CostTracker(std::optional<double> budget_cap_usd = std::nullopt)
      : cap_(budget_cap_usd) {}
  // Reserves `estimate_usd`; false (and nothing reserved) when spent + reserved + estimate would
  // exceed the cap.
  bool try_reserve(double estimate_usd);
  // Replaces a reservation by the actual cost (actual may exceed the estimate).
  void settle(double reserved_usd, double actual_usd);
  void release(double reserved_usd);
  double spent() const;
  double reserved() const;
  std::optional<double> cap() const { return cap_; }

 private:
  mutable std::mutex mu_;
  std::optional<double> cap_;
  double spent_ = 0;
  double reserved_ = 0;
};

}  // namespace bellwether
