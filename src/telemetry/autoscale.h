#pragma once
// The `bellwether autoscale` controller: every interval it reads the replica recommendation —
// the maximum of GET {gateway}/v1/metrics/queue .recommended_replicas over all gateway URLs, or a
// Prometheus instant query — clamps it, reads the Deployment's scale subresource and, when the
// count differs, PATCHes {"spec":{"replicas":N}} (merge patch) with the service-account token.
// Every decision is logged as one JSON line. --dry-run decides and logs but never PATCHes.
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
  std::string prometheus_query = "max(bellwether_replicas_recommended)";
  // Kubernetes API. Empty api_server = https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
  std::string api_server;
  std::string token_file = std::string(kServiceAccountDir) + "/token";  // re-read every interval
  std::string ca_file = std::string(kServiceAccountDir) + "/ca.crt";
  std::string namespace_file = std::string(kServiceAccountDir) + "/namespace";
  std::string namespace_name;  // empty = read namespace_file
  std::string deployment = "bellwether";
  int min_replicas = 1;
  int max_replicas = 50;
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
