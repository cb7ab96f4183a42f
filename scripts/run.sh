#!/usr/bin/env bash
# Command 1: install what is missing, build, and run the gateway with its embedded default
# (simulated providers in process, in-process state). Extra arguments go to `bellwether serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh release --target bellwether
exec build/release/bellwether serve "$@"
