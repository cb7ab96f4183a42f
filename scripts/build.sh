#!/usr/bin/env bash
# Configures and builds a preset (default: release) with every core in use; ccache makes
# rebuilds fast. Usage: scripts/build.sh [preset] [cmake --build args...]
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
shift || true
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j"$(nproc)" "$@"
