#include "gateway/gateway.h"

#include <spdlog/spdlog.h>

#include "gateway/pipeline.h"
#include "tools/sim/sim.h"

namespace bw::gateway {

Gateway::Gateway(std::shared_ptr<const config::Config> cfg, GatewayOptions options)
    : initial_(std::move(cfg)), options_(std::move(options)), shared_(std::make_shared<Shared>()) {}

Gateway::~Gateway() {
  if (server_) server_->stop();
  if (admin_server_) admin_server_->stop();
  if (sim_) sim_->stop();
}

Result<Ok> Gateway::start() {
  const auto& cfg = *initial_;
  const bool needs_sim = std::any_of(cfg.providers.begin(), cfg.providers.end(),
                                     [](const auto& p) { return p.type == "sim"; });
  if (needs_sim) {
    sim_ = std::make_unique<sim::Simulator>(cfg.sim);
    auto port = sim_->start("127.0.0.1:0");
    if (!port) return port.error();
    sim_port_ = *port;
  }
  if (auto r = apply_config(*shared_, cfg); !r) return r;
  if (cfg.dead_letter_enabled) {
    auto dlq = routing::DeadLetterQueue::open(cfg.dead_letter);
    if (!dlq) return dlq.error();
    shared_->dead_letters = std::move(dlq.value());
  }
  runtime_.store(std::make_shared<const Runtime>(initial_, sim_port_));
  shared_->runtime = &runtime_;
  shared_->access_log = std::make_unique<AccessLog>(cfg.access_log.path);

  http::ServerOptions opt = cfg.server;
  if (!options_.listen_override.empty() &&
      !config::parse_listen(options_.listen_override, opt.host, opt.port)) {
    return make_error(500, "config_error", "", "bad --listen '" + options_.listen_override + "'");
  }
  auto sh = shared_;
  server_ = std::make_unique<http::Server>(
      opt, [sh](http::Request& req, http::ResponseWriter& w) -> boost::asio::awaitable<void> {
        co_await handle_request(*sh, req, w, false);
      });
  if (auto r = server_->start(); !r) return r;
  if (!cfg.admin_listen.empty()) {
    http::ServerOptions aopt = cfg.server;
    aopt.workers = 1;
    config::parse_listen(cfg.admin_listen, aopt.host, aopt.port);
    admin_server_ = std::make_unique<http::Server>(
        aopt, [sh](http::Request& req, http::ResponseWriter& w) -> boost::asio::awaitable<void> {
          co_await handle_request(*sh, req, w, true);
        });
    if (auto r = admin_server_->start(); !r) return r;
    admin_server_->run();
  }
  server_->run();
  return Ok{};
}

Result<Ok> Gateway::reload(std::shared_ptr<const config::Config> cfg) {
  // The simulator and listeners stay as they are; everything the data plane reads is swapped.
  // Limit buckets and breaker state survive (they are keyed by name, not by config object).
  if (auto r = apply_config(*shared_, *cfg); !r) return r;
  runtime_.store(std::make_shared<const Runtime>(std::move(cfg), sim_port_));
  return Ok{};
}

std::size_t Gateway::drain_and_stop() {
  shared_->draining.store(true);
  const Nanos timeout = runtime_.load()->config().drain_timeout;
  server_->begin_drain();
  if (admin_server_) admin_server_->begin_drain();
  std::size_t left = server_->wait_drained(timeout);
  server_->stop();
  if (admin_server_) admin_server_->stop();
  if (sim_) sim_->stop();
  if (shared_->access_log) shared_->access_log->flush();
  return left;
}

std::uint16_t Gateway::port() const { return server_ ? server_->port() : 0; }
std::uint16_t Gateway::admin_port() const { return admin_server_ ? admin_server_->port() : 0; }

}  // namespace bw::gateway
