#!/usr/bin/env bash
# Installs the Node packages of the SDK tests (tests/sdk) from their lock file, by name from the
# npm registry npm is configured with. Skips npm when node_modules already matches the lock.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../tests/sdk" && pwd)"
if [ -f "$dir/node_modules/.package-lock.json" ] &&
   [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
  echo "install-node-deps: up to date"
  exit 0
fi
cd "$dir"
npm ci --no-audit --no-fund --loglevel=error
echo "install-node-deps: done"
