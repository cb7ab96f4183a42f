#pragma once
// Scaling signals of one gateway replica: per model group arrivals, per deployment attempts,
// tokens and latency, counted on the request path, and once a second turned into
// telemetry::GatewaySignals / GroupSignals / DeploymentSignals for the CapacityPlanner (what is
// short: the gateway, a self-hosted upstream, or a provider's quota).
// Thread safety: note_*() are called from every worker (a shared lock and relaxed atomics);
// tick() from the scaler thread only; last(), queue_metrics_body() and export_scaling_metrics()
// from any thread.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>

#include "common/clock.h"
#include "config/config.h"
#include "telemetry/capacity_planner.h"
#include "telemetry/gateway_metrics.h"

namespace bw::gateway {

struct Shared;
struct Deployment;

class ScalingState {
 public:
  explicit ScalingState(const config::Config& cfg);
  // Scale specs and the names counted (config reload); counters of kept names survive.
  void configure(const config::Config& cfg);

  void note_arrival(std::string_view group);
  void note_attempt(std::string_view deployment, Nanos latency);
  void note_tokens(std::string_view deployment, std::int64_t tokens);
  // Replica counts read by the controller from the scale subresource: "gateway=2,llama/vllm=3".
  void note_observed_replicas(std::string_view header);

  // One observation (the scaler thread, about once a second).
  telemetry::CapacityPlan tick(Shared& sh, Nanos now, int gateway_replicas, double connections,
                               double event_loop_lag_s);
  telemetry::CapacityPlan last() const { return planner_.last(); }
  telemetry::CapacityPlanner& planner() { return planner_; }

 private:
  struct Counter {
    std::atomic<std::uint64_t> requests{0};
    std::atomic<std::uint64_t> tokens{0};
    std::atomic<std::int64_t> latency_us{0};  // EWMA, racy updates are fine for a signal
  };
  using CounterMap = std::map<std::string, std::unique_ptr<Counter>, std::less<>>;
  template <class Tag>
  Counter* find(const CounterMap& map, std::string_view name) const;
  template <class Tag>
  [[gnu::noinline]] Counter* find_in_map(const CounterMap& map, std::string_view name) const;
  // The concurrency of a group served by one deployment with a capacity_concurrency follows
  // the replicas running (told by the controller): capacity_concurrency x running.
  void follow_replicas(Shared& sh, const config::Config& cfg, const telemetry::CapacityPlan& plan);
  std::map<std::string, int, std::less<>> applied_limits_;  // scaler thread only
  std::atomic<bool> limits_reset_{false};

  telemetry::CapacityPlanner planner_;
  mutable std::shared_mutex mu_;  // guards the maps (not the counters)
  CounterMap groups_;
  CounterMap deployments_;
  const std::uint64_t memo_owner_;  // this state in the threads' memos of the counters
};

// Process CPU time (user + system) in seconds, and resident memory in bytes.
double process_cpu_seconds();
double process_rss_bytes();

// Counts a deployment's tokens for the planner and bellwether_deployment_tokens_total.
// `d`: the deployment's runtime entry when at hand (its metric series are cached there).
void note_deployment_tokens(Shared& sh, const std::string& deployment, std::string_view model,
                            std::int64_t tokens, const Deployment* d = nullptr);

// Body of GET /v1/metrics/queue: the admission queue's figures, the gateway's
// "recommended_replicas" and the whole plan under "scaling". `observed_replicas` is the
// controller's X-Bellwether-Replicas header (may be empty).
std::string queue_metrics_body(Shared& sh, std::string_view observed_replicas);

// Sets the scaling gauges of GatewayMetrics from the last plan.
void export_scaling_metrics(const telemetry::CapacityPlan& plan, telemetry::GatewayMetrics& m);

}  // namespace bw::gateway
