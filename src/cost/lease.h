#pragma once
// LeaseBook: budget leases for the in-process budgets (BudgetManager) with a ledger that takes
// them (SQLite). A budget set (the exact budget ids a request reserves against, with its key and
// tenant) that has several requests in flight takes a LEASE: one durable ledger row holding a
// slice H of the set's headroom, reserved in the BudgetManager as one hold. Requests the lease
// covers take their worst case from the lease's free part in memory and are forwarded at once;
// they have no open row of their own.
//
// Accounting (the same sums as the per-request path, at every ledger commit):
//  - memory: the lease's hold is `reserved` in every budget of the set; a covered request's
//    settlement charges its actual cost and shrinks the hold by as much (partial settlement);
//  - ledger: the lease row is open at the hold's amount; a covered request's settlement writes
//    its row already settled and lowers the lease row by its actual cost in the same
//    transaction (Ledger::append_covered), so settled + open reservations never move up;
//  - after a crash the open lease row counts at its reserved amount, like any open reservation:
//    it covers what its requests in flight may have cost.
//  - A lease closes once it has had no covered request in flight for idle_close_ms (close_idle(),
//    which the gateway runs from a timer), or at once when it was replaced or its period ended:
//    its row is closed first (status settled, nothing billed on it), then the rest of the hold
//    is released.
//
// Every ledger append happens under the book's mutex, so the ledger sees a lease's records in the
// order the book made them (a covered row always before the close of its lease). Appends never
// block (the queue is bounded): a refused append keeps the lease's hold for good (counted until
// restart), which errs towards not spending.
//
// A covered row whose group commit FAILED (disk error, a lost transaction) retires its lease: the
// lease row no longer says what was spent on it, and the ledger keeps it open at what it still
// reserves (SqliteLedger refuses its close). The lease covers no new request (the next one opens
// a fresh lease or takes the per-request path, and both wait for a commit, so a ledger that is
// down refuses them), its requests in flight end on it, and then its hold is kept in the budgets
// for good (stuck, until a restart recovers the open row), in step with the ledger: spent +
// reserved in memory stay what the ledger holds. A failure the caller hears of through its own
// callback is reported with commit_failed(); with no callback the book watches the commit itself.
//
// Thread safety: every method may be called from any thread. No method blocks on I/O.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/light_mutex.h"
#include "cost/budget_manager.h"
#include "cost/ledger.h"

namespace bw::cost {

struct LeaseOptions {
  // On by default; the gateway takes leases only with the in-process budgets and a ledger whose
  // supports_leases() is true (SQLite), and ignores the setting elsewhere.
  bool enabled = true;
  // The most one lease holds. A lease is a whole number of the opening request's worst case,
  // and never more than half the set's headroom (near a cap requests go the exact way).
  Micros slice_micro = 1'000'000;
  // A lease is only worth its two rows when it can cover at least this many requests.
  int min_requests = 2;
  // How long a lease without a covered request in flight stays open for the next one; 0 closes
  // it at once. Under load a set is quiet for microseconds at a time, and a lease closed then
  // is reopened (two more rows and a ledger wait) by the next request.
  std::int64_t idle_close_ms = 20;
};

namespace detail {
struct Lease;
struct LeaseSetState;
}  // namespace detail

// What identifies a budget set, and what its lease row names.
struct LeaseSet {
  std::string key;  // budgets, key and tenant joined: the map key
  std::vector<std::string> budgets;
  std::string key_id;
  std::string tenant_id;
  // lease_set_hash(key), when set once the key is final (0: hashed at each use).
  std::size_t hash = 0;
  // The set's state in the book that last looked it up, kept by that book under its mutex: a
  // request of the set finds it again without hashing and comparing the key (while the book
  // still lists it). A LeaseSet is used with one book at a time.
  mutable std::shared_ptr<detail::LeaseSetState> state{};
  mutable std::uint64_t state_book = 0;
};
std::string lease_set_key(const std::vector<std::string>& budgets, std::string_view key_id,
                          std::string_view tenant_id);
std::size_t lease_set_hash(std::string_view key);

// A covered request's share of a lease (move-only). Settle or release it through the book;
// destroying an active one releases it.
class LeaseClaim {
 public:
  LeaseClaim() = default;
  LeaseClaim(LeaseClaim&& other) noexcept;
  LeaseClaim& operator=(LeaseClaim&& other) noexcept;
  LeaseClaim(const LeaseClaim&) = delete;
  LeaseClaim& operator=(const LeaseClaim&) = delete;
  ~LeaseClaim();

