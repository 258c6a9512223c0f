#!/usr/bin/env python3
"""The PyTorch / transformers baseline next to `clawmine bench` (issue 9): what a user gets from
transformers' `DeepseekV4ForCausalLM` in BF16, eager (no torch.compile), on the same card and model.

    python3 bench/torch_baseline.py --model DIR [--prompt-lengths 128,512,2048] [--decode-tokens 32]
        [--batch-sizes 1,8] [--batch-prompt 128] [--repeats 3] [--seed 1] [--json FILE]

Measured, each after a warm-up (a 16-token prompt and 4 decode steps, then one untimed run per shape):
  prefill  tokens/s = L / seconds of one forward over L random prompt ids (fresh KV cache, logits of
           the last position only, argmax) = time to first token; median of --repeats runs, at
           each --prompt-lengths value (lengths above max_position_embeddings are skipped);
  decode   batch 1, greedy, HF's own KV cache (DynamicCache with V4's compressor layers): after a
           prompt of the first length, --decode-tokens one-token steps, each timed; --repeats runs;
           median over all steps -> ms/token and tokens/s;
  batch B  (B > 1 in --batch-sizes) B random prompts of --batch-prompt tokens in one [B, P] prefill,
           then [B, 1] steps: HF's real batched forward (clawmine bench's B > 1 is round-robin).
Timing: torch.cuda.synchronize() around each timed region, wall clock (as clawmine bench's
steady_clock). Prompts: random ids in [2, vocab) from torch.Generator(seed + L): speed does not
depend on the text (the ids differ from clawmine's; both are uniform).

The model: a directory in transformers' layout (config.json with `layer_types`) is loaded with
`from_pretrained(dtype=torch.bfloat16, attn_implementation="eager")`. A release-layout directory
(clawmine's fixtures and random models) is first rewritten by bench/release_to_hf.py into a
temporary directory (quantized linears decoded to BF16); pass --convert-dir to keep it. The JSON
(--json) uses `clawmine bench --json`'s keys where they mean the same (model, backend, device,
act_dtype, load_seconds, place_seconds, weight_bytes, decode{batch, context, tokens, median_ms,
mean_ms, step_ms}, prefill[{tokens, seconds, tokens_per_second, ttft_ms} or {tokens, error}]);
batched runs go to "batched" (clawmine's B > 1 is "round_robin").
"""
import argparse
import json
import math
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import release_to_hf  # noqa: E402  (pure Python at import time)


class BaselineError(Exception):
    """Said in one line, exit status 2 (input) or 3 (environment)."""

    def __init__(self, msg, status=2):
        super().__init__(msg)
        self.status = status


def parse_sizes(text, flag):
    out = []
    for item in text.split(","):
        try:
            n = int(item)
        except ValueError:
            n = 0
        if n <= 0:
            raise argparse.ArgumentTypeError(f"{flag}: '{item}' is not a positive size")
        out.append(n)
    return out


def args_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (release or transformers layout)")
    ap.add_argument("--prompt-lengths", default="128,512,2048", help="prefill lengths, comma-separated")
    ap.add_argument("--decode-tokens", type=int, default=32, help="decode steps per run at batch 1")
    ap.add_argument("--batch-sizes", default="1", help="batch sizes; B > 1 runs a batched decode")
    ap.add_argument("--batch-prompt", type=int, default=128, help="prompt length of each batched sequence")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--warmup-runs", type=int, default=1, help="untimed runs per shape before the timed ones")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random prompts")
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--experts-impl", default="default", choices=["default", "eager", "grouped_mm", "batched_mm"],
                    help="transformers' experts implementation (default: what from_pretrained picks)")
    ap.add_argument("--convert-dir", default="", help="where a release-layout model is rewritten (kept)")
    ap.add_argument("--json", default="", help="write the results as JSON to FILE")
    return ap


