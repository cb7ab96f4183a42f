#pragma once
// BudgetManager: spend caps per key, per tenant and global, enforced by reserving a request's worst
// case before it is forwarded and settling the actual cost afterwards.
//
// Contract
//  - Invariant per budget, at every instant: spent + reserved <= cap. reserve() only adds when the
//    amount fits, so settled spend cannot exceed a cap as long as actual <= reserved (the gateway
//    enforces max_tokens upstream). If actual > reserved anyway, the actual is charged (money was
//    spent; hiding it would corrupt reports) and the excess is counted in `overshoot`.
//  - reserve() is all-or-nothing across the listed budgets. Budgets are taken one at a time, each
//    under its own mutex, and rolled back on the first refusal; a concurrent request may therefore
//    see a transient reservation that is rolled back a moment later and be refused. That errs on
//    the side of not spending, never of overspending.
//  - Spend belongs to the period in which the reservation was made. When a period rolls over,
//    spent restarts at 0 and outstanding reservations keep holding their headroom until settled.
//  - Unknown budget ids refuse (money never fails open).
//  - Thread safety: every method may be called from any thread. No method blocks on I/O.
//  - A Reservation is a move-only handle; destroying an unsettled one releases it, so an error
//    path cannot leak headroom. Settle or release each one exactly once.
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cost/money.h"
#include "cost/period.h"

namespace bw::cost {

// Conventional budget ids. The period is part of the id, so a scope can have a daily and a monthly
// budget at once and an id never changes period.
std::string global_budget_id(BudgetPeriod period);                           // "global/monthly"
std::string tenant_budget_id(std::string_view tenant, BudgetPeriod period);  // "tenant:acme/daily"
std::string key_budget_id(std::string_view key_id, BudgetPeriod period);     // "key:key_ab12/total"

struct BudgetSpec {
  std::string id;
  Micros cap_micro = 0;
  BudgetPeriod period = BudgetPeriod::kMonthly;
};

struct CostGuardOptions {
  // Utilisation ((spent + reserved) / cap) at which should_downgrade() starts answering.
  double soft_threshold = 0.9;
  // Requested model -> cheaper model used above the soft threshold. One hop, not chained.
  std::unordered_map<std::string, std::string> downgrade;
  // Fractions of the cap at which an alert fires, once per budget per period per threshold.
  std::vector<double> alert_thresholds{0.5, 0.8, 0.9, 1.0};
};

// An alert produced by settle() when settled spend crosses a threshold. Hand it to the
// WebhookSender (alerts.h); never send from the request path.
struct BudgetAlert {
  std::string budget_id;
  double threshold = 0;
  Micros spent_micro = 0;
  Micros cap_micro = 0;
  std::int64_t period_end_unix_ms = 0;
};

namespace detail {
struct BudgetState;
}

class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& other) noexcept;
  Reservation& operator=(Reservation&& other) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation();

  Micros amount() const { return amount_; }
  bool active() const { return active_; }
  // The earliest end of the periods the reservation was taken in (kForeverUnixMs: none ends).
  std::int64_t valid_until() const;
  // Ids of the budgets holding this reservation (for the ledger row).
  std::vector<std::string> budget_ids() const;

 private:
  friend class BudgetManager;
  struct Entry {
    std::shared_ptr<detail::BudgetState> state;
    std::int64_t period_start = 0;
    std::int64_t period_end = 0;
  };
  void release_now();
  std::vector<Entry> entries_;
  Micros amount_ = 0;
  bool active_ = false;
};

struct BudgetRefusal {
  enum class Reason { kOverCap, kUnknownBudget };
  Reason reason = Reason::kOverCap;
  std::string budget_id;
  std::int64_t reset_unix_ms = 0;  // when the refusing budget resets (kForeverUnixMs: never)
  Micros cap_micro = 0;
  Micros committed_micro = 0;  // spent + reserved at the time of refusal
};

struct ReserveResult {
  std::optional<Reservation> reservation;  // set on success
  BudgetRefusal refusal;                   // meaningful when !ok()
  bool ok() const { return reservation.has_value(); }
};

