#!/usr/bin/env bash
# The gateway side of bench/compare/run.sh once more, with `bellwether bench` against a gateway and
# simulator that this script starts itself, so that the simulator's /sim/stats and the gateway's
# /metrics can be read afterwards (`bench compare` stops its processes at the end). Run from the
# repository root after run.sh; writes into bench/results/compare-<date>/gateway-only-check/.
set -euo pipefail
BIN=${BIN:-build-sdk-rel/bellwether}
OUT=${OUT:-bench/results/compare-$(date -u +%Y-%m-%d)/gateway-only-check}
SP=${SIM_PORT:-47811}; GP=${GATEWAY_PORT:-47812}
mkdir -p "$OUT"
sed -e "s#{{SIM_PORT}}#$SP#g" -e "s#{{SIM_URL}}#http://127.0.0.1:$SP#g" bench/compare/sim.yaml >"$OUT/sim.yaml"
sed -e "s#{{SIM_PORT}}#$SP#g" -e "s#{{SIM_URL}}#http://127.0.0.1:$SP#g" -e "s#{{GATEWAY_PORT}}#$GP#g" \
  bench/compare/gateway.yaml >"$OUT/gateway.yaml"
"$BIN" sim --config "$OUT/sim.yaml" --listen 127.0.0.1:$SP >"$OUT/sim.log" 2>&1 & SIMPID=$!
"$BIN" serve --config "$OUT/gateway.yaml" >"$OUT/gateway.log" 2>&1 & GWPID=$!
trap 'kill $GWPID $SIMPID 2>/dev/null || true' EXIT
sleep 1.5
"$BIN" bench --url http://127.0.0.1:$GP --queue-url http://127.0.0.1:$GP \
  --api-key sk-bench-compare-000001 --name gateway --profile spike --compress 3 \
  --models gpt-4o-mini:0.7,gpt-4o:0.3 --priority-mix 10/60/30 --prompt-bytes 256,2048 \
  --max-tokens 64 --timeout 60 --drain 20 --price gpt-4o-mini=0.15:0.60 --price gpt-4o=2.5:10 \
  --budget-usd 5 >"$OUT/table.txt"
curl -s http://127.0.0.1:$SP/sim/stats >"$OUT/sim-stats.json"
curl -s http://127.0.0.1:$GP/metrics |
  grep -E '^bellwether_(shed_total|queue_timeouts_total|requests_total|upstream_requests_total)' |
  grep -v ' 0$' >"$OUT/gateway-metrics.txt"
