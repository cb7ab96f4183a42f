#pragma once
// Fallback chains. Each model may name an ordered list of other models to use when none of its
// own deployments can serve (all open, cooling, at capacity, or already failed for this request),
// and one larger-context model to move to on a context-window error.
// Semantics: a model's list is its whole chain (lists of the fallbacks are not followed), so two
// models may back each other up. The context fallback is followed transitively (each overflow
// moves one step up), and the chain continues with that model's own list. A planner never visits
// a model twice, so even an unvalidated table terminates.
// Thread safety: FallbackTable is immutable after construction; an AttemptPlanner belongs to one
// request.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/string_hash.h"

namespace bw::routing {

struct FallbackEntry {
  std::vector<std::string> fallbacks;  // ordered; tried after the model itself
  std::string context_fallback;        // larger-context model; empty = none
};

// Every known model has an entry (possibly empty).
using FallbackTable = std::unordered_map<std::string, FallbackEntry, StringHash, std::equal_to<>>;

// A config error message, or nullopt when the table is valid: unknown model in a list, a model
// naming itself, a model listed twice, or a cycle of context fallbacks (A -> B -> A).
std::optional<std::string> validate_fallbacks(const FallbackTable& table);

// Every model a request for `model` may be answered by, `model` first: its fallbacks, and from
// any of those a context fallback, which brings its own list (the closure of what an
// AttemptPlanner may enter). A superset of what one request visits: the planner's skipping of
// models already seen only removes. Unknown names are kept (the caller decides about them).
std::vector<std::string> models_that_may_answer(const FallbackTable& table, std::string_view model);

// Decides, for one request, which model to pick from next and which of its deployments to avoid.
// The caller picks (e.g. Router::pick) and reports back; see RequestPlan for the full loop.
class AttemptPlanner {
 public:
  AttemptPlanner(const FallbackTable* table, std::string_view model);

  const std::string& model() const { return model_; }
  // Deployments of model() already failed in this request (bit i = deployment index i).
  std::uint64_t exclude_mask() const { return exclude_; }

  enum class Move : std::uint8_t {
    kSameModel,  // only this request's exclusions blocked it and nothing else is left: retry it
    kNextModel,  // moved to the next fallback; pick again
    kExhausted,  // nothing left to try
  };
  // The pick for model() found nothing. `only_exclusions` = every deployment was excluded.
  Move on_unavailable(bool only_exclusions);
  // An attempt on deployment `index` of model() failed in a retryable way: avoid it next time.
  void on_failed(std::uint32_t index);
  // The request does not fit model()'s context window: switch to its context fallback if any.
  bool on_context_overflow();
  // Whether a chain entry not visited yet is still pending (on_unavailable would move to it).
  bool has_pending_fallback() const;

  // Models in the order they were entered.
  const std::vector<std::string>& visited() const;

 private:
  bool seen(std::string_view m) const;
  void enter(std::string_view m);

  const FallbackTable* table_;
  std::string model_;
  std::uint64_t exclude_ = 0;
  std::vector<std::string> queue_;  // remaining chain, in order
  std::size_t next_ = 0;
  std::string first_;               // the model entered first (the requested one)
  std::vector<std::string> later_;  // the models entered after it
  bool entered_ = false;
  mutable std::vector<std::string> visited_;  // visited()'s answer
};

}  // namespace bw::routing
