#pragma once
// The `bellwether autoscale` controller: every interval it reads the replica recommendations of
// every scale target — the gateway itself and each self-hosted deployment marked scalable —
// from GET {gateway}/v1/metrics/queue (the maximum over all gateway URLs) or from a Prometheus
// instant query, clamps them, reads each Deployment's scale subresource and, when the count
// differs, PATCHes {"spec":{"replicas":N}} (merge patch) with the service-account token.
// It tells the gateways the replica counts it read (header X-Bellwether-Replicas), from which
// they learn each upstream's capacity per replica. Every decision is logged as one JSON line
// per target. --dry-run decides and logs but never PATCHes.
// Thread safety: run_autoscale blocks the calling thread; options are read-only.
#include <iosfwd>
#include <string>
#include <vector>

#include "common/clock.h"

namespace bw::telemetry {

inline constexpr char kServiceAccountDir[] = "/var/run/secrets/kubernetes.io/serviceaccount";

struct AutoscaleOptions {
  // Sources: gateway base URLs (http://host:port; "/v1/metrics/queue" is appended unless the URL
  // already has a path) and/or a Prometheus base URL. With both, gateways are asked first and
  // Prometheus is the fallback when no gateway answers.
  std::vector<std::string> gateway_urls;
  std::string prometheus_url;
  // One series per target (labels target, k8s_namespace, k8s_deployment); a series without
  // `target` is the gateway's.
  std::string prometheus_query =
      "max by (target, k8s_namespace, k8s_deployment) (bellwether_replicas_recommended)";
  // Bearer key for the gateways' /v1/metrics/queue (a client or the admin key); empty = none.
  std::string gateway_key_file;
  // Kubernetes API. Empty api_server = https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
  std::string api_server;
  std::string token_file = std::string(kServiceAccountDir) + "/token";  // re-read every interval
  std::string ca_file = std::string(kServiceAccountDir) + "/ca.crt";
  std::string namespace_file = std::string(kServiceAccountDir) + "/namespace";
  std::string namespace_name;             // empty = read namespace_file
  std::string deployment = "bellwether";  // the gateway's Deployment; empty = leave it alone
  int min_replicas = 1;                   // bounds of the gateway's Deployment
  int max_replicas = 50;
  // Also scale the self-hosted deployments the gateways recommend for (their `scale.target`),
  // each from its own recommendation, within their configured bounds and this cap.
  bool scale_upstreams = true;
  int max_upstream_replicas = 1000;
  Nanos interval = seconds(15);
  int iterations = 0;  // 0 = run forever; > 0 for tests and one-shot runs
  bool dry_run = false;
  Nanos timeout = seconds(5);   // each HTTP call
  std::ostream* log = nullptr;  // decision lines; nullptr = stdout
};

// Returns 0 when the last iteration succeeded, 1 when it failed (source or API error), 2 on a
// setup error (no source, no namespace, bad URL).
int run_autoscale(const AutoscaleOptions& options);

}  // namespace bw::telemetry
