#!/usr/bin/env bash
# The isolated proxy benchmark: the server under test runs alone on cpu0 with one worker
# (taskset -c 0; Bellwether `workers: 1`, nginx `worker_processes 1`). wrk (-t2) and a
# fixed-answer upstream (nginx `return 200`: an ~820-byte chat.completion, or a 6-event SSE
# stream) share cpu1. nginx is the reference in the same run. Every target is driven with the
# same ~1 KB chat request (bench/load/isolated_chat.lua), at every connection count, in ROUNDS
# interleaved rounds; the table gives the medians over the rounds of requests/s, p50, p99, the
# server's CPU per request (utime+stime of its processes from /proc/<pid>/stat over the run,
# divided by the requests of the run) and the throughput ratio to the nginx row of its kind.
#
# Targets:
#   nginx        nginx proxy_pass to the upstream, keep-alive pool
#   nginx-sse    the same with proxy_buffering off, the upstream's SSE answer
#   bw-auth      Bellwether, auth only: no limits, no budgets, no ledger, access log off
#   bw-prod      Bellwether, production policy: rps/rpm/tpm/daily limits on the key's plan, a
#                per-key budget (plus a global one), the SQLite ledger, access log to a file
#   bw-sse       Bellwether, auth only, streaming
#
# Loopback only, bounded: ROUNDS x |CONNS| x |TARGETS| x (WARMUP + DURATION) s plus start-up
# (3 x 2 x 5 x 11 s = 5.5 min with the defaults), and the open-loop runs.
# Needs 2 or more CPUs, nginx (nginx-light), wrk, taskset, curl; a Release build.
# Usage: bench/load/isolated.sh [path/to/bellwether]
#   env: DURATION=10 (s) WARMUP=1 (s) ROUNDS=3 CONNS="64 256" THREADS=2
#        TARGETS="nginx bw-auth bw-prod nginx-sse bw-sse" (any subset; ratios need the nginx rows)
#        SERVER_CPU=0 CLIENT_CPU=1 (the cpus of the server under test and of wrk + upstream)
#        DURABILITY= (the production row's ledger.durability, process | machine; unset: the
#        default)
#        OPEN_RATE=2000 OPEN_DURATION=5 (open loop at a fixed rate with `bellwether bench`;
#        OPEN_RATE="" skips it) ; RAW=1 also prints every run
#        IDLE_CONNS=1000 (RSS at rest and with that many idle keep-alive connections; 0 skips)
#        PERF_DIR=dir: `perf record -g` of the server during each measured run, into
#        dir/<target>-c<conns>-r<round>.data (perf report -i ... to see where the time goes)
#        STRACE_DIR=dir: `strace -c -f` of the server during each measured run (syscalls per
#        request: divide by the "requests:" line; strace slows the server, ignore its figures)
#        SPLIT=1: the server's user and system CPU per request apart, per run (stderr)
#        TASKS=1: for Bellwether, the CPU per request of each of its threads by name (bw-worker-0,
#        bw-ledger, bw-checkpoint, bw-access-log, ...), and the process's context switches and
#        page faults per request (perf stat), per run (stderr)
#        SYSCOUNT=1: system calls per request of the server during each measured run, counted
#        by `perf stat` on the syscall tracepoints (no slowdown, unlike strace); printed per run
# On a shared machine run it under the machine lock (flock -o /tmp/bw-machine.lock ...).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${BELLWETHER_BIN:-$root/build/release/bellwether}}"
DURATION="${DURATION:-10}"
DURATION="${DURATION%s}"
WARMUP="${WARMUP:-1}"
WARMUP="${WARMUP%s}"
ROUNDS="${ROUNDS:-3}"
CONNS="${CONNS:-64 256}"
THREADS="${THREADS:-2}"
TARGETS="${TARGETS:-nginx bw-auth bw-prod nginx-sse bw-sse}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
DURABILITY="${DURABILITY:-}"
OPEN_RATE="${OPEN_RATE-2000}"
OPEN_DURATION="${OPEN_DURATION:-5}"
RAW="${RAW:-0}"
PERF_DIR="${PERF_DIR:-}"
STRACE_DIR="${STRACE_DIR:-}"
SYSCOUNT="${SYSCOUNT:-0}"
SPLIT="${SPLIT:-0}"
TASKS="${TASKS:-0}"
IDLE_CONNS="${IDLE_CONNS:-1000}"
NGINX="${NGINX:-/usr/sbin/nginx}"
KEY=sk-isolated-bench-0001

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
for tool in wrk taskset curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done
[[ -x "$NGINX" ]] || { echo "nginx not found at $NGINX (apt-get install nginx-light)" >&2; exit 2; }
(($(nproc) >= 2)) || { echo "needs at least 2 cpus" >&2; exit 2; }

