#!/usr/bin/env bash
# Throughput cost of the cost guard, measured through the real gateway: wrk drives
# `bellwether serve` in front of a zero-latency `bellwether sim`, once with no budgets and no
# ledger (phase 5 returns at once) and once with a global budget, a tenant budget, a key budget
# and the SQLite ledger (every request: worst-case estimate, reservation against 3 budgets, a
# durable ledger insert before forwarding, settlement and a ledger update after). The caps are so
# high that nothing is refused. Prints requests/s for both and the ratio.
#
# Loopback only, bounded: 2 x (WARMUP + DURATION) seconds of load plus start-up.
# Usage: bench/load/ledger_overhead.sh [path/to/bellwether]
#   env: DURATION=10s WARMUP=2s CONNECTIONS=16 THREADS=1 GW_WORKERS=1 SIM_WORKERS=1 ROUNDS=1
#        LEDGER_DIR=/tmp (where the ledger file lives; its filesystem decides the fsync cost)
# Use a release build; on a shared machine repeat (ROUNDS=3) and read the spread.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${BELLWETHER_BIN:-$root/build/release/bellwether}}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-1}"
GW_WORKERS="${GW_WORKERS:-1}"
SIM_WORKERS="${SIM_WORKERS:-1}"
ROUNDS="${ROUNDS:-1}"
LEDGER_DIR="${LEDGER_DIR:-/tmp}"

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 2; }

# shellcheck source=bench/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

work="$(mktemp -d /tmp/bw-ledger-overhead.XXXXXX)"
ledger_dir="$(mktemp -d "$LEDGER_DIR/bw-ledger-overhead-db.XXXXXX")"
pids=()
gw_pid=""
cleanup() {
  [[ -n "$gw_pid" ]] && kill "$gw_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}" $gw_pid; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work" "$ledger_dir"
}
trap cleanup EXIT

sim_port="$(free_port)"
admin_key="bench-admin-key-0123456789"
key="sk-bench-ledger-01"

cat >"$work/sim.yaml" <<YAML
sim:
  workers: $SIM_WORKERS
  zero_latency: true
  defaults: {completion_tokens: 5}
YAML

# The same providers, model, price and key in both configs; (b) adds budgets and the ledger.
common() {
  cat <<YAML
listen: 127.0.0.1:$1
workers: $GW_WORKERS
admin: {key: $admin_key}
providers:
  sim: {base_url: "http://127.0.0.1:$sim_port/v1"}
model_groups:
  bench:
    deployments: [{provider: sim, model: bench}]
pricing:
  bench: {input: 0.10, output: 0.40}
plans:
  none: {limits: []}
YAML
}
port_a="$(free_port)"
{ common "$port_a"; cat <<YAML
keys:
  - {name: bench, key: $key, plan: none, tenant: acme}
YAML
} >"$work/a.yaml"
port_b="$(free_port)"
{ common "$port_b"; cat <<YAML
budgets:
  global: {cap_usd: 1000000, period: monthly}
tenants:
  acme: {budget: {cap_usd: 1000000, period: daily}}
ledger: {path: $ledger_dir/ledger.db}
keys:
  - {name: bench, key: $key, plan: none, tenant: acme, budget: {cap_usd: 1000000, period: total}}
YAML
} >"$work/b.yaml"

"$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
pids+=($!)
wait_port "$sim_port"

# Starts the gateway of config $1 on port $2 and checks one request.
start_gw() {
  "$bin" serve --config "$work/$1.yaml" >"$work/gw-$1.log" 2>&1 &
  gw_pid=$!
  wait_port "$2"
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"model":"bench","messages":[{"role":"user","content":"Hello there"}],"max_tokens":5}' \
    "http://127.0.0.1:$2/v1/chat/completions")
  [[ "$code" == 200 ]] || { echo "config $1: HTTP $code"; cat "$work/gw-$1.log"; exit 1; }
}
stop_gw() {
  kill "$gw_pid" 2>/dev/null || true
  wait "$gw_pid" 2>/dev/null || true
  gw_pid=""
}

# Runs wrk against port $1; prints requests/s; fails if any response was not 2xx.
run() {
  local url="http://127.0.0.1:$1/v1/chat/completions" out
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$here/chat_post.lua" "$url" -- "$key" >/dev/null
  out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$here/chat_post.lua" "$url" -- "$key")"
  if grep -q 'Non-2xx' <<<"$out"; then
    echo "$out" >&2
    echo "port $1: some responses were not 2xx" >&2
    exit 1
  fi
  echo "$out" >"$work/last_wrk.txt"
  awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}

echo "bellwether: $bin"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION (warm-up $WARMUP), gateway workers $GW_WORKERS, sim workers $SIM_WORKERS, $(nproc) cores, ledger on $(df -T "$ledger_dir" | awk 'NR==2 {print $2}')"
sum_a=0
sum_b=0
for r in $(seq 1 "$ROUNDS"); do
  start_gw a "$port_a"
  a="$(run "$port_a")"
  p50a="$(awk '$1=="50%" {print $2}' "$work/last_wrk.txt")"
  stop_gw
  start_gw b "$port_b"
  b="$(run "$port_b")"
  p50b="$(awk '$1=="50%" {print $2}' "$work/last_wrk.txt")"
  # The ledger must hold one settled row per request that was answered (none left open).
  spend="$(curl -s -H "Authorization: Bearer $admin_key" "http://127.0.0.1:$port_b/admin/spend?group=key")"
  stop_gw
  printf 'round %d: (a) no budgets/ledger %10.1f req/s (p50 %s)   (b) 3 budgets + ledger %10.1f req/s (p50 %s)   b/a %.3f\n' \
    "$r" "$a" "$p50a" "$b" "$p50b" "$(awk -v a="$a" -v b="$b" 'BEGIN {print b / a}')"
  echo "         ledger after (b): $spend"
  sum_a="$(awk -v s="$sum_a" -v x="$a" 'BEGIN {print s + x}')"
  sum_b="$(awk -v s="$sum_b" -v x="$b" 'BEGIN {print s + x}')"
done
awk -v a="$sum_a" -v b="$sum_b" -v n="$ROUNDS" 'BEGIN {
  printf "mean: (a) %.1f req/s  (b) %.1f req/s  ratio b/a %.3f  overhead %.1f%%\n", a / n, b / n, b / a, (1 - b / a) * 100
}'
