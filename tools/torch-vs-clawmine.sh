#!/usr/bin/env bash
# clawmine next to the baseline a user would otherwise reach for (issue 9): PyTorch/transformers'
# DeepseekV4ForCausalLM in BF16, eager, on the same card and the same weights. For each model:
# `clawmine bench --backend cuda` (BF16 activations) and bench/torch_baseline.py with the same
# prompt lengths and decode token count; then one side-by-side table (prefill tok/s, decode
# ms/token, clawmine's speedup) and, with TVC_BATCH=1,8, a batch table (clawmine round-robin and batched vs
# transformers' batched forward). Builds nothing (tools/gpu-check.sh builds clawmine and
# clawmine-random-model into BUILD_DIR).
#
#   tools/torch-vs-clawmine.sh [MODEL_DIR | flash] ...
#   device tool: run(command="GPU_CHECK_PHASES='build bench' GPU_BENCH_TORCH=only bash tools/gpu-check.sh",
#                    carry=[".devdeps"])        (the hook in tools/gpu-bench.sh calls this script)
#
# Default models: tests/fixtures/models/tiny-a, tiny-b, tiny-c (BF16, hidden 64: launch overhead
# only) and `flash`: a random model of V4-Flash geometry cut to TVC_FLASH_LAYERS layers (default 8:
# S S C H C H C H, 64 experts of 2048, vocab 129280), written by clawmine-random-model (release
# layout) and rewritten to BF16 in transformers' layout by bench/release_to_hf.py (30.2 GB for 8
# layers: both engines load that directory). Sizing: BF16 is ~3.5 GB per Flash layer + 2.1 GB of
# embed/head; 8 layers leave room on an 80 GB card for transformers' eager attention at 2048 tokens
# (fp32 scores, 64 heads) and fit the device's 64 GB disk next to the 10.2 GB quantized source.
# A release-layout MODEL_DIR runs as is in clawmine; torch_baseline rewrites it to a temporary
# transformers-layout copy (quantized linears decoded to BF16, so a quantized model is then not
# the same computation: the table says "dequantized").
#
# Environment: BUILD_DIR (default build-gpu), OUT (logs + JSON; default .out/torch-vs-clawmine),
# PYTHON (python3), TVC_PROMPTS (128,512,2048; capped at max_position_embeddings), TVC_DECODE (32),
# TVC_BATCH (1; 1,8 adds batch 8), TVC_BATCH_PROMPT (128), TVC_REPEATS (torch medians, 3),
# TVC_FLASH_LAYERS (8), TVC_FLASH_DIR (/tmp/clawmine-flash-bf16; deleted at exit unless
# TVC_KEEP_FLASH=1), TVC_QDQ (clawmine --official-qdq, default off: transformers has no KV/indexer
# quantize-dequantize, so both compute the same model), TVC_CLAWMINE_ARGS / TVC_TORCH_ARGS (extra
# flags), TVC_TIMEOUT_S (per run, 600), TVC_BUDGET_S (0 = none: no run starts after this many
# seconds), DEVROOT (gpu-check's prefix: its fallback-lib goes on LD_LIBRARY_PATH when present).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
OUT=${OUT:-$ROOT/.out/torch-vs-clawmine}
PYTHON=${PYTHON:-python3}
PROMPTS=${TVC_PROMPTS:-128,512,2048}
DECODE=${TVC_DECODE:-32}
BATCH=${TVC_BATCH:-1}
BATCH_PROMPT=${TVC_BATCH_PROMPT:-128}
REPEATS=${TVC_REPEATS:-3}
FLASH_LAYERS=${TVC_FLASH_LAYERS:-8}
FLASH_DIR=${TVC_FLASH_DIR:-/tmp/clawmine-flash-bf16}
QDQ=${TVC_QDQ:-off}
CLAWMINE_ARGS=${TVC_CLAWMINE_ARGS:-}
TORCH_ARGS=${TVC_TORCH_ARGS:-}
RUN_TIMEOUT_S=${TVC_TIMEOUT_S:-600}
BUDGET_S=${TVC_BUDGET_S:-0}
DEVROOT=${DEVROOT:-/tmp/devroot}
START=$(date +%s)

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit "${1:-0}"
}
case "${1:-}" in -h | --help) usage 0 ;; esac
for v in DECODE BATCH_PROMPT REPEATS FLASH_LAYERS RUN_TIMEOUT_S BUDGET_S; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "torch-vs-clawmine: $v='${!v}' is not a number" >&2; exit 2; }
done
[[ $PROMPTS =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "torch-vs-clawmine: TVC_PROMPTS='$PROMPTS' is not a list of sizes" >&2; exit 2; }
[[ $BATCH =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "torch-vs-clawmine: TVC_BATCH='$BATCH' is not a list of sizes" >&2; exit 2; }
case $QDQ in on | off) ;; *) echo "torch-vs-clawmine: TVC_QDQ must be on or off" >&2; exit 2 ;; esac

