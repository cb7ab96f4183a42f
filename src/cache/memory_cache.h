#pragma once
// MemoryCache: the in-process backend. An LRU bounded in bytes (Entry::footprint plus the key),
// split in shards by key hash, each with its own short mutex (held for a map lookup and a list
// splice, never across a co_await), so that workers rarely meet on the same lock. An entry
// expires at its TTL (checked on read, monotonic clock) and the least recently used entries of a
// shard go first when it is over its share of the bound.
// Thread safety: every method may be called from any thread.
#include <atomic>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/cache.h"

namespace bw::cache {

struct MemoryCacheOptions {
  std::size_t max_bytes = 256u << 20;
  std::size_t shards = 16;
};

class MemoryCache final : public Cache {
 public:
  MemoryCache(MemoryCacheOptions options, const Clock& clock);

  // Synchronous forms (the awaitable ones call these with the clock's now).
  std::shared_ptr<const Entry> find(const std::string& key, Nanos now);
  // False when the entry alone is larger than a shard's share of the bound.
  bool insert(const std::string& key, std::shared_ptr<const Entry> entry, Nanos ttl, Nanos now);
  bool erase(const std::string& key);

  boost::asio::awaitable<Lookup> get(const std::string& key) override;
  boost::asio::awaitable<void> put(const std::string& key, std::shared_ptr<const Entry> entry,
                                   Nanos ttl) override;
  std::string_view backend() const override { return "memory"; }

  std::size_t bytes() const;
  std::size_t size() const;
  std::uint64_t evictions() const { return evictions_.load(std::memory_order_relaxed); }
  std::size_t max_bytes() const { return options_.max_bytes; }

 private:
  struct Node {
    std::string key;
    std::shared_ptr<const Entry> entry;
    std::size_t bytes = 0;
    Nanos expires_at = 0;
  };
  struct Shard {
    mutable std::mutex mu;
    std::list<Node> lru;  // front = most recently used
    std::unordered_map<std::string_view, std::list<Node>::iterator> index;
    std::size_t bytes = 0;
  };
  Shard& shard_for(const std::string& key);
  void remove(Shard& s, std::list<Node>::iterator it);

  MemoryCacheOptions options_;
  const Clock& clock_;
  std::size_t shard_limit_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<std::uint64_t> evictions_{0};
};

}  // namespace bw::cache
