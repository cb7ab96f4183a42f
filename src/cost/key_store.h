#pragma once
// KeyStore: API keys created through the admin API. Only the SHA-256 of a secret is stored; the
// secret itself is returned once, by create() and rotate(), and never again.
//
// Contract
//  - verify() looks the key up by hash and confirms with a constant-time compare; it refuses
//    revoked keys. It may touch storage: the auth layer caches its answers.
//  - rotate() replaces the secret at once: the old secret stops working immediately (no grace).
//  - Implementations are thread-safe. Calls are synchronous (admin path / auth cache misses).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "cost/money.h"
#include "cost/period.h"

namespace bw::cost {

struct KeyBudget {
  Micros cap_micro = 0;
  BudgetPeriod period = BudgetPeriod::kMonthly;
  bool operator==(const KeyBudget&) const = default;
};

// Everything an admin may set on a key.
struct KeySpec {
  std::string name;
  std::string tenant;
  std::string plan;
  std::string limits_json = "{}";  // rate-limit overrides, opaque here (validated by the admin API)
  std::vector<KeyBudget> budgets;  // at most one per period
  std::vector<std::string> allowed_models;  // empty = all models of the tenant/plan
  int default_priority = 1;                 // 0 = highest (P0) .. 2
  int max_priority = 1;            // highest priority the key may ask for (numerically min)
  bool downgrade_opt_out = false;  // refuse at the cap instead of switching models
};

struct ApiKeyRecord {
  std::string id;           // public, e.g. "key_ab12cd34ef56"
  std::string secret_hash;  // hex SHA-256 of the secret
  std::string prefix;       // first characters of the secret, for display ("bw-AbCd")
  KeySpec spec;
  bool revoked = false;
  std::int64_t created_unix_ms = 0;
  std::int64_t rotated_unix_ms = 0;  // 0 = never
};

struct IssuedKey {
  ApiKeyRecord record;
  std::string secret;  // show once, never store
};

class KeyStore {
 public:
  virtual ~KeyStore() = default;
  virtual Result<IssuedKey> create(const KeySpec& spec, std::int64_t now_unix_ms) = 0;
  virtual Result<ApiKeyRecord> get(const std::string& id) = 0;
  virtual Result<std::vector<ApiKeyRecord>> list() = 0;
  virtual Result<ApiKeyRecord> update(const std::string& id, const KeySpec& spec) = 0;
  virtual Result<Ok> revoke(const std::string& id) = 0;
  virtual Result<IssuedKey> rotate(const std::string& id, std::int64_t now_unix_ms) = 0;
  // 401 invalid_api_key for unknown or revoked secrets (same error for both: do not reveal which).
  virtual Result<ApiKeyRecord> verify(std::string_view secret) = 0;
};

// Errors every KeyStore answers with (one wording for all backends).
inline Error key_not_found_error(const std::string& id) {
  return make_error(404, "invalid_request_error", "key_not_found", "no API key " + id);
}
inline Error invalid_key_error() {
  return make_error(401, "invalid_request_error", "invalid_api_key", "invalid API key");
}
inline Error rng_failure_error() {
  return make_error(500, "server_error", "rng_failure", "secure random generator failed");
}

// Number of secret characters kept for display.
constexpr std::size_t kKeyPrefixLength = 7;

}  // namespace bw::cost
