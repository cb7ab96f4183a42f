#!/usr/bin/env bash
# Installs every Debian package Bellwether needs to build, test and benchmark.
# Skips apt entirely when everything is already present, so a warm CI run starts at once.
set -euo pipefail

PACKAGES=(
  build-essential g++ cmake ninja-build ccache pkg-config git curl python3
  libboost1.81-dev libboost-system1.81-dev libboost-json1.81-dev
  libssl-dev libsimdjson-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libhiredis-dev libsqlite3-dev sqlite3 libpq-dev libhnswlib-dev zlib1g-dev
  redis-server postgresql prometheus wrk nginx-light clang-format
  chromium nodejs
)

# The console's browser tests drive the system Chromium with playwright-core, installed by name
# into tests/ui/browser (package.json + lock); the official OpenAI and Anthropic SDKs are installed
# into tests/sdk. Without node/npm those tests skip.
install_browser_test_deps() {
  local root dir
  root="$(cd "$(dirname "$0")/.." && pwd)"
  dir="$root/tests/ui/browser"
  if command -v npm >/dev/null 2>&1 && [ ! -d "$dir/node_modules/playwright-core" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) ||
      echo "install-deps: npm ci in tests/ui/browser failed; the console's browser tests will skip"
  fi
  if command -v npm >/dev/null 2>&1; then
    bash "$root/scripts/install-node-deps.sh" ||
      echo "install-deps: npm ci in tests/sdk failed; the SDK tests will fail"
  fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  install_browser_test_deps
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install; the project starts its own on free ports.
for svc in redis-server nginx prometheus postgresql; do
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
install_browser_test_deps
echo "install-deps: done"
