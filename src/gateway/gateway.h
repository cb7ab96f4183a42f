#pragma once
// Gateway: wires the HTTP server, the route table, the request pipeline and the shared runtime
// state (config snapshot, simulator, access log). main() owns one Gateway.
// Thread safety: start/reload/drain from the control thread; handlers run on the workers and
// read the current Runtime through an atomic shared_ptr.
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/clock.h"
#include "common/result.h"
#include "config/config.h"
#include "cost/recovery.h"
#include "gateway/access_log.h"
#include "gateway/runtime.h"
#include "http/server.h"

namespace bw::sim {
class Simulator;
}

namespace bw::gateway {

struct Shared;

struct GatewayOptions {
  std::string listen_override;  // --listen
  // --clock-offset-ms (hidden, tests only): shifts the `now` passed to the limiter, to simulate
  // a replica whose clock is off.
  Nanos clock_offset = 0;
  // The build, for bellwether_build_info{version,commit}.
  std::string version = "0.1.0";
  std::string commit = "unknown";
};

class Gateway {
 public:
  Gateway(std::shared_ptr<const config::Config> cfg, GatewayOptions options);
  ~Gateway();

  Result<Ok> start();
  // The response cache's storage, single-flight and semantic index (set at start).
  void start_cache(const config::Config& cfg);
  // Swaps in a new configuration; in-flight requests finish on the old one. Listener addresses
  // and worker counts are not changed by a reload.
  Result<Ok> reload(std::shared_ptr<const config::Config> cfg);
  // Records a reload's outcome (also one that failed before reload(), e.g. an invalid file) for
  // the console's Config page.
  void note_reload(bool ok, const std::string& message);
  // Stops accepting, waits for in-flight requests up to the drain timeout, stops everything.
  // Returns the number of connections that were still open at the deadline.
  std::size_t drain_and_stop();

  std::uint16_t port() const;
  std::uint16_t admin_port() const;
  std::uint16_t sim_port() const { return sim_port_; }
  std::shared_ptr<const Runtime> runtime() const { return runtime_.load(); }

 private:
  // The phases of start(), in order.
  Result<Ok> open_ledger_and_keys(const config::Config& cfg,
                                  std::vector<config::KeyConfig>& stored);
  Result<Ok> start_budgets(const config::Config& cfg, const std::vector<config::KeyConfig>& stored);
  void start_pump_thread();
  Result<Ok> start_listeners(const config::Config& cfg);
  void start_scaler_thread(const config::Config& cfg);

  std::shared_ptr<const config::Config> initial_;
  GatewayOptions options_;
  std::unique_ptr<sim::Simulator> sim_;
  std::uint16_t sim_port_ = 0;
  std::atomic<std::shared_ptr<const Runtime>> runtime_;
  std::shared_ptr<Shared> shared_;
  std::unique_ptr<http::Server> server_;
  std::unique_ptr<http::Server> admin_server_;
  // Feeds the predictive scaler once a second.
  std::thread scaler_thread_;
  std::mutex scaler_mu_;
  std::condition_variable scaler_cv_;
  bool scaler_stop_ = false;
  // Grants the admission queue's rate waiters when capacity refills (AdmissionController::pump).
  std::thread pump_thread_;
  std::condition_variable pump_cv_;
  void stop_scaler();
};

}  // namespace bw::gateway