def check_args(ap, a):
    try:
        a.lengths = parse_sizes(a.prompt_lengths, "--prompt-lengths")
        a.batches = parse_sizes(a.batch_sizes, "--batch-sizes")
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    for flag, v, lo in (("--decode-tokens", a.decode_tokens, 1), ("--batch-prompt", a.batch_prompt, 1),
                        ("--repeats", a.repeats, 1), ("--warmup-runs", a.warmup_runs, 0)):
        if v < lo:
            ap.error(f"{flag}: {v} is below {lo}")
    model = pathlib.Path(a.model)
    if not model.is_dir():
        raise BaselineError(f"--model {a.model}: no such directory")
    if not (model / "config.json").is_file():
        raise BaselineError(f"--model {a.model}: no config.json (not a model directory)")
    if a.json:
        parent = pathlib.Path(a.json).resolve().parent
        if not parent.is_dir():
            raise BaselineError(f"--json {a.json}: directory {parent} does not exist")


def import_stack(device):
    """torch + transformers' DeepseekV4ForCausalLM, or a one-line reason."""
    try:
        import torch
    except ImportError as e:
        raise BaselineError(f"PyTorch is not installed for {sys.executable} ({e}); this baseline needs torch and "
                            "transformers >= 5.17", 3)
    try:
        import transformers
    except ImportError as e:
        raise BaselineError(f"transformers is not installed for {sys.executable} ({e}); needs >= 5.17", 3)
    cls = getattr(transformers, "DeepseekV4ForCausalLM", None)
    if cls is None:
        raise BaselineError(f"transformers {transformers.__version__} has no DeepseekV4ForCausalLM (needs >= 5.17)", 3)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BaselineError(f"--device {device}: torch {torch.__version__} sees no CUDA device "
                            f"(built for CUDA {torch.version.cuda})", 3)
    return torch, transformers, cls


class Runner:
    """The model, its forward step and a synchronizing timer."""

    def __init__(self, torch, model, device):
        self.torch, self.model, self.device = torch, model, device
        self.cuda = device.startswith("cuda")
        self.logits_to_keep = True
        self.all_bf16 = False  # every module cast to BF16 after an autocast dtype clash (see step)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def step(self, ids, cache):
        """One forward over ids [B, T] with the cache (None: a fresh one); greedy next ids [B, 1].

        Under BF16 autocast: the model keeps some modules in float32 (norms, sinks, mHC), whose
        float32 outputs feed BF16 linears; autocast casts those inputs as a BF16 user run would."""
        with self.torch.autocast(device_type="cuda" if self.cuda else "cpu", dtype=self.torch.bfloat16):
            try:
                return self._step(ids, cache)
            except RuntimeError as e:
                if "dtype" not in str(e) or self.all_bf16:
                    raise
                # Some op outside autocast's lists still meets a float32 module output: run every
                # module in BF16 (the float32-kept norms/sinks/mHC too), once, and say so.
                self.all_bf16 = True
                print(f"torch_baseline: {type(e).__name__}: {e}; casting every module to BF16 and retrying",
                      file=sys.stderr)
                self.model.to(self.torch.bfloat16)
                return self._step(ids, None if cache is None else cache)

    def _step(self, ids, cache):
        kw = {"input_ids": ids, "use_cache": True, "past_key_values": cache}
        if self.logits_to_keep:
            try:
                out = self.model(**kw, logits_to_keep=1)
            except TypeError:  # a transformers without logits_to_keep: all positions
                self.logits_to_keep = False
                out = self.model(**kw)
        else:
            out = self.model(**kw)
        return out.logits[:, -1, :].argmax(-1, keepdim=True), out.past_key_values

    def timed(self, fn):
        self.sync()
        t0 = time.perf_counter()
        r = fn()
        self.sync()
        return r, time.perf_counter() - t0

    def ids(self, batch, length, vocab, seed):
        g = self.torch.Generator().manual_seed(seed)
        return self.torch.randint(2, vocab, (batch, length), generator=g).to(self.device)


def is_oom(torch, e):
    return isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())) or "out of memory" in str(e)


