#!/usr/bin/env bash
# What the console costs the data plane: wrk against Bellwether in front of the zero-latency
# simulator, in three states that alternate round by round (so drift on a shared machine hits
# them alike):
#   off       admin.console: false (no sampler thread, no sessions)
#   idle      the console on (the sampler reads the gateway's state once a second), nobody watching
#   watching  the console on, and a logged-in client polling what the Live page reads
#             (/ui/api/live every 1.5 s, like the page) on the admin listener all along
# Prints requests/s, p50/p99 and the gateway's CPU time per request for each state and round.
#
# Loopback only, bounded: ROUNDS x 3 x (WARMUP + DURATION) seconds of load plus start-up.
# Usage: bench/load/console_overhead.sh [path/to/bellwether]
#   env: DURATION=10s WARMUP=2s CONNS=64 THREADS=2 GW_WORKERS=2 SIM_WORKERS=2 ROUNDS=3
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${BELLWETHER_BIN:-$root/build/release/bellwether}}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
GW_WORKERS="${GW_WORKERS:-2}"
SIM_WORKERS="${SIM_WORKERS:-2}"
ROUNDS="${ROUNDS:-3}"
KEY=sk-console-bench-0001
ADMIN=admin-console-bench-0123456789

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }

# shellcheck source=bench/load/lib.sh
source "$here/lib.sh"
start_workdir console-bench

sim_port="$(free_port)"
cat >"$work/sim.yaml" <<YAML
sim:
  workers: $SIM_WORKERS
  zero_latency: true
  defaults: {completion_tokens: 5}
YAML
"$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
track_pid $!
wait_port "$sim_port"

# Starts a gateway with the console on or off; sets gw_port, admin_port, gw_pid.
start_gw() {
  local console="$1" name="$2"
  gw_port="$(free_port)"
  admin_port="$(free_port)"
  cat >"$work/$name.yaml" <<YAML
listen: 127.0.0.1:$gw_port
workers: $GW_WORKERS
access_log: {path: "off"}
admin: {key: $ADMIN, listen: 127.0.0.1:$admin_port, console: $console}
providers:
  sim: {base_url: "http://127.0.0.1:$sim_port/v1"}
model_groups:
  bench:
    deployments: [{provider: sim, model: bench}]
plans:
  none: {limits: []}
keys:
  - {name: bench, key: $KEY, plan: none}
YAML
  "$bin" serve --config "$work/$name.yaml" >"$work/$name.log" 2>&1 &
  gw_pid=$!
  track_pid "$gw_pid"
  wait_port "$gw_port"
  wait_port "$admin_port"
}

start_gw false off
off_port=$gw_port off_pid=$gw_pid
start_gw true on
on_port=$gw_port on_pid=$gw_pid on_admin=$admin_port

# A console session on the "on" gateway, for the watching state.
cookie="$(curl -s -o /dev/null -D - --data-urlencode "key=$ADMIN" "http://127.0.0.1:$on_admin/ui/login" |
  awk -F'[ ;]' 'tolower($1)=="set-cookie:" {print $2}')"
[[ "$cookie" == bw_console=* ]] || { echo "console login failed" >&2; exit 1; }

to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick_hz="$(getconf CLK_TCK)"

# The Live page's polling, as the browser does it (the same URL and cadence).
poll_live() {
  local since=0
  while :; do
    curl -s -H "Cookie: $cookie" "http://127.0.0.1:$on_admin/ui/api/live?since=$since" >/dev/null
    since="$(($(date +%s%3N) - 1500))"
    sleep 1.5
  done
}

run() {
  local port="$1" pid="$2" out t0 t1 n
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$here/proxy_chat.lua" "http://127.0.0.1:$port/v1/chat/completions" -- "$KEY" >/dev/null
  t0="$(ticks "$pid")"
  out="$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$here/proxy_chat.lua" "http://127.0.0.1:$port/v1/chat/completions" -- "$KEY")"
  t1="$(ticks "$pid")"
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then echo "$out" >&2; exit 1; fi
  n="$(awk '/requests in/ {print $1}' <<<"$out")"
  printf "%10s %10s %9s %9s %9s\n" "$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")" \
    "$n" "$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")" \
    "$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")" \
    "$(awk -v d="$((t1 - t0))" -v hz="$tick_hz" -v n="$n" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')"
}

echo "bellwether: $bin ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "machine: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS -c$CONNS, $DURATION per run after $WARMUP warm-up; gateway workers $GW_WORKERS"
printf "%-6s %-9s %10s %10s %9s %9s %9s\n" round state "req/s" requests "p50 ms" "p99 ms" "cpu us/req"
for r in $(seq 1 "$ROUNDS"); do
  printf "%-6s %-9s " "$r" off; run "$off_port" "$off_pid"
  printf "%-6s %-9s " "$r" idle; run "$on_port" "$on_pid"
  poll_live &
  poller=$!
  track_pid "$poller"
  printf "%-6s %-9s " "$r" watching; run "$on_port" "$on_pid"
  kill "$poller" 2>/dev/null || true
  wait "$poller" 2>/dev/null || true
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
