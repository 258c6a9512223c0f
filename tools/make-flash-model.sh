#!/usr/bin/env bash
# A random-weight DeepSeek V4 checkpoint with V4-Flash geometry (43 layers, hidden 4096, all three
# attention kinds, 64 routed experts of width 2048) written into OUT_DIR by the built
# clawmine-random-model (docs/FIXTURES.md, "Random models at real geometry"). Builds nothing.
#   tools/make-flash-model.sh OUT_DIR [release|nvfp4] [more clawmine-random-model flags, e.g. --seed 3 --force]
# release: 45.6 GB (FP8 block + MXFP4 experts); nvfp4: 47.7 GB (ModelOpt NVFP4 experts).
# CLAWMINE_RANDOM_MODEL=/path/to/clawmine-random-model overrides build/clawmine-random-model.
# CLAWMINE_TOKENIZER_DIR=DIR copies DIR's tokenizer.json and tokenizer_config.json into OUT_DIR, so
# that `clawmine serve` can serve the model (bench/serve_throughput.py); make DIR where node is,
# with `node tools/tokenizer/make_v4_tokenizer.js DIR` (DeepSeek V4's vocabulary: 129280 ids).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [release|nvfp4] [clawmine-random-model flags...]" >&2
  exit 2
fi
out="$1"
layout="${2:-release}"
shift $(( $# >= 2 ? 2 : 1 ))
bin="${CLAWMINE_RANDOM_MODEL:-$root/build/clawmine-random-model}"
if [ ! -x "$bin" ]; then
  echo "error: $bin not found; build it first (scripts/build.sh, or ninja -C build clawmine-random-model)" >&2
  exit 1
fi
"$bin" --geometry flash --layout "$layout" --out "$out" "$@"
if [ -n "${CLAWMINE_TOKENIZER_DIR:-}" ]; then
  cp "$CLAWMINE_TOKENIZER_DIR/tokenizer.json" "$CLAWMINE_TOKENIZER_DIR/tokenizer_config.json" "$out/"
fi
