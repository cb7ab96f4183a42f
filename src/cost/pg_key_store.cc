#include "cost/pg_key_store.h"

#include "cost/key_crypto.h"
#include "cost/sqlite_key_store.h"  // encode/decode of the list columns: same text as SQLite

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
    "id, secret_hash, prefix, name, tenant, plan, limits_json, budgets, allowed_models,"
    " default_priority, max_priority, downgrade_opt_out, revoked, created_unix_ms,"
    " rotated_unix_ms";

ApiKeyRecord read_key(const PgResult& r, int i) {
  ApiKeyRecord k;
  k.id = r.text(i, 0);
  k.secret_hash = r.text(i, 1);
  k.prefix = r.text(i, 2);
  k.spec.name = r.text(i, 3);
  k.spec.tenant = r.text(i, 4);
  k.spec.plan = r.text(i, 5);
  k.spec.limits_json = r.text(i, 6);
  k.spec.budgets = decode_key_budgets(r.text(i, 7));
  k.spec.allowed_models = decode_models(r.text(i, 8));
  k.spec.default_priority = static_cast<int>(r.int64(i, 9));
  k.spec.max_priority = static_cast<int>(r.int64(i, 10));
  k.spec.downgrade_opt_out = r.boolean(i, 11);
  k.revoked = r.boolean(i, 12);
  k.created_unix_ms = r.int64(i, 13);
  k.rotated_unix_ms = r.int64(i, 14);
  return k;
}

// Same rules and errors as SqliteKeyStore's validation, plus what PostgreSQL text cannot store.
Result<Ok> validate(const KeySpec& spec) {
  for (const auto& m : spec.allowed_models) {
    if (m.empty() || m.find('\n') != std::string::npos || m.find('\0') != std::string::npos) {
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
  if (auto c = check_text("name", spec.name); !c.ok()) return c;
  if (auto c = check_text("tenant", spec.tenant); !c.ok()) return c;
  if (auto c = check_text("plan", spec.plan); !c.ok()) return c;
  if (auto c = check_text("limits_json", spec.limits_json); !c.ok()) return c;
  return Ok{};
}

void add_spec(PgParams& p, const KeySpec& spec) {
  p.add(spec.name)
      .add(spec.tenant)
      .add(spec.plan)
      .add(spec.limits_json)
      .add(encode_key_budgets(spec.budgets))
      .add(encode_models(spec.allowed_models))
      .add(std::int64_t{spec.default_priority})
      .add(std::int64_t{spec.max_priority})
      .add(std::string_view(spec.downgrade_opt_out ? "true" : "false"));
}

bool valid_id(const std::string& id) {
  return check_text("id", id).ok();
}

}  // namespace

Result<std::unique_ptr<PgKeyStore>> PgKeyStore::open(PgKeyStoreOptions options) {
  std::unique_ptr<PgKeyStore> store(new PgKeyStore(std::move(options)));
  auto conn = store->pool_.acquire();
  if (!conn.ok()) return conn.error();
  auto m = pg_migrate(**conn);
  if (!m.ok()) return m.error();
  return store;
}

PgKeyStore::PgKeyStore(PgKeyStoreOptions options)
    : options_(std::move(options)),
      pool_(options_.db, PgPoolOptions{options_.pool_size, options_.pool_acquire_timeout_ms}) {}

Result<std::vector<ApiKeyRecord>> PgKeyStore::query(const std::string& sql,
                                                    const PgParams& params) {
  auto conn = pool_.acquire();
  if (!conn.ok()) return conn.error();
  auto r = (*conn)->exec(sql, params);
  if (!r.ok()) return r.error();
  std::vector<ApiKeyRecord> out;
  out.reserve(static_cast<std::size_t>(r->rows()));
  for (int i = 0; i < r->rows(); ++i) out.push_back(read_key(*r, i));
  return out;
}

Result<IssuedKey> PgKeyStore::create(const KeySpec& spec, std::int64_t now_unix_ms) {
  if (auto v = validate(spec); !v.ok()) return v.error();
  auto conn = pool_.acquire();
  if (!conn.ok()) return conn.error();
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
    PgParams p;
    p.add(issued.record.id).add(issued.record.secret_hash).add(issued.record.prefix);
    add_spec(p, spec);
    p.add(now_unix_ms);
    std::string sqlstate;
    auto r = (*conn)->exec(
        "INSERT INTO api_keys (id, secret_hash, prefix, name, tenant, plan, limits_json, budgets,"
        " allowed_models, default_priority, max_priority, downgrade_opt_out, revoked,"
        " created_unix_ms, rotated_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        " $10::smallint, $11::smallint, $12::boolean, false, $13::bigint, 0)",
        p, &sqlstate);
    if (r.ok()) return issued;
    if (sqlstate != "23505") return r.error();  // anything but unique_violation
  }
  return make_error(500, "server_error", "key_collision", "could not allocate a unique key id");
}

