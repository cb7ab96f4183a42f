#!/usr/bin/env bash
# The training run of the profile-guided build (docs/building.md): drives an instrumented
# bellwether (preset pgo-gen) with the traffic the optimised build is tuned for, then stops it
# with SIGINT so that it writes its profile (.gcda files next to the instrumented build's objects).
#
# Traffic, all on loopback, in front of the fixed-answer nginx upstream of bench/load/isolated.sh
# (or, without nginx, the instrumented binary's own zero-latency simulator):
#   - the benchmark's configs (bench/load/lib.sh): auth only and the production policy (limits,
#     budgets with leases, SQLite ledger, access log), ~1 KB chat requests from wrk at 64
#     connections, the production config also at 256; the SSE stream through the auth config;
#   - the other client APIs (/v1/messages, streamed too) and a few errors
#     (unknown key, unknown model, malformed JSON), so those paths are not laid out as cold code;
#   - the embedded default of `bellwether serve` (scripts/run.sh): a few requests to each of its
#     simulated models (OpenAI, Anthropic and Gemini adapters), chat, messages and responses.
# Bounded: about 6 x TRAIN_SECONDS plus start-up and drain (~40 s with the default 5).
# Usage: scripts/pgo-train.sh path/to/instrumented/bellwether
#   env: TRAIN_SECONDS=5 (the main wrk runs; the others run a fifth of it, at least 1 s)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
load="$root/bench/load"
bin="$(realpath "${1:?usage: scripts/pgo-train.sh path/to/instrumented/bellwether}")"
TRAIN_SECONDS="${TRAIN_SECONDS:-5}"
short=$((TRAIN_SECONDS / 5 > 0 ? TRAIN_SECONDS / 5 : 1))
KEY=sk-pgo-train-0001
NGINX="${NGINX:-/usr/sbin/nginx}"

[[ -x "$bin" ]] || { echo "pgo-train: no instrumented binary at $bin" >&2; exit 2; }
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "pgo-train: $tool is not installed" >&2; exit 2; }
done

# shellcheck source=bench/load/lib.sh
source "$load/lib.sh"
start_workdir pgo-train
cpus="0-$(($(nproc) - 1))"

# The upstream: the fixed-answer nginx, or the simulator with the same two routes' shapes.
up_port="$(free_port)"
if [[ -x "$NGINX" ]]; then
  fixed_upstream_conf "$work/upstream" "$up_port"
  start_nginx "$cpus" "$work/upstream"
  wait_port "$up_port" || { cat "$work/upstream.out" "$work/upstream/error.log" >&2; exit 1; }
  sse_model=bench-sse
else
  echo "pgo-train: no nginx at $NGINX; training against the simulator" >&2
  printf 'sim:\n  workers: 1\n  zero_latency: true\n  max_tokens: limit\n  defaults: {completion_tokens: 3}\n' \
    >"$work/sim.yaml"
  "$bin" sim --config "$work/sim.yaml" --listen "127.0.0.1:$up_port" >"$work/sim.log" 2>&1 &
  track_pid $!
  wait_port "$up_port" || { cat "$work/sim.log" >&2; exit 1; }
  sse_model=bench
fi

# Starts `bellwether serve` with the config in $1 (log $1.log); sets gw_pid.
start_gateway() {
  "$bin" serve --config "$1" >"$1.log" 2>&1 &
  gw_pid=$!
  track_pid "$gw_pid"
}
# Stops a gateway with SIGINT (it drains and writes its profile) and waits for it.
stop_gateway() {
  kill -INT "$1"
  wait "$1" || { echo "pgo-train: gateway $1 did not stop cleanly" >&2; return 1; }
}

# wrk with the arguments after $1, stopping the training on socket errors or non-2xx answers
# (wrk_check); prints the requests it made, with $1 saying what ran.
drive() {
  local what="$1" out
  shift
  out="$(wrk "$@")"
  wrk_check "$out" "pgo-train: $what"
  echo "pgo-train: $(awk '/requests in/ {print $1}' <<<"$out") requests, $what"
}
# wrk for $1 s at $2 connections against $3, with the chat request (model $4, "1" to stream).
drive_chat() {
  drive "$4${5:+ stream=$5}, c$2, $3" -t2 -c"$2" -d"$1s" --timeout 10s \
    -s "$load/isolated_chat.lua" "$3" -- "$KEY" "$4" "${5:-0}"
}
# wrk for $short s at 8 connections: POST the body file $3 to $1 with the key in header $2.
drive_post() {
  drive "$(basename "$3"), $1" -t1 -c8 -d"${short}s" --timeout 10s -s "$load/pgo_post.lua" "$1" \
    -- "$2" "$KEY" "$3"
}
# One request; $1 the expected status, then curl's arguments.
expect() {
  local want="$1" got
  shift
  got="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@")"
  [[ "$got" == "$want" ]] || { echo "pgo-train: $* answered $got, not $want" >&2; return 1; }
}