MODELS=("$@")
((${#MODELS[@]})) || MODELS=("$ROOT/tests/fixtures/models/tiny-a" "$ROOT/tests/fixtures/models/tiny-b"
  "$ROOT/tests/fixtures/models/tiny-c" flash)
cm=$BUILD_DIR/clawmine
gen=$BUILD_DIR/clawmine-random-model
[ -x "$cm" ] || { echo "torch-vs-clawmine: $cm not built (BUILD_DIR=$BUILD_DIR; tools/gpu-check.sh builds it)" >&2; exit 2; }
for m in "${MODELS[@]}"; do
  [ "$m" = flash ] || [ -f "$m/config.json" ] || { echo "torch-vs-clawmine: $m: no config.json (a model directory or 'flash')" >&2; exit 2; }
done
if [ -d "$DEVROOT/fallback-lib" ] && [[ ":${LD_LIBRARY_PATH:-}:" != *":$DEVROOT/fallback-lib:"* ]]; then
  export LD_LIBRARY_PATH=$DEVROOT/fallback-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}  # as gpu-check's export_env
fi
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
[ "${TVC_KEEP_FLASH:-0}" = 1 ] || trap 'rm -rf "$FLASH_DIR" "$FLASH_DIR.q"' EXIT

elapsed() { echo $(($(date +%s) - START)); }
say() { echo "[torch-vs-clawmine $(elapsed)s] $*"; }
lim() {  # a run's timeout: RUN_TIMEOUT_S, and never past the budget (never 0 = none)
  local l=$RUN_TIMEOUT_S
  if ((BUDGET_S > 0)); then
    local b=$((BUDGET_S - $(elapsed)))
    ((b < l)) && l=$b
  fi
  ((l < 1)) && l=1
  echo "$l"
}
over_budget() { ((BUDGET_S > 0 && $(elapsed) >= BUDGET_S)); }

make_flash() {  # the mid-size BF16 model in $FLASH_DIR
  [ -x "$gen" ] || { say "flash: $gen not built"; return 1; }
  rm -rf "$FLASH_DIR" "$FLASH_DIR.q"
  say "flash: clawmine-random-model, V4-Flash geometry, $FLASH_LAYERS layers (release layout) -> $FLASH_DIR.q"
  CLAWMINE_RANDOM_MODEL=$gen timeout "$(lim)" "$ROOT/tools/make-flash-model.sh" "$FLASH_DIR.q" release \
    --layers "$FLASH_LAYERS" >"$OUT/flash.gen.log" 2>&1 || { tail -5 "$OUT/flash.gen.log"; return 1; }
  tail -1 "$OUT/flash.gen.log"
  say "flash: rewriting in transformers' layout, linears decoded to BF16 -> $FLASH_DIR"
  timeout "$(lim)" "$PYTHON" "$ROOT/bench/release_to_hf.py" "$FLASH_DIR.q" "$FLASH_DIR" >"$OUT/flash.convert.log" 2>&1 ||
    { tail -5 "$OUT/flash.convert.log"; return 1; }
  tail -1 "$OUT/flash.convert.log"
  rm -rf "$FLASH_DIR.q"
}

# Prompt lengths the model can hold (max_position_embeddings), comma-separated.
lengths_for() {
  "$PYTHON" - "$1/config.json" "$PROMPTS" <<'EOF'
import json, sys
cap = json.load(open(sys.argv[1])).get("max_position_embeddings", 1 << 30)
print(",".join(x for x in sys.argv[2].split(",") if int(x) <= cap) or "")
EOF
}

status=0
NAMES=()
for m in "${MODELS[@]}"; do
  if over_budget; then
    say "$m: skipped (budget of $BUDGET_S s spent)"
    status=1
    continue
  fi
  name=$(basename "$m")
  dir=$m
  if [ "$m" = flash ]; then
    name=flash-${FLASH_LAYERS}L
    make_flash || { say "flash: could not make the model"; status=1; continue; }
    dir=$FLASH_DIR
  fi
  lengths=$(lengths_for "$dir")
  [ -n "$lengths" ] || { say "$name: no prompt length in $PROMPTS fits max_position_embeddings"; status=1; continue; }
  NAMES+=("$name")
  rm -f "$OUT/$name.clawmine.json" "$OUT/$name.torch.json"
  say "$name: clawmine bench ($dir)"
  # shellcheck disable=SC2086
  timeout "$(lim)" "$cm" bench --model "$dir" --backend cuda --prompt-lengths "$lengths" --decode-tokens "$DECODE" \
    --batch-sizes "$BATCH" --batch-prompt "$BATCH_PROMPT" --official-qdq "$QDQ" --ceilings off $CLAWMINE_ARGS \
    --json "$OUT/$name.clawmine.json" >"$OUT/$name.clawmine.log" 2>&1
  rc=$?
  sed -n '/^== clawmine bench/,$p' "$OUT/$name.clawmine.log"
  ((rc == 0)) || { tail -5 "$OUT/$name.clawmine.log"; say "$name: clawmine bench rc $rc"; status=1; }
  say "$name: torch baseline"
  # shellcheck disable=SC2086
  timeout "$(lim)" "$PYTHON" "$ROOT/bench/torch_baseline.py" --model "$dir" --prompt-lengths "$lengths" \
    --decode-tokens "$DECODE" --batch-sizes "$BATCH" --batch-prompt "$BATCH_PROMPT" --repeats "$REPEATS" \
    --seed 1 $TORCH_ARGS --json "$OUT/$name.torch.json" >"$OUT/$name.torch.log" 2>&1
  rc=$?
  sed -n '/^== torch baseline/,$p' "$OUT/$name.torch.log"
  ((rc == 0)) || { tail -5 "$OUT/$name.torch.log"; say "$name: torch baseline rc $rc"; status=1; }
  [ "$m" = flash ] && [ "${TVC_KEEP_FLASH:-0}" != 1 ] && rm -rf "$FLASH_DIR"
done

# ---- the side-by-side table ------------------------------------------------------------------
"$PYTHON" - "$OUT" "${NAMES[@]}" <<'EOF' | tee "$OUT/summary.txt" || { echo "(table: $PYTHON failed)"; status=1; }
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]

