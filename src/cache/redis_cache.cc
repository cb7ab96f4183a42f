#include "cache/redis_cache.h"

#include <zlib.h>

#include <cstring>

namespace bw::cache {

namespace asio = boost::asio;

std::string compress_value(std::string raw, std::size_t compress_above) {
  if (raw.size() > compress_above) {
    uLongf bound = compressBound(static_cast<uLong>(raw.size()));
    std::string out(1 + 8 + bound, '\0');
    out[0] = 'z';
    const std::uint64_t n = raw.size();
    std::memcpy(out.data() + 1, &n, 8);
    if (compress2(reinterpret_cast<Bytef*>(out.data() + 9), &bound,
                  reinterpret_cast<const Bytef*>(raw.data()), static_cast<uLong>(raw.size()),
                  1) == Z_OK &&
        bound + 9 < raw.size()) {
      out.resize(9 + bound);
      return out;
    }
  }
  raw.insert(raw.begin(), 'r');
  return raw;
}

Result<std::string> decompress_value(std::string_view stored) {
  auto bad = [] { return make_error(500, "server_error", "cache_corrupt", "bad cache value"); };
  if (stored.empty()) return bad();
  if (stored[0] == 'r') return std::string(stored.substr(1));
  if (stored[0] != 'z' || stored.size() < 9) return bad();
  std::uint64_t n = 0;
  std::memcpy(&n, stored.data() + 1, 8);
  if (n > (1u << 30)) return bad();
  std::string out(n, '\0');
  uLongf len = static_cast<uLongf>(n);
  if (uncompress(reinterpret_cast<Bytef*>(out.data()), &len,
                 reinterpret_cast<const Bytef*>(stored.data() + 9),
                 static_cast<uLong>(stored.size() - 9)) != Z_OK ||
      len != n) {
    return bad();
  }
  return out;
}

RedisCache::RedisCache(std::shared_ptr<store::RedisClient> client, RedisCacheOptions options,
                       const Clock& clock)
    : client_(std::move(client)),
      options_(std::move(options)),
      clock_(clock),
      breaker_(options_.breaker_failures, options_.breaker_cooldown) {}

asio::awaitable<Lookup> RedisCache::get(const std::string& key) {
  const Nanos now = clock_.now();
  if (!breaker_.allow(now)) {
    Lookup failed;
    failed.failed = true;
    co_return failed;
  }
  std::string cmd = store::redis_format_command({"GET", options_.prefix + key});
  auto r = co_await client_->execute(std::move(cmd), now + options_.timeout);
  if (!r.reply || r.reply->type == REDIS_REPLY_ERROR) {
    breaker_.failure(clock_.now());
    failures_.fetch_add(1, std::memory_order_relaxed);
    {
      Lookup failed;
      failed.failed = true;
      co_return failed;
    }
  }
  breaker_.success();
  if (r.reply->type != REDIS_REPLY_STRING) co_return Lookup{};
  auto raw = decompress_value(std::string_view(r.reply->str, r.reply->len));
  if (!raw) {
    Lookup failed;
    failed.failed = true;
    co_return failed;
  }
  auto e = decode(*raw);
  if (!e) {
    Lookup failed;
    failed.failed = true;
    co_return failed;
  }
  Lookup hit;
  hit.entry = std::make_shared<const Entry>(std::move(*e));
  co_return hit;
}

asio::awaitable<bool> RedisCache::set_raw(const std::string& key, std::string value, Nanos ttl) {
  const Nanos now = clock_.now();
  if (!breaker_.allow(now)) co_return false;
  const auto ms = std::max<Nanos>(1, ttl / kNanosPerMilli);
  std::string cmd = store::redis_format_command(
      {"SET", options_.prefix + key, std::move(value), "PX", std::to_string(ms)});
  auto r = co_await client_->execute(std::move(cmd), now + options_.timeout);
  if (!r.reply || r.reply->type == REDIS_REPLY_ERROR) {
    breaker_.failure(clock_.now());
    failures_.fetch_add(1, std::memory_order_relaxed);
    co_return false;
  }
  breaker_.success();
  co_return true;
}

asio::awaitable<void> RedisCache::put(const std::string& key, std::shared_ptr<const Entry> entry,
                                      Nanos ttl) {
  if (ttl <= 0) co_return;
  co_await set_raw(key, compress_value(encode(*entry), options_.compress_above), ttl);
}

asio::awaitable<std::vector<std::pair<std::string, std::string>>> RedisCache::scan_raw(
    const std::string& pattern, std::size_t max_keys, Nanos deadline) {
  std::vector<std::pair<std::string, std::string>> out;
  std::string cursor = "0";
  do {
    std::string cmd = store::redis_format_command(
        {"SCAN", cursor, "MATCH", options_.prefix + pattern, "COUNT", "500"});
    auto r = co_await client_->execute(std::move(cmd), deadline);
    if (!r.reply || r.reply->type != REDIS_REPLY_ARRAY || r.reply->elements != 2) break;
    cursor = std::string(r.reply->element[0]->str, r.reply->element[0]->len);
    const auto* keys = r.reply->element[1];
    for (std::size_t i = 0; i < keys->elements && out.size() < max_keys; ++i) {
      std::string k(keys->element[i]->str, keys->element[i]->len);
      std::string get_cmd = store::redis_format_command({"GET", k});
      auto v = co_await client_->execute(std::move(get_cmd), deadline);
      if (!v.reply || v.reply->type != REDIS_REPLY_STRING) continue;
      out.emplace_back(k.substr(options_.prefix.size()), std::string(v.reply->str, v.reply->len));
    }
  } while (cursor != "0" && out.size() < max_keys && clock_.now() < deadline);
  co_return out;
}

}  // namespace bw::cache
