#!/usr/bin/env bash
# The GPU check, in one device call: unpack the Debian build dependencies carried in .devdeps/
# (scripts/device-deps.sh makes them here) into a private prefix, configure and build (Release,
# ninja) clawmine + gpu_backend_cuda + golden, run every GPU test (ctest label `gpu`), the golden
# suite (CUDA variants included where they exist), an end-to-end smoke run (`info`/`generate`
# on CUDA against the CPU), and the benchmark hook; logs go to $OUT, a short table comes last.
#
#   device tool:  run(command="bash tools/gpu-check.sh", carry=[".devdeps"], timeout_s=600)
#   here:         scripts/device-deps.sh && GPU_CHECK_CONFIGURE_ONLY=1 tools/gpu-check.sh
#
# Environment: OUT (log folder; default .out/gpu-check), BUILD_DIR (default build-gpu), JOBS
# (default 16), DEVROOT (default /tmp/devroot), GPU_CHECK_CPU_SUITES (more test targets to build
# and run, e.g. "unit_backend_cpu unit_cli"), GPU_CHECK_CONFIGURE_ONLY=1 (stop after configure:
# the local proof that the prefix wiring works), GPU_CHECK_CTEST=1 (GPU tests through ctest, one
# process per test, instead of one process per suite), GPU_CHECK_BUDGET_S (default 560: phases
# that would start after this many seconds are skipped, so the table always prints).
# At most 8 files come back from $OUT: setup, build, gpu, golden, cpu, smoke, bench logs + summary.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.out/gpu-check}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
JOBS=${JOBS:-16}
DEVROOT=${DEVROOT:-/tmp/devroot}
BUDGET_S=${GPU_CHECK_BUDGET_S:-560}
CPU_SUITES=${GPU_CHECK_CPU_SUITES:-}
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/gpu-check.XXXXXX)  # scratch files: at most 8 files come back from $OUT
START=$(date +%s)
SUMMARY=()

elapsed() { echo $(($(date +%s) - START)); }
# Seconds a command may still take: at most $1, and never past the budget (the table must print).
left() { local l=$((BUDGET_S - $(elapsed))); ((l > $1)) && l=$1; ((l < 1)) && l=1; echo $l; }
record() { SUMMARY+=("$(printf '%-8s %-5s %5ss  %s' "$1" "$2" "$3" "$4")"); }
# phase NAME LOG FUNCTION: runs FUNCTION with output appended to $OUT/LOG; FUNCTION may set NOTE.
phase() {
  local name=$1 log=$OUT/$2 fn=$3 t0 rc
  if (($(elapsed) > BUDGET_S)); then
    record "$name" skip 0 "time budget ($BUDGET_S s) spent"
    return 1
  fi
  NOTE=""
  t0=$(date +%s)
  echo "=== $name ($(date -u +%H:%M:%S), ${t0}s)" >>"$log"
  "$fn" >>"$log" 2>&1
  rc=$?
  record "$name" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" $(($(date +%s) - t0)) "$NOTE"
  echo "[gpu-check] $name: rc $rc after $(elapsed)s ${NOTE}"
  return $rc
}
finish() {
  rm -rf "${TMP:-/nonexistent}"
  {
    echo
    echo "gpu-check summary ($(elapsed) s; logs in $OUT)"
    printf '%-8s %-5s %6s  %s\n' phase state time note
    for l in "${SUMMARY[@]}"; do echo "$l"; done
  } | tee "$OUT/summary.txt"
  exit "${1:-0}"
}

# ---- setup: the toolchain and the private prefix ---------------------------------------------
LIBDIR=$DEVROOT/usr/lib/x86_64-linux-gnu
# Runtime libraries of the unpacked packages; each is used only where the system lacks it.
RUNTIME_SONAMES=(libcpp-httplib.so.0.11 libpcre2-8.so.0 libbenchmark.so.1debian libbrotlicommon.so.1
                 libbrotlidec.so.1 libbrotlienc.so.1 libssl.so.3 libcrypto.so.3 libz.so.1)

