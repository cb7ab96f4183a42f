#pragma once
// Command-line flags of `bellwether autoscale`, so that main.cc and docs/autoscaling.md agree.
// Header-only (CLI11 is header-only); include it only from main.cc and tests.
#include <CLI/CLI.hpp>
#include <memory>

#include "telemetry/autoscale.h"

namespace bw::telemetry {

// Adds the flags to `cmd`, writing into `o`. Seconds are kept in `*seconds_storage` and converted
// by finish_autoscale_flags() after parsing.
struct AutoscaleFlagSeconds {
  double interval_s = 15;
  double timeout_s = 5;
};

inline void add_autoscale_flags(CLI::App& cmd, AutoscaleOptions& o, AutoscaleFlagSeconds& s) {
  cmd.add_option("--gateway", o.gateway_urls, "gateway base URL (repeatable)");
  cmd.add_option("--prometheus-url", o.prometheus_url, "Prometheus base URL");
  cmd.add_option("--query", o.prometheus_query, "Prometheus instant query")->capture_default_str();
  cmd.add_option(
      "--api-server", o.api_server,
      "Kubernetes API URL (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)");
  cmd.add_option("--token-file", o.token_file, "bearer token file")->capture_default_str();
  cmd.add_option("--ca-file", o.ca_file, "CA bundle of the API server")->capture_default_str();
  cmd.add_option("--namespace-file", o.namespace_file, "namespace file")->capture_default_str();
  cmd.add_option("--namespace", o.namespace_name, "namespace (default: from --namespace-file)");
  cmd.add_option("--deployment", o.deployment,
                 "the gateway's Deployment (empty: scale only the upstream targets)")
      ->capture_default_str();
  cmd.add_option("--gateway-key-file", o.gateway_key_file,
                 "file with an API key for the gateways' /v1/metrics/queue");
  cmd.add_flag("!--no-upstreams", o.scale_upstreams,
               "scale only the gateway, not the self-hosted deployments marked scalable");
  cmd.add_option("--max-upstream-replicas", o.max_upstream_replicas,
                 "cap for any upstream Deployment")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--min-replicas", o.min_replicas)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--max-replicas", o.max_replicas)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--interval", s.interval_s, "seconds between decisions")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--iterations", o.iterations, "stop after N decisions (0 = forever)")
      ->capture_default_str();
  cmd.add_option("--timeout", s.timeout_s, "seconds per HTTP call")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_flag("--dry-run", o.dry_run, "log decisions, never PATCH");
}

inline void finish_autoscale_flags(AutoscaleOptions& o, const AutoscaleFlagSeconds& s) {
  o.interval = seconds(s.interval_s);
  o.timeout = seconds(s.timeout_s);
}

}  // namespace bw::telemetry
