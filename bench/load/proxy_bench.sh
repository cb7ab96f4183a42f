#!/usr/bin/env bash
# Proxy overhead: wrk against (a) the zero-latency simulator directly, (b) Bellwether in front of
# it (access log off, no limits), (c) nginx as a plain keep-alive proxy_pass to the same
# simulator. Each target is driven at every connection count in CONNS, all in one run, with the
# same request (bench/load/proxy_chat.lua: a small non-streaming chat completion). Prints a table
# of requests/s, p50 and p99 latency, the Bellwether/nginx throughput ratio and the p99 that each
# proxy adds over the direct path.
#
# Loopback only, bounded: ROUNDS x |CONNS| x 3 x (WARMUP + DURATION) seconds of load plus start-up.
# Usage: bench/load/proxy_bench.sh [path/to/bellwether]
#   env: DURATION=10s WARMUP=2s CONNS="64 256" THREADS=2 GW_WORKERS=2 SIM_WORKERS=2
#        NGINX_WORKERS=2 ROUNDS=1 SAVE=0 (SAVE=1 also writes bench/results/proxy-<date>.txt)
#        OPEN_RATES="5000 10000" OPEN_DURATION=5 (open-loop runs at fixed rates; "" skips them)
# Use a Release build (its own build dir, e.g. cmake -B build-rel -DCMAKE_BUILD_TYPE=Release).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${BELLWETHER_BIN:-$root/build/release/bellwether}}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNS="${CONNS:-64 256}"
THREADS="${THREADS:-2}"
GW_WORKERS="${GW_WORKERS:-2}"
SIM_WORKERS="${SIM_WORKERS:-2}"
NGINX_WORKERS="${NGINX_WORKERS:-2}"
ROUNDS="${ROUNDS:-1}"
SAVE="${SAVE:-0}"
OPEN_RATES="${OPEN_RATES-5000 10000}"  # requests/s of the open-loop runs ("" to skip)
OPEN_DURATION="${OPEN_DURATION:-5}"
NGINX="${NGINX:-/usr/sbin/nginx}"
KEY=sk-proxy-bench-0001

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[[ -x "$NGINX" ]] || { echo "nginx not found at $NGINX (apt-get install nginx-light)" >&2; exit 2; }

if [[ "$SAVE" == 1 ]]; then
  mkdir -p "$root/bench/results"
  out_file="$root/bench/results/proxy-$(date -u +%Y-%m-%d).txt"
  exec > >(tee "$out_file") 2>&1
fi

# shellcheck source=bench/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_workdir proxy-bench

sim_port="$(free_port)"
gw_port="$(free_port)"
ngx_port="$(free_port)"

cat >"$work/sim.yaml" <<YAML
sim:
  workers: $SIM_WORKERS
  zero_latency: true
  defaults: {completion_tokens: 5}
YAML

cat >"$work/gw.yaml" <<YAML
listen: 127.0.0.1:$gw_port
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
  - {name: bench, key: $KEY, plan: none}
YAML

mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes $NGINX_WORKERS;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream sim {
    server 127.0.0.1:$sim_port;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:$ngx_port;
    location / {
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX

"$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
pids+=($!)
"$bin" serve --config "$work/gw.yaml" >"$work/gw.log" 2>&1 &
pids+=($!)
gw_pid=$!
"$NGINX" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" >"$work/nginx.out" 2>&1 &
pids+=($!)
ngx_pid=$!
wait_port "$sim_port"
wait_port "$gw_port"
wait_port "$ngx_port" || { cat "$work/nginx.out" "$work/nginx/error.log"; exit 1; }

path=/v1/chat/completions
declare -A url=(
  [direct]="http://127.0.0.1:$sim_port$path"
  [bellwether]="http://127.0.0.1:$gw_port$path"
  [nginx]="http://127.0.0.1:$ngx_port$path"
)
targets=(direct bellwether nginx)

# Sanity: every target answers 200 with the simulator's completion.
for t in "${targets[@]}"; do
  body="$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"model":"bench","messages":[{"role":"user","content":"Hello there"}],"max_tokens":5}' "${url[$t]}")"
  [[ "${body##*$'\n'}" == 200 && "$body" == *'"completion_tokens":5'* ]] ||
    { echo "$t: unexpected answer: $body" >&2; cat "$work/gw.log" "$work/nginx/error.log" >&2; exit 1; }
done

# wrk latency figure ("812.00us", "1.23ms", "2.01s") in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# CPU time (clock ticks, user + system) of the proxy process(es) of a target: the gateway
# process, or nginx's master and workers. The simulator and wrk are not counted.
proxy_ticks() {
  local t="$1" p sum=0
  case "$t" in
    bellwether) p="$gw_pid" ;;
    nginx) p="$ngx_pid $(pgrep -P "$ngx_pid" | tr '\n' ' ')" ;;
    *) echo 0; return ;;
  esac
  for x in $p; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$x/stat"))); done
  echo "$sum"
}
tick_hz="$(getconf CLK_TCK)"

