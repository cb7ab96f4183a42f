#!/usr/bin/env bash
# What the console costs the data plane, measured with the isolated method of
# bench/load/isolated.sh (docs/benchmarks.md): the server under test alone on SERVER_CPU with one
# worker; wrk, the fixed-answer nginx upstream and the console's poller on CLIENT_CPU; nginx as
# the reference in the same run. Four rows, alternating round by round so that drift on a shared
# machine hits them alike:
#   nginx     nginx proxy_pass to the upstream (the reference)
#   off       Bellwether with admin.console: false (no sampler thread, no sessions)
#   idle      Bellwether with the console on (its sampler reads the gateway's state once a
#             second), nobody watching
#   watching  the same gateway while a logged-in client polls what the Live page reads
#             (/ui/api/live?since=... every POLL_S seconds, as the page does) on the admin listener
# Both gateways are auth only (a key on a plan without limits, no ledger, access log off) and sit
# on SERVER_CPU together; only one is under load at a time. The table gives the medians over the
# rounds of requests/s, p50, p99 and the server's CPU per request (utime + stime of the process,
# all threads, over the run, divided by its requests; the poller's requests are served by the
# gateway and counted in its CPU), and each row against nginx and against `off`. Since two
# gateway processes are compared, the CPU is also split by thread: the data-plane worker (the
# busiest thread), the console's sampler (thread `bw-sampler`) and the rest (the admin listener
# that answers the poller, the rate pump, the scaler), each per request of the run.
#
# Loopback only, bounded: ROUNDS x 4 x (WARMUP + DURATION) s plus start-up (5 x 4 x 9 s = 3 min).
# Needs 2 or more CPUs, nginx, wrk, taskset, curl; a Release build. On a shared machine run it
# under the machine lock (flock -o /tmp/bw-machine.lock ...).
# Usage: bench/load/console_overhead.sh [path/to/bellwether]
#   env: DURATION=8 (s) WARMUP=1 (s) ROUNDS=5 CONNS=64 THREADS=2 POLL_S=1.5 RAW=1 (every run)
#        SERVER_CPU=0 CLIENT_CPU=1
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${BELLWETHER_BIN:-$root/build/release/bellwether}}"
DURATION="${DURATION:-8}"
DURATION="${DURATION%s}"
WARMUP="${WARMUP:-1}"
WARMUP="${WARMUP%s}"
ROUNDS="${ROUNDS:-5}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
POLL_S="${POLL_S:-1.5}"
RAW="${RAW:-0}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
NGINX="${NGINX:-/usr/sbin/nginx}"
KEY=sk-console-bench-0001
ADMIN=admin-console-bench-0123456789
STATES="nginx off idle watching"

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
for tool in wrk taskset curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done
[[ -x "$NGINX" ]] || { echo "nginx not found at $NGINX (apt-get install nginx-light)" >&2; exit 2; }
(($(nproc) >= 2)) || { echo "needs at least 2 cpus" >&2; exit 2; }

# shellcheck source=bench/load/lib.sh
source "$here/lib.sh"
start_workdir console-overhead

up_port="$(free_port)"
ngx_port="$(free_port)"
fixed_upstream_conf "$work/upstream" "$up_port"
nginx_proxy_conf "$work/nginx" "$ngx_port" "$up_port"
start_nginx "$CLIENT_CPU" "$work/upstream"
start_nginx "$SERVER_CPU" "$work/nginx"
declare -A pid=([nginx]=$nginx_pid)
declare -A url=([nginx]="http://127.0.0.1:$ngx_port/v1/chat/completions")
wait_port "$up_port" || { cat "$work/upstream.out" "$work/upstream/error.log"; exit 1; }
wait_port "$ngx_port" || { cat "$work/nginx.out"; exit 1; }

