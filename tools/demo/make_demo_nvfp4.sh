#!/usr/bin/env bash
# Writes models/demo-nvfp4 (git-ignored, ~18 MB) from models/demo with the project's own quantizer:
# routed experts NVFP4 with input_scales calibrated on 2,048 ids of training text. The output is
# byte-for-byte reproducible. Kept out of git so the tracked tree stays under the 64 MiB that a
# GPU-machine call can carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x build/clawmine ] || scripts/build.sh >/dev/null
build/clawmine quantize --model models/demo --out models/demo-nvfp4 --scheme nvfp4-experts \
  --calib tests/fixtures/demo/calib_ids.json
