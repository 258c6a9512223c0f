# Writes quantized checkpoints of the BF16 tiny-a weights WITHOUT clawmine's quantizer, with torch
# only, following two producers' conventions, so the engine is tested on files it did not write:
#   tiny-a-foreign-release:  DeepSeek's V4 release (quant-numerics.md §1.7): attention, indexer wq_b
#     and shared experts FP8 E4M3 with E8M0 `.scale` per 128x128 (2^ceil(log2(amax/448)), as
#     DeepSeek's act/weight quant); routed experts MXFP4 as INT8 [out, in/2] (low nibble = even k)
#     with E8M0 `.scale` per 32 (2^ceil(log2(amax/6))); config quantization_config + expert_dtype.
#     The tiny models' down projections have in = 16 < 32, so this copy widens the experts to
#     moe_intermediate_size 32 with fresh N(0, 1/in) weights (torch.Generator seed 5151).
#   tiny-a-foreign-modelopt: NVIDIA ModelOpt's DSV4 recipe (§1.4, §1.8): release FP8 as above for
#     the excluded modules, routed experts NVFP4 (U8 packed, E4M3 weight_scale [out, in/16], F32
#     weight_scale_2 = amax/2688 shared by w1/w3, F32 input_scale = calibrated amax/2688 where the
#     amax is the max |x| of the MoE input over calibration tokens for w1/w3 (all experts of a layer)
#     and of each expert's SwiGLU hidden over all those tokens for w2), hf_quant_config.json
#     MIXED_PRECISION with quantized_layers and NVIDIA's exclude_modules.
# Then quant_goldens.py records their goldens like the others.
#   python3 tools/reference/write_foreign_quant.py
import json
import pathlib
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import dsv4_tiny as T  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
FP8_MODULES = ("attn.wq_a", "attn.wq_b", "attn.wkv", "attn.wo_a", "attn.wo_b", "attn.indexer.wq_b",
               "ffn.shared_experts.w1", "ffn.shared_experts.w2", "ffn.shared_experts.w3")
RELEASE_QC = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "scale_fmt": "ue8m0",
              "weight_block_size": [128, 128]}


def e2m1_codes(x):
    """Round to nearest E2M1 magnitude, ties to the even code, saturating at 6; sign in bit 3."""
    mag = x.abs().clamp(max=6.0)
    d = (mag.unsqueeze(-1) - E2M1_GRID).abs()
    best = d.min(-1, keepdim=True).values
    ties = d == best
    codes = torch.arange(8)
    # among tied candidates prefer the even code (RNE on the code's mantissa bit)
    score = torch.where(ties, (codes % 2) * 16 + codes, torch.full_like(codes, 1 << 10))
    code = score.argmin(-1)
    return code | ((x < 0) & (code > 0)).to(torch.int64) << 3


def pack(codes):
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def e8m0(exponent):
    b = (exponent + 127).clamp(0, 254).to(torch.uint8)
    return b.view(torch.float8_e8m0fnu) if hasattr(torch, "float8_e8m0fnu") else b


def fp8_block(w):
    out, inn = w.shape
    nb_r, nb_c = -(-out // 128), -(-inn // 128)
    exps = torch.zeros(nb_r, nb_c, dtype=torch.int32)
    q = torch.empty(out, inn, dtype=torch.float8_e4m3fn)
    for i in range(nb_r):
        for j in range(nb_c):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = float(blk.abs().max().clamp(min=1e-4))
            e = int(torch.ceil(torch.log2(torch.tensor(amax / 448.0))))
            exps[i, j] = e
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / 2.0 ** e).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, e8m0(exps)


