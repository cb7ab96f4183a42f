#include "api/response_store.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "store/key_crypto.h"
#include "store/redis_conn.h"

namespace bw::api {

namespace asio = boost::asio;

std::string_view to_string(StoreLookup s) {
  switch (s) {
    case StoreLookup::kFound:
      return "found";
    case StoreLookup::kNotFound:
      return "not_found";
    case StoreLookup::kUnavailable:
      return "unavailable";
  }
  return "unavailable";
}

namespace {

class InProcessResponseStore final : public ResponseStore {
 public:
  explicit InProcessResponseStore(const ResponseStoreOptions& o)
      : store_(o.max_entries, o.ttl, o.max_entry_bytes) {}
  std::optional<StoreLookup> try_get(const std::string& id, const std::string& owner,
                                     StoredConversation& out, Nanos now) override {
    return store_.get(id, owner, out, now) ? StoreLookup::kFound : StoreLookup::kNotFound;
  }
  asio::awaitable<StoreLookup> get(std::string id, std::string owner, StoredConversation& out,
                                   Nanos now) override {
    co_return *try_get(id, owner, out, now);
  }
  asio::awaitable<bool> put(std::string id, StoredConversation entry, Nanos now) override {
    co_return store_.put(id, std::move(entry), now);
  }
  std::string_view backend() const override { return "memory"; }

 private:
  MemoryResponseStore store_;
};

Nanos steady_now() {
  return SteadyClock::instance().now();
}

// Built outside the coroutines: GCC 12 cannot keep a braced list's array in a coroutine frame.
std::string get_command(const std::string& key) {
  return store::redis_format_command({"GET", key});
}
std::string set_command(const std::string& key, const std::string& value, std::int64_t ttl_ms) {
  return store::redis_format_command({"SET", key, value, "PX", std::to_string(ttl_ms)});
}

// An entry's key names its owner (the first 16 hex digits of the owner's SHA-256, fixed length so
// that no owner and id can be read as another owner and id): another owner's lookup is the GET of
// a key that does not exist, the same round trip as for an unknown id, without the value's
// transfer and decode whose time could tell that the id exists.
std::string entry_key(const std::string& prefix, const std::string& owner, const std::string& id) {
  return prefix + store::sha256_hex(owner).substr(0, 16) + ":" + id;
}

}  // namespace

std::unique_ptr<ResponseStore> make_memory_response_store(const ResponseStoreOptions& options) {
  return std::make_unique<InProcessResponseStore>(options);
}

struct RedisResponseStore::Impl {
  Impl(RedisResponseStoreOptions o, store::RedisEndpoint ep)
      : options(std::move(o)),
        client(std::move(ep), options.pool_size, options.max_in_flight, {}),
        breaker(options.breaker_failures, options.breaker_cooldown) {}
  RedisResponseStoreOptions options;
  store::RedisClient client;
  store::RedisBreaker breaker;
  std::atomic<std::uint64_t> failures{0}, too_large{0};

  void failed(Nanos now) {
    failures.fetch_add(1, std::memory_order_relaxed);
    breaker.failure(now);
  }
};

Result<std::unique_ptr<RedisResponseStore>> make_redis_response_store(
    RedisResponseStoreOptions options) {
  auto ep = store::parse_redis_url(options.url);
  if (!ep) return ep.error();
  if (options.max_in_flight < 1) options.max_in_flight = 1;
  if (options.breaker_failures < 1) options.breaker_failures = 1;
  return std::unique_ptr<RedisResponseStore>(new RedisResponseStore(
      std::make_unique<RedisResponseStore::Impl>(std::move(options), std::move(*ep))));
}

RedisResponseStore::RedisResponseStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RedisResponseStore::~RedisResponseStore() = default;

asio::awaitable<StoreLookup> RedisResponseStore::get(std::string id, std::string owner,
                                                     StoredConversation& out, Nanos now) {
  Impl& s = *impl_;
  if (!s.breaker.allow(now)) co_return StoreLookup::kUnavailable;
  std::string command = get_command(entry_key(s.options.key_prefix, owner, id));
  store::RedisCallResult r =
      co_await s.client.execute(std::move(command), steady_now() + s.options.timeout);
  const redisReply* rep = r.reply.get();
  if (!rep || rep->type == REDIS_REPLY_ERROR) {
    s.failed(now);
    co_return StoreLookup::kUnavailable;
  }
  s.breaker.success();
  if (rep->type != REDIS_REPLY_STRING) co_return StoreLookup::kNotFound;  // nil: unknown/expired
  // The owner is in the value too, checked again (a second line behind the key): another owner's
  // conversation never reaches `out`.
  StoredConversation entry;
  if (!decode_stored_conversation(std::string_view(rep->str, rep->len), entry)) {
    co_return StoreLookup::kNotFound;
  }
  if (owner.empty() || entry.owner != owner) co_return StoreLookup::kNotFound;
  out = std::move(entry);
  co_return StoreLookup::kFound;
}

asio::awaitable<bool> RedisResponseStore::put(std::string id, StoredConversation entry, Nanos now) {
  Impl& s = *impl_;
  if (entry.owner.empty()) co_return false;
  std::string value = encode_stored_conversation(entry);
  if (value.size() > s.options.store.max_entry_bytes) {
    s.too_large.fetch_add(1, std::memory_order_relaxed);
    co_return false;
  }
  if (!s.breaker.allow(now)) co_return false;
  const std::int64_t ttl_ms = std::max<std::int64_t>(1, s.options.store.ttl / kNanosPerMilli);
  std::string command =
      set_command(entry_key(s.options.key_prefix, entry.owner, id), value, ttl_ms);
  value = std::string();
  store::RedisCallResult r =
      co_await s.client.execute(std::move(command), steady_now() + s.options.timeout);
  const redisReply* rep = r.reply.get();
  if (!rep || rep->type == REDIS_REPLY_ERROR) {
    s.failed(now);
    co_return false;
  }
  s.breaker.success();
  co_return true;
}

ResponseStoreStats RedisResponseStore::stats() const {
  ResponseStoreStats st;
  st.calls = impl_->client.calls();
  st.failures = impl_->failures.load(std::memory_order_relaxed);
  st.too_large = impl_->too_large.load(std::memory_order_relaxed);
  st.breaker_open = impl_->breaker.open();
  return st;
}

}  // namespace bw::api
