#pragma once
// Telemetry module interface (include this header to get all of it):
// - metrics.h          Registry, Counter/Gauge/Histogram families, Prometheus text exposition.
//                      Recording is lock-free and allocation-free; resolve children once.
// - gateway_metrics.h  GatewayMetrics: every bellwether_* family the gateway records.
// - scaler.h           PredictiveScaler (WMA, Holt, reactive baseline): pure, `now` passed in,
//                      internally synchronised; to_json() renders /v1/metrics/queue.
// - capacity_planner.h CapacityPlanner: what is short (the gateway, a self-hosted upstream, a
//                      provider quota) and one replica recommendation per scale target; pure.
// - autoscale.h        run_autoscale(): the `bellwether autoscale` controller (blocking, control
//                      plane; talks HTTP(S) to gateways/Prometheus and the Kubernetes API
//                      through http/fetch.h).
// - autoscale_cli.h    add_autoscale_flags(): the CLI11 flags of `bellwether autoscale`
//                      (header-only; include from main.cc, not via this header).
#include "telemetry/autoscale.h"
#include "telemetry/capacity_planner.h"
#include "telemetry/gateway_metrics.h"
#include "telemetry/metrics.h"
#include "telemetry/scaler.h"
