#include "gateway/gateway.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdlib>
#include <thread>

#include "common/clock.h"

#include "api/response_store.h"
#include "cache/memory_cache.h"
#include "cache/redis_cache.h"
#include "cost/recovery.h"
#include "cost/redis_budget.h"
#include "gateway/phases.h"
#include "gateway/pipeline.h"
#include "gateway/request_tracing.h"
#include "limits/redis_limit_store.h"
#include "store/pg_key_store.h"
#include "store/pg_ledger.h"
#include "store/sqlite_key_store.h"
#include "store/sqlite_ledger.h"
#include "tools/sim/sim.h"

namespace bw::gateway {

namespace {

// A request the HTTP server refused before any handler ran (bad framing, a bound exceeded, a
// timeout): one access-log line and one count by reason, like every other answer.
void record_rejection(Shared& sh, const http::Rejection& r) {
  sh.metrics->http_rejections.with({r.reason}).inc();
  if (!sh.access_log) return;
  const std::string error = "http:" + std::string(r.reason);
  AccessRecord rec;
  rec.method = r.method;
  rec.path = r.target.substr(0, r.target.find('?'));
  rec.client_ip = r.peer_ip;
  rec.status = r.status;
  rec.error_code = error;
  rec.bytes_in = r.bytes_in;
  rec.bytes_out = r.bytes_out;
  sh.access_log->log(rec);
}

// The Responses API's store behind previous_response_id (responses: in the config).
Result<std::unique_ptr<api::ResponseStore>> make_response_store(const config::Config& cfg) {
  using Backend = config::Config::ResponsesStore::Backend;
  const auto& rc = cfg.responses;
  api::ResponseStoreOptions so;
  so.ttl = rc.ttl;
  so.max_entries = static_cast<std::size_t>(rc.max_entries);
  so.max_entry_bytes = rc.max_entry_bytes;
  switch (rc.backend) {
    case Backend::kOff:
      return std::unique_ptr<api::ResponseStore>();
    case Backend::kMemory:
      return api::make_memory_response_store(so);
    case Backend::kRedis:
      break;
  }
  // Starts even when Redis is down: lookups then answer 503, stores are skipped.
  api::RedisResponseStoreOptions ro;
  ro.url = cfg.redis.url;
  ro.timeout = rc.timeout > 0 ? rc.timeout : cfg.redis.timeout;
  ro.pool_size = cfg.redis.pool_size;
  ro.key_prefix = rc.key_prefix;
  ro.store = so;
  auto store = api::make_redis_response_store(std::move(ro));
  if (!store) return store.error();
  return std::unique_ptr<api::ResponseStore>(std::move(store.value()));
}

}  // namespace

Gateway::Gateway(std::shared_ptr<const config::Config> cfg, GatewayOptions options)
    : initial_(std::move(cfg)), options_(std::move(options)), shared_(std::make_shared<Shared>()) {}

void Gateway::stop_scaler() {
  {
    std::lock_guard lock(scaler_mu_);
    scaler_stop_ = true;
  }
  scaler_cv_.notify_all();
  pump_cv_.notify_all();
  if (scaler_thread_.joinable()) scaler_thread_.join();
  if (pump_thread_.joinable()) pump_thread_.join();
}

Gateway::~Gateway() {
  stop_scaler();
  if (server_) server_->stop();
  if (admin_server_) admin_server_->stop();
  if (sim_) sim_->stop();
  // Commits still in flight reach their (stopped) loops now, while the loops are there to
  // unwind the requests waiting for them (ledger_wait.h).
  if (shared_->ledger) shared_->ledger->flush();
}

namespace {

cache::RedisCacheOptions redis_cache_options(const config::Config& cfg) {
  cache::RedisCacheOptions o;
  o.timeout = cfg.cache.redis_timeout;
  o.compress_above = cfg.cache.compress_above;
  o.prefix = "bw:cache:";
  return o;
}

// Fleet mode: the semantic index is rebuilt from the vectors stored beside the Redis entries
// (bounded in time and count; a replica that cannot reach Redis starts with an empty index).
void rebuild_semantic_index(const config::Config& cfg, cache::SemanticIndex& index,
                            const Clock& clock) {
  auto ep = store::parse_redis_url(cfg.redis.url);
  if (!ep) return;
  Nanos ttl = 0;
  for (const auto& g : cfg.model_groups) {
    if (g.cache.mode == "semantic") ttl = std::max(ttl, g.cache.ttl);
  }
  boost::asio::io_context io;
  std::size_t added = 0;
  {
    auto client =
        std::make_shared<store::RedisClient>(*ep, 0, 64, std::vector<store::RedisScript>{});
    cache::RedisCache rc(client, redis_cache_options(cfg), clock);
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          auto records = co_await rc.scan_raw("sem:*", index.capacity(), clock.now() + seconds(5));
          std::string partition;
          std::vector<float> v;
          for (auto& [k, rec] : records) {
            if (!semantic_record_parse(rec, partition, v)) continue;
            if (index.add(v, partition, k.substr(4), clock.now() + ttl)) ++added;
          }
          io.stop();
        },
        [](std::exception_ptr) {});
    io.run_for(std::chrono::seconds(6));
  }
  spdlog::info("semantic cache index rebuilt from Redis: {} entries", added);
}

}  // namespace