unpack_deb() {  # dpkg -x where dpkg exists, else ar + tar (a .deb is an ar archive)
  if command -v dpkg >/dev/null; then
    dpkg -x "$1" "$DEVROOT"
  else
    local member
    member=$(ar t "$1" | grep '^data\.tar') || return 1
    case $member in
      *.xz) ar p "$1" "$member" | tar -xJ -C "$DEVROOT" ;;
      *.zst) ar p "$1" "$member" | zstd -dc | tar -x -C "$DEVROOT" ;;
      *.gz) ar p "$1" "$member" | tar -xz -C "$DEVROOT" ;;
      *) ar p "$1" "$member" | tar -x -C "$DEVROOT" ;;
    esac
  fi
}

setup() {
  echo "--- host"
  uname -a
  (. /etc/os-release && echo "$PRETTY_NAME")
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: none"
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  nvcc --version | tail -2 || return 1
  cmake --version | head -1 || return 1
  ninja --version || return 1
  ${CXX:-c++} --version | head -1 || return 1
  echo "--- dependencies from .devdeps into $DEVROOT"
  compgen -G "$ROOT/.devdeps/*.deb" >/dev/null || {
    echo ".devdeps/ has no .deb files: run scripts/device-deps.sh here, and carry .devdeps"
    return 1
  }
  rm -rf "$DEVROOT"
  mkdir -p "$DEVROOT/bin" "$DEVROOT/fallback-lib"
  local f n=0
  for f in "$ROOT"/.devdeps/*.deb; do
    unpack_deb "$f" || { echo "cannot unpack $f"; return 1; }
    n=$((n + 1))
  done
  echo "unpacked $n packages"
  # .pc files name /usr: point them at the prefix.
  find "$DEVROOT/usr" -name '*.pc' -exec sed -i "s|/usr|$DEVROOT/usr|g" {} +
  # pkg-config: the system's, else the carried pkgconf (through a wrapper that finds libpkgconf).
  if command -v pkg-config >/dev/null; then
    PKG_CONFIG_BIN=$(command -v pkg-config)
  else
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$LIBDIR" "$DEVROOT/usr/bin/pkgconf" >"$DEVROOT/bin/pkg-config"
    chmod +x "$DEVROOT/bin/pkg-config"
    PKG_CONFIG_BIN=$DEVROOT/bin/pkg-config
  fi
  local so
  for so in "${RUNTIME_SONAMES[@]}"; do
    if ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$so "; then
      echo "runtime $so: the system's"
    elif [ -e "$LIBDIR/$so" ]; then
      ln -sf "$LIBDIR/$so" "$DEVROOT/fallback-lib/$so"
      echo "runtime $so: carried"
    else
      echo "runtime $so: missing (neither the system nor .devdeps has it)"
    fi
  done
  export_env
  "$PKG_CONFIG_BIN" --cflags --libs cpp-httplib libpcre2-8 || return 1
}

# The environment every later phase runs in (`phase` calls functions in this shell, so the
# exports and PKG_CONFIG_BIN made by setup stay for the phases after it).
export_env() {
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  # Only the prefix's .pc files, so a configure here (with Debian's own packages installed)
  # resolves exactly what it will resolve on the device.
  export PKG_CONFIG_LIBDIR=$LIBDIR/pkgconfig:$DEVROOT/usr/share/pkgconfig
  export PKG_CONFIG_PATH=$PKG_CONFIG_LIBDIR
  export LD_LIBRARY_PATH=$DEVROOT/fallback-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export CUDA_MODULE_LOADING=${CUDA_MODULE_LOADING:-LAZY}
  # The same for scripts that configure another tree after this one (tools/decode-ab.sh's
  # AB_REF_TAR): `. $DEVROOT/env.sh`.
  printf 'export PKG_CONFIG_LIBDIR=%q PKG_CONFIG_PATH=%q\n' "$PKG_CONFIG_LIBDIR" "$PKG_CONFIG_PATH" >"$DEVROOT/env.sh"
}

configure() {
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$DEVROOT/usr" -DPKG_CONFIG_EXECUTABLE="$PKG_CONFIG_BIN" || return 1
  # Where each dependency came from (all should be under $DEVROOT).
  grep -E '^(nlohmann_json_DIR|CLI11_DIR|GTest_DIR|benchmark_DIR|PKG_CONFIG_EXECUTABLE|CMAKE_CUDA_COMPILER):' \
    "$BUILD_DIR/CMakeCache.txt"
  grep -E '^(PCRE2|HTTPLIB)_(INCLUDE_DIRS|LINK_LIBRARIES):' "$BUILD_DIR/CMakeCache.txt" || true
  if ! grep -q 'CLAWMINE_HAVE_CUDA=1\|clawmine_backend_cuda' "$BUILD_DIR/build.ninja"; then
    NOTE="configured WITHOUT CUDA (nvcc not found)"
  fi
}

# ---- build -----------------------------------------------------------------------------------
build() {
  local targets=(clawmine gpu_backend_cuda golden clawmine-kernel-bench clawmine-random-model $CPU_SUITES)
  NOTE="${targets[*]}"
  # -k 0: one broken target does not stop the others; the tests run whatever was built.
  timeout "$(left 100000)" cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}" -- -k 0
}

# ---- tests -----------------------------------------------------------------------------------
# GoogleTest binaries. run_gtest: one process for the whole binary (one CUDA context); NOTE gets
# the counts from GoogleTest's closing lines. run_gtest_by_suite: one process per test suite
# (fixture), so a sticky CUDA error (an illegal address poisons the context) costs one suite,
# not every test after it; the counts are summed.
count() { grep -o "^\[  $1 *\] [0-9]* test" "$2" | grep -o '[0-9]*' | head -1 | grep . || echo 0; }
run_gtest() {
  local bin=$BUILD_DIR/tests/$1 rc log=$TMP/$1.log
  [ -x "$bin" ] || { NOTE="$1 not built"; return 1; }
  timeout "$(left 300)" "$bin" --gtest_color=no "${@:2}" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if grep -q '^\[==========\] .* ran\.' "$log"; then
    NOTE="$1: $(count PASSED "$log") passed, $(count FAILED "$log") failed, $(count SKIPPED "$log") skipped"
  else
    NOTE="$1: did not finish (rc $rc$([ $rc -eq 124 ] && echo ', timed out'))"
  fi
  return $rc
}
run_gtest_by_suite() {
  local bin=$BUILD_DIR/tests/$1 suite rc=0 p=0 f=0 k=0 broken=""
  [ -x "$bin" ] || { NOTE="$1 not built"; return 1; }
  for suite in $("$bin" --gtest_list_tests | grep -v '^ ' | cut -d' ' -f1 | sed 's/\.$//'); do
    local log=$TMP/$1.${suite//\//_}.log
    timeout "$(left 240)" "$bin" --gtest_color=no --gtest_filter="$suite.*" >"$log" 2>&1
    local r=$?
    cat "$log"
    if grep -q '^\[==========\] .* ran\.' "$log"; then
      p=$((p + $(count PASSED "$log"))) f=$((f + $(count FAILED "$log"))) k=$((k + $(count SKIPPED "$log")))
    else
      broken+=" $suite(rc $r)"
    fi
    [ $r -eq 0 ] || rc=1
  done
  NOTE="$1: $p passed, $f failed, $k skipped${broken:+; crashed:$broken}"
  return $rc
}

gpu_tests() {
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
  if [ "${GPU_CHECK_CTEST:-0}" = 1 ]; then
    # One process per test and one at a time: each takes half the GPU's memory as its arena.
    timeout "$(left 100000)" ctest --test-dir "$BUILD_DIR" -L gpu -j1 --output-on-failure --timeout 120 |
      tee "$TMP/ctest.log"
    local rc=${PIPESTATUS[0]}
    NOTE="ctest -L gpu: $(grep -o '[0-9]*% tests passed, [0-9]* tests failed out of [0-9]*' "$TMP/ctest.log")"
    return $rc
  fi
  # The binaries labelled gpu (today gpu_backend_cuda), one process per test suite.
  run_gtest_by_suite gpu_backend_cuda
}

golden_tests() { run_gtest golden; }

cpu_tests() {
  local s rc=0 notes=""
  for s in $CPU_SUITES; do
    NOTE=""
    run_gtest "$s" || rc=1
    notes+="${notes:+; }$NOTE"
  done
  NOTE=$notes
  return $rc
}

# ---- smoke: the real binary on the GPU against the CPU ---------------------------------------
# Greedy tokens of tiny-a (f32 activations: must equal the CPU's) and of the demo model (BF16,
# compared loosely: only the first token must agree); decode ms/token from generate's log line.
ms_per_token() { grep -o '[0-9.]* ms/token' "$1" | tail -1; }
smoke() {
  local bin=$BUILD_DIR/clawmine tiny=$ROOT/tests/fixtures/models/tiny-a demo=$ROOT/models/demo rc=0
  [ -x "$bin" ] || { NOTE="clawmine not built"; return 1; }
  cm() { timeout "$(left 120)" "$bin" "$@"; }
  cm info --model "$tiny" --backend cuda || rc=1
  local gen=(generate --ids 0,5,9,13,2,7 --max-tokens 24 --temperature 0 --json)
  cm "${gen[@]}" --model "$tiny" --backend cpu >"$TMP/cpu.json" 2>"$TMP/cpu.err" || rc=1
  cm "${gen[@]}" --model "$tiny" --backend cuda --act-dtype f32 --cuda-graphs on >"$TMP/f32.json" 2>"$TMP/f32.err" || rc=1
  cm "${gen[@]}" --model "$tiny" --backend cuda --act-dtype f32 --cuda-graphs off >"$TMP/eager.json" \
    2>"$TMP/eager.err" || rc=1
  cat "$TMP/cpu.json" "$TMP/f32.json" "$TMP/eager.json" "$TMP/cpu.err" "$TMP/f32.err" "$TMP/eager.err"
  local tiny_note="tiny-a f32 greedy x24: "
  if cmp -s "$TMP/cpu.json" "$TMP/f32.json" && cmp -s "$TMP/f32.json" "$TMP/eager.json"; then
    tiny_note+="cuda = cpu, graphs = eager"
  else
    tiny_note+="DIFFERS"
    rc=1
  fi
  local demo_note=""
  if [ -f "$demo/config.json" ]; then
    local dgen=(generate --model "$demo" --text "Debian is" --max-tokens 64 --temperature 0)
    cm "${dgen[@]}" --backend cuda >"$TMP/demo.txt" 2>"$TMP/demo.err" || rc=1
    cat "$TMP/demo.txt" "$TMP/demo.err"
    demo_note="; demo bf16 decode $(ms_per_token "$TMP/demo.err")"
  fi
  NOTE="$tiny_note; tiny-a decode $(ms_per_token "$TMP/f32.err")$demo_note"
  return $rc
}

# ---- serve: the server suite's core cases against `clawmine serve --backend cuda` -------------
serve_tests() {
  python3 -c "import pytest, requests" || { NOTE="python3 lacks pytest or requests"; return 1; }
  timeout "$(left 300)" python3 -m pytest -q -p no:cacheprovider "$ROOT/tests/server" \
    --clawmine "$BUILD_DIR/clawmine" --server-args="--backend cuda --gpu-memory-fraction 0.05" \
    -k "not node and not load" 2>&1 | tee "$TMP/serve.log"
  local rc=${PIPESTATUS[0]}
  NOTE="pytest (cuda, bf16): $(grep -E '[0-9]+ (passed|failed)' "$TMP/serve.log" | tail -1)"
  return $rc
}

# ---- bf16: whole-model BF16 side by side with transformers' autocast (tools/reference) ---------
bf16_side_by_side() {
  timeout "$(left 240)" python3 "$ROOT/tools/reference/bf16_side_by_side.py" --clawmine "$BUILD_DIR/clawmine" \
    --out "$TMP/bf16" 2>&1 | tee "$TMP/bf16.log"
  local rc=${PIPESTATUS[0]}
  NOTE="$(grep -c ' ok$' "$TMP/bf16.log") cases ok, $(grep -c 'FAIL$' "$TMP/bf16.log") FAIL"
  return $rc
}

# ---- diag: trace, locator and doctor on the CUDA backend (seed fixture) ------------------------
diag_on_cuda() {
  local bin=$BUILD_DIR/clawmine seed=$ROOT/tests/fixtures/models/tiny-b-seed rc=0
  local ids=3,17,5,88,120,7,42,9,250,31,64,77,100,2,19,33
  timeout "$(left 120)" "$bin" logits --model "$seed" --backend cuda --act-dtype f32 --ids $ids \
    --nvfp4-path w4a4 --act-scale static --unsafe-nonsaturating-fp8 --trace "$TMP/seed.jsonl" \
    --out "$TMP/seed.npy" 2>"$TMP/trace.err"
  cat "$TMP/trace.err"
  local first
  first=$(grep -o 'first non-finite[^:]*: [^ ]*' "$TMP/trace.err" | head -1)
  grep -q 'fused_wqa_wkv' "$TMP/trace.err" || rc=1
  timeout "$(left 180)" "$bin" doctor --model "$seed" --backend cuda >"$TMP/doctor.txt" 2>&1
  cat "$TMP/doctor.txt"
  local finding
  finding=$(grep -m1 '^1\.' "$TMP/doctor.txt" | cut -c1-90)
  echo "$finding" | grep -q 'fused_wqa_wkv' || rc=1
  NOTE="trace: ${first:-no finding}; doctor: ${finding:-none}"
  return $rc
}

# ---- benchmark hook: tools/gpu-bench.sh (the V4-Flash-geometry smoke benchmark), when present --
bench() {
  if [ -x "$ROOT/tools/gpu-bench.sh" ]; then
    BUILD_DIR=$BUILD_DIR OUT=$OUT timeout "$(left 100000)" "$ROOT/tools/gpu-bench.sh"
  else
    NOTE="no tools/gpu-bench.sh yet"
  fi
}

# ---- main ------------------------------------------------------------------------------------
PKG_CONFIG_BIN=pkg-config
phase setup setup.log setup || finish 1
phase configure setup.log configure || finish 1
[ "${GPU_CHECK_CONFIGURE_ONLY:-0}" = 1 ] && finish 0
# GPU_CHECK_PHASES picks phases (default all but none skipped): build gpu golden cpu smoke serve bf16 diag bench
PHASES=" ${GPU_CHECK_PHASES:-build gpu golden cpu smoke serve bf16 diag bench} "
want() { [[ $PHASES == *" $1 "* ]]; }
status=0
want build && { phase build build.log build || status=1; }
want gpu && { phase gpu gpu.log gpu_tests || status=1; }
want golden && { phase golden golden.log golden_tests || status=1; }
want cpu && [ -n "$CPU_SUITES" ] && { phase cpu cpu.log cpu_tests || status=1; }
want smoke && { phase smoke smoke.log smoke || status=1; }
want serve && { phase serve smoke.log serve_tests || status=1; }
want bf16 && { phase bf16 golden.log bf16_side_by_side || status=1; }
want diag && { phase diag smoke.log diag_on_cuda || status=1; }
want bench && { phase bench bench.log bench || status=1; }
finish $status
