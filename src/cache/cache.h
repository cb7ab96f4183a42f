#pragma once
// Cache: the response cache's storage interface (in process: memory_cache.h; several replicas:
// redis_cache.h), the cached entry and its wire encoding. docs/cache.md.
//
// Contract: get() never fails the request. A backend that cannot answer (Redis down or slow)
// reports `failed` and the caller treats it as a miss; put() is best effort. Entries expire after
// their TTL and are evicted earlier when the backend is full.
// Thread safety: every Cache may be used concurrently from coroutines on any io_context.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <boost/asio/awaitable.hpp>

#include "common/clock.h"
#include "common/result.h"

namespace bw::cache {

// One cached answer. A buffered answer is kept as its body; a streamed one as the SSE events the
// upstream sent (every event, including the usage chunk and the final [DONE]), so that a replay
// is a well-formed stream of the same API. A stream is stored only after it ended normally.
struct Entry {
  enum class Kind : std::uint8_t { kBody = 0, kStream = 1 };
  Kind kind = Kind::kBody;
  std::string content_type;
  std::string body;
  std::int64_t created_unix_ms = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  std::int64_t cost_micro = 0;  // what the original call cost: what a hit saves
  std::string model_served;
  // Bytes this entry holds in memory (the LRU's unit).
  std::size_t footprint() const;
};

// A compact binary form, used by the Redis backend (and its compression) and by tests.
std::string encode(const Entry& e);
Result<Entry> decode(std::string_view bytes);

struct Lookup {
  std::shared_ptr<const Entry> entry;  // null: a miss
  bool failed = false;                 // the backend could not answer (counted as a miss)
};

class Cache {
 public:
  virtual ~Cache() = default;
  virtual boost::asio::awaitable<Lookup> get(const std::string& key) = 0;
  // Stores `entry` for `ttl`; an entry above the backend's bound is not stored.
  virtual boost::asio::awaitable<void> put(const std::string& key,
                                           std::shared_ptr<const Entry> entry, Nanos ttl) = 0;
  virtual std::string_view backend() const = 0;  // "memory" | "redis"
};

}  // namespace bw::cache
