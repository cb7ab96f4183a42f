#pragma once
// RedisBudgetStore: spend caps shared by every gateway replica, kept as counters in one Redis and
// rebuilt from the durable ledger (PostgreSQL) whenever Redis has lost them. docs/distributed.md,
// "Budgets in Redis".
//
// Contract
//  - Same money semantics as BudgetManager (budget_manager.h): per budget and period,
//    spent + reserved <= cap at every instant; reserve() is all-or-nothing across the listed
//    budgets (one Lua script, atomic inside Redis, so two replicas can never both take the last
//    dollar); settle() moves the actual cost to spent and releases the rest; spend belongs to the
//    period in which the reservation was made. Each period has its own key, so a new day or month
//    starts from the ledger's figure for it (0 unless the ledger already holds rows for it).
//  - Rebuild: a missing period key means Redis does not know the figure (first use of a period,
//    restart, FLUSHALL, eviction). The replica that sees it takes a short Redis lock, computes
//    spent (settled rows of the period) + reserved (open rows of the period, at their reserved
//    amount) from the ledger on the blocking executor, and writes the key; other replicas wait
//    for the key (bounded by rebuild_timeout). Nothing is ever re-created at zero.
//  - Never fails open: while Redis is unreachable (deadline, breaker open) or a rebuild cannot
//    finish, a budget is judged locally against a conservative share: (cap - last committed
//    figure this replica saw in Redis) / replicas, tracked in an in-process BudgetManager.
//    degraded() is then true. Spend settled locally is added to the Redis counters when Redis
//    answers again (bounded backlog; dropping it only ever over-counts, see the .cc).
//  - An unknown budget id refuses. Every call has a deadline (timeout, or rebuild_timeout when a
//    rebuild is needed); no call blocks an event loop.
//  - A RedisBudgetReservation is move-only; destroying an active one releases it (asynchronously
//    on the executor it was reserved on). Settle or release each one exactly once.
//  - Thread safety: all methods may be called concurrently from coroutines on any io_context.
//    The store must outlive the reservations' release coroutines (hold it by shared_ptr) and be
//    destroyed before the io_contexts it ran on.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "common/clock.h"
#include "common/result.h"
#include "cost/budget_manager.h"
#include "cost/ledger.h"
#include "cost/money.h"
#include "cost/period.h"
#include "store/redis_conn.h"

namespace bw::cost {

struct RedisBudgetOptions {
  std::string url = "redis://127.0.0.1:6379";   // redis://[[user]:password@]host[:port][/db]
  Nanos timeout = 20 * kNanosPerMilli;          // deadline of one call, connect included
  std::size_t pool_size = 0;                    // max connections; 0 = one per io_context
  std::size_t max_in_flight = 1024;             // pipelined requests per connection
  std::int64_t replicas = 3;                    // divisor of the local share while Redis is away
  std::string key_prefix = "bw:bg:";            // namespace of the budget keys
  int breaker_failures = 5;                     // consecutive failures that open the breaker
  Nanos breaker_cooldown = kNanosPerSecond;     // fail fast this long, then one probe
  Nanos rebuild_timeout = 2 * kNanosPerSecond;  // a request waits at most this for a rebuild
  Nanos rebuild_poll = 10 * kNanosPerMilli;
  // Wait after taking the rebuild lock, before reading the ledger: lets ledger writes that were
  // in flight when Redis lost the key commit first (see the .cc).
  Nanos rebuild_grace = 100 * kNanosPerMilli;     // how often a waiting replica looks for the key
  Nanos rebuild_lock_ttl = 10 * kNanosPerSecond;  // lock expiry if its holder dies mid-rebuild
  std::int64_t key_retention_ms = kMillisPerDay;  // a period key lives this long past its end
  std::size_t max_backlog = 4096;
  // A reserve/settle call that reaches Redis more than this after its deadline (by Redis TIME) is
  // dropped by the script. Must exceed the clock difference between gateway and Redis hosts;
  // 0 disables the check.
  Nanos stale_after = kNanosPerSecond;  // budget keys with spend waiting to be pushed to Redis
};

class RedisBudgetStore;

class RedisBudgetReservation {
 public:
  RedisBudgetReservation() = default;
  RedisBudgetReservation(RedisBudgetReservation&& other) noexcept;
  RedisBudgetReservation& operator=(RedisBudgetReservation&& other) noexcept;
  RedisBudgetReservation(const RedisBudgetReservation&) = delete;
  RedisBudgetReservation& operator=(const RedisBudgetReservation&) = delete;
  ~RedisBudgetReservation();

