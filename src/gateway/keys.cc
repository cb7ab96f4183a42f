#include "gateway/keys.h"

#include <simdjson.h>

#include <algorithm>
#include <cmath>

#include "common/clock.h"
#include "common/json_util.h"
#include "cost/money.h"
#include "cost/period.h"
#include "gateway/admin.h"
#include "gateway/shared.h"

namespace bw::gateway {

namespace {

Error bad(std::string msg, std::string param = {}) {
  return make_error(400, "invalid_request_error", "invalid_key_spec", std::move(msg),
                    std::move(param));
}

http::Response error(const Error& e) {
  return http::Response::json(e.status, openai_error_body(e.message, e.type, e.code, e.param));
}

Result<cost::KeyBudget> budget_from(simdjson::dom::element b) {
  cost::KeyBudget kb;
  double usd = -1;
  // get(double) takes integers too.
  if (b["cap_usd"].get(usd) != simdjson::SUCCESS) return bad("budget needs cap_usd", "budget");
  if (usd < 0 || usd > 1e9) return bad("cap_usd must be between 0 and 1e9", "budget");
  kb.cap_micro = cost::usd_to_micros(usd);
  std::string_view period = "monthly";
  if (b["period"].get(period) != simdjson::SUCCESS) period = "monthly";
  auto p = cost::parse_period(period);
  if (!p) return bad("budget period must be daily, monthly or total", "budget");
  kb.period = *p;
  return kb;
}

}  // namespace

Result<Ok> key_spec_from_json(std::string_view body, const config::Config& cfg,
                              cost::KeySpec& spec) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return bad("the body must be a JSON object");
  }
  // Bound to a local: iterating the temporary result would dangle.
  simdjson::dom::object object_1 = doc.get_object().value_unsafe();
  for (auto field : object_1) {
    const auto k = field.key;
    auto v = field.value;
    std::string_view s;
    std::int64_t i = 0;
    bool flag = false;
    if (k == "name") {
      if (v.get(s) != simdjson::SUCCESS) return bad("name must be a string", "name");
      spec.name = std::string(s);
    } else if (k == "tenant") {
      if (v.get(s) != simdjson::SUCCESS) return bad("tenant must be a string", "tenant");
      spec.tenant = std::string(s);
    } else if (k == "plan") {
      if (v.get(s) != simdjson::SUCCESS || !cfg.plan(std::string(s))) {
        return bad("plan must name a configured plan", "plan");
      }
      spec.plan = std::string(s);
    } else if (k == "allowed_models") {
      simdjson::dom::array arr;
      if (v.get(arr) != simdjson::SUCCESS) return bad("allowed_models must be a list", k.data());
      spec.allowed_models.clear();
      for (auto m : arr) {
        if (m.get(s) != simdjson::SUCCESS || !cfg.model_group(std::string(s))) {
          return bad("allowed_models must name configured models", "allowed_models");
        }
        spec.allowed_models.emplace_back(s);
      }
    } else if (k == "default_priority" || k == "max_priority") {
      if (v.get(i) != simdjson::SUCCESS || i < 0 || i > 2) {
        return bad(std::string(k) + " must be 0, 1 or 2", std::string(k));
      }
      (k == "default_priority" ? spec.default_priority : spec.max_priority) = static_cast<int>(i);
    } else if (k == "downgrade_opt_out") {
      if (v.get(flag) != simdjson::SUCCESS) return bad("downgrade_opt_out must be a boolean");
      spec.downgrade_opt_out = flag;
    } else if (k == "budget" || k == "budgets") {
      spec.budgets.clear();
      if (v.is_null()) continue;
      std::vector<simdjson::dom::element> items;
      if (v.is_array()) {
        // Bound to a local: iterating the temporary result would dangle.
        simdjson::dom::array array_2 = v.get_array().value_unsafe();
        for (auto b : array_2) items.push_back(b);
      } else {
        items.push_back(v);
      }
      for (auto b : items) {
        auto kb = budget_from(b);
        if (!kb) return kb.error();
        for (const auto& e : spec.budgets) {
          if (e.period == kb->period) return bad("two budgets with the same period", "budgets");
        }
        spec.budgets.push_back(*kb);
      }
    } else if (k == "limits") {
      if (!v.is_array()) return bad("limits must be a list of limit objects", "limits");
      // Bound to a local: iterating the temporary result would dangle.
      simdjson::dom::array array_3 = v.get_array().value_unsafe();
      for (auto l : array_3) {
        if (l["name"].get(s) != simdjson::SUCCESS) return bad("each limit needs a name", "limits");
      }
      spec.limits_json = simdjson::minify(v);
    } else {
      return bad("unknown field '" + std::string(k) + "'", std::string(k));
    }
  }
  if (spec.plan.empty()) spec.plan = "enterprise";
  if (spec.name.empty()) return bad("name is required", "name");
  // Validate the limits against the plan now, so a key is never stored with a broken override.
  cost::ApiKeyRecord probe;
  probe.spec = spec;
  probe.id = "probe";
  auto kc = key_config_from_record(probe, cfg);
  for (const auto& l : kc.limit_overrides) {
    if (auto r = limits::validate(l); !r) return bad(r.error().message, "limits");
  }
  return Ok{};
}

