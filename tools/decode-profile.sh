#!/usr/bin/env bash
# Where a decode step's kernel time goes (issue 9's per-kernel table), in one device call: a small
# V4-Flash-geometry model (6 layers: 2 sliding, 2 CSA, 2 HCA; release layout unless
# DECODE_PROFILE_LAYOUT), `clawmine bench` under ncu (gpu__time_duration.sum and
# dram__bytes_read.sum per kernel, clocks not locked, kernels serialized, caches flushed before each),
# then tools/decode_profile.py: the last decode step by kind and by kernel, and in launch order with
# streams, each with its DRAM bytes and rate (a GEMV's achieved bandwidth). Builds nothing: run after tools/gpu-check.sh's build
# phase (or any build of clawmine and clawmine-random-model in BUILD_DIR).
#
#   device tool: run(command="GPU_CHECK_PHASES=build bash tools/gpu-check.sh >/dev/null; OUT=$OUT bash tools/decode-profile.sh",
#                    carry=[".devdeps"])
#
# Environment: BUILD_DIR (default build-gpu), OUT (default .out/decode-profile: ncu.csv.gz and
# profile.md), DECODE_PROFILE_LAYOUT (release or nvfp4), DECODE_PROFILE_LAYERS (default 6),
# DECODE_PROFILE_MODEL_DIR (default /tmp/clawmine-decode-profile; deleted afterwards),
# DECODE_PROFILE_BENCH_ARGS (extra `clawmine bench` flags, e.g. "--prompt-lengths 2048"),
# DECODE_PROFILE_METRICS (default gpu__time_duration.sum,dram__bytes_read.sum; the bytes metric has
# not run on the device yet: gpu__time_duration.sum alone gives the table of the eleventh session's
# run, 27 s on a warm machine).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-gpu}
OUT=${OUT:-.out/decode-profile}
LAYOUT=${DECODE_PROFILE_LAYOUT:-release}
LAYERS=${DECODE_PROFILE_LAYERS:-6}
MODEL=${DECODE_PROFILE_MODEL_DIR:-/tmp/clawmine-decode-profile}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/tmp/devroot/fallback-lib}
export PATH=/usr/local/cuda/bin:$PATH
command -v ncu >/dev/null || { echo "decode-profile: ncu (Nsight Compute) is not on PATH" >&2; exit 1; }
trap 'rm -rf "$MODEL"' EXIT
# No input scales for nvfp4: nothing for the load audit to read (it runs only under W4A4 anyway).
extra=()
[ "$LAYOUT" = nvfp4 ] && extra=(--input-scales off)
"$BUILD_DIR/clawmine-random-model" --geometry flash --layers "$LAYERS" --layout "$LAYOUT" "${extra[@]}" --out "$MODEL" >/dev/null
# A short prompt and three decode steps: the last one is the step the table describes.
# shellcheck disable=SC2086
ncu --clock-control none --metrics "${DECODE_PROFILE_METRICS:-gpu__time_duration.sum,dram__bytes_read.sum}" \
  --csv --print-units base \
  "$BUILD_DIR/clawmine" bench --model "$MODEL" --backend cuda --decode-tokens 3 --prompt-lengths 64 \
  --batch-sizes 1 --ceilings off ${DECODE_PROFILE_BENCH_ARGS:-} > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
python3 tools/decode_profile.py "$OUT/ncu.csv" --sequence | tee "$OUT/profile.md"
gzip -f "$OUT/ncu.csv"
