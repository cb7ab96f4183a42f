#!/usr/bin/env bash
# The response cache's figures, with the method of isolated.sh: the gateway under test runs alone
# on cpu0 with one worker (taskset -c 0, `workers: 1`); wrk, the upstream (`bellwether sim`,
# zero latency) and redis-server share cpu1. Two gateways, the same config but for the cache's
# backend: in process (`memory`) and Redis (`redis`, fleet mode without shared budgets).
#
# Every request of a run is the same ~1 KB chat request (isolated_chat.lua), so after the first
# one every answer is a hit; the script checks that with /metrics (hits and misses) after the runs.
#   latency:     wrk -c1 (one request at a time, no queueing): p50 / p99 of a hit
#   throughput:  wrk -c$CONNS: requests/s of hits on one core, and the gateway's CPU per hit
# for each backend, buffered and streamed. Then memory per cached KB: RSS of the in-process
# gateway before and after storing $ENTRIES distinct answers (misses), divided by the bytes of
# those answers.
#
# Loopback only, bounded: 2 backends x 2 modes x 2 runs x (WARMUP + DURATION) s, plus the
# memory fill (about 10-20 s) and start-up: about 1.5 min with the defaults.
# Needs 2 or more CPUs, wrk, taskset, curl, redis-server, python3; a Release build.
# Usage: bench/load/cache_bench.sh [path/to/bellwether]
#   env: DURATION=5 (s) WARMUP=1 (s) CONNS=64 THREADS=2 ENTRIES=10000 MAX_TOKENS=256
#        SERVER_CPU=0 CLIENT_CPU=1
# On a shared machine run it under the machine lock (flock -o /tmp/bw-machine.lock ...).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${BELLWETHER_BIN:-$root/build/release/bellwether}}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
ENTRIES="${ENTRIES:-10000}"
MAX_TOKENS="${MAX_TOKENS:-256}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
KEY=sk-cache-bench-0001

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
for tool in wrk taskset curl redis-server python3; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done
(($(nproc) >= 2)) || { echo "needs at least 2 cpus" >&2; exit 2; }

# shellcheck source=bench/load/lib.sh
source "$here/lib.sh"
start_workdir cache-bench

sim_port="$(free_port)"
redis_port="$(free_port)"
mem_port="$(free_port)"
red_port="$(free_port)"

cat >"$work/sim.yaml" <<YAML
sim:
  zero_latency: true
  workers: 1
YAML

gw_yaml() {  # $1 port, $2 backend
  cat <<YAML
listen: 127.0.0.1:$1
workers: 1
access_log: {path: "off"}
providers:
  sim: {base_url: "http://127.0.0.1:$sim_port/v1"}
model_groups:
  bench:
    deployments: [{provider: sim, model: bench}]
    cache: {mode: exact, ttl: 1h, max_entry_bytes: 1048576}
pricing:
  bench: {input: 0.10, output: 0.40}
plans:
  none: {limits: []}
keys:
  - {name: bench, key: $KEY, plan: none}
YAML
  if [[ "$2" == redis ]]; then
    cat <<YAML
redis: {url: "redis://127.0.0.1:$redis_port", timeout: 50ms, budgets: false}
cache: {backend: redis, redis_timeout: 50ms}
YAML
  else
    echo "cache: {backend: memory, max_bytes: 1073741824}"
  fi
}
gw_yaml "$mem_port" memory >"$work/memory.yaml"
gw_yaml "$red_port" redis >"$work/redis.yaml"

taskset -c "$CLIENT_CPU" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$work" >"$work/redis.out" 2>&1 &
track_pid $!
taskset -c "$CLIENT_CPU" "$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
track_pid $!
wait_port "$redis_port" || { cat "$work/redis.out"; exit 1; }
wait_port "$sim_port" || { cat "$work/sim.log"; exit 1; }
declare -A pid port=([memory]="$mem_port" [redis]="$red_port")
for b in memory redis; do
  taskset -c "$SERVER_CPU" "$bin" serve --config "$work/$b.yaml" >"$work/$b.log" 2>&1 &
  track_pid $!
  pid[$b]=$!
done
for b in memory redis; do
  wait_port "${port[$b]}" || { cat "$work/$b.log"; exit 1; }
done

url() { echo "http://127.0.0.1:${port[$1]}/v1/chat/completions"; }

# Sanity: the first request of each kind is a miss, the second a hit with the same answer.
body_of() {  # $1 stream (true|false)
  # One prompt per mode: a stream would otherwise hit the buffered answer at once.
  printf '{"model":"bench","messages":[{"role":"user","content":"sanity %s"}],"max_tokens":16,"stream":%s}' "$1" "$1"
}
for b in memory redis; do
  for s in false true; do
    a="$(curl -s -D "$work/h1" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
      -d "$(body_of $s)" "$(url $b)")"
    sleep 0.2  # the answer is stored by the request's finish, after the last byte
    h="$(curl -s -D "$work/h2" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
      -d "$(body_of $s)" "$(url $b)")"
    if ! grep -qi '^x-bellwether-cache: miss' "$work/h1" || ! grep -qi '^x-bellwether-cache: hit' "$work/h2" ||
      [[ "$a" != "$h" ]]; then
      echo "$b stream=$s: no hit after a miss" >&2
      cat "$work/h1" "$work/h2" "$work/$b.log" >&2
      exit 1
    fi
  done
