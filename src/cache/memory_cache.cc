#include "cache/memory_cache.h"

#include <functional>

namespace bw::cache {

MemoryCache::MemoryCache(MemoryCacheOptions options, const Clock& clock)
    : options_(options), clock_(clock) {
  if (options_.shards == 0) options_.shards = 1;
  shard_limit_ = options_.max_bytes / options_.shards;
  shards_.reserve(options_.shards);
  for (std::size_t i = 0; i < options_.shards; ++i) shards_.push_back(std::make_unique<Shard>());
}

MemoryCache::Shard& MemoryCache::shard_for(const std::string& key) {
  return *shards_[std::hash<std::string>{}(key) % shards_.size()];
}

void MemoryCache::remove(Shard& s, std::list<Node>::iterator it) {
  s.bytes -= it->bytes;
  s.index.erase(std::string_view(it->key));
  s.lru.erase(it);
}

std::shared_ptr<const Entry> MemoryCache::find(const std::string& key, Nanos now) {
  auto& s = shard_for(key);
  std::lock_guard lock(s.mu);
  auto f = s.index.find(std::string_view(key));
  if (f == s.index.end()) return nullptr;
  auto it = f->second;
  if (it->expires_at <= now) {
    remove(s, it);
    return nullptr;
  }
  s.lru.splice(s.lru.begin(), s.lru, it);
  return it->entry;
}

bool MemoryCache::insert(const std::string& key, std::shared_ptr<const Entry> entry, Nanos ttl,
                         Nanos now) {
  const std::size_t bytes = entry->footprint() + key.size() * 2 + 64;
  if (bytes > shard_limit_ || ttl <= 0) return false;
  auto& s = shard_for(key);
  std::lock_guard lock(s.mu);
  if (auto f = s.index.find(std::string_view(key)); f != s.index.end()) remove(s, f->second);
  s.lru.push_front(Node{key, std::move(entry), bytes, now + ttl});
  s.index.emplace(std::string_view(s.lru.front().key), s.lru.begin());
  s.bytes += bytes;
  while (s.bytes > shard_limit_) {
    auto last = std::prev(s.lru.end());
    remove(s, last);
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
  return true;
}

bool MemoryCache::erase(const std::string& key) {
  auto& s = shard_for(key);
  std::lock_guard lock(s.mu);
  auto f = s.index.find(std::string_view(key));
  if (f == s.index.end()) return false;
  remove(s, f->second);
  return true;
}

boost::asio::awaitable<Lookup> MemoryCache::get(const std::string& key) {
  Lookup out;
  out.entry = find(key, clock_.now());
  co_return out;
}

boost::asio::awaitable<void> MemoryCache::put(const std::string& key,
                                              std::shared_ptr<const Entry> entry, Nanos ttl) {
  insert(key, std::move(entry), ttl, clock_.now());
  co_return;
}

std::size_t MemoryCache::bytes() const {
  std::size_t n = 0;
  for (const auto& s : shards_) {
    std::lock_guard lock(s->mu);
    n += s->bytes;
  }
  return n;
}

std::size_t MemoryCache::size() const {
  std::size_t n = 0;
  for (const auto& s : shards_) {
    std::lock_guard lock(s->mu);
    n += s->lru.size();
  }
  return n;
}

}  // namespace bw::cache
