#include "gateway/runtime.h"

#include <algorithm>
#include <atomic>

#include "common/json_util.h"
#include "routing/fallback.h"

namespace bw::gateway {

Runtime::Runtime(std::shared_ptr<const config::Config> cfg, std::uint16_t sim_port,
                 std::vector<config::KeyConfig> stored_keys)
    : cfg_(std::move(cfg)), stored_keys_(std::move(stored_keys)), sim_port_(sim_port) {
  static std::atomic<std::uint64_t> next_serial{1};
  serial_ = next_serial.fetch_add(1, std::memory_order_relaxed);
  for (const auto& p : cfg_->providers) {
    Provider prov;
    prov.cfg = &p;
    prov.options.timeouts = p.timeouts;
    prov.options.pool = p.pool;
    const std::string& wire_name = p.type == "sim" ? p.format : p.type;
    if (!providers::parse_wire(wire_name, prov.wire.wire))
      prov.wire.wire = providers::Wire::kOpenAI;
    if (p.type == "sim") {
      prov.endpoint =
          http::Endpoint::make(false, "127.0.0.1", sim_port,
                               prov.wire.wire == providers::Wire::kGemini ? "/v1beta" : "/v1");
    } else {
      auto ep = http::Endpoint::parse(p.base_url);
      if (ep) prov.endpoint = *ep;  // validated at load time
    }
    prov.wire.base_path = prov.endpoint.base_path;
    prov.wire.api_version = p.api_version;
    prov.anthropic_version = p.anthropic_version;
    if (!p.api_key.empty()) {
      switch (prov.wire.wire) {
        case providers::Wire::kOpenAI:
          prov.authorization = "Bearer " + p.api_key;
          break;
        case providers::Wire::kAzure:
          prov.key_header = "api-key";
          break;
        case providers::Wire::kAnthropic:
          prov.key_header = "x-api-key";
          break;
        case providers::Wire::kGemini:
          prov.key_header = "x-goog-api-key";
          break;
      }
      if (!prov.key_header.empty()) prov.key_value = p.api_key;
    }
    {
      http::Headers lines;  // a value it refuses leaves its header out, as on every request
      if (!prov.authorization.empty()) lines.add_known("authorization", prov.authorization);
      if (!prov.key_header.empty()) lines.add(prov.key_header, prov.key_value);
      if (prov.wire.wire == providers::Wire::kAnthropic)
        lines.add_known("anthropic-version", prov.anthropic_version);
      prov.request_lines = "\r\n";
      prov.request_lines.append(lines.wire());
    }
    providers_.emplace(p.name, std::move(prov));
  }
  for (const auto& g : cfg_->model_groups) {
    ModelGroup group;
    group.cfg = &g;
    for (const auto& d : g.deployments) {
      Deployment dep;
      dep.cfg = &d;
      dep.provider = &providers_.at(d.provider);
      const auto& base = dep.provider->endpoint.base_path;
      if (dep.provider->wire.wire == providers::Wire::kAzure) {
        // Azure OpenAI: the deployment (the model id here) in the path, the API version in the
        // query.
        const std::string prefix = base + "/openai/deployments/" + d.model;
        const std::string query = "?api-version=" + dep.provider->wire.api_version;
        dep.chat_target = prefix + "/chat/completions" + query;
        dep.completions_target = prefix + "/completions" + query;
        dep.embeddings_target = prefix + "/embeddings" + query;
      } else {
        dep.chat_target = base + "/chat/completions";
        dep.completions_target = base + "/completions";
        dep.embeddings_target = base + "/embeddings";
      }
      dep.metrics->group = g.name;
      group.deployments.push_back(std::move(dep));
    }
    groups_.emplace(g.name, std::move(group));
  }
  for (const auto& [name, g] : groups_) {
    for (const auto& d : g.deployments) deployments_.emplace(d.cfg->id, &d);
  }
  build_answer_chains();
  for (const auto& k : cfg_->keys) keys_.emplace(k.secret_hash, KeyInfo{&k});
  for (const auto& k : stored_keys_) keys_.emplace(k.secret_hash, KeyInfo{&k});  // config wins
  for (auto& [hash, info] : keys_) {
    keys_by_name_.emplace(info.cfg->name, &info);
    info.plan = cfg_->plan(info.cfg->plan);
    info.budget_ids = budget_ids_for(*cfg_, *info.cfg);
    info.lease_set =
        cost::LeaseSet{cost::lease_set_key(info.budget_ids, info.cfg->name, info.cfg->tenant),
                       info.budget_ids, info.cfg->name, info.cfg->tenant};
    info.lease_set.hash = cost::lease_set_hash(info.lease_set.key);
    info.ledger_party = std::make_shared<const cost::LedgerParty>(
        cost::LedgerParty{info.cfg->name, info.cfg->tenant, info.budget_ids});
    // As the rate-limit phase's scope names them: the plan of the key, its overrides if any.
    info.limits = std::make_shared<const limits::PreparedLimits>(
        cfg_->plan(info.cfg->plan),
        info.cfg->limit_overrides.empty() ? nullptr : &info.cfg->limit_overrides, info.cfg->name,
        info.cfg->tenant);
  }

  JsonWriter j;
  j.begin_object().key("object").value("list").key("data").begin_array();
  for (const auto& g : cfg_->model_groups) {
    j.begin_object()
        .key("id")
        .value(g.name)
        .key("object")
        .value("model")
        .key("created")
        .value(static_cast<std::int64_t>(0))
        .key("owned_by")
        .value(g.owned_by)
        .end_object();
  }
  j.end_array().end_object();
  models_json_ = j.take();
}

void Runtime::build_answer_chains() {
  routing::FallbackTable table;
  for (const auto& g : cfg_->model_groups) {
    table[g.name] = routing::FallbackEntry{g.fallbacks, g.context_fallback};
  }
  for (auto& [name, group] : groups_) {
    group.price = cfg_->prices.find(name);
    const auto own = routing::models_that_may_answer(table, name);
    for (std::size_t p = 0; p < group.answers.size(); ++p) {
      std::vector<std::string> models = own;
      // A capacity fallback answers as the routed model: its own chain follows at forward.
      for (const auto& cf : group.cfg->capacity_fallbacks[p]) {
        if (!groups_.contains(cf)) continue;  // admission skips it too
        for (auto& m : routing::models_that_may_answer(table, cf)) {
          if (std::find(models.begin(), models.end(), m) == models.end()) {
            models.push_back(std::move(m));
          }
        }
      }
      AnswerChain& chain = group.answers[p];
      std::vector<const cost::ModelPrice*> prices;
      chain.image_tokens = 0;
      for (const auto& m : models) {
        const cost::ModelPrice* price = cfg_->prices.find(m);
        if (price == nullptr && chain.unpriced.empty()) chain.unpriced = m;
        prices.push_back(price);
        chain.image_tokens = std::max(chain.image_tokens, price ? cost::image_token_bound(*price)
                                                                : cost::kDefaultImageTokens);
      }
      chain.prices = cost::covering_prices(prices);
    }
  }
}

const ModelGroup* Runtime::group(std::string_view model) const {
  auto it = groups_.find(model);
  return it == groups_.end() ? nullptr : &it->second;
}

const Deployment* Runtime::deployment(const std::string& id) const {
  auto it = deployments_.find(id);
  return it == deployments_.end() ? nullptr : it->second;
}

std::vector<std::string> budget_ids_for(const config::Config& cfg, const config::KeyConfig& key) {
  std::vector<std::string> ids;
  for (const auto& b : cfg.global_budgets) ids.push_back(cost::global_budget_id(b.period));
  if (!key.tenant.empty()) {
    for (const auto& t : cfg.tenants) {
      if (t.name != key.tenant) continue;
      for (const auto& b : t.budgets) ids.push_back(cost::tenant_budget_id(t.name, b.period));
    }
  }
  for (const auto& b : key.budgets) ids.push_back(cost::key_budget_id(key.name, b.period));
  return ids;
}

const KeyInfo* Runtime::key_by_name(const std::string& name) const {
  auto it = keys_by_name_.find(name);
  return it == keys_by_name_.end() ? nullptr : it->second;
}

const KeyInfo* Runtime::key_by_hash(const std::string& hex_hash) const {
  auto it = keys_.find(hex_hash);
  return it == keys_.end() ? nullptr : &it->second;
}

}  // namespace bw::gateway
