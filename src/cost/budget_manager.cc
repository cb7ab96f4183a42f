#include "cost/budget_manager.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include "common/light_mutex.h"

namespace bw::cost {

namespace detail {

struct BudgetState {
  BudgetState(std::string id_in, BudgetPeriod period_in, Micros cap_in)
      : id(std::move(id_in)), period(period_in), cap(cap_in) {}

  // Moves to the period containing `now`. Never moves backwards: callers on different threads may
  // pass slightly different clocks, and a late `now` simply counts in the current period.
  void roll(std::int64_t now_unix_ms) {
    if (now_unix_ms < period_end && initialised) return;
    const PeriodWindow w = period_window(period, now_unix_ms);
    if (initialised && w.start_unix_ms <= period_start) return;
    initialised = true;
    period_start = w.start_unix_ms;
    period_end = w.end_unix_ms;
    spent = 0;
    fired_mask = 0;
  }
  Micros committed() const { return sat_add(spent, reserved); }

  const std::string id;
  const BudgetPeriod period;
  // Taken once per budget by every reservation and settlement, for a few loads and stores.
  mutable LightMutex mu;
  // Guarded by mu.
  Micros cap;
  bool initialised = false;
  std::int64_t period_start = 0;
  std::int64_t period_end = 0;
  Micros spent = 0;
  Micros reserved = 0;
  Micros overshoot = 0;
  std::uint64_t fired_mask = 0;
  // The least spend that reaches a threshold not fired yet (kMaxMicros: none can), computed for
  // `alert_cap` and `alert_mask`; a settle that stays below it checks no threshold.
  Micros alert_at = 0;
  Micros alert_cap = -1;  // -1: not computed yet
  std::uint64_t alert_mask = 0;
};

}  // namespace detail

using detail::BudgetState;

namespace {

std::int64_t to_ppm(double fraction) {
  if (!(fraction == fraction) || fraction < 0) return 0;
  if (fraction > 1e6) return std::int64_t{1'000'000} * 1'000'000;
  return std::llround(fraction * 1e6);
}

// spent / cap >= ppm / 1e6, exactly.
bool at_or_above(Micros amount, Micros cap, std::int64_t ppm) {
  return static_cast<__int128>(amount) * 1'000'000 >= static_cast<__int128>(cap) * ppm;
}

// The least amount that is at_or_above(amount, cap, ppm): ceil(cap * ppm / 1e6), at most
// kMaxMicros (cap > 0, ppm >= 0).
Micros least_at_or_above(Micros cap, std::int64_t ppm) {
  const __int128 product = static_cast<__int128>(cap) * ppm;
  const __int128 least = (product + 999'999) / 1'000'000;
  return least >= kMaxMicros ? kMaxMicros : static_cast<Micros>(least);
}

// The least spend that fires a threshold not fired yet (under s.mu; cap > 0).
void compute_alert_at(BudgetState& s, const std::vector<std::int64_t>& ppm) {
  Micros at = kMaxMicros;
  for (std::size_t i = 0; i < ppm.size(); ++i) {
    if ((s.fired_mask & (std::uint64_t{1} << i)) == 0) {
      at = std::min(at, least_at_or_above(s.cap, ppm[i]));
    }
  }
  // kMaxMicros itself reaches a threshold whose least amount is kMaxMicros: the loop decides.
  s.alert_at = at;
  s.alert_cap = s.cap;
  s.alert_mask = s.fired_mask;
}

// Whether fire_crossed() has anything to do for `s` (under s.mu): false while the spend stays
// below the least that reaches an unfired threshold, as computed for the current cap and fired
// set. Inline, so that the common settle makes no call for it.
bool may_fire(const BudgetState& s) {
  return s.cap > 0 &&
         (s.alert_cap != s.cap || s.alert_mask != s.fired_mask || s.spent >= s.alert_at);
}

// The alert thresholds `s.spent` has reached, each once per period (under s.mu). Below the
// least spend that reaches an unfired threshold (kept while the cap and the fired set stay the
// same), nothing fires: one comparison instead of one 128-bit product per threshold.
// Out of line: a settle calls it only when may_fire() says so (rarely, under a high cap).
[[gnu::noinline]] void fire_crossed(BudgetState& s, const std::vector<std::int64_t>& ppm,
                                    const std::vector<double>& thresholds, SettleOutcome& out) {
  if (s.cap <= 0) return;
  if (s.alert_cap != s.cap || s.alert_mask != s.fired_mask) compute_alert_at(s, ppm);
  if (s.spent < s.alert_at) return;
  for (std::size_t i = 0; i < ppm.size(); ++i) {
    const std::uint64_t bit = std::uint64_t{1} << i;
    if ((s.fired_mask & bit) == 0 && at_or_above(s.spent, s.cap, ppm[i])) {
      s.fired_mask |= bit;
      out.alerts.push_back({s.id, thresholds[i], s.spent, s.cap, s.period_end});
    }
  }
}

std::string scoped_id(std::string_view prefix, std::string_view owner, BudgetPeriod period) {
  std::string id(prefix);
  id.append(owner);
  id.push_back('/');
  id.append(to_string(period));
  return id;
}

}  // namespace

std::string global_budget_id(BudgetPeriod period) {
  return scoped_id("global", "", period);
}
std::string tenant_budget_id(std::string_view tenant, BudgetPeriod period) {
  return scoped_id("tenant:", tenant, period);
}
std::string key_budget_id(std::string_view key_id, BudgetPeriod period) {
  return scoped_id("key:", key_id, period);
}

// --- Reservation ---------------------------------------------------------------------------------

Reservation::Reservation(Reservation&& other) noexcept
    : entries_(std::move(other.entries_)), amount_(other.amount_), active_(other.active_) {
  other.active_ = false;
  other.entries_.clear();
}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    release_now();
    entries_ = std::move(other.entries_);
    amount_ = other.amount_;
    active_ = other.active_;
    other.active_ = false;
    other.entries_.clear();
  }
  return *this;
}

