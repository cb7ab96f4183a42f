#pragma once
// KeyStore on PostgreSQL (table api_keys, migrated together with the ledger; see pg_db.h), so that
// keys created through one replica's admin API work on every replica at once. Same semantics and
// errors as SqliteKeyStore. Calls are synchronous on the caller's thread (admin path, auth cache
// misses) through a small bounded connection pool. Thread-safe.
#include <memory>
#include <string>

#include "cost/key_store.h"
#include "cost/pg_db.h"

namespace bw::cost {

struct PgKeyStoreOptions {
  PgConnectOptions db;
  std::size_t pool_size = 4;            // connections
  int pool_acquire_timeout_ms = 2'000;  // wait for a free connection, then 503
};

class PgKeyStore final : public KeyStore {
 public:
  // Connects and applies migrations (advisory-locked).
  static Result<std::unique_ptr<PgKeyStore>> open(PgKeyStoreOptions options);

  Result<IssuedKey> create(const KeySpec& spec, std::int64_t now_unix_ms) override;
  Result<ApiKeyRecord> get(const std::string& id) override;
  Result<std::vector<ApiKeyRecord>> list() override;
  Result<ApiKeyRecord> update(const std::string& id, const KeySpec& spec) override;
  Result<Ok> revoke(const std::string& id) override;
  Result<IssuedKey> rotate(const std::string& id, std::int64_t now_unix_ms) override;
  Result<ApiKeyRecord> verify(std::string_view secret) override;

 private:
  explicit PgKeyStore(PgKeyStoreOptions options);
  Result<std::vector<ApiKeyRecord>> query(const std::string& sql, const PgParams& params);

  const PgKeyStoreOptions options_;
  PgPool pool_;
};

}  // namespace bw::cost