def load(torch, cls, a, log):
    """-> (model, info dict). Converts a release-layout directory first."""
    src = pathlib.Path(a.model)
    info = {"convert_seconds": 0.0, "converted_from_release": False}
    cfg = json.loads((src / "config.json").read_text())
    hf_dir, tmp = src, None
    if "layer_types" not in cfg:
        if a.convert_dir:
            hf_dir = pathlib.Path(a.convert_dir)
        else:
            tmp = tempfile.mkdtemp(prefix="torch-baseline-")
            hf_dir = pathlib.Path(tmp) / "model"
        log(f"{src}: release layout; rewriting it in transformers' layout (BF16 linears) into {hf_dir}")
        t0 = time.time()
        try:
            release_to_hf.convert(src, hf_dir, a.device, log=log)
        except release_to_hf.ConvertError as e:
            raise BaselineError(f"--model {src}: {e}")
        info["convert_seconds"] = time.time() - t0
        info["converted_from_release"] = True
    try:
        t0 = time.time()
        kw = {"dtype": torch.bfloat16, "attn_implementation": "eager"}
        kw["output_loading_info"] = True
        try:
            model, loading = cls.from_pretrained(str(hf_dir), device_map=a.device, **kw)
            info["load_seconds"], info["place_seconds"] = time.time() - t0, 0.0
            info["load_path"] = f"from_pretrained(device_map={a.device!r})"
        except (ImportError, ValueError, RuntimeError, TypeError) as e:  # device_map unusable: CPU, then move
            if is_oom(torch, e):
                raise
            log(f"from_pretrained(device_map=...) failed ({type(e).__name__}: {e}); loading on the CPU, then .to()")
            t0 = time.time()
            model, loading = cls.from_pretrained(str(hf_dir), **kw)
            t1 = time.time()
            model = model.to(a.device)
            info["load_seconds"], info["place_seconds"] = t1 - t0, time.time() - t1
            info["load_path"] = "from_pretrained + .to(device)"
        # missing keys would be randomly initialized: a naming problem worth seeing (speed is unaffected)
        info["loading_problems"] = {k: sorted(str(x) for x in v)[:8] for k, v in (loading or {}).items() if v}
        for k, v in info["loading_problems"].items():
            log(f"from_pretrained: {len(loading[k])} {k.replace('_', ' ')}, e.g. {', '.join(v[:3])}")
        if a.experts_impl != "default":
            model.set_experts_implementation(a.experts_impl)
        model.eval()
    except Exception as e:
        if is_oom(torch, e):
            raise BaselineError(f"--model {src}: out of GPU memory while loading in BF16 ({e})", 3)
        raise
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    cfgm = model.config
    info["attn_implementation"] = getattr(cfgm, "_attn_implementation", None)
    info["experts_implementation"] = getattr(cfgm, "_experts_implementation", None)
    tensors = list(model.parameters()) + list(model.buffers())
    info["weight_bytes"] = float(sum(t.numel() * t.element_size() for t in tensors))
    info["param_dtypes"] = sorted({str(t.dtype).replace("torch.", "") for t in model.parameters()})
    return model, info


def median_ms(seconds):
    return statistics.median(seconds) * 1e3 if seconds else 0.0