# shellcheck source=bench/load/lib.sh
source "$here/lib.sh"
start_workdir isolated
ledger_dir="$work/db"
mkdir -p "$ledger_dir"

up_port="$(free_port)"
ngx_port="$(free_port)"
auth_port="$(free_port)"
prod_port="$(free_port)"

fixed_upstream_conf "$work/upstream" "$up_port"

nginx_proxy_conf "$work/nginx" "$ngx_port" "$up_port"

# Bellwether: the same providers and models in both configs.
{
  fixed_upstream_gateway_yaml "$auth_port" "$up_port"
  auth_policy_yaml "$KEY"
} >"$work/auth.yaml"
{
  fixed_upstream_gateway_yaml "$prod_port" "$up_port"
  prod_policy_yaml "$KEY" "$work/access.log" "$ledger_dir/ledger.db" "$DURABILITY"
} >"$work/prod.yaml"

# Background processes; the server under test on SERVER_CPU, everything else on CLIENT_CPU.
start_nginx "$CLIENT_CPU" "$work/upstream"
declare -A pid=()
if [[ " $TARGETS " == *" nginx"* ]]; then
  start_nginx "$SERVER_CPU" "$work/nginx"
  pid[nginx]=$nginx_pid
  pid[nginx-sse]=$nginx_pid
fi
if [[ " $TARGETS " == *" bw-auth "* || " $TARGETS " == *" bw-sse "* ]]; then
  taskset -c "$SERVER_CPU" "$bin" serve --config "$work/auth.yaml" >"$work/auth.log" 2>&1 &
  track_pid $!
  pid[bw-auth]=$!
  pid[bw-sse]=$!
fi
if [[ " $TARGETS " == *" bw-prod "* ]]; then
  taskset -c "$SERVER_CPU" "$bin" serve --config "$work/prod.yaml" >"$work/prod.log" 2>&1 &
  track_pid $!
  pid[bw-prod]=$!
fi
wait_port "$up_port" || { cat "$work/upstream.out" "$work/upstream/error.log"; exit 1; }
[[ -n "${pid[nginx]:-}" ]] && { wait_port "$ngx_port" || { cat "$work/nginx.out"; exit 1; }; }
[[ -n "${pid[bw-auth]:-}" ]] && { wait_port "$auth_port" || { cat "$work/auth.log"; exit 1; }; }
[[ -n "${pid[bw-prod]:-}" ]] && { wait_port "$prod_port" || { cat "$work/prod.log"; exit 1; }; }

declare -A url=(
  [nginx]="http://127.0.0.1:$ngx_port/v1/chat/completions"
  [nginx-sse]="http://127.0.0.1:$ngx_port/sse/v1/chat/completions"
  [bw-auth]="http://127.0.0.1:$auth_port/v1/chat/completions"
  [bw-prod]="http://127.0.0.1:$prod_port/v1/chat/completions"
  [bw-sse]="http://127.0.0.1:$auth_port/v1/chat/completions"
)
declare -A model=([nginx]=bench [nginx-sse]=bench [bw-auth]=bench [bw-prod]=bench [bw-sse]=bench-sse)
declare -A streaming=([nginx]=0 [nginx-sse]=1 [bw-auth]=0 [bw-prod]=0 [bw-sse]=1)
declare -A reference=([nginx]=nginx [bw-auth]=nginx [bw-prod]=nginx [nginx-sse]=nginx-sse
  [bw-sse]=nginx-sse)

