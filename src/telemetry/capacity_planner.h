#pragma once
// CapacityPlanner: tells apart the three things that can be short when requests wait, and gives
// each scalable thing its own replica recommendation.
//
//  1. The gateway's own capacity: CPU time per request (measured by the process itself), open
//     connections, memory, event-loop lag. Gateway replicas are sized from the forecast arrival
//     rate times the measured CPU cost per request, with headroom; the admission queue never
//     enters that sum, since a queue held by an upstream limit is not fixed by more gateways.
//  2. Self-hosted upstream capacity: deployments marked scalable (`scale:` in the config). Each
//     gets a PredictiveScaler of its own, fed with the demand routed to it (tokens/s, or
//     requests/s for a concurrency capacity) and the backlog waiting for it. Its capacity per
//     replica is learned from its throughput ONLY while it is itself the binding constraint.
//  3. Provider quota (a deployment's RPM/TPM tier): no replica count helps. The plan names the
//     deployment and the missing requests or tokens per minute.
//
// Pure: time is passed in, signals are plain structs filled by the gateway (see
// gateway/scaling.cc). Thread safety: observe(), plan() and configure() take one internal mutex;
// call observe() from one thread (the gateway's scaler thread).
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "telemetry/scaler.h"

namespace bw::telemetry {

// What limits the service (or would, at the forecast).
enum class Constraint {
  kNone,
  kGatewayCpu,
  kGatewayConnections,
  kGatewayMemory,
  kGatewayEventLoop,
  kUpstreamCapacity,  // a deployment's own serving capacity (scale it, if it is scalable)
  kProviderQuota,     // a deployment's RPM/TPM tier: more replicas of anything do not help
  kKeyLimit,          // a key's or tenant's own rate limit: working as configured
};
std::string_view to_string(Constraint c);
bool is_gateway(Constraint c);

// `scale:` of a deployment: the Kubernetes Deployment that serves it and its capacity.
struct UpstreamScaleSpec {
  std::string namespace_name;        // target.namespace ("" = the controller's namespace)
  std::string deployment;            // target.deployment
  double capacity_tokens_per_s = 0;  // per replica (prior, then learned); or
  double capacity_concurrency = 0;   // requests one replica serves at once
  int min_replicas = 1;
  int max_replicas = 10;
  Nanos forecast_horizon = seconds(120);  // about the start-up time of one replica
  bool learn_capacity = true;
};

struct GatewayCapacityConfig {
  double cpu_cores_per_replica = 1;         // CPU one replica may use (its request)
  double target_cpu_utilization = 0.6;      // size so that replicas run at this share
  double cpu_seconds_per_request = 0.0005;  // prior, replaced by the measured cost
  double cost_ewma_alpha = 0.3;             // smoothing of the measured cost
  double max_connections_per_replica = 0;   // 0 = connections are not a constraint
  double target_connection_utilization = 0.7;
  double memory_bytes_per_replica = 0;  // 0 = memory is not a constraint
  double target_memory_utilization = 0.8;
  Nanos event_loop_lag_threshold = millis(250);  // on the smoothed lag (EWMA, alpha 0.3)
  double quota_threshold = 0.9;  // a deployment using this share of its RPM/TPM is at its quota
};

// One gateway replica's own figures (cumulative counters are differentiated by the planner).
struct GatewaySignals {
  std::uint64_t arrivals_total = 0;  // LLM requests received
  double cpu_seconds_total = 0;      // process CPU time (user + system)
  double connections = 0;            // open client connections now
  double rss_bytes = 0;
  double event_loop_lag_s = 0;  // worst worker, last probe
  int current_replicas = 1;     // gateway replicas running
};

// One model group as this gateway replica sees it.
struct GroupSignals {
  std::string name;
  std::uint64_t arrivals_total = 0;  // requests that reached admission for this group
  double backlog = 0;                // requests waiting for a concurrency slot of the group
  // What the waiters wait for, when the admission layer knows; kNone = infer from the
  // deployments' state.
  Constraint waiting_on = Constraint::kNone;
};

// One deployment as this gateway replica sees it.
struct DeploymentSignals {
  std::string id;
  std::string group;
  std::string model;
  std::uint64_t requests_total = 0;  // attempts sent to it
  std::uint64_t tokens_total = 0;    // prompt + completion tokens it served
  double latency_s = 0;              // recent upstream latency (EWMA), for concurrency capacity
  double in_flight = 0;
  std::int64_t rpm_limit = 0, tpm_limit = 0;  // 0 = none
  std::int64_t rpm_used = 0, tpm_used = 0;    // this replica's sliding minute
  bool cooling = false;                       // after a 429 of the provider
  // What waiters of this deployment wait for, when the admission layer knows (kNone = infer).
  Constraint waiting_on = Constraint::kNone;
  int current_replicas = 0;  // replicas of its Kubernetes Deployment, 0 = unknown
};

struct QuotaShortfall {
  std::string deployment;
  std::string group;
  double missing_rpm = 0;  // requests per minute the forecast asks beyond the tier
  double missing_tpm = 0;
};

struct TargetPlan {
  std::string name;            // "gateway" or the deployment id
  std::string group;           // deployments: its model group
  std::string model;           // deployments: provider-side model id
  std::string namespace_name;  // Kubernetes target (empty for the gateway: the controller knows)
  std::string deployment;
  bool scalable = false;
  std::string unit;  // "requests_per_s" or "tokens_per_s"
  Recommendation rec;
  Constraint binding = Constraint::kNone;           // now
  Constraint binding_forecast = Constraint::kNone;  // at the forecast
  double demand = 0;                                // measured demand (cluster, unit/s)
  double forecast = 0;                              // forecast demand one horizon ahead (unit/s)
  double served = 0;                                // measured throughput (unit/s)
  double backlog = 0;                               // waiting (requests)
  double capacity_per_replica = 0;                  // unit/s
  bool capacity_learned = false;
  bool replicas_observed = false;  // current_replicas came from the controller or the signals
  // Gateway only.
  double cpu_seconds_per_request = 0;
  double cpu_utilization = 0;  // of cpu_cores_per_replica, this replica
  double connections = 0;
  double rss_bytes = 0;
  double event_loop_lag_s = 0;
};

// A model group: what its requests wait for. Provider quota binds a group only when it binds
// every deployment of it (otherwise the others take the traffic).
struct GroupPlan {
  std::string name;
  Constraint binding = Constraint::kNone;
  Constraint binding_forecast = Constraint::kNone;
  double demand = 0;   // requests/s arriving (cluster)
  double backlog = 0;  // requests waiting (cluster)
};

struct CapacityPlan {
  TargetPlan gateway;
  std::vector<GroupPlan> groups;
  std::vector<TargetPlan> deployments;  // every deployment seen; scalable ones recommend
  std::vector<QuotaShortfall> quota;    // deployments whose provider quota binds
  // Why requests wait now, for the gateway's answer: "none", a gateway constraint,
  // "upstream_capacity" or "provider_quota" (then `quota` names the deployments).
  Constraint reason = Constraint::kNone;
};

// JSON of the plan (the "scaling" member of GET /v1/metrics/queue).
std::string to_json(const CapacityPlan& p);

class CapacityPlanner {
 public:
  CapacityPlanner(ScalerConfig gateway_scaler, GatewayCapacityConfig gateway);
  // Scalable deployments by id; others are planned only for their binding constraint. Keeps the
  // scaler (and learned capacity) of an id whose spec did not change.
  void configure(const std::map<std::string, UpstreamScaleSpec, std::less<>>& specs);
  // Feeds one observation of this replica and returns the plan as of `now`.
  CapacityPlan observe(Nanos now, const GatewaySignals& gw, const std::vector<GroupSignals>& groups,
                       const std::vector<DeploymentSignals>& deployments);
  CapacityPlan last() const;
  // Replica counts of scale targets seen by the controller (by deployment id), used when the
  // signals carry none.
  void set_observed_replicas(const std::string& id, int replicas);

