#pragma once
// LimitStore: where bucket state lives. One call checks every limit of a request atomically, so
// the same interface fits the in-process store and a Redis store (one Lua script per request).
//
// Contract of check_and_consume (all-or-nothing):
//  * every check is evaluated against the state as of `now`;
//  * if every ENFORCED check passes, each enforced check consumes its cost, and each SHADOW check
//    consumes only if it passed (so a shadow bucket simulates exactly what enforcement would do);
//  * if any enforced check fails, nothing is consumed and no state is created ("no trace");
//  * shadow checks never block; a failed shadow check is reported via `allowed == false` on its
//    own result while the batch stays allowed.
// Keys within one batch may repeat; later checks then see the earlier checks' tentative usage.
// Implementations are thread safe.
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include <boost/asio/awaitable.hpp>
#include <boost/container/small_vector.hpp>

#include "common/clock.h"
#include "limits/algorithms.h"
#include "limits/limit_spec.h"

namespace bw::limits {

// A store's own digest of a bucket key (LimitStore::digest): computed once by a caller that
// checks the same keys on every request, so that the store does not hash them each time. It
// names the store that made it: any other store (a wrapper's own fallback store, say) ignores it
// and digests the key itself.
struct KeyDigest {
  const void* store = nullptr;
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
};

struct LimitCheck {
  std::string_view key;   // bucket identity: limit name + scope id (stable across reloads)
  const LimitSpec* spec;  // parameters for this call; the store never keeps the pointer
  std::int64_t cost = 1;  // >= 0
  // Optional: digest(key), computed ahead; null (or another store's): the store digests the key.
  const KeyDigest* digest = nullptr;
};

// Where a store keeps a bucket that a check charged (BatchResult::bucket_of), for a later adjust()
// of the same bucket (AdjustSpec::bucket): the store that made it reaches the bucket without
// looking its key up, as long as it can tell that the bucket is still kept there (else it looks
// the key up, as without a handle). Opaque to callers; any other store ignores it.
struct BucketHandle {
  std::uint64_t maker = 0;  // the store's maker id (PreparedChecks::new_maker_id); 0: no bucket
  void* at = nullptr;
  std::uint64_t generation = 0;
};

// What adjust() needs of a limit: its bucket parameters, and its name (the Redis store picks the
// limit's failure policy by name). Converts implicitly from a LimitSpec; the name is borrowed.
struct AdjustSpec {
  std::string_view name;
  Algorithm algorithm = Algorithm::kGcra;
  BucketParams params;
  const KeyDigest* digest = nullptr;  // as LimitCheck::digest
  // Optional: the handle the check's batch gave for this bucket (BatchResult::bucket_of). Taken
  // only with this store's digest of the key.
  const BucketHandle* bucket = nullptr;

  AdjustSpec() = default;
  AdjustSpec(std::string_view n, Algorithm a, BucketParams p) : name(n), algorithm(a), params(p) {}
  AdjustSpec(const LimitSpec& spec)  // NOLINT(google-explicit-constructor): a LimitSpec is one
      : name(spec.name), algorithm(spec.algorithm), params(spec.params()) {}
};

struct CheckResult {
  Decision decision;       // on an allowed batch: after consumption; else: state unchanged
  bool consumed = false;   // this check's cost was charged (needed to refund it later)
  void* bucket = nullptr;  // where the store keeps its bucket, when it says: see bucket_of
};

struct BatchResult {
  bool allowed = true;    // every enforced check passed (and the store had room)
  bool overflow = false;  // rejected because the store is at its entry cap (kReject policy)
  Nanos retry_after = 0;  // with overflow or unavailable: when to retry
  // Rejected because the shared store (Redis) is unreachable and a limit fails closed: the
  // gateway answers 503 with Retry-After rather than 429.
  bool unavailable = false;
  boost::container::small_vector<CheckResult, 8> results;  // same order as the checks
  // The store's maker id and its count for the results' buckets (with CheckResult::bucket).
  std::uint64_t bucket_maker = 0;
  std::uint64_t bucket_generation = 0;

