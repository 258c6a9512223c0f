# Builds the three tiny random DeepSeek V4 models with transformers (float32, eager), writes them in
# the official release format (tests/fixtures/models/<name>/) plus one transformers-format copy,
# and records goldens (tests/fixtures/golden/<name>/): all-position logits, greedy tokens, RoPE
# inv_freq, per-layer hidden states, router and indexer selections. Ends by reloading the written
# files and checking the logits bit for bit. Needs torch + transformers >= 5.17. See docs/FIXTURES.md.
import argparse
import inspect
import json
import os
import pathlib
import sys
import time
import traceback

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import dsv4_tiny as T  # noqa: E402

import transformers  # noqa: E402
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as M  # noqa: E402
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM  # noqa: E402

torch.set_default_dtype(torch.float32)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
torch.use_deterministic_algorithms(True, warn_only=True)


def log(*a):
    print(*a, flush=True)


def f32(x):
    """A float32 value as a JSON-friendly double that round-trips to the same float32."""
    return float(f"{float(x):.9g}")


def build_config(spec):
    """DeepseekV4Config in transformers spelling; tries the legacy flat rope_scaling first."""
    base = T.hf_config_kwargs(spec)
    yarn = T.rope_scaling(spec)
    attempts = [
        ("rope_scaling (legacy flat, type=yarn)", dict(rope_scaling=dict(yarn))),
        ("rope_parameters (flat, rope_type=yarn)",
         dict(rope_parameters={"rope_type": "yarn", **{k: v for k, v in yarn.items() if k != "type"}})),
    ]
    errors = []
    for label, extra in attempts:
        try:
            cfg = DeepseekV4Config(**base, **extra)
        except Exception as e:  # strict dataclass may refuse a spelling
            errors.append(f"{label}: {type(e).__name__}: {e}")
            continue
        comp = cfg.rope_parameters.get("compress", {})
        if comp.get("rope_type") == "yarn" and comp.get("attention_factor") == 1.0:
            return cfg, label, errors
        errors.append(f"{label}: resolved compress rope {comp}")
    raise RuntimeError("no config spelling gave yarn with attention_factor 1.0: " + " | ".join(errors))


def check_config(cfg, spec):
    assert cfg.layer_types == T.layer_types(spec), cfg.layer_types
    assert cfg.mlp_layer_types == T.mlp_layer_types(spec), cfg.mlp_layer_types
    assert cfg.compress_rates == {"compressed_sparse_attention": 4,
                                  "heavily_compressed_attention": spec["hca_rate"]}, cfg.compress_rates
    main, comp = cfg.rope_parameters["main"], cfg.rope_parameters["compress"]
    assert main["rope_type"] == "default" and float(main["rope_theta"]) == 10000.0, main
    assert float(comp["rope_theta"]) == 160000.0 and comp["attention_factor"] == 1.0, comp
    assert float(comp["factor"]) == spec["yarn_factor"], comp
    assert int(comp["original_max_position_embeddings"]) == spec["yarn_orig"], comp
    for p in (main, comp):
        assert abs(p.get("partial_rotary_factor", 1.0) * T.HEAD_DIM - T.ROPE_DIM) < 1e-9, p
    assert cfg.qk_rope_head_dim == T.ROPE_DIM
    assert cfg.swiglu_limit > 0 and cfg.tie_word_embeddings is False
    assert cfg.num_experts_per_tok == spec["topk"] and cfg.n_routed_experts == spec["experts"]


def check_model(model):
    rot = model.model.rotary_emb
    assert rot.compress_inv_freq.numel() == T.ROPE_DIM // 2, rot.compress_inv_freq.shape
    assert rot.main_inv_freq.numel() == T.ROPE_DIM // 2, rot.main_inv_freq.shape
    assert rot.compress_attention_scaling == 1.0 and rot.main_attention_scaling == 1.0
    src = inspect.getsource(M.DeepseekV4MLP.forward)
    assert "clamp" in src, "installed DeepseekV4MLP.forward does not clamp the shared expert"
    assert model.config._attn_implementation == "eager", model.config._attn_implementation


