#include "bellwether/cost.h"

#include <algorithm>

namespace bellwether {

std::optional<ModelPrice> PriceTable::find(const std::string& model) const {
  auto it = prices_.find(model);
  if (it == prices_.end()) return std::nullopt;
  return it->second;
}

double PriceTable::cost(const std::string& model, std::int64_t prompt_tokens,
                        std::int64_t completion_tokens) const {
  auto price = find(model);
  if (!price) return 0;
  return (static_cast<double>(prompt_tokens) * price->input_per_mtok +
          static_cast<double>(completion_tokens) * price->output_per_mtok) /
         1e6;
}

double PriceTable::cost(const std::string& model, const Usage& usage) const {
  return cost(model, usage.prompt_tokens, usage.completion_tokens);
}

std::int64_t estimate_prompt_tokens(const ChatRequest& request) {
  std::int64_t chars = 0;
  for (const auto& m : request.messages)
    chars += static_cast<std::int64_t>(m.content.size() + m.role.size());
  return (chars + 3) / 4 + 4 * static_cast<std::int64_t>(request.messages.size()) + 3;
}

bool CostTracker::try_reserve(double estimate_usd) {
  std::lock_guard lock(mu_);
  if (cap_ && spent_ + reserved_ + estimate_usd > *cap_) return false;
  reserved_ += estimate_usd;
  return true;
}

void CostTracker::settle(double reserved_usd, double actual_usd) {
  std::lock_guard lock(mu_);
  reserved_ = std::max(0.0, reserved_ - reserved_usd);
  spent_ += actual_usd;
}

void CostTracker::release(double reserved_usd) {
  std::lock_guard lock(mu_);
  reserved_ = std::max(0.0, reserved_ - reserved_usd);
}

double CostTracker::spent() const {
  std::lock_guard lock(mu_);
  return spent_;
}

double CostTracker::reserved() const {
  std::lock_guard lock(mu_);
  return reserved_;
}

}  // namespace bellwether
