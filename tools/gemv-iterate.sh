#!/usr/bin/env bash
# One device call for GEMV work (docs/perf-notes/gemv.md): the carried build dependencies and the
# configure step of tools/gpu-check.sh, then only bench_gemv_probe and gpu_backend_cuda are
# built; the probe runs first (its table is the point: fma, mma and stream kernels and cuBLAS at
# every decode case, T = 1, 2, 4, and per case a second line: decode-like chains [1-block kernel,
# GEMV] with PDL off and on), then the linear/MoE/SwiGLU/PDL GPU tests in what is left of the time
# budget, once per mode of GEMV_TEST_MODES (default "default pdl"): default (as configured:
# CLAWMINE_GEMV unset = auto, PDL off; CudaLinearStream forces the streaming kernel, CudaPdl*
# turn PDL on themselves), pdl (CLAWMINE_PDL=1: every launch of those tests a programmatic
# dependent launch), stream (CLAWMINE_GEMV=stream: every GEMV launch, MoE tile tables and
# swiglu_mlp included, on the streaming kernel). The SASS of the GEMV kernels goes to $OUT when
# cuobjdump is there.
#
#   device tool:  run(command="bash tools/gemv-iterate.sh", carry=[".devdeps"], timeout_s=600)
#
# Environment: OUT (default .out/gemv), BUILD_DIR (default build-gpu), PROBE_ARGS (extra
# bench_gemv_probe options), GEMV_TESTS (gtest filter of the default and pdl passes; default
# '*Linear*:*Moe*:*Swiglu*:*Pdl*'), GEMV_STREAM_TESTS (filter of the CLAWMINE_GEMV=stream pass;
# default the same less prefill and policy tests), GEMV_TEST_MODES (default "default pdl"),
# GEMV_SKIP_TESTS=1 (probe only), GEMV_BUDGET_S (default 570: nothing starts after this),
# GEMV_NCU (bench_gemv_probe options for one Nsight Compute pass over its first two
# gemv_stream launches, clocks left alone: e.g. "--shapes wo_b --formats nvfp4 --tokens 1"),
# GEMV_NCU_KERNEL (the kernel-name regex of that pass; default gemv_stream; gemv_wgmma for the
# wgmma GEMV, whose launches the probe makes on its wgmma line), GEMV_WGMMA_SASS=1 (the wgmma
# GEMV's SASS to $OUT/sass-wgmma.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.out/gemv}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
BUDGET_S=${GEMV_BUDGET_S:-570}
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

# SASS of the streaming GEMV (one-block instances) for reading here.
obj=$BUILD_DIR/CMakeFiles/clawmine_backend_cuda.dir/src/backend/cuda/linear_gemv.cu.o
if command -v cuobjdump >/dev/null && [ -f "$obj" ]; then
  cuobjdump -sass "$obj" 2>/dev/null | awk '/Function : /{keep = ($0 ~ /gemv_stream_kernel|gemv_kernel/)} keep' >"$OUT/sass.txt"
fi
# And, with GEMV_WGMMA_SASS=1, of the wgmma GEMV (every instance: several MB).
wobj=$BUILD_DIR/CMakeFiles/clawmine_backend_cuda.dir/src/backend/cuda/linear_gemv_wgmma.cu.o
if [ "${GEMV_WGMMA_SASS:-0}" = 1 ] && command -v cuobjdump >/dev/null && [ -f "$wobj" ]; then
  cuobjdump -sass "$wobj" 2>/dev/null | awk '/Function : /{keep = ($0 ~ /gemv_wgmma_kernel/)} keep' >"$OUT/sass-wgmma.txt"
fi

echo "[gemv-iterate] probe ($(left) s left)"
# shellcheck disable=SC2086
timeout "$(left)" "$BUILD_DIR/bench_gemv_probe" ${PROBE_ARGS:-} --csv "$OUT/probe.csv" >"$OUT/probe.txt" 2>&1
probe_rc=$?

if [ -n "${GEMV_NCU:-}" ] && command -v ncu >/dev/null; then
  echo "[gemv-iterate] ncu ($(left) s left)"
  # Every metric of each section (--print-details all): the warp stall reasons among them.
  sections=()
  for s in SpeedOfLight MemoryWorkloadAnalysis WarpStateStats Occupancy LaunchStats SchedulerStats \
    InstructionStats ComputeWorkloadAnalysis; do sections+=(--section "$s"); done
  # shellcheck disable=SC2086
  timeout "$(($(left) / 3))" ncu --clock-control none --kernel-name "regex:${GEMV_NCU_KERNEL:-gemv_stream}" --launch-count 2 \
    --print-details all "${sections[@]}" "$BUILD_DIR/bench_gemv_probe" $GEMV_NCU --reps 3 >"$OUT/ncu.txt" 2>&1
  echo "[gemv-iterate] ncu rc $?"
fi

tests_rc=0
if [ "${GEMV_SKIP_TESTS:-0}" != 1 ]; then
  for mode in ${GEMV_TEST_MODES:-default pdl}; do
    echo "[gemv-iterate] tests, mode $mode ($(left) s left)"
    log=$OUT/tests-$mode.log
    if [ "$mode" = stream ]; then
      # Prefill rows and the W8A8/W4A4 policies (F32 activations) never reach a GEMV tensor-core kernel.
      CLAWMINE_GEMV=stream timeout "$(left)" "$BUILD_DIR/tests/gpu_backend_cuda" --gtest_color=no \
        --gtest_filter="${GEMV_STREAM_TESTS:-*Linear*:*Moe*:*Swiglu*:*Pdl*:-*Prefill*:*Polic*}" >"$log" 2>&1
    elif [ "$mode" = pdl ]; then
      CLAWMINE_PDL=1 timeout "$(left)" "$BUILD_DIR/tests/gpu_backend_cuda" --gtest_color=no \
        --gtest_filter="${GEMV_TESTS:-*Linear*:*Moe*:*Swiglu*:*Pdl*}" >"$log" 2>&1
    else
      timeout "$(left)" "$BUILD_DIR/tests/gpu_backend_cuda" --gtest_color=no \
        --gtest_filter="${GEMV_TESTS:-*Linear*:*Moe*:*Swiglu*:*Pdl*}" >"$log" 2>&1
    fi
    rc=$?
    grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|Failure|rel_l2|error' "$log" | head -60
    [ $rc -eq 124 ] && echo "[gemv-iterate] tests ($mode) timed out"
    [ $rc -ne 0 ] && tests_rc=$rc
  done
fi
echo "[gemv-iterate] probe table again (rc $probe_rc), tests rc $tests_rc, $(($(date +%s) - START)) s"
cat "$OUT/probe.txt"
[ $probe_rc -eq 0 ] && [ $tests_rc -eq 0 ]
