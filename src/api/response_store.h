#pragma once
// ResponseStore: where the Responses API keeps stored responses for previous_response_id
// (docs/api-responses.md, "Conversation state"). Two backends:
//  - in process (MemoryResponseStore): bounded in count and bytes per entry, a TTL; each replica
//    has its own, and it always answers at once (try_get/try_put never defer);
//  - Redis (fleet mode): every replica sees every stored response. An entry is the JSON of
//    encode_stored_conversation, written with SET .. PX <ttl> under
//    key_prefix + <16 hex digits of SHA-256(owner)> + ":" + id, and refused above max_entry_bytes.
//    Every call has a deadline; after breaker_failures consecutive failures the store fails fast
//    for breaker_cooldown, then lets one probe through.
//
// Ownership: every entry carries its owner (StoredConversation::owner) and a lookup names the
// caller's. An entry of another owner is kNotFound, exactly as an unknown id, in both backends, so
// an id seen or guessed by someone else reveals nothing. An entry without an owner is never stored
// and never found (Redis values of version 1, written before owners existed, do not decode).
//
// Failure contract: a lookup says kFound, kNotFound (the store answered: unknown, expired, another
// owner's, or a value that does not decode), or kUnavailable (Redis did not answer in time,
// refused, or the breaker is open). A put that cannot be done is skipped (false); it never throws
// or waits past its deadline.
//
// Thread safety: all methods may be called concurrently from coroutines on any io_context. A
// Redis store must be destroyed before the io_contexts its connections were created on.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <boost/asio/awaitable.hpp>

#include "api/responses.h"
#include "common/clock.h"
#include "common/result.h"

namespace bw::api {

enum class StoreLookup : std::uint8_t { kFound, kNotFound, kUnavailable };
std::string_view to_string(StoreLookup s);

class ResponseStore {
 public:
  virtual ~ResponseStore() = default;
  // An answer without waiting, when the backend has one (in process); nullopt: co_await get().
  // `owner`: the caller's; only an entry with that owner is kFound.
  virtual std::optional<StoreLookup> try_get(const std::string& id, const std::string& owner,
                                             StoredConversation& out, Nanos now) = 0;
  virtual boost::asio::awaitable<StoreLookup> get(std::string id, std::string owner,
                                                  StoredConversation& out, Nanos now) = 0;
  // True when stored; false when skipped (too large, no owner, or the backend could not take it).
  virtual boost::asio::awaitable<bool> put(std::string id, StoredConversation entry, Nanos now) = 0;
  virtual std::string_view backend() const = 0;
};

struct ResponseStoreOptions {
  Nanos ttl = 3600 * kNanosPerSecond;     // each entry is kept this long
  std::size_t max_entries = 10'000;       // in process only: Redis is bounded by its own memory
  std::size_t max_entry_bytes = 1 << 20;  // in process: stored_size; Redis: the JSON's size
};

std::unique_ptr<ResponseStore> make_memory_response_store(const ResponseStoreOptions& options);

struct RedisResponseStoreOptions {
  std::string url = "redis://127.0.0.1:6379";  // redis://[[user]:password@]host[:port][/db]
  Nanos timeout = 20 * kNanosPerMilli;         // deadline of one call, connect included
  std::size_t pool_size = 0;                   // max connections; 0 = one per io_context
  std::size_t max_in_flight = 1024;            // pipelined requests per connection
  std::string key_prefix = "bw:resp:";
  int breaker_failures = 5;
  Nanos breaker_cooldown = kNanosPerSecond;
  ResponseStoreOptions store;
};

struct ResponseStoreStats {
  std::uint64_t calls = 0;      // Redis round trips attempted
  std::uint64_t failures = 0;   // calls that failed (timeout, connection, error reply)
  std::uint64_t too_large = 0;  // puts skipped for max_entry_bytes
  bool breaker_open = false;
};

class RedisResponseStore;
// Fails only on an invalid URL. Connects lazily on first use.
Result<std::unique_ptr<RedisResponseStore>> make_redis_response_store(
    RedisResponseStoreOptions options);

class RedisResponseStore final : public ResponseStore {
 public:
  ~RedisResponseStore() override;
  std::optional<StoreLookup> try_get(const std::string&, const std::string&, StoredConversation&,
                                     Nanos) override {
    return std::nullopt;
  }
  boost::asio::awaitable<StoreLookup> get(std::string id, std::string owner,
                                          StoredConversation& out, Nanos now) override;
  boost::asio::awaitable<bool> put(std::string id, StoredConversation entry, Nanos now) override;
  std::string_view backend() const override { return "redis"; }
  ResponseStoreStats stats() const;

 private:
  friend Result<std::unique_ptr<RedisResponseStore>> make_redis_response_store(
      RedisResponseStoreOptions options);
  struct Impl;
  explicit RedisResponseStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace bw::api
