#pragma once
// KeyStore on PostgreSQL (table api_keys, migrated together with the ledger; see pg_db.h), so that
// keys created through one replica's admin API work on every replica at once. Same semantics and
// errors as SqliteKeyStore. Calls are synchronous on the caller's thread (admin path, auth cache
// misses) through a small bounded connection pool. Thread-safe.
#include <memory>
#include <string>

#include "cost/key_store.h"
#include "store/pg_db.h"

namespace bw::store {

struct PgKeyStoreOptions {
  PgConnectOptions db;
  std::size_t pool_size = 4;            // connections
  int pool_acquire_timeout_ms = 2'000;  // wait for a free connection, then 503
};

class PgKeyStore final : public cost::KeyStore {
 public:
  // Connects and applies migrations (advisory-locked).
  static Result<std::unique_ptr<PgKeyStore>> open(PgKeyStoreOptions options);

  Result<cost::IssuedKey> create(const cost::KeySpec& spec, std::int64_t now_unix_ms) override;
  Result<cost::ApiKeyRecord> get(const std::string& id) override;
  Result<std::vector<cost::ApiKeyRecord>> list() override;
  Result<cost::ApiKeyRecord> update(const std::string& id, const cost::KeySpec& spec) override;
  Result<Ok> revoke(const std::string& id) override;
  Result<cost::IssuedKey> rotate(const std::string& id, std::int64_t now_unix_ms) override;
  Result<cost::ApiKeyRecord> verify(std::string_view secret) override;

 private:
  explicit PgKeyStore(PgKeyStoreOptions options);
  Result<std::vector<cost::ApiKeyRecord>> query(const std::string& sql, const PgParams& params);

  const PgKeyStoreOptions options_;
  PgPool pool_;
};

}  // namespace bw::store