def mxfp4(w):
    out, inn = w.shape
    g = w.reshape(out, inn // 32, 32)
    amax = g.abs().amax(-1).clamp(min=2.0 ** -126)
    e = torch.ceil(torch.log2(amax / 6.0)).to(torch.int32)
    codes = e2m1_codes((g / torch.pow(2.0, e.float()).unsqueeze(-1)).reshape(out, inn))
    return pack(codes).view(torch.int8), e8m0(e)


def nvfp4(w, ws2):
    out, inn = w.shape
    g = w.reshape(out, inn // 16, 16)
    sf = (g.abs().amax(-1) / (6.0 * ws2))
    sf = torch.where(sf == 0, torch.ones_like(sf), sf).clamp(2.0 ** -9, 448.0).to(torch.float8_e4m3fn)
    codes = e2m1_codes((g / (sf.float().unsqueeze(-1) * ws2)).reshape(out, inn))
    return pack(codes), sf


def load_tiny_a():
    loaded = T.read_safetensors(ROOT / "tests/fixtures/models/tiny-a/model.safetensors")
    cfg = json.loads((ROOT / "tests/fixtures/models/tiny-a/config.json").read_text())
    return {n: t for n, (dt, t) in loaded.items()}, cfg


def is_routed(name):
    return ".ffn.experts." in name and name.endswith(".weight")


def fp8_modules(src, out):
    for name in list(src):
        module = name[: -len(".weight")]
        if name.endswith(".weight") and module.split(".", 2)[-1] in FP8_MODULES:
            q, s = fp8_block(src[name].float())
            out[name], out[module + ".scale"] = q, s


def write_by_hand(path, tensors, meta):
    import struct
    names = {torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64", torch.int8: "I8",
             torch.uint8: "U8", torch.float8_e4m3fn: "F8_E4M3"}
    if hasattr(torch, "float8_e8m0fnu"):
        names[torch.float8_e8m0fnu] = "F8_E8M0"
    header, blobs, offset = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write(dirname, tensors, cfg, hf_quant=None):
    d = ROOT / "tests/fixtures/models" / dirname
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "producer": "tools/reference/write_foreign_quant.py"}
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"), metadata=meta)
        print("  written by safetensors", __import__("safetensors").__version__, flush=True)
    except Exception as e:  # a dtype this safetensors cannot write: write the format by hand
        print(f"  safetensors.save_file failed ({type(e).__name__}: {e}); hand-written file", flush=True)
        write_by_hand(d / "model.safetensors", tensors, meta)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if hf_quant is not None:
        (d / "hf_quant_config.json").write_text(json.dumps(hf_quant, indent=2) + "\n")
    print(f"wrote {d} ({len(tensors)} tensors, {(d / 'model.safetensors').stat().st_size} bytes)", flush=True)


def release_copy(src, cfg):
    gen = torch.Generator().manual_seed(5151)
    inter, dim = 32, cfg["hidden_size"]
    base = {}
    for n, t in src.items():
        if ".ffn.experts." in n or ".ffn.shared_experts." in n:
            shape = (dim, inter) if ".w2." in n else (inter, dim)
            t = (torch.randn(*shape, generator=gen) / shape[1] ** 0.5).to(torch.bfloat16)
        base[n] = t
    out = dict(base)
    fp8_modules(base, out)
    for n in sorted(base):
        if is_routed(n):
            out[n], out[n[: -len(".weight")] + ".scale"] = mxfp4(base[n].float())
    c = dict(cfg, moe_intermediate_size=inter, expert_dtype="fp4", quantization_config=RELEASE_QC)
    write("tiny-a-foreign-release", out, c)


def calibration_amax(src, cfg):
    """Per layer: max |MoE input| (w1/w3) and per expert max |SwiGLU hidden| (w2) with transformers."""
    import make_fixtures as MF
    spec = next(s for s in T.SPECS if s["name"] == "tiny-a")
    hf_cfg, _, _ = MF.build_config(spec)
    model = MF.make_model(hf_cfg, torch.device("cpu"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(T.release_to_hf(shapes, src), strict=True)
    inputs = {}
    hooks = [layer.mlp.experts.register_forward_pre_hook(
        lambda m, a, i=i: inputs.setdefault(i, []).append(a[0].detach().reshape(-1, a[0].shape[-1])))
        for i, layer in enumerate(model.model.layers)]
    gen = torch.Generator().manual_seed(777)
    with torch.no_grad():
        for length in (128, 96):
            model(input_ids=torch.randint(2, T.VOCAB, (1, length), generator=gen), use_cache=False)
    for h in hooks:
        h.remove()
    amax = {}
    lim = cfg["swiglu_limit"]
    for i, xs in inputs.items():
        x = torch.cat(xs).float()
        amax[f"layers.{i}.w13"] = float(x.abs().max())
        for e in range(cfg["n_routed_experts"]):
            p = f"layers.{i}.ffn.experts.{e}."
            gate = (x @ src[p + "w1.weight"].float().T).clamp(max=lim)
            up = (x @ src[p + "w3.weight"].float().T).clamp(-lim, lim)
            amax[p + "w2"] = float((torch.nn.functional.silu(gate) * up).abs().max())
    return amax


def modelopt_copy(src, cfg):
    amax = calibration_amax(src, cfg)
    out = dict(src)
    fp8_modules(src, out)
    layers = {}
    for n in sorted(src):
        if not (is_routed(n) and n.endswith(".w1.weight")):
            continue
        p = n[: -len("w1.weight")]
        layer = p.split(".")[1]
        w1, w3, w2 = (src[p + f"w{k}.weight"].float() for k in (1, 3, 2))
        ws2_13 = float(torch.maximum(w1.abs().max(), w3.abs().max())) / 2688.0
        ws2_2 = float(w2.abs().max()) / 2688.0
        for k, w, ws2, a in ((1, w1, ws2_13, amax[f"layers.{layer}.w13"]), (3, w3, ws2_13, amax[f"layers.{layer}.w13"]),
                             (2, w2, ws2_2, amax[p + "w2"])):
            m = p + f"w{k}"
            out[m + ".weight"], out[m + ".weight_scale"] = nvfp4(w, ws2)
            out[m + ".weight_scale_2"] = torch.tensor(ws2, dtype=torch.float32)
            out[m + ".input_scale"] = torch.tensor(a / 2688.0, dtype=torch.float32)
            layers[m] = {"quant_algo": "NVFP4", "group_size": 16}
    qc = dict(RELEASE_QC, moe_quant_algo="NVFP4")
    hf_quant = {"producer": {"name": "modelopt", "version": "tools/reference/write_foreign_quant.py"},
                "quantization": {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": None, "group_size": 16,
                                 "exclude_modules": ["*.attn.*", "*.attn_norm.*", "*.ffn.shared_experts.*",
                                                     "*.ffn.gate.*", "*.ffn_norm.*", "embed.weight", "head.weight",
                                                     "*.hc_*", "norm.weight"],
                                 "quantized_layers": layers}}
    write("tiny-a-foreign-modelopt", out, dict(cfg, quantization_config=qc), hf_quant)


def main():
    torch.set_default_dtype(torch.float32)
    src, cfg = load_tiny_a()
    release_copy(src, cfg)
    modelopt_copy(src, cfg)


if __name__ == "__main__":
    main()
