# Shared helpers of the load scripts in bench/load (sourced, not run). Loopback only.

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits up to 10 s until something accepts connections on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# Creates $work (a temp dir named after $1) and $pids; on exit every pid in $pids, or recorded
# with track_pid, is stopped and $work removed.
start_workdir() {
  work="$(mktemp -d "/tmp/bw-$1.XXXXXX")"
  pids=()
  trap 'all=("${pids[@]}" $(cat "$work/.pids" 2>/dev/null || true))
        for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
        for p in "${all[@]}"; do wait "$p" 2>/dev/null || true; done
        rm -rf "$work"' EXIT
}

# Records a background pid for the exit cleanup; works from subshells such as $(...), where an
# append to $pids would be lost.
track_pid() {
  pids+=("$1")
  echo "$1" >>"$work/.pids"
}

# The production policy of a gateway config (the part after listen/providers/model_groups/
# pricing), shared by isolated.sh and callgrind.sh: rps/rpm/tpm/daily limits on the key's plan,
# high enough never to refuse, a per-key and a global budget high enough never to run out, the
# SQLite ledger and the access log to a file. Every request still pays for the checks, the
# reservation, the ledger rows and the log line.
# Usage: prod_policy_yaml KEY ACCESS_LOG LEDGER_DB [DURABILITY]
#   env LEASE=0: budget leases off, LEASE=1: on (budgets.lease, docs/cost-guard.md); unset: the
#   binary's default (on since leases became the default)
prod_policy_yaml() {
  local lease=""
  case "${LEASE:-}" in
    0) lease="  lease: {enabled: false}" ;;
    1) lease="  lease: {enabled: true}" ;;
  esac
  cat <<YAML
access_log: {path: "$2"}
budgets:
  global: {cap_usd: 100000000, period: monthly}
${lease}
ledger: {path: "$3"${4:+, durability: $4}}
plans:
  prod:
    daily_requests: 1000000000
    limits:
      - {name: rps, unit: requests, rate: 1000000, period: second}
      - {name: rpm, unit: requests, rate: 60000000, period: minute}
      - {name: tpm, unit: tokens, rate: 1000000000000, period: minute}
keys:
  - {name: bench, key: $1, plan: prod, tenant: acme, budget: {cap_usd: 100000000, period: total}}
YAML
}

# The auth-only policy: one key on a plan without limits, no budgets, no ledger, access log off.
# Usage: auth_policy_yaml KEY
auth_policy_yaml() {
  cat <<YAML
access_log: {path: "off"}
plans:
  none: {limits: []}
keys:
  - {name: bench, key: $1, plan: none}
YAML
}

# wrk latency figure ("812.00us", "1.23ms", "2.01s") in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# The median of numbers on stdin (separated by spaces or newlines).
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# CPU ticks (utime + stime) of a process (all its threads) and its direct children.
proc_ticks() {
  local x sum=0
  for x in $1 $(pgrep -P "$1" | tr '\n' ' '); do
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$x/stat")))
  done
  echo "$sum"
}
tick_hz="$(getconf CLK_TCK)"

# Stops the script if a wrk run saw socket errors or non-2xx answers: $1 its output, $2 what ran
# (for the error).
wrk_check() {
  if grep -qE 'Non-2xx|Socket errors' <<<"$1"; then
    echo "$1" >&2
    echo "$2: errors or non-2xx answers" >&2
    exit 1
  fi
}

# The figures of one `wrk --latency` run: $1 its output, $2 the server's CPU ticks over the run,
# $3 what ran (for the error). Sets n, rps, p50 and p99 (ms) and cpu (µs per request); stops the
# script if wrk saw socket errors or non-2xx answers.
wrk_figures() {
  wrk_check "$1" "$3"
  n="$(awk '/requests in/ {print $1}' <<<"$1")"
  cpu="$(awk -v d="$2" -v hz="$tick_hz" -v n="$n" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')"
  rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$1")"
  p50="$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$1")")"
  p99="$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$1")")"
}

# ---- the isolated method's fixed-answer upstream (bench/load/isolated.sh, docs/benchmarks.md) ----