config::KeyConfig key_config_from_record(const cost::ApiKeyRecord& r, const config::Config& cfg) {
  config::KeyConfig k;
  k.name = r.id;
  k.secret_hash = r.secret_hash;
  k.tenant = r.spec.tenant;
  k.plan = r.spec.plan.empty() ? "enterprise" : r.spec.plan;
  k.allowed_models = r.spec.allowed_models;
  k.default_priority = r.spec.default_priority;
  k.max_priority = r.spec.max_priority;
  k.budgets = r.spec.budgets;
  k.downgrade_opt_out = r.spec.downgrade_opt_out;
  k.from_store = true;
  // Limit overrides: [{"name":..., "rate":..., "period":..., "burst":..., "unit":...,
  // "algorithm":..., "mode":..., "on_exceed":...}], each on top of the plan's limit of that name.
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(r.spec.limits_json).get(doc) != simdjson::SUCCESS || !doc.is_array()) return k;
  const limits::Plan* plan = cfg.plan(k.plan);
  // Bound to a local: iterating the temporary result would dangle.
  simdjson::dom::array array_4 = doc.get_array().value_unsafe();
  for (auto l : array_4) {
    limits::LimitSpec spec;
    std::string_view s;
    std::int64_t i = 0;
    if (l["name"].get(s) != simdjson::SUCCESS) continue;
    spec.name = std::string(s);
    if (plan) {
      for (const auto& pl : plan->limits) {
        if (pl.name == spec.name) spec = pl;
      }
    }
    if (l["rate"].get(i) == simdjson::SUCCESS) spec.rate = i;
    if (l["burst"].get(i) == simdjson::SUCCESS) spec.burst = i;
    if (l["period"].get(s) == simdjson::SUCCESS) {
      if (auto p = limits::parse_period(s)) spec.period = *p;
    }
    if (l["unit"].get(s) == simdjson::SUCCESS) {
      if (auto u = limits::parse_unit(s)) spec.unit = *u;
    }
    if (l["algorithm"].get(s) == simdjson::SUCCESS) {
      if (auto a = limits::parse_algorithm(s)) spec.algorithm = *a;
    }
    if (l["mode"].get(s) == simdjson::SUCCESS) {
      if (auto m = limits::parse_mode(s)) spec.mode = *m;
    }
    if (l["on_exceed"].get(s) == simdjson::SUCCESS) {
      if (auto o = limits::parse_on_exceed(s)) spec.on_exceed = *o;
    }
    k.limit_overrides.push_back(std::move(spec));
  }
  return k;
}

std::string key_json(const cost::ApiKeyRecord& r, std::string_view secret) {
  JsonWriter j;
  j.begin_object()
      .key("id")
      .value(r.id)
      .key("source")
      .value("store")
      .key("name")
      .value(r.spec.name)
      .key("prefix")
      .value(r.prefix)
      .key("tenant")
      .value(r.spec.tenant)
      .key("plan")
      .value(r.spec.plan)
      .key("limits")
      .raw(r.spec.limits_json.empty() || r.spec.limits_json == "{}"
               ? std::string_view("[]")
               : std::string_view(r.spec.limits_json))
      .key("budgets")
      .begin_array();
  for (const auto& b : r.spec.budgets) {
    j.begin_object()
        .key("cap_usd")
        .value(static_cast<double>(b.cap_micro) / 1e6)
        .key("period")
        .value(cost::to_string(b.period))
        .end_object();
  }
  j.end_array().key("allowed_models").begin_array();
  for (const auto& m : r.spec.allowed_models) j.value(m);
  j.end_array()
      .key("default_priority")
      .value(r.spec.default_priority)
      .key("max_priority")
      .value(r.spec.max_priority)
      .key("downgrade_opt_out")
      .value(r.spec.downgrade_opt_out)
      .key("revoked")
      .value(r.revoked)
      .key("created_unix_ms")
      .value(r.created_unix_ms)
      .key("rotated_unix_ms")
      .value(r.rotated_unix_ms);
  if (!secret.empty()) j.key("secret").value(secret);
  j.end_object();
  return j.take();
}