# Runs wrk on one target; sets rps, p50, p99 (ms) and cpu (the proxy's CPU microseconds per
# request); fails if any answer was not 2xx or errored.
run() {
  local t="$1" c="$2" out t0 t1 n
  wrk -t"$THREADS" -c"$c" -d"$WARMUP" -s "$here/proxy_chat.lua" "${url[$t]}" -- "$KEY" >/dev/null
  t0="$(proxy_ticks "$t")"
  out="$(wrk -t"$THREADS" -c"$c" -d"$DURATION" --latency -s "$here/proxy_chat.lua" "${url[$t]}" -- "$KEY")"
  t1="$(proxy_ticks "$t")"
  n="$(awk '/requests in/ {print $1}' <<<"$out")"
  cpu="$(awk -v d="$((t1 - t0))" -v hz="$tick_hz" -v n="$n" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')"
  wrk_check "$out" "$t at $c connections"
  rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
  p50="$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")"
  p99="$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}

echo "# proxy overhead benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "bellwether: $bin ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet HEAD -- src 2>/dev/null || echo '+local changes'))"
echo "nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS, $DURATION per run after a $WARMUP warm-up, connections: $CONNS, rounds: $ROUNDS"
echo "workers: sim $SIM_WORKERS, bellwether $GW_WORKERS, nginx $NGINX_WORKERS (all on the same cores as wrk)"
echo

declare -A RPS P50 P99 CPU
for r in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    for t in "${targets[@]}"; do
      run "$t" "$c"
      RPS[$r,$c,$t]="$rps"
      CPU[$r,$c,$t]="$cpu"
      P50[$r,$c,$t]="$p50"
      P99[$r,$c,$t]="$p99"
    done
  done
done

printf '%-5s %-5s %-11s %12s %10s %10s %14s\n' round conns target "requests/s" "p50 ms" "p99 ms" \
  "proxy CPU us/req"
for r in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    for t in "${targets[@]}"; do
      printf '%-5s %-5s %-11s %12.0f %10.3f %10.3f %14s\n' "$r" "$c" "$t" "${RPS[$r,$c,$t]}" \
        "${P50[$r,$c,$t]}" "${P99[$r,$c,$t]}" "$([[ $t == direct ]] && echo - || echo "${CPU[$r,$c,$t]}")"
    done
  done
done
echo
printf '%-5s %-5s %22s %26s %22s\n' round conns "bellwether/nginx rps" "bellwether added p99 ms" "nginx added p99 ms"
for r in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    awk -v r="$r" -v c="$c" -v b="${RPS[$r,$c,bellwether]}" -v n="${RPS[$r,$c,nginx]}" \
      -v bp="${P99[$r,$c,bellwether]}" -v np="${P99[$r,$c,nginx]}" -v dp="${P99[$r,$c,direct]}" \
      'BEGIN { printf "%-5s %-5s %22.3f %26.3f %22.3f\n", r, c, b / n, bp - dp, np - dp }'
  done
done

# Open loop: a fixed request rate below saturation (bellwether bench, Poisson-free constant
# schedule), where the added latency is the proxy's own and not the queueing that any
# closed-loop run at saturation adds (with N connections, latency >= N / throughput).
if [[ -n "$OPEN_RATES" ]]; then
  echo
  echo "open loop (bellwether bench --profile constant, ${OPEN_DURATION}s per run), p50/p99 ms:"
  printf '%-9s %-11s %10s %10s %10s %16s\n' "rate/s" target "p50 ms" "p99 ms" "ok" "added p99 ms"
  for rate in $OPEN_RATES; do
    declare -A OP99=()
    for t in "${targets[@]}"; do
      base="${url[$t]%/v1/chat/completions}"
      "$bin" bench --url "$base" --api-key "$KEY" --profile constant --rate "$((rate * 60))" \
        --duration "$OPEN_DURATION" --models bench --max-tokens 5 --prompt-bytes 40 \
        --priority-mix 0/100/0 --json "$work/open.json" >/dev/null 2>&1 ||
        { echo "$t: bellwether bench failed" >&2; exit 1; }
      read -r op50 op99 ook < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["runs"][0]["summary"]
print("%.3f %.3f %.4f" % (s["p50_ms"], s["p99_ms"], s["success_rate"]))' "$work/open.json")
      OP99[$t]="$op99"
      added="-"
      [[ "$t" != direct ]] && added="$(awk -v a="$op99" -v d="${OP99[direct]}" 'BEGIN {printf "%.3f", a - d}')"
      printf '%-9s %-11s %10s %10s %10s %16s\n' "$rate" "$t" "$op50" "$op99" "$ook" "$added"
    done
  done
fi
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
