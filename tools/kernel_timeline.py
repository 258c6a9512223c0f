#!/usr/bin/env python3
"""Where a decode step's time goes as it runs, from `clawmine bench --kernel-trace FILE` (or one
prefill's, from `--prefill-trace FILE`: the same tables, its kernels by kind first).

The trace holds the GPU's own start and end stamps of every kernel of a few decode steps (CUPTI
concurrent-kernel records; the CUDA graph's nodes run as they do without a profiler). Unlike the ncu
table of tools/decode_profile.py (each kernel alone, caches flushed), the durations here are the
kernels' real ones, side streams overlap the main one, and the gaps between dependent kernels show.

Prints markdown: every step (its span from the first kernel's start to the last one's end, the time
some kernel runs, the idle rest, and the main stream's kernels, busy time and gaps); then for one
step (default the last) its kernels by kind (the same kinds as decode_profile.py; the last GEMV is
the LM head) with their summed durations, those on the main stream apart; its whole layers by kind
(CSA, HCA, sliding: from the hc site after one MoE's combine to the next; median, min, max us);
what each layer kind's attention kernel waited for (from the hc site before it: its start, the end
of its last input, and which kernel that was: the chain to shorten); when each MoE's launches ended
after the hc site before its route (route, routed gate/up and down, the shared expert's gate/up and
down, combine, the next site; medians per layer kind); which kernels held registers
while the weight-streaming GEMVs ran (traces with the regs column: a kernel launched early by PDL, or on
a side branch, keeps its blocks' registers while it waits, and the GEMV's warps that do not fit wait for
them; the seventeenth session's compress_store); the main stream's gaps (a negative gap is a
programmatic launch that began before the kernel ahead of it ended); with --against BASE (another
trace, e.g. the first variant's of tools/decode-ab.sh) the kernels whose summed time in the step moved
most against the same step of BASE (the last one where it has fewer), launches and us each; and with
--sequence every kernel in start order.

  python3 tools/kernel_timeline.py trace.csv [--step N] [--against BASE.csv] [--sequence] [--sms N]
"""
import argparse
import collections
import csv
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_profile import kind_of, short_name  # noqa: E402  (the same kinds and names)


def read_trace(path):
    """(comment, [kernel dicts in start order])."""
    comment = ""
    with open(path, newline="") as f:
        lines = []
        for line in f:
            if line.startswith("#"):
                comment = comment or line[1:].strip()
            elif line.strip():
                lines.append(line)
    if not lines:
        sys.exit(f"kernel_timeline: {path} has no kernel rows")
    rows = csv.DictReader(lines)
    need = {"step", "start_ns", "end_ns", "stream", "grid", "block", "name"}
    if not need <= set(rows.fieldnames or []):
        sys.exit(f"kernel_timeline: {path} lacks columns {sorted(need - set(rows.fieldnames or []))} "
                 "(not a clawmine bench --kernel-trace file?)")
    kernels = []
    for r in rows:
        kernels.append({"step": int(r["step"]), "start": int(r["start_ns"]) / 1e3, "end": int(r["end_ns"]) / 1e3,
                        "stream": r["stream"], "grid": r["grid"], "block": r["block"],
                        "regs": int(r["regs"]) if r.get("regs") else None, "name": short_name(r["name"])})
    kernels.sort(key=lambda k: k["start"])
    return comment, kernels


def union(intervals):
    """The union of [start, end) intervals, merged and sorted."""
    out = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def busy(kernels):
    """Time some kernel runs (the union of their intervals), us."""
    return sum(e - s for s, e in union((k["start"], k["end"]) for k in kernels))


def gaps(kernels):
    """Start of each kernel minus the end of the one before it, in start order."""
    return [b["start"] - a["end"] for a, b in zip(kernels, kernels[1:])]


def layers(kernels):
    """[(kind, us)] of the step's whole layers: a layer ends where the hyper-connection site after its
    MoE's combine ends (hc_site after moe_combine); its kind is CSA where an indexer kernel runs in
    it, HCA where a compressor does, else sliding."""
    ends, after_combine = [], False
    for k in kernels:
        if "moe_combine" in k["name"]:
            after_combine = True
        elif after_combine and "hc_site" in k["name"]:
            ends.append(k["end"])
            after_combine = False
    return [(layer_kind(kernels, a, b), b - a) for a, b in zip(ends, ends[1:])]


