#include "routing/fallback.h"

#include <algorithm>
#include <unordered_set>

namespace bw::routing {

std::optional<std::string> validate_fallbacks(const FallbackTable& table) {
  // Sorted traversal so the reported error is deterministic.
  std::vector<const std::string*> names;
  names.reserve(table.size());
  for (const auto& [name, _] : table) names.push_back(&name);
  std::sort(names.begin(), names.end(), [](auto* a, auto* b) { return *a < *b; });

  for (const std::string* name : names) {
    const FallbackEntry& e = table.find(*name)->second;
    std::unordered_set<std::string_view> listed;
    for (const std::string& f : e.fallbacks) {
      if (f == *name) return "model '" + *name + "': fallbacks list the model itself";
      if (!table.contains(f)) return "model '" + *name + "': unknown fallback model '" + f + "'";
      if (!listed.insert(f).second) {
        return "model '" + *name + "': fallback model '" + f + "' listed twice (loop)";
      }
    }
    if (!e.context_fallback.empty()) {
      if (e.context_fallback == *name) {
        return "model '" + *name + "': context_fallback is the model itself";
      }
      if (!table.contains(e.context_fallback)) {
        return "model '" + *name + "': unknown context_fallback model '" + e.context_fallback + "'";
      }
    }
  }
  for (const std::string* name : names) {
    std::vector<std::string_view> path{*name};
    std::string_view cur = *name;
    while (true) {
      const std::string& next = table.find(cur)->second.context_fallback;
      if (next.empty()) break;
      if (std::find(path.begin(), path.end(), next) != path.end()) {
        std::string msg = "context_fallback cycle: ";
        for (auto p : path) msg.append(p).append(" -> ");
        msg.append(next);
        return msg;
      }
      path.push_back(next);
      cur = next;
    }
  }
  return std::nullopt;
}

std::vector<std::string> models_that_may_answer(const FallbackTable& table,
                                                std::string_view model) {
  std::vector<std::string> out;
  auto add = [&out](std::string_view m) {
    if (std::find(out.begin(), out.end(), m) == out.end()) out.emplace_back(m);
  };
  // Entered models queue their own list (AttemptPlanner::enter): the requested model and every
  // context fallback. A model entered as a list's fallback keeps the origin's list instead.
  std::vector<std::string> entered{std::string(model)};
  add(model);
  for (std::size_t i = 0; i < entered.size(); ++i) {
    auto it = table.find(entered[i]);
    if (it == table.end()) continue;
    for (const auto& f : it->second.fallbacks) add(f);
    // A context-window error may come from any model reached so far; its larger model is
    // entered. `out` grows while this loop runs over it (indices, not iterators).
    for (std::size_t j = 0; j < out.size(); ++j) {
      auto jt = table.find(out[j]);
      if (jt == table.end() || jt->second.context_fallback.empty()) continue;
      const std::string& next = jt->second.context_fallback;
      if (std::find(entered.begin(), entered.end(), next) != entered.end()) continue;
      entered.push_back(next);
      add(next);
    }
  }
  return out;
}

AttemptPlanner::AttemptPlanner(const FallbackTable* table, std::string_view model) : table_(table) {
  enter(model);
}

bool AttemptPlanner::seen(std::string_view m) const {
  return m == first_ || std::find(later_.begin(), later_.end(), m) != later_.end();
}

const std::vector<std::string>& AttemptPlanner::visited() const {
  visited_.clear();
  visited_.push_back(first_);
  visited_.insert(visited_.end(), later_.begin(), later_.end());
  return visited_;
}

void AttemptPlanner::enter(std::string_view m) {
  model_.assign(m);
  exclude_ = 0;
  // The constructor enters the requested model: it is kept apart from the later ones, so that a
  // request that never moves on allocates no list.
  if (entered_) {
    later_.emplace_back(m);
  } else {
    first_.assign(m);
    entered_ = true;
  }
  queue_.clear();
  next_ = 0;
  if (table_ == nullptr) return;
  if (auto it = table_->find(m); it != table_->end()) queue_ = it->second.fallbacks;
}

AttemptPlanner::Move AttemptPlanner::on_unavailable(bool only_exclusions) {
  // Pending chain entries come first: a fresh model beats one that just failed.
  while (next_ < queue_.size()) {
    std::string candidate = queue_[next_++];
    if (seen(candidate)) continue;
    // Keep the origin's remaining chain: entering a fallback must not replace it.
    std::vector<std::string> rest(queue_.begin() + static_cast<std::ptrdiff_t>(next_),
                                  queue_.end());
    model_ = std::move(candidate);
    exclude_ = 0;
    later_.push_back(model_);
    queue_ = std::move(rest);
    next_ = 0;
    return Move::kNextModel;
  }
  if (only_exclusions && exclude_ != 0) {
    exclude_ = 0;
    return Move::kSameModel;
  }
  return Move::kExhausted;
}

bool AttemptPlanner::has_pending_fallback() const {
  for (std::size_t i = next_; i < queue_.size(); ++i) {
    if (!seen(queue_[i])) return true;
  }
  return false;
}

void AttemptPlanner::on_failed(std::uint32_t index) {
  if (index < 64) exclude_ |= std::uint64_t{1} << index;
}

bool AttemptPlanner::on_context_overflow() {
  if (table_ == nullptr) return false;
  auto it = table_->find(model_);
  if (it == table_->end() || it->second.context_fallback.empty()) return false;
  const std::string target = it->second.context_fallback;
  if (seen(target)) return false;
  enter(target);
  return true;
}

}  // namespace bw::routing
