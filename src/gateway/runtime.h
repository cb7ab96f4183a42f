#pragma once
// Runtime: the immutable snapshot the data plane reads, built from one Config. A reload builds a
// new Runtime and swaps it in atomically; requests in flight keep the snapshot they started with.
// Thread safety: immutable after construction.
#include <array>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/string_hash.h"
#include "config/config.h"
#include "cost/lease.h"
#include "gateway/translate.h"
#include "http/client.h"
#include "limits/limiter.h"
#include "telemetry/metrics.h"

namespace bw::gateway {

struct Provider {
  const config::ProviderConfig* cfg = nullptr;
  http::Endpoint endpoint;
  http::UpstreamOptions options;  // timeouts and pool bounds
  std::string authorization;      // "Bearer <provider key>" or empty; never logged
  // The wire format and where its requests go; the key's header by provider type
  // (authorization, api-key, x-api-key, x-goog-api-key).
  ProviderWire wire;
  std::string key_header;
  std::string key_value;  // never logged
  std::string anthropic_version;
  // The provider's own header lines of every upstream request (authorization, the key's header,
  // anthropic-version), checked once, after a CRLF that ends the line before them.
  std::string request_lines;
};

// The metric series a request of a group, and an attempt on a deployment, update, resolved on
// first use (finish.cc, forward.cc) instead of a label lookup per series per request.
struct GroupMetricCache {
  static constexpr std::size_t kRoutes = 11;     // kRoutes in routes.h
  static constexpr std::size_t kClasses = 5;     // 1xx .. 5xx
  static constexpr std::size_t kPriorities = 3;  // 0 .. 2
  // {endpoint, the group, status class, priority}: slot (route * kClasses + class) *
  // kPriorities + priority.
  telemetry::ChildCache<telemetry::Counter, kRoutes * kClasses * kPriorities> requests;
  telemetry::ChildCache<telemetry::Histogram, kRoutes> duration;  // {endpoint, the group}
  telemetry::ChildCache<telemetry::Histogram, kPriorities> priority_duration;  // {priority}
  telemetry::ChildCache<telemetry::Histogram, kPriorities> queue_wait;         // {priority}
  telemetry::ChildCache<telemetry::Histogram, 1> ttft;                         // {the group}
  telemetry::ChildCache<telemetry::Histogram, kPriorities> priority_ttft;      // {priority}
  telemetry::ChildCache<telemetry::Counter, 2> tokens;    // {the group, prompt | completion}
  telemetry::ChildCache<telemetry::Counter, 1> cost_usd;  // {the group}
};

struct DeploymentMetricCache {
  std::string group;  // the group the deployment serves
  // {deployment, status class}: slot 0 "error" (no answer), 1..5 1xx..5xx.
  telemetry::ChildCache<telemetry::Counter, 6> upstream_requests;
  telemetry::ChildCache<telemetry::Histogram, 1> upstream_latency;  // {deployment}
  telemetry::ChildCache<telemetry::Counter, 1> tokens;              // {deployment, `group`}
};

struct Deployment {
  const config::DeploymentConfig* cfg = nullptr;
  const Provider* provider = nullptr;
  std::string chat_target, completions_target, embeddings_target;
  std::unique_ptr<DeploymentMetricCache> metrics = std::make_unique<DeploymentMetricCache>();
};

// The models that may answer a request routed to a group, at one priority: the group itself,
// its fallbacks and context fallbacks (routing::models_that_may_answer), and its capacity
// fallbacks of that priority with theirs. The cost guard reserves the largest worst case over
// them, so that a dearer model answering cannot take spend past a cap.
struct AnswerChain {
  // The prices that cover the chain (cost::covering_prices): usually one.
  std::vector<const cost::ModelPrice*> prices;
  std::string unpriced;  // a model of the chain without a price (refused when budgeted); or empty
  // The largest image bound of the chain's models (cost::image_token_bound; the default for a
  // model without a price): each input image is estimated at it, whichever model answers.
  std::int64_t image_tokens = cost::kDefaultImageTokens;
};

struct ModelGroup {
  const config::ModelGroupConfig* cfg = nullptr;
  std::vector<Deployment> deployments;
  std::unique_ptr<GroupMetricCache> metrics = std::make_unique<GroupMetricCache>();
  // Per priority (0..2), built at load: no chain is walked per request.
  std::array<AnswerChain, 3> answers;
  // The price of the group's own name in the config's table (null: unpriced), found at load: a
  // request routed to the group takes it without a lookup by name.
  const cost::ModelPrice* price = nullptr;
};

struct KeyInfo {
  const config::KeyConfig* cfg = nullptr;
  const limits::Plan* plan = nullptr;  // the key's plan in this snapshot's config, if any
  // What the cost guard needs of the key on every request, built once per snapshot: the budget
  // ids that apply to it (budget_ids_for) and its budget set for leases.
  std::vector<std::string> budget_ids;
  cost::LeaseSet lease_set;
  // The key, tenant and budgets of the key's covered ledger rows, which share them.
  std::shared_ptr<const cost::LedgerParty> ledger_party;
  // The key's plan limits with their bucket keys, resolved for the rate-limit phase (shared:
  // KeyInfo is copied into its map, the limits point into this snapshot's config).
  std::shared_ptr<const limits::PreparedLimits> limits;
};

// Budget ids that apply to a key: global, its tenant's, its own (one per configured period).
std::vector<std::string> budget_ids_for(const config::Config& cfg, const config::KeyConfig& key);

class Runtime {
 public:
  // sim_port: where the in-process simulator listens, for providers of type sim.
  // stored_keys: keys created through the admin API (the KeyStore), beside the config's keys.
  Runtime(std::shared_ptr<const config::Config> cfg, std::uint16_t sim_port,
          std::vector<config::KeyConfig> stored_keys = {});
  // Its tables point into themselves, and serial() must name one table.
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const config::Config& config() const { return *cfg_; }
  std::shared_ptr<const config::Config> config_ptr() const { return cfg_; }
  const ModelGroup* group(std::string_view model) const;
  const KeyInfo* key_by_hash(const std::string& hex_hash) const;
  const Deployment* deployment(const std::string& id) const;
  const KeyInfo* key_by_name(const std::string& name) const;
  const std::string& models_json() const { return models_json_; }
  const std::vector<config::KeyConfig>& stored_keys() const { return stored_keys_; }
  std::uint16_t sim_port() const { return sim_port_; }
  // A number no other Runtime of this process has (from 1): what a per-thread memo of a lookup
  // in this Runtime's immutable tables is keyed on (an address could be reused after a reload).
  std::uint64_t serial() const { return serial_; }

 private:
  void build_answer_chains();

  std::shared_ptr<const config::Config> cfg_;
  std::unordered_map<std::string, Provider> providers_;
  // Looked up by the request's model (a string_view) without building a string.
  std::unordered_map<std::string, ModelGroup, StringHash, std::equal_to<>> groups_;
  std::unordered_map<std::string, KeyInfo> keys_;
  std::unordered_map<std::string, const Deployment*> deployments_;
  std::unordered_map<std::string, const KeyInfo*> keys_by_name_;
  std::string models_json_;
  std::vector<config::KeyConfig> stored_keys_;  // never resized: keys_ points into it
  std::uint16_t sim_port_ = 0;
  std::uint64_t serial_;
};

}  // namespace bw::gateway
