#pragma once
// KeyStore on SQLite (table api_keys, schema shared with the ledger file; see sqlite_db.h).
// Thread-safe: one connection behind a mutex (admin traffic is rare; the auth layer caches).
#include <memory>
#include <mutex>
#include <string>

#include "cost/key_store.h"
#include "cost/sqlite_db.h"

namespace bw::cost {

class SqliteKeyStore final : public KeyStore {
 public:
  static Result<std::unique_ptr<SqliteKeyStore>> open(const std::string& path,
                                                      int busy_timeout_ms = 5000);

  Result<IssuedKey> create(const KeySpec& spec, std::int64_t now_unix_ms) override;
  Result<ApiKeyRecord> get(const std::string& id) override;
  Result<std::vector<ApiKeyRecord>> list() override;
  Result<ApiKeyRecord> update(const std::string& id, const KeySpec& spec) override;
  Result<Ok> revoke(const std::string& id) override;
  Result<IssuedKey> rotate(const std::string& id, std::int64_t now_unix_ms) override;
  Result<ApiKeyRecord> verify(std::string_view secret) override;

 private:
  explicit SqliteKeyStore(SqliteDb db) : db_(std::move(db)) {}
  Result<std::vector<ApiKeyRecord>> query(const char* where, const std::string* arg);
  Result<ApiKeyRecord> get_locked(const std::string& id);

  std::mutex mu_;
  SqliteDb db_;
};

// Text encodings of list fields in api_keys (exposed for tests and the Postgres port).
std::string encode_key_budgets(const std::vector<KeyBudget>& budgets);  // "monthly:5000000;daily:1"
std::vector<KeyBudget> decode_key_budgets(std::string_view s);
std::string encode_models(const std::vector<std::string>& models);  // newline separated
std::vector<std::string> decode_models(std::string_view s);

}  // namespace bw::cost
