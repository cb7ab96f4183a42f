#!/usr/bin/env bash
# Instructions per proxied request under callgrind: a load-independent measure of the gateway's
# own CPU work per request (docs/benchmarks.md, "Where the time goes"). `bellwether serve` (one
# worker) runs under `valgrind --tool=callgrind` in front of a zero-latency `bellwether sim`,
# driven by wrk -t1 -c$CONNS for $DURATION s with the ~1 KB chat request of isolated.sh. It runs
# twice: idle (start and stop, no requests) and loaded; per request = (loaded - idle) / requests.
#
# CONFIG:
#   auth  auth only: no limits, no budgets, no ledger, access log off
#   prod  production policy, the same as isolated.sh's bw-prod: rps/rpm/tpm/daily limits, a
#         per-key and a global budget, the SQLite ledger, access log to a file
#   sse   auth only, streaming (the simulator streams one event per token)
#
# Loopback only, bounded: two gateway runs of at most DURATION s plus start-up.
# Usage: bench/load/callgrind.sh [path/to/bellwether]
#   env: CONFIG=auth|prod|sse DURATION=10 CONNS=8
#        TOKENS=n: the simulator answers n completion tokens (an SSE stream of n + 3 events, like
#        isolated.sh's 6-event upstream for TOKENS=3); unset, it answers the request's max_tokens
#        (128: a 131-event stream)
#        LEASE=0 / LEASE=1 (prod): budget leases off / on (budgets.lease.enabled); unset, the
#        binary's default (on)
#        OUT=dir: keep the loaded run's callgrind file as dir/callgrind.<CONFIG>.out, for
#        `callgrind_annotate --inclusive=yes dir/callgrind.<CONFIG>.out`, and the idle run's
#        as dir/callgrind.<CONFIG>.idle.out (bench/load/callgrind_calls.py subtracts it)
#        CACHE_SIM=1: simulate the caches too (`--cache-sim=yes`) and print every event per
#        request (Ir, Dr, Dw, I1mr, D1mr, D1mw, ILmr, DLmr, DLmw). CACHE_ARGS sets the simulated
#        caches; the default is the server cpu's L1d (48 KiB, 12-way) and, as the last level,
#        its per-core L2 (1 MiB, 16-way): what outgrows a core's own caches shows as DL misses
# valgrind runs niced (nice -n 19); it needs no quiet machine, instructions do not depend on load.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${BELLWETHER_BIN:-$root/build/release/bellwether}}"
CONFIG="${CONFIG:-auth}"
DURATION="${DURATION:-10}"
DURATION="${DURATION%s}"
CONNS="${CONNS:-8}"
TOKENS="${TOKENS:-}"
OUT="${OUT:-}"
CACHE_SIM="${CACHE_SIM:-0}"
CACHE_ARGS="${CACHE_ARGS:---I1=32768,8,64 --D1=49152,12,64 --LL=1048576,16,64}"
cg_args=()
if [[ "$CACHE_SIM" == 1 ]]; then
  # shellcheck disable=SC2206
  cg_args=(--cache-sim=yes $CACHE_ARGS)
fi
KEY=sk-callgrind-bench-0001

[[ -x "$bin" ]] || { echo "bellwether binary not found: $bin (pass it as \$1)" >&2; exit 2; }
for tool in wrk valgrind; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done

# shellcheck source=bench/load/lib.sh
source "$here/lib.sh"
start_workdir callgrind

sim_port="$(free_port)"
gw_port="$(free_port)"
if [[ -n "$TOKENS" ]]; then
  printf 'sim:\n  workers: 1\n  zero_latency: true\n  max_tokens: limit\n  defaults: {completion_tokens: %s}\n' \
    "$TOKENS" >"$work/sim.yaml"
else
  printf 'sim:\n  workers: 1\n  zero_latency: true\n' >"$work/sim.yaml"
