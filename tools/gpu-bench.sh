#!/usr/bin/env bash
# The benchmark phase of tools/gpu-check.sh (issue 9): kernel benchmarks, then end to end on a
# random-weight V4-Flash-geometry model in each layout, each against the ceilings measured in
# the same run; a short table last. Builds nothing (gpu-check builds clawmine,
# clawmine-kernel-bench and clawmine-random-model and passes BUILD_DIR and OUT).
#
#   device tool:  run(command="GPU_CHECK_PHASES='build bench' bash tools/gpu-check.sh", carry=[".devdeps"])
#   by hand:      BUILD_DIR=build tools/gpu-bench.sh
#
# Steps: build/clawmine-kernel-bench (linear per format + cuBLAS, grouped wo_a, MoE experts,
# sparse attention, compressor, indexer); then per layout (release: FP8 + MXFP4 experts, 45.6 GB;
# nvfp4: NVFP4 experts, 47.7 GB, written without input scales so loading skips the CPU audit):
# clawmine-random-model writes the checkpoint to $GPU_BENCH_MODEL_DIR, `clawmine bench` runs on it
# (decode 32 tokens at batch 1, prefill 2048 and 8192, round-robin batches 8 and 32, op profile), and the checkpoint
# is deleted (the disk holds one at a time). A layout is skipped when too little of the time
# budget is left for it. Everything goes to stdout (gpu-check's bench.log); the JSON results are
# printed between "--- begin/end FILE" lines so they come back inside that log.
#
# Environment: BUILD_DIR (default build-gpu), OUT (default .out/gpu-bench), GPU_BENCH_BUDGET_S
# (default 300: no step starts past it), GPU_BENCH_LAYOUTS (default "release nvfp4"),
# GPU_BENCH_MODEL_DIR (default /tmp/clawmine-flash), GPU_BENCH_KERNEL_ARGS (extra
# clawmine-kernel-bench flags, e.g. "--only linear,moe"), GPU_BENCH_E2E_ARGS (the `clawmine bench`
# flags; default below), GPU_BENCH_SKIP_KERNELS=1, GPU_BENCH_JSON_TO_OUT=1 (also copy the JSON
# files to $OUT; gpu-check returns at most 8 files, so this is off by default).
# Optional: GPU_BENCH_TORCH=1 runs tools/torch-vs-clawmine.sh (clawmine against PyTorch/transformers'
# BF16 eager forward on the tiny fixtures and a mid-size Flash-geometry model) after the steps above,
# GPU_BENCH_TORCH=only instead of them; GPU_BENCH_TORCH_MODELS overrides its model list.
# GPU_BENCH_SERVE=1 with CLAWMINE_TOKENIZER_DIR (a V4 tokenizer.json + tokenizer_config.json, made
# where node is by `node tools/tokenizer/make_v4_tokenizer.js DIR` and carried to the device) also
# serves each layout's checkpoint and runs bench/serve_throughput.py on it (GPU_BENCH_SERVE_ARGS;
# default: 1, 8 and 32 clients, 2 requests each, 64 tokens).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
OUT=${OUT:-$ROOT/.out/gpu-bench}
BUDGET_S=${GPU_BENCH_BUDGET_S:-300}
LAYOUTS=${GPU_BENCH_LAYOUTS:-release nvfp4}
MODEL_DIR=${GPU_BENCH_MODEL_DIR:-/tmp/clawmine-flash}
KERNEL_ARGS=${GPU_BENCH_KERNEL_ARGS:-}
E2E_ARGS=${GPU_BENCH_E2E_ARGS:---decode-tokens 32 --prompt-lengths 2048,8192 --batch-sizes 1,8,32 --profile --profile-steps 4}
TORCH=${GPU_BENCH_TORCH:-0}
[ "$TORCH" = only ] && LAYOUTS=""
LAYOUT_NEEDS_S=100  # generation ~30 s, load ~10 s, bench ~30 s, delete: start a layout only with this much left
START=$(date +%s)
TMP=$(mktemp -d /tmp/gpu-bench.XXXXXX)
mkdir -p "$OUT"
trap 'rm -rf "$TMP" "$MODEL_DIR"' EXIT

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed))); }
lim() { local l; l=$(left); ((l < 1)) && l=1; echo "$l"; }  # a timeout that is never 0 (= none)
say() { echo "[gpu-bench $(elapsed)s] $*"; }
show_json() {  # FILE: into the log between markers (and into $OUT on request)
  [ -s "$1" ] || return 0
  echo "--- begin $(basename "$1")"
  cat "$1"
  echo "--- end $(basename "$1")"
  [ "${GPU_BENCH_JSON_TO_OUT:-0}" = 1 ] && cp "$1" "$OUT/"
  return 0
}