Reservation::~Reservation() {
  release_now();
}

std::vector<std::string> Reservation::budget_ids() const {
  std::vector<std::string> ids;
  ids.reserve(entries_.size());
  for (const auto& e : entries_) ids.push_back(e.state->id);
  return ids;
}

std::int64_t Reservation::valid_until() const {
  std::int64_t end = kForeverUnixMs;
  for (const auto& e : entries_) end = std::min(end, e.period_end);
  return end;
}

void Reservation::release_now() {
  if (!active_) return;
  active_ = false;
  for (auto& e : entries_) {
    std::lock_guard lock(e.state->mu);
    e.state->reserved = std::max<Micros>(sat_sub(e.state->reserved, amount_), 0);
  }
}

// --- BudgetManager -------------------------------------------------------------------------------

BudgetManager::BudgetManager(CostGuardOptions options) : options_(std::move(options)) {
  // The fired set is a 64-bit mask; more thresholds than that are not meaningful.
  if (options_.alert_thresholds.size() > 64) options_.alert_thresholds.resize(64);
  std::sort(options_.alert_thresholds.begin(), options_.alert_thresholds.end());
  for (double t : options_.alert_thresholds) threshold_ppm_.push_back(to_ppm(t));
  soft_ppm_ = to_ppm(options_.soft_threshold);
}

BudgetManager::~BudgetManager() = default;

bool BudgetManager::upsert_budget(const BudgetSpec& spec) {
  if (spec.cap_micro < 0 || spec.id.empty()) return false;
  std::unique_lock lock(map_mu_);
  auto it = budgets_.find(spec.id);
  if (it == budgets_.end()) {
    budgets_.emplace(spec.id, std::make_shared<BudgetState>(spec.id, spec.period, spec.cap_micro));
    return true;
  }
  if (it->second->period != spec.period) return false;
  std::lock_guard state_lock(it->second->mu);
  it->second->cap = spec.cap_micro;
  return true;
}

bool BudgetManager::remove_budget(std::string_view id) {
  std::unique_lock lock(map_mu_);
  return budgets_.erase(std::string(id)) > 0;
}

bool BudgetManager::has_budget(std::string_view id) const {
  return find(id) != nullptr;
}

