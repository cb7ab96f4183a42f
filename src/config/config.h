#pragma once

#include <array>
// Typed configuration. A Config is loaded once, validated, and then treated as an immutable
// snapshot: reload builds a new one and swaps it in whole. Errors name file:line and the key.
// Thread safety: a loaded Config is immutable and may be shared between threads.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "admission/admission_controller.h"
#include "common/clock.h"
#include "common/result.h"
#include "cost/alerts.h"
#include "cost/budget_manager.h"
#include "cost/key_store.h"
#include "cost/lease.h"
#include "cost/pricing.h"
#include "cost/redis_budget.h"
#include "http/client.h"
#include "http/server.h"
#include "limits/client_ip.h"
#include "limits/limit_spec.h"
#include "limits/redis_limit_store.h"
#include "routing/circuit_breaker.h"
#include "routing/dead_letter.h"
#include "routing/retry.h"
#include "routing/router.h"
#include "telemetry/capacity_planner.h"
#include "telemetry/scaler.h"
#include "telemetry/tracing.h"

namespace bw::config {

struct ProviderConfig {
  std::string name;
  // openai | azure | anthropic | gemini | sim (the in-process simulator)
  std::string type = "openai";
  std::string base_url;  // e.g. https://api.openai.com/v1, https://api.anthropic.com/v1
  // type sim: the wire format the simulator is spoken to in (openai | anthropic | gemini).
  std::string format = "openai";
  std::string api_version;                       // azure: the api-version query parameter
  std::string anthropic_version = "2023-06-01";  // anthropic: the anthropic-version header
  std::string api_key_env;                       // environment variable holding the provider key
  std::string api_key;                           // resolved at load time; never logged
  http::ClientTimeouts timeouts;
  http::PoolLimits pool;  // per worker thread
};

using DeploymentConfig = routing::DeploymentConfig;

// A model group is the router's own routing::ModelGroupConfig (name, balancer, deployments,
// fallbacks), read and validated at load, plus what the gateway serves around it.
// The response cache of a model group (docs/cache.md). A key's `cache:` overrides the fields it
// sets; a request's Cache-Control / x-bellwether-cache headers can only turn it down.
struct CacheModeConfig {
  std::string mode = "off";  // off | exact | semantic
  Nanos ttl = seconds(3600);
  std::size_t max_entry_bytes = 1 << 20;
  std::string eligibility = "all";  // all | deterministic (temperature 0 or a seed)
  std::string scope = "tenant";     // tenant | key | global
  // Semantic: the prompt is embedded through this model group (a request like any other).
  std::string embeddings_model;
  double threshold = 0.95;  // cosine similarity needed for a semantic hit
};

struct KeyCacheOverride {
  bool has_mode = false, has_ttl = false, has_max_entry_bytes = false, has_eligibility = false,
       has_scope = false;
  CacheModeConfig value;
};

// The cache's storage (one per process). `backend: redis` uses the `redis:` connection.
struct CacheStoreConfig {
  std::string backend = "memory";  // memory | redis
  std::size_t max_bytes = 256u << 20;
  Nanos redis_timeout = millis(50);
  std::size_t compress_above = 1024;
  Nanos single_flight_wait = seconds(30);  // 0 = no single-flight
  std::int64_t single_flight_max_waiters = 64;
  std::int64_t semantic_max_entries = 10000;
};

struct ModelGroupConfig : routing::ModelGroupConfig {
  std::int64_t max_output_tokens = 4096;  // default cap when a request sets no max_tokens
  std::int64_t context_window = 128000;
  std::string owned_by = "bellwether";
  bool has_concurrency = false;
  admission::LimiterConfig concurrency;  // in-flight limit of the group
  CacheModeConfig cache;
  // Per priority (p0..p2): other groups that may answer a request of that priority at once when
  // this group has no capacity now (concurrency or its deployments' RPM/TPM), instead of waiting
  // in this group's queue. Tried in order; none with room = wait here as usual.
  std::array<std::vector<std::string>, 3> capacity_fallbacks;
};

struct KeyConfig {
  std::string name;         // public id used in logs and metrics
  std::string secret_hash;  // hex SHA-256 of the key
  std::string tenant;
  std::string plan;
  std::vector<std::string> allowed_models;  // empty = the plan's list (empty there = all)
  int default_priority = -1;                // -1 = the plan's
  int max_priority = -1;  // the most urgent priority this key may ask for; -1 = the plan's
  std::vector<limits::LimitSpec> limit_overrides;  // replace plan limits of the same name
  std::vector<cost::KeyBudget> budgets;            // at most one per period
  bool downgrade_opt_out = false;                  // refuse at the cap instead of downgrading
  bool from_store = false;                         // created through the admin API
  KeyCacheOverride cache;
};

struct TenantConfig {
  std::string name;
  std::vector<cost::KeyBudget> budgets;
};

struct Distribution {
  double median_ms = 0;
  double p99_ms = 0;  // > median gives a lognormal tail
};

struct SimModelConfig {
  std::string name;
  Distribution ttft{150, 600};
  Distribution itl{15, 60};
  std::int64_t completion_tokens = 64;  // when the request sets no max_tokens
  std::int64_t max_concurrency = 0;     // 0 = unlimited
  // A self-hosted model server with `replicas` pods of `replica_concurrency` sequences each
  // (0 = not modelled): requests beyond replicas x replica_concurrency wait inside the server,
  // as in vLLM's waiting queue. The count is set at run time with POST /sim/replicas.
  int replicas = 0;
  std::int64_t replica_concurrency = 0;
  std::int64_t rpm = 0;
  std::int64_t tpm = 0;
  double error_rate = 0;  // share of requests answered 500
  double reset_rate = 0;  // share of streams reset mid-way
  double stall_rate = 0;  // share of requests that never answer
  std::int64_t context_window = 128000;
};

struct SimConfig {
  std::string listen = "127.0.0.1:0";
  bool zero_latency = false;
  // How a request's max_tokens sets the completion length. false ("length", the default for
  // tests and benchmarks): exactly max_tokens. true ("limit", as a real model): the model's
  // completion_tokens, cut at max_tokens (finish_reason "length" only when cut).
  bool max_tokens_is_limit = false;
  int workers = 1;
  std::uint64_t seed = 42;
  std::vector<SimModelConfig> models;
  SimModelConfig defaults;  // for a model not listed
};

struct AccessLogConfig {
  std::string path = "-";  // "-" = stdout, "off" = disabled, else a file
};

struct Config {
  std::string source = "<embedded>";
  bool embedded = false;
  http::ServerOptions server;
  std::string admin_listen;    // "" = admin routes on the main listener
  std::string admin_key_hash;  // hex SHA-256; "" = admin API disabled
  // The operator's console (/ui on the admin listener): on unless admin.console is false.
  bool console_enabled = true;
  // Mark the session cookie Secure: set when TLS terminates in front of the gateway. Without it,
  // the cookie is still Secure when a trusted proxy says X-Forwarded-Proto: https.
  bool console_secure_cookie = false;
  Nanos console_session_lifetime = seconds(8 * 3600);
  std::string text;  // the YAML this config was loaded from (shown redacted by the console)
  Nanos drain_timeout = seconds(20);
  std::size_t max_upstream_response_bytes = 64 * 1024 * 1024;
  std::vector<std::string> trusted_proxies;
  std::vector<limits::Cidr> trusted_cidrs;
  std::vector<limits::LimitSpec> limits;  // global / ip / endpoint / model limits
  std::vector<limits::Plan> plans;        // the built-in plans, overridden by name
  // Distributed mode: limits shared by every replica through Redis (one EVALSHA per request).
  bool redis_enabled = false;
  limits::RedisLimitStoreOptions redis;
  // Budgets in the same Redis (cost/redis_budget.h) when redis is enabled, budgets exist and
  // redis.budgets is not false; url, timeout, pool_size, replicas are shared with `redis`.
  bool redis_budgets_enabled = true;
  cost::RedisBudgetOptions redis_budgets;
  // Responses API: the store behind previous_response_id (api/response_store.h), set up at
  // startup. `responses.store` defaults to redis when `redis` is enabled, else memory.
  struct ResponsesStore {
    enum class Backend { kMemory, kRedis, kOff };
    Backend backend = Backend::kMemory;
    Nanos ttl = seconds(3600);
    std::int64_t max_entries = 10'000;  // in process only
    std::size_t max_entry_bytes = 1 << 20;
    std::string key_prefix = "bw:resp:";  // redis only
    Nanos timeout = 0;                    // redis only: deadline of one call; 0 = redis.timeout
    // A previous_response_id the store does not give the caller goes to an `openai` provider as
    // before markers existed (single-tenant deployments, ids created before the gateway), instead
    // of the unknown-id 404. Off: only the owner's responses stored by OpenAI are passed on.
    bool forward_unknown_ids = false;
  } responses;
  const limits::Plan* plan(const std::string& name) const;
  std::vector<ProviderConfig> providers;
  std::vector<ModelGroupConfig> model_groups;
  std::vector<KeyConfig> keys;
  AccessLogConfig access_log;
  CacheStoreConfig cache;
  // OpenTelemetry traces (telemetry/tracing.h). The exporter (endpoint, queue, batch) is set up
  // at startup; sampling and content capture follow reloads.
  telemetry::TracingConfig tracing;
  SimConfig sim;
  // Resilience (routing/): breaker and retry policy for every deployment, and the DLQ.
  routing::BreakerConfig breaker;
  routing::RetryConfig retry;
  Nanos ewma_tau = seconds(10);
  routing::DeadLetterConfig dead_letter;
  bool dead_letter_enabled = false;
  // Admission (admission/): queue, waits, shedding. Applied at startup (not on reload).
  admission::AdmissionConfig admission;
  bool queue_metrics_public = true;  // any valid API key may read /v1/metrics/queue
  // Cost guard (cost/): prices, budgets, downgrade, alerts, ledger.
  cost::PriceTable prices = cost::PriceTable::defaults();
  std::vector<cost::KeyBudget> global_budgets;
  std::vector<TenantConfig> tenants;
  cost::CostGuardOptions cost_guard;
  // budgets.lease: budget leases for the in-process budgets with the SQLite ledger (lease.h).
  cost::LeaseOptions budget_lease;
  std::string webhook_url;
  std::string webhook_secret;   // resolved from secret_env; never logged
  std::string ledger_path;      // SQLite file; "" = no ledger (then no stored keys)
  std::string ledger_postgres;  // postgresql://... : the ledger and key store on PostgreSQL
  // SQLite ledger: true (`durability: machine`) syncs the WAL at every group commit (survives a
  // power loss); false (`process`, the default) leaves it to the OS (survives kill -9).
  bool ledger_sync_machine = false;
  bool budget_metrics_per_key = false;
  // Autoscaling signal (telemetry/): the predictive scaler's parameters.
  telemetry::ScalerConfig scaler;
  telemetry::GatewayCapacityConfig gateway_capacity;  // scaler.gateway: what one replica has
  // Deployments marked scalable (deployments[].scale), by deployment id: self-hosted model
  // servers with their own replica recommendation.
  std::map<std::string, telemetry::UpstreamScaleSpec, std::less<>> scale_specs;
  int current_replicas = 1;  // how many replicas run now (env BELLWETHER_REPLICAS in k8s)

  const ProviderConfig* provider(const std::string& name) const;
  const ModelGroupConfig* model_group(const std::string& name) const;
};

// Loads and validates. Errors come back as "file:line: key: message".
Result<std::shared_ptr<const Config>> load_file(const std::string& path);
Result<std::shared_ptr<const Config>> load_string(const std::string& yaml, const std::string& name);

// The embedded default: simulated providers in process, a demo key from BELLWETHER_DEMO_KEY.
const std::string& embedded_default_yaml();

// The YAML text with every secret replaced by "<redacted>": values of keys that name a secret
// (key, secret, password, token, authorization, api_key, ...), credentials inside URLs, and
// admin/provider keys. Keys ending in _env name an environment variable and are kept.
std::string redacted_yaml(const std::string& text);

// Parses "host:port" ("[v6]:port" too).
bool parse_listen(const std::string& s, std::string& host, std::uint16_t& port);

// Hex SHA-256, used for API keys.
std::string sha256_hex(std::string_view data);

}  // namespace bw::config
