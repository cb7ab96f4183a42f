#include "cost/lease.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <utility>

namespace bw::cost {

namespace detail {

struct Lease {
  std::string id;
  std::string set_key;
  Reservation hold;              // in the BudgetManager: the lease row's reserved amount
  Micros claimed = 0;            // shares of the covered requests in flight
  int in_flight = 0;             // covered requests not yet settled or released
  bool retired = false;          // takes no new request (replaced, or its periods ended)
  bool closed = false;           // its row is closed (or it is stuck)
  std::int64_t quiet_since = 0;  // when in_flight last went to 0
  std::int64_t valid_until = kForeverUnixMs;
  // A covered row's commit failed (set by the ledger's writer thread, or by commit_failed()).
  std::atomic<bool> commit_failed{false};
  // Covered rows queued with the book's own callback whose callback has not run yet. That
  // callback refers to the lease by a bare pointer (no allocation for it, no count per row); the
  // lease outlives it because its close row, queued after every covered row of the lease and
  // answered in queue order, holds the lease until its own callback is gone; a lease that never
  // closes is held by the book, and by kept_leases() once the book is gone.
  std::atomic<int> rows_pending{0};

  Micros free() const { return std::max<Micros>(hold.amount() - claimed, 0); }
  // A lease serves only inside the periods its hold was taken in: spend belongs to the period a
  // reservation was made in, and a covered row is dated now. One whose covered row was not
  // committed serves no more: the next request waits for a commit of its own.
  bool serves(std::int64_t now_unix_ms) const {
    return now_unix_ms < valid_until && !commit_failed.load(std::memory_order_relaxed);
  }
};

struct LeaseSetState {
  bool listed = true;              // in the book's sets_ (a LeaseSet's kept state is current)
  std::shared_ptr<Lease> current;  // the lease new requests take from, if any
  int plain = 0;                   // requests of the set in flight on the per-request path
  bool opening = false;            // one of them is opening a lease
  // Refused requests waiting for that lease (wait_for_open): run when it is installed or failed.
  std::vector<std::function<void()>> waiters;
};

}  // namespace detail

using detail::Lease;
using detail::LeaseSetState;

namespace {

// Leases whose covered rows' callbacks had not run when their book went (a ledger that outlives
// its book): kept reachable, never freed, so that those callbacks find them. The list itself is
// never destroyed either.
std::mutex kept_mu;
std::vector<std::shared_ptr<Lease>>& kept_leases() {  // guarded by kept_mu
  static auto* kept = new std::vector<std::shared_ptr<Lease>>;
  return *kept;
}

}  // namespace

std::string lease_set_key(const std::vector<std::string>& budgets, std::string_view key_id,
                          std::string_view tenant_id) {
  std::string k;
  for (const auto& b : budgets) {
    k.append(b);
    k.push_back('\n');
  }
  k.push_back('\x1f');
  k.append(key_id);
  k.push_back('\x1f');
  k.append(tenant_id);
  return k;
}

std::size_t lease_set_hash(std::string_view key) {
  return std::hash<std::string_view>{}(key);
}

// --- LeaseClaim ----------------------------------------------------------------------------------

LeaseClaim::LeaseClaim(LeaseClaim&& other) noexcept
    : book_(other.book_), lease_(std::move(other.lease_)), amount_(other.amount_) {
  other.lease_.reset();
  other.amount_ = 0;
}

LeaseClaim& LeaseClaim::operator=(LeaseClaim&& other) noexcept {
  if (this != &other) {
    if (lease_ && book_) book_->release(*this, 0);
    book_ = other.book_;
    lease_ = std::move(other.lease_);
    amount_ = other.amount_;
    other.lease_.reset();
    other.amount_ = 0;
  }
  return *this;
}

LeaseClaim::~LeaseClaim() {
  if (lease_ && book_) book_->release(*this, 0);
}

const std::string& LeaseClaim::lease_id() const {
  static const std::string kNone;
  return lease_ ? lease_->id : kNone;
}

// --- LeaseBook -----------------------------------------------------------------------------------

namespace {

// Lease ids are "lease:" and 9 characters: 15 in all, the most a std::string keeps inline, so
// that copying one into each covered row allocates nothing. The 9 characters are a 54-bit number
// in base 64 (URL-safe alphabet); a book counts up from a random start, so its own ids never
// repeat, and two books' (two processes sharing a ledger, or a restart) overlap only when their
// random starts fall within as many ids of each other as they open (about n / 2^53 for n leases).
constexpr int kLeaseIdDigits = 9;
constexpr std::uint64_t kLeaseIdMask = (std::uint64_t{1} << (6 * kLeaseIdDigits)) - 1;

std::uint64_t random_start() {
  std::random_device rd;
  return ((static_cast<std::uint64_t>(rd()) << 32) ^ rd()) & kLeaseIdMask;
}

std::string lease_id_text(std::uint64_t n) {
  static constexpr char kDigits[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string id = "lease:";
  id.resize(id.size() + kLeaseIdDigits);
  n &= kLeaseIdMask;
  for (int i = kLeaseIdDigits - 1; i >= 0; --i) {
    id[6 + static_cast<std::size_t>(i)] = kDigits[n & 63];
    n >>= 6;
  }
  return id;
}

std::uint64_t next_book_id() {
  static std::atomic<std::uint64_t> last{0};
  return last.fetch_add(1, std::memory_order_relaxed) + 1;
}

}  // namespace

LeaseBook::LeaseBook(BudgetManager& budgets, Ledger& ledger, LeaseOptions options)
    : budgets_(budgets),
      ledger_(ledger),
      options_(std::move(options)),
      id_(next_book_id()),
      next_id_(random_start()) {}

// A graceful stop closes the quiet leases, so that a restart does not find their rows open and
// hold them until reconciled. One with requests in flight stays open: it still covers them.
LeaseBook::~LeaseBook() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Lease>> quiet;
  for (const auto& [key, st] : sets_) {
    const auto& lease = st->current;
    if (lease && !lease->closed && lease->in_flight == 0) quiet.push_back(lease);
  }
  for (const auto& lease : quiet) close(lease, lease->quiet_since);
  // Leases the book still holds whose covered rows are queued (their callbacks point at them).
  std::vector<std::shared_ptr<Lease>> pending;
  const auto keep_if_pending = [&pending](const std::shared_ptr<Lease>& lease) {
    if (lease && lease->rows_pending.load(std::memory_order_acquire) > 0) pending.push_back(lease);
  };
  for (const auto& [key, st] : sets_) keep_if_pending(st->current);
  for (const auto& lease : stuck_) keep_if_pending(lease);
  if (!pending.empty()) {
    std::lock_guard kept(kept_mu);
    for (auto& lease : pending) kept_leases().push_back(std::move(lease));
  }
  // The sets' states go with the book, those a LeaseSet still keeps too: what they hold (a lease
  // and its budget hold, waiters) is let go now, as if they were freed.
  for (const auto& [key, st] : sets_) {
    if (!st) continue;
    st->listed = false;
    st->current.reset();
    st->waiters.clear();
  }
}

std::string LeaseBook::next_lease_id() {
  std::lock_guard lock(mu_);
  return lease_id_text(next_id_++);
}

LeaseSetState& LeaseBook::state_of(const LeaseSet& set) {
  if (set.state_book == id_ && set.state && set.state->listed) return *set.state;
  const HashedKey k{set.key, set.hash != 0 ? set.hash : lease_set_hash(set.key)};
  auto it = sets_.find(k);
  if (it == sets_.end()) {
    it = sets_.emplace(set.key, std::make_shared<LeaseSetState>()).first;
  } else if (!it->second) {
    it->second = std::make_shared<LeaseSetState>();
  }
  set.state = it->second;
  set.state_book = id_;
  return *it->second;
}

LeaseBook::Begin LeaseBook::begin(const LeaseSet& set, Micros amount, std::int64_t now_unix_ms,
                                  LeaseClaim& claim) {
  amount = std::max<Micros>(amount, 0);
  std::lock_guard lock(mu_);
  LeaseSetState& st = state_of(set);
  std::shared_ptr<Lease> expired;
  if (auto& lease = st.current) {
    if (!lease->serves(now_unix_ms)) {
      lease->retired = true;
      expired = std::move(lease);
      st.current.reset();
    } else if (take_share(lease, amount, claim)) {
      return Begin::kCovered;
    }
  }
  ++st.plain;
  // Several requests of the set at once: a lease pays (one is opened at a time).
  const bool open =
      options_.enabled && !st.opening && st.plain + (st.current ? st.current->in_flight : 0) >= 2;
  if (open) st.opening = true;
  // Closed only now: closing drops a set with nothing in flight from sets_, which would free
  // `st` while it is still in use; this request counts in it now, so it stays.
  if (expired) maybe_close(expired, now_unix_ms);
  return open ? Begin::kOpen : Begin::kPlain;
}

void LeaseBook::end_plain(const std::string& set_key) {
  std::lock_guard lock(mu_);
  auto it = sets_.find(set_key);
  if (it == sets_.end()) return;
  it->second->plain = std::max(it->second->plain - 1, 0);
  drop_set_if_idle(set_key);
}

Micros LeaseBook::lease_size(const LeaseSet& set, Micros amount, std::int64_t now_unix_ms) const {
  if (amount <= 0) return 0;
  const Micros half_room = budgets_.headroom(set.budgets, now_unix_ms) / 2;
  const Micros n = std::min(options_.slice_micro / amount, half_room / amount);
  if (n < std::max(options_.min_requests, 1)) return 0;
  return n * amount;
}

void LeaseBook::open_failed(const std::string& set_key) {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lock(mu_);
    auto it = sets_.find(set_key);
    if (it == sets_.end()) return;
    it->second->opening = false;
    wake.swap(it->second->waiters);
  }
  for (auto& w : wake) w();
}