# A Bellwether on SERVER_CPU with the console on or off; sets gw_port, admin_port, gw_pid.
start_gw() {
  local console="$1" name="$2"
  gw_port="$(free_port)"
  admin_port="$(free_port)"
  cat >"$work/$name.yaml" <<YAML
listen: 127.0.0.1:$gw_port
workers: 1
access_log: {path: "off"}
admin: {key: $ADMIN, listen: 127.0.0.1:$admin_port, console: $console}
providers:
  up: {base_url: "http://127.0.0.1:$up_port/v1"}
model_groups:
  bench:
    deployments: [{provider: up, model: bench}]
pricing:
  bench: {input: 0.10, output: 0.40}
plans:
  none: {limits: []}
keys:
  - {name: bench, key: $KEY, plan: none}
YAML
  taskset -c "$SERVER_CPU" "$bin" serve --config "$work/$name.yaml" >"$work/$name.log" 2>&1 &
  gw_pid=$!
  track_pid "$gw_pid"
  wait_port "$gw_port" || { cat "$work/$name.log"; exit 1; }
  wait_port "$admin_port" || { cat "$work/$name.log"; exit 1; }
}
start_gw false off
pid[off]=$gw_pid
url[off]="http://127.0.0.1:$gw_port/v1/chat/completions"
start_gw true on
pid[idle]=$gw_pid
pid[watching]=$gw_pid
url[idle]="http://127.0.0.1:$gw_port/v1/chat/completions"
url[watching]="${url[idle]}"
on_admin=$admin_port

# Sanity: every target answers the upstream's completion.
for t in nginx off idle; do
  body="$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"model":"bench","messages":[{"role":"user","content":"Hi"}]}' "${url[$t]}")"
  if [[ "${body##*$'\n'}" != 200 || "$body" != *'"completion_tokens":82'* ]]; then
    echo "$t: unexpected answer: $body" >&2
    exit 1
  fi
done

# A console session on the "on" gateway, for the watching state.
cookie="$(curl -s -o /dev/null -D - --data-urlencode "key=$ADMIN" "http://127.0.0.1:$on_admin/ui/login" |
  awk -F'[ ;]' 'tolower($1)=="set-cookie:" {print $2}')"
[[ "$cookie" == bw_console=* ]] || { echo "console login failed" >&2; exit 1; }

# The Live page's polling, as the browser does it (the same URLs and cadence): the page's info
# once, then the samples newer than the last one seen. Counts its polls in $work/polls.
poll_live() {
  local since=0 out
  curl -sf -H "Cookie: $cookie" "http://127.0.0.1:$on_admin/ui/api/info" >/dev/null
  while :; do
    out="$(curl -sf -H "Cookie: $cookie" "http://127.0.0.1:$on_admin/ui/api/live?since=$since")" ||
      { echo "poll failed" >&2; exit 1; }
    echo >>"$work/polls"
    since="$(sed -n 's/.*"t":\([0-9]*\),"rps".*/\1/p' <<<"$out" | tail -1)"
    since="${since:-0}"
    sleep "$POLL_S"
  done
}

# "tid name ticks" of every thread of process $1.
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    echo "${t##*/} $(tr ' ' '_' <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done
}
# From two thread_ticks snapshots ($1 before, $2 after) and the requests ($3): the µs per request
# of the busiest thread, of bw-sampler and of every other thread, as "worker sampler rest".
split_ticks() {
  awk -v hz="$tick_hz" -v n="$3" '
    NR == FNR { before[$1] = $3; next }
    { d = $3 - before[$1]; name[$1] = $2; delta[$1] = d; total += d
      if (d > max) { max = d; busiest = $1 } }
    END {
      for (t in delta) if (name[t] == "bw-sampler") s += delta[t]
      k = hz / 1e6 * n
      printf "%.2f %.2f %.2f\n", max / k, s / k, (total - max - s) / k }' "$1" "$2"
}

# One run of wrk on CLIENT_CPU; sets rps, p50, p99 (ms), cpu (the server's µs per request) and
# worker, sampler, rest (its split by thread).
run() {
  local t="$1" out t0 t1 n poller=""
  local args=(-s "$here/isolated_chat.lua" "${url[$t]}" -- "$KEY" bench 0)
  if [[ "$t" == watching ]]; then
    poll_live &
    poller=$!
    track_pid "$poller"
    taskset -pc "$CLIENT_CPU" "$poller" >/dev/null  # its curls inherit the cpu
  fi
  taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "${args[@]}" >/dev/null
  thread_ticks "${pid[$t]}" >"$work/ticks0"
  t0="$(proc_ticks "${pid[$t]}")"
  out="$(taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${args[@]}")"
  t1="$(proc_ticks "${pid[$t]}")"
  thread_ticks "${pid[$t]}" >"$work/ticks1"
  if [[ -n "$poller" ]]; then
    kill "$poller" 2>/dev/null || true
    wait "$poller" 2>/dev/null || true
  fi
  wrk_figures "$out" "$((t1 - t0))" "$t"
  read -r worker sampler rest < <(split_ticks "$work/ticks0" "$work/ticks1" "$n")
}

