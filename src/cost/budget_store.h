#pragma once
// BudgetStore: where the gateway reserves, settles and releases spend. Two implementations:
//  - LocalBudgetStore: the in-process BudgetManager (one replica; its ledger rebuilds it);
//  - RedisBudgets: the counters shared by every replica in Redis (redis_budget.h), with the
//    local share as fallback when Redis is unreachable.
// The gateway holds one BudgetHold per request and never asks which store it talks to.
// Thread safety: every method may be called from any worker. Awaitables resume on the caller's
// executor. A hold is settled or released exactly once; destroying an active one releases it.
#include <boost/asio/awaitable.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "common/clock.h"
#include "cost/budget_manager.h"
#include "cost/redis_budget.h"

namespace bw::cost {

// One request's reservation, whichever store took it (move-only).
class BudgetHold {
 public:
  bool active() const;
  Micros amount() const;
  std::vector<std::string> budget_ids() const;

 private:
  friend class LocalBudgetStore;
  friend class RedisBudgets;
  std::variant<std::monostate, Reservation, RedisBudgetReservation> held_;
};

struct BudgetReserveResult {
  bool ok = false;
  BudgetRefusal refusal;  // meaningful when !ok
};

class BudgetStore {
 public:
  virtual ~BudgetStore() = default;
  // Reserves `amount_micro` against every listed budget, all or nothing, into `hold`.
  virtual boost::asio::awaitable<BudgetReserveResult> reserve(
      const std::vector<std::string>& budget_ids, Micros amount_micro, BudgetHold& hold,
      std::int64_t now_unix_ms, Nanos now) = 0;
  // Charges the actual cost and frees the rest of the hold; reports crossed alert thresholds.
  virtual boost::asio::awaitable<SettleOutcome> settle(BudgetHold& hold, Micros actual_micro,
                                                       std::int64_t now_unix_ms, Nanos now) = 0;
  // Gives the whole hold back (nothing was billed).
  virtual boost::asio::awaitable<void> release(BudgetHold& hold, Nanos now) = 0;
  // The cheaper model to use near a cap (no I/O).
  virtual std::optional<std::string> should_downgrade(const std::vector<std::string>& budget_ids,
                                                      std::string_view model, bool opt_out,
                                                      std::int64_t now_unix_ms) const = 0;
  // Utilisation per budget id, for metrics (no I/O).
  virtual std::vector<std::pair<std::string, double>> utilisation(
      std::int64_t now_unix_ms) const = 0;
  // True while the store runs on a fallback (Redis unreachable: budgets on the local share).
  virtual bool degraded() const { return false; }
  // False when should_downgrade() answers nothing whatever it is asked (no downgrade
  // configured): it is asked per request, so the caller skips it.
  bool may_downgrade() const { return may_downgrade_; }

 protected:
  BudgetStore() = default;
  explicit BudgetStore(bool may_downgrade) : may_downgrade_(may_downgrade) {}

 private:
  bool may_downgrade_ = true;
};

class LocalBudgetStore final : public BudgetStore {
 public:
  explicit LocalBudgetStore(BudgetManager& budgets)
      : BudgetStore(!budgets.options().downgrade.empty()), budgets_(budgets) {}
  boost::asio::awaitable<BudgetReserveResult> reserve(const std::vector<std::string>& budget_ids,
                                                      Micros amount_micro, BudgetHold& hold,
                                                      std::int64_t now_unix_ms, Nanos now) override;
  boost::asio::awaitable<SettleOutcome> settle(BudgetHold& hold, Micros actual_micro,
                                               std::int64_t now_unix_ms, Nanos now) override;
  boost::asio::awaitable<void> release(BudgetHold& hold, Nanos now) override;
  std::optional<std::string> should_downgrade(const std::vector<std::string>& budget_ids,
                                              std::string_view model, bool opt_out,
                                              std::int64_t now_unix_ms) const override;
  std::vector<std::pair<std::string, double>> utilisation(std::int64_t now_unix_ms) const override;

 private:
  BudgetManager& budgets_;
};

class RedisBudgets final : public BudgetStore {
 public:
  explicit RedisBudgets(std::shared_ptr<RedisBudgetStore> store) : store_(std::move(store)) {}
  boost::asio::awaitable<BudgetReserveResult> reserve(const std::vector<std::string>& budget_ids,
                                                      Micros amount_micro, BudgetHold& hold,
                                                      std::int64_t now_unix_ms, Nanos now) override;
  boost::asio::awaitable<SettleOutcome> settle(BudgetHold& hold, Micros actual_micro,
                                               std::int64_t now_unix_ms, Nanos now) override;
  boost::asio::awaitable<void> release(BudgetHold& hold, Nanos now) override;
  std::optional<std::string> should_downgrade(const std::vector<std::string>& budget_ids,
                                              std::string_view model, bool opt_out,
                                              std::int64_t now_unix_ms) const override;
  std::vector<std::pair<std::string, double>> utilisation(std::int64_t now_unix_ms) const override;
  bool degraded() const override { return store_->degraded(); }

 private:
  std::shared_ptr<RedisBudgetStore> store_;
};

}  // namespace bw::cost
