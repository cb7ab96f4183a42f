#pragma once
// Shared: the state that outlives config reloads and is shared by every worker (limit buckets,
// breakers, queues, budgets, the ledger, telemetry), and the functions that (re)configure it.
// Thread safety: Shared is shared by all workers; its members are atomic or internally locked.
#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <memory>
#include <mutex>

#include "admission/admission_controller.h"
#include "cache/cache.h"
#include "cache/semantic_index.h"
#include "cache/single_flight.h"
#include "common/clock.h"
#include "cost/alerts.h"
#include "cost/budget_manager.h"
#include "cost/budget_store.h"
#include "cost/key_store.h"
#include "cost/lease.h"
#include "cost/ledger.h"
#include "cost/recovery.h"
#include "gateway/access_log.h"
#include "gateway/console.h"
#include "gateway/runtime.h"
#include "gateway/scaling.h"
#include "gateway/upstream.h"
#include "limits/limiter.h"
#include "limits/memory_limit_store.h"
#include "routing/dead_letter.h"
#include "routing/router.h"
#include "telemetry/gateway_metrics.h"
#include "telemetry/metrics.h"
#include "telemetry/scaler.h"
#include "telemetry/trace_exporter.h"

#include "api/response_store.h"

namespace bw::gateway {

struct Shared {
  explicit Shared(const Clock& c = SteadyClock::instance()) : clock(c) {}
  // Every time read of the gateway layer goes through this clock (tests pass a FakeClock).
  const Clock& clock;
  // Added to the `now` passed to the limiter only: simulates a replica whose clock is off
  // (`serve --clock-offset-ms`, for tests of the distributed limits).
  Nanos limiter_clock_offset = 0;
  std::atomic<std::shared_ptr<const Runtime>>* runtime = nullptr;
  std::unique_ptr<AccessLog> access_log;
  std::atomic<bool> draining{false};
  std::atomic<std::uint64_t> requests{0};  // requests that entered handle_request
  std::atomic<std::uint64_t> finished{0};  // requests that went through finish (== requests)
  std::shared_ptr<limits::MemoryLimitStore> limit_store;
  std::unique_ptr<limits::Limiter> limiter;
  routing::Router router;
  std::unique_ptr<routing::DeadLetterQueue> dead_letters;
  std::unique_ptr<admission::AdmissionController> admission;
  // How forward() reaches the providers.
  std::unique_ptr<Upstream> upstream{std::make_unique<PooledUpstream>()};
  // Blocking work (SQLite) runs here, never on a worker's event loop.
  std::unique_ptr<boost::asio::thread_pool> blocking{std::make_unique<boost::asio::thread_pool>(1)};
  std::atomic<std::uint64_t> shadow_rejections{0};
  // Cost guard: the configured budgets (caps, periods), the durable ledger, where spend is
  // reserved (in process or in Redis), stored keys, alert delivery.
  std::unique_ptr<cost::BudgetManager> budgets;
  std::unique_ptr<cost::Ledger> ledger;
  // Declared after `ledger`: destroyed first (the Redis store rebuilds from the ledger).
  std::unique_ptr<cost::BudgetStore> budget_store;
  // Budget leases (in-process budgets with the SQLite ledger, when budgets.lease.enabled);
  // destroyed before the budgets and the ledger it writes to.
  std::unique_ptr<cost::LeaseBook> leases;
  // Open ledger rows found at startup, held in the budgets until an operator reconciles them
  // (/admin/reservations): dropping one would free headroom the ledger still counts as reserved.
  std::mutex recovered_mu;
  std::vector<cost::RecoveredReservation> recovered;
  std::unique_ptr<cost::KeyStore> key_store;
  std::unique_ptr<cost::WebhookSender> webhooks;
  std::mutex keys_mu;  // serialises stored-key changes and the runtime rebuild that follows
  // Telemetry: Prometheus registry, the gateway's metric families, the scaling predictor.
  telemetry::Registry registry;
  std::unique_ptr<telemetry::GatewayMetrics> metrics;
  std::unique_ptr<ScalingState> scaling;  // what is short, and the replica recommendations
  // Response cache (cache/): its storage (memory or Redis), single-flight, the semantic index.
  std::unique_ptr<cache::Cache> cache;
  std::unique_ptr<cache::SingleFlight> single_flight;
  std::unique_ptr<cache::SemanticIndex> semantic;
  // OTLP trace export; null unless tracing.endpoint is set (at startup).
  std::unique_ptr<telemetry::TraceExporter> tracer;
  std::atomic<std::uint64_t> llm_arrivals{0};
  std::atomic<std::uint64_t> llm_completions{0};
  // Responses API: stored responses for previous_response_id. In process (10,000 responses, one
  // hour each) unless the config says otherwise (Gateway::start); null with responses.store: off.
  std::unique_ptr<api::ResponseStore> responses{
      api::make_memory_response_store(api::ResponseStoreOptions{})};

  // The operator's console (sessions, the sampler). Last member: destroyed first, so that the
  // sampler thread stops before the state it reads goes away.
  std::unique_ptr<Console> console;

  // The limiter's time at the gateway clock's `now`.
  Nanos limiter_time(Nanos now) const { return now + limiter_clock_offset; }
  // At this turn's reading: a shard decides at the latest time it has seen, so a reading a
  // little older than another thread's is taken at that time.
  Nanos limiter_now() const { return limiter_time(clock.turn_now()); }
};

// The /metrics body: gauges that are read at scrape time are refreshed first.
std::string render_metrics(Shared& shared);

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

}  // namespace bw::gateway
