# Goldens for the quantized tiny fixtures (tests/fixtures/models/tiny-<x>-<layout>/): opens each
# checkpoint with Python's safetensors (a reader other than ours), checks names/dtypes/shapes of
# every quantized linear and its scales, dequantizes every weight with an independent torch
# implementation (E4M3/E8M0 through torch's float8 dtypes, E2M1 through a lookup table, low nibble
# first), builds transformers' DeepseekV4ForCausalLM in float32 from the dequantized weights and
# records logits for the ids of the BF16 model's golden case_1 -> tests/fixtures/golden/<fixture>/.
# Also records, per static input_scale, the observed input amax ratio amax/(2688*input_scale).
# Needs torch, transformers >= 5.17, safetensors (the GPU machine). See docs/FIXTURES.md.
#   python3 tools/reference/quant_goldens.py [--only tiny-b-seed,...] [--cases 1]
import argparse
import json
import pathlib
import re
import sys
import time

import numpy as np
import torch
from safetensors import safe_open

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import dsv4_tiny as T  # noqa: E402
import make_fixtures as MF  # noqa: E402  (config builder, model factory, float32/TF32-off settings)

import transformers  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
TOLERANCE = {"max_rel_diff": 1e-3, "argmax": "identical at every position"}


def e8m0_to_float(t):
    if t.dtype == getattr(torch, "float8_e8m0fnu", None):
        return t.float()
    b = t.view(torch.uint8).to(torch.int32)
    return torch.where(b == 255, torch.tensor(float("nan")), torch.pow(2.0, (b - 127).float()))


def unpack_e2m1(packed):
    """[out, in/2] U8/I8 -> [out, in] float32, even k = low nibble."""
    b = packed.view(torch.uint8).to(torch.int64)
    lo, hi = E2M1[b & 0xF], E2M1[b >> 4]
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


def block_expand(scale, rows, cols, br, bc):
    return scale.repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]


def read_by_hand(path):
    import struct
    dt = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16, "I64": torch.int64,
          "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "F8_E4M3": torch.float8_e4m3fn,
          "F8_E8M0": getattr(torch, "float8_e8m0fnu", torch.uint8)}
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        raw = torch.frombuffer(bytearray(data[8 + n + b:8 + n + e]), dtype=torch.uint8)
        out[k] = raw.view(dt[v["dtype"]]).reshape(v["shape"])
    return out


class Reader:
    """All tensors of a fixture through safetensors.safe_open, with the checks we report."""

    def __init__(self, mdir):
        self.t, self.reader = {}, "safetensors " + __import__("safetensors").__version__ + " safe_open"
        for p in sorted(mdir.glob("*.safetensors")):
            try:
                with safe_open(str(p), framework="pt") as f:
                    for k in f.keys():
                        self.t[k] = f.get_tensor(k)
            except Exception as e:  # a dtype this safetensors cannot read: say so, read by hand
                self.reader = f"hand-written reader ({type(e).__name__}: {e})"
                self.t.update(read_by_hand(p))
        self.used = set()
        self.problems = []

    def get(self, name):
        self.used.add(name)
        return self.t[name]

    def expect(self, name, dtypes, shape):
        if name not in self.t:
            self.problems.append(f"missing {name}")
            return None
        x = self.t[name]
        if x.dtype not in dtypes or list(x.shape) != list(shape):
            self.problems.append(f"{name}: {x.dtype} {list(x.shape)}, expected {dtypes} {shape}")
        return self.get(name)