std::string config_key_json(const config::KeyConfig& k) {
  JsonWriter j;
  j.begin_object()
      .key("id")
      .value(k.name)
      .key("source")
      .value("config")
      .key("name")
      .value(k.name)
      .key("tenant")
      .value(k.tenant)
      .key("plan")
      .value(k.plan)
      .key("budgets")
      .begin_array();
  for (const auto& b : k.budgets) {
    j.begin_object()
        .key("cap_usd")
        .value(static_cast<double>(b.cap_micro) / 1e6)
        .key("period")
        .value(cost::to_string(b.period))
        .end_object();
  }
  j.end_array().end_object();
  return j.take();
}

namespace {

http::Response not_found() {
  return error(errors::make(errors::kNotFound, "No such key."));
}

http::Response budgets_list(AdminCall& call) {
  auto& sh = call.c.sh;
  if (!sh.budgets) return http::Response::json(200, "{\"object\":\"list\",\"data\":[]}");
  JsonWriter j;
  j.begin_object().key("object").value("list").key("data").begin_array();
  for (const auto& b : sh.budgets->snapshots(sh.clock.unix_millis())) {
    j.begin_object()
        .key("id")
        .value(b.id)
        .key("period")
        .value(cost::to_string(b.period))
        .key("cap_usd")
        .value(static_cast<double>(b.cap_micro) / 1e6)
        .key("spent_usd")
        .value(static_cast<double>(b.spent_micro) / 1e6)
        .key("reserved_usd")
        .value(static_cast<double>(b.reserved_micro) / 1e6)
        .key("utilization")
        .value(b.utilisation)
        .key("reset_unix_ms")
        .value(b.reset_unix_ms)
        .end_object();
  }
  j.end_array().end_object();
  return http::Response::json(200, j.take());
}

// Recovered open rows (reservations and lease rows left open by a crash): listed, then settled
// or released one by one by an operator who knows what the provider billed. "budgets" are the
// ids the row is held against; a row from before the ledger recorded them is held against the
// budgets of its key and tenant and the global ones ("inferred"), or none ("unknown", null).
void recovered_json(JsonWriter& j, const cost::RecoveredReservation& open) {
  const cost::LedgerRow& row = open.row;
  j.begin_object()
      .key("request_id")
      .value(row.request_id)
      .key("key_id")
      .value(row.key_id)
      .key("tenant_id")
      .value(row.tenant_id)
      .key("model")
      .value(row.model)
      .key("budgets");
  if (open.budgets_inferred && open.budgets.empty()) {
    j.null();
  } else {
    j.begin_array();
    for (const auto& b : open.budgets) j.value(b);
    j.end_array();
  }
  j.key("budgets_source")
      .value(!open.budgets_inferred ? "ledger"
             : open.budgets.empty() ? "unknown"
                                    : "inferred")
      .key("reserved_usd")
      .value(static_cast<double>(row.reserved_micro) / 1e6)
      .key("created_unix_ms")
      .value(row.created_unix_ms)
      .key("created")
      .value(utc_iso8601(row.created_unix_ms, /*with_millis=*/true))
      .key("lease")
      .value(row.lease)
      .key("status")
      .value(cost::to_string(row.status));
}

http::Response reservations_list(AdminCall& call) {
  auto& sh = call.c.sh;
  std::lock_guard lock(sh.recovered_mu);
  JsonWriter j;
  j.begin_object().key("object").value("list").key("data").begin_array();
  cost::Micros total = 0;
  for (const auto& open : sh.recovered) {
    recovered_json(j, open);
    j.end_object();
    total = cost::sat_add(total, open.row.reserved_micro);
  }
  j.end_array().key("reserved_usd").value(static_cast<double>(total) / 1e6).end_object();
  return http::Response::json(200, j.take());
}

Error bad_reconcile(std::string msg, std::string param = {}) {
  return errors::make(errors::kInvalidReconcile, std::move(msg), std::move(param));
}

// {"actual_usd": <number ≥ 0>} settles at that amount; {"release": true} releases (nullopt).
Result<std::optional<cost::Micros>> reconcile_body(std::string_view body) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return bad_reconcile(
        "the body must be a JSON object: {\"actual_usd\": <amount>} or {\"release\": true}");
  }
  std::optional<cost::Micros> actual;
  bool release = false;
  simdjson::dom::object object = doc.get_object().value_unsafe();
  for (auto field : object) {
    if (field.key == "actual_usd") {
      double usd = 0;  // get(double) takes integers too
      if (field.value.get(usd) != simdjson::SUCCESS) {
        return bad_reconcile("actual_usd must be a number", "actual_usd");
      }
      if (!std::isfinite(usd) || usd < 0 || usd > 1e9) {
        return bad_reconcile("actual_usd must be between 0 and 1e9", "actual_usd");
      }
      actual = cost::usd_to_micros(usd);
    } else if (field.key == "release") {
      if (field.value.get(release) != simdjson::SUCCESS || !release) {
        return bad_reconcile("release must be true", "release");
      }
    } else {
      return bad_reconcile("unknown field '" + std::string(field.key) + "'",
                           std::string(field.key));
    }
  }
  if (actual.has_value() == release) {
    return bad_reconcile("give exactly one of actual_usd and release");
  }
  return actual;
}