def make_model(cfg, device):
    model = DeepseekV4ForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    try:
        model.set_experts_implementation("eager")
    except Exception as e:
        log("  set_experts_implementation('eager') failed:", type(e).__name__, e)
    return model.to(device).eval()


def experts_impl(model):
    try:
        return model.get_experts_implementation()
    except Exception as e:
        return f"unknown ({type(e).__name__})"


def redraw(model, spec):
    """Re-draws every state_dict entry, rounds the BF16-stored ones to bf16."""
    gen = torch.Generator().manual_seed(spec["seed"])
    new = {}
    for name, t in model.state_dict().items():
        w = T.draw(name, tuple(t.shape), spec, gen)
        if w.dtype == torch.float32 and not T.hf_keeps_fp32(name):
            w = w.to(torch.bfloat16).to(torch.float32)
        assert w.dtype == t.dtype, (name, w.dtype, t.dtype)
        new[name] = w
    model.load_state_dict(new, strict=True)
    return new


def release_tensors(state):
    out = {}
    for hf_name, t in state.items():
        for rel_name, rt in T.hf_to_release(hf_name, t.detach().cpu()):
            dt = T.release_dtype(rel_name)
            rt = rt.contiguous()
            if dt == "BF16":
                b = rt.to(torch.bfloat16)
                assert torch.equal(b.float(), rt), f"{rel_name} is not bf16-representable"
                rt = b
            elif dt == "F32":
                rt = rt.float()
            else:
                rt = rt.to(torch.int64)
            assert rel_name not in out, rel_name
            out[rel_name] = rt
    return out


def case_ids(spec, k, length):
    gen = torch.Generator().manual_seed(spec["seed"] * 100 + k)
    return torch.randint(2, T.VOCAB, (length,), generator=gen, dtype=torch.int64)


