#!/usr/bin/env bash
# Command 2: install what is missing, build everything, and run the whole test suite (unit and
# integration tests; integration tests start their own simulator, gateway, redis-server,
# postgres and prometheus processes on free loopback ports and stop them after).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh release
ctest --preset release -j2 --timeout 600
# The training traffic of scripts/run.sh's profile-guided build (docs/building.md), briefly,
# against the release binary: it fails on any answer the training does not expect, which would
# make scripts/run.sh fall back to the plain build.
TRAIN_SECONDS=1 bash scripts/pgo-train.sh build/release/bellwether