http::Response reservation_reconcile(AdminCall& call) {
  auto& sh = call.c.sh;
  auto actual = reconcile_body(call.c.req.body);
  if (!actual) return error(actual.error());
  const std::string_view id = call.param("request_id");
  std::lock_guard lock(sh.recovered_mu);
  auto it = std::find_if(sh.recovered.begin(), sh.recovered.end(),
                         [&](const auto& r) { return r.row.request_id == id; });
  if (it == sh.recovered.end() || !sh.ledger || !sh.budgets) {
    return error(errors::make(errors::kNotFound,
                              "No recovered reservation '" + std::string(id) + "' is held."));
  }
  // A lease row's actual_micro is spend already billed (a covered request whose id was in the
  // ledger was folded into it): it stays charged, whatever the operator adds or releases.
  std::optional<cost::Micros> amount = *actual;
  if (it->row.lease && it->row.actual_micro > 0) {
    amount = cost::sat_add(amount.value_or(0), it->row.actual_micro);
  }
  // Blocks until the ledger commit is durable; the budgets follow only when it is.
  auto done = cost::reconcile(*sh.ledger, *sh.budgets, *it, amount, sh.clock.unix_millis());
  if (!done) return error(done.error());
  JsonWriter j;
  recovered_json(j, *it);
  j.key("actual_usd").value(static_cast<double>(amount.value_or(0)) / 1e6).end_object();
  sh.recovered.erase(it);
  return http::Response::json(200, j.take());
}

http::Response spend_report(AdminCall& call) {
  auto& sh = call.c.sh;
  const auto target = call.c.req.target;
  if (!sh.ledger) return error(errors::make(errors::kNoLedger, "No ledger is configured."));
  const std::string by(http::query_param(target, "group"));
  cost::SpendGroup group = cost::SpendGroup::kKey;
  if (by == "tenant")
    group = cost::SpendGroup::kTenant;
  else if (by == "model")
    group = cost::SpendGroup::kModel;
  else if (by == "day")
    group = cost::SpendGroup::kDay;
  else if (!by.empty() && by != "key") {
    return error(
        errors::make(errors::kBadGroup, "group must be key, tenant, model or day", "group"));
  }
  const auto from = http::query_int(target, "from", 0);
  const auto to = http::query_int(target, "to", sh.clock.unix_millis() + 1);
  auto rows = sh.ledger->spend_report(group, from, to);
  if (!rows) return error(rows.error());
  JsonWriter j;
  j.begin_object()
      .key("object")
      .value("list")
      .key("group")
      .value(by.empty() ? "key" : by)
      .key("data")
      .begin_array();
  for (const auto& r : *rows) {
    j.begin_object()
        .key("group")
        .value(r.group)
        .key("requests")
        .value(r.requests)
        .key("spend_usd")
        .value(static_cast<double>(r.actual_micro) / 1e6)
        .key("open_reserved_usd")
        .value(static_cast<double>(r.open_reserved_micro) / 1e6)
        .key("prompt_tokens")
        .value(r.prompt_tokens)
        .key("completion_tokens")
        .value(r.completion_tokens)
        .end_object();
  }
  j.end_array().end_object();
  return http::Response::json(200, j.take());
}