  // The handle of check i's bucket for a later adjust (a default one when the store gave none).
  BucketHandle bucket_of(std::size_t i) const {
    void* at = results[i].bucket;
    return at != nullptr ? BucketHandle{bucket_maker, at, bucket_generation} : BucketHandle{};
  }
};

// Checks that a caller makes again and again with the same keys and specs (a key's plan limits),
// resolved once by one store (LimitStore::prepare) and then decided by LimitStore::check_prepared
// without the caller building them. Immutable for its users: share it read-only across threads.
class PreparedChecks {
 public:
  // `checks` (their keys, specs and digests) are borrowed: they must outlive this object.
  // `maker`: the making store's maker id (new_maker_id), by which it knows its own.
  PreparedChecks(std::span<const LimitCheck> checks, std::uint64_t maker)
      : checks_(checks), maker_(maker) {}
  virtual ~PreparedChecks() = default;
  PreparedChecks(const PreparedChecks&) = delete;
  PreparedChecks& operator=(const PreparedChecks&) = delete;

  // The checks it was made from; their `cost` is not used (check_prepared gives the costs).
  std::span<const LimitCheck> checks() const { return checks_; }
  std::uint64_t maker() const { return maker_; }

  // A maker id no other store has had in this process (never 0).
  static std::uint64_t new_maker_id() {
    static std::atomic<std::uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  std::span<const LimitCheck> checks_;
  std::uint64_t maker_;
};

class LimitStore {
 public:
  virtual ~LimitStore() = default;
  virtual BatchResult check_and_consume(std::span<const LimitCheck> checks, Nanos now) = 0;
  // delta > 0 charges more (may go into debt); delta < 0 refunds (never below empty).
  virtual void adjust(std::string_view key, const AdjustSpec& spec, std::int64_t delta,
                      Nanos now) = 0;
  // The digest of `key` that this store would compute itself, for LimitCheck::digest and
  // AdjustSpec::digest. False: the store has none (it takes keys as they are).
  virtual bool digest(std::string_view key, KeyDigest& out) const {
    (void)key;
    (void)out;
    return false;
  }
  // `checks` resolved ahead for check_prepared, or null: the store has nothing to resolve ahead
  // (check_and_consume then serves as well).
  virtual std::unique_ptr<const PreparedChecks> prepare(std::span<const LimitCheck> checks) const {
    (void)checks;
    return nullptr;
  }
  // check_and_consume of the prepared checks, each costing `token_cost` when its limit counts
  // tokens and 1 otherwise. `prepared` comes from prepare() (of this store, or of another one:
  // then its checks are taken as they are).
  virtual BatchResult check_prepared(const PreparedChecks& prepared, std::int64_t token_cost,
                                     Nanos now) {
    return check_each(prepared, token_cost, now);
  }

 protected:
  // check_prepared through check_and_consume: the prepared checks with their costs.
  BatchResult check_each(const PreparedChecks& prepared, std::int64_t token_cost, Nanos now) {
    boost::container::small_vector<LimitCheck, 8> checks(prepared.checks().begin(),
                                                         prepared.checks().end());
    for (LimitCheck& c : checks) c.cost = c.spec->unit == Unit::kTokens ? token_cost : 1;
    return check_and_consume(checks, now);
  }
};

// The same contract for stores that do I/O (RedisLimitStore). Callers co_await the result on
// their worker's io_context; the calls never throw and always complete within the store's
// deadline (on failure the store applies its failure policy and still returns a BatchResult).
// Arguments are borrowed until the awaitable completes: pass them to a direct co_await.
// Implementations are thread safe.
class AsyncLimitStore {
 public:
  virtual ~AsyncLimitStore() = default;
  virtual boost::asio::awaitable<BatchResult> check_and_consume_async(
      std::span<const LimitCheck> checks, Nanos now) = 0;
  // `spec` is taken by value, but its name (like `key`) is borrowed until completion.
  virtual boost::asio::awaitable<void> adjust_async(std::string_view key, AdjustSpec spec,
                                                    std::int64_t delta, Nanos now) = 0;
  // The shared backend is unreachable and decisions come from the failure policy (for /readyz).
  virtual bool degraded() const = 0;
};

}  // namespace bw::limits
