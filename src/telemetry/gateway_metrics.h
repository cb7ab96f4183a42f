#pragma once
// GatewayMetrics: every metric family the gateway records, registered once with their exact
// exported names. Callers resolve the labelled children they need (e.g. per endpoint and model)
// once and keep the references; see metrics.h for the threading and cardinality contract.
#include <cstdint>
#include <string>
#include <string_view>

#include "telemetry/metrics.h"

namespace bw::telemetry {

struct GatewayMetricsOptions {
  std::string version = "0.1.0";   // bellwether_build_info{version}
  std::string commit = "unknown";  // bellwether_build_info{commit}
  // Hard cap on label combinations per family; extra combinations go to "__overflow__".
  std::size_t max_children_per_family = kDefaultMaxChildren;
  // bellwether_budget_utilization_ratio is opt-in: a budget label per tenant can be large.
  bool budget_utilization = false;
};

// Label values used by the gateway; kept here so every recorder spells them the same way.
// "2xx", "4xx", "5xx", ...; "other" if invalid. Inline: a recorder that needs the label only to
// resolve a series it has not cached yet does not make it per request.
inline std::string_view status_class(int http_status) {
  static constexpr std::string_view kClasses[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
  const int c = http_status / 100;
  return c >= 1 && c <= 5 ? kClasses[c - 1] : std::string_view("other");
}

struct GatewayMetrics {
  explicit GatewayMetrics(Registry& registry, const GatewayMetricsOptions& options = {});

  CounterFamily& requests;              // {endpoint,model,status_class,priority}
  HistogramFamily& request_duration;    // {endpoint,model}, seconds
  HistogramFamily& ttft;                // {model}, seconds to first streamed token
  HistogramFamily& priority_duration;   // {priority}, seconds (the same as request_duration)
  HistogramFamily& priority_ttft;       // {priority}, seconds (the same as ttft)
  HistogramFamily& upstream_latency;    // {deployment}, seconds
  CounterFamily& upstream_requests;     // {deployment,status_class}
  CounterFamily& tokens;                // {model,type}; type = prompt|completion
  CounterFamily& cost_usd;              // {model}; add() takes micro-dollars
  CounterFamily& rate_limited;          // {limit}
  GaugeFamily& queue_depth;             // {priority}
  HistogramFamily& queue_wait;          // {priority}, seconds
  GaugeFamily& in_flight;               // no labels
  CounterFamily& shed;                  // {priority,reason}
  CounterFamily& queue_timeouts;        // {priority}
  GaugeFamily& breaker_state;           // {deployment}; 0 closed, 1 half-open, 2 open
  CounterFamily& retries;               // {model}
  CounterFamily& downgrades;            // {from,to}: requests moved to a cheaper model near a cap
  CounterFamily& budget_refusals;       // {budget}: requests refused 429 insufficient_quota
  CounterFamily& fallbacks;             // {from,to}
  CounterFamily& dlq_entries;           // no labels
  CounterFamily& dlq_dropped;           // no labels
  CounterFamily& ledger_records;        // {result}: committed, failed
  CounterFamily& ledger_commits;        // no labels: transactions (group commits)
  CounterFamily& ledger_queue_full;     // no labels: records refused by a full queue
  GaugeFamily& ledger_queue_depth;      // no labels
  CounterFamily& ledger_journaled;      // no labels: covered rows durable through a journal
  CounterFamily& ledger_journal_full;   // no labels: covered rows that waited (journal full)
  CounterFamily& budget_leases;         // {event}: opened, closed, stuck
  CounterFamily& budget_lease_covered;  // no labels: requests a budget lease covered
  GaugeFamily& budget_leases_open;      // no labels
  CounterFamily& cache_hits;            // no labels
  CounterFamily& cache_misses;          // no labels
  CounterFamily& cache_saved_usd;       // {model}; add() takes micro-dollars
  CounterFamily& cached_tokens;         // {model}; prompt tokens the provider served from its cache
  GaugeFamily* budget_utilization;      // {budget}; nullptr unless opted in
  // Scaling (capacity_planner.h). target = "gateway" or a deployment id.
  GaugeFamily& replicas_recommended;     // {target,k8s_namespace,k8s_deployment}
  GaugeFamily& scaling_binding;          // {target,constraint,horizon}; 1 = binds
  GaugeFamily& scaling_forecast;         // {target,unit}; demand one horizon ahead
  GaugeFamily& scaling_demand;           // {target,unit}; measured demand
  GaugeFamily& capacity_per_replica;     // {target,unit}; scalable deployments
  GaugeFamily& deployment_backlog;       // {deployment}; requests waiting for it
  GaugeFamily& provider_quota_missing;   // {deployment,kind}; kind = rpm|tpm, per minute
  CounterFamily& deployment_tokens;      // {deployment,model}
  GaugeFamily& gateway_cpu_per_request;  // no labels; seconds
  GaugeFamily& gateway_cpu_utilization;  // no labels; of the configured cores
  GaugeFamily& gateway_connections;      // no labels
  // The admission queue's rate capacity (see docs/priority-queue.md):
  GaugeFamily& queue_waiting;         // {reason}: waiting now, by what they wait for
  CounterFamily& admission_waits;     // {priority,reason}: waited, then admitted
  CounterFamily& admission_refusals;  // {priority,reason}: refused (after or instead of a wait)
  GaugeFamily& deployment_limit;      // {deployment,kind,source}; kind requests|tokens,
                                      // source configured|learned|in_force; per minute
  GaugeFamily& deployment_remaining;  // {deployment,kind}: remaining in the provider's window
  GaugeFamily& deployment_binding;    // {deployment,reason}: 1 while that rate binds
  CounterFamily& http_rejections;     // {reason}; refused at the HTTP framing level
  CounterFamily& usage_missing;       // {model}; successes without usage, charged an estimate

  static constexpr double kBreakerClosed = 0;
  static constexpr double kBreakerHalfOpen = 1;
  static constexpr double kBreakerOpen = 2;
};

}  // namespace bw::telemetry
