#!/usr/bin/env python3
"""Registers and spills of a CUDA source's kernels, in the working tree against another commit.

A decode GEMV's plan sizes its launch to one wave of resident blocks, and the registers ptxas picks
decide how many fit on an SM. That choice moves with small edits: in the thirty-eighth session
(docs/PERFORMANCE.md) unrolling the wgmma GEMV's activation staging took NVFP4's 16-k-block
instance from 142 to 184 registers (3 -> 2 blocks of 128 threads per SM), and __launch_bounds__
made other instances spill. Run this before measuring a kernel edit.

It compiles FILE twice with nvcc -cubin -Xptxas -v for --arch (the backend's defines, -O3,
C++20): from the working tree and from --base (a temporary git worktree, removed afterwards).
It prints one line per kernel whose registers or spill bytes differ, with the resident blocks
per SM that the registers allow at --threads per block. `!` marks a kernel where that number
changes. A kernel whose parameter list changed is paired with itself by its demangled name and
template arguments (c++filt) and marked "(parameters changed)"; other kernels that only one side
has are listed as such. Exit status 0 (1 when nvcc fails).

  python3 tools/ptxas_diff.py src/backend/cuda/linear_gemv_wgmma.cu [--base main] [--threads 128]
  python3 tools/ptxas_diff.py --logs OLD.log NEW.log   (two saved ptxas -v logs, no compiling)
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

REGS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32

ENTRY = re.compile(r"Compiling entry function '([^']+)'")
USED = re.compile(r"Used (\d+) registers")
SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def stable_name(mangled):
    """The mangled name without its anonymous namespace's per-compilation tags, so one kernel's
    names match across two builds."""
    name = re.sub(r"\d+_GLOBAL__N__[0-9a-f]+_\d+_", "", mangled)
    return re.sub(r"_cu_[0-9a-f]{8}", "_cu_", name)


def parse_ptxas(text, mangled=None):
    """{stable kernel name: (registers, spill store bytes, spill load bytes)} from a ptxas -v log;
    `mangled`, when given, gets {stable name: the name as compiled} (for demangling)."""
    out, name = {}, None
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            name = stable_name(m.group(1))
            out[name] = [0, 0, 0]
            if mangled is not None:
                mangled[name] = m.group(1)
            continue
        if name is None:
            continue
        m = SPILL.search(line)
        if m:
            out[name][1], out[name][2] = int(m.group(1)), int(m.group(2))
        m = USED.search(line)
        if m:
            out[name][0] = int(m.group(1))
    return {k: tuple(v) for k, v in out.items()}


def blocks_per_sm(regs, threads):
    """Resident blocks per SM that `regs` registers per thread allow (Hopper: registers in units of
    8 per thread and 256 per warp), capped by the SM's threads and blocks."""
    if regs <= 0:
        return min(MAX_THREADS_PER_SM // threads, MAX_BLOCKS_PER_SM)
    per_thread = (regs + 7) // 8 * 8
    per_warp = (per_thread * 32 + 255) // 256 * 256
    warps = (threads + 31) // 32
    return min(REGS_PER_SM // (warps * per_warp), MAX_THREADS_PER_SM // threads, MAX_BLOCKS_PER_SM)


def demangle(names, mangled):
    """{name: readable name} through c++filt where it exists (of the name as compiled), else the
    names as they are."""
    raw = [mangled.get(n, n) for n in names]
    if not names or shutil.which("c++filt") is None:
        return dict(zip(names, raw))
    r = subprocess.run(["c++filt"], input="\n".join(raw), capture_output=True, text=True)
    lines = r.stdout.splitlines()
    if r.returncode != 0 or len(lines) != len(names):
        return dict(zip(names, raw))
    return dict(zip(names, lines))


def without_parameters(pretty):
    """A demangled kernel name without its parameter list (the balanced parentheses that end it;
    "(anonymous namespace)" and casts in template arguments come earlier), or None for a name
    that is not demangled."""
    if not pretty.endswith(")"):
        return None
    depth = 0
    for i in range(len(pretty) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(pretty[i], 0)
        if depth == 0:
            return pretty[:i] if i > 0 else None
    return None


def pair_by_instance(only_old, only_new, pretty):
    """{base name: working-tree name} for kernels on one side only whose demangled names agree
    up to their parameter lists, one of each (an edit that changed a kernel's parameters)."""
    def by_key(names):
        keys = {}
        for n in names:
            keys.setdefault(without_parameters(pretty[n]), []).append(n)
        return keys
    a, b = by_key(only_old), by_key(only_new)
    return {a[k][0]: b[k][0] for k in a if k is not None and len(a[k]) == 1 and len(b.get(k, ())) == 1}


def diff_lines(old, new, threads, mangled=None):
    """The report's lines: kernels whose registers or spills differ, or that one side lacks. A
    kernel whose parameters changed (one on each side, the same name and template arguments) is
    compared with itself and marked "(parameters changed)"."""
    names = sorted(set(old) | set(new))
    pretty = demangle(names, mangled or {})
    pairs = pair_by_instance([n for n in names if n not in new], [n for n in names if n not in old], pretty)
    paired_new = set(pairs.values())
    lines = []
    for n in names:
        if n in paired_new:
            continue
        a, b = old.get(n), new.get(n)
        shown, note = pretty[n], ""
        if n in pairs:
            b, shown, note = new[pairs[n]], pretty[pairs[n]], " (parameters changed)"
        elif a == b:
            continue
        elif a is None or b is None:
            side, v = ("new only", b) if a is None else ("base only", a)
            lines.append(f"  {side}: {v[0]} registers, spills {v[1]}/{v[2]} B  {shown}")
            continue
        ba, bb = blocks_per_sm(a[0], threads), blocks_per_sm(b[0], threads)
        mark = "!" if ba != bb else " "
        lines.append(f"{mark} {a[0]:3d} -> {b[0]:3d} registers ({ba} -> {bb} blocks/SM), "
                     f"spills {a[1]}/{a[2]} -> {b[1]}/{b[2]} B{note}  {shown}")
    return lines


def start_compile(root, src, arch):
    """(nvcc process whose output is ptxas -v's for src in tree `root`, its cubin path)."""
    fd, cubin = tempfile.mkstemp(suffix=".cubin")
    os.close(fd)
    cmd = ["nvcc", "-cubin", "-Xptxas", "-v", f"--generate-code=arch=compute_{arch[3:]},code={arch}",
           "-DCLAWMINE_CUDA_SM90A=1", "-DCLAWMINE_HAVE_CUDA=1", "-I", os.path.join(root, "src"),
           "--expt-relaxed-constexpr", "-O3", "-std=c++20", os.path.join(root, src), "-o", cubin]
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), cubin
    except FileNotFoundError:
        sys.exit("ptxas_diff: nvcc not found (put the CUDA toolkit's bin on PATH)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", help="CUDA source, relative to the repository root")
    ap.add_argument("--base", default="main", help="commit to compare against (default main)")
    ap.add_argument("--arch", default="sm_90a", help="target (default sm_90a)")
    ap.add_argument("--threads", type=int, default=128, help="threads per block for blocks/SM (default 128)")
    ap.add_argument("--logs", nargs=2, metavar=("OLD", "NEW"), help="compare two saved ptxas -v logs instead")
    args = ap.parse_args()
    if args.threads < 1 or args.threads > 1024:
        sys.exit(f"ptxas_diff: --threads {args.threads}: expected 1 to 1024")
    if args.logs:
        texts = []
        for path in args.logs:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
            except OSError as e:
                sys.exit(f"ptxas_diff: --logs {path}: {e.strerror}")
        mangled = {}
        old, new = parse_ptxas(texts[0], mangled), parse_ptxas(texts[1], mangled)
        label = f"{args.logs[0]} -> {args.logs[1]}"
    else:
        if not args.file:
            ap.error("give a CUDA source file, or --logs OLD NEW")
        if not re.fullmatch(r"sm_\d+a?", args.arch):
            sys.exit(f"ptxas_diff: --arch {args.arch}: expected sm_NN or sm_NNa")
        root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True).stdout.strip()
        if not root:
            sys.exit("ptxas_diff: not inside a git repository")
        src = os.path.relpath(os.path.abspath(args.file), root)
        if src.startswith("..") or not os.path.isfile(os.path.join(root, src)):
            sys.exit(f"ptxas_diff: {args.file}: no such file in the repository")
        if subprocess.run(["git", "rev-parse", "--verify", "--quiet", args.base + "^{commit}"], cwd=root,
                          capture_output=True).returncode != 0:
            sys.exit(f"ptxas_diff: --base {args.base}: not a commit")
        tmp = tempfile.mkdtemp(prefix="ptxas-diff-")
        base_tree = os.path.join(tmp, "base")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", base_tree, args.base], cwd=root, check=True)
        try:
            if not os.path.isfile(os.path.join(base_tree, src)):
                sys.exit(f"ptxas_diff: {src} does not exist at {args.base}")
            runs = [start_compile(base_tree, src, args.arch), start_compile(root, src, args.arch)]
            texts = []
            for (proc, cubin), side in zip(runs, (args.base, "working tree")):
                out, _ = proc.communicate()
                os.unlink(cubin)
                if proc.returncode != 0:
                    sys.stderr.write(out)
                    print(f"ptxas_diff: nvcc failed on {src} at {side}", file=sys.stderr)
                    return 1
                texts.append(out)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=root, capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
        mangled = {}
        old, new = parse_ptxas(texts[0], mangled), parse_ptxas(texts[1], mangled)
        label = f"{src}: {args.base} -> working tree, {args.arch}"
    lines = diff_lines(old, new, args.threads, mangled)
    print(f"ptxas_diff {label}: {len(new)} kernels, {len(lines)} differ (blocks/SM at {args.threads} threads)")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
