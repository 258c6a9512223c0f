#!/usr/bin/env bash
# One device call for GEMV work (docs/perf-notes/gemv.md): the carried build dependencies and the
# configure step of tools/gpu-check.sh, then only bench_gemv_probe and gpu_backend_cuda are
# built; the probe runs first (its table is the point), then the linear/MoE/SwiGLU GPU tests in
# what is left of the time budget, and the SASS of the tensor-core GEMV kernels goes to $OUT.
#
#   device tool:  run(command="bash tools/gemv-iterate.sh", carry=[".devdeps"], timeout_s=300)
#
# Environment: OUT (default .out/gemv), BUILD_DIR (default build-gpu), PROBE_ARGS (extra
# bench_gemv_probe options), GEMV_TESTS (gtest filter; default '*Linear*:*Moe*:*Swiglu*'),
# GEMV_SKIP_TESTS=1 (probe only), GEMV_BUDGET_S (default 285: nothing starts after this),
# GEMV_NCU (bench_gemv_probe options for one Nsight Compute pass over its first two tensor-core
# GEMV launches, clocks left alone: e.g. "--shapes wo_b --formats nvfp4 --tokens 1").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.out/gemv}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
BUDGET_S=${GEMV_BUDGET_S:-285}
START=$(date +%s)
mkdir -p "$OUT"
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# Setup and configure only (gpu-check's phases list left empty); its logs stay out of $OUT.
OUT=/tmp/gemv-gpu-check BUILD_DIR=$BUILD_DIR GPU_CHECK_PHASES=' ' bash tools/gpu-check.sh >"$OUT/setup.log" 2>&1 || {
  tail -40 "$OUT/setup.log"
  exit 1
}
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/tmp/devroot/fallback-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CUDA_MODULE_LOADING=LAZY

targets=(bench_gemv_probe)
[ "${GEMV_SKIP_TESTS:-0}" = 1 ] || targets+=(gpu_backend_cuda)
timeout "$(left)" cmake --build "$BUILD_DIR" -j 16 --target "${targets[@]}" >"$OUT/build.log" 2>&1 || {
  grep -m 30 -A 12 -E 'error|Error' "$OUT/build.log"
  tail -5 "$OUT/build.log"
  exit 1
}
echo "[gemv-iterate] built ${targets[*]} after $(($(date +%s) - START)) s"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv,noheader

# SASS of the tensor-core GEMV (T=1, R=1 instances) for reading here.
obj=$BUILD_DIR/CMakeFiles/clawmine_backend_cuda.dir/src/backend/cuda/linear_gemv.cu.o
if command -v cuobjdump >/dev/null && [ -f "$obj" ]; then
  cuobjdump -sass "$obj" 2>/dev/null | awk '/Function : /{keep = ($0 ~ /gemv_mma_kernel/ && $0 ~ /ELi1ELi1ELb1E/)} keep' \
    >"$OUT/sass.txt"
fi

echo "[gemv-iterate] probe ($(left) s left)"
# shellcheck disable=SC2086
timeout "$(left)" "$BUILD_DIR/bench_gemv_probe" ${PROBE_ARGS:-} --csv "$OUT/probe.csv" >"$OUT/probe.txt" 2>&1
probe_rc=$?

if [ -n "${GEMV_NCU:-}" ] && command -v ncu >/dev/null; then
  echo "[gemv-iterate] ncu ($(left) s left)"
  # shellcheck disable=SC2086
  timeout "$(($(left) / 3))" ncu --clock-control none --kernel-name regex:gemv_mma --launch-count 2 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --section LaunchStats "$BUILD_DIR/bench_gemv_probe" $GEMV_NCU --reps 3 >"$OUT/ncu.txt" 2>&1
  echo "[gemv-iterate] ncu rc $?"
fi

tests_rc=0
if [ "${GEMV_SKIP_TESTS:-0}" != 1 ]; then
  echo "[gemv-iterate] tests ($(left) s left)"
  timeout "$(left)" "$BUILD_DIR/tests/gpu_backend_cuda" --gtest_color=no \
    --gtest_filter="${GEMV_TESTS:-*Linear*:*Moe*:*Swiglu*}" >"$OUT/tests.log" 2>&1
  tests_rc=$?
  grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|Failure|rel_l2|error' "$OUT/tests.log" | head -60
  [ $tests_rc -eq 124 ] && echo "[gemv-iterate] tests timed out"
fi
echo "[gemv-iterate] probe table again (rc $probe_rc), tests rc $tests_rc, $(($(date +%s) - START)) s"
cat "$OUT/probe.txt"
[ $probe_rc -eq 0 ] && [ $tests_rc -eq 0 ]
