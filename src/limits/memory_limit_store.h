#pragma once
// MemoryLimitStore: the in-process LimitStore (single node).
//
// Thread safety: all methods may be called from any thread. State is split over N shards, each a
// LightMutex + hash map; a batch locks the shards it touches in ascending order (no deadlock) and
// holds them for a few hundred ns of pure arithmetic, never across I/O. A bucket's shard is chosen
// by its key's owner (the part after the key's second 0x1f separator, the limiter's
// "<scope>\x1f<id>"), so the limits of one API key share a shard and a request's batch usually
// takes one lock.
//
// Time: a shard decides at the caller's `now` or, for a reading older than one the shard has
// already decided at (two threads' readings can reach its lock in the other order), at that later
// time: a shard's time never goes back. The waits and resets of such a decision are given from
// the caller's reading.
//
// Memory: a bucket is stored as a 128-bit hash of its key (no key string), so an entry costs about
// 90 bytes whatever the key length (sliding-window buckets add a 200-byte ring). A bucket whose
// usage has fully drained equals a fresh one and is deleted: each shard sweeps itself whenever it
// has doubled since its last sweep, and evict_idle() sweeps everything (call it from a timer).
// A refund that empties a bucket resets it to a fresh one in place and leaves it to the sweep
// (deleting it would send the shard's prepared batches to look their buckets up again), unless
// its shard is full. `max_entries` is a hard cap; see OverflowPolicy for what happens at the cap.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "limits/limit_store.h"

namespace bw::limits {

enum class OverflowPolicy : std::uint8_t {
  // A new bucket that does not fit is not stored: the request is judged against a fresh bucket
  // and admitted if that passes. Existing buckets keep being enforced. Fails open for new keys,
  // so that a flood of distinct IPs cannot lock out new legitimate clients.
  kAllowUntracked,
  // The whole batch is rejected (BatchResult::overflow) with retry_after = overflow_retry_after.
  kReject,
};

struct MemoryLimitStoreOptions {
  std::size_t shards = 64;              // rounded up to a power of two
  std::size_t max_entries = 2'000'000;  // hard cap on tracked buckets (all shards)
  OverflowPolicy overflow = OverflowPolicy::kAllowUntracked;
  Nanos overflow_retry_after = kNanosPerSecond;  // Retry-After for kReject
  // A full shard sweeps at most this often, so an attack at the cap cannot make every request
  // pay for a scan.
  Nanos full_sweep_interval = 100 * kNanosPerMilli;
  std::uint64_t hash_seed = 0;  // 0: random per process (keys are attacker-chosen)
};

struct MemoryLimitStoreStats {
  std::size_t entries = 0;
  std::uint64_t evicted = 0;    // idle buckets deleted
  std::uint64_t overflows = 0;  // new buckets refused by the cap
  // Batches decided by the one-shard path (every check with this store's digest, or prepared by
  // this store; distinct buckets of one shard, all stored): the same decisions without the
  // general batch's working copies.
  std::uint64_t one_shard_batches = 0;
  // Prepared batches that looked their buckets up: on first use, and after their shard had
  // deleted or added a bucket.
  std::uint64_t prepared_lookups = 0;
};

class MemoryLimitStore final : public LimitStore {
 public:
  explicit MemoryLimitStore(MemoryLimitStoreOptions options = {});
  ~MemoryLimitStore() override;
  MemoryLimitStore(const MemoryLimitStore&) = delete;
  MemoryLimitStore& operator=(const MemoryLimitStore&) = delete;

  BatchResult check_and_consume(std::span<const LimitCheck> checks, Nanos now) override;
  void adjust(std::string_view key, const AdjustSpec& spec, std::int64_t delta, Nanos now) override;
  bool digest(std::string_view key, KeyDigest& out) const override;
  // Checks of distinct buckets of one shard (a key's plan limits), up to 8: resolved to their
  // buckets' hashes and parameters, and then to the buckets themselves, which are kept (under
  // the shard's lock) until the shard deletes or adds a bucket. Null for other checks.
  std::unique_ptr<const PreparedChecks> prepare(std::span<const LimitCheck> checks) const override;
  BatchResult check_prepared(const PreparedChecks& prepared, std::int64_t token_cost,
                             Nanos now) override;

  // Deletes every bucket that is idle at `now`; returns how many.
  std::size_t evict_idle(Nanos now);
  std::size_t size() const;
  MemoryLimitStoreStats stats() const;

  struct Shard;

 private:
  // The batch decided under one shard's lock when it is such a batch (see
  // MemoryLimitStoreStats::one_shard_batches); false, with nothing changed, when it is not.
  bool check_one_shard(std::span<const LimitCheck> checks, Nanos now, BatchResult& out);

  MemoryLimitStoreOptions options_;
  std::uint64_t id_;  // PreparedChecks::maker() of the checks this store prepared
  std::size_t shard_mask_;
  std::size_t shard_cap_;
  std::uint64_t seed_;
  std::unique_ptr<Shard[]> shards_;
  std::atomic<std::uint64_t> overflows_{0};
};

}  // namespace bw::limits