def layer_kind(kernels, t0, t1):
    """CSA where an indexer kernel starts in [t0, t1) or two compressor stores do (the layer's and
    the indexer's keys: at short contexts a CSA layer runs no indexer kernel, its top-k takes every
    entry), HCA where a compressor does, else sliding."""
    names = [k["name"] for k in kernels if t0 <= k["start"] < t1]
    stores = sum("compress_store" in n for n in names)
    return ("CSA" if any("indexer" in n for n in names) or stores >= 2
            else "HCA" if any("compress" in n for n in names) else "sliding")


def attention_waits(kernels):
    """[(kind, us to the attention's start, us to its last input's end, that input's name)] for
    every attention kernel of the step, from the end of the hyper-connection site before it. Its
    inputs: on each stream, the last kernel that started after that site's start and before the
    attention (a programmatic launch may start before its input ends, so the latest of those ends
    is the chain the attention waited for). Kind as in layers()."""
    out = []
    for i, a in enumerate(kernels):
        if "attention_decode" not in a["name"] or "merge" in a["name"]:
            continue
        sites = [k for k in kernels[:i] if "hc_site" in k["name"] and k["end"] <= a["start"]]
        if not sites:
            continue
        h = sites[-1]
        last = {}
        for k in kernels[:i]:
            if k["start"] >= h["start"] and k is not h and "hc_site" not in k["name"]:
                last[k["stream"]] = k  # start order: the stream's latest
        if not last:
            continue
        b = max(last.values(), key=lambda k: k["end"])
        out.append((layer_kind(kernels, h["start"], a["start"]), a["start"] - h["end"], b["end"] - h["end"],
                    b["name"].split("<")[0]))
    return out


MOE_COLUMNS = ("route", "routed gate/up", "routed down", "shared gate/up", "shared down", "combine", "next site")


def moe_phases(kernels):
    """[(kind, {column: us after the site's end})] for every MoE of the step, from the end of the
    hyper-connection site before its route. Its launches: moe_route (the last before the combine), the routed gate/up and down (the
    last two GEMVs on the route's stream before the combine: with several weight formats, the last
    format's launches), the shared expert's gate/up and down (the first and last GEMVs on the other
    streams between that site and the next one: none when they run on the route's stream,
    CLAWMINE_BRANCHES=1), moe_combine and the next site. Kind as in layers(): of the layer that
    ends at that next site."""
    out = []
    layer_start = kernels[0]["start"] if kernels else 0.0
    for ci, c in enumerate(kernels):
        if "moe_combine" not in c["name"]:
            continue
        routes = [k for k in kernels[:ci] if "moe_route" in k["name"]]
        if not routes:
            continue
        r = routes[-1]
        sites = [k for k in kernels[:ci] if "hc_site" in k["name"] and k["start"] < r["start"]]
        nxt = [k for k in kernels[ci + 1:] if "hc_site" in k["name"]]
        if not sites:
            continue
        h, n = sites[-1], (nxt[0] if nxt else None)
        stop = n["start"] if n else c["end"]
        routed = [k for k in kernels[:ci] if k["stream"] == r["stream"] and k["start"] > r["start"] and
                  "gemv" in k["name"]]
        shared = [k for k in kernels if k["stream"] != r["stream"] and h["start"] <= k["start"] < stop and
                  "gemv" in k["name"]]
        at = {"route": r, "combine": c, "next site": n}
        if len(routed) >= 2:
            at["routed gate/up"], at["routed down"] = routed[-2], routed[-1]
        if len(shared) >= 2:
            at["shared gate/up"], at["shared down"] = shared[0], shared[-1]
        ends = {col: k["end"] - h["end"] for col, k in at.items() if k is not None}
        layer_end = n["end"] if n else c["end"]
        out.append((layer_kind(kernels, layer_start, layer_end), ends))
        layer_start = layer_end
    return out


def dims(s):
    """Product of an AxBxC field (0 where it does not parse)."""
    try:
        a, b, c = (int(x) for x in s.split("x"))
        return a * b * c
    except ValueError:
        return 0


