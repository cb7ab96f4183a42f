#pragma once
// RedisLimitStore: the AsyncLimitStore shared by every replica of the gateway
// (docs/distributed.md).
//
// One request = one round trip = one EVALSHA of the limit script (redis_script.h), which checks and
// consumes all buckets of the batch atomically inside Redis with the exact arithmetic of
// algorithms.h. Keys expire (PX) when their bucket is full again.
//
// I/O: RedisClient (store/redis_conn.h): one pipelined connection per worker io_context, a deadline
// on every call, the script loaded lazily and reloaded after a restart (NOSCRIPT falls back to
// EVAL).
//
// Failure: after `breaker_failures` consecutive failures (timeouts, connection or protocol errors)
// the store fails fast for `breaker_cooldown`, then lets one probe through. While Redis cannot
// answer, each limit follows its policy: kFailOpenLocal judges it in an in-process
// MemoryLimitStore with rate and burst divided by `replicas`; kFailClosed rejects the request
// (BatchResult::unavailable, retry_after = fail_closed_retry_after; the gateway answers 503).
//
// Thread safety: all methods may be called concurrently from coroutines on any io_context. The
// store must be destroyed before the io_contexts its connections were created on.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "limits/limit_store.h"
#include "limits/memory_limit_store.h"
#include "store/redis_conn.h"

namespace bw::limits {

enum class RedisFailurePolicy : std::uint8_t {
  kFailOpenLocal,  // judge against a local bucket holding 1/replicas of the limit
  kFailClosed,     // reject (503 + Retry-After)
};

enum class RedisTimeSource : std::uint8_t {
  // The script reads Redis TIME: one clock for all replicas, so a replica's clock skew cannot
  // drain buckets early. The `now` argument then only drives the breaker and local fallback.
  kRedisServer,
  // The script uses the caller's `now` (tests, or a single writer). Unsafe with several replicas:
  // their monotonic clocks are unrelated.
  kCaller,
};

struct RedisLimitStoreOptions {
  std::string url = "redis://127.0.0.1:6379";  // redis://[[user]:password@]host[:port][/db]
  Nanos timeout = 20 * kNanosPerMilli;         // deadline of one call, connect included
  std::size_t pool_size = 0;                   // max connections; 0 = one per io_context (worker)
  std::size_t max_in_flight = 1024;  // pipelined requests per connection; more fail at once
  std::int64_t replicas = 3;         // divisor of rate and burst for kFailOpenLocal
  RedisFailurePolicy failure_policy = RedisFailurePolicy::kFailOpenLocal;
  // Per limit name (LimitSpec::name): overrides failure_policy (`on_redis_failure` in YAML).
  std::unordered_map<std::string, RedisFailurePolicy> policy_overrides;
  int breaker_failures = 5;                         // consecutive failures that open the breaker
  Nanos breaker_cooldown = kNanosPerSecond;         // fail fast this long, then probe
  Nanos fail_closed_retry_after = kNanosPerSecond;  // Retry-After of a fail-closed rejection
  std::string key_prefix = "bw:rl:";                // namespace of the bucket keys in Redis
  RedisTimeSource time_source = RedisTimeSource::kRedisServer;
  // Keys live this much longer than their bucket needs. 0 is exact with kRedisServer; with kCaller
  // it absorbs a caller clock that runs slower than Redis' expiry clock.
  Nanos ttl_margin = 0;
  MemoryLimitStoreOptions local;  // the fail-open store
};

struct RedisLimitStoreStats {
  std::uint64_t calls = 0;         // round trips attempted (EVALSHA/EVAL)
  std::uint64_t failures = 0;      // calls that failed (timeout, connection, protocol)
  std::uint64_t fallbacks = 0;     // batches or adjusts decided by the failure policy
  std::uint64_t script_loads = 0;  // NOSCRIPT replies answered with EVAL
  bool breaker_open = false;
};

class RedisLimitStore final : public AsyncLimitStore {
 public:
  // Fails only on an invalid URL. Connects lazily on first use.
  static Result<std::shared_ptr<RedisLimitStore>> create(RedisLimitStoreOptions options);
  ~RedisLimitStore() override;
  RedisLimitStore(const RedisLimitStore&) = delete;
  RedisLimitStore& operator=(const RedisLimitStore&) = delete;

  boost::asio::awaitable<BatchResult> check_and_consume_async(std::span<const LimitCheck> checks,
                                                              Nanos now) override;
  boost::asio::awaitable<void> adjust_async(std::string_view key, AdjustSpec spec,
                                            std::int64_t delta, Nanos now) override;
  bool degraded() const override;

  RedisFailurePolicy policy_for(std::string_view limit_name) const;
  RedisLimitStoreStats stats() const;
  MemoryLimitStore& local_store() { return local_; }

 private:
  RedisLimitStore(RedisLimitStoreOptions options, store::RedisEndpoint endpoint);

  BatchResult fallback(std::span<const LimitCheck> checks, Nanos now);
  // The share of a limit that one replica enforces while Redis is unreachable.
  LimitSpec local_spec(const LimitSpec& spec) const;
  AdjustSpec local_spec(const AdjustSpec& spec) const;

  RedisLimitStoreOptions options_;

  store::RedisClient client_;
  store::RedisBreaker breaker_;
  MemoryLimitStore local_;
  std::atomic<std::uint64_t> failures_{0}, fallbacks_{0};
};

}  // namespace bw::limits
