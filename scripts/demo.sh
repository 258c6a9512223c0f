#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs clawmine on the
# bundled demo model. (Until the server lands this prints the model summary; see README.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh >/dev/null
exec build/clawmine info --model tests/fixtures/models/tiny-a "$@"
