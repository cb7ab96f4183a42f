#!/usr/bin/env bash
# Cost of distributed rate limits: wrk drives one `bellwether serve` in front of a zero-latency
# `bellwether sim`, once with the 4 limits of a key kept in process (no redis:) and once with the
# same 4 limits in a local redis-server (redis: configured). The limits never reject. Prints
# requests/s, p50/p99 of each run, the p99 Redis adds, and Redis commands per request from
# INFO commandstats (expected: 1 EVALSHA for the check + 1 for the token limit's settle; Redis 7
# also counts the commands a script runs, reported separately).
#
# Loopback only, bounded: 2 x (WARMUP + DURATION) seconds of load plus start-up.
# Usage: bench/load/redis_limits.sh [path/to/bellwether]
#   env: DURATION=10s WARMUP=2s CONNECTIONS=16 THREADS=1 GW_WORKERS=1 SIM_WORKERS=1
# Use a release build; on a shared machine read the load average printed at the end.
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

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
for tool in wrk redis-server redis-cli curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done

# shellcheck source=bench/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_workdir redis-limits

sim_port="$(free_port)"
redis_port="$(free_port)"

cat >"$work/sim.yaml" <<YAML
sim:
  workers: $SIM_WORKERS
  zero_latency: true
  defaults: {completion_tokens: 5}
YAML

# $1: listen port, $2: extra top-level YAML (the redis: section or nothing).
gateway_yaml() {
  cat <<YAML
listen: 127.0.0.1:$1
workers: $GW_WORKERS
access_log: {path: "off"}
providers:
  sim: {base_url: "http://127.0.0.1:$sim_port/v1"}
model_groups:
  bench:
    deployments: [{provider: sim, model: bench}]
plans:
  none: {limits: []}
keys:
  - name: four-limits
    key: sk-bench-4limits-01
    plan: none
    limits:
      - {name: rps, algorithm: gcra, rate: 1000000000, period: second, burst: 1000000}
      - {name: rpm, algorithm: token_bucket, rate: 1000000000, period: minute}
      - {name: tpm, unit: tokens, rate: 1000000000000, period: minute}
      - {name: rpd, algorithm: sliding_window, rate: 1000000000000, period: day}
$2
YAML
}

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=($!)
"$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
pids+=($!)
wait_port "$redis_port"
wait_port "$sim_port"

url_of() { echo "http://127.0.0.1:$1/v1/chat/completions"; }

# Starts a gateway; prints its port and pid.
start_gw() {
  local port yaml
  port="$(free_port)"
  gateway_yaml "$port" "$1" >"$work/gw-$port.yaml"
  "$bin" serve --config "$work/gw-$port.yaml" >"$work/gw-$port.log" 2>&1 &
  track_pid $!  # start_gw runs in $(...): a plain pids+= would not reach the exit cleanup
  wait_port "$port"
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer sk-bench-4limits-01" \
    -H 'Content-Type: application/json' \
    -d '{"model":"bench","messages":[{"role":"user","content":"Hello there"}],"max_tokens":5}' \
    "$(url_of "$port")")
  [[ "$code" == 200 ]] || { echo "gateway on $port: HTTP $code" >&2; cat "$work/gw-$port.log" >&2; exit 1; }
  echo "$port"
}

# Total calls of every command in INFO commandstats.
redis_calls() {
  redis-cli -p "$redis_port" INFO commandstats |
    awk -F'[=,:]' '/^cmdstat_/ {n += $3} END {print n + 0}'
}
evalsha_calls() {
  redis-cli -p "$redis_port" INFO commandstats |
    awk -F'[=,:]' '/^cmdstat_evalsha:/ {print $3 + 0; found = 1} END {if (!found) print 0}'
}

# Runs wrk; prints "requests/s p50 p99 requests"; fails if any response was not 2xx.
run() {
  local url="$1" out
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$here/chat_post.lua" "$url" -- sk-bench-4limits-01 >/dev/null
  out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$here/chat_post.lua" "$url" -- sk-bench-4limits-01)"
  if grep -q 'Non-2xx' <<<"$out"; then
    echo "$out" >&2
    echo "some responses were not 2xx" >&2
    exit 1
  fi
  printf '%s %s %s %s\n' "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")" \
    "$(awk '/requests in/ {print $1}' <<<"$out")"
}

# wrk prints latencies as 812.00us / 1.23ms / 1.02s: to microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
    else print v }'
}

echo "bellwether: $bin"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION (warm-up $WARMUP), gateway workers $GW_WORKERS, sim workers $SIM_WORKERS, $(nproc) cores, $(redis-server --version | awk '{print $3}')"

local_port="$(start_gw "")"
read -r rps_a p50_a p99_a n_a <<<"$(run "$(url_of "$local_port")")"
printf '(a) in-process limits: %9.1f req/s  p50 %-8s p99 %-8s\n' "$rps_a" "$p50_a" "$p99_a"

redis_port_yaml="redis: {url: \"redis://127.0.0.1:$redis_port\", timeout: 20ms, replicas: 3}"
redis_gw="$(start_gw "$redis_port_yaml")"
# The measured run alone: warm-up requests are subtracted through wrk's own count below.
url_b="$(url_of "$redis_gw")"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$here/chat_post.lua" "$url_b" -- sk-bench-4limits-01 >/dev/null
c1="$(redis_calls)"
e1="$(evalsha_calls)"
out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$here/chat_post.lua" "$url_b" -- sk-bench-4limits-01)"
c2="$(redis_calls)"
e2="$(evalsha_calls)"
grep -q 'Non-2xx' <<<"$out" && { echo "$out" >&2; echo "some responses were not 2xx" >&2; exit 1; }
rps_b="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
p50_b="$(awk '$1=="50%" {print $2}' <<<"$out")"
p99_b="$(awk '$1=="99%" {print $2}' <<<"$out")"
n_b="$(awk '/requests in/ {print $1}' <<<"$out")"
printf '(b) Redis limits:      %9.1f req/s  p50 %-8s p99 %-8s\n' "$rps_b" "$p50_b" "$p99_b"
awk -v a="$rps_a" -v b="$rps_b" -v pa="$(to_us "$p99_a")" -v pb="$(to_us "$p99_b")" \
  -v qa="$(to_us "$p50_a")" -v qb="$(to_us "$p50_b")" 'BEGIN {
  printf "throughput b/a %.3f; added p50 %.0f us; added p99 %.0f us\n", b / a, qb - qa, pb - pa }'
awk -v c="$((c2 - c1))" -v e="$((e2 - e1))" -v n="$n_b" 'BEGIN {
  printf "Redis round trips per request: EVALSHA %.3f; commands executed per request %.3f (Redis 7 counts the calls inside scripts too) over %d requests\n", e / n, c / n, n }'
redis-cli -p "$redis_port" INFO commandstats | grep -E 'cmdstat_(evalsha|eval|script)' | tr -d '\r' |
  sed 's/^/  /'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (noise warning if well above $(nproc))"