std::vector<std::string> BudgetManager::budget_ids() const {
  std::shared_lock lock(map_mu_);
  std::vector<std::string> ids;
  ids.reserve(budgets_.size());
  for (const auto& [id, state] : budgets_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::shared_ptr<BudgetState> BudgetManager::find(std::string_view id) const {
  std::shared_lock lock(map_mu_);
  auto it = budgets_.find(std::string(id));
  return it == budgets_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<BudgetState>> BudgetManager::find_all(
    const std::vector<std::string>& ids) const {
  std::vector<std::shared_ptr<BudgetState>> out;
  out.reserve(ids.size());
  std::shared_lock lock(map_mu_);
  for (const auto& id : ids) {
    auto it = budgets_.find(id);
    out.push_back(it == budgets_.end() ? nullptr : it->second);
  }
  return out;
}

ReserveResult BudgetManager::reserve(const std::vector<std::string>& budget_ids,
                                     Micros amount_micro, std::int64_t now_unix_ms) {
  ReserveResult result;
  amount_micro = std::max<Micros>(amount_micro, 0);
  std::vector<std::shared_ptr<BudgetState>> states = find_all(budget_ids);
  for (std::size_t i = 0; i < states.size(); ++i) {
    if (!states[i]) {
      result.refusal.reason = BudgetRefusal::Reason::kUnknownBudget;
      result.refusal.budget_id = budget_ids[i];
      result.refusal.reset_unix_ms = kForeverUnixMs;
      return result;
    }
  }
  // A budget listed twice must be charged once.
  std::sort(states.begin(), states.end());
  states.erase(std::unique(states.begin(), states.end()), states.end());

  Reservation r;
  r.amount_ = amount_micro;
  r.active_ = true;
  r.entries_.reserve(states.size());
  for (auto& state : states) {
    std::lock_guard lock(state->mu);
    state->roll(now_unix_ms);
    const Micros committed = state->committed();
    Micros after = 0;
    // An overflowing sum is above any cap; saturating it could make it "fit" a cap of kMaxMicros.
    if (__builtin_add_overflow(committed, amount_micro, &after) || after > state->cap) {
      result.refusal.reason = BudgetRefusal::Reason::kOverCap;
      result.refusal.budget_id = state->id;
      result.refusal.reset_unix_ms = state->period_end;
      result.refusal.cap_micro = state->cap;
      result.refusal.committed_micro = committed;
      // `r` goes out of scope and gives back what it holds so far (lock on another state only).
      return result;
    }
    state->reserved = sat_add(state->reserved, amount_micro);
    r.entries_.push_back({state, state->period_start, state->period_end});
  }
  result.reservation.emplace(std::move(r));
  return result;
}

SettleOutcome BudgetManager::settle(Reservation& reservation, Micros actual_micro,
                                    std::int64_t now_unix_ms) {
  SettleOutcome out;
  if (!reservation.active_) return out;
  reservation.active_ = false;
  out.settled = true;
  actual_micro = std::max<Micros>(actual_micro, 0);
  if (actual_micro > reservation.amount_) out.overshoot_micro = actual_micro - reservation.amount_;
  for (auto& e : reservation.entries_) {
    BudgetState& s = *e.state;
    std::lock_guard lock(s.mu);
    s.roll(now_unix_ms);
    s.reserved = std::max<Micros>(sat_sub(s.reserved, reservation.amount_), 0);
    s.overshoot = sat_add(s.overshoot, out.overshoot_micro);
    // Spend of a request that began in an earlier period belongs to that period (as in the
    // ledger, which keys on created_unix_ms); the current period's counter must not see it.
    if (e.period_start != s.period_start) continue;
    s.spent = sat_add(s.spent, actual_micro);
    if (may_fire(s)) fire_crossed(s, threshold_ppm_, options_.alert_thresholds, out);
  }
  reservation.entries_.clear();
  return out;
}

SettleOutcome BudgetManager::settle_part(Reservation& reservation, Micros actual_micro,
                                         std::int64_t now_unix_ms) {
  SettleOutcome out;
  if (!reservation.active_) return out;
  out.settled = true;
  actual_micro = std::max<Micros>(actual_micro, 0);
  const Micros shrink = std::min(actual_micro, reservation.amount_);
  reservation.amount_ -= shrink;
  for (auto& e : reservation.entries_) {
    BudgetState& s = *e.state;
    std::lock_guard lock(s.mu);
    s.roll(now_unix_ms);
    s.reserved = std::max<Micros>(sat_sub(s.reserved, shrink), 0);
    if (actual_micro > shrink) s.overshoot = sat_add(s.overshoot, actual_micro - shrink);
    if (e.period_start != s.period_start) continue;  // as in settle(): the old period's spend
    s.spent = sat_add(s.spent, actual_micro);
    if (may_fire(s)) fire_crossed(s, threshold_ppm_, options_.alert_thresholds, out);
  }
  return out;
}

Micros BudgetManager::headroom(const std::vector<std::string>& budget_ids,
                               std::int64_t now_unix_ms) const {
  Micros room = kMaxMicros;
  for (auto& state : find_all(budget_ids)) {
    if (!state) return 0;
    std::lock_guard lock(state->mu);
    state->roll(now_unix_ms);
    room = std::min(room, std::max<Micros>(sat_sub(state->cap, state->committed()), 0));
  }
  return budget_ids.empty() ? 0 : room;
}

void BudgetManager::release(Reservation& reservation) {
  reservation.release_now();
  reservation.entries_.clear();
}

std::optional<std::string> BudgetManager::should_downgrade(
    const std::vector<std::string>& budget_ids, std::string_view model, bool opt_out,
    std::int64_t now_unix_ms) const {
  if (opt_out || options_.downgrade.empty()) return std::nullopt;  // no model string per request
  auto target = options_.downgrade.find(std::string(model));
  if (target == options_.downgrade.end() || target->second == model) return std::nullopt;
  for (auto& state : find_all(budget_ids)) {
    if (!state) continue;
    std::lock_guard lock(state->mu);
    state->roll(now_unix_ms);
    if (state->cap <= 0 || at_or_above(state->committed(), state->cap, soft_ppm_)) {
      return target->second;
    }
  }
  return std::nullopt;
}

void BudgetManager::restore_spent(const std::vector<std::string>& budget_ids, Micros amount_micro,
                                  std::int64_t created_unix_ms, std::int64_t now_unix_ms) {
  amount_micro = std::max<Micros>(amount_micro, 0);
  for (auto& state : find_all(budget_ids)) {
    if (!state) continue;
    std::lock_guard lock(state->mu);
    state->roll(now_unix_ms);
    if (created_unix_ms < state->period_start || created_unix_ms >= state->period_end) continue;
    state->spent = sat_add(state->spent, amount_micro);
    // Thresholds already crossed before the restart were (or should have been) alerted then.
    if (state->cap <= 0) continue;
    for (std::size_t i = 0; i < threshold_ppm_.size(); ++i) {
      if (at_or_above(state->spent, state->cap, threshold_ppm_[i])) {
        state->fired_mask |= std::uint64_t{1} << i;
      }
    }
  }
}

Reservation BudgetManager::restore_open(const std::vector<std::string>& budget_ids,
                                        Micros amount_micro, std::int64_t created_unix_ms,
                                        std::int64_t now_unix_ms) {
  Reservation r;
  r.amount_ = std::max<Micros>(amount_micro, 0);
  r.active_ = true;
  auto states = find_all(budget_ids);
  std::sort(states.begin(), states.end());
  states.erase(std::unique(states.begin(), states.end()), states.end());
  for (auto& state : states) {
    if (!state) continue;
    std::lock_guard lock(state->mu);
    state->roll(now_unix_ms);
    state->reserved = sat_add(state->reserved, r.amount_);
    const PeriodWindow w = period_window(state->period, created_unix_ms);
    r.entries_.push_back({state, w.start_unix_ms, w.end_unix_ms});
  }
  return r;
}

std::optional<BudgetSnapshot> BudgetManager::snapshot(std::string_view id,
                                                      std::int64_t now_unix_ms) const {
  auto state = find(id);
  if (!state) return std::nullopt;
  std::lock_guard lock(state->mu);
  state->roll(now_unix_ms);
  BudgetSnapshot s;
  s.id = state->id;
  s.period = state->period;
  s.cap_micro = state->cap;
  s.spent_micro = state->spent;
  s.reserved_micro = state->reserved;
  s.overshoot_micro = state->overshoot;
  s.period_start_unix_ms = state->period_start;
  s.reset_unix_ms = state->period_end;
  s.utilisation = state->cap > 0
                      ? static_cast<double>(state->committed()) / static_cast<double>(state->cap)
                      : 1.0;
  return s;
}

std::vector<BudgetSnapshot> BudgetManager::snapshots(std::int64_t now_unix_ms) const {
  std::vector<BudgetSnapshot> out;
  for (const auto& id : budget_ids()) {
    if (auto s = snapshot(id, now_unix_ms)) out.push_back(std::move(*s));
  }
  return out;
}

}  // namespace bw::cost
