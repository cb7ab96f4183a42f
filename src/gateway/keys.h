#pragma once
// Key management for the admin API and the `bellwether keys` CLI: JSON <-> KeySpec, validation
// against the running config (plans, models, limits), and the /admin/keys, /admin/spend and
// /admin/budgets routes. These are blocking (SQLite) and run on the blocking pool.
// Thread safety: handlers lock Shared::keys_mu around changes.
#include <string>
#include <string_view>

#include "common/result.h"
#include "config/config.h"
#include "cost/key_store.h"
#include "http/http.h"

namespace bw::gateway {

struct Shared;

// Parses an admin JSON body onto `spec` (fields absent keep their value) and validates it.
Result<Ok> key_spec_from_json(std::string_view body, const config::Config& cfg,
                              cost::KeySpec& spec);
std::string key_json(const cost::ApiKeyRecord& r, std::string_view secret = {});
std::string config_key_json(const config::KeyConfig& k);

// The admin routes (/admin/keys..., /admin/spend, /admin/budgets) are registered by
// add_key_routes (admin.h).

}  // namespace bw::gateway