def measure(torch, r, a, vocab, max_pos, log):
    res = {"prefill": [], "decode": None, "batched": [], "notes": []}

    def guarded(what, fn):
        try:
            return fn(), None
        except Exception as e:  # OOM, or a shape transformers refuses: report it, time the rest
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            where = traceback.extract_tb(e.__traceback__)[-1]
            log(f"{what}: failed: {msg} (at {where.filename}:{where.lineno})")
            if r.cuda:
                torch.cuda.empty_cache()
            return None, msg

    with torch.no_grad():
        t0 = time.time()  # warm-up: kernels, cuBLAS heuristics, allocator
        tok, cache = r.step(r.ids(1, 16, vocab, a.seed + 99), None)
        for _ in range(4):
            tok, cache = r.step(tok, cache)
        r.sync()
        del cache
        log(f"warm-up (16-token prompt, 4 decode steps): {time.time() - t0:.2f} s")

        lengths = []
        for L in a.lengths:
            if L > max_pos:
                note = f"prefill {L}: skipped (max_position_embeddings {max_pos})"
                res["notes"].append(note)
                log(note)
            else:
                lengths.append(L)
        for L in lengths:
            ids = r.ids(1, L, vocab, a.seed + L)

            def prefill_runs():
                for _ in range(a.warmup_runs):
                    r.step(ids, None)
                return [r.timed(lambda: r.step(ids, None))[1] for _ in range(a.repeats)]

            secs, err = guarded(f"prefill {L}", prefill_runs)
            if err:
                res["prefill"].append({"tokens": L, "error": err})
                continue
            s = statistics.median(secs)
            res["prefill"].append({"tokens": L, "seconds": s, "tokens_per_second": L / s, "ttft_ms": s * 1e3,
                                   "runs_ms": [x * 1e3 for x in secs]})
            log(f"prefill {L} tokens: {s * 1e3:.1f} ms ({L / s:.0f} tokens/s, time to first token {s * 1e3:.1f} ms; "
                f"median of {a.repeats})")

        if lengths:
            L0 = lengths[0]
            ids = r.ids(1, L0, vocab, a.seed + L0)

            def decode_runs():
                steps = []
                for run in range(a.warmup_runs + a.repeats):
                    tok, cache = r.step(ids, None)
                    for _ in range(a.decode_tokens):
                        (tok, cache), s = r.timed(lambda: r.step(tok, cache))
                        if run >= a.warmup_runs:
                            steps.append(s)
                    del cache
                return steps

            steps, err = guarded("decode", decode_runs)
            if err:
                res["decode"] = {"batch": 1, "context": L0, "error": err}
            else:
                med = median_ms(steps)
                res["decode"] = {"batch": 1, "context": L0, "tokens": a.decode_tokens, "runs": a.repeats,
                                 "median_ms": med, "mean_ms": statistics.mean(steps) * 1e3,
                                 "min_ms": min(steps) * 1e3, "max_ms": max(steps) * 1e3,
                                 "tokens_per_second": 1e3 / med, "step_ms": [x * 1e3 for x in steps]}
                log(f"decode batch 1 at context {L0}: {a.decode_tokens} tokens x {a.repeats} runs, median "
                    f"{med:.2f} ms/token ({1e3 / med:.1f} tokens/s), mean {statistics.mean(steps) * 1e3:.2f}, "
                    f"min {min(steps) * 1e3:.2f}, max {max(steps) * 1e3:.2f}")

        for B in a.batches:
            if B <= 1:
                continue
            P = min(a.batch_prompt, max_pos)
            n_steps = max(2, math.ceil(a.decode_tokens / B))
            ids = torch.cat([r.ids(1, P, vocab, a.seed + 1000 + s) for s in range(B)])

            def batched_runs():
                steps, pre = [], []
                for run in range(a.warmup_runs + a.repeats):
                    (tok, cache), p = r.timed(lambda: r.step(ids, None))
                    for _ in range(n_steps):
                        (tok, cache), s = r.timed(lambda: r.step(tok, cache))
                        if run >= a.warmup_runs:
                            steps.append(s)
                    if run >= a.warmup_runs:
                        pre.append(p)
                    del cache
                return steps, pre

            out, err = guarded(f"batch {B}", batched_runs)
            if err:
                res["batched"].append({"batch": B, "prompt": P, "error": err})
                continue
            steps, pre = out
            med = median_ms(steps)
            res["batched"].append({"batch": B, "mode": "batched forward: one [B, 1] step per position",
                                   "prompt": P, "steps": n_steps, "runs": a.repeats, "ms_per_step": med,
                                   "ms_per_token": med / B, "tokens_per_second": B * 1e3 / med,
                                   "prefill_ms": median_ms(pre)})
            log(f"batch {B} (batched forward): {med:.2f} ms per step of {B} tokens = {med / B:.2f} ms/token, "
                f"{B * 1e3 / med:.1f} tokens/s ({n_steps} steps x {a.repeats} runs after {P}-token prompts)")
    return res