done

to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One wrk run on CLIENT_CPU; sets rps, p50, p99 (ms), cpu (µs per request) and n.
run() {  # $1 backend, $2 stream (0|1), $3 connections
  local args=(-s "$here/isolated_chat.lua" "$(url "$1")" -- "$KEY" bench "$2") t0 t1 out
  local threads="$THREADS"
  (($3 < threads)) && threads="$3"
  # A streamed request that misses is served from the same request's buffered answer, which the
  # buffered run stored. Store the stream itself first (refresh: write only), so that the run
  # measures replays of a stored stream.
  if [[ "$2" == 1 ]]; then
    taskset -c "$CLIENT_CPU" wrk -t1 -c1 -d1s -H 'x-bellwether-cache: refresh' "${args[@]}" >/dev/null
  fi
  taskset -c "$CLIENT_CPU" wrk -t"$threads" -c"$3" -d"${WARMUP}s" "${args[@]}" >/dev/null
  t0="$(ticks "${pid[$1]}")"
  out="$(taskset -c "$CLIENT_CPU" wrk -t"$threads" -c"$3" -d"${DURATION}s" --latency "${args[@]}")"
  t1="$(ticks "${pid[$1]}")"
  wrk_figures "$out" "$((t1 - t0))" "$1 stream=$2 at $3 connections"
}

metric() {  # $1 backend, $2 metric name: its value on /metrics
  curl -s "http://127.0.0.1:${port[$1]}/metrics" | awk -v m="$2" '$1 == m {print $2}'
}

echo "# response cache benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "bellwether: $bin ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet HEAD -- src 2>/dev/null || echo '+local changes'))"
echo "machine: $(nproc) cpus ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "gateway on cpu$SERVER_CPU (1 worker); wrk, bellwether sim and redis-server $(redis-server --version | awk '{print $3}' | tr -d v=) on cpu$CLIENT_CPU"
echo "every request the same ~1 KB chat request (isolated_chat.lua): all hits after the first (streamed: after 1 s of refresh requests that store the stream)"
echo "latency: wrk -c1, ${DURATION}s after ${WARMUP}s warm-up; throughput: wrk -t$THREADS -c$CONNS, the same"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '%-8s %-9s %11s %11s %13s %11s %11s\n' backend mode "c1 p50 ms" "c1 p99 ms" \
  "c$CONNS req/s" "c$CONNS p99" "CPU us/hit"
for b in memory redis; do
  for s in 0 1; do
    run "$b" "$s" 1
    l50="$p50" l99="$p99"
    run "$b" "$s" "$CONNS"
    mode=buffered
    [[ "$s" == 1 ]] && mode=streamed
    printf '%-8s %-9s %11s %11s %13.0f %11s %11s\n' "$b" "$mode" "$l50" "$l99" "$rps" "$p99" "$cpu"
  done
done
echo
for b in memory redis; do
  echo "$b: bellwether_cache_hits_total $(metric "$b" bellwether_cache_hits_total)," \
    "bellwether_cache_misses_total $(metric "$b" bellwether_cache_misses_total)"
done

# Memory per cached KB: ENTRIES distinct prompts (all misses, each stored) against the in-process
# gateway, from one keep-alive connection on CLIENT_CPU.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
rss0="$(rss_kb "${pid[memory]}")"
stored_bytes="$(taskset -c "$CLIENT_CPU" python3 - "$mem_port" "$KEY" "$ENTRIES" "$MAX_TOKENS" <<'PY'
import http.client, json, sys
port, key, n, max_tokens = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", port)
total = 0
for i in range(n):
    body = json.dumps({"model": "bench", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "entry %d: tell me a story" % i}]})
    c.request("POST", "/v1/chat/completions", body,
              {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200 or r.getheader("x-bellwether-cache") != "miss":
        sys.exit("entry %d: status %d cache %s" % (i, r.status, r.getheader("x-bellwether-cache")))
    total += len(data)
print(total)
PY
)"
sleep 0.5
rss1="$(rss_kb "${pid[memory]}")"
echo
awk -v a="$rss0" -v b="$rss1" -v n="$ENTRIES" -v bytes="$stored_bytes" 'BEGIN {
  kb = bytes / 1024
  printf "memory: %d entries, %.0f KB of answers (%.0f bytes each); RSS %.1f -> %.1f MB: %.2f KB of RSS per cached KB (%.0f bytes per entry)\n",
    n, kb, bytes / n, a / 1024, b / 1024, (b - a) / kb, (b - a) * 1024 / n }'
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