bool LeaseBook::wait_for_open(const std::string& set_key, std::function<void()> wake) {
  std::lock_guard lock(mu_);
  auto it = sets_.find(set_key);
  if (it == sets_.end() || !it->second->opening) return false;
  it->second->waiters.push_back(std::move(wake));
  return true;
}

bool LeaseBook::cover_plain(const LeaseSet& set, Micros amount, std::int64_t now_unix_ms,
                            LeaseClaim& claim) {
  amount = std::max<Micros>(amount, 0);
  std::lock_guard lock(mu_);
  LeaseSetState& st = state_of(set);
  if (!st.current || !st.current->serves(now_unix_ms) || !take_share(st.current, amount, claim)) {
    return false;
  }
  st.plain = std::max(st.plain - 1, 0);
  return true;
}

void LeaseBook::install(const LeaseSet& set, std::string lease_id, Reservation hold, Micros amount,
                        LeaseClaim& claim, std::int64_t now_unix_ms) {
  auto lease = std::make_shared<Lease>();
  lease->id = std::move(lease_id);
  lease->set_key = set.key;
  lease->valid_until = hold.valid_until();
  lease->hold = std::move(hold);
  lease->claimed = amount;
  lease->in_flight = 1;
  std::vector<std::function<void()>> wake;
  std::unique_lock lock(mu_);
  LeaseSetState& st = state_of(set);
  st.opening = false;
  wake.swap(st.waiters);
  st.plain = std::max(st.plain - 1, 0);
  // The old one (out of room) takes no more requests and closes when its last one ends. The new
  // one is the set's current one before that, so that closing the old one keeps the set (and `st`).
  auto old = std::exchange(st.current, lease);
  if (old) {
    old->retired = true;
    maybe_close(old, now_unix_ms);
  }
  ++stats_.opened;
  ++stats_.open_now;
  cover(claim, std::move(lease), amount);
  lock.unlock();
  for (auto& w : wake) w();
}

