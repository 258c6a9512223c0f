#!/usr/bin/env python3
"""Where one decode step's kernel time goes, from an ncu CSV of a `clawmine bench` run.

tools/decode-profile.sh runs ncu (metrics gpu__time_duration.sum and dram__bytes_read.sum, clocks
not locked) over `clawmine bench` on a small model and feeds the CSV here. The last decode step is the kernels from
the last embed_kernel to the end (a bench run ends with decode steps; each starts by embedding its
token). Kernels are serialized under ncu, so the sum is kernel time, not the step's wall time
(branches overlap in a real step): use it to compare kernels and kinds, not as a latency.

Prints markdown: the step's kernels by kind (the last kernel, the LM head's GEMV, apart), then by
kernel, then (--sequence) every kernel of the step in launch order with its stream, grid and block
(the serial chain of a layer reads off it). Where the CSV has dram__bytes_read.sum, every table
also gives the DRAM bytes read and the rate (MB / us = TB/s): for a weight-streaming GEMV that is
its achieved bandwidth inside the step (ncu flushes the caches before each kernel, so its weights
come from DRAM), to set against the copy bandwidth of the card.

  python3 tools/decode_profile.py ncu.csv [--sequence]
"""
import argparse
import collections
import csv
import re
import sys

# (kind, pattern over the demangled name), first match wins.
KINDS = [
    ("MXFP4 / NVFP4 streaming GEMV (routed experts, FP4 projections)", r"gemv_stream_(cluster_)?kernel<(5|6)\b"),
    ("FP8 / BF16 streaming GEMV (large projections)", r"gemv_stream_(cluster_)?kernel<"),
    ("tensor-core GEMV (kMma)", r"gemv_mma_kernel<"),
    ("wgmma GEMV (one-token FP8 projections, the shared expert's gate/up)", r"gemv_wgmma_kernel<"),
    ("BF16 / F32 FMA GEMV (router gate, compressor and indexer weights)", r"gemv_kernel3<"),
    ("FP8 / FP4 FMA GEMV (small projections)", r"gemv_kernel<"),
    ("hyper-connection sites", r"\bhc_"),
    ("rms_norm / norm_rope_qdq / rope / qdq", r"norm|rope|qdq"),
    ("attention split + merge", r"attention_decode|sparse_attention"),
    ("MoE route / plan / combine", r"moe_"),
    ("compressors", r"compress"),
    ("indexer scores + top-k", r"indexer|topk"),
    ("window copies", r"copy16"),
    # Prefill (kernel_timeline.py on a --prefill-trace file):
    ("tiled GEMM (gemm_mma / gemm_fma)", r"gemm_(mma|fma)_kernel<"),
    ("BF16 copies of quantized weights (dequant_bf16)", r"dequant_bf16"),
    ("cuBLAS GEMM (prefill projections on the BF16 copies)", r"gemm|cutlass|xmma|sm90_"),
    ("prefill attention (attention_mma, merge_splits)", r"attention_mma|merge_splits"),
]


def short_name(name):
    """A kernel's name as ncu prints it, without namespaces and parameters. Also takes the C++ ABI's
    demangling (kernel_timeline.py's CUPTI names): `(anonymous namespace)`, enum casts such as
    `(clawmine::backend::cuda::WFmt)3` and `false` / `true` template arguments as ncu shows them."""
    name = name.replace("(anonymous namespace)::", "")
    name = re.sub(r"\((?:[A-Za-z_]\w*::)*[A-Za-z_]\w*\)(-?\d+)", r"\1", name)
    name = re.sub(r"\bfalse\b", "0", re.sub(r"\btrue\b", "1", name))
    name = re.sub(r"\(.*", "", name)
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"clawmine::(backend::cuda::)?(<unnamed>::)?", "", name)
    name = re.sub(r"(attn::)?<unnamed>::", "", name)
    return name


def kind_of(name):
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other (swiglu, attention_index, add, embed, ...)"