def load(name, who):
    p = os.path.join(out, f"{name}.{who}.json")
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None

def ratio(num, den):
    return f"{num / den:6.2f}x" if num and den else f"{'-':>7s}"

rows, device, notes = [], None, []
print("\n== clawmine vs PyTorch/transformers BF16 eager (speedup = clawmine faster by; decode at batch 1)")
print(f"{'model':14s} {'prompt':>6s} {'clawmine tok/s':>14s} {'torch tok/s':>11s} {'speedup':>8s}  "
      f"{'decode ctx':>10s} {'clawmine ms/tok':>15s} {'torch ms/tok':>12s} {'speedup':>8s}")
for name in names:
    c, t = load(name, "clawmine"), load(name, "torch")
    if c is None or t is None:
        print(f"{name:14s} {'no result from ' + ' and '.join(w for w, j in (('clawmine', c), ('torch', t)) if j is None)}")
        continue
    device = device or c.get("device")
    mdir = c.get("model", "")
    try:
        quantized = "quantization_config" in json.load(open(os.path.join(mdir, "config.json")))
    except (OSError, ValueError):
        quantized = False
    if quantized or os.path.exists(os.path.join(mdir, "hf_quant_config.json")):
        notes.append(f"{name}: torch runs the weights dequantized to BF16, clawmine the quantized checkpoint")
    cp = {p["tokens"]: p for p in c.get("prefill", [])}
    tp = {p["tokens"]: p for p in t.get("prefill", [])}
    cd, td = c.get("decode") or {}, t.get("decode") or {}
    ctx = cd.get("context") or td.get("context")
    for L in sorted(set(cp) | set(tp)):
        a, b = cp.get(L, {}), tp.get(L, {})
        ca, tb = a.get("tokens_per_second"), b.get("tokens_per_second")
        fa = f"{ca:14.0f}" if ca else f"{'failed' if 'error' in a else '-':>14s}"
        fb = f"{tb:11.0f}" if tb else f"{'failed' if 'error' in b else '-':>11s}"
        dec = ""
        if L == ctx:
            cm, tm = cd.get("median_ms"), td.get("median_ms")
            dec = (f"{ctx:10d} {cm if cm else 0:15.2f} {tm if tm else 0:12.2f} {ratio(tm, cm):>8s}")
        print(f"{name:14s} {L:6d} {fa} {fb} {ratio(ca, tb):>8s}  {dec}")
        rows.append({"model": name, "prompt": L, "clawmine_prefill_tokens_per_second": ca,
                     "torch_prefill_tokens_per_second": tb, "prefill_speedup": ca / tb if ca and tb else None,
                     **({"decode_context": ctx, "clawmine_decode_ms": cd.get("median_ms"),
                         "torch_decode_ms": td.get("median_ms"),
                         "decode_speedup": td["median_ms"] / cd["median_ms"]
                         if cd.get("median_ms") and td.get("median_ms") else None} if L == ctx else {})})
