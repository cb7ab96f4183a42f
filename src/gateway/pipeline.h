#pragma once
// The request pipeline for LLM endpoints and the small fixed routes. See pipeline.cc for the
// whole flow of one request in phase order (DESIGN.md "Life of a request").
// Thread safety: Shared is shared by all workers; its members are atomic or internally locked.
#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <memory>

#include <boost/asio/thread_pool.hpp>
#include "gateway/access_log.h"
#include "gateway/console.h"
#include "gateway/runtime.h"

#include "admission/admission_controller.h"
#include "cost/alerts.h"
#include "cost/budget_manager.h"
#include "cost/key_store.h"
#include "cost/ledger.h"
#include "cost/redis_budget.h"
#include "http/server.h"
#include "limits/limiter.h"
#include "limits/memory_limit_store.h"
#include "routing/dead_letter.h"
#include "routing/router.h"
#include "telemetry/gateway_metrics.h"
#include "telemetry/metrics.h"
#include "telemetry/scaler.h"

namespace bw::gateway {

// State that outlives config reloads: limit buckets, breaker state, the access log.
struct Shared {
  std::atomic<std::shared_ptr<const Runtime>>* runtime = nullptr;
  std::unique_ptr<AccessLog> access_log;
  std::atomic<bool> draining{false};
  std::atomic<std::uint64_t> requests{0};
  std::shared_ptr<limits::MemoryLimitStore> limit_store;
  std::unique_ptr<limits::Limiter> limiter;
  routing::Router router;
  std::unique_ptr<routing::DeadLetterQueue> dead_letters;
  std::unique_ptr<admission::AdmissionController> admission;
  // Blocking work (SQLite) runs here, never on a worker's event loop.
  std::unique_ptr<boost::asio::thread_pool> blocking{std::make_unique<boost::asio::thread_pool>(1)};
  std::atomic<std::uint64_t> shadow_rejections{0};
  // Cost guard: budgets in memory, the durable ledger, stored keys, alert delivery.
  std::unique_ptr<cost::BudgetManager> budgets;
  std::unique_ptr<cost::Ledger> ledger;
  // Distributed mode: budgets shared through Redis (declared after `ledger`: destroyed first).
  std::shared_ptr<cost::RedisBudgetStore> redis_budgets;
  std::unique_ptr<cost::KeyStore> key_store;
  std::unique_ptr<cost::WebhookSender> webhooks;
  std::mutex keys_mu;  // serialises stored-key changes and the runtime rebuild that follows
  // Telemetry: Prometheus registry, the gateway's metric families, the scaling predictor.
  telemetry::Registry registry;
  std::unique_ptr<telemetry::GatewayMetrics> metrics;
  std::unique_ptr<telemetry::PredictiveScaler> scaler;
  std::atomic<std::uint64_t> llm_arrivals{0};
  std::atomic<std::uint64_t> llm_completions{0};
  // The operator's console (sessions, the sampler). Last member: destroyed first, so that the
  // sampler thread stops before the state it reads goes away.
  std::unique_ptr<Console> console;
};

// The /metrics body: gauges that are read at scrape time are refreshed first.
std::string render_metrics(Shared& shared);

// Budget ids that apply to a key: global, its tenant's, its own (one per configured period).
std::vector<std::string> budget_ids_for(const config::Config& cfg, const config::KeyConfig& key);
// Declares every configured budget (and the stored keys' budgets) to the BudgetManager.
void declare_budgets(Shared& shared, const config::Config& cfg,
                     const std::vector<config::KeyConfig>& stored_keys);
// A key created through the admin API, as the data plane sees it.
config::KeyConfig key_config_from_record(const cost::ApiKeyRecord& record,
                                         const config::Config& cfg);
// Reloads the stored keys from the KeyStore and swaps in a runtime that knows them.
Result<Ok> refresh_stored_keys(Shared& shared);

// Applies a (new) config to the long-lived state: limits and routing.
Result<Ok> apply_config(Shared& shared, const config::Config& cfg);

// Entry point for every request on the data-plane listener (admin=false) or the admin listener.
boost::asio::awaitable<void> handle_request(Shared& shared, http::Request& req,
                                            http::ResponseWriter& w, bool admin_listener);

}  // namespace bw::gateway