echo "# console overhead (isolated method), $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "bellwether: $bin ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet HEAD -- src 2>/dev/null || echo '+local changes'))"
echo "nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "machine: $(nproc) cpus ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "server under test on cpu$SERVER_CPU (1 worker); wrk -t$THREADS -c$CONNS, the upstream and the poller on cpu$CLIENT_CPU"
echo "${DURATION}s per run after a ${WARMUP}s warm-up, $ROUNDS alternating rounds ($STATES), medians; poll every ${POLL_S}s"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

declare -A RPS P50 P99 CPU WRK SMP RST
for r in $(seq 1 "$ROUNDS"); do
  for t in $STATES; do
    run "$t"
    RPS[$r,$t]="$rps"
    P50[$r,$t]="$p50"
    P99[$r,$t]="$p99"
    CPU[$r,$t]="$cpu"
    WRK[$r,$t]="$worker"
    SMP[$r,$t]="$sampler"
    RST[$r,$t]="$rest"
    [[ "$RAW" == 1 ]] && printf 'round %s %-9s %10.0f req/s p50 %7.3f p99 %7.3f ms %6s us/req (worker %s, sampler %s, rest %s)\n' \
      "$r" "$t" "$rps" "$p50" "$p99" "$cpu" "$worker" "$sampler" "$rest"
  done
done
[[ "$RAW" == 1 ]] && echo
echo "polls of /ui/api/live while watching: $(wc -l <"$work/polls" 2>/dev/null || echo 0)"
echo

declare -A M_RPS M_CPU M_P99
printf '%-9s %12s %9s %9s %12s %10s %14s %14s %28s\n' state "requests/s" "p50 ms" "p99 ms" "CPU us/req" \
  "rps ratio" "rps vs off" "CPU vs off" "worker / sampler / rest us"
for t in $STATES; do
  col() { local -n arr="$1"; for r in $(seq 1 "$ROUNDS"); do printf '%s ' "${arr[$r,$t]}"; done; }
  M_RPS[$t]="$(col RPS | median)"
  M_CPU[$t]="$(col CPU | median)"
  M_P99[$t]="$(col P99 | median)"
  m50="$(col P50 | median)"
  ratio=-
  [[ "$t" != nginx ]] && ratio="$(awk -v a="${M_RPS[$t]}" -v b="${M_RPS[nginx]}" 'BEGIN {printf "%.2fx", a / b}')"
  vs=-
  cvs=-
  if [[ "$t" == idle || "$t" == watching ]]; then
    vs="$(awk -v a="${M_RPS[$t]}" -v b="${M_RPS[off]}" 'BEGIN {printf "%+.1f%%", (a / b - 1) * 100}')"
    cvs="$(awk -v a="${M_CPU[$t]}" -v b="${M_CPU[off]}" 'BEGIN {printf "%+.1f%%", (a / b - 1) * 100}')"
  fi
  split="-"
  [[ "$t" != nginx ]] && split="$(col WRK | median) / $(col SMP | median) / $(col RST | median)"
  printf '%-9s %12.0f %9.3f %9.3f %12.1f %10s %14s %14s %28s\n' "$t" "${M_RPS[$t]}" "$m50" "${M_P99[$t]}" \
    "${M_CPU[$t]}" "$ratio" "$vs" "$cvs" "$split"
done
# The noise: how far the off row itself moves between rounds.
spread() {
  local -n arr="$1"
  for r in $(seq 1 "$ROUNDS"); do echo "${arr[$r,off]}"; done | sort -g |
    awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s .. %s", lo, hi}'
}
echo
echo "off between rounds: requests/s $(spread RPS), p99 ms $(spread P99), CPU us/req $(spread CPU)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