# Sanity: every target answers 200 with the upstream's completion or stream.
for t in $TARGETS; do
  [[ -n "${url[$t]:-}" ]] || { echo "unknown target $t" >&2; exit 2; }
  s=false
  [[ "${streaming[$t]}" == 1 ]] && s=true
  body="$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' \
    -d "{\"model\":\"${model[$t]}\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"stream\":$s}" \
    "${url[$t]}")"
  if [[ "${body##*$'\n'}" != 200 ]] ||
    { [[ $s == true ]] && [[ "$body" != *'[DONE]'* ]]; } ||
    { [[ $s == false ]] && [[ "$body" != *'"completion_tokens":82'* ]]; }; then
    echo "$t: unexpected answer: $body" >&2
    cat "$work"/*.log "$work"/*/error.log >&2 2>/dev/null || true
    exit 1
  fi
done

# CPU ticks of a server: the Bellwether process (all its threads), or nginx's master and worker.
server_ticks() { proc_ticks "${pid[$1]}"; }
# The same, user and system ticks apart ("utime stime").
server_ticks_split() {
  local x u=0 s=0
  for x in ${pid[$1]} $(pgrep -P "${pid[$1]}" | tr '\n' ' '); do
    read -r a b < <(awk '{print $14, $15}' "/proc/$x/stat")
    u=$((u + a))
    s=$((s + b))
  done
  echo "$u $s"
}