void Gateway::start_cache(const config::Config& cfg) {
  // The storage exists even when no group caches yet, so that a reload can turn caching on
  // (an empty in-process cache costs nothing; a Redis client connects on first use).
  const auto& cc = cfg.cache;
  if (cc.backend == "redis") {
    auto ep = store::parse_redis_url(cfg.redis.url);
    auto client = std::make_shared<store::RedisClient>(*ep, cfg.redis.pool_size, 1024,
                                                       std::vector<store::RedisScript>{});
    shared_->cache =
        std::make_unique<cache::RedisCache>(client, redis_cache_options(cfg), shared_->clock);
  } else {
    cache::MemoryCacheOptions mo;
    mo.max_bytes = cc.max_bytes;
    shared_->cache = std::make_unique<cache::MemoryCache>(mo, shared_->clock);
  }
  if (cc.single_flight_wait > 0 && cc.single_flight_max_waiters > 0) {
    shared_->single_flight = std::make_unique<cache::SingleFlight>(
        static_cast<std::size_t>(cc.single_flight_max_waiters));
  }
  const bool semantic = std::any_of(cfg.model_groups.begin(), cfg.model_groups.end(),
                                    [](const auto& g) { return g.cache.mode == "semantic"; });
  if (semantic) {
    cache::SemanticIndexOptions so;
    so.max_entries = static_cast<std::size_t>(cc.semantic_max_entries);
    shared_->semantic = std::make_unique<cache::SemanticIndex>(so);
    if (cc.backend == "redis") rebuild_semantic_index(cfg, *shared_->semantic, shared_->clock);
  }
}

Result<Ok> Gateway::open_ledger_and_keys(const config::Config& cfg,
                                         std::vector<config::KeyConfig>& stored) {
  if (!cfg.ledger_postgres.empty()) {
    store::PgLedgerOptions lo;
    lo.db.conninfo = cfg.ledger_postgres;
    auto ledger = store::PgLedger::open(lo);
    if (!ledger) return ledger.error();
    shared_->ledger = std::move(ledger.value());
    store::PgKeyStoreOptions ko;
    ko.db = lo.db;
    auto keys = store::PgKeyStore::open(ko);
    if (!keys) return keys.error();
    shared_->key_store = std::move(keys.value());
  } else if (!cfg.ledger_path.empty()) {
    store::SqliteLedgerOptions lo;
    lo.path = cfg.ledger_path;
    lo.synchronous_full = cfg.ledger_sync_machine;
    // One covered-row journal per event loop: a covered request's row is durable (process
    // durability) once its loop appends it, and its answer does not wait for the commit.
    if (cfg.budget_lease.enabled && !cfg.ledger_sync_machine) {
      lo.journals = static_cast<std::size_t>(
          cfg.server.workers > 0 ? cfg.server.workers
                                 : std::max(1u, std::thread::hardware_concurrency()));
    }
    auto ledger = store::SqliteLedger::open(lo);
    if (!ledger) return ledger.error();
    if ((*ledger)->replayed() > 0) {
      spdlog::warn("ledger: {} covered rows replayed from the journals of a process that died",
                   (*ledger)->replayed());
    }
    shared_->ledger = std::move(ledger.value());
    auto keys = store::SqliteKeyStore::open(cfg.ledger_path);
    if (!keys) return keys.error();
    shared_->key_store = std::move(keys.value());
  }
  if (shared_->key_store) {
    auto list = shared_->key_store->list();
    if (!list) return list.error();
    for (const auto& r : *list) {
      if (!r.revoked) stored.push_back(key_config_from_record(r, cfg));
    }
  }
  return Ok{};
}