// Under mu_. A request's share of `lease`'s free part, if it has `amount` free.
bool LeaseBook::take_share(const std::shared_ptr<Lease>& lease, Micros amount, LeaseClaim& claim) {
  if (lease->free() < amount) return false;
  lease->claimed += amount;
  ++lease->in_flight;
  cover(claim, lease, amount);
  return true;
}

// Under mu_. `claim` holds `amount` of `lease` (already counted in the lease's claimed part).
void LeaseBook::cover(LeaseClaim& claim, std::shared_ptr<Lease> lease, Micros amount) {
  ++stats_.covered;
  claim.book_ = this;
  claim.lease_ = std::move(lease);
  claim.amount_ = amount;
}

void LeaseBook::give_back(Lease& lease, Micros amount) {
  lease.claimed = std::max<Micros>(lease.claimed - amount, 0);
  lease.in_flight = std::max(lease.in_flight - 1, 0);
}

LeaseBook::Settled LeaseBook::settle(LeaseClaim& claim, LedgerCovered&& row, LedgerCallback done,
                                     std::int64_t now_unix_ms) {
  const LedgerCoveredFill move_row{
      [](void* from, LedgerCovered& to) { to = std::move(*static_cast<LedgerCovered*>(from)); },
      &row};
  return settle_with(claim, row.status, row.actual_micro, move_row, std::move(done), now_unix_ms);
}