# The upstream's fixed answers. The completion is a realistic ~820-byte chat.completion; the
# stream is 6 events (role, 3 deltas, finish + usage, [DONE]), one write.
completion='{"id":"chatcmpl-9f3b2c7d1e8a4b6c9d0e1f2a3b4c5d6e","object":"chat.completion","created":1733390000,"model":"bench","system_fingerprint":"fp_6b68a8204b","choices":[{"index":0,"message":{"role":"assistant","content":"Thanks for the order number. Order 48213-77 has not left the warehouse yet: the label was created but the parcel was never handed to the carrier. You can cancel it now from the Orders page, and the refund goes back to the card you paid with within three to five working days. The boots do come in a wide fit; choose Wide in the size menu when you order again.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":250,"completion_tokens":82,"total_tokens":332,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}'
chunk() {
  printf 'data: {"id":"chatcmpl-9f3b2c7d1e8a","object":"chat.completion.chunk","created":1733390000,"model":"bench","choices":[{"index":0,"delta":%s,"finish_reason":%s}]%s}\n\n' "$1" "$2" "${3:-}"
}
stream="$(
  chunk '{"role":"assistant","content":""}' null
  chunk '{"content":"Order 48213-77"}' null
  chunk '{"content":" has not left"}' null
  chunk '{"content":" the warehouse yet."}' null
  chunk '{}' '"stop"' ',"usage":{"prompt_tokens":250,"completion_tokens":12,"total_tokens":262}'
  printf 'data: [DONE]\n\n'
)"
# nginx string literals: escape backslashes and single quotes; newlines stay as they are (the
# stream's last two are written as \n\n: command substitution drops trailing newlines).
ngx_quote() { sed -e "s/\\\\/\\\\\\\\/g" -e "s/'/\\\\'/g" <<<"$1"; }

nginx_conf() {  # $1 dir, $2 body of the http block
  mkdir -p "$1"
  cat >"$1/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
  keepalive_requests 1000000;
$2
}
NGINX
}

# Writes the fixed-answer upstream's nginx.conf into $1 (listening on 127.0.0.1:$2):
# /v1/chat/completions answers the completion, /sse/v1/chat/completions the stream.
fixed_upstream_conf() {
  local up_port="$2"
  nginx_conf "$1" "  server {
      listen 127.0.0.1:$up_port backlog=4096;
      location = /v1/chat/completions {
        default_type application/json;
        return 200 '$(ngx_quote "$completion")';
      }
      location = /sse/v1/chat/completions {
        default_type text/event-stream;
        return 200 '$(ngx_quote "$stream")\n\n';
      }
    }"
}

# The start of a gateway config in front of the fixed-answer upstream on 127.0.0.1:$2, listening
# on 127.0.0.1:$1 with one worker: model bench gets the completion, bench-sse the stream. A policy
# (auth_policy_yaml or prod_policy_yaml) completes it.
fixed_upstream_gateway_yaml() {
  cat <<YAML
listen: 127.0.0.1:$1
workers: 1
providers:
  up: {base_url: "http://127.0.0.1:$2/v1"}
  upsse: {base_url: "http://127.0.0.1:$2/sse/v1"}
model_groups:
  bench:
    deployments: [{provider: up, model: bench}]
  bench-sse:
    deployments: [{provider: upsse, model: bench}]
pricing:
  bench: {input: 0.10, output: 0.40}
  bench-sse: {input: 0.10, output: 0.40}
YAML
}

# Writes the reference nginx's config into $1: listens on 127.0.0.1:$2 and proxies to the upstream
# on 127.0.0.1:$3 with a keep-alive pool (/sse/ unbuffered).
nginx_proxy_conf() {
  nginx_conf "$1" "  upstream up {
      server 127.0.0.1:$3;
      keepalive 512;
    }
    server {
      listen 127.0.0.1:$2 backlog=4096;
      location / {
        proxy_pass http://up;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
      }
      location /sse/ {
        proxy_pass http://up;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        proxy_buffering off;
      }
    }"
}

# Starts nginx ($NGINX, default /usr/sbin/nginx) with the config in dir $2 pinned to cpu $1, in
# the background (tracked for the exit cleanup); sets nginx_pid.
start_nginx() {
  taskset -c "$1" "${NGINX:-/usr/sbin/nginx}" -p "$2" -e "$2/error.log" -c "$2/nginx.conf" \
    >"$2.out" 2>&1 &
  nginx_pid=$!
  track_pid "$nginx_pid"
}