# Units ncu prints with --print-units base (and the scaled ones, should a CSV have them).
TIME_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
BYTES_MB = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "KB": 1e-3, "MB": 1.0, "GB": 1e3}


def read_kernels(path):
    """Kernels in launch order (by ncu's ID): name, us, mb (DRAM MB read or None), stream, grid, block."""
    kernels = {}
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own log lines are not CSV
    rows = csv.reader(lines)
    header = next(rows)
    col = {h: i for i, h in enumerate(header)}
    for r in rows:
        metric, unit = r[col["Metric Name"]], r[col["Metric Unit"]]
        if metric not in ("gpu__time_duration.sum", "dram__bytes_read.sum"):
            continue
        value = float(r[col["Metric Value"]].replace(",", ""))
        k = kernels.setdefault(int(r[col["ID"]]), {"name": short_name(r[col["Kernel Name"]]), "us": None, "mb": None,
                                                   "stream": r[col["Stream"]], "grid": r[col["Grid Size"]],
                                                   "block": r[col["Block Size"]]})
        if metric == "gpu__time_duration.sum":
            if unit not in TIME_US:
                sys.exit(f"decode_profile: unknown time unit {unit!r}")
            k["us"] = value * TIME_US[unit]
        else:
            if unit not in BYTES_MB:
                sys.exit(f"decode_profile: unknown byte unit {unit!r}")
            k["mb"] = value * BYTES_MB[unit]
    return [k for _, k in sorted(kernels.items()) if k["us"] is not None]


def rate(mb, us):
    return f"{mb / us:.2f}" if us > 0 else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="ncu --csv --print-units base --metrics gpu__time_duration.sum[,dram__bytes_read.sum] output")
    ap.add_argument("--sequence", action="store_true", help="also list the step's kernels in launch order")
    args = ap.parse_args()
    kernels = read_kernels(args.csv)
    starts = [i for i, k in enumerate(kernels) if k["name"].startswith("embed_kernel")]
    if not starts:
        sys.exit("decode_profile: no embed_kernel in the CSV (not a clawmine bench run?)")
    step = kernels[starts[-1]:]
    dram = all(k["mb"] is not None for k in step)  # the CSV has the bytes metric for every kernel
    total = sum(k["us"] for k in step)
    head = f"decode step: {len(step)} kernels, {total:.0f} us of kernel time (serialized under ncu)"
    if dram:
        mb = sum(k["mb"] for k in step)
        head += f", {mb:.0f} MB read from DRAM ({rate(mb, total)} TB/s over the kernel time)"
    print(head + "\n")
    by_kind = collections.defaultdict(lambda: [0, 0.0, 0.0])
    by_name = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for i, k in enumerate(step):
        # The step ends with the LM head's GEMV (after hc_head and the final norm).
        kind = "LM head GEMV" if i == len(step) - 1 and "gemv" in k["name"] else kind_of(k["name"])
        for table, key in ((by_kind, kind), (by_name, k["name"])):
            table[key][0] += 1
            table[key][1] += k["us"]
            table[key][2] += k["mb"] or 0.0
    extra_head, extra_rule = (" | MB read | TB/s", "|---|---") if dram else ("", "")
    for title, table in (("kind", by_kind), ("kernel", by_name)):
        print(f"| {title} | us | kernels | share{extra_head} |\n|---|---|---|---{extra_rule}|")
        for key, (n, us, mb) in sorted(table.items(), key=lambda kv: -kv[1][1]):
            extra = f" | {mb:.1f} | {rate(mb, us)}" if dram else ""
            print(f"| {key} | {us:.1f} | {n} | {100.0 * us / total:.1f}%{extra} |")
        print()
    if args.sequence:
        print(f"| us{extra_head} | stream | grid | block | kernel |\n|---{extra_rule}|---|---|---|---|")
        for k in step:
            extra = f" | {k['mb']:.2f} | {rate(k['mb'], k['us'])}" if dram else ""
            print(f"| {k['us']:.2f}{extra} | {k['stream']} | {k['grid']} | {k['block']} | {k['name']} |")


if __name__ == "__main__":
    main()
