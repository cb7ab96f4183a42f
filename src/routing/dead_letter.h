#pragma once
// DeadLetterQueue: durable store (SQLite, WAL) for P2 batch requests that failed for good, so an
// operator can inspect and replay them. Bounded by entry count AND total bytes; when full, the
// oldest entries are dropped first (counted in dropped_total()). An entry larger than max_bytes
// on its own is refused and counted as dropped.
// Thread safety: all methods are thread-safe (one connection behind a mutex). Calls do disk I/O:
// run them off the event loop or accept a short block (inserts are rare).
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

struct sqlite3;

namespace bw::routing {

struct DeadLetterConfig {
  std::string path = "bellwether-dlq.db";  // SQLite file; created if missing
  std::int64_t max_entries = 10000;        // count bound
  std::int64_t max_bytes = 104857600;      // bound on the sum of entry sizes (body + text fields)
};

struct NewDeadLetter {
  std::int64_t created_unix_ms = 0;
  std::string key_id;  // API key id (never the key)
  std::string model;
  std::string endpoint;  // e.g. /v1/chat/completions
  std::string body;      // request body, bytes as received
  std::string error;     // last error, free of secrets
  int attempts = 0;
};

struct DeadLetter {
  std::int64_t id = 0;
  std::int64_t created_unix_ms = 0;
  std::string key_id;
  std::string model;
  std::string endpoint;
  std::string body;  // empty in list() results unless asked for
  std::string error;
  int attempts = 0;
  std::int64_t size_bytes = 0;
  std::optional<std::int64_t> replayed_unix_ms;
};

class DeadLetterQueue {
 public:
  static Result<std::unique_ptr<DeadLetterQueue>> open(const DeadLetterConfig& cfg);
  ~DeadLetterQueue();
  DeadLetterQueue(const DeadLetterQueue&) = delete;
  DeadLetterQueue& operator=(const DeadLetterQueue&) = delete;

  // Stores an entry, evicting the oldest as needed; returns its id.
  Result<std::int64_t> add(const NewDeadLetter& e);
  // Entries with id > after_id, oldest first, at most `limit` (1..1000).
  Result<std::vector<DeadLetter>> list(std::int64_t after_id, int limit, bool with_body = false);
  Result<std::optional<DeadLetter>> get(std::int64_t id);
  // true when the entry existed.
  Result<bool> remove(std::int64_t id);
  Result<bool> mark_replayed(std::int64_t id, std::int64_t unix_ms);

  std::int64_t size() const;
  std::int64_t bytes() const;
  std::uint64_t added_total() const { return added_.load(std::memory_order_relaxed); }
  std::uint64_t dropped_total() const { return dropped_.load(std::memory_order_relaxed); }

  static std::int64_t entry_size(const NewDeadLetter& e);

 private:
  DeadLetterQueue(sqlite3* db, DeadLetterConfig cfg);
  Result<Ok> load_totals();
  Result<Ok> exec(const char* sql);
  Error db_error(const char* what) const;

  mutable std::mutex mu_;
  sqlite3* db_;
  DeadLetterConfig cfg_;
  std::int64_t count_ = 0;
  std::int64_t bytes_ = 0;
  std::atomic<std::uint64_t> added_{0};
  std::atomic<std::uint64_t> dropped_{0};
};

}  // namespace bw::routing