class Recorder:
    """Forward hooks: decoder-layer streams, router picks, indexer picks and scores, clamp stats."""

    def __init__(self, model, spec):
        self.model, self.spec, self.handles = model, spec, []
        self.reset()
        layers = model.model.layers
        self.handles.append(layers[0].register_forward_pre_hook(self._pre0, with_kwargs=True))
        for i, layer in enumerate(layers):
            self.handles.append(layer.register_forward_hook(self._layer_out(i)))
            self.handles.append(layer.mlp.gate.register_forward_hook(self._router(i)))
            self.handles.append(layer.mlp.shared_experts.register_forward_pre_hook(self._shared(i)))
            self.handles.append(layer.mlp.experts.register_forward_pre_hook(self._experts(i)))
            comp = layer.self_attn.compressor
            if comp is not None and hasattr(comp, "indexer"):
                self.handles.append(comp.indexer.register_forward_hook(self._indexer(i)))
                self.handles.append(comp.indexer.scorer.register_forward_hook(self._scorer(i)))

    def reset(self):
        self.streams, self.router, self.indexer, self.scores = {}, {}, {}, {}
        self.clamp = {"gate": 0, "up": 0, "n": 0}

    def close(self):
        for h in self.handles:
            h.remove()

    def _pre0(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.streams[-1] = x.detach().float().cpu()

    def _layer_out(self, i):
        def hook(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            self.streams[i] = x.detach().float().cpu()
        return hook

    def _router(self, i):
        def hook(module, args, out):
            logits, weights, idx = out
            info = {"weights": weights.detach().float().cpu(), "idx": idx.detach().cpu()}
            if not isinstance(module, M.DeepseekV4HashRouter):
                s = module.score_fn(logits.float()) + module.e_score_correction_bias.float()
                top = s.sort(dim=-1, descending=True).values
                k = module.top_k
                info["gap"] = (top[:, k - 1] - top[:, k]).detach().cpu()
            self.router[i] = info
        return hook

    def _count(self, gate, up):
        lim = self.spec["swiglu"]
        self.clamp["gate"] += int((gate > lim).sum())
        self.clamp["up"] += int((up.abs() > lim).sum())
        self.clamp["n"] += gate.numel()

    def _shared(self, i):
        def hook(module, args):
            x = args[0]
            self._count(module.gate_proj(x), module.up_proj(x))
        return hook

    def _experts(self, i):
        def hook(module, args):
            x, idx = args[0], args[1]
            w = module.gate_up_proj[idx]  # [N, K, 2I, D]
            gu = torch.einsum("nkod,nd->nko", w, x)
            inter = gu.shape[-1] // 2
            self._count(gu[..., :inter], gu[..., inter:])
        return hook

    def _indexer(self, i):
        def hook(module, args, out):
            self.indexer[i] = out.detach().cpu()
        return hook

    def _scorer(self, i):
        def hook(module, args, out):
            self.scores[i] = out.detach().float().cpu()
        return hook


def routing_record(rec, spec, length):
    layers = []
    for i in range(len(spec["layers"])):
        r = rec.router[i]
        idx, w = r["idx"].reshape(length, -1), r["weights"].reshape(length, -1)
        order = idx.argsort(dim=-1)
        idx, w = idx.gather(1, order), w.gather(1, order)
        entry = {"layer": i, "mlp": "hash" if T.mlp_layer_types(spec)[i] == "hash_moe" else "routed",
                 "experts": idx.tolist(), "weights": [[f32(v) for v in row] for row in w.tolist()]}
        if "gap" in r:
            g = r["gap"]
            entry["min_gap"] = f32(g.min())
            entry["min_gap_token"] = int(g.argmin())
        entry["indexer"] = None
        if i in rec.indexer:
            sel = rec.indexer[i][0]  # [S, k]
            scores = rec.scores[i][0]  # [S, Tc]
            k, tc = sel.shape[-1], scores.shape[-1]
            chosen, min_gap, min_rel, ties, cut_queries = [], float("inf"), float("inf"), 0, 0
            for p in range(length):
                valid = min((p + 1) // T.CSA_RATE, tc)
                chosen.append(sorted(int(v) for v in sel[p].tolist() if v >= 0))
                if valid > k:
                    cut_queries += 1
                    top = scores[p, :valid].sort(descending=True).values
                    gap = float(top[k - 1] - top[k])
                    ties += int(gap == 0.0)
                    min_gap = min(min_gap, gap)
                    min_rel = min(min_rel, gap / max(abs(float(top[k - 1])), 1e-30))
            entry["indexer"] = {"index_topk": spec["index_topk"], "compressed_entries": tc,
                                "queries_with_cut": cut_queries, "ties_at_cut": ties,
                                "min_gap": f32(min_gap) if cut_queries else None,
                                "min_rel_gap": f32(min_rel) if cut_queries else None,
                                "selected": chosen}
        layers.append(entry)
    return {"layers": layers}


def greedy(model, ids, device):
    prefix = ids[: T.PROMPT_LEN].unsqueeze(0).to(device)
    result = {"prompt_len": T.PROMPT_LEN}
    # Reference loop 1: full recompute each step, no cache.
    seq, nocache, margins = prefix, [], []
    with torch.no_grad():
        for _ in range(T.NEW_TOKENS):
            lg = model(input_ids=seq, use_cache=False).logits[0, -1].float()
            top = lg.topk(2).values
            margins.append(f32(top[0] - top[1]))
            tok = int(lg.argmax())
            nocache.append(tok)
            seq = torch.cat([seq, torch.tensor([[tok]], device=device)], dim=1)
        # Reference loop 2: prefill + one token at a time through past_key_values.
        out = model(input_ids=prefix, use_cache=True)
        past, cached, worst = out.past_key_values, [], 0.0
        tok = int(out.logits[0, -1].argmax())
        for step in range(T.NEW_TOKENS):
            cached.append(tok)
            if step == T.NEW_TOKENS - 1:
                break
            out = model(input_ids=torch.tensor([[tok]], device=device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            full = model(input_ids=torch.cat([prefix, torch.tensor([cached], device=device)], dim=1),
                         use_cache=False).logits[0, -1]
            worst = max(worst, float((out.logits[0, -1] - full).abs().max()))
            tok = int(out.logits[0, -1].argmax())
    gen_tokens, gen_error = None, None
    try:
        model.generation_config.eos_token_id = None
        with torch.no_grad():
            g = model.generate(input_ids=prefix, attention_mask=torch.ones_like(prefix), do_sample=False,
                               max_new_tokens=T.NEW_TOKENS, use_cache=True)
        gen_tokens = g[0, T.PROMPT_LEN:].tolist()
    except Exception as e:
        gen_error = f"{type(e).__name__}: {e}"
    if gen_tokens is not None and len(gen_tokens) == T.NEW_TOKENS:
        result["tokens"], result["method"] = gen_tokens, "model.generate(do_sample=False, use_cache=True)"
    else:
        result["tokens"], result["method"] = cached, "manual greedy loop with past_key_values"
        result["generate_error"] = gen_error or f"generate returned {gen_tokens}"
    result["agrees_with_cached_loop"] = result["tokens"] == cached
    result["agrees_with_nocache_loop"] = result["tokens"] == nocache
    if result["tokens"] != nocache:
        result["nocache_loop_tokens"] = nocache
    result["margins_nocache"] = margins
    result["max_abs_diff_cached_vs_full_logits"] = f32(worst)
    result["eos_stopping"] = "disabled: always 32 new tokens"
    return result


def stream_rms(x):
    return float(x.pow(2).mean().sqrt())


def hf_copy(spec, root, model, state, golden_logits, device, verify, stats):
    """Writes the transformers-format copy (bf16 except the fp32 tensors) and reloads it."""
    hdir = root / "tests/fixtures/models" / f"{spec['name']}-hf"
    hdir.mkdir(parents=True, exist_ok=True)
    mixed = {n: (t if t.dtype != torch.float32 or T.hf_keeps_fp32(n) else t.to(torch.bfloat16))
             for n, t in model.state_dict().items()}
    for n, t in mixed.items():
        if t.dtype == torch.bfloat16:
            assert torch.equal(t.float(), state[n].to(t.device)), f"{n} changed by the bf16 cast"
    try:
        model.save_pretrained(hdir, state_dict=mixed, safe_serialization=True)
    except TypeError:
        model.save_pretrained(hdir, state_dict=mixed)
    files = sorted(p.name for p in hdir.iterdir())
    saved = {}
    for p in hdir.glob("*.safetensors"):
        saved.update({n: (dt, list(t.shape)) for n, (dt, t) in T.read_safetensors(p).items()})
    log(f"  transformers-format copy: files {files}, {len(saved)} tensors, e.g. {sorted(saved)[:6]}")
    stats["hf_copy"] = {"files": files, "tensors": {n: v for n, v in sorted(saved.items())}}
    reloaded = DeepseekV4ForCausalLM.from_pretrained(hdir, dtype=torch.float32, attn_implementation="eager")
    try:
        reloaded.set_experts_implementation("eager")
    except Exception:
        pass
    reloaded = reloaded.to(device).eval()
    for k, (x, logits) in golden_logits.items():
        with torch.no_grad():
            lg = reloaded(input_ids=x, use_cache=False).logits[0].float().cpu()
        verify[f"case_{k}_hf_copy_bit_equal"] = bool(torch.equal(lg, logits))
        verify[f"case_{k}_hf_copy_max_abs_diff"] = f32((lg - logits).abs().max())


def run_model(spec, root, device, env):
    name = spec["name"]
    log(f"\n=== {name}: layers {spec['layers']} ===")
    cfg, spelling, notes = build_config(spec)
    log("  config spelling:", spelling, "| earlier attempts:", notes)
    check_config(cfg, spec)
    model = make_model(cfg, device)
    check_model(model)
    log("  experts implementation:", experts_impl(model))
    state = redraw(model, spec)
    rel = release_tensors(state)

    mdir = root / "tests/fixtures/models" / name
    gdir = root / "tests/fixtures/golden" / name
    mdir.mkdir(parents=True, exist_ok=True)
    gdir.mkdir(parents=True, exist_ok=True)
    writer = T.write_safetensors(mdir / "model.safetensors", rel)
    with open(mdir / "config.json", "w") as f:
        json.dump(T.release_config(spec, transformers.__version__), f, indent=2)
        f.write("\n")
    log(f"  wrote {len(rel)} tensors with {writer}: {(mdir / 'model.safetensors').stat().st_size} bytes")

    with open(gdir / "resolved_config.json", "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    rot = model.model.rotary_emb
    inv = {}
    for kind in ("main", "compress"):
        vals = getattr(rot, f"{kind}_inv_freq").detach().float().cpu().tolist()
        inv[kind] = {"hex": [float(v).hex() for v in vals], "decimal": [f32(v) for v in vals],
                     "attention_scaling": float(getattr(rot, f"{kind}_attention_scaling"))}
    with open(gdir / "inv_freq.json", "w") as f:
        json.dump(inv, f, indent=2)
        f.write("\n")

    stats = {"cases": {}}
    lengths = [spec["long_len"], T.SHORT_LEN]
    golden_logits = {}
    for k, length in enumerate(lengths):
        ids = case_ids(spec, k, length)
        x = ids.unsqueeze(0).to(device)
        with torch.no_grad():
            logits = model(input_ids=x, use_cache=False).logits[0].float().cpu()
            logits_cache = model(input_ids=x, use_cache=True).logits[0].float().cpu()
        np.save(gdir / f"case_{k}.logits.npy", logits.numpy().astype(np.float32))
        golden_logits[k] = (x, logits)
        argmax = logits.argmax(-1)
        cs = {"T": length, "logits_std": f32(logits.std()), "distinct_argmax": int(argmax.unique().numel()),
              "cache_prefill_bit_equal": bool(torch.equal(logits, logits_cache)),
              "cache_prefill_max_abs_diff": f32((logits - logits_cache).abs().max())}
        assert cs["distinct_argmax"] > 1, "degenerate logits: constant argmax"
        assert torch.isfinite(logits).all()

        rec = Recorder(model, spec)
        with torch.no_grad():
            out = model(input_ids=x, use_cache=False, output_hidden_states=True)
        rec.close()
        assert torch.equal(out.logits[0].float().cpu(), logits), "hooked forward changed the logits"
        streams = [rec.streams[-1]] + [rec.streams[i] for i in range(len(spec["layers"]))]
        cs["layer_stream_rms"] = [round(stream_rms(s), 4) for s in streams]
        cs["swiglu_clamped_fraction"] = {"gate": rec.clamp["gate"] / max(rec.clamp["n"], 1),
                                         "up": rec.clamp["up"] / max(rec.clamp["n"], 1)}
        routing = routing_record(rec, spec, length)
        cs["router_min_gap"] = [l.get("min_gap") for l in routing["layers"]]
        cs["indexer"] = [None if l["indexer"] is None else {kk: l["indexer"][kk] for kk in (
            "compressed_entries", "queries_with_cut", "ties_at_cut", "min_gap", "min_rel_gap")}
            for l in routing["layers"]]
        with open(gdir / f"case_{k}.routing.json", "w") as f:
            json.dump(routing, f, separators=(",", ":"))
            f.write("\n")
        hs = out.hidden_states
        cs["output_hidden_states"] = {
            "count": len(hs), "shapes": [list(h.shape) for h in hs],
            "equal_to_hook_streams": [bool(h.dim() == 4 and i < len(streams) and
                                           torch.equal(h[0].float().cpu(), streams[i][0]))
                                      for i, h in enumerate(hs)]}
        if k == 1:
            stack = torch.stack([s[0] for s in streams]).numpy().astype(np.float32)  # [L+1, T, 4, D]
            np.save(gdir / f"case_{k}.hidden.npy", stack)
            final = out.hidden_states[-1] if hs[-1].dim() == 3 else None
            with torch.no_grad():
                last = model.model(input_ids=x, use_cache=False).last_hidden_state[0].float().cpu()
            np.save(gdir / f"case_{k}.final_hidden.npy", last.numpy().astype(np.float32))
            cs["final_hidden_equals_last_output_hidden_state"] = (
                bool(torch.equal(final[0].float().cpu(), last)) if final is not None else None)

        g = greedy(model, ids, device)
        case = {"model": name, "ids": ids.tolist(), "transformers_version": transformers.__version__,
                "torch_version": torch.__version__, "device": env["device"], "greedy": g,
                "logits_file": f"case_{k}.logits.npy", "logits_shape": [length, T.VOCAB]}
        with open(gdir / f"case_{k}.json", "w") as f:
            json.dump(case, f, indent=1)
            f.write("\n")
        log(f"  case_{k}: T={length} logits_std={cs['logits_std']} distinct_argmax={cs['distinct_argmax']}"
            f" cache_prefill_equal={cs['cache_prefill_bit_equal']}")
        log(f"    stream rms per layer: {cs['layer_stream_rms']}")
        log(f"    swiglu clamped: {cs['swiglu_clamped_fraction']}  router min gaps: {cs['router_min_gap']}")
        log(f"    indexer: {cs['indexer']}")
        log(f"    output_hidden_states: {cs['output_hidden_states']['shapes']} "
            f"eq={cs['output_hidden_states']['equal_to_hook_streams']}")
        log(f"    greedy[{g['method']}]: {g['tokens'][:12]}... cached_eq={g['agrees_with_cached_loop']} "
            f"nocache_eq={g['agrees_with_nocache_loop']} min_margin={min(g['margins_nocache']):.4g} "
            f"cached_vs_full={g['max_abs_diff_cached_vs_full_logits']}")
        stats["cases"][f"case_{k}"] = cs

    # Verification: reload the release files through our reader and the name mapping.
    loaded = T.read_safetensors(mdir / "model.safetensors")
    for n, (dt, t) in loaded.items():
        assert dt == T.release_dtype(n), (n, dt)
        assert torch.equal(t, rel[n]), f"{n} differs after reload"
    assert set(loaded) == set(rel)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    rebuilt_state = T.release_to_hf(shapes, {n: t for n, (dt, t) in loaded.items()})
    verify = {}
    try:
        cfg2 = DeepseekV4Config.from_dict(json.loads((gdir / "resolved_config.json").read_text()))
        check_config(cfg2, spec)
        verify["rebuilt_from_resolved_config_json"] = True
    except Exception as e:
        log("  resolved_config.json did not rebuild the config:", type(e).__name__, e)
        cfg2, _, _ = build_config(spec)
        verify["rebuilt_from_resolved_config_json"] = False
    rebuilt = make_model(cfg2, device)
    rebuilt.load_state_dict(rebuilt_state, strict=True)
    for k, (x, logits) in golden_logits.items():
        with torch.no_grad():
            lg = rebuilt(input_ids=x, use_cache=False).logits[0].float().cpu()
        verify[f"case_{k}_release_bit_equal"] = bool(torch.equal(lg, logits))
        verify[f"case_{k}_release_max_abs_diff"] = f32((lg - logits).abs().max())
    del rebuilt

    if spec["hf_copy"]:
        try:
            hf_copy(spec, root, model, state, golden_logits, device, verify, stats)
        except Exception:
            traceback.print_exc()
            verify["hf_copy_error"] = traceback.format_exc(limit=3)
    log("  verify:", verify)
    ok = all(v for k, v in verify.items() if k.endswith("bit_equal")) and "hf_copy_error" not in verify
    if not ok:
        log(f"  VERIFY FAILED for {name}")

    manifest = {
        "model": name, "spec": spec, "config_spelling": spelling,
        "experts_implementation": str(experts_impl(model)),
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": T.sha256_file(p)}
                  for p in sorted(mdir.iterdir())},
        "safetensors_writer": writer, "env": env, "verify": verify, "stats": stats,
    }
    with open(gdir / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1, default=str)
        f.write("\n")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parents[2]))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default="", help="comma-separated model names")
    args = ap.parse_args()
    root = pathlib.Path(args.root)
    device = torch.device(args.device)
    env = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "transformers": transformers.__version__,
           "numpy": np.__version__, "python": sys.version.split()[0], "tf32": False}
    log("env:", env)
    t0 = time.time()
    wanted = set(filter(None, args.only.split(",")))
    failed = []
    for spec in T.SPECS:
        if wanted and spec["name"] not in wanted:
            continue
        try:
            if not run_model(spec, root, device, env):
                failed.append(spec["name"])
        except Exception:
            traceback.print_exc()
            failed.append(spec["name"])
    log(f"\nall done in {time.time() - t0:.1f}s; failed: {failed or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
