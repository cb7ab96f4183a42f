#!/usr/bin/env bash
# Throughput cost of rate limiting, measured through the real gateway: wrk drives
# `bellwether serve` in front of a zero-latency `bellwether sim`, once with a key that has no limits
# at all and once with a key that has 4 limits (gcra, token_bucket, tokens, sliding_window) whose
# rates are so high that they never reject. Prints requests/s for both and the ratio.
#
# Loopback only, bounded: 2 x (WARMUP + DURATION) seconds of load plus start-up.
# Usage: bench/load/limits_overhead.sh [path/to/bellwether]
#   env: DURATION=10s WARMUP=2s CONNECTIONS=16 THREADS=1 GW_WORKERS=1 SIM_WORKERS=1 ROUNDS=1
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

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }

# shellcheck source=bench/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_workdir limits-overhead

sim_port="$(free_port)"
gw_port="$(free_port)"

cat >"$work/sim.yaml" <<YAML
sim:
  workers: $SIM_WORKERS
  zero_latency: true
  defaults: {completion_tokens: 5}
YAML

# Both keys share one gateway process, so the two runs differ only in the limits checked.
cat >"$work/gw.yaml" <<YAML
listen: 127.0.0.1:$gw_port
workers: $GW_WORKERS
providers:
  sim: {base_url: "http://127.0.0.1:$sim_port/v1"}
model_groups:
  bench:
    deployments: [{provider: sim, model: bench}]
plans:
  none: {limits: []}
keys:
  - {name: no-limits, key: sk-bench-nolimits-01, plan: none}
  - name: four-limits
    key: sk-bench-4limits-01
    plan: none
    limits:
      - {name: rps, algorithm: gcra, rate: 1000000000, period: second, burst: 1000000}
      - {name: rpm, algorithm: token_bucket, rate: 1000000000, period: minute}
      - {name: tpm, unit: tokens, rate: 1000000000000, period: minute}
      - {name: rpd, algorithm: sliding_window, rate: 1000000000000, period: day}
YAML

"$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
pids+=($!)
"$bin" serve --config "$work/gw.yaml" >"$work/gw.log" 2>&1 &
pids+=($!)
wait_port "$sim_port"
wait_port "$gw_port"

url="http://127.0.0.1:$gw_port/v1/chat/completions"
# Sanity: both keys answer 200, and the limited key sees its limits.
for key in sk-bench-nolimits-01 sk-bench-4limits-01; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"model":"bench","messages":[{"role":"user","content":"Hello there"}],"max_tokens":5}' "$url")
  [[ "$code" == 200 ]] || { echo "key $key: HTTP $code"; cat "$work/gw.log"; exit 1; }
done
curl -s -D - -o /dev/null -H "Authorization: Bearer sk-bench-4limits-01" \
  -H 'Content-Type: application/json' \
  -d '{"model":"bench","messages":[{"role":"user","content":"hi"}],"max_tokens":5}' "$url" |
  grep -qi '^x-ratelimit-limit-requests' || { echo "limits not applied to four-limits key"; exit 1; }

gw_pid="${pids[1]}"
# CPU time (user + system, clock ticks) the gateway process has used so far.
gw_ticks() { awk '{print $14 + $15}' "/proc/$gw_pid/stat"; }
tick_hz="$(getconf CLK_TCK)"

# Runs wrk; prints "requests/s gateway-CPU-us-per-request"; fails if any response was not 2xx.
# On a shared machine throughput swings with the neighbours' load; the gateway's CPU time per
# request is much less sensitive to that, so both are reported.
run() {
  local key="$1" out t0 t1 n
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$here/chat_post.lua" "$url" -- "$key" >/dev/null
  t0="$(gw_ticks)"
  out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$here/chat_post.lua" "$url" -- "$key")"
  t1="$(gw_ticks)"
  if grep -q 'Non-2xx' <<<"$out"; then
    echo "$out" >&2
    echo "key $key: some responses were not 2xx" >&2
    exit 1
  fi
  echo "$out" >"$work/last_wrk.txt"
  n="$(awk '/requests in/ {print $1}' <<<"$out")"
  awk -v rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" -v d="$((t1 - t0))" -v hz="$tick_hz" \
    -v n="$n" 'BEGIN {printf "%s %.2f\n", rps, d / hz * 1e6 / n}'
}

echo "bellwether: $bin"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION (warm-up $WARMUP), gateway workers $GW_WORKERS, sim workers $SIM_WORKERS, $(nproc) cores"
sum_a=0; sum_b=0; cpu_a=0; cpu_b=0
ratios=(); cpu_ratios=()
for r in $(seq 1 "$ROUNDS"); do
  read -r a ca <<<"$(run sk-bench-nolimits-01)"
  p50a="$(awk '$1=="50%" {print $2}' "$work/last_wrk.txt")"
  read -r b cb <<<"$(run sk-bench-4limits-01)"
  p50b="$(awk '$1=="50%" {print $2}' "$work/last_wrk.txt")"
  printf 'round %d: (a) no limits %9.1f req/s p50 %-7s gw CPU %6.2f us/req | (b) 4 limits %9.1f req/s p50 %-7s gw CPU %6.2f us/req | b/a %.3f\n' \
    "$r" "$a" "$p50a" "$ca" "$b" "$p50b" "$cb" "$(awk -v a="$a" -v b="$b" 'BEGIN {print b / a}')"
  ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN {print b / a}')")
  cpu_ratios+=("$(awk -v a="$ca" -v b="$cb" 'BEGIN {print b / a}')")
  sum_a="$(awk -v s="$sum_a" -v x="$a" 'BEGIN {print s + x}')"
  sum_b="$(awk -v s="$sum_b" -v x="$b" 'BEGIN {print s + x}')"
  cpu_a="$(awk -v s="$cpu_a" -v x="$ca" 'BEGIN {print s + x}')"
  cpu_b="$(awk -v s="$cpu_b" -v x="$cb" 'BEGIN {print s + x}')"
done
awk -v a="$sum_a" -v b="$sum_b" -v ca="$cpu_a" -v cb="$cpu_b" -v n="$ROUNDS" 'BEGIN {
  printf "mean: (a) %.1f req/s  (b) %.1f req/s  ratio b/a %.3f  throughput overhead %.1f%%\n", a / n, b / n, b / a, (1 - b / a) * 100
  printf "gateway CPU per request: (a) %.2f us  (b) %.2f us  limits cost %.1f%% of per-request CPU\n", ca / n, cb / n, (cb / ca - 1) * 100
}'
# Each round runs (a) and (b) back to back, so a round's ratio is the least disturbed by slow
# drifts of the machine; the median over rounds is the headline figure.
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
awk -v r="$(median "${ratios[@]}")" -v c="$(median "${cpu_ratios[@]}")" -v n="$ROUNDS" 'BEGIN {
  printf "median of %d rounds: throughput b/a %.3f (limits cost %.1f%% of throughput), CPU per request b/a %.3f (%.1f%%)\n", n, r, (1 - r) * 100, c, (c - 1) * 100
}'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (noise warning if well above $(nproc))"
