#include "store/sqlite_key_store.h"

#include <sqlite3.h>

#include "store/key_crypto.h"
#include "store/key_spec.h"

namespace bw::store {

using cost::ApiKeyRecord;
using cost::IssuedKey;
using cost::KeySpec;

namespace {

cost::ApiKeyRecord read_key(const Statement& st) {
  return read_key_record([&](int c) { return st.column_text(c); },
                         [&](int c) { return st.column_int(c); },
                         [&](int c) { return st.column_int(c) != 0; });
}

// Binds the spec's nine columns to parameters first .. first + 8.
void bind_spec(Statement& st, int first, const KeySpec& spec) {
  st.bind(first, spec.name)
      .bind(first + 1, spec.tenant)
      .bind(first + 2, spec.plan)
      .bind(first + 3, spec.limits_json)
      .bind(first + 4, encode_key_budgets(spec.budgets))
      .bind(first + 5, join_lines(spec.allowed_models))
      .bind(first + 6, std::int64_t{spec.default_priority})
      .bind(first + 7, std::int64_t{spec.max_priority})
      .bind(first + 8, std::int64_t{spec.downgrade_opt_out ? 1 : 0});
}

}  // namespace

Result<std::unique_ptr<SqliteKeyStore>> SqliteKeyStore::open(const std::string& path,
                                                             int busy_timeout_ms) {
  auto db = SqliteDb::open(path, true, busy_timeout_ms);
  if (!db.ok()) return db.error();
  auto m = migrate(*db);
  if (!m.ok()) return m.error();
  return std::unique_ptr<SqliteKeyStore>(new SqliteKeyStore(std::move(*db)));
}

Result<std::vector<ApiKeyRecord>> SqliteKeyStore::query(const char* where, const std::string* arg) {
  auto st =
      Statement::prepare(db_, std::string("SELECT ") + kKeyColumns + " FROM api_keys " + where);
  if (!st.ok()) return st.error();
  if (arg) st->bind(1, *arg);
  std::vector<ApiKeyRecord> out;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) out.push_back(read_key(*st));
  if (rc != SQLITE_DONE) return db_error("key store query", db_.last_error());
  return out;
}

Result<ApiKeyRecord> SqliteKeyStore::get_locked(const std::string& id) {
  auto rows = query("WHERE id = ?1", &id);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return cost::key_not_found_error(id);
  return std::move(rows->front());
}

Result<IssuedKey> SqliteKeyStore::create(const KeySpec& spec, std::int64_t now_unix_ms) {
  if (auto v = validate_key_spec(spec); !v.ok()) return v.error();
  std::lock_guard lock(mu_);
  // A generated id can collide (36^12 space); retry a few times rather than fail the admin call.
  for (int attempt = 0; attempt < kKeyIdAttempts; ++attempt) {
    auto issued = mint_key(spec, now_unix_ms);
    if (!issued) return cost::rng_failure_error();
    auto st = Statement::prepare(
        db_,
        "INSERT INTO api_keys (id, secret_hash, prefix, name, tenant, plan, limits_json, budgets,"
        " allowed_models, default_priority, max_priority, downgrade_opt_out, revoked,"
        " created_unix_ms, rotated_unix_ms) VALUES "
        "(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,0,?13,0)");
    if (!st.ok()) return st.error();
    st->bind(1, issued->record.id)
        .bind(2, issued->record.secret_hash)
        .bind(3, issued->record.prefix)
        .bind(13, now_unix_ms);
    bind_spec(*st, 4, spec);
    const int rc = st->step();
    if (rc == SQLITE_DONE) return std::move(*issued);
    if ((rc & 0xff) != SQLITE_CONSTRAINT) return db_error("key create", db_.last_error());
  }
  return key_collision_error();
}

Result<ApiKeyRecord> SqliteKeyStore::get(const std::string& id) {
  std::lock_guard lock(mu_);
  return get_locked(id);
}

Result<std::vector<ApiKeyRecord>> SqliteKeyStore::list() {
  std::lock_guard lock(mu_);
  return query("ORDER BY created_unix_ms, id", nullptr);
}

Result<ApiKeyRecord> SqliteKeyStore::update(const std::string& id, const KeySpec& spec) {
  if (auto v = validate_key_spec(spec); !v.ok()) return v.error();
  std::lock_guard lock(mu_);
  auto st = Statement::prepare(
      db_,
      "UPDATE api_keys SET name = ?2, tenant = ?3, plan = ?4, limits_json = ?5, budgets = ?6,"
      " allowed_models = ?7, default_priority = ?8, max_priority = ?9, downgrade_opt_out = ?10"
      " WHERE id = ?1");
  if (!st.ok()) return st.error();
  st->bind(1, id);
  bind_spec(*st, 2, spec);
  if (st->step() != SQLITE_DONE) return db_error("key update", db_.last_error());
  if (sqlite3_changes(db_.get()) == 0) return cost::key_not_found_error(id);
  return get_locked(id);
}

Result<Ok> SqliteKeyStore::revoke(const std::string& id) {
  std::lock_guard lock(mu_);
  auto st = Statement::prepare(db_, "UPDATE api_keys SET revoked = 1 WHERE id = ?1");
  if (!st.ok()) return st.error();
  st->bind(1, id);
  if (st->step() != SQLITE_DONE) return db_error("key revoke", db_.last_error());
  if (sqlite3_changes(db_.get()) == 0) return cost::key_not_found_error(id);
  return Ok{};
}

Result<IssuedKey> SqliteKeyStore::rotate(const std::string& id, std::int64_t now_unix_ms) {
  std::lock_guard lock(mu_);
  auto minted = mint_secret();
  if (!minted) return cost::rng_failure_error();
  auto st =
      Statement::prepare(db_,
                         "UPDATE api_keys SET secret_hash = ?2, prefix = ?3, rotated_unix_ms = ?4"
                         " WHERE id = ?1 AND revoked = 0");
  if (!st.ok()) return st.error();
  st->bind(1, id).bind(2, minted->hash).bind(3, minted->prefix).bind(4, now_unix_ms);
  if (st->step() != SQLITE_DONE) return db_error("key rotate", db_.last_error());
  if (sqlite3_changes(db_.get()) == 0) return cost::key_not_found_error(id);  // unknown or revoked
  auto rec = get_locked(id);
  if (!rec.ok()) return rec.error();
  return IssuedKey{std::move(*rec), std::move(minted->secret)};
}

Result<ApiKeyRecord> SqliteKeyStore::verify(std::string_view secret) {
  const std::string hash = hash_key(secret);
  std::lock_guard lock(mu_);
  // The index lookup's timing depends on the hash, not the secret; the final compare is
  // constant-time so equal-prefix probing learns nothing either.
  auto rows = query("WHERE secret_hash = ?1", &hash);
  if (!rows.ok()) return rows.error();
  return verified_key(std::move(*rows), hash);
}

}  // namespace bw::store
