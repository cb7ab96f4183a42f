#!/usr/bin/env bash
# Command 1: install what is missing, build, and run the gateway with its embedded default
# (simulated providers in process, in-process state). Extra arguments go to `bellwether serve`.
# The binary is the profile-guided build (scripts/pgo-build.sh, docs/building.md): an
# instrumented build, ~40 s of training traffic on loopback, then the optimised build. If any of
# it fails, the plain release build runs instead. BW_PGO=off skips it: the plain release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if [[ "${BW_PGO:-on}" != off ]]; then
  if bash scripts/pgo-build.sh; then
    exec build/pgo/bellwether serve "$@"
  fi
  echo "run: the profile-guided build failed (above); building and running the plain release build" >&2
fi
bash scripts/build.sh release --target bellwether
exec build/release/bellwether serve "$@"
