#pragma once
// RedisCache: the backend shared by every replica. One SET ... PX per stored entry (the TTL is
// Redis's), one GET per lookup. Values above `compress_above` bytes are zlib-compressed. Every
// call has a short deadline; a timeout, an error or an open breaker is a miss (Lookup::failed),
// never an error for the request, and a failing Redis is skipped for `breaker_cooldown` after
// `breaker_failures` consecutive failures so that it costs no timeout per request.
// Thread safety: as RedisClient (any coroutine, any io_context).
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "cache/cache.h"
#include "store/redis_conn.h"

namespace bw::cache {

struct RedisCacheOptions {
  Nanos timeout = millis(50);
  std::size_t compress_above = 1024;
  std::string prefix = "bw:cache:";
  int breaker_failures = 3;
  Nanos breaker_cooldown = seconds(2);
};

// Value framing: 'r' + raw encode(), or 'z' + u64 raw size + zlib data.
std::string compress_value(std::string raw, std::size_t compress_above);
Result<std::string> decompress_value(std::string_view stored);

class RedisCache final : public Cache {
 public:
  RedisCache(std::shared_ptr<store::RedisClient> client, RedisCacheOptions options,
             const Clock& clock);

  boost::asio::awaitable<Lookup> get(const std::string& key) override;
  boost::asio::awaitable<void> put(const std::string& key, std::shared_ptr<const Entry> entry,
                                   Nanos ttl) override;
  std::string_view backend() const override { return "redis"; }

  // Raw access for the semantic index (its own key space under the same prefix).
  boost::asio::awaitable<bool> set_raw(const std::string& key, std::string value, Nanos ttl);
  // SCAN of prefix+`pattern`, each key with its value; bounded by `max_keys`.
  boost::asio::awaitable<std::vector<std::pair<std::string, std::string>>> scan_raw(
      const std::string& pattern, std::size_t max_keys, Nanos deadline);

  std::uint64_t failures() const { return failures_.load(std::memory_order_relaxed); }
  const RedisCacheOptions& options() const { return options_; }

 private:
  std::shared_ptr<store::RedisClient> client_;
  RedisCacheOptions options_;
  const Clock& clock_;
  store::RedisBreaker breaker_;
  std::atomic<std::uint64_t> failures_{0};
};

}  // namespace bw::cache
