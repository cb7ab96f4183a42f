#!/usr/bin/env bash
# The spike benchmark of docs/spike-benchmark.md: `bellwether bench compare` with the default
# spike (500/min -> 15,000/min in 90 s, held 60 s, back down), time-compressed (rates kept), the
# 10/60/30 P0/P1/P2 mix and a 70/30 gpt-4o-mini/gpt-4o mix, run (a) directly against a simulated
# provider with provider-like limits and (b) through the gateway in front of an identical one.
#
#   bench/compare/run.sh                    # Release build in build-sdk-rel, then the run
#   COMPRESS=1 bench/compare/run.sh         # the full 240 s spike per side
#   SKIP_BUILD=1 BUILD_DIR=... run.sh       # use an existing build
#   run.sh --seed 7                         # extra flags go to `bellwether bench compare`
#
# Output in bench/results/compare-<UTC date>/: table.txt (stdout), compare.json, compare.html,
# and run/ (rendered configs, process logs). Loopback only; nothing outside the repo is touched.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build-sdk-rel}
COMPRESS=${COMPRESS:-3}
OUT=${OUT:-$ROOT/bench/results/compare-$(date -u +%Y-%m-%d)}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  # Warnings are CI's business (BW_WERROR there); a benchmark build should not stop on a new GCC
  # -O3 false positive.
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBW_BUILD_TESTS=OFF -DBW_BUILD_BENCH=OFF -DBW_WERROR=OFF >/dev/null
  cmake --build "$BUILD_DIR" -j2 --target bellwether
fi
BIN=$BUILD_DIR/bellwether
mkdir -p "$OUT/run"

{
  echo "# bench/compare/run.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, compress $COMPRESS"
} >"$OUT/table.txt"

"$BIN" bench compare \
  --bellwether "$BIN" \
  --sim-config "$ROOT/bench/compare/sim.yaml" \
  --gateway-config "$ROOT/bench/compare/gateway.yaml" \
  --api-key sk-bench-compare-000001 \
  --profile spike --compress "$COMPRESS" \
  --models gpt-4o-mini:0.7,gpt-4o:0.3 --priority-mix 10/60/30 --prompt-bytes 256,2048 \
  --max-tokens 64 --timeout 60 --drain 20 \
  --price gpt-4o-mini=0.15:0.60 --price gpt-4o=2.5:10 --budget-usd 5 \
  --out-dir "$OUT/run" --json "$OUT/compare.json" --html "$OUT/compare.html" \
  "$@" | tee -a "$OUT/table.txt"
echo "reports: $OUT/table.txt $OUT/compare.json $OUT/compare.html" >&2
