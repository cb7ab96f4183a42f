#!/usr/bin/env bash
# The spike benchmark of docs/spike-benchmark.md: `bellwether bench compare` with the default
# spike (500/min -> 15,000/min in 90 s, held 60 s, back down), time-compressed (rates kept), the
# 10/60/30 P0/P1/P2 mix, against simulated provider accounts whose binding limit is their RPM
# tier (bench/compare/sim.yaml), with DEPLOYMENTS accounts per side:
#   - direct 3x: an application spreading its calls round robin over the accounts, its SDK
#     retrying 429s with exponential backoff that honours Retry-After (3 attempts);
#   - direct 1x: the same without client retries;
#   - gateway: through `bellwether serve` (bench/compare/gateway.yaml, one deployment per
#     account), the client using the same SDK defaults (3 attempts);
#   - gateway unloaded: a short constant low-rate P0 run through the gateway, the reference for
#     "P0 p99 loaded / unloaded".
#
#   bench/compare/run.sh                         # 2 deployments, spike compressed 2x
#   DEPLOYMENTS=1 bench/compare/run.sh           # one account
#   COMPRESS=1 bench/compare/run.sh              # the full 240 s spike per run
#   SKIP_BUILD=1 BUILD_DIR=... run.sh            # use an existing build
#   run.sh --seed 7                              # extra flags go to `bellwether bench compare`
#
# Output in bench/results/compare-<UTC date>-<N>dep/: table.txt (stdout), compare.json,
# compare.html, and run/ (rendered configs, process logs). Loopback only; nothing outside the repo
# is touched. About 8 minutes at COMPRESS=2.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build-sdk-rel}
COMPRESS=${COMPRESS:-2}
DEPLOYMENTS=${DEPLOYMENTS:-2}
OUT=${OUT:-$ROOT/bench/results/compare-$(date -u +%Y-%m-%d)-${DEPLOYMENTS}dep}

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
  echo "# bench/compare/run.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, compress $COMPRESS," \
    "$DEPLOYMENTS deployment(s)"
} >"$OUT/table.txt"

"$BIN" bench compare \
  --bellwether "$BIN" \
  --sim-config "$ROOT/bench/compare/sim.yaml" \
  --gateway-config "$ROOT/bench/compare/gateway.yaml" \
  --api-key sk-bench-compare-000001 \
  --deployments "$DEPLOYMENTS" \
  --profile spike --compress "$COMPRESS" \
  --models gpt-4o-mini --priority-mix 10/60/30 --prompt-bytes 256,2048 \
  --max-tokens 32 --timeout 60 --drain 30 --max-in-flight 5000 \
  --client-attempts 3 --direct-attempts 3,1 \
  --baseline-rate 1200 --baseline-duration 30 \
  --price gpt-4o-mini=0.15:0.60 --budget-usd 5 \
  --out-dir "$OUT/run" --json "$OUT/compare.json" --html "$OUT/compare.html" \
  "$@" | tee -a "$OUT/table.txt"
echo "reports: $OUT/table.txt $OUT/compare.json $OUT/compare.html" >&2
