#!/usr/bin/env bash
# Budget lease soak (docs/cost-guard.md, "Budget leases"): `bellwether serve` with leases on, in
# front of `bellwether sim`, under concurrent load from several keys whose budget sets are far
# from and near their caps, killed with SIGKILL mid-load round after round (every 4th round a
# graceful SIGTERM instead, alternately under load and after it) and restarted on the same SQLite
# ledger. After every round it checks
# that no cap is exceeded (settled, and settled + open reservations), that every complete 2xx
# answer has its ledger row (by X-Request-Id), that a graceful stop leaves no lease row open, and
# that /admin/budgets and /admin/spend agree with the ledger (bench/load/lease_soak.py says
# exactly what is checked). Not a test: a bounded run for before and after a change to leases.
#
# The keys (all budgets period "total"; every request also counts in the global budget):
#   far        cap $100000, 6 threads (2 streaming), no pause: leases open all the time
#   near-a     cap $NEAR_A (default 4), 3 threads paced ~15 ms: its cap is reached early
#   near-b     cap $NEAR_B (default 30), 3 threads paced ~15 ms, 1 streaming
#   team-1/2   tenant "team" cap $TEAM (default 20) shared by two keys (two budget sets taking
#              leases on one budget), 2 threads each paced ~15 ms
#   tiny       cap $0.05: near the cap from the start, no lease ever fits
#
# Loopback only. Stops by itself after DURATION seconds (default 240; rounds of 1.5-4 s of load).
# Usage: bench/load/lease_soak.sh [path/to/bellwether]
#   env: DURATION=240 SLICE=0.2 (budgets.lease.slice_usd) IDLE_MS=20 GRACEFUL_EVERY=4
#        NEAR_A=4 NEAR_B=30 TEAM=20 SEED=20261205 WORKERS=2 KEEP=1 (keep the work dir)
# Exit status 0 when every check held. Run it niced on a shared machine:
#   nice -n 19 flock -o /tmp/bw-machine.lock bench/load/lease_soak.sh build/release/bellwether
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${BELLWETHER_BIN:-$root/build/release/bellwether}}"
DURATION="${DURATION:-240}"
DURATION="${DURATION%s}"
SLICE="${SLICE:-0.2}"
IDLE_MS="${IDLE_MS:-20}"
GRACEFUL_EVERY="${GRACEFUL_EVERY:-4}"
NEAR_A="${NEAR_A:-4}"
NEAR_B="${NEAR_B:-30}"
TEAM="${TEAM:-20}"
SEED="${SEED:-20261205}"
WORKERS="${WORKERS:-2}"
(( DURATION <= 600 )) || { echo "DURATION is at most 600 s" >&2; exit 2; }

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is not installed" >&2; exit 2; }

# shellcheck source=bench/load/lib.sh
source "$here/lib.sh"
start_workdir lease-soak
if [[ -n "${KEEP:-}" ]]; then
  trap 'all=("${pids[@]}" $(cat "$work/.pids" 2>/dev/null || true))
        for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
        echo "work dir kept: $work"' EXIT
fi

sim_port="$(free_port)"
gw_port="$(free_port)"
cat >"$work/sim.yaml" <<YAML
sim:
  workers: 1
  defaults: {ttft: {median_ms: 3}, itl: {median_ms: 1}, completion_tokens: 10}
  models:
    quick: {ttft: {median_ms: 3}, itl: {median_ms: 1}, completion_tokens: 10}
    slowish: {ttft: {median_ms: 15}, itl: {median_ms: 2}, completion_tokens: 10}
YAML

cat >"$work/gw.yaml" <<YAML
listen: 127.0.0.1:$gw_port
workers: $WORKERS
access_log: {path: "off"}
admin: {key: admin-key-lease-soak-0123456789}
providers:
  sim: {base_url: "http://127.0.0.1:$sim_port/v1"}
plans:
  bulk:
    limits: [{name: rps, rate: 1000000, period: second, burst: 1000000}]
model_groups:
  quick: {deployments: [{provider: sim, model: quick}]}
  slowish: {deployments: [{provider: sim, model: slowish}]}
pricing:
  quick: {input: 100, output: 1000}
  slowish: {input: 100, output: 1000}
budgets:
  global: {cap_usd: 1000000, period: total}
  lease: {enabled: true, slice_usd: $SLICE, idle_ms: $IDLE_MS}
tenants:
  team: {budget: {cap_usd: $TEAM, period: total}}
ledger: {path: "$work/ledger.db"}
keys:
  - {name: far, key: sk-soak-far-00000001, plan: bulk, budget: {cap_usd: 100000, period: total}}
  - {name: near-a, key: sk-soak-near-a-0001, plan: bulk, budget: {cap_usd: $NEAR_A, period: total}}
  - {name: near-b, key: sk-soak-near-b-0001, plan: bulk, budget: {cap_usd: $NEAR_B, period: total}}
  - {name: team-1, key: sk-soak-team-1-0001, plan: bulk, tenant: team, budget: {cap_usd: 100000, period: total}}
  - {name: team-2, key: sk-soak-team-2-0001, plan: bulk, tenant: team, budget: {cap_usd: 100000, period: total}}
  - {name: tiny, key: sk-soak-tiny-00001, plan: bulk, budget: {cap_usd: 0.05, period: total}}
YAML

cat >"$work/plan.json" <<JSON
{
  "keys": [
    {"name": "far", "key": "sk-soak-far-00000001", "model": "quick", "threads": 6, "stream_threads": 2},
    {"name": "near-a", "key": "sk-soak-near-a-0001", "model": "quick", "threads": 3, "pace_ms": 15},
    {"name": "near-b", "key": "sk-soak-near-b-0001", "model": "slowish", "threads": 3, "stream_threads": 1, "pace_ms": 15},
    {"name": "team-1", "key": "sk-soak-team-1-0001", "model": "quick", "threads": 2, "pace_ms": 15},
    {"name": "team-2", "key": "sk-soak-team-2-0001", "model": "slowish", "threads": 2, "stream_threads": 1, "pace_ms": 15},
    {"name": "tiny", "key": "sk-soak-tiny-00001", "model": "quick", "threads": 1, "pace_ms": 30}
  ],
  "caps": {
    "global/total": 1000000,
    "key:far/total": 100000,
    "key:near-a/total": $NEAR_A,
    "key:near-b/total": $NEAR_B,
    "key:team-1/total": 100000,
    "key:team-2/total": 100000,
    "tenant:team/total": $TEAM,
    "key:tiny/total": 0.05
  }
}
JSON

"$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
track_pid $!
wait_port "$sim_port" || { cat "$work/sim.log"; exit 1; }

echo "lease soak: $bin, ${DURATION}s, slice \$$SLICE, idle ${IDLE_MS}ms, $WORKERS workers," \
  "caps near-a \$$NEAR_A near-b \$$NEAR_B team \$$TEAM tiny \$0.05"
python3 "$here/lease_soak.py" --bin "$bin" --config "$work/gw.yaml" --ledger "$work/ledger.db" \
  --port "$gw_port" --plan "$work/plan.json" --duration "$DURATION" \
  --graceful-every "$GRACEFUL_EVERY" --idle-ms "$IDLE_MS" --seed "$SEED" --log "$work/gw.log" ||
  { rc=$?; echo "gateway log: $work/gw.log (last lines below)"; tail -20 "$work/gw.log"; exit "$rc"; }
