#!/usr/bin/env bash
# A/B of runtime settings on the V4-Flash-geometry random model, in one device call: builds
# clawmine (and the GPU tests when asked), writes the random checkpoint while the tests run, then
# runs `clawmine bench` once per variant and round, interleaved (A B C A B C ...), and prints each
# variant's medians last. A variant is a space-separated list of VAR=VALUE settings for the
# environment ("-" for none), e.g. the tuning switches of the README or a temporary experiment's.
#
#   device tool: run(command="OUT=$OUT bash tools/decode-ab.sh - CLAWMINE_GRAPH_UPDATE=1", carry=[".devdeps"])
#
# Environment: AB_ROUNDS (default 3), AB_LAYOUT (release or nvfp4; default release), AB_BENCH
# (the bench flags after --model/--backend; default: decode 64 tokens after a 128-token prompt at
# batch 1, no ceilings), AB_TESTS (a gtest filter: gpu_backend_cuda runs it once per variant
# before the rounds, e.g. '*CudaModelParity*:CudaForwardBatch*'; AB_TESTS_ONCE=1: under the first
# variant only, for switches the tests set themselves; AB_TESTS_TIMEOUT seconds per run, default 300;
# AB_TESTS_STRICT=1: stop before the rounds when a run fails or times out), AB_TRACE=1 (after the rounds, a
# two-step kernel trace per variant: tools/kernel_timeline.py's layer, attention and MoE tables printed (from the
# second variant on, also the kernels whose time moved most against the first variant's trace), its whole
# reading with every kernel in start order in $OUT/traceN.txt, the CSV in LOGS), AB_KEEP_CSV=1 (the
# trace CSVs into $OUT too),
# BUILD_DIR (default build-gpu), MODEL_DIR (default /tmp/clawmine-ab; kept: a later call on a warm
# machine reuses it when it holds AB_LAYOUT's checkpoint, and writes it again otherwise), OUT (default .out/decode-ab), LOGS (default /tmp/decode-ab-logs: the setup,
# build and checkpoint logs, printed in part on a failure), AB_SKIP_BUILD=1 (use BUILD_DIR's binaries),
# AB_REF_TAR (a reference tree to build beside this one, clawmine only, in AB_REF_DIR, default
# /tmp/ab-ref: a tar.gz of another commit, made in the repository root so that it travels with the
# working tree, e.g. `git archive --format=tar.gz -o ab-ref.tar.gz main CMakeLists.txt apps src
# bench tools`; a variant written ref:VARIANT then runs the reference binary under VARIANT's
# settings, so that a change of code is measured against its base on the same machine: switches
# alone leave the new code in the binary).
# AB_SMI=1: nvidia-smi samples the SM clock, the power draw and the temperature every AB_SMI_MS ms
# (default 100) during each round's run, and the round's line gives the lowest SM clock, the clock
# at the highest power sample (the decode and prefill windows) and the highest temperature.
# $OUT holds bench.log, tests.log and the traces' readings: within the device tool's 8 files for up
# to 6 variants.
# The line grepped from each run: "decode batch 1 at context" (the median) unless AB_GREP says, e.g.
# AB_GREP='b=8 batched forward' with --batch-sizes 8 in AB_BENCH (a line without a median gives its
# first "N ms/token" figure).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
MODEL_DIR=${MODEL_DIR:-/tmp/clawmine-ab}
OUT=${OUT:-$ROOT/.out/decode-ab}
LOGS=${LOGS:-/tmp/decode-ab-logs}
ROUNDS=${AB_ROUNDS:-3}
LAYOUT=${AB_LAYOUT:-release}
BENCH=${AB_BENCH:---decode-tokens 64 --prompt-lengths 128 --batch-sizes 1 --sampled-tokens 0 --ceilings off}
GREP=${AB_GREP:-decode batch 1 at context}
mkdir -p "$OUT" "$LOGS"
case ${AB_SMI_MS:-100} in
  '' | 0 | *[!0-9]*) echo "decode-ab: AB_SMI_MS=${AB_SMI_MS}: expected a positive whole number of milliseconds" >&2; exit 2 ;;