// A stored-key handler: needs the key store, and runs under Shared::keys_mu (a change and the
// runtime rebuild that follows it are not interleaved with another change).
using KeyHandler = std::function<http::Response(AdminCall&, cost::KeyStore&, std::int64_t)>;
BlockingAdminHandler with_key_store(KeyHandler f) {
  return [f = std::move(f)](AdminCall& call) {
    auto& sh = call.c.sh;
    if (!sh.key_store) {
      return error(errors::make(errors::kNoKeyStore,
                                "Stored keys need a ledger (ledger.path) to be configured."));
    }
    std::lock_guard lock(sh.keys_mu);
    return f(call, *sh.key_store, sh.clock.unix_millis());
  };
}

http::Response keys_list(AdminCall& call, cost::KeyStore& store, std::int64_t) {
  auto list = store.list();
  if (!list) return error(list.error());
  std::string out = "{\"object\":\"list\",\"data\":[";
  bool first = true;
  for (const auto& k : call.c.rt->config().keys) {
    if (!first) out += ",";
    first = false;
    out += config_key_json(k);
  }
  for (const auto& r : *list) {
    if (!first) out += ",";
    first = false;
    out += key_json(r);
  }
  out += "]}";
  return http::Response::json(200, std::move(out));
}

http::Response key_create(AdminCall& call, cost::KeyStore& store, std::int64_t now_ms) {
  cost::KeySpec spec;
  if (auto v = key_spec_from_json(call.c.req.body, call.c.rt->config(), spec); !v) {
    return error(v.error());
  }
  auto issued = store.create(spec, now_ms);
  if (!issued) return error(issued.error());
  if (auto r = refresh_stored_keys(call.c.sh); !r) return error(r.error());
  return http::Response::json(201, key_json(issued->record, issued->secret));
}

http::Response key_rotate(AdminCall& call, cost::KeyStore& store, std::int64_t now_ms) {
  auto issued = store.rotate(std::string(call.param("id")), now_ms);
  if (!issued) return issued.error().status == 404 ? not_found() : error(issued.error());
  if (auto r = refresh_stored_keys(call.c.sh); !r) return error(r.error());
  return http::Response::json(200, key_json(issued->record, issued->secret));
}

http::Response key_revoke(AdminCall& call, cost::KeyStore& store, std::int64_t) {
  const std::string id(call.param("id"));
  auto r = store.revoke(id);
  if (!r) return r.error().status == 404 ? not_found() : error(r.error());
  if (auto rr = refresh_stored_keys(call.c.sh); !rr) return error(rr.error());
  return http::Response::json(200, "{\"id\":" + json_string(id) + ",\"revoked\":true}");
}

http::Response key_get(AdminCall& call, cost::KeyStore& store, std::int64_t) {
  auto rec = store.get(std::string(call.param("id")));
  if (!rec) return rec.error().status == 404 ? not_found() : error(rec.error());
  return http::Response::json(200, key_json(*rec));
}

http::Response key_update(AdminCall& call, cost::KeyStore& store, std::int64_t) {
  const std::string id(call.param("id"));
  auto rec = store.get(id);
  if (!rec) return rec.error().status == 404 ? not_found() : error(rec.error());
  cost::KeySpec spec = rec->spec;
  if (auto v = key_spec_from_json(call.c.req.body, call.c.rt->config(), spec); !v) {
    return error(v.error());
  }
  auto updated = store.update(id, spec);
  if (!updated) return error(updated.error());
  if (auto r = refresh_stored_keys(call.c.sh); !r) return error(r.error());
  return http::Response::json(200, key_json(*updated));
}

}  // namespace

void add_key_routes(AdminTable& t) {
  t.add_blocking("GET", "/admin/budgets", budgets_list);
  t.add_blocking("GET", "/admin/spend", spend_report);
  t.add_blocking("GET", "/admin/reservations", reservations_list);
  t.add_blocking("POST", "/admin/reservations/{request_id}/reconcile", reservation_reconcile);
  t.add_blocking("GET", "/admin/keys", with_key_store(keys_list));
  t.add_blocking("POST", "/admin/keys", with_key_store(key_create));
  t.add_blocking("GET", "/admin/keys/{id}", with_key_store(key_get));
  t.add_blocking("PATCH", "/admin/keys/{id}", with_key_store(key_update));
  t.add_blocking("DELETE", "/admin/keys/{id}", with_key_store(key_revoke));
  t.add_blocking("POST", "/admin/keys/{id}/rotate", with_key_store(key_rotate));
  t.add_blocking("POST", "/admin/keys/{id}/revoke", with_key_store(key_revoke));
}

}  // namespace bw::gateway