 private:
  struct Upstream {
    UpstreamScaleSpec spec;
    std::unique_ptr<PredictiveScaler> scaler;
    double demand_units_total = 0;  // integrated demand, fed to the scaler as a counter
    double served_units_total = 0;
  };
  struct Prev {
    Nanos at = 0;
    std::uint64_t requests = 0, tokens = 0, arrivals = 0;
  };
  ScalerConfig upstream_scaler_config(const UpstreamScaleSpec& s) const;

  const ScalerConfig base_;
  const GatewayCapacityConfig gw_cfg_;
  mutable std::mutex mu_;
  PredictiveScaler gateway_;
  std::map<std::string, Upstream, std::less<>> upstreams_;
  std::map<std::string, Prev, std::less<>> prev_dep_;
  std::map<std::string, Prev, std::less<>> prev_group_;
  std::map<std::string, int, std::less<>> observed_replicas_;
  std::map<std::string, double, std::less<>> tokens_per_request_;  // EWMA per deployment
  std::optional<GatewaySignals> prev_gw_;
  Nanos prev_gw_at_ = 0;
  double cpu_per_request_;
  double cpu_util_ = 0;
  double lag_s_ = 0;  // EWMA of the event-loop lag: one slow probe is not a trend
  Nanos last_observe_ = 0;
  CapacityPlan last_;
};

}  // namespace bw::telemetry
