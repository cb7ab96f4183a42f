#!/usr/bin/env bash
# Spike load benchmark for the priority admission queue.
#
# Starts `bellwether sim` (provider-like latency, concurrency and rpm/tpm limits) and
# `bellwether serve` in front of it on free loopback ports, replays an open-loop ramp of
# 500 -> 15,000 requests/min over 90 s of scenario time (compressed COMPRESS times, default 10x:
# 9 s of wall time at the same per-minute rates) with a 10/60/30 P0/P1/P2 mix, and reports per
# priority the success rate, p50/p95/p99 latency and shed counts (bench/load/spike_load.py).
#
#   bench/load/spike.sh                       # prints the report
#   OUT=bench/results/spike-$(date +%F).txt bench/load/spike.sh
#
# Environment (all optional):
#   BW_BIN          release binary (default: build/release/bellwether)
#   COMPRESS        time compression, 1..100 (default 10)
#   START_RPM END_RPM DURATION_S   the ramp (default 500, 15000, 90)
#   PROVIDER_CONCURRENCY  simulator max_concurrency (default 32; more in flight -> 429)
#   PROVIDER_RPM PROVIDER_TPM     provider tier limits per minute (default 4000, 150000)
#   GATEWAY_CONCURRENCY  model-group concurrency YAML (default fixed 30, just under the provider)
#   OUT             also write the report to this file
#
# Time compression shortens the ramp only: provider latencies and queue waits stay real. The
# simulator counts rpm/tpm in a fixed 60 s window, so when the run is shorter than a minute the
# tier limits are scaled to the run (PROVIDER_RPM * run_seconds / 60), the budget the provider
# would grant over the run's duration; the report states the values used.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BW_BIN="${BW_BIN:-$ROOT/build/release/bellwether}"
COMPRESS="${COMPRESS:-10}"
START_RPM="${START_RPM:-500}"
END_RPM="${END_RPM:-15000}"
DURATION_S="${DURATION_S:-90}"
PROVIDER_CONCURRENCY="${PROVIDER_CONCURRENCY:-32}"
PROVIDER_RPM="${PROVIDER_RPM:-4000}"
PROVIDER_TPM="${PROVIDER_TPM:-150000}"
if [[ -z "${GATEWAY_CONCURRENCY:-}" ]]; then GATEWAY_CONCURRENCY='{mode: fixed, initial: 30}'; fi
KEY="sk-spike-bench-0001"

[[ -x "$BW_BIN" ]] || { echo "no release binary at $BW_BIN (cmake --preset release && cmake --build --preset release, or set BW_BIN)" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() {
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" && return 0
    sleep 0.1
  done
  return 1
}

WORK="$(mktemp -d /tmp/bw-spike.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

RUN_S=$(python3 -c "print($DURATION_S/$COMPRESS)")
read -r SIM_RPM SIM_TPM < <(python3 -c "
import math
run=$DURATION_S/$COMPRESS
f=min(1.0, run/60.0)
print(math.ceil($PROVIDER_RPM*f), math.ceil($PROVIDER_TPM*f))")

SIM_PORT=$(free_port)
GW_PORT=$(free_port)

cat >"$WORK/sim.yaml" <<EOF
sim:
  workers: 2
  models:
    provider-model:
      ttft: {median_ms: 200, p99_ms: 800}
      itl: {median_ms: 10, p99_ms: 40}
      completion_tokens: 20
      max_concurrency: $PROVIDER_CONCURRENCY
      rpm: $SIM_RPM
      tpm: $SIM_TPM
EOF

cat >"$WORK/gateway.yaml" <<EOF
listen: 127.0.0.1:$GW_PORT
access_log: {path: off}
admin:
  key: admin-key-spike-bench-0123456789
providers:
  sim:
    base_url: http://127.0.0.1:$SIM_PORT/v1
plans:
  bench: {limits: []}
admission:
  max_queue: 300
  max_wait: {p0: 5s, p1: 2s, p2: 1s}
  aging: 2s
  overload: {shed_p2_at: 150, shed_p1_at: 300, hard_limit: 400}
  metrics_access: any_key
model_groups:
  spike-model:
    deployments: [{provider: sim, model: provider-model}]
    concurrency: $GATEWAY_CONCURRENCY
keys:
  - {name: bench, key: $KEY, plan: bench, default_priority: 1, max_priority: 0}
EOF

"$BW_BIN" sim --config "$WORK/sim.yaml" --listen "127.0.0.1:$SIM_PORT" >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
"$BW_BIN" serve --config "$WORK/gateway.yaml" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_port "$SIM_PORT" || { cat "$WORK/sim.log" >&2; exit 1; }
wait_port "$GW_PORT" || { cat "$WORK/gateway.log" >&2; exit 1; }

{
  echo "# Bellwether spike benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "binary: $BW_BIN (built $(date -u -r "$BW_BIN" +%Y-%m-%dT%H:%M:%SZ); repo HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')); host: $(nproc) cores, loopback only"
  echo "provider (sim): ttft median 200 ms p99 800 ms, itl median 10 ms p99 40 ms, 20 completion tokens,"
  echo "  max_concurrency $PROVIDER_CONCURRENCY, tier $PROVIDER_RPM rpm / $PROVIDER_TPM tpm -> over this ${RUN_S} s run: rpm $SIM_RPM, tpm $SIM_TPM"
  echo "gateway: concurrency $GATEWAY_CONCURRENCY; max_queue 300; max_wait p0 5s p1 2s p2 1s; aging 2s;"
  echo "  overload shed_p2_at 150, shed_p1_at 300, hard_limit 400"
  echo
  python3 "$ROOT/bench/load/spike_load.py" --port "$GW_PORT" --sim-port "$SIM_PORT" --key "$KEY" \
    --start-rpm "$START_RPM" --end-rpm "$END_RPM" --duration "$DURATION_S" --compress "$COMPRESS"
} | if [[ -n "${OUT:-}" ]]; then tee "$OUT"; else cat; fi
