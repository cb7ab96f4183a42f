#include "cost/budget_store.h"

namespace bw::cost {

namespace asio = boost::asio;

bool BudgetHold::active() const {
  if (auto* l = std::get_if<Reservation>(&held_)) return l->active();
  if (auto* r = std::get_if<RedisBudgetReservation>(&held_)) return r->active();
  return false;
}

Micros BudgetHold::amount() const {
  if (auto* l = std::get_if<Reservation>(&held_)) return l->amount();
  if (auto* r = std::get_if<RedisBudgetReservation>(&held_)) return r->amount();
  return 0;
}

std::vector<std::string> BudgetHold::budget_ids() const {
  if (auto* l = std::get_if<Reservation>(&held_)) return l->budget_ids();
  if (auto* r = std::get_if<RedisBudgetReservation>(&held_)) return r->budget_ids();
  return {};
}

asio::awaitable<BudgetReserveResult> LocalBudgetStore::reserve(
    const std::vector<std::string>& budget_ids, Micros amount_micro, BudgetHold& hold,
    std::int64_t now_unix_ms, Nanos) {
  auto res = budgets_.reserve(budget_ids, amount_micro, now_unix_ms);
  BudgetReserveResult out;
  out.ok = res.ok();
  if (out.ok) {
    hold.held_ = std::move(*res.reservation);
  } else {
    out.refusal = std::move(res.refusal);
  }
  co_return out;
}

asio::awaitable<SettleOutcome> LocalBudgetStore::settle(BudgetHold& hold, Micros actual_micro,
                                                        std::int64_t now_unix_ms, Nanos) {
  auto* r = std::get_if<Reservation>(&hold.held_);
  if (!r) co_return SettleOutcome{};
  co_return budgets_.settle(*r, actual_micro, now_unix_ms);
}

asio::awaitable<void> LocalBudgetStore::release(BudgetHold& hold, Nanos) {
  if (auto* r = std::get_if<Reservation>(&hold.held_)) budgets_.release(*r);
  co_return;
}

std::optional<std::string> LocalBudgetStore::should_downgrade(
    const std::vector<std::string>& budget_ids, std::string_view model, bool opt_out,
    std::int64_t now_unix_ms) const {
  return budgets_.should_downgrade(budget_ids, model, opt_out, now_unix_ms);
}

std::vector<std::pair<std::string, double>> LocalBudgetStore::utilisation(
    std::int64_t now_unix_ms) const {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& b : budgets_.snapshots(now_unix_ms)) out.emplace_back(b.id, b.utilisation);
  return out;
}

asio::awaitable<BudgetReserveResult> RedisBudgets::reserve(
    const std::vector<std::string>& budget_ids, Micros amount_micro, BudgetHold& hold,
    std::int64_t now_unix_ms, Nanos now) {
  auto res = co_await store_->reserve(budget_ids, amount_micro, now_unix_ms, now);
  BudgetReserveResult out;
  out.ok = res.ok();
  if (out.ok) {
    hold.held_ = std::move(*res.reservation);
  } else {
    out.refusal = std::move(res.refusal);
  }
  co_return out;
}

asio::awaitable<SettleOutcome> RedisBudgets::settle(BudgetHold& hold, Micros actual_micro,
                                                    std::int64_t now_unix_ms, Nanos now) {
  auto* r = std::get_if<RedisBudgetReservation>(&hold.held_);
  if (!r) co_return SettleOutcome{};
  co_return co_await store_->settle(*r, actual_micro, now_unix_ms, now);
}

asio::awaitable<void> RedisBudgets::release(BudgetHold& hold, Nanos now) {
  if (auto* r = std::get_if<RedisBudgetReservation>(&hold.held_)) {
    co_await store_->release(*r, now);
  }
}

std::optional<std::string> RedisBudgets::should_downgrade(
    const std::vector<std::string>& budget_ids, std::string_view model, bool opt_out,
    std::int64_t now_unix_ms) const {
  return store_->should_downgrade(budget_ids, model, opt_out, now_unix_ms);
}

std::vector<std::pair<std::string, double>> RedisBudgets::utilisation(
    std::int64_t now_unix_ms) const {
  return store_->utilisation(now_unix_ms);
}

}  // namespace bw::cost