def run(a):
    log = lambda *m: print(*m, flush=True)  # noqa: E731
    torch, transformers, cls = import_stack(a.device)
    model, info = load(torch, cls, a, log)
    cfg = model.config
    vocab, max_pos = int(cfg.vocab_size), int(getattr(cfg, "max_position_embeddings", 1 << 30))
    device = a.device
    if a.device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(a.device))
        device = f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    log(f"model {a.model}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.n_routed_experts} routed "
        f"experts (top-{cfg.num_experts_per_tok}); weights {info['weight_bytes'] / 1e9:.2f} GB in "
        f"{'/'.join(info['param_dtypes'])}")
    log(f"torch {torch.__version__}, transformers {transformers.__version__} on {device}; attention "
        f"{info['attn_implementation']}, experts {info['experts_implementation']}; {info['load_path']}: load "
        f"{info['load_seconds']:.1f} s, place {info['place_seconds']:.1f} s"
        + (f", release->transformers rewrite {info['convert_seconds']:.1f} s" if info["converted_from_release"] else ""))
    runner = Runner(torch, model, a.device)
    res = measure(torch, runner, a, vocab, max_pos, log)

    print(f"\n== torch baseline: {a.model} on {device} (transformers {transformers.__version__}, BF16, eager, "
          f"experts {info['experts_implementation']})")
    print(f"{'what':34s} {'measured':40s}")
    d = res["decode"]
    if d and "error" not in d:
        print(f"{'decode b=1, ctx ' + str(d['context']):34s} {d['median_ms']:.2f} ms/token ({d['tokens_per_second']:.1f} tok/s)")
    elif d:
        print(f"{'decode b=1':34s} failed: {d['error']}")
    def row(what, r, fmt):  # one result line, or its error
        print(f"{what:34s} {'failed: ' + r['error'] if 'error' in r else fmt(r)}")

    for p in res["prefill"]:
        row(f"prefill {p['tokens']}", p, lambda r: f"{r['tokens_per_second']:.0f} tok/s, TTFT {r['ttft_ms']:.0f} ms")
    for b in res["batched"]:
        row(f"b={b['batch']} batched", b,
            lambda r: f"{r['ms_per_token']:.2f} ms/token, {r['tokens_per_second']:.1f} tok/s total")
    sys.stdout.flush()

    if a.json:
        j = {"model": a.model, "backend": "torch", "device": device, "act_dtype": "bf16", "weights_dtype": "bf16",
             "eager": True, "bf16_autocast": True, "all_modules_bf16": runner.all_bf16,
             "torch_version": torch.__version__, "transformers_version": transformers.__version__,
             "attn_implementation": info["attn_implementation"],
             "experts_implementation": info["experts_implementation"],
             "logits_to_keep": 1 if runner.logits_to_keep else 0, "load_path": info["load_path"],
             "load_seconds": info["load_seconds"], "place_seconds": info["place_seconds"],
             "convert_seconds": info["convert_seconds"], "converted_from_release": info["converted_from_release"],
             "loading_problems": info["loading_problems"],
             "weight_bytes": info["weight_bytes"], "param_dtypes": info["param_dtypes"],
             "repeats": a.repeats, "warmup_runs": a.warmup_runs, "seed": a.seed,
             "max_position_embeddings": max_pos, "decode": res["decode"] or {}, "prefill": res["prefill"],
             "batched": res["batched"], "notes": res["notes"]}
        with open(a.json, "w") as f:
            json.dump(j, f)
            f.write("\n")
    failed = any("error" in p for p in res["prefill"]) or (res["decode"] or {}).get("error") or \
        any("error" in b for b in res["batched"])
    return 1 if failed else 0


def main(argv=None):
    ap = args_parser()
    a = ap.parse_args(argv)
    try:
        check_args(ap, a)
        return run(a)
    except BaselineError as e:
        print(f"torch_baseline: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