  bool active() const { return lease_ != nullptr; }
  Micros amount() const { return amount_; }
  const std::string& lease_id() const;

 private:
  friend class LeaseBook;
  class LeaseBook* book_ = nullptr;
  std::shared_ptr<detail::Lease> lease_;
  Micros amount_ = 0;
};

struct LeaseStats {
  std::uint64_t opened = 0;
  std::uint64_t closed = 0;
  std::uint64_t covered = 0;  // requests covered
  std::uint64_t stuck = 0;    // leases kept held: a ledger append was refused or a commit failed
  std::size_t open_now = 0;
};

class LeaseBook {
 public:
  LeaseBook(BudgetManager& budgets, Ledger& ledger, LeaseOptions options);
  ~LeaseBook();
  LeaseBook(const LeaseBook&) = delete;
  LeaseBook& operator=(const LeaseBook&) = delete;

  enum class Begin {
    kCovered,  // `claim` holds the request's share; forward at once
    kOpen,     // take the per-request path's place: open a lease (lease_size, then install)
    kPlain,    // the per-request path
  };
  // A budgeted request about to reserve `amount`. kOpen and kPlain count the request as in flight
  // in its set until end_plain() (or install(), which makes it covered).
  Begin begin(const LeaseSet& set, Micros amount, std::int64_t now_unix_ms, LeaseClaim& claim);
  void end_plain(const std::string& set_key);

  // kOpen: the lease to take now for requests of `amount`; 0 = none (near the cap, or too
  // small to pay). Call open_failed() when no lease is taken after kOpen.
  Micros lease_size(const LeaseSet& set, Micros amount, std::int64_t now_unix_ms) const;
  void open_failed(const std::string& set_key);
  // A request on the per-request path (after kOpen or kPlain) whose reservation was refused
  // while a lease of its set is being opened: that lease's hold may be what took the room.
  // `wake` runs once the lease is installed or its opening failed, on the thread that did it,
  // after the book's mutex is released. False: no lease is being opened (nothing to wait for).
  bool wait_for_open(const std::string& set_key, std::function<void()> wake);
  // After that wait: covers the request from the set's lease if it has room for `amount`; the
  // request then leaves the per-request path (no end_plain()).
  bool cover_plain(const LeaseSet& set, Micros amount, std::int64_t now_unix_ms, LeaseClaim& claim);
  // The lease row `lease_id` holding `hold` is durable: the lease serves the set from now on,
  // and the opener takes `amount` of it (it was counted in flight since begin()).
  // A lease it replaces closes with `now_unix_ms` as its close time once its last request ends.
  void install(const LeaseSet& set, std::string lease_id, Reservation hold, Micros amount,
               LeaseClaim& claim, std::int64_t now_unix_ms);
  // A fresh id for a lease row: "lease:" and 9 characters (15 in all: a short string, copied
  // into each covered row without an allocation), unique in this book.
  std::string next_lease_id();

