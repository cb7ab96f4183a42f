#!/usr/bin/env bash
# Start-up and spend-report time of the gateway on a large ledger (make one with make_ledger.py).
# usage: flock -o /tmp/bw-machine.lock bench/ledger/measure.sh BELLWETHER DB [PERIOD]
#   PERIOD: the period of the one global budget (monthly: the rebuild reads this month's rows;
#   total: every row). Prints the seconds from exec to a listening port, then the time of
#   /admin/spend over everything (by key, by day) and over the last day and week.
set -euo pipefail
BW=$1
DB=$2
PERIOD=${3:-monthly}
ADMIN=admin-key-ledger-0123456789abcdef
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cat > "$DIR/cfg.yaml" <<Y
workers: 2
admin:
  key: $ADMIN
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
model_groups:
  gpt-4.1:
    deployments: [{provider: up, model: gpt-4.1}]
pricing:
  gpt-4.1: {input: 2, output: 8}
budgets:
  global: {cap_usd: 1000000, period: $PERIOD}
ledger: {path: $DB}
Y
PORT=$((20000 + RANDOM % 20000))
t0=$(date +%s.%N)
"$BW" serve -c "$DIR/cfg.yaml" --listen 127.0.0.1:$PORT > "$DIR/serve.log" 2>&1 &
PID=$!
until (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do
  kill -0 $PID 2>/dev/null || { cat "$DIR/serve.log"; exit 1; }
  sleep 0.005
done
t1=$(date +%s.%N)
echo "start-up to listening: $(echo "$t1 - $t0" | bc) s"
NOW=$(($(date +%s) * 1000))
for q in "group=key" "group=day" "group=model&from=$((NOW - 86400000))" \
  "group=key&from=$((NOW - 7 * 86400000))"; do
  curl -s -o /dev/null -w "/admin/spend?$q: %{http_code} in %{time_total} s\n" \
    -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$PORT/admin/spend?$q"
done
kill $PID
wait $PID 2>/dev/null || true