fi
{
  cat <<YAML
listen: 127.0.0.1:$gw_port
workers: 1
providers:
  sim: {base_url: "http://127.0.0.1:$sim_port/v1"}
model_groups:
  bench:
    deployments: [{provider: sim, model: bench}]
pricing:
  bench: {input: 0.10, output: 0.40}
YAML
  case "$CONFIG" in
    auth | sse) auth_policy_yaml "$KEY" ;;
    prod)
      mkdir -p "$work/db"
      prod_policy_yaml "$KEY" "$work/access.log" "$work/db/ledger.db"
      ;;
    *) echo "unknown CONFIG $CONFIG (auth, prod, sse)" >&2; exit 2 ;;
  esac
} >"$work/gw.yaml"
stream=0
[[ "$CONFIG" == sse ]] && stream=1

"$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
track_pid $!
wait_port "$sim_port" || { cat "$work/sim.log"; exit 1; }

# One gateway run under callgrind; prints "requests total_instructions". $1 = 1 with load.
run() {
  local out="$work/cg.$1" n=0 wrk_out
  rm -f "$work/db/ledger.db"*
  nice -n 19 valgrind --tool=callgrind "${cg_args[@]}" --callgrind-out-file="$out" \
    "$bin" serve --config "$work/gw.yaml" >"$work/gw.$1.log" 2>&1 &
  local pid=$!
  track_pid "$pid"
  # Under valgrind the start takes seconds.
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$gw_port") 2>/dev/null && break
    sleep 0.1
  done
  if [[ "$1" == 1 ]]; then
    wrk_out="$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 30s -s "$here/isolated_chat.lua" \
      "http://127.0.0.1:$gw_port/v1/chat/completions" -- "$KEY" bench "$stream")"
    if grep -qE 'Non-2xx|Socket errors' <<<"$wrk_out"; then
      echo "$wrk_out" >&2
      cat "$work/gw.$1.log" >&2
      echo "errors or non-2xx answers" >&2
      exit 1
    fi
    n="$(awk '/requests in/ {print $1}' <<<"$wrk_out")"
  fi
  kill -INT "$pid"
  wait "$pid" || true
  # "requests Ir [other events...]"
  echo "$n $(grep -E '^(summary|totals):' "$out" | head -1 | cut -d' ' -f2-)"
}

read -r _ idle idle_rest < <(run 0)
read -r n total total_rest < <(run 1)
if [[ -n "$OUT" ]]; then
  mkdir -p "$OUT"
  cp "$work/cg.1" "$OUT/callgrind.$CONFIG.out"
  cp "$work/cg.0" "$OUT/callgrind.$CONFIG.idle.out"
fi
# wrk counts the answers it received; the requests still in flight when it stops (up to one
# per connection) were handled too. With many connections, divide by the handled requests
# (calls of the gateway's request handler, from the callgrind file) instead.
handled="$(python3 - "$work/cg.1" <<'PY'
import re, sys
names, calls, want = {}, 0, False
for line in open(sys.argv[1], errors="replace"):
    # A compressed name is defined where it first appears, in an fn= or a cfn= line.
    if line.startswith("fn="):
        m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if m and m.group(2) is not None:
            names[m.group(1)] = m.group(2)
    elif line.startswith("cfn="):
        m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        want = names.get(m.group(1), "").startswith("bw::gateway::handle_request(bw::gateway::Shared&")
    elif want and line.startswith("calls="):
        calls += int(line.split()[0][6:])
        want = False
print(calls)
PY
)"
echo "$CONFIG ($bin, $("$bin" --version 2>/dev/null || echo 'no --version')): requests=$n total=$total idle=$idle per_request=$(((total - idle) / n))" \
  "handled=$handled per_handled=$(((total - idle) / (handled > 0 ? handled : 1)))"
if [[ "$CACHE_SIM" == 1 ]]; then
  n="$handled"
  events="$(grep -E '^events:' "$work/cg.1" | head -1 | cut -d' ' -f2-)"
  # Per handled request, each event: (loaded - idle) / handled.
  awk -v ev="$events" -v a="$idle $idle_rest" -v b="$total $total_rest" -v n="$n" -v c="$CONNS" \
    'BEGIN { split(ev, e, " "); split(a, x, " "); split(b, y, " "); line = "per_request c" c ":";
             for (i = 1; i in e; i++) line = line sprintf(" %s=%.1f", e[i], (y[i] - x[i]) / n);
             print line }'
fi