Result<Ok> Gateway::start_budgets(const config::Config& cfg,
                                  const std::vector<config::KeyConfig>& stored) {
  shared_->budgets = std::make_unique<cost::BudgetManager>(cfg.cost_guard);
  declare_budgets(*shared_, cfg, stored);
  const bool redis_budgets = cfg.redis_enabled && cfg.redis_budgets_enabled &&
                             (!shared_->budgets->budget_ids().empty() || shared_->key_store);
  if (redis_budgets) {
    // The shared counters live in Redis and are rebuilt from the ledger per budget period when
    // missing, so there is nothing to recover into memory here; shared_->budgets only names the
    // budgets (caps, periods) from now on.
    auto store =
        cost::RedisBudgetStore::create(cfg.redis_budgets, *shared_->budgets, shared_->ledger.get(),
                                       shared_->blocking->get_executor());
    if (!store) return store.error();
    shared_->budget_store = std::make_unique<cost::RedisBudgets>(std::move(*store));
    if (!shared_->ledger) {
      spdlog::warn(
          "budgets in Redis without a ledger: a lost counter cannot be rebuilt, so "
          "those budgets run on the local share until it is back");
    } else if (cfg.ledger_postgres.empty()) {
      spdlog::warn(
          "budgets in Redis with a SQLite ledger: a rebuild sees only this replica's "
          "spend; use ledger.postgres with several replicas");
    }
  } else if (shared_->ledger) {
    auto rec =
        cost::recover_budgets(*shared_->ledger, *shared_->budgets, shared_->clock.unix_millis());
    if (!rec) return rec.error();
    if (rec->settled_micro > 0 || !rec->open.empty()) {
      spdlog::info(
          "ledger recovered: ${:.6f} settled this period, {} open reservations counted "
          "at their reserved amount",
          static_cast<double>(rec->settled_micro) / 1e6, rec->open.size());
    }
    std::lock_guard lock(shared_->recovered_mu);
    shared_->recovered = std::move(rec->open);
  }
  if (!shared_->budget_store) {
    shared_->budget_store = std::make_unique<cost::LocalBudgetStore>(*shared_->budgets);
    // Leases need the in-process budgets and a ledger that takes them (SQLite); with budgets
    // in Redis or the PostgreSQL ledger every request keeps its own reservation row.
    if (cfg.budget_lease.enabled && shared_->ledger && shared_->ledger->supports_leases()) {
      shared_->leases =
          std::make_unique<cost::LeaseBook>(*shared_->budgets, *shared_->ledger, cfg.budget_lease);
    }
  }
  return Ok{};
}

void Gateway::start_pump_thread() {
  // Rate refills are time-driven: this thread grants the waiters of a deployment's RPM/TPM at
  // the moment its capacity refills (woken earlier when a wait starts that ends sooner).
  shared_->admission->set_pump_notifier([this] { pump_cv_.notify_one(); });
  pump_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "bw-pump");
    auto& ac = *shared_->admission;
    std::unique_lock lock(scaler_mu_);
    while (!scaler_stop_) {
      const Nanos now = SteadyClock::instance().now();
      const Nanos at = std::min(ac.next_pump_at(), now + millis(20));
      if (at > now) {
        pump_cv_.wait_for(lock, std::chrono::nanoseconds(at - now));
        if (scaler_stop_) break;
      }
      lock.unlock();
      ac.pump();
      lock.lock();
    }
  });
}

Result<Ok> Gateway::start_listeners(const config::Config& cfg) {
  http::ServerOptions opt = cfg.server;
  if (!options_.listen_override.empty() &&
      !config::parse_listen(options_.listen_override, opt.host, opt.port)) {
    return make_error(500, "config_error", "", "bad --listen '" + options_.listen_override + "'");
  }
  auto sh = shared_;
  opt.on_rejection = [sh](const http::Rejection& r) { record_rejection(*sh, r); };
  // The handler returns handle_request's awaitable itself: a coroutine around it would be one
  // more frame per request. `sh` lives in the server's handler, which outlives every request.
  server_ = std::make_unique<http::Server>(opt, [sh](http::Request& req, http::ResponseWriter& w) {
    return handle_request(*sh, req, w, false);
  });
  if (auto r = server_->start(); !r) return r;
  if (!cfg.admin_listen.empty()) {
    http::ServerOptions aopt = cfg.server;
    aopt.workers = 1;
    aopt.on_rejection = opt.on_rejection;
    config::parse_listen(cfg.admin_listen, aopt.host, aopt.port);
    admin_server_ =
        std::make_unique<http::Server>(aopt, [sh](http::Request& req, http::ResponseWriter& w) {
          return handle_request(*sh, req, w, true);
        });
    if (auto r = admin_server_->start(); !r) return r;
    admin_server_->run();
  }
  return Ok{};
}