status=0
echo "=== gpu-bench on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null ||
  echo 'no nvidia-smi'), $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null)$(
  git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"

# ---- kernels ---------------------------------------------------------------------------------
if [ "${GPU_BENCH_SKIP_KERNELS:-0}" != 1 ] && [ "$TORCH" != only ]; then
  kb=$BUILD_DIR/clawmine-kernel-bench
  if [ -x "$kb" ]; then
    say "kernel benchmarks"
    # shellcheck disable=SC2086
    timeout "$(lim)" "$kb" --jsonl "$TMP/kernels.jsonl" $KERNEL_ARGS || { say "kernel bench: rc $?"; status=1; }
    show_json "$TMP/kernels.jsonl"
  else
    say "no $kb (gpu-check's build phase makes it)"
    status=1
  fi
fi

# ---- end to end, per layout ------------------------------------------------------------------
gen=$BUILD_DIR/clawmine-random-model
cm=$BUILD_DIR/clawmine
for layout in $LAYOUTS; do
  if (($(left) < LAYOUT_NEEDS_S)); then
    say "$layout: skipped ($(left) s of the ${BUDGET_S} s budget left, a layout needs ~${LAYOUT_NEEDS_S} s)"
    echo "skipped: time budget" >"$TMP/e2e-$layout.skipped"
    continue
  fi
  if [ ! -x "$gen" ] || [ ! -x "$cm" ]; then
    say "$layout: $gen or $cm not built"
    status=1
    continue
  fi
  rm -rf "$MODEL_DIR"
  flags=()
  [ "$layout" = nvfp4 ] && flags=(--input-scales off)  # no static scales: no CPU calibration audit at load
  say "$layout: writing the V4-Flash-geometry checkpoint to $MODEL_DIR"
  t0=$(date +%s)
  if ! CLAWMINE_RANDOM_MODEL=$gen timeout "$(lim)" "$ROOT/tools/make-flash-model.sh" "$MODEL_DIR" "$layout" \
    "${flags[@]}" >"$TMP/gen-$layout.log" 2>&1; then
    tail -5 "$TMP/gen-$layout.log"
    say "$layout: generation failed"
    status=1
    continue
  fi
  tail -2 "$TMP/gen-$layout.log"
  say "$layout: written in $(($(date +%s) - t0)) s ($(du -sh "$MODEL_DIR" | cut -f1))"
  # shellcheck disable=SC2086
  timeout "$(lim)" "$cm" bench --model "$MODEL_DIR" --backend cuda $E2E_ARGS --json "$TMP/e2e-$layout.json" 2>&1 |
    tee "$TMP/e2e-$layout.log"
  rc=${PIPESTATUS[0]}
  ((rc == 0)) || { say "$layout: clawmine bench rc $rc"; status=1; }
  show_json "$TMP/e2e-$layout.json"
  if [ "${GPU_BENCH_SERVE:-0}" = 1 ]; then
    if [ -f "$MODEL_DIR/tokenizer.json" ] && (($(left) > 30)); then
      say "$layout: clawmine serve throughput (bench/serve_throughput.py)"
      # shellcheck disable=SC2086
      timeout "$(lim)" python3 "$ROOT/bench/serve_throughput.py" --clawmine "$cm" \
        --server-args "--model $MODEL_DIR --backend cuda" ${GPU_BENCH_SERVE_ARGS:---concurrency 1,8,32 --requests 2 --max-tokens 64} \
        --json "$TMP/serve-$layout.json" || { say "$layout: serve_throughput rc $?"; status=1; }
      show_json "$TMP/serve-$layout.json"
    else
      say "$layout: serve throughput skipped (no tokenizer: set CLAWMINE_TOKENIZER_DIR, or the budget is spent)"
    fi
  fi
  rm -rf "$MODEL_DIR"
done

# ---- optional: the PyTorch/transformers baseline, side by side (GPU_BENCH_TORCH=1 or only) ------
if [ "$TORCH" = 1 ] || [ "$TORCH" = only ]; then
  if (($(left) < 60)); then
    say "torch baseline: skipped ($(left) s of the ${BUDGET_S} s budget left)"
  else
    say "torch baseline: tools/torch-vs-clawmine.sh ${GPU_BENCH_TORCH_MODELS:-(tiny-a, tiny-b, tiny-c, flash)}"
    # shellcheck disable=SC2086
    BUILD_DIR=$BUILD_DIR OUT=$TMP/torch TVC_BUDGET_S=$(left) TVC_FLASH_DIR=$MODEL_DIR-bf16 \
      "$ROOT/tools/torch-vs-clawmine.sh" ${GPU_BENCH_TORCH_MODELS:-} || { say "torch baseline: rc $?"; status=1; }
    show_json "$TMP/torch/torch-vs-clawmine.json"
  fi
fi

# ---- the short table -------------------------------------------------------------------------
python3 - "$TMP" "$LAYOUTS" <<'EOF' || echo "(summary table: python3 failed)"
import json, os, sys
tmp, layouts = sys.argv[1], sys.argv[2].split()
print("\n== gpu-bench summary")
path = os.path.join(tmp, "kernels.jsonl")
if os.path.exists(path):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    dev = next((r for r in recs if r.get("kind") == "device"), {})
    ceil = next((r for r in recs if r.get("kind") == "ceilings"), {})
    cases = [r for r in recs if r.get("kind") == "case"]
    print(f"{dev.get('device', '?')}: copy {ceil.get('copy_gbps', 0):.0f} GB/s, BF16 GEMM {ceil.get('gemm_tflops', 0):.0f} TFLOP/s")
    cub = {(r["group"], r["name"], r["T"]): r["median_us"] for r in cases if r["impl"] == "cublas"}
    print(f"{'kernel':42s} {'fmt':6s} {'T':>5s} {'us':>9s} {'GB/s':>7s} {'TFLOP/s':>8s} {'roof':>6s} {'x cuBLAS':>8s}")
    for r in cases:
        keep = (r["impl"] == "clawmine" and r["T"] in (1, 2048) and r["group"] in ("linear", "grouped")) \
            or r["group"] == "moe" or (r["group"] == "attention" and "128K" in r["name"]) \
            or (r["group"] in ("indexer", "compressor") and "128K" in r["name"])
        if not keep:
            continue
        c = cub.get((r["group"], r["name"], r["T"]))
        x = f"{c / r['median_us']:.2f}" if c and r["median_us"] else "-"
        ratio = r.get("roofline_ratio") or 0
        flag = "" if not r.get("failed") else "  FAIL " + r.get("check", "")
        print(f"{r['group'] + ' ' + r['name']:42s} {r['format']:6s} {r['T']:5d} {r['median_us'] or 0:9.2f} "
              f"{r['gbps'] or 0:7.0f} {r['tflops'] or 0:8.2f} {100 * ratio:5.1f}% {x:>8s}{flag}")
    bad = [r for r in cases if r.get("failed")]
    print(f"{len(cases)} kernel cases, {len(bad)} failed checks")
else:
    print("kernels: no results")
print(f"{'e2e':8s} {'GB/token':>8s} {'decode ms/tok':>13s} {'floor ms':>8s} {'%bw':>6s}  {'prefill':>7s} {'tok/s':>7s} "
      f"{'TTFT ms':>8s} {'%GEMM':>6s}  {'round-robin':>14s}  graphs  load+place s")
for layout in layouts:
    p = os.path.join(tmp, f"e2e-{layout}.json")
    if not os.path.exists(p):
        why = "skipped (time budget)" if os.path.exists(os.path.join(tmp, f"e2e-{layout}.skipped")) else "no result"
        print(f"{layout:8s} {why}")
        continue
    j = json.load(open(p))
    d = j["decode"]
    rr = ", ".join(f"b={r['batch']} {r['tokens_per_second']:.1f} tok/s" for r in j["round_robin"]) or "-"
    bt = ", ".join(f"b={r['batch']} {r['tokens_per_second']:.1f} tok/s" for r in j.get("batched", []))
    if bt:
        rr += f" (batched: {bt})"
    for i, pf in enumerate(j["prefill"] or [{}]):
        head = (f"{layout:8s} {j['bytes_per_decode_token'] / 1e9:8.2f} {d['median_ms']:13.2f} {d['floor_ms']:8.2f} "
                f"{100 * d['roofline_ratio']:5.1f}%") if i == 0 else " " * 47
        if not pf:
            pre = f"{'-':>7s} {'-':>7s} {'-':>8s} {'-':>6s}"
        elif "error" in pf:
            pre = f"{pf['tokens']:7d} failed: {pf['error'][:60]}"
        else:
            pre = (f"{pf['tokens']:7d} {pf['tokens_per_second']:7.0f} {pf['ttft_ms']:8.0f} "
                   f"{100 * pf['gemm_ratio']:5.1f}%")
        tail = f"  {rr:>14s}  {j['cuda_graphs']:6s}  {j['load_seconds']:.1f}+{j['place_seconds']:.1f}" if i == 0 else ""
        print(f"{head}  {pre}{tail}")
for layout in layouts:
    p = os.path.join(tmp, f"serve-{layout}.json")
    if os.path.exists(p):
        j = json.load(open(p))
        for r in j["levels"]:
            print(f"{layout:8s} serve: {r['concurrency']:3d} clients, {r['output_tokens_per_s']:8.1f} out tok/s, "
                  f"TTFT p50 {r['ttft_ms_p50']:.0f} ms, ITL p50 {r['itl_ms_p50']:.2f} ms"
                  + (f", {r['n_errors']} errors" if r["n_errors"] else ""))
EOF
say "done (status $status)"
exit $status