Result<ApiKeyRecord> PgKeyStore::get(const std::string& id) {
  if (!valid_id(id)) return not_found(id);
  PgParams p;
  p.add(id);
  auto rows = query(std::string("SELECT ") + kColumns + " FROM api_keys WHERE id = $1", p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return not_found(id);
  return std::move(rows->front());
}

Result<std::vector<ApiKeyRecord>> PgKeyStore::list() {
  return query(std::string("SELECT ") + kColumns +
                   " FROM api_keys ORDER BY created_unix_ms, id COLLATE \"C\"",
               PgParams{});
}

Result<ApiKeyRecord> PgKeyStore::update(const std::string& id, const KeySpec& spec) {
  if (auto v = validate(spec); !v.ok()) return v.error();
  if (!valid_id(id)) return not_found(id);
  PgParams p;
  p.add(id);
  add_spec(p, spec);
  auto rows = query(std::string("UPDATE api_keys SET name = $2, tenant = $3, plan = $4,"
                                " limits_json = $5, budgets = $6, allowed_models = $7,"
                                " default_priority = $8::smallint, max_priority = $9::smallint,"
                                " downgrade_opt_out = $10::boolean WHERE id = $1 RETURNING ") +
                        kColumns,
                    p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return not_found(id);
  return std::move(rows->front());
}

Result<Ok> PgKeyStore::revoke(const std::string& id) {
  if (!valid_id(id)) return not_found(id);
  auto conn = pool_.acquire();
  if (!conn.ok()) return conn.error();
  PgParams p;
  p.add(id);
  auto r = (*conn)->exec("UPDATE api_keys SET revoked = true WHERE id = $1", p);
  if (!r.ok()) return r.error();
  if (r->affected() == 0) return not_found(id);
  return Ok{};
}

Result<IssuedKey> PgKeyStore::rotate(const std::string& id, std::int64_t now_unix_ms) {
  if (!valid_id(id)) return not_found(id);
  auto secret = generate_secret();
  if (!secret) return rng_failure();
  PgParams p;
  p.add(id).add(hash_key(*secret)).add(secret->substr(0, kKeyPrefixLength)).add(now_unix_ms);
  // One statement: the old secret stops working the moment this commits, on every replica.
  auto rows = query(std::string("UPDATE api_keys SET secret_hash = $2, prefix = $3,"
                                " rotated_unix_ms = $4::bigint WHERE id = $1 AND NOT revoked"
                                " RETURNING ") +
                        kColumns,
                    p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return not_found(id);  // unknown or revoked
  return IssuedKey{std::move(rows->front()), std::move(*secret)};
}

Result<ApiKeyRecord> PgKeyStore::verify(std::string_view secret) {
  const std::string hash = hash_key(secret);
  PgParams p;
  p.add(hash);
  // The index lookup's timing depends on the hash, not the secret; the final compare is
  // constant-time so equal-prefix probing learns nothing either.
  auto rows = query(std::string("SELECT ") + kColumns + " FROM api_keys WHERE secret_hash = $1", p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return invalid_key();
  ApiKeyRecord& k = rows->front();
  if (!constant_time_equal(k.secret_hash, hash) || k.revoked) return invalid_key();
  return std::move(k);
}

}  // namespace bw::cost
