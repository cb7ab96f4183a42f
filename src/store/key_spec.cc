#include "store/key_spec.h"

#include <charconv>

#include "store/key_crypto.h"
#include "store/pg_db.h"  // check_text()

namespace bw::store {

Result<Ok> validate_key_spec(const cost::KeySpec& spec) {
  for (const auto& m : spec.allowed_models) {
    if (m.empty() || m.find('\n') != std::string::npos || m.find('\0') != std::string::npos) {
      return make_error(400, "invalid_request_error", "invalid_model", "invalid model name",
                        "allowed_models");
    }
  }
  bool seen[3] = {false, false, false};
  for (const auto& b : spec.budgets) {
    const auto i = static_cast<std::size_t>(b.period);
    if (b.cap_micro < 0 || i >= 3 || seen[i]) {
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

std::string encode_key_budgets(const std::vector<cost::KeyBudget>& budgets) {
  std::string out;
  for (const auto& b : budgets) {
    if (!out.empty()) out.push_back(';');
    out += to_string(b.period);
    out.push_back(':');
    out += std::to_string(b.cap_micro);
  }
  return out;
}

std::vector<cost::KeyBudget> decode_key_budgets(std::string_view s) {
  std::vector<cost::KeyBudget> out;
  while (!s.empty()) {
    const auto semi = s.find(';');
    const auto item = s.substr(0, semi);
    const auto colon = item.find(':');
    if (colon != std::string_view::npos) {
      auto period = cost::parse_period(item.substr(0, colon));
      cost::Micros cap = 0;
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

std::optional<MintedSecret> mint_secret() {
  auto secret = generate_secret();
  if (!secret) return std::nullopt;
  MintedSecret m;
  m.hash = hash_key(*secret);
  m.prefix = secret->substr(0, cost::kKeyPrefixLength);
  m.secret = std::move(*secret);
  return m;
}

std::optional<cost::IssuedKey> mint_key(const cost::KeySpec& spec, std::int64_t now_unix_ms) {
  auto id = generate_key_id();
  auto minted = mint_secret();
  if (!id || !minted) return std::nullopt;
  cost::IssuedKey issued;
  issued.secret = std::move(minted->secret);
  issued.record.id = std::move(*id);
  issued.record.secret_hash = std::move(minted->hash);
  issued.record.prefix = std::move(minted->prefix);
  issued.record.spec = spec;
  issued.record.created_unix_ms = now_unix_ms;
  return issued;
}

Result<cost::ApiKeyRecord> verified_key(std::vector<cost::ApiKeyRecord> rows,
                                        std::string_view hash) {
  if (rows.empty()) return cost::invalid_key_error();
  cost::ApiKeyRecord& k = rows.front();
  if (!constant_time_equal(k.secret_hash, hash) || k.revoked) return cost::invalid_key_error();
  return std::move(k);
}

Error key_collision_error() {
  return make_error(500, "server_error", "key_collision", "could not allocate a unique key id");
}

}  // namespace bw::store
