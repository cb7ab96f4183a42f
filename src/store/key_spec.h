#pragma once
// What the SQLite and PostgreSQL key stores share: the one validation of a KeySpec, the text
// encodings of its list columns, the column list and row reader, and the minting of secrets.
// Both backends store the same text, and both refuse the same specs.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "cost/key_store.h"
#include "store/text_columns.h"

namespace bw::store {

// 400 for a spec no backend may store: an empty model name or one with '\n' (the list separator),
// budgets with a negative cap or two for one period, priorities outside 0..2 or a default above
// the maximum, and a NUL byte in any text field (PostgreSQL text cannot hold it; SQLite would cut
// it off).
Result<Ok> validate_key_spec(const cost::KeySpec& spec);

std::string encode_key_budgets(const std::vector<cost::KeyBudget>& budgets);  // "monthly:5;daily:1"
std::vector<cost::KeyBudget> decode_key_budgets(std::string_view s);

// The columns read_key_record() expects, in order.
inline constexpr const char* kKeyColumns =
    "id, secret_hash, prefix, name, tenant, plan, limits_json, budgets, allowed_models,"
    " default_priority, max_priority, downgrade_opt_out, revoked, created_unix_ms,"
    " rotated_unix_ms";

// Reads one row of kKeyColumns: `text(col)`, `int64(col)` and `flag(col)` read a column.
template <class Text, class Int, class Flag>
cost::ApiKeyRecord read_key_record(const Text& text, const Int& int64, const Flag& flag) {
  cost::ApiKeyRecord k;
  k.id = text(0);
  k.secret_hash = text(1);
  k.prefix = text(2);
  k.spec.name = text(3);
  k.spec.tenant = text(4);
  k.spec.plan = text(5);
  k.spec.limits_json = text(6);
  k.spec.budgets = decode_key_budgets(text(7));
  k.spec.allowed_models = split_lines(text(8));
  k.spec.default_priority = static_cast<int>(int64(9));
  k.spec.max_priority = static_cast<int>(int64(10));
  k.spec.downgrade_opt_out = flag(11);
  k.revoked = flag(12);
  k.created_unix_ms = int64(13);
  k.rotated_unix_ms = int64(14);
  return k;
}

// A fresh secret and what is stored of it.
struct MintedSecret {
  std::string secret;  // shown once
  std::string hash;
  std::string prefix;
};
// nullopt when the secure random generator fails (then answer cost::rng_failure_error()).
std::optional<MintedSecret> mint_secret();
// A new key (fresh id and secret) for `spec`, not yet stored.
std::optional<cost::IssuedKey> mint_key(const cost::KeySpec& spec, std::int64_t now_unix_ms);

// The answer of verify() from the rows found by the secret's hash: the key, or 401 for none or a
// revoked one. The hash is compared in constant time.
Result<cost::ApiKeyRecord> verified_key(std::vector<cost::ApiKeyRecord> rows,
                                        std::string_view hash);

// Number of attempts at a fresh id before create() gives up (ids live in a 36^12 space).
constexpr int kKeyIdAttempts = 4;
Error key_collision_error();

}  // namespace bw::store