void Gateway::start_scaler_thread(const config::Config& cfg) {
  int replicas = cfg.current_replicas;
  if (const char* r = std::getenv("BELLWETHER_REPLICAS"); r && std::atoi(r) > 0)
    replicas = std::atoi(r);
  scaler_thread_ = std::thread([this, replicas] {
    pthread_setname_np(pthread_self(), "bw-scaler");
    std::unique_lock lock(scaler_mu_);
    while (!scaler_cv_.wait_for(lock, std::chrono::seconds(1), [&] { return scaler_stop_; })) {
      const double conns = server_ ? static_cast<double>(server_->active_connections()) : 0;
      shared_->scaling->tick(*shared_, shared_->clock.now(), replicas, conns,
                             server_ ? server_->event_loop_lag_s() : 0);
    }
  });
}

Result<Ok> Gateway::start() {
  // The default logger is made here, before the threads that log (workers, the ledger's writer,
  // the simulator) start. Two threads that log first at once would be safe too (it is a
  // function-local static of spdlog's registry), but spdlog is not built with the thread
  // sanitizer, which cannot see that static's guard and reports its construction as a race.
  spdlog::default_logger_raw();
  const auto& cfg = *initial_;
  const bool needs_sim = std::any_of(cfg.providers.begin(), cfg.providers.end(),
                                     [](const auto& p) { return p.type == "sim"; });
  if (needs_sim) {
    sim_ = std::make_unique<sim::Simulator>(cfg.sim);
    auto port = sim_->start("127.0.0.1:0");
    if (!port) return port.error();
    sim_port_ = *port;
  }
  shared_->limiter_clock_offset = options_.clock_offset;
  if (auto r = apply_config(*shared_, cfg); !r) return r;
  if (cfg.redis_enabled) {
    // Starts even when Redis is down: limits then follow their failure policy.
    auto store = limits::RedisLimitStore::create(cfg.redis);
    if (!store) return store.error();
    shared_->limiter->set_async_store(*store);
  }
  start_cache(cfg);
  if (auto store = make_response_store(cfg); !store) {
    return store.error();
  } else {
    shared_->responses = std::move(store.value());
  }
  if (cfg.dead_letter_enabled) {
    auto dlq = routing::DeadLetterQueue::open(cfg.dead_letter);
    if (!dlq) return dlq.error();
    shared_->dead_letters = std::move(dlq.value());
  }
  // Cost guard: the durable ledger and stored keys, then the budgets (recovered before serving).
  std::vector<config::KeyConfig> stored;
  if (auto r = open_ledger_and_keys(cfg, stored); !r) return r;
  if (auto r = start_budgets(cfg, stored); !r) return r;
  if (!cfg.webhook_url.empty()) {
    cost::WebhookOptions wo;
    wo.url = cfg.webhook_url;
    wo.secret = cfg.webhook_secret;
    shared_->webhooks = std::make_unique<cost::WebhookSender>(wo);
  }
  runtime_.store(std::make_shared<const Runtime>(initial_, sim_port_, std::move(stored)));
  shared_->runtime = &runtime_;

  telemetry::GatewayMetricsOptions mo;
  mo.version = options_.version;
  mo.commit = options_.commit;
  mo.budget_utilization = cfg.budget_metrics_per_key;
  shared_->metrics = std::make_unique<telemetry::GatewayMetrics>(shared_->registry, mo);
  shared_->scaling = std::make_unique<ScalingState>(cfg);
  start_pump_thread();
  shared_->access_log = std::make_unique<AccessLog>(cfg.access_log.path);
  if (cfg.tracing.exporting()) shared_->tracer = make_trace_exporter(*shared_, cfg.tracing);
  if (cfg.console_enabled && !cfg.admin_key_hash.empty()) start_console(*shared_);

  if (auto r = start_listeners(cfg); !r) return r;
  start_scaler_thread(cfg);
  server_->run();
  return Ok{};
}

void Gateway::note_reload(bool ok, const std::string& message) {
  gateway::note_reload(*shared_, ok, message);
}

Result<Ok> Gateway::reload(std::shared_ptr<const config::Config> cfg) {
  // The simulator and listeners stay as they are; everything the data plane reads is swapped.
  // Limit buckets and breaker state survive (they are keyed by name, not by config object).
  if (auto r = apply_config(*shared_, *cfg); !r) return r;
  if (shared_->scaling) shared_->scaling->configure(*cfg);
  std::lock_guard lock(shared_->keys_mu);
  auto stored = runtime_.load()->stored_keys();
  declare_budgets(*shared_, *cfg, stored);
  runtime_.store(std::make_shared<const Runtime>(std::move(cfg), sim_port_, std::move(stored)));
  return Ok{};
}

