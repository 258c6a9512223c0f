#!/usr/bin/env bash
# Regenerates the quantized tiny fixtures (tests/fixtures/models/tiny-{a,b}-<layout>/) from the
# BF16 tiny-a / tiny-b with the built `clawmine quantize`. Goldens for them come from
# tools/reference/quant_goldens.py on the GPU machine (docs/FIXTURES.md, "Quantized fixtures").
#   tools/reference/make_quant_fixtures.sh [path/to/clawmine]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/build/clawmine}"
models="$root/tests/fixtures/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

q() { "$bin" quantize --threads 2 "$@"; }

# MXFP4 needs in_features % 32 == 0; the tiny models' down projections have in = 16, so the
# release-layout fixture starts from tiny-a with the experts widened to moe_intermediate_size 32.
python3 "$root/tools/reference/widen_experts.py" "$models/tiny-a" "$tmp/tiny-a-i32" --inter 32 --seed 4242
q --model "$tmp/tiny-a-i32" --out "$models/tiny-a-mxfp4" --scheme mxfp4-experts
q --model "$models/tiny-a" --out "$models/tiny-a-nvfp4-experts" --scheme nvfp4-experts
q --model "$models/tiny-a" --out "$models/tiny-a-fp8" --scheme fp8-block
q --model "$models/tiny-b" --out "$models/tiny-b-nvfp4-all-fused" --scheme nvfp4-all --fuse-wqa-wkv
q --model "$models/tiny-b" --out "$models/tiny-b-nvfp4-w4a16" --scheme nvfp4-w4a16
# The seed's scenario: NVFP4 attention with fused wq_a|wkv and static input scales ~33x too small
# (experts calibrated correctly).
q --model "$models/tiny-b" --out "$models/tiny-b-seed" --scheme nvfp4-all --fuse-wqa-wkv \
  --input-scale-mult 0.03 --input-scale-mult-modules 'layers.*.attn.*'