def registers_beside_streams(kernels, sms, regs_per_sm=65536):
    """[(name, launches, regs per thread, threads, share of the GPU's registers, us, register-file us)] of
    the kernels (other than the streaming GEMVs) that ran while some gemv_stream kernel did, largest
    register-file us first. A launch's share: regs x threads per block x blocks over the register file of
    every multiprocessor (at most 1: an estimate, its blocks need not all be resident at once); its
    register-file us: that share times the time it overlapped the streaming GEMVs."""
    streams = union([(k["start"], k["end"]) for k in kernels if "gemv_stream" in k["name"]])
    total = float(sms * regs_per_sm)
    by = collections.OrderedDict()
    for k in kernels:
        if "gemv_stream" in k["name"] or not k.get("regs"):
            continue
        over = sum(max(0.0, min(k["end"], e) - max(k["start"], s)) for s, e in streams)
        if over <= 0:
            continue
        threads = dims(k["block"])
        share = min(1.0, k["regs"] * threads * dims(k["grid"]) / total)
        row = by.setdefault(k["name"], [0, k["regs"], threads, 0.0, 0.0, 0.0])
        row[0] += 1
        row[3] = max(row[3], share)
        row[4] += over
        row[5] += share * over
    return sorted(((n, *v) for n, v in by.items()), key=lambda r: -r[6])


def by_step(kernels):
    """{step: [its kernels in start order]}, steps in order."""
    steps = collections.OrderedDict()
    for k in kernels:
        steps.setdefault(k["step"], []).append(k)
    return steps


def span_of(ks):
    """us from a step's first kernel start to its last kernel end."""
    return max(k["end"] for k in ks) - ks[0]["start"]


def kernel_sums(ks):
    """{kernel name: [launches, summed us]} over one step's kernels."""
    sums = {}
    for k in ks:
        row = sums.setdefault(k["name"], [0, 0.0])
        row[0] += 1
        row[1] += k["end"] - k["start"]
    return sums