  Micros amount() const { return amount_; }
  bool active() const { return active_; }
  // Taken against the local share (Redis unreachable) rather than the shared counters.
  bool local() const { return local_.active(); }
  const std::vector<std::string>& budget_ids() const { return ids_; }

 private:
  friend class RedisBudgetStore;
  void release_detached();
  std::shared_ptr<RedisBudgetStore> store_;
  boost::asio::any_io_executor executor_;
  std::vector<std::string> ids_;
  std::vector<std::string> keys_;  // Redis keys (budget id + period start)
  std::vector<Micros> caps_;
  Micros amount_ = 0;
  bool active_ = false;
  Reservation local_;
};

struct RedisReserveResult {
  std::optional<RedisBudgetReservation> reservation;  // set on success
  BudgetRefusal refusal;                              // meaningful when !ok()
  bool ok() const { return reservation.has_value(); }
};

struct RedisBudgetStats {
  std::uint64_t calls = 0;          // Redis round trips
  std::uint64_t failures = 0;       // calls that failed (timeout, connection, protocol, script)
  std::uint64_t local = 0;          // reservations judged against the local share
  std::uint64_t rebuilds = 0;       // period keys this replica rebuilt from the ledger
  std::uint64_t rebuild_waits = 0;  // period keys rebuilt by another replica while we waited
  std::uint64_t rebuild_failures = 0;
  std::uint64_t backlog_dropped = 0;
  std::size_t backlog = 0;  // budget keys with spend still to push
  bool degraded = false;
};

// Spent (settled, actual) and reserved (open rows, reserved amount) of one budget in one period
// window, as the ledger records it. Rows without a budgets column (before schema v3) are
// attributed with legacy_budget_ids(). Blocking (ledger queries).
struct LedgerBudgetTotals {
  Micros spent_micro = 0;
  Micros reserved_micro = 0;
};
struct BudgetPeriodRef {
  std::string id;
  PeriodWindow window;
};
Result<std::vector<LedgerBudgetTotals>> ledger_budget_totals(
    Ledger& ledger, const BudgetManager& budgets, const std::vector<BudgetPeriodRef>& targets);

class RedisBudgetStore : public std::enable_shared_from_this<RedisBudgetStore> {
 public:
  // `budgets` names the configured budgets (caps, periods; the gateway keeps it current on
  // reload) and must outlive the store; only its configuration and snapshot() are read.
  // `ledger` is read to rebuild lost counters; null means a lost counter can never be rebuilt,
  // so such budgets run on the local share. Ledger reads run on `blocking`. Fails only on a bad
  // URL.
  static Result<std::shared_ptr<RedisBudgetStore>> create(RedisBudgetOptions options,
                                                          const BudgetManager& budgets,
                                                          Ledger* ledger,
                                                          boost::asio::any_io_executor blocking);
  ~RedisBudgetStore();

  // `now` (monotonic) drives deadlines and the breaker; `now_unix_ms` picks the period.
  boost::asio::awaitable<RedisReserveResult> reserve(std::vector<std::string> budget_ids,
                                                     Micros amount_micro, std::int64_t now_unix_ms,
                                                     Nanos now);
  // Charges `actual_micro` (negative = 0), releases the reservation; alerts are reported by the
  // one replica whose settlement crossed a threshold (the counter is shared, so exactly once per
  // budget, period and threshold for the whole fleet).
  boost::asio::awaitable<SettleOutcome> settle(RedisBudgetReservation& reservation,
                                               Micros actual_micro, std::int64_t now_unix_ms,
                                               Nanos now);
  boost::asio::awaitable<void> release(RedisBudgetReservation& reservation, Nanos now);