LeaseBook::Settled LeaseBook::settle_with(LeaseClaim& claim, LedgerStatus status,
                                          Micros actual_micro, LedgerCoveredFill fill,
                                          LedgerCallback done, std::int64_t now_unix_ms) {
  Settled out;
  if (!claim.lease_) return out;
  auto lease = std::move(claim.lease_);
  const Micros share = claim.amount_;
  claim.lease_.reset();
  claim.amount_ = 0;
  const bool billed = status != LedgerStatus::kReleased;
  const Micros actual = billed ? std::max<Micros>(actual_micro, 0) : 0;
  const bool own_callback = !done;
  if (own_callback) {
    // A bare pointer: std::function keeps it in its own room (see Lease::rows_pending).
    done = [l = lease.get()](const Result<Ok>& r) {
      if (!r.ok()) l->commit_failed.store(true, std::memory_order_relaxed);
      l->rows_pending.fetch_sub(1, std::memory_order_release);
    };
  } else {
    out.lease = lease;
  }
  // The caller's fields, then the lease's.
  struct LeaseFill {
    LedgerCoveredFill fill;
    const std::string& lease_id;
    Micros share;
    Micros actual;
  } lease_fill{fill, lease->id, share, actual};
  const LedgerCoveredFill row_fill{[](void* context, LedgerCovered& row) {
                                     const auto& f = *static_cast<const LeaseFill*>(context);
                                     f.fill(row);
                                     row.lease_id = f.lease_id;
                                     row.reserved_micro = f.share;
                                     row.actual_micro = f.actual;
                                   },
                                   &lease_fill};
  std::lock_guard lock(mu_);
  give_back(*lease, share);
  if (actual > 0) {
    // The budgets move first, as on the per-request path; nothing is freed for others here:
    // the hold shrinks by what is charged.
    out.outcome = budgets_.settle_part(lease->hold, actual, now_unix_ms);
  } else {
    out.outcome.settled = true;
  }
  out.outcome.overshoot_micro = std::max<Micros>(actual - share, 0);
  if (own_callback) lease->rows_pending.fetch_add(1, std::memory_order_relaxed);
  out.queued = ledger_.append_covered_with(row_fill, std::move(done), Ledger::Wake::kDeferred);
  if (!out.queued) {
    // A refused record's callback never runs.
    if (own_callback) lease->rows_pending.fetch_sub(1, std::memory_order_relaxed);
    if (!lease->closed) {
      // The lease row still counts this spend as reserved: keep the hold for good, in step.
      lease->retired = true;
      keep_held(lease);
      return out;
    }
  }
  out.quiet = maybe_close(lease, now_unix_ms);
  return out;
}

void LeaseBook::commit_failed(const std::shared_ptr<Lease>& lease, std::int64_t now_unix_ms) {
  if (!lease) return;
  std::lock_guard lock(mu_);
  retire_failed(lease, now_unix_ms);
}

// Under mu_. The lease takes no new request; it is kept held once its requests in flight end.
void LeaseBook::retire_failed(const std::shared_ptr<Lease>& lease, std::int64_t now_unix_ms) {
  lease->commit_failed.store(true, std::memory_order_relaxed);
  // Closed already: its close was queued before the failure was known (the ledger refuses it,
  // and the row stays open), or it is held for good.
  if (lease->closed) return;
  lease->retired = true;
  auto it = sets_.find(lease->set_key);
  if (it != sets_.end() && it->second->current == lease) {
    it->second->current.reset();
    drop_set_if_idle(lease->set_key);
  }
  maybe_close(lease, now_unix_ms);
}