def against_rows(base, this, top):
    """(name, base launches, base us, launches, us) of the `top` kernels whose summed time moved most."""
    names = set(base) | set(this)
    rows = [(n, *base.get(n, (0, 0.0)), *this.get(n, (0, 0.0))) for n in names]
    rows.sort(key=lambda r: (-abs(r[4] - r[2]), r[0]))
    return rows[:top]


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))] if v else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", help="CSV written by clawmine bench --kernel-trace")
    ap.add_argument("--step", type=int, default=None, help="the step to break down (default: the last)")
    ap.add_argument("--sequence", action="store_true", help="also list that step's kernels in start order")
    ap.add_argument("--against", metavar="BASE", default=None,
                    help="another trace: the kernels whose summed time in the step moved most against it")
    ap.add_argument("--sms", type=int, default=None,
                    help="multiprocessors of the card (default: from the trace's header, else 132, an H100 SXM)")
    args = ap.parse_args()
    comment, kernels = read_trace(args.trace)
    steps = by_step(kernels)
    # The base is read before anything is printed, so that a bad file stops the tool at once.
    base_steps = by_step(read_trace(args.against)[1]) if args.against else None
    if comment:
        print(f"kernel timeline: {comment}\n")
    print("| step | kernels | span us | busy us | idle us | main stream kernels | main busy us | main gaps us |")
    print("|---|---|---|---|---|---|---|---|")
    for s, ks in steps.items():
        span = span_of(ks)
        main = [k for k in ks if k["stream"] == ks[0]["stream"]]
        g = gaps(main)
        print(f"| {s} | {len(ks)} | {span:.1f} | {busy(ks):.1f} | {span - busy(ks):.1f} | {len(main)} | "
              f"{sum(k['end'] - k['start'] for k in main):.1f} | {sum(g):.1f} |")
    print()
    pick = args.step if args.step is not None else next(reversed(steps))
    if pick not in steps:
        sys.exit(f"kernel_timeline: no step {pick} in the trace (steps {list(steps)})")
    ks = steps[pick]
    main_stream = ks[0]["stream"]
    span = span_of(ks)
    last_gemv = max((i for i, k in enumerate(ks) if "gemv" in k["name"]), default=None)
    by_kind = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for i, k in enumerate(ks):
        kind = "LM head GEMV" if i == last_gemv and i >= len(ks) - 3 else kind_of(k["name"])
        d = k["end"] - k["start"]
        by_kind[kind][0] += 1
        by_kind[kind][1] += d
        if k["stream"] == main_stream:
            by_kind[kind][2] += d
    print(f"step {pick}: {len(ks)} kernels over {span:.1f} us (main stream {main_stream})\n")
    print("| kind | kernels | us | on the main stream us | main share of the span |\n|---|---|---|---|---|")
    for kind, (n, us, main_us) in sorted(by_kind.items(), key=lambda kv: -kv[1][2]):
        print(f"| {kind} | {n} | {us:.1f} | {main_us:.1f} | {100.0 * main_us / span:.1f}% |")
    per_kind = collections.OrderedDict()
    for kind, us in layers(ks):
        per_kind.setdefault(kind, []).append(us)
    if per_kind:
        print("\n| layers (hc site to hc site) | count | median us | min us | max us |\n|---|---|---|---|---|")
        for kind, v in per_kind.items():
            print(f"| {kind} | {len(v)} | {pct(v, 0.5):.1f} | {min(v):.1f} | {max(v):.1f} |")
    waits = collections.OrderedDict()
    for kind, start, ready, name in attention_waits(ks):
        waits.setdefault(kind, []).append((start, ready, name))
    if waits:
        print("\n| attention (from the site before it) | layers | median us to its start | median us to its last "
              "input's end | which input ended last |\n|---|---|---|---|---|")
        for kind, v in waits.items():
            last = collections.Counter(n for _, _, n in v).most_common()
            print(f"| {kind} | {len(v)} | {pct([x[0] for x in v], 0.5):.1f} | {pct([x[1] for x in v], 0.5):.1f} | "
                  f"{', '.join(f'{n} ({c})' for n, c in last)} |")
    phases = collections.OrderedDict()
    for kind, ends in moe_phases(ks):
        phases.setdefault(kind, []).append(ends)
    if phases:
        print("\n| MoE phase (median us after the site before it) | layers | " + " | ".join(MOE_COLUMNS) +
              " | routed down after its gate/up |\n|---|---|" + "---|" * (len(MOE_COLUMNS) + 1))
        for kind, v in phases.items():
            cells = []
            for col in MOE_COLUMNS:
                xs = [e[col] for e in v if col in e]
                cells.append(f"{pct(xs, 0.5):.1f}" if xs else "-")
            downs = [e["routed down"] - e["routed gate/up"] for e in v if "routed down" in e]
            cells.append(f"{pct(downs, 0.5):.1f}" if downs else "-")
            print(f"| {kind} | {len(v)} | " + " | ".join(cells) + " |")
    m = re.search(r"(\d+) SMs", comment)
    sms = args.sms or (int(m.group(1)) if m else 132)
    held = registers_beside_streams(ks, sms)
    if held:
        print(f"\n| registers held beside the streaming GEMVs ({sms} SMs) | launches | regs/thread | threads/block | "
              "share of the register file | us beside them | register-file us |\n|---|---|---|---|---|---|---|")
        for name, n, regs, threads, share, over, rf in held[:10]:
            print(f"| {name} | {n} | {regs} | {threads} | {100.0 * share:.1f}% | {over:.1f} | {rf:.1f} |")
    main = [k for k in ks if k["stream"] == main_stream]
    g = gaps(main)
    pos = [x for x in g if x > 0]
    neg = [x for x in g if x <= 0]
    print(f"\nmain stream: {len(main)} kernels, {len(g)} gaps: {sum(pos):.1f} us idle over {len(pos)} gaps "
          f"(median {pct(pos, 0.5):.2f}, p90 {pct(pos, 0.9):.2f}, max {max(pos, default=0.0):.2f} us); "
          f"{len(neg)} kernels began before the one ahead ended (by {-sum(neg):.1f} us in all)")
    if base_steps:
        bpick = pick if pick in base_steps else next(reversed(base_steps))
        bks = base_steps[bpick]
        bspan = span_of(bks)
        print(f"\nagainst {os.path.basename(args.against)} (its step {bpick}): span {bspan:.1f} -> {span:.1f} us "
              f"({span - bspan:+.1f}); busy {busy(bks):.1f} -> {busy(ks):.1f} us")
        print("\n| kernel (against the base trace) | launches | base us | us | change us | change |\n"
              "|---|---|---|---|---|---|")
        for name, bn, bus, n, us in against_rows(kernel_sums(bks), kernel_sums(ks), 15):
            change = f"{100.0 * (us - bus) / bus:+.0f}%" if bus > 0 else "new"
            launches = f"{bn} -> {n}" if bn != n else f"{n}"
            print(f"| {name} | {launches} | {bus:.1f} | {us:.1f} | {us - bus:+.1f} | {change} |")
    if args.sequence:
        print("\n| start us | us | gap us | stream | grid | block | kernel |\n|---|---|---|---|---|---|---|")
        last_end = {}
        for k in ks:
            prev = last_end.get(k["stream"])
            gap = f"{k['start'] - prev:.2f}" if prev is not None else "-"
            last_end[k["stream"]] = k["end"]
            print(f"| {k['start'] - ks[0]['start']:.2f} | {k['end'] - k['start']:.2f} | {gap} | {k['stream']} | "
                  f"{k['grid']} | {k['block']} | {k['name']} |")


if __name__ == "__main__":
    main()
