#include "store/pg_key_store.h"

#include "store/key_crypto.h"
#include "store/key_spec.h"

namespace bw::store {

using cost::ApiKeyRecord;
using cost::IssuedKey;
using cost::KeySpec;

namespace {

ApiKeyRecord read_key(const PgResult& r, int i) {
  return read_key_record([&](int c) { return r.text(i, c); }, [&](int c) { return r.int64(i, c); },
                         [&](int c) { return r.boolean(i, c); });
}

void add_spec(PgParams& p, const KeySpec& spec) {
  p.add(spec.name)
      .add(spec.tenant)
      .add(spec.plan)
      .add(spec.limits_json)
      .add(encode_key_budgets(spec.budgets))
      .add(join_lines(spec.allowed_models))
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
  if (auto v = validate_key_spec(spec); !v.ok()) return v.error();
  auto conn = pool_.acquire();
  if (!conn.ok()) return conn.error();
  // A generated id can collide (36^12 space); retry a few times rather than fail the admin call.
  for (int attempt = 0; attempt < kKeyIdAttempts; ++attempt) {
    auto issued = mint_key(spec, now_unix_ms);
    if (!issued) return cost::rng_failure_error();
    PgParams p;
    p.add(issued->record.id).add(issued->record.secret_hash).add(issued->record.prefix);
    add_spec(p, spec);
    p.add(now_unix_ms);
    std::string sqlstate;
    auto r = (*conn)->exec(
        "INSERT INTO api_keys (id, secret_hash, prefix, name, tenant, plan, limits_json, budgets,"
        " allowed_models, default_priority, max_priority, downgrade_opt_out, revoked,"
        " created_unix_ms, rotated_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        " $10::smallint, $11::smallint, $12::boolean, false, $13::bigint, 0)",
        p, &sqlstate);
    if (r.ok()) return std::move(*issued);
    if (sqlstate != "23505") return r.error();  // anything but unique_violation
  }
  return key_collision_error();
}

Result<ApiKeyRecord> PgKeyStore::get(const std::string& id) {
  if (!valid_id(id)) return cost::key_not_found_error(id);
  PgParams p;
  p.add(id);
  auto rows = query(std::string("SELECT ") + kKeyColumns + " FROM api_keys WHERE id = $1", p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return cost::key_not_found_error(id);
  return std::move(rows->front());
}

Result<std::vector<ApiKeyRecord>> PgKeyStore::list() {
  return query(std::string("SELECT ") + kKeyColumns +
                   " FROM api_keys ORDER BY created_unix_ms, id COLLATE \"C\"",
               PgParams{});
}

Result<ApiKeyRecord> PgKeyStore::update(const std::string& id, const KeySpec& spec) {
  if (auto v = validate_key_spec(spec); !v.ok()) return v.error();
  if (!valid_id(id)) return cost::key_not_found_error(id);
  PgParams p;
  p.add(id);
  add_spec(p, spec);
  auto rows = query(std::string("UPDATE api_keys SET name = $2, tenant = $3, plan = $4,"
                                " limits_json = $5, budgets = $6, allowed_models = $7,"
                                " default_priority = $8::smallint, max_priority = $9::smallint,"
                                " downgrade_opt_out = $10::boolean WHERE id = $1 RETURNING ") +
                        kKeyColumns,
                    p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return cost::key_not_found_error(id);
  return std::move(rows->front());
}

Result<Ok> PgKeyStore::revoke(const std::string& id) {
  if (!valid_id(id)) return cost::key_not_found_error(id);
  auto conn = pool_.acquire();
  if (!conn.ok()) return conn.error();
  PgParams p;
  p.add(id);
  auto r = (*conn)->exec("UPDATE api_keys SET revoked = true WHERE id = $1", p);
  if (!r.ok()) return r.error();
  if (r->affected() == 0) return cost::key_not_found_error(id);
  return Ok{};
}

Result<IssuedKey> PgKeyStore::rotate(const std::string& id, std::int64_t now_unix_ms) {
  if (!valid_id(id)) return cost::key_not_found_error(id);
  auto minted = mint_secret();
  if (!minted) return cost::rng_failure_error();
  PgParams p;
  p.add(id).add(minted->hash).add(minted->prefix).add(now_unix_ms);
  // One statement: the old secret stops working the moment this commits, on every replica.
  auto rows = query(std::string("UPDATE api_keys SET secret_hash = $2, prefix = $3,"
                                " rotated_unix_ms = $4::bigint WHERE id = $1 AND NOT revoked"
                                " RETURNING ") +
                        kKeyColumns,
                    p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return cost::key_not_found_error(id);  // unknown or revoked
  return IssuedKey{std::move(rows->front()), std::move(minted->secret)};
}

Result<ApiKeyRecord> PgKeyStore::verify(std::string_view secret) {
  const std::string hash = hash_key(secret);
  PgParams p;
  p.add(hash);
  // The index lookup's timing depends on the hash, not the secret; the final compare is
  // constant-time so equal-prefix probing learns nothing either.
  auto rows =
      query(std::string("SELECT ") + kKeyColumns + " FROM api_keys WHERE secret_hash = $1", p);
  if (!rows.ok()) return rows.error();
  return verified_key(std::move(*rows), hash);
}

}  // namespace bw::store