struct SettleOutcome {
  bool settled = false;  // false if the reservation was not active (double settle)
  Micros overshoot_micro = 0;
  std::vector<BudgetAlert> alerts;
};

struct BudgetSnapshot {
  std::string id;
  BudgetPeriod period = BudgetPeriod::kMonthly;
  Micros cap_micro = 0;
  Micros spent_micro = 0;
  Micros reserved_micro = 0;
  Micros overshoot_micro = 0;  // cumulative since process start
  std::int64_t period_start_unix_ms = 0;
  std::int64_t reset_unix_ms = 0;
  double utilisation = 0;  // (spent + reserved) / cap; 1 when cap is 0
};

class BudgetManager {
 public:
  explicit BudgetManager(CostGuardOptions options = {});
  ~BudgetManager();
  BudgetManager(const BudgetManager&) = delete;
  BudgetManager& operator=(const BudgetManager&) = delete;

  // Adds a budget or updates its cap (config reload keeps counters). Returns false if the id exists
  // with a different period (make it a new id instead) or the cap is negative.
  bool upsert_budget(const BudgetSpec& spec);
  bool remove_budget(std::string_view id);
  bool has_budget(std::string_view id) const;
  std::vector<std::string> budget_ids() const;

  ReserveResult reserve(const std::vector<std::string>& budget_ids, Micros amount_micro,
                        std::int64_t now_unix_ms);
  // Charges `actual_micro` (negative is treated as 0), releases the reservation and reports
  // overshoot and crossed alert thresholds.
  SettleOutcome settle(Reservation& reservation, Micros actual_micro, std::int64_t now_unix_ms);
  // Gives the whole reservation back (refusal upstream, error before any token was billed).
  void release(Reservation& reservation);
  // Partial settlement of a long-lived hold (a budget lease, lease.h): charges `actual_micro`
  // and shrinks the hold by as much (by all of it when less is held); the hold stays active.
  // Reports crossed alert thresholds; overshoot is the caller's to judge (it knows the share).
  SettleOutcome settle_part(Reservation& reservation, Micros actual_micro,
                            std::int64_t now_unix_ms);
  // The smallest cap - (spent + reserved) over the listed budgets (0 when one is unknown or
  // full): what one more reservation could take at most.
  Micros headroom(const std::vector<std::string>& budget_ids, std::int64_t now_unix_ms) const;

  // The cheaper model to use, if any listed budget is at or above the soft threshold and the
  // model has a downgrade target. nullopt when opted out (the key prefers refusal at the cap).
  std::optional<std::string> should_downgrade(const std::vector<std::string>& budget_ids,
                                              std::string_view model, bool opt_out,
                                              std::int64_t now_unix_ms) const;

  // Recovery from the ledger (recovery.h). Both bypass the cap check: the money is already
  // committed. Ids that are not configured are skipped.
  void restore_spent(const std::vector<std::string>& budget_ids, Micros amount_micro,
                     std::int64_t created_unix_ms, std::int64_t now_unix_ms);
  Reservation restore_open(const std::vector<std::string>& budget_ids, Micros amount_micro,
                           std::int64_t created_unix_ms, std::int64_t now_unix_ms);

  std::optional<BudgetSnapshot> snapshot(std::string_view id, std::int64_t now_unix_ms) const;
  std::vector<BudgetSnapshot> snapshots(std::int64_t now_unix_ms) const;
  const CostGuardOptions& options() const { return options_; }

 private:
  std::shared_ptr<detail::BudgetState> find(std::string_view id) const;
  std::vector<std::shared_ptr<detail::BudgetState>> find_all(
      const std::vector<std::string>& ids) const;

  CostGuardOptions options_;
  std::vector<std::int64_t> threshold_ppm_;  // alert thresholds in parts per million, ascending
  std::int64_t soft_ppm_ = 900'000;
  mutable std::shared_mutex map_mu_;
  std::unordered_map<std::string, std::shared_ptr<detail::BudgetState>> budgets_;
};

}  // namespace bw::cost