esac
[ $# -ge 1 ] || { echo "usage: $0 VARIANT [VARIANT...]   (a variant: 'VAR=VALUE ...' or - for none)" >&2; exit 2; }
T0=$(date +%s)
el() { echo "$(($(date +%s) - T0))s"; }
export PATH=/usr/local/cuda/bin:$PATH

# The toolchain, the private prefix and the configure step of tools/gpu-check.sh (no phase runs),
# then the build; AB_SKIP_BUILD=1 uses what BUILD_DIR holds (a warm machine, or a local dry run).
build() { [ "${AB_SKIP_BUILD:-0}" = 1 ] || cmake --build "$BUILD_DIR" -j 16 --target "$@" >>"$LOGS/build.log" 2>&1; }
if [ "${AB_SKIP_BUILD:-0}" != 1 ]; then
  OUT=/tmp/decode-ab-gc BUILD_DIR=$BUILD_DIR GPU_CHECK_PHASES=' ' bash tools/gpu-check.sh >"$LOGS/setup.log" 2>&1
fi
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/tmp/devroot/fallback-lib}
REF_TAR=${AB_REF_TAR:-}
REF_DIR=${AB_REF_DIR:-/tmp/ab-ref}
ref_pid=
if [ -n "$REF_TAR" ] && ! { [ "${AB_SKIP_BUILD:-0}" = 1 ] && [ -x "$REF_DIR/build/clawmine" ]; }; then
  # The reference tree configured as tools/gpu-check.sh configured this one (its prefix and
  # pkg-config, read back from the cache, and its pkg-config search path, env.sh), tests off;
  # built in the background beside this build.
  if ! { rm -rf "$REF_DIR" && mkdir -p "$REF_DIR" && tar -xzf "$REF_TAR" -C "$REF_DIR"; }; then
    echo "decode-ab: cannot unpack AB_REF_TAR $REF_TAR into $REF_DIR" >&2
    exit 1
  fi
  prefix=$(sed -n 's/^CMAKE_PREFIX_PATH:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")
  pkgc=$(sed -n 's/^PKG_CONFIG_EXECUTABLE:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")
  devenv=${DEVROOT:-/tmp/devroot}/env.sh
  # shellcheck disable=SC1090  # written by tools/gpu-check.sh
  { { [ ! -f "$devenv" ] || . "$devenv"; } &&
      cmake -S "$REF_DIR" -B "$REF_DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLAWMINE_TESTS=OFF \
      -DCMAKE_PREFIX_PATH="$prefix" ${pkgc:+-DPKG_CONFIG_EXECUTABLE="$pkgc"} &&
      cmake --build "$REF_DIR/build" -j 16 --target clawmine; } >"$LOGS/ref-build.log" 2>&1 &
  ref_pid=$!
fi
targets=(clawmine clawmine-random-model)
[ -n "${AB_TESTS:-}" ] && targets+=(gpu_backend_cuda)
build clawmine-random-model || { tail -30 "$LOGS/build.log"; exit 1; }
gen_pid=
# A checkpoint kept from an earlier call is reused only in the layout asked for (its stamp,
# written once the generator has finished); another layout, or one without a stamp (cut short),
# is removed first: the machine's disk holds one.
stamp=$MODEL_DIR/.decode-ab-layout
if [ -e "$MODEL_DIR" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$LAYOUT" ]; then
  if [ -f "$MODEL_DIR/config.json" ] || [ -f "$stamp" ] || [ -z "$(ls -A "$MODEL_DIR" 2>/dev/null)" ]; then
    echo "[decode-ab] $MODEL_DIR holds no $LAYOUT checkpoint ($(cat "$stamp" 2>/dev/null || echo 'no stamp')): written again"
    rm -rf "$MODEL_DIR"
  else
    echo "decode-ab: MODEL_DIR=$MODEL_DIR is not a checkpoint directory of this script; choose another" >&2
    exit 2
  fi
fi
if [ ! -f "$MODEL_DIR/config.json" ]; then
  { "$BUILD_DIR/clawmine-random-model" --geometry flash --layout "$LAYOUT" --out "$MODEL_DIR" &&
      echo "$LAYOUT" >"$stamp"; } >"$LOGS/gen.log" 2>&1 &
  gen_pid=$!
fi
build "${targets[@]}" || { tail -30 "$LOGS/build.log"; exit 1; }
if [ -n "$ref_pid" ]; then
  wait "$ref_pid" || { echo "[decode-ab] the reference tree did not build:"; tail -30 "$LOGS/ref-build.log"; exit 1; }
fi
echo "[decode-ab] built ($(el))"

# with VARIANT CMD...: CMD under the variant's settings (a ref: prefix dropped).
with() {
  local v=${1#ref:}
  shift
  # shellcheck disable=SC2086  # the settings split into words on purpose
  if [ "$v" = - ]; then "$@"; else env $v "$@"; fi
}
# The clawmine binary of a variant: the reference tree's for ref:VARIANT.
bin_of() {
  if [ "${1#ref:}" != "$1" ]; then
    [ -n "$REF_TAR" ] || { echo "decode-ab: variant '$1' without AB_REF_TAR" >&2; exit 2; }
    echo "$REF_DIR/build/clawmine"
  else
    echo "$BUILD_DIR/clawmine"
  fi
}
for v in "$@"; do bin_of "$v" >/dev/null || exit 2; done

if [ -n "${AB_TESTS:-}" ]; then
  test_variants=()
  for v in "$@"; do [ "${v#ref:}" = "$v" ] && test_variants+=("$v"); done  # the reference has no tests
  [ "${AB_TESTS_ONCE:-0}" = 1 ] && test_variants=("${test_variants[@]:0:1}")
  for v in "${test_variants[@]}"; do
    with "$v" timeout "${AB_TESTS_TIMEOUT:-300}" "$BUILD_DIR/tests/gpu_backend_cuda" --gtest_color=no \
      --gtest_filter="$AB_TESTS" >"$LOGS/tests.run" 2>&1
    rc=$?
    cat "$LOGS/tests.run" >>"$OUT/tests.log"
    echo "[decode-ab] tests with '$v': $(grep -E '^\[  (PASSED|FAILED) ' "$LOGS/tests.run" | tr '\n' ' ')rc $rc ($(el))"
    if [ "$rc" -ne 0 ] && [ "${AB_TESTS_STRICT:-0}" = 1 ]; then
      echo "[decode-ab] tests failed (rc $rc; 124: timed out in $(grep -E '^\[ RUN' "$LOGS/tests.run" | tail -1)); no rounds"
      exit 1
    fi
  done
fi
if [ -n "$gen_pid" ]; then
  wait "$gen_pid" || { tail -5 "$LOGS/gen.log"; exit 1; }
fi
echo "[decode-ab] model ready ($(el))"

# AB_SMI: the GPU's clock, power and temperature beside a run (smi_start before it, smi_stop after,
# which sets smi to the summary; "" when AB_SMI is off, nvidia-smi is missing or took no samples).
smi_pid=
smi=
smi_start() {
  [ "${AB_SMI:-0}" = 1 ] && command -v nvidia-smi >/dev/null || return 0
  rm -f "$LOGS/smi.txt"
  nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits \
    -lms "${AB_SMI_MS:-100}" -f "$LOGS/smi.txt" >/dev/null 2>&1 &
  smi_pid=$!
}
smi_stop() {
  smi=
  [ -n "$smi_pid" ] || return 0
  kill "$smi_pid" 2>/dev/null
  wait "$smi_pid" 2>/dev/null
  smi_pid=
  [ -f "$LOGS/smi.txt" ] && smi=$(smi_summary "$LOGS/smi.txt")
}
# "; smi: N samples, SM clock min C MHz, C2 MHz at the top power P W, max T C" from the samples.
smi_summary() {
  awk -F', *' '$1 ~ /^[0-9]/ && $2 ~ /^[0-9]/ {
      n++; if (mc == "" || $1 < mc) mc = $1
      if (pw == "" || $2 > pw) { pw = $2; pc = $1 }
      if (t == "" || $3 > t) t = $3 }
    END { if (n) printf "; smi: %d samples, SM clock min %d MHz, %d MHz at the top power %.0f W, max %d C", n, mc, pc, pw, t }' "$1"
}

declare -A results
for ((r = 1; r <= ROUNDS; ++r)); do
  for v in "$@"; do
    smi_start
    # shellcheck disable=SC2086
    line=$(with "$v" timeout 300 "$(bin_of "$v")" bench --model "$MODEL_DIR" --backend cuda $BENCH 2>&1 |
      tee -a "$OUT/bench.log" | grep -F "$GREP" | head -1)
    smi_stop
    m=$(grep -o 'median [0-9.]*' <<<"$line" | head -1 | cut -d' ' -f2)
    [ -n "$m" ] || m=$(grep -o '[0-9.]* ms/token' <<<"$line" | head -1 | cut -d' ' -f1)
    results[$v]="${results[$v]:-}${results[$v]:+ / }${m:-?}"
    echo "[decode-ab] round $r '$v': $line$smi ($(el))"
  done
done
if [ "${AB_TRACE:-0}" = 1 ]; then
  i=0
  for v in "$@"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    with "$v" timeout 300 "$(bin_of "$v")" bench --model "$MODEL_DIR" --backend cuda $BENCH \
      --kernel-trace "$LOGS/trace$i.csv" --kernel-trace-steps 2 >>"$OUT/bench.log" 2>&1
    [ "${AB_KEEP_CSV:-0}" = 1 ] && cp "$LOGS/trace$i.csv" "$OUT/"
    # From the second variant on, also the kernels that moved most against the first variant's trace.
    against=()
    [ "$i" -gt 1 ] && [ -s "$LOGS/trace1.csv" ] && against=(--against "$LOGS/trace1.csv")
    python3 tools/kernel_timeline.py --sequence "${against[@]}" "$LOGS/trace$i.csv" >"$OUT/trace$i.txt" 2>&1
    echo "[decode-ab] trace of '$v' in trace$i.txt:"
    sed -n '/^| layers (hc/,/^$/p;/^| attention (from/,/^$/p;/^| MoE phase/,/^$/p' "$OUT/trace$i.txt"
    sed -n '/^against /p;/^| kernel (against/,/^$/p' "$OUT/trace$i.txt" | head -14
  done
fi
echo
echo "decode-ab: medians (ms/token) per variant over $ROUNDS interleaved rounds, $LAYOUT layout ($(el))"
for v in "$@"; do printf '  %-50s %s\n' "$v" "${results[$v]:-}"; done