def dequant_linear(r, module, out, inn, formats):
    """Float32 [out, in] of one linear; records its format."""
    w = r.get(module + ".weight")
    if w.dtype in (torch.bfloat16, torch.float16, torch.float32):
        formats[module] = "dense"
        if list(w.shape) != [out, inn]:
            r.problems.append(f"{module}.weight shape {list(w.shape)} != {[out, inn]}")
        return w.float()
    if w.dtype == torch.float8_e4m3fn:
        nb = [-(-out // 128), -(-inn // 128)]
        if module + ".scale" in r.t:
            s = e8m0_to_float(r.expect(module + ".scale", (torch.float8_e8m0fnu, torch.uint8), nb))
            formats[module] = "fp8-block e8m0"
        else:
            s = r.expect(module + ".weight_scale_inv", (torch.float32,), nb).float()
            formats[module] = "fp8-block f32"
        r.expect(module + ".weight", (torch.float8_e4m3fn,), [out, inn])
        return w.float() * block_expand(s, out, inn, 128, 128)
    if w.dtype in (torch.uint8, torch.int8):
        r.expect(module + ".weight", (torch.uint8, torch.int8), [out, inn // 2])
        q = unpack_e2m1(w)
        ws = r.t.get(module + ".weight_scale")
        if ws is not None and ws.dtype == torch.float8_e4m3fn:
            r.expect(module + ".weight_scale", (torch.float8_e4m3fn,), [out, inn // 16])
            ws2 = r.expect(module + ".weight_scale_2", (torch.float32,), [])
            if module + ".input_scale" in r.t:
                r.expect(module + ".input_scale", (torch.float32,), [])
            formats[module] = "nvfp4" + (" +input_scale" if module + ".input_scale" in r.t else "")
            return (q * ws.float().repeat_interleave(16, 1)) * ws2.float()
        s = e8m0_to_float(r.expect(module + ".scale", (torch.float8_e8m0fnu, torch.uint8), [out, inn // 32]))
        formats[module] = f"mxfp4 ({'I8' if w.dtype == torch.int8 else 'U8'})"
        return q * s.repeat_interleave(32, 1)
    r.problems.append(f"{module}.weight: unexpected dtype {w.dtype}")
    return w.float()


def split_fused(r, cfg):
    """layers.N.attn.fused_wqa_wkv -> wq_a / wkv float32 weights (per-shard weight_scale_2)."""
    out = {}
    for name in list(r.t):
        m = re.match(r"^(layers\.\d+\.attn\.)fused_wqa_wkv\.weight$", name)
        if not m:
            continue
        p = m.group(1) + "fused_wqa_wkv"
        qa, dh, d = cfg["q_lora_rank"], cfg["head_dim"], cfg["hidden_size"]
        r.expect(p + ".weight", (torch.uint8,), [qa + dh, d // 2])
        ws = r.expect(p + ".weight_scale", (torch.float8_e4m3fn,), [qa + dh, d // 16])
        ws2 = r.expect(p + ".weight_scale_2", (torch.float32,), [2])
        if p + ".input_scale" in r.t:
            r.expect(p + ".input_scale", (torch.float32,), [2])
        q = unpack_e2m1(r.get(p + ".weight")) * ws.float().repeat_interleave(16, 1)
        out[m.group(1) + "wq_a.weight"] = q[:qa] * ws2[0].float()
        out[m.group(1) + "wkv.weight"] = q[qa:] * ws2[1].float()
    return out


def linear_shapes(hf_shapes):
    """release module name -> (out, in) for every 2-D linear weight of the model."""
    shapes = {}
    for hf_name, shape in hf_shapes.items():
        m = T._EXPERTS.match(hf_name)
        if m:
            layer, which = m.group(1), m.group(2)
            for e in range(shape[0]):
                p = f"layers.{layer}.ffn.experts.{e}."
                if which == "gate_up_proj":
                    shapes[p + "w1"] = shapes[p + "w3"] = (shape[1] // 2, shape[2])
                else:
                    shapes[p + "w2"] = (shape[1], shape[2])
            continue
        (rel, _), = T.hf_to_release(hf_name, None)
        if rel.endswith(".weight") and len(shape) == 2 and rel not in ("embed.weight",):
            shapes[rel[: -len(".weight")]] = tuple(shape)
    return shapes


def spec_for(fixture, cfg):
    base = next(s for s in T.SPECS if fixture == s["name"] or fixture.startswith(s["name"] + "-"))
    spec = dict(base)
    spec["inter"] = cfg["moe_intermediate_size"]
    spec["experts"] = cfg["n_routed_experts"]
    return base["name"], spec


def input_amax_hooks(model):
    """Records max |input| of the attention projections and every routed expert projection input."""
    amax, handles = {}, []

    def hook(name):
        def f(module, args):
            amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().max()))
        return f

    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        for attr, rel in (("q_a_proj", "wq_a"), ("kv_proj", "wkv"), ("q_b_proj", "wq_b"), ("o_b_proj", "wo_b")):
            if hasattr(a, attr):
                handles.append(getattr(a, attr).register_forward_pre_hook(hook(f"layers.{i}.attn.{rel}")))
    return amax, handles


def run_fixture(fixture, device, env, cases):
    mdir, gdir = ROOT / "tests/fixtures/models" / fixture, ROOT / "tests/fixtures/golden" / fixture
    cfg = json.loads((mdir / "config.json").read_text())
    hfq = json.loads((mdir / "hf_quant_config.json").read_text()) if (mdir / "hf_quant_config.json").exists() else None
    base, spec = spec_for(fixture, cfg)
    hf_cfg, _, _ = MF.build_config(spec)
    MF.check_config(hf_cfg, spec)
    model = MF.make_model(hf_cfg, device)
    hf_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    r = Reader(mdir)
    release = split_fused(r, cfg)
    formats = {}
    for module, (out, inn) in sorted(linear_shapes(hf_shapes).items()):
        if module + ".weight" in release:
            formats[module] = "nvfp4 fused_wqa_wkv"
            continue
        if module + ".weight" not in r.t:
            r.problems.append(f"missing {module}.weight")
            continue
        release[module + ".weight"] = dequant_linear(r, module, out, inn, formats)
    for name, x in r.t.items():
        if name not in r.used and not re.search(r"\.(scale|weight_scale|weight_scale_2|input_scale|weight_scale_inv)$",
                                                name) and "fused_wqa_wkv" not in name:
            release[name] = x
            r.used.add(name)
    for name in r.t:
        if name not in r.used and "fused_wqa_wkv" not in name and not name.endswith(".input_scale"):
            r.problems.append(f"unused tensor {name}")
    nonfinite = [n for n, x in release.items() if x.is_floating_point() and not torch.isfinite(x.float()).all()]
    if nonfinite:
        r.problems.append(f"non-finite dequantized weights: {nonfinite[:5]}")
    state = T.release_to_hf(hf_shapes, release)
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    input_scales = {}
    for name, x in r.t.items():
        if name.endswith(".input_scale"):
            vals = x.float().reshape(-1).tolist()
            if "fused_wqa_wkv" in name:
                p = name[: -len("fused_wqa_wkv.input_scale")]
                input_scales[p + "wq_a"], input_scales[p + "wkv"] = vals
            else:
                input_scales[name[: -len(".input_scale")]] = vals[0]
    gdir.mkdir(parents=True, exist_ok=True)
    amax, handles = input_amax_hooks(model)
    case_stats = {}
    for k in cases:
        ref = json.loads((ROOT / "tests/fixtures/golden" / base / f"case_{k}.json").read_text())
        x = torch.tensor([ref["ids"]], dtype=torch.int64, device=device)
        with torch.no_grad():
            logits = model(input_ids=x, use_cache=False).logits[0].float().cpu()
        assert torch.isfinite(logits).all(), f"{fixture}: non-finite logits"
        np.save(gdir / f"case_{k}.logits.npy", logits.numpy().astype(np.float32))
        bf16 = torch.from_numpy(np.load(ROOT / "tests/fixtures/golden" / base / f"case_{k}.logits.npy"))
        case_stats[f"case_{k}"] = {
            "T": len(ref["ids"]), "distinct_argmax": int(logits.argmax(-1).unique().numel()),
            "vs_bf16_model_max_rel_diff": MF.f32((logits - bf16).abs().max() / bf16.abs().max())
            if bf16.shape == logits.shape else None,
            "vs_bf16_model_argmax_agreement": float((logits.argmax(-1) == bf16.argmax(-1)).float().mean())
            if bf16.shape == logits.shape else None}
        case = {"model": fixture, "ids": ref["ids"], "transformers_version": transformers.__version__,
                "torch_version": torch.__version__, "device": env["device"],
                "logits_file": f"case_{k}.logits.npy", "logits_shape": [len(ref["ids"]), T.VOCAB],
                "ids_from": f"golden/{base}/case_{k}.json",
                "reference": "transformers DeepseekV4ForCausalLM float32 on the exactly dequantized weights"}
        with open(gdir / f"case_{k}.json", "w") as f:
            json.dump(case, f, indent=1)
            f.write("\n")
    for h in handles:
        h.remove()
    ratios = {n: MF.f32(amax[n] / (2688.0 * s)) for n, s in sorted(input_scales.items()) if n in amax}
    counts = {}
    for v in formats.values():
        counts[v] = counts.get(v, 0) + 1
    meta = {"fixture": fixture, "base_model": base, "moe_intermediate_size": cfg["moe_intermediate_size"],
            "quantization_config": cfg.get("quantization_config"), "expert_dtype": cfg.get("expert_dtype"),
            "hf_quant_config": hfq, "tolerance": TOLERANCE, "formats": counts,
            "reader": r.reader,
            "checks": {"problems": r.problems, "tensors": len(r.t)},
            "attention_input_amax_over_2688_input_scale": ratios, "cases": case_stats, "env": env}
    with open(gdir / "quantized.json", "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{fixture}: {len(r.t)} tensors, formats {counts}, problems {r.problems or 'none'}", flush=True)
    print(f"  cases {case_stats}", flush=True)
    if ratios:
        print(f"  attention amax/(2688*input_scale): {ratios}", flush=True)
    return not r.problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--cases", default="1")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    env = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "transformers": transformers.__version__, "python": sys.version.split()[0], "tf32": False}
    wanted = [s for s in a.only.split(",") if s] or sorted(
        p.name for p in (ROOT / "tests/fixtures/models").iterdir()
        if re.match(r"^tiny-[a-z]-.+", p.name) and p.name != "tiny-a-hf")
    cases = [int(c) for c in a.cases.split(",")]
    t0, failed = time.time(), []
    for fx in wanted:
        try:
            if not run_fixture(fx, device, env, cases):
                failed.append(fx)
        except Exception as e:  # report and go on with the others
            import traceback
            traceback.print_exc()
            failed.append(f"{fx}: {type(e).__name__}: {e}")
    print(f"done in {time.time() - t0:.1f}s; failed: {failed or 'none'}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
