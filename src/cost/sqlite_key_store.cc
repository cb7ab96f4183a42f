#include "cost/sqlite_key_store.h"

#include <sqlite3.h>

#include <charconv>

#include "cost/key_crypto.h"

namespace bw::cost {

namespace {

Error not_found(const std::string& id) {
  return key_not_found_error(id);
}
Error invalid_key() {
  return invalid_key_error();
}
Error rng_failure() {
  return rng_failure_error();
}

constexpr const char* kColumns =
    "SELECT id, secret_hash, prefix, name, tenant, plan, limits_json, budgets, allowed_models,"
    " default_priority, max_priority, downgrade_opt_out, revoked, created_unix_ms,"
    " rotated_unix_ms FROM api_keys ";

ApiKeyRecord read_key(const Statement& st) {
  ApiKeyRecord k;
  k.id = st.column_text(0);
  k.secret_hash = st.column_text(1);
  k.prefix = st.column_text(2);
  k.spec.name = st.column_text(3);
  k.spec.tenant = st.column_text(4);
  k.spec.plan = st.column_text(5);
  k.spec.limits_json = st.column_text(6);
  k.spec.budgets = decode_key_budgets(st.column_text(7));
  k.spec.allowed_models = decode_models(st.column_text(8));
  k.spec.default_priority = static_cast<int>(st.column_int(9));
  k.spec.max_priority = static_cast<int>(st.column_int(10));
  k.spec.downgrade_opt_out = st.column_int(11) != 0;
  k.revoked = st.column_int(12) != 0;
  k.created_unix_ms = st.column_int(13);
  k.rotated_unix_ms = st.column_int(14);
  return k;
}

Result<Ok> validate(const KeySpec& spec) {
  for (const auto& m : spec.allowed_models) {
    if (m.empty() || m.find('\n') != std::string::npos) {
      return make_error(400, "invalid_request_error", "invalid_model", "invalid model name",
                        "allowed_models");
    }
  }
  bool seen[3] = {false, false, false};
  for (const auto& b : spec.budgets) {
    const int i = static_cast<int>(b.period);
    if (b.cap_micro < 0 || seen[i]) {
      return make_error(400, "invalid_request_error", "invalid_budget",
                        "budgets need a non-negative cap and at most one per period", "budgets");
    }
    seen[i] = true;
  }
  if (spec.default_priority < 0 || spec.default_priority > 2 || spec.max_priority < 0 ||
      spec.max_priority > 2 || spec.default_priority < spec.max_priority) {
    return make_error(400, "invalid_request_error", "invalid_priority",
                      "priorities are 0..2 and default may not exceed max (0 is highest)",
                      "default_priority");
  }
  return Ok{};
}

}  // namespace

std::string encode_key_budgets(const std::vector<KeyBudget>& budgets) {
  std::string out;
  for (const auto& b : budgets) {
    if (!out.empty()) out.push_back(';');
    out += to_string(b.period);
    out.push_back(':');
    out += std::to_string(b.cap_micro);
  }
  return out;
}

std::vector<KeyBudget> decode_key_budgets(std::string_view s) {
  std::vector<KeyBudget> out;
  while (!s.empty()) {
    const auto semi = s.find(';');
    const auto item = s.substr(0, semi);
    const auto colon = item.find(':');
    if (colon != std::string_view::npos) {
      auto period = parse_period(item.substr(0, colon));
      Micros cap = 0;
      const auto digits = item.substr(colon + 1);
      auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), cap);
      if (period && ec == std::errc() && p == digits.data() + digits.size()) {
        out.push_back({cap, *period});
      }
    }
    if (semi == std::string_view::npos) break;
    s.remove_prefix(semi + 1);
  }
  return out;
}

std::string encode_models(const std::vector<std::string>& models) {
  std::string out;
  for (const auto& m : models) {
    if (!out.empty()) out.push_back('\n');
    out += m;
  }
  return out;
}

std::vector<std::string> decode_models(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const auto nl = s.find('\n');
    if (nl != 0) out.emplace_back(s.substr(0, nl));
    if (nl == std::string_view::npos) break;
    s.remove_prefix(nl + 1);
  }
  return out;
}

Result<std::unique_ptr<SqliteKeyStore>> SqliteKeyStore::open(const std::string& path,
                                                             int busy_timeout_ms) {
  auto db = SqliteDb::open(path, true, busy_timeout_ms);
  if (!db.ok()) return db.error();
  auto m = migrate(*db);
  if (!m.ok()) return m.error();
  return std::unique_ptr<SqliteKeyStore>(new SqliteKeyStore(std::move(*db)));
}

Result<std::vector<ApiKeyRecord>> SqliteKeyStore::query(const char* where, const std::string* arg) {
  auto st = Statement::prepare(db_, std::string(kColumns) + where);
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
  if (rows->empty()) return not_found(id);
  return std::move(rows->front());
}

