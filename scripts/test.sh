#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test suite.
# GPU tests (ctest label `gpu`) skip cleanly on machines without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