batch = []
for name in names:
    c, t = load(name, "clawmine"), load(name, "torch")
    if not c or not t:
        continue
    rr = {r["batch"]: r for r in c.get("round_robin", [])}
    cb = {r["batch"]: r for r in c.get("batched", [])}  # clawmine's batched forward (older runs: none)
    for b in t.get("batched", []):
        r, q = rr.get(b["batch"], {}), cb.get(b["batch"], {})
        batch.append((name, b["batch"], r.get("tokens_per_second"), q.get("tokens_per_second"),
                      b.get("tokens_per_second")))
if batch:
    print(f"\n{'model':14s} {'batch':>5s} {'clawmine tok/s (round-robin)':>28s} {'clawmine tok/s (batched)':>24s} "
          f"{'torch tok/s (batched)':>21s} {'speedup':>8s}")
    for name, B, ca, cq, tb in batch:
        best = max(v for v in (ca, cq, 0) if v is not None)
        print(f"{name:14s} {B:5d} {ca if ca else 0:28.1f} {cq if cq else 0:24.1f} {tb if tb else 0:21.1f} "
              f"{ratio(best, tb):>8s}")
        rows.append({"model": name, "batch": B, "clawmine_round_robin_tokens_per_second": ca,
                     "clawmine_batched_tokens_per_second": cq, "torch_batched_tokens_per_second": tb})
any_t = next((load(n, "torch") for n in names if load(n, "torch")), None)
if any_t:
    print(f"\ncard: {device or any_t.get('device')}; torch {any_t.get('torch_version')}, transformers "
          f"{any_t.get('transformers_version')}, attention {any_t.get('attn_implementation')}, experts "
          f"{any_t.get('experts_implementation')}; torch = median of {any_t.get('repeats')} runs after a warm-up "
          f"run per shape, clawmine bench = one run per prompt length after its own warm-up")
for n in notes:
    print("note:", n)
json.dump({"rows": rows, "device": device}, open(os.path.join(out, "torch-vs-clawmine.json"), "w"))
EOF
say "done (status $status; logs and JSON in $OUT)"
exit $status