  // Downgrade decision from the last figures this replica saw in Redis (no round trip).
  std::optional<std::string> should_downgrade(const std::vector<std::string>& budget_ids,
                                              std::string_view model, bool opt_out,
                                              std::int64_t now_unix_ms) const;
  // Utilisation per budget id from the last figures seen (for metrics).
  std::vector<std::pair<std::string, double>> utilisation(std::int64_t now_unix_ms) const;

  bool degraded() const;
  RedisBudgetStats stats() const;
  BudgetManager& local_budgets() { return local_; }

 private:
  friend class RedisBudgetReservation;
  struct Target {
    std::string id;
    std::string key;
    Micros cap = 0;
    PeriodWindow window;
    BudgetPeriod period = BudgetPeriod::kMonthly;
  };
  struct BacklogEntry {
    Micros release = 0;  // reserved amount still held in Redis
    Micros spend = 0;    // settled spend not yet added
    std::int64_t expire_at_ms = 0;
  };
  RedisBudgetStore(RedisBudgetOptions options, store::RedisEndpoint endpoint,
                   const BudgetManager& budgets, Ledger* ledger,
                   boost::asio::any_io_executor blocking);

  std::optional<Target> target_for(const std::string& id, std::int64_t now_unix_ms) const;
  std::int64_t expire_at(const PeriodWindow& w) const;
  std::string not_after() const;
  RedisReserveResult reserve_local(const std::vector<Target>& targets, Micros amount,
                                   std::int64_t now_unix_ms);
  boost::asio::awaitable<bool> rebuild(std::vector<Target> targets, Nanos deadline);
  boost::asio::awaitable<bool> rebuild_one(const Target& t, Nanos deadline);
  // One settle script call; `missing` receives the indexes of keys Redis does not know.
  enum class SettleStatus { kOk, kMissing, kFailed };
  boost::asio::awaitable<SettleStatus> settle_remote(const std::vector<std::string>& keys,
                                                     const std::vector<std::string>* ids,
                                                     Micros release, Micros spend,
                                                     std::vector<Micros>* spent_after,
                                                     std::vector<std::size_t>* missing, Nanos now);
  void add_backlog(const std::vector<std::string>& keys, const std::vector<std::int64_t>& expiry,
                   Micros release, Micros spend);
  static boost::asio::awaitable<void> flush_backlog(std::shared_ptr<RedisBudgetStore> self,
                                                    Nanos now);
  static boost::asio::awaitable<void> release_keys(std::shared_ptr<RedisBudgetStore> self,
                                                   std::vector<std::string> keys,
                                                   std::vector<std::string> ids, Micros amount);
  void remember(const Target& t, Micros committed);
  Micros last_known(const Target& t) const;

  RedisBudgetOptions options_;
  store::RedisClient client_;
  store::RedisBreaker breaker_;
  const BudgetManager& budgets_;
  Ledger* ledger_;
  boost::asio::any_io_executor blocking_;
  BudgetManager local_;

  mutable std::mutex mu_;  // guards known_, backlog_; never held across co_await
  // budget id -> (period key, spent + reserved last seen there); one entry per budget.
  std::unordered_map<std::string, std::pair<std::string, Micros>> known_;
  std::unordered_map<std::string, BacklogEntry> backlog_;
  bool flushing_ = false;

  std::atomic<std::uint64_t> failures_{0}, local_count_{0}, rebuilds_{0}, rebuild_waits_{0},
      rebuild_failures_{0}, backlog_dropped_{0};
};

}  // namespace bw::cost