# Each thread of a process, summed by thread name: "name ticks runqueue-wait-ns voluntary
# involuntary" lines (CPU ticks from stat, the time spent runnable but waiting for a CPU from
# schedstat, context switches from status).
task_ticks() {
  local d
  for d in /proc/"$1"/task/*; do
    # comm is the 2nd field, in parentheses; utime and stime are the 12th and 13th after it.
    echo "$(sed -E 's/^[0-9]+ \(([^)]*)\) /\1 /' "$d/stat" | awk '{print $1, $13 + $14}')" \
      "$(awk '{print $2}' "$d/schedstat")" \
      "$(awk '/^(non)?voluntary_ctxt_switches/ {printf "%s ", $2}' "$d/status")"
  done 2>/dev/null | awk 'NF == 5 {t[$1] += $2; w[$1] += $3; v[$1] += $4; i[$1] += $5}
    END {for (n in t) print n, t[n], w[n], v[n], i[n]}'
}
# Each CPU's busy, idle and stolen jiffies ("cpuN busy idle steal" lines) from /proc/stat.
cpu_jiffies() {
  awk '/^cpu[0-9]/ {print $1, $2 + $3 + $4 + $7 + $8, $5 + $6, $9}' /proc/stat
}

# The production gateway's ledger counters: committed records and group commits.
ledger_counts() {
  curl -s "http://127.0.0.1:$prod_port/metrics" | awk '
    /^bellwether_ledger_records_total\{result="committed"\} / {r = $2}
    /^bellwether_ledger_commits_total / {c = $2}
    END {printf "%d %d\n", r, c}'
}

# One run of wrk on CLIENT_CPU; sets rps, p50, p99 (ms) and cpu (the server's µs per request).
run() {
  local t="$1" c="$2" out t0 t1 n
  local args=(-s "$here/isolated_chat.lua" "${url[$t]}" -- "$KEY" "${model[$t]}" "${streaming[$t]}")
  taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$c" -d"${WARMUP}s" "${args[@]}" >/dev/null
  local perf_pid=""
  if [[ -n "$PERF_DIR" ]]; then
    mkdir -p "$PERF_DIR"
    local rec_pids="${pid[$t]}"
    [[ "$t" == nginx* ]] && rec_pids="$rec_pids,$(pgrep -P "${pid[$t]}" | paste -sd,)"
    taskset -c "$CLIENT_CPU" perf record -q -g -p "$rec_pids" -o "$PERF_DIR/$t-c$c-r$3.data" \
      -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local strace_pid=""
  if [[ -n "$STRACE_DIR" ]]; then
    mkdir -p "$STRACE_DIR"
    taskset -c "$CLIENT_CPU" strace -c -f -p "${pid[$t]}" -o "$STRACE_DIR/$t-c$c-r$3.txt" &
    strace_pid=$!
    sleep 0.5
  fi
  local sys_pid="" sys_out="$work/syscount.txt"
  if [[ "$SYSCOUNT" == 1 ]]; then
    local pids="${pid[$t]}"
    [[ "$t" == nginx* ]] && pids="$pids,$(pgrep -P "${pid[$t]}" | paste -sd,)"
    taskset -c "$CLIENT_CPU" perf stat -x, -e 'syscalls:sys_enter_*' -p "$pids" -o "$sys_out" \
      -- sleep "$DURATION" >/dev/null 2>&1 &
    sys_pid=$!
  fi
  local led0=""
  [[ "$t" == bw-prod ]] && led0="$(ledger_counts)"
  local split0="" tasks0="" cpus0="" ev_pid="" ev_out="$work/events.txt"
  [[ "$TASKS" == 1 ]] && cpus0="$(cpu_jiffies)"
  if [[ "$TASKS" == 1 && "$t" == bw-* ]]; then
    tasks0="$(task_ticks "${pid[$t]}")"
    taskset -c "$CLIENT_CPU" perf stat -x, -e context-switches,cpu-migrations,page-faults \
      -p "${pid[$t]}" -o "$ev_out" -- sleep "$DURATION" >/dev/null 2>&1 &
    ev_pid=$!
  fi
  [[ "$SPLIT" == 1 ]] && split0="$(server_ticks_split "$t")"
  t0="$(server_ticks "$t")"
  out="$(taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$c" -d"${DURATION}s" --latency "${args[@]}")"
  t1="$(server_ticks "$t")"
  if [[ -n "$split0" ]]; then
    read -r u0 s0 <<<"$split0"
    read -r u1 s1 <<<"$(server_ticks_split "$t")"
    echo "cpu split, $t at $c connections: $(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$tick_hz" \
      -v n="$(awk '/requests in/ {print $1}' <<<"$out")" \
      'BEGIN {printf "user %.1f system %.1f us/req", u / hz * 1e6 / n, s / hz * 1e6 / n}')" >&2
  fi
  [[ -n "$perf_pid" ]] && wait "$perf_pid"
  if [[ -n "$tasks0" ]]; then
    local n_req tasks1
    tasks1="$(task_ticks "${pid[$t]}")"
    n_req="$(awk '/requests in/ {print $1}' <<<"$out")"
    wait "$ev_pid" || true
    echo "threads, $t at $c connections, us/req: $(awk -v n="$n_req" -v hz="$tick_hz" '
      NR == FNR {a[$1] = $2; next}
      {d = $2 - a[$1]; if (d > 0) printf "%s %.2f\n", $1, d / hz * 1e6 / n}' \
      <(echo "$tasks0") <(echo "$tasks1") | sort -k2 -g -r | paste -sd' ')" \
      "; per request: $(awk -F, -v n="$n_req" '$1 ~ /^[0-9]+$/ {printf "%s %.3f ", $3, $1 / n}' \
        "$ev_out")" >&2
    # The event loop's waits for the CPU (runnable, not running) and its context switches:
    # whether the gateway waited for work or for the CPU.
    echo "  event loop: $(awk -v n="$n_req" -v s="$DURATION" '
      NR == FNR {w[$1] = $3; v[$1] = $4; i[$1] = $5; next}
      $1 ~ /^bw-worker/ {printf "%s runqueue wait %.1f ms/s, switches per request voluntary %.3f involuntary %.3f; ",
        $1, ($3 - w[$1]) / 1e6 / s, ($4 - v[$1]) / n, ($5 - i[$1]) / n}' \
      <(echo "$tasks0") <(echo "$tasks1"))" >&2
  fi
  if [[ -n "$cpus0" ]]; then
    # How busy each CPU was over the run (every process on it, and the VM's steal).
    echo "cpus, $t at $c connections: $(awk '
      NR == FNR {b[$1] = $2; i[$1] = $3; s[$1] = $4; next}
      {db = $2 - b[$1]; di = $3 - i[$1]; ds = $4 - s[$1]; t = db + di + ds
       if (t > 0) printf "%s busy %.0f%% idle %.0f%% steal %.0f%%  ", $1, 100 * db / t, 100 * di / t, 100 * ds / t}' \
      <(echo "$cpus0") <(cpu_jiffies))" >&2
  fi
  if [[ -n "$sys_pid" ]]; then
    wait "$sys_pid" || true
    local n_req
    n_req="$(awk '/requests in/ {print $1}' <<<"$out")"
    # perf -x, lines: count,,event,...; the top system calls per request of this run.
    echo "syscalls per request, $t at $c connections: $(awk -F, -v n="$n_req" \
      '$3 ~ /sys_enter_/ && $1 > 0 {sub(/.*sys_enter_/, "", $3); printf "%s %.2f\n", $3, $1 / n}' \
      "$sys_out" | sort -k2 -g -r | head -8 | paste -sd' ')" >&2
  fi
  if [[ -n "$strace_pid" ]]; then
    kill -INT "$strace_pid"
    wait "$strace_pid" || true
    echo "requests: $(awk '/requests in/ {print $1}' <<<"$out")" >>"$STRACE_DIR/$t-c$c-r$3.txt"
  fi
  if [[ -n "$led0" ]]; then
    # Records per group commit during the run, from the gateway's own counters.
    read -r r0 c0 <<<"$led0"
    read -r r1 c1 <<<"$(ledger_counts)"
    echo "ledger, $t at $c connections: $((r1 - r0)) records in $((c1 - c0)) group commits" \
      "($(awk -v r=$((r1 - r0)) -v c=$((c1 - c0)) 'BEGIN {printf "%.1f", c ? r / c : 0}') per commit)" >&2
  fi
  wrk_figures "$out" "$((t1 - t0))" "$t at $c connections"
}

# Memory: each server's RSS at rest (after the sanity requests, before any load), and with
# IDLE_CONNS idle keep-alive connections open (each has served one request).
idle_report=""
if [[ "$IDLE_CONNS" -gt 0 ]]; then
  for t in nginx bw-auth bw-prod; do
    [[ " $TARGETS " == *" $t "* ]] || continue
    p="${pid[$t]}"
    [[ "$t" == nginx ]] && p="$p,$(pgrep -P "$p" | paste -sd,)"
    read -r rss0 rss1 < <(ulimit -n 65536 2>/dev/null || true; taskset -c "$CLIENT_CPU" python3 \
      "$here/idle_conns.py" "${url[$t]}" "$KEY" "${model[$t]}" "$IDLE_CONNS" "$p")
    idle_report+="$(printf '%-9s idle RSS %6.1f MB; with %s idle keep-alive connections %6.1f MB: %5.1f KB per connection' \
      "$t" "$(awk -v k="$rss0" 'BEGIN {print k / 1024}')" "$IDLE_CONNS" \
      "$(awk -v k="$rss1" 'BEGIN {print k / 1024}')" \
      "$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN {print (b - a) / n}')")"$'\n'
  done
fi


echo "# isolated proxy benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
# The build under test names itself (its version and commit); an older binary without --version
# is named by its path alone.
echo "bellwether: $bin ($("$bin" --version 2>/dev/null || echo 'no --version'))"
echo "nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "machine: $(nproc) cpus ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "server under test on cpu$SERVER_CPU (1 worker); wrk -t$THREADS and the upstream on cpu$CLIENT_CPU"
echo "${DURATION}s per run after a ${WARMUP}s warm-up, connections: $CONNS, $ROUNDS interleaved rounds, medians"
echo "production ledger: ledger.durability ${DURABILITY:-default} on $(df -T "$ledger_dir" | awk 'NR==2 {print $2}')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
if [[ -n "$idle_report" ]]; then
  printf '%s\n' "$idle_report"
fi

declare -A RPS P50 P99 CPU
for r in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    for t in $TARGETS; do
      run "$t" "$c" "$r"
      RPS[$r,$c,$t]="$rps"
      P50[$r,$c,$t]="$p50"
      P99[$r,$c,$t]="$p99"
      CPU[$r,$c,$t]="$cpu"
      [[ "$RAW" == 1 ]] && printf 'round %s c%s %-9s %10.0f req/s p50 %7.3f p99 %7.3f ms %6s us/req\n' \
        "$r" "$c" "$t" "$rps" "$p50" "$p99" "$cpu"
    done
  done
done
[[ "$RAW" == 1 ]] && echo

declare -A M_RPS M_CPU
printf '%-9s %5s %12s %9s %9s %12s %12s %8s\n' target conns "requests/s" "p50 ms" "p99 ms" \
  "CPU us/req" "rps ratio" "CPU x"
for c in $CONNS; do
  for t in $TARGETS; do
    col() { local -n arr="$1"; for r in $(seq 1 "$ROUNDS"); do printf '%s ' "${arr[$r,$c,$t]}"; done; }
    M_RPS[$c,$t]="$(col RPS | median)"
    M_CPU[$c,$t]="$(col CPU | median)"
    m50="$(col P50 | median)"
    m99="$(col P99 | median)"
    ref="${reference[$t]}"
    ratio=-
    cpux=-
    if [[ "$ref" != "$t" && -n "${M_RPS[$c,$ref]:-}" ]]; then
      ratio="$(awk -v a="${M_RPS[$c,$t]}" -v b="${M_RPS[$c,$ref]}" 'BEGIN {printf "%.2fx", a / b}')"
      cpux="$(awk -v a="${M_CPU[$c,$t]}" -v b="${M_CPU[$c,$ref]}" 'BEGIN {printf "%.2fx", a / b}')"
    fi
    printf '%-9s %5s %12.0f %9.3f %9.3f %12.1f %12s %8s\n' "$t" "$c" "${M_RPS[$c,$t]}" "$m50" \
      "$m99" "${M_CPU[$c,$t]}" "$ratio" "$cpux"
  done
done

# Open loop: a fixed rate below saturation, where the latency is the proxy's own and not the
# queueing of a saturated closed loop. `bellwether bench` runs on CLIENT_CPU.
if [[ -n "$OPEN_RATE" ]]; then
  echo
  echo "open loop: bellwether bench --profile constant at $OPEN_RATE req/s for ${OPEN_DURATION}s (p50/p99 ms; added = over the direct path to the upstream)"
  printf '%-9s %10s %10s %10s %14s\n' target "p50 ms" "p99 ms" "ok" "added p99 ms"
  declare -A base=([direct]="http://127.0.0.1:$up_port" [nginx]="http://127.0.0.1:$ngx_port"
    [bw-auth]="http://127.0.0.1:$auth_port" [bw-prod]="http://127.0.0.1:$prod_port")
  direct99=""
  for t in direct nginx bw-auth bw-prod; do
    [[ "$t" == direct || " $TARGETS " == *" $t "* ]] || continue
    taskset -c "$CLIENT_CPU" "$bin" bench --url "${base[$t]}" --api-key "$KEY" --profile constant \
      --rate "$((OPEN_RATE * 60))" --duration "$OPEN_DURATION" --models bench --max-tokens 64 \
      --prompt-bytes 800 --priority-mix 0/100/0 --json "$work/open.json" >/dev/null 2>&1 ||
      { echo "$t: bellwether bench failed" >&2; exit 1; }
    read -r op50 op99 ook < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["runs"][0]["summary"]
print("%.3f %.3f %.4f" % (s["p50_ms"], s["p99_ms"], s["success_rate"]))' "$work/open.json")
    [[ "$t" == direct ]] && direct99="$op99"
    added="$(awk -v a="$op99" -v d="$direct99" 'BEGIN {printf "%.3f", a - d}')"
    [[ "$t" == direct ]] && added=-
    printf '%-9s %10s %10s %10s %14s\n' "$t" "$op50" "$op99" "$ook" "$added"
  done
fi
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
