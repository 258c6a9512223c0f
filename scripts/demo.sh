#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and starts the OpenAI-compatible
# server on the embedded demo model (models/demo) at http://127.0.0.1:8000. Extra arguments go
# to `clawmine serve` (e.g. --port 9000, --model DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh >/dev/null
exec build/clawmine serve "$@"