void declare_budgets(Shared& sh, const config::Config& cfg,
                     const std::vector<config::KeyConfig>& stored_keys) {
  if (!sh.budgets) return;
  auto declare = [&](const std::string& id, const cost::KeyBudget& b) {
    if (!sh.budgets->upsert_budget(cost::BudgetSpec{id, b.cap_micro, b.period})) {
      spdlog::error("budget {} cannot change its period; keeping the old one", id);
    }
  };
  for (const auto& b : cfg.global_budgets) declare(cost::global_budget_id(b.period), b);
  for (const auto& t : cfg.tenants) {
    for (const auto& b : t.budgets) declare(cost::tenant_budget_id(t.name, b.period), b);
  }
  for (const auto* keys : {&cfg.keys, &stored_keys}) {
    for (const auto& k : *keys) {
      for (const auto& b : k.budgets) declare(cost::key_budget_id(k.name, b.period), b);
    }
  }
}

Result<Ok> refresh_stored_keys(Shared& sh) {
  auto current = sh.runtime->load();
  std::vector<config::KeyConfig> stored;
  if (sh.key_store) {
    auto list = sh.key_store->list();
    if (!list) return list.error();
    for (const auto& r : *list) {
      if (!r.revoked) stored.push_back(key_config_from_record(r, current->config()));
    }
  }
  declare_budgets(sh, current->config(), stored);
  sh.runtime->store(std::make_shared<const Runtime>(current->config_ptr(), current->sim_port(),
                                                    std::move(stored)));
  return Ok{};
}

Result<Ok> apply_config(Shared& sh, const config::Config& cfg) {
  routing::RouterConfig rc;
  rc.breaker = cfg.breaker;
  rc.retry = cfg.retry;
  rc.ewma_tau = cfg.ewma_tau;
  // A model group is the router's own config, validated at load: the router takes it as is.
  rc.groups.assign(cfg.model_groups.begin(), cfg.model_groups.end());
  // The admission queue paces each deployment's RPM/TPM (and learns them from the provider's
  // headers); the router does not refuse on them a second time.
  for (auto& g : rc.groups) {
    for (auto& d : g.deployments) {
      d.rpm = 0;
      d.tpm = 0;
    }
  }
  if (auto r = sh.router.reload(std::move(rc)); !r) return r;
  if (!sh.admission) sh.admission = std::make_unique<admission::AdmissionController>(cfg.admission);
  for (const auto& g : cfg.model_groups) {
    sh.admission->configure_group(g.name, g.concurrency);
    std::vector<admission::DeploymentCapacityConfig> caps;
    for (const auto& d : g.deployments) caps.push_back({d.id, {.rpm = d.rpm, .tpm = d.tpm}});
    sh.admission->configure_capacity(g.name, caps);
  }
  auto lc = std::make_shared<limits::LimiterConfig>();
  lc->limits = cfg.limits;
  if (!sh.limiter) {
    sh.limit_store = std::make_shared<limits::MemoryLimitStore>();
    sh.limiter = std::make_unique<limits::Limiter>(lc, sh.limit_store);
  } else {
    sh.limiter->reload(lc);
  }
  return Ok{};
}

std::size_t Gateway::drain_and_stop() {
  shared_->draining.store(true);
  stop_scaler();
  if (shared_->console) shared_->console->sampler.stop();
  const Nanos timeout = runtime_.load()->config().drain_timeout;
  server_->begin_drain();
  if (admin_server_) admin_server_->begin_drain();
  std::size_t left = server_->wait_drained(timeout);
  server_->stop();
  if (admin_server_) admin_server_->stop();
  if (sim_) sim_->stop();
  // Quiet budget leases close now: a restart would otherwise hold their rows until reconciled.
  if (shared_->leases) shared_->leases->close_idle(shared_->clock.unix_millis(), /*all=*/true);
  if (shared_->ledger) shared_->ledger->flush();
  if (shared_->access_log) shared_->access_log->flush();
  return left;
}

std::uint16_t Gateway::port() const {
  return server_ ? server_->port() : 0;
}
std::uint16_t Gateway::admin_port() const {
  return admin_server_ ? admin_server_->port() : 0;
}

}  // namespace bw::gateway