Result<IssuedKey> SqliteKeyStore::create(const KeySpec& spec, std::int64_t now_unix_ms) {
  if (auto v = validate(spec); !v.ok()) return v.error();
  std::lock_guard lock(mu_);
  // A generated id can collide (36^12 space); retry a few times rather than fail the admin call.
  for (int attempt = 0; attempt < 4; ++attempt) {
    auto id = generate_key_id();
    auto secret = generate_secret();
    if (!id || !secret) return rng_failure();
    IssuedKey issued;
    issued.secret = std::move(*secret);
    issued.record.id = std::move(*id);
    issued.record.secret_hash = hash_key(issued.secret);
    issued.record.prefix = issued.secret.substr(0, kKeyPrefixLength);
    issued.record.spec = spec;
    issued.record.created_unix_ms = now_unix_ms;
    auto st = Statement::prepare(
        db_,
        "INSERT INTO api_keys (id, secret_hash, prefix, name, tenant, plan, limits_json, budgets,"
        " allowed_models, default_priority, max_priority, downgrade_opt_out, revoked,"
        " created_unix_ms, rotated_unix_ms) VALUES "
        "(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,0,?13,0)");
    if (!st.ok()) return st.error();
    st->bind(1, issued.record.id)
        .bind(2, issued.record.secret_hash)
        .bind(3, issued.record.prefix)
        .bind(4, spec.name)
        .bind(5, spec.tenant)
        .bind(6, spec.plan)
        .bind(7, spec.limits_json)
        .bind(8, encode_key_budgets(spec.budgets))
        .bind(9, encode_models(spec.allowed_models))
        .bind(10, std::int64_t{spec.default_priority})
        .bind(11, std::int64_t{spec.max_priority})
        .bind(12, std::int64_t{spec.downgrade_opt_out ? 1 : 0})
        .bind(13, now_unix_ms);
    const int rc = st->step();
    if (rc == SQLITE_DONE) return issued;
    if ((rc & 0xff) != SQLITE_CONSTRAINT) return db_error("key create", db_.last_error());
  }
  return make_error(500, "server_error", "key_collision", "could not allocate a unique key id");
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
  if (auto v = validate(spec); !v.ok()) return v.error();
  std::lock_guard lock(mu_);
  auto st = Statement::prepare(
      db_,
      "UPDATE api_keys SET name = ?2, tenant = ?3, plan = ?4, limits_json = ?5, budgets = ?6,"
      " allowed_models = ?7, default_priority = ?8, max_priority = ?9, downgrade_opt_out = ?10"
      " WHERE id = ?1");
  if (!st.ok()) return st.error();
  st->bind(1, id)
      .bind(2, spec.name)
      .bind(3, spec.tenant)
      .bind(4, spec.plan)
      .bind(5, spec.limits_json)
      .bind(6, encode_key_budgets(spec.budgets))
      .bind(7, encode_models(spec.allowed_models))
      .bind(8, std::int64_t{spec.default_priority})
      .bind(9, std::int64_t{spec.max_priority})
      .bind(10, std::int64_t{spec.downgrade_opt_out ? 1 : 0});
  if (st->step() != SQLITE_DONE) return db_error("key update", db_.last_error());
  if (sqlite3_changes(db_.get()) == 0) return not_found(id);
  return get_locked(id);
}

Result<Ok> SqliteKeyStore::revoke(const std::string& id) {
  std::lock_guard lock(mu_);
  auto st = Statement::prepare(db_, "UPDATE api_keys SET revoked = 1 WHERE id = ?1");
  if (!st.ok()) return st.error();
  st->bind(1, id);
  if (st->step() != SQLITE_DONE) return db_error("key revoke", db_.last_error());
  if (sqlite3_changes(db_.get()) == 0) return not_found(id);
  return Ok{};
}

Result<IssuedKey> SqliteKeyStore::rotate(const std::string& id, std::int64_t now_unix_ms) {
  std::lock_guard lock(mu_);
  auto secret = generate_secret();
  if (!secret) return rng_failure();
  const std::string hash = hash_key(*secret);
  auto st =
      Statement::prepare(db_,
                         "UPDATE api_keys SET secret_hash = ?2, prefix = ?3, rotated_unix_ms = ?4"
                         " WHERE id = ?1 AND revoked = 0");
  if (!st.ok()) return st.error();
  st->bind(1, id).bind(2, hash).bind(3, secret->substr(0, kKeyPrefixLength)).bind(4, now_unix_ms);
  if (st->step() != SQLITE_DONE) return db_error("key rotate", db_.last_error());
  if (sqlite3_changes(db_.get()) == 0) return not_found(id);  // unknown or revoked
  auto rec = get_locked(id);
  if (!rec.ok()) return rec.error();
  return IssuedKey{std::move(*rec), std::move(*secret)};
}

Result<ApiKeyRecord> SqliteKeyStore::verify(std::string_view secret) {
  const std::string hash = hash_key(secret);
  std::lock_guard lock(mu_);
  // The index lookup's timing depends on the hash, not the secret; the final compare is
  // constant-time so equal-prefix probing learns nothing either.
  auto rows = query("WHERE secret_hash = ?1", &hash);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return invalid_key();
  ApiKeyRecord& k = rows->front();
  if (!constant_time_equal(k.secret_hash, hash) || k.revoked) return invalid_key();
  return std::move(k);
}

}  // namespace bw::cost