auth_port="$(free_port)"
prod_port="$(free_port)"
{
  fixed_upstream_gateway_yaml "$auth_port" "$up_port"
  auth_policy_yaml "$KEY"
} >"$work/auth.yaml"
mkdir -p "$work/db"
{
  fixed_upstream_gateway_yaml "$prod_port" "$up_port"
  prod_policy_yaml "$KEY" "$work/access.log" "$work/db/ledger.db"
} >"$work/prod.yaml"
if [[ ! -x "$NGINX" ]]; then
  # The simulator has no /sse/ route: both groups go to /v1 (the request asks for the stream).
  sed -i 's|/sse/v1|/v1|' "$work/auth.yaml" "$work/prod.yaml"
fi

# Bodies of the Messages API (translated to the upstream's chat API; the Responses API goes to an
# OpenAI upstream as it is, which the fixed-answer upstream does not serve: it is trained on the
# embedded default below).
body='"max_tokens":128,"messages":[{"role":"user","content":"Hello there. Where is order 48213-77?"}]'
printf '{"model":"bench",%s}' "$body" >"$work/messages.json"
printf '{"model":"bench","stream":true,%s}' "$body" >"$work/messages-stream.json"

# Auth only: chat (buffered and streamed), the other APIs, errors.
start_gateway "$work/auth.yaml"
auth_pid=$gw_pid
wait_port "$auth_port" || { cat "$work/auth.yaml.log" >&2; exit 1; }
url="http://127.0.0.1:$auth_port"
drive_chat "$TRAIN_SECONDS" 64 "$url/v1/chat/completions" bench
drive_chat "$TRAIN_SECONDS" 64 "$url/v1/chat/completions" "$sse_model" 1
drive_post "$url/v1/messages" x-api-key "$work/messages.json"
drive_post "$url/v1/messages" x-api-key "$work/messages-stream.json"
for _ in 1 2 3; do
  expect 401 -H 'Authorization: Bearer sk-unknown' -d @"$work/messages.json" "$url/v1/chat/completions"
  expect 404 -H "Authorization: Bearer $KEY" -d '{"model":"nope","messages":[{"role":"user","content":"Hi"}]}' \
    "$url/v1/chat/completions"
  expect 400 -H "Authorization: Bearer $KEY" -d '{"model":"bench","messages":[' "$url/v1/chat/completions"
  expect 200 -H "Authorization: Bearer $KEY" "$url/v1/models"
  expect 200 "$url/metrics"
done
stop_gateway "$auth_pid"

# The production policy, at 64 and 256 connections.
start_gateway "$work/prod.yaml"
prod_pid=$gw_pid
wait_port "$prod_port" || { cat "$work/prod.yaml.log" >&2; exit 1; }
url="http://127.0.0.1:$prod_port"
drive_chat "$TRAIN_SECONDS" 64 "$url/v1/chat/completions" bench
drive_chat "$short" 256 "$url/v1/chat/completions" bench
drive_post "$url/v1/messages" x-api-key "$work/messages.json"
stop_gateway "$prod_pid"

# The embedded default (what scripts/run.sh serves): each simulated model, buffered and streamed.
# It runs in the work directory: its ledger (bellwether.db) is relative to the current one.
def_port="$(free_port)"
(cd "$work" && BELLWETHER_DEMO_KEY="$KEY" BELLWETHER_ADMIN_KEY=bw-admin-pgo-train-0123456789 \
  exec "$bin" serve --listen "127.0.0.1:$def_port" >"$work/default.log" 2>&1) &
def_pid=$!
track_pid "$def_pid"
wait_port "$def_port" || { cat "$work/default.log" >&2; exit 1; }
url="http://127.0.0.1:$def_port"
# The simulated models answer with a realistic latency: the four run at once.
train_default_model() {
  local model="$1"
  for stream in false true; do
    for _ in 1 2 3; do
      expect 200 -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "{\"model\":\"$model\",\"stream\":$stream,\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}" \
        "$url/v1/chat/completions"
    done
  done
  expect 200 -H "x-api-key: $KEY" -H 'Content-Type: application/json' \
    -d "{\"model\":\"$model\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}" \
    "$url/v1/messages"
  for stream in false true; do
    expect 200 -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
      -d "{\"model\":\"$model\",\"input\":\"Hello\",\"max_output_tokens\":16,\"stream\":$stream}" \
      "$url/v1/responses"
  done
}
model_pids=()
for model in gpt-4.1 claude-sonnet-4.5 gemini-2.5-flash deepseek-v3.2; do
  train_default_model "$model" &
  model_pids+=($!)
done
for p in "${model_pids[@]}"; do
  wait "$p"
done
stop_gateway "$def_pid"
echo "pgo-train: done"