// Under mu_. The lease's row stays open at what it reserves: its hold stays in the budgets too,
// until a restart recovers the row (and an operator reconciles it).
void LeaseBook::keep_held(const std::shared_ptr<Lease>& lease) {
  detach(lease);
  stuck_.push_back(lease);
  ++stats_.stuck;
  drop_set_if_idle(lease->set_key);
}

bool LeaseBook::release(LeaseClaim& claim, std::int64_t now_unix_ms) {
  if (!claim.lease_) return false;
  auto lease = std::move(claim.lease_);
  const Micros share = claim.amount_;
  claim.lease_.reset();
  claim.amount_ = 0;
  std::lock_guard lock(mu_);
  give_back(*lease, share);
  return maybe_close(lease, now_unix_ms);
}

bool LeaseBook::close_idle(std::int64_t now_unix_ms, bool all, std::size_t* closed) {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Lease>> due;
  bool waiting = false;
  for (const auto& [key, st] : sets_) {
    const auto& lease = st->current;
    if (!lease || lease->closed || lease->in_flight > 0) continue;
    if (all || now_unix_ms - lease->quiet_since >= options_.idle_close_ms) {
      due.push_back(lease);
    } else {
      waiting = true;
    }
  }
  for (const auto& lease : due) close(lease, now_unix_ms);
  if (closed) *closed = due.size();
  return waiting;
}

// Under mu_. A retired lease with no covered request in flight closes now; the current one of
// its set waits idle_close_ms for the next request (close_idle).
bool LeaseBook::maybe_close(const std::shared_ptr<Lease>& lease, std::int64_t now_unix_ms) {
  if (lease->closed || lease->in_flight > 0) return false;
  if (!lease->retired && options_.idle_close_ms > 0 &&
      !lease->commit_failed.load(std::memory_order_relaxed)) {
    lease->quiet_since = now_unix_ms;
    return true;
  }
  close(lease, now_unix_ms);
  return false;
}

// Under mu_. The row first (nothing is owed on it any more: every covered request's row is
// queued before this), then the hold.
void LeaseBook::close(const std::shared_ptr<Lease>& lease, std::int64_t now_unix_ms) {
  if (lease->commit_failed.load(std::memory_order_relaxed)) {
    keep_held(lease);  // its row does not say what was spent on it: the ledger keeps it open
    return;
  }
  detach(lease);
  LedgerSettlement close;
  close.request_id = lease->id;
  close.status = LedgerStatus::kSettled;
  close.settled_unix_ms = now_unix_ms;
  close.lease = true;
  // The close row's callback holds the lease until every covered row queued before it has been
  // answered (their callbacks point at it: Lease::rows_pending).
  if (!ledger_.append_settlement(
          std::move(close), [lease](const Result<Ok>&) {}, Ledger::Wake::kDeferred)) {
    stuck_.push_back(lease);  // the row stays open at the hold's amount: keep the hold too
    ++stats_.stuck;
  } else {
    budgets_.release(lease->hold);
    ++stats_.closed;
  }
  drop_set_if_idle(lease->set_key);
}

// Under mu_. The lease is done (closed, or stuck): it no longer serves its set.
void LeaseBook::detach(const std::shared_ptr<Lease>& lease) {
  lease->closed = true;
  --stats_.open_now;
  auto it = sets_.find(lease->set_key);
  if (it != sets_.end() && it->second->current == lease) it->second->current.reset();
}

void LeaseBook::drop_set_if_idle(const std::string& key) {
  auto it = sets_.find(key);
  if (it == sets_.end()) return;
  const auto& st = *it->second;
  if (st.plain == 0 && !st.opening && !st.current && st.waiters.empty()) {
    it->second->listed = false;  // a LeaseSet that kept it looks its set up again
    sets_.erase(it);
  }
}

LeaseStats LeaseBook::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace bw::cost