  struct Settled {
    SettleOutcome outcome;  // overshoot: actual above the request's share
    bool queued = false;    // the covered row reached the ledger's queue
    bool quiet = false;     // its lease has no request in flight now: run close_idle() later
    // The lease the row was charged to, when the caller passed a `done`: for commit_failed()
    // when `done` reports an error.
    std::shared_ptr<detail::Lease> lease;
  };
  // Charges `row.actual_micro` (or nothing for kReleased) to the lease, appends the covered row
  // with `done` (Wake::kDeferred: the caller kicks) and closes the lease if it went quiet. With a
  // `done`, the caller reports a failed commit (commit_failed(out.lease)); without one, the book
  // learns of it from the ledger's callback itself.
  Settled settle(LeaseClaim& claim, LedgerCovered&& row, LedgerCallback done,
                 std::int64_t now_unix_ms);
  // settle() of the row that `fill` sets, built in the ledger's own record
  // (Ledger::append_covered_with); `status` and `actual_micro` are the row's, which `fill` sets
  // too. The lease's fields (lease_id, reserved_micro, actual_micro) are set after `fill`.
  Settled settle_with(LeaseClaim& claim, LedgerStatus status, Micros actual_micro,
                      LedgerCoveredFill fill, LedgerCallback done, std::int64_t now_unix_ms);
  // A covered row of `lease` was not committed: the lease is retired at once (see above).
  void commit_failed(const std::shared_ptr<detail::Lease>& lease, std::int64_t now_unix_ms);
  // A covered request that ended without a row (nothing billed, nothing to show): its share
  // goes back to the lease, which closes if it went quiet.
  bool release(LeaseClaim& claim, std::int64_t now_unix_ms);
  // Closes the leases that have been quiet for idle_close_ms, or every quiet one with `all` (a
  // graceful stop; the destructor does it too). Their close rows are queued with
  // Wake::kDeferred: kick the ledger when `closed` (if given) says some were. True while a quiet
  // lease remains open (call again later).
  bool close_idle(std::int64_t now_unix_ms, bool all = false, std::size_t* closed = nullptr);

  LeaseStats stats() const;
  const LeaseOptions& options() const { return options_; }

 private:
  void give_back(detail::Lease& lease, Micros amount);
  void retire_failed(const std::shared_ptr<detail::Lease>& lease, std::int64_t now_unix_ms);
  void keep_held(const std::shared_ptr<detail::Lease>& lease);
  // Closes a quiet lease that is retired (or when leases close at once); returns true when it
  // stays open quiet.
  bool maybe_close(const std::shared_ptr<detail::Lease>& lease, std::int64_t now_unix_ms);
  void close(const std::shared_ptr<detail::Lease>& lease, std::int64_t now_unix_ms);
  void detach(const std::shared_ptr<detail::Lease>& lease);
  bool take_share(const std::shared_ptr<detail::Lease>& lease, Micros amount, LeaseClaim& claim);
  void cover(LeaseClaim& claim, std::shared_ptr<detail::Lease> lease, Micros amount);
  void drop_set_if_idle(const std::string& key);

  BudgetManager& budgets_;
  Ledger& ledger_;
  const LeaseOptions options_;
  const std::uint64_t id_;  // process-unique: names this book in LeaseSet::state_book
  // Taken twice per covered request (begin and settle), briefly: a LightMutex.
  mutable LightMutex mu_;
  // A set's key with its hash (LeaseSet::hash), looked up without hashing the key again.
  struct HashedKey {
    std::string_view key;
    std::size_t hash;
  };
  struct SetHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view k) const { return lease_set_hash(k); }
    std::size_t operator()(const HashedKey& k) const { return k.hash; }
  };
  struct SetEq {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const { return a == b; }
    bool operator()(const HashedKey& a, std::string_view b) const { return a.key == b; }
    bool operator()(std::string_view a, const HashedKey& b) const { return a == b.key; }
  };
  // The state of `set`, created if it has none (under mu_).
  detail::LeaseSetState& state_of(const LeaseSet& set);

  // Guarded by mu_.
  std::unordered_map<std::string, std::shared_ptr<detail::LeaseSetState>, SetHash, SetEq> sets_;
  std::vector<std::shared_ptr<detail::Lease>> stuck_;
  std::uint64_t next_id_;  // the next lease id's number (from a random start)
  LeaseStats stats_;
};

}  // namespace bw::cost
