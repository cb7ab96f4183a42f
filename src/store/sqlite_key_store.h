#pragma once
// KeyStore on SQLite (table api_keys, schema shared with the ledger file; see sqlite_db.h).
// Thread-safe: one connection behind a mutex (admin traffic is rare; the auth layer caches).
#include <memory>
#include <mutex>
#include <string>

#include "cost/key_store.h"
#include "store/sqlite_db.h"

namespace bw::store {

class SqliteKeyStore final : public cost::KeyStore {
 public:
  static Result<std::unique_ptr<SqliteKeyStore>> open(const std::string& path,
                                                      int busy_timeout_ms = 5000);

  Result<cost::IssuedKey> create(const cost::KeySpec& spec, std::int64_t now_unix_ms) override;
  Result<cost::ApiKeyRecord> get(const std::string& id) override;
  Result<std::vector<cost::ApiKeyRecord>> list() override;
  Result<cost::ApiKeyRecord> update(const std::string& id, const cost::KeySpec& spec) override;
  Result<Ok> revoke(const std::string& id) override;
  Result<cost::IssuedKey> rotate(const std::string& id, std::int64_t now_unix_ms) override;
  Result<cost::ApiKeyRecord> verify(std::string_view secret) override;

 private:
  explicit SqliteKeyStore(SqliteDb db) : db_(std::move(db)) {}
  Result<std::vector<cost::ApiKeyRecord>> query(const char* where, const std::string* arg);
  Result<cost::ApiKeyRecord> get_locked(const std::string& id);

  std::mutex mu_;
  SqliteDb db_;
};

// Text encodings of list fields in api_keys (exposed for tests and the Postgres port).

}  // namespace bw::store
