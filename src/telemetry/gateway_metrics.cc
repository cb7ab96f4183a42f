#include "telemetry/gateway_metrics.h"

namespace bw::telemetry {

namespace {
std::vector<double> ttft_buckets() {
  return {0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30};
}
}  // namespace

GatewayMetrics::GatewayMetrics(Registry& r, const GatewayMetricsOptions& o)
    : requests(r.counter("bellwether_requests_total",
                         "Requests answered, by endpoint, model, HTTP status class and priority.",
                         {"endpoint", "model", "status_class", "priority"}, 1.0,
                         o.max_children_per_family)),
      request_duration(r.histogram("bellwether_request_duration_seconds",
                                   "Time from request received to last byte sent, in seconds.",
                                   latency_buckets(), {"endpoint", "model"},
                                   o.max_children_per_family)),
      ttft(r.histogram("bellwether_ttft_seconds",
                       "Time to first token of streamed completions, in seconds.", ttft_buckets(),
                       {"model"}, o.max_children_per_family)),
      priority_duration(
          r.histogram("bellwether_request_priority_duration_seconds",
                      "Time from request received to last byte sent, by priority, in seconds.",
                      latency_buckets(), {"priority"}, o.max_children_per_family)),
      priority_ttft(r.histogram("bellwether_ttft_priority_seconds",
                                "Time to first token of streamed completions, by priority.",
                                ttft_buckets(), {"priority"}, o.max_children_per_family)),
      upstream_latency(r.histogram("bellwether_upstream_latency_seconds",
                                   "Latency of one upstream attempt, in seconds.",
                                   latency_buckets(), {"deployment"}, o.max_children_per_family)),
      upstream_requests(r.counter("bellwether_upstream_requests_total",
                                  "Upstream attempts by deployment and status class.",
                                  {"deployment", "status_class"}, 1.0, o.max_children_per_family)),
      tokens(r.counter("bellwether_tokens_total", "Tokens processed, by model and type.",
                       {"model", "type"}, 1.0, o.max_children_per_family)),
      cost_usd(r.counter("bellwether_cost_usd_total", "Settled spend in US dollars, by model.",
                         {"model"}, 1e-6, o.max_children_per_family)),
      rate_limited(r.counter("bellwether_rate_limited_total",
                             "Requests rejected with 429 by a rate limit, by limit name.",
                             {"limit"}, 1.0, o.max_children_per_family)),
      queue_depth(r.gauge("bellwether_queue_depth", "Requests waiting in the admission queue.",
                          {"priority"}, o.max_children_per_family)),
      queue_wait(r.histogram("bellwether_queue_wait_seconds",
                             "Time spent in the admission queue, in seconds.", queue_wait_buckets(),
                             {"priority"}, o.max_children_per_family)),
      in_flight(r.gauge("bellwether_in_flight", "Requests admitted and not yet finished.")),
      shed(r.counter("bellwether_shed_total", "Requests shed by admission, by priority and reason.",
                     {"priority", "reason"}, 1.0, o.max_children_per_family)),
      queue_timeouts(r.counter("bellwether_queue_timeouts_total",
                               "Requests that timed out while queued.", {"priority"}, 1.0,
                               o.max_children_per_family)),
      breaker_state(r.gauge("bellwether_breaker_state",
                            "Circuit breaker state: 0 closed, 1 half-open, 2 open.", {"deployment"},
                            o.max_children_per_family)),
      retries(r.counter("bellwether_retries_total", "Upstream retries, by model.", {"model"}, 1.0,
                        o.max_children_per_family)),
      downgrades(r.counter("bellwether_budget_downgrades_total",
                           "Requests moved to a cheaper model as a budget neared its cap.",
                           {"from", "to"}, 1.0, o.max_children_per_family)),
      budget_refusals(r.counter("bellwether_budget_refusals_total",
                                "Requests refused because a budget would be exceeded, by budget.",
                                {"budget"}, 1.0, o.max_children_per_family)),
      fallbacks(r.counter("bellwether_fallbacks_total", "Fallbacks from one model to another.",
                          {"from", "to"}, 1.0, o.max_children_per_family)),
      dlq_entries(r.counter("bellwether_dlq_entries_total",
                            "Failed batch (P2) requests stored in the dead-letter queue.")),
      dlq_dropped(r.counter(
          "bellwether_dlq_dropped_total",
          "Dead-letter entries dropped (oldest first) to keep the queue within its bounds.")),
      ledger_records(r.counter("bellwether_ledger_records_total",
                               "Ledger records (reservations and settlements) written, by result.",
                               {"result"})),
      ledger_commits(r.counter("bellwether_ledger_commits_total",
                               "Ledger transactions: each group commit writes every record "
                               "queued since the previous one.")),
      ledger_queue_full(r.counter("bellwether_ledger_queue_full_total",
                                  "Ledger records refused because the write queue was full (the "
                                  "request is refused with 503, never forwarded unrecorded).")),
      ledger_queue_depth(
          r.gauge("bellwether_ledger_queue_depth", "Ledger records queued and not yet committed.")),
      ledger_journaled(r.counter("bellwether_ledger_journaled_total",
                                 "Covered requests whose ledger row was made durable by the "
                                 "covered-row journal, so that their answer did not wait for "
                                 "the group commit.")),
      ledger_journal_full(r.counter("bellwether_ledger_journal_full_total",
                                    "Covered requests that found their covered-row journal full "
                                    "and waited for the group commit instead.")),
      budget_leases(r.counter("bellwether_budget_leases_total",
                              "Budget leases opened, closed, and stuck (kept held because the "
                              "ledger refused or failed a record), by event.",
                              {"event"})),
      budget_lease_covered(
          r.counter("bellwether_budget_lease_covered_total",
                    "Budgeted requests covered by a budget lease (forwarded without a "
                    "reservation row of their own).")),
      budget_leases_open(r.gauge("bellwether_budget_leases_open",
                                 "Budget leases open now (their ledger rows are open).")),
      cache_hits(r.counter("bellwether_cache_hits_total", "Response cache hits.")),
      cache_misses(r.counter("bellwether_cache_misses_total", "Response cache misses.")),
      cache_saved_usd(r.counter("bellwether_cache_saved_usd_total",
                                "What the answers served from the response cache cost when they "
                                "were first bought, in US dollars, by model.",
                                {"model"}, 1e-6, o.max_children_per_family)),
      cached_tokens(r.counter("bellwether_cached_tokens_total",
                              "Prompt tokens the provider read from its own prompt cache.",
                              {"model"}, 1.0, o.max_children_per_family)),
      budget_utilization(o.budget_utilization ? &r.gauge("bellwether_budget_utilization_ratio",
                                                         "Spend divided by cap, by budget (0..1).",
                                                         {"budget"}, o.max_children_per_family)
                                              : nullptr),
      replicas_recommended(
          r.gauge("bellwether_replicas_recommended",
                  "Replicas recommended for a scale target: the gateway, or a scalable deployment "
                  "(with its Kubernetes namespace and Deployment).",
                  {"target", "k8s_namespace", "k8s_deployment"}, o.max_children_per_family)),
      scaling_binding(r.gauge("bellwether_scaling_binding",
                              "1 when this constraint binds the target now or at the forecast.",
                              {"target", "constraint", "horizon"}, o.max_children_per_family)),
      scaling_forecast(r.gauge("bellwether_scaling_forecast",
                               "Forecast demand of a scale target one horizon ahead, per second.",
                               {"target", "unit"}, o.max_children_per_family)),
      scaling_demand(r.gauge("bellwether_scaling_demand",
                             "Measured demand of a scale target, per second.", {"target", "unit"},
                             o.max_children_per_family)),
      capacity_per_replica(r.gauge("bellwether_capacity_per_replica",
                                   "Capacity of one replica of a scalable deployment, per second "
                                   "(prior, then learned while it is saturated).",
                                   {"target", "unit"}, o.max_children_per_family)),
      deployment_backlog(r.gauge("bellwether_deployment_backlog",
                                 "Requests waiting for a deployment.", {"deployment"},
                                 o.max_children_per_family)),
      provider_quota_missing(
          r.gauge("bellwether_provider_quota_missing",
                  "Requests (kind=rpm) or tokens (kind=tpm) per minute that the forecast asks of a "
                  "deployment beyond its provider tier; 0 when the quota does not bind.",
                  {"deployment", "kind"}, o.max_children_per_family)),
      deployment_tokens(r.counter("bellwether_deployment_tokens_total",
                                  "Tokens (prompt + completion) served, by deployment and model.",
                                  {"deployment", "model"}, 1.0, o.max_children_per_family)),
      gateway_cpu_per_request(r.gauge("bellwether_gateway_cpu_seconds_per_request",
                                      "Measured CPU time of this gateway per request.")),
      gateway_cpu_utilization(
          r.gauge("bellwether_gateway_cpu_utilization",
                  "CPU used by this gateway, as a share of scaler.gateway.cpu_cores_per_replica.")),
      gateway_connections(
          r.gauge("bellwether_gateway_connections", "Open client connections of this gateway.")),
      queue_waiting(r.gauge("bellwether_queue_waiting",
                            "Requests waiting now, by the resource they wait for.", {"reason"},
                            o.max_children_per_family)),
      admission_waits(r.counter("bellwether_admission_waits_total",
                                "Requests that waited and were then admitted, by priority and "
                                "by the resource they waited for.",
                                {"priority", "reason"}, 1.0, o.max_children_per_family)),
      admission_refusals(r.counter("bellwether_admission_refusals_total",
                                   "Requests refused by admission, by priority and by the "
                                   "resource that was short.",
                                   {"priority", "reason"}, 1.0, o.max_children_per_family)),
      deployment_limit(r.gauge("bellwether_deployment_rate_limit",
                               "A deployment's provider rate limit per minute: configured, "
                               "learned from its headers, and the one in force.",
                               {"deployment", "kind", "source"}, o.max_children_per_family)),
      deployment_remaining(r.gauge("bellwether_deployment_rate_remaining",
                                   "A deployment's remaining requests/tokens in its window "
                                   "(-1 = unlimited).",
                                   {"deployment", "kind"}, o.max_children_per_family)),
      deployment_binding(r.gauge("bellwether_deployment_rate_binding",
                                 "1 while the deployment's request (deployment_rpm) or token "
                                 "(deployment_tpm) rate is what blocks it.",
                                 {"deployment", "reason"}, o.max_children_per_family)),
      http_rejections(r.counter("bellwether_http_rejections_total",
                                "Requests refused at the HTTP framing level, by reason.",
                                {"reason"}, 1.0, o.max_children_per_family)),
      usage_missing(r.counter("bellwether_usage_missing_total",
                              "Successful upstream answers without usage, charged an estimate.",
                              {"model"}, 1.0, o.max_children_per_family)) {
  r.set_build_info(o.version, o.commit);
  // Unlabelled families get their single child now, so they are exported as 0 from the start
  // (rate() and absent() alerts need the series to exist before the first event).
  in_flight.get();
  dlq_entries.get();
  dlq_dropped.get();
  ledger_records.with({"committed"});
  ledger_records.with({"failed"});
  ledger_commits.get();
  ledger_queue_full.get();
  ledger_queue_depth.get();
  ledger_journaled.get();
  ledger_journal_full.get();
  for (const char* event : {"opened", "closed", "stuck"}) budget_leases.with({event});
  budget_lease_covered.get();
  budget_leases_open.get();
  cache_hits.get();
  cache_misses.get();
  replicas_recommended.with({"gateway", "", ""});
  gateway_cpu_per_request.get();
  gateway_cpu_utilization.get();
  gateway_connections.get();
}

}  // namespace bw::telemetry
