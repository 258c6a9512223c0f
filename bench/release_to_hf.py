#!/usr/bin/env python3
"""A DeepSeek V4 checkpoint in the release layout -> the layout transformers' save_pretrained writes
(names and config.json as in tests/fixtures/models/tiny-a-hf, docs/FIXTURES.md), every linear in BF16.

    python3 bench/release_to_hf.py SRC_DIR DST_DIR [--device cuda|cpu]

Why: transformers 5.17 cannot read a release config.json whose HCA rate is not 128 (the tiny
fixtures) nor the release's MXFP4 / NVFP4 layouts, and the speed comparison wants the same BF16
weights in both engines. `DeepseekV4ForCausalLM.from_pretrained` loads the result, and so does
clawmine (src/model/deepseek_v4/name_map.cpp reads the saved transformers naming).

* Dense tensors (BF16, F32, I64) are copied byte for byte (pure Python, no torch).
* Quantized linears are decoded with torch on --device, value = code x scale(s), then rounded once
  to BF16: FP8 E4M3 with 128x128 block scales (`.scale` E8M0 or `.weight_scale_inv` F32); MXFP4
  (`.weight` I8/U8 [out, in/2], low nibble = even input, `.scale` E8M0 [out, in/32]); NVFP4
  (`.weight` U8, `.weight_scale` E4M3 [out, in/16], `.weight_scale_2` F32); fused NVFP4
  `attn.fused_wqa_wkv` split into wq_a (first q_lora_rank rows) and wkv, one weight_scale_2 each.
* Scale tensors (`.scale`, `.weight_scale*`, `.input_scale`) and MTP tensors (`mtp.*`) are dropped.
* Names: release `X` -> `model.X`, except embed.weight -> model.embed_tokens.weight, head.weight
  stays, hc_head_{fn,base,scale} -> model.hc_head.hc_{...}, layers.N.attn.kv_norm -> model.layers.N.attn.norm.
* config.json: transformers spelling (layer_types, compress_rates, mlp_layer_types, nested
  rope_parameters: "main" default RoPE, "compress" YaRN with attention_factor 1.0), the keys
  transformers 5.17 wrote for tiny-a-hf; "dtype": "bfloat16"; no quantization_config.
One output shard per input shard (model.safetensors for a single file, else model-0000i-of-0000n
plus model.safetensors.index.json).
"""
import argparse
import json
import pathlib
import re
import struct
import sys
import time

SCALE_SUFFIXES = (".scale", ".weight_scale", ".weight_scale_2", ".input_scale", ".weight_scale_inv")


class ConvertError(Exception):
    """A problem with the input checkpoint, said in one line."""


# ---- safetensors headers ----------------------------------------------------------------------
def read_header(path):
    """name -> {"dtype", "shape", "begin" (absolute file offset), "nbytes"}."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConvertError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ConvertError(f"{path}: unreadable safetensors header: {e}")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = {"dtype": info["dtype"], "shape": list(info["shape"]), "begin": 8 + n + b, "nbytes": e - b}
    return out


def shard_files(model_dir):
    """The checkpoint's safetensors files, in index order when there is an index."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        return [model_dir / f for f in files]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{model_dir}: no *.safetensors files")
    return files


def read_bytes(path, info):
    with open(path, "rb") as f:
        f.seek(info["begin"])
        buf = bytearray(info["nbytes"])
        if f.readinto(buf) != info["nbytes"]:
            raise ConvertError(f"{path}: truncated tensor data")
    return buf


# ---- config -----------------------------------------------------------------------------------
def hf_config(rc):
    """Release config.json (dict) -> transformers' spelling, as save_pretrained writes it."""
    if "layer_types" in rc:
        raise ConvertError("config.json is already in transformers' spelling (layer_types): load it directly")
    try:
        L = int(rc["num_hidden_layers"])
        ratios = list(rc["compress_ratios"])[:L]
        head_dim, rope_dim = int(rc["head_dim"]), int(rc["qk_rope_head_dim"])
    except KeyError as e:
        raise ConvertError(f"config.json: missing release field {e}")
    csa, hca = int(rc.get("compress_rate_csa", 4)), int(rc.get("compress_rate_hca", 128))
    kinds = []
    for i, r in enumerate(ratios):
        if r == 0:
            kinds.append("sliding_attention")
        elif r == csa:
            kinds.append("compressed_sparse_attention")
        elif r == hca:
            kinds.append("heavily_compressed_attention")
        else:
            raise ConvertError(f"config.json: compress_ratios[{i}] = {r} is neither 0, the CSA rate {csa} "
                               f"nor the HCA rate {hca}")
    if len(kinds) != L:
        raise ConvertError(f"config.json: compress_ratios has {len(kinds)} entries for {L} layers")
    n_hash = int(rc.get("num_hash_layers", 0))
    prf = rope_dim / head_dim
    rs = rc.get("rope_scaling") or {}
    compress = {"partial_rotary_factor": prf, "rope_theta": float(rc.get("compress_rope_theta", 160000.0))}
    if rs.get("type", rs.get("rope_type")) == "yarn":
        compress.update({"attention_factor": 1.0, "beta_fast": rs.get("beta_fast", 32),
                         "beta_slow": rs.get("beta_slow", 1), "factor": float(rs["factor"]),
                         "original_max_position_embeddings": int(rs["original_max_position_embeddings"]),
                         "rope_type": "yarn", "type": "yarn"})
    else:
        compress["rope_type"] = "default"
    get = rc.get
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "attention_bias": bool(get("attention_bias", False)),
        "attention_dropout": 0.0,
        "bos_token_id": get("bos_token_id", 0),
        "compress_rates": {"compressed_sparse_attention": csa, "heavily_compressed_attention": hca},
        "compress_rope_theta": compress["rope_theta"],
        "dtype": "bfloat16",
        "eos_token_id": get("eos_token_id", 1),
        "hc_eps": get("hc_eps", 1e-6),
        "hc_mult": get("hc_mult", 4),
        "hc_sinkhorn_iters": get("hc_sinkhorn_iters", 20),
        "head_dim": head_dim,
        "hidden_act": get("hidden_act", "silu"),
        "hidden_size": rc["hidden_size"],
        "index_head_dim": rc["index_head_dim"],
        "index_n_heads": rc["index_n_heads"],
        "index_topk": rc["index_topk"],
        "initializer_range": get("initializer_range", 0.02),
        "layer_types": kinds,
        "max_position_embeddings": rc["max_position_embeddings"],
        "mlp_bias": False,
        "mlp_layer_types": ["hash_moe"] * n_hash + ["moe"] * (L - n_hash),
        "model_type": "deepseek_v4",
        "moe_intermediate_size": rc["moe_intermediate_size"],
        "n_routed_experts": rc["n_routed_experts"],
        "n_shared_experts": get("n_shared_experts", 1),
        "norm_topk_prob": get("norm_topk_prob", True),
        "num_attention_heads": rc["num_attention_heads"],
        "num_experts_per_tok": rc["num_experts_per_tok"],
        "num_hidden_layers": L,
        "num_key_value_heads": get("num_key_value_heads", 1),
        "num_nextn_predict_layers": 0,  # MTP tensors are not written
        "o_groups": rc["o_groups"],
        "o_lora_rank": rc["o_lora_rank"],
        "output_router_logits": False,
        "pad_token_id": None,
        "partial_rotary_factor": prf,
        "q_lora_rank": rc["q_lora_rank"],
        "qk_rope_head_dim": rope_dim,
        "rms_norm_eps": get("rms_norm_eps", 1e-6),
        "rope_parameters": {
            "compress": compress,
            "main": {"partial_rotary_factor": prf, "rope_theta": float(get("rope_theta", 10000.0)),
                     "rope_type": "default"},
        },
        "rope_theta": float(get("rope_theta", 10000.0)),
        "routed_scaling_factor": get("routed_scaling_factor", 1.0),
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "scoring_func": get("scoring_func", "sqrtsoftplus"),
        "sliding_window": rc["sliding_window"],
        "swiglu_limit": get("swiglu_limit", 10.0),
        "tie_word_embeddings": bool(get("tie_word_embeddings", False)),
        "transformers_version": "5.17.0",
        "use_cache": True,
        "vocab_size": rc["vocab_size"],
    }


def hf_name(release):
    """Release tensor name -> the name transformers 5.17 save_pretrained writes (tiny-a-hf)."""
    if release == "embed.weight":
        return "model.embed_tokens.weight"
    if release == "head.weight":
        return "head.weight"
    m = re.match(r"^hc_head_(fn|base|scale)$", release)
    if m:
        return "model.hc_head.hc_" + m.group(1)
    m = re.match(r"^layers\.(\d+)\.attn\.kv_norm\.(.*)$", release)
    if m:
        return f"model.layers.{m.group(1)}.attn.norm.{m.group(2)}"
    return "model." + release


# ---- dequantization (torch) -------------------------------------------------------------------
class Dequant:
    """Decodes one quantized linear to a BF16 torch tensor on `device`."""

    def __init__(self, device):
        try:
            import torch
        except ImportError as e:
            raise ConvertError(f"the checkpoint has quantized linears; decoding them needs PyTorch ({e})")
        self.torch, self.device = torch, torch.device(device)
        self.e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                                  -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], device=self.device)
        self.dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I8": torch.int8,
                       "U8": torch.uint8, "F8_E4M3": torch.float8_e4m3fn, "F8_E8M0": torch.uint8}

    def load(self, path, info):
        t = self.torch
        if info["dtype"] not in self.dtypes:
            raise ConvertError(f"{path}: unexpected dtype {info['dtype']}")
        raw = t.frombuffer(read_bytes(path, info), dtype=t.uint8) if info["nbytes"] else t.empty(0, dtype=t.uint8)
        return raw.view(self.dtypes[info["dtype"]]).reshape(info["shape"]).to(self.device)

    def e8m0(self, b):  # E8M0 bytes -> 2^(b-127); 255 is NaN
        t = self.torch
        f = t.exp2(b.to(t.float32) - 127.0)
        return t.where(b == 255, t.full_like(f, float("nan")), f)

    def e2m1(self, packed):  # [out, in/2] bytes -> [out, in] float32, even input = low nibble
        b = packed.view(self.torch.uint8).to(self.torch.int64)
        return self.torch.stack([self.e2m1[b & 0xF], self.e2m1[b >> 4]], dim=-1).reshape(packed.shape[0], -1)

    def linear(self, tensors, module):
        """tensors: name -> (path, info). Returns float32 [out, in]."""
        t = self.torch
        get = lambda suffix: self.load(*tensors[module + suffix])  # noqa: E731
        has = lambda suffix: module + suffix in tensors  # noqa: E731
        wdt = tensors[module + ".weight"][1]["dtype"]
        if wdt == "F8_E4M3":
            w = get(".weight").to(t.float32)
            s = self.e8m0(get(".scale")) if has(".scale") else get(".weight_scale_inv").to(t.float32)
            out, inn = w.shape
            s = s.repeat_interleave(128, 0)[:out].repeat_interleave(128, 1)[:, :inn]
            return w * s
        if wdt in ("U8", "I8") and has(".weight_scale") and tensors[module + ".weight_scale"][1]["dtype"] == "F8_E4M3":
            q = self.e2m1(get(".weight"))
            ws = get(".weight_scale").to(t.float32).repeat_interleave(16, 1)
            return (q * ws) * get(".weight_scale_2").to(t.float32).reshape(-1)[0]
        if wdt in ("U8", "I8") and has(".scale"):
            return self.e2m1(get(".weight")) * self.e8m0(get(".scale")).repeat_interleave(32, 1)
        raise ConvertError(f"{module}.weight: {wdt} without the scales of a known format")

    def fused_wqa_wkv(self, tensors, module, q_lora_rank):
        """NVFP4 fused wq_a + wkv: rows [0, q_lora_rank) are wq_a, the rest wkv; weight_scale_2 [2]."""
        t = self.torch
        q = self.e2m1(self.load(*tensors[module + ".weight"]))
        q = q * self.load(*tensors[module + ".weight_scale"]).to(t.float32).repeat_interleave(16, 1)
        s2 = self.load(*tensors[module + ".weight_scale_2"]).to(t.float32).reshape(-1)
        return q[:q_lora_rank] * s2[0], q[q_lora_rank:] * s2[1]

    def to_bytes(self, x):
        return x.to(self.torch.bfloat16).contiguous().view(self.torch.uint8).cpu().numpy().data


# ---- the conversion ---------------------------------------------------------------------------
def plan_shard(path, header, q_lora_rank):
    """[(hf name, dtype, shape, how)] for one input shard; how = ("copy", info) or
    ("linear", module) or ("fused", module, part)."""
    out = []
    names = set(header)
    for name in sorted(names):
        info = header[name]
        if name.startswith("mtp.") or name.endswith(SCALE_SUFFIXES):
            continue
        m = re.match(r"^(layers\.\d+\.attn\.)fused_wqa_wkv\.weight$", name)
        if m:
            rows, cols = info["shape"][0], info["shape"][1] * 2
            if q_lora_rank <= 0 or q_lora_rank >= rows:
                raise ConvertError(f"{name}: {rows} rows cannot hold q_lora_rank {q_lora_rank} + wkv")
            module = name[: -len(".weight")]
            out.append((hf_name(m.group(1) + "wq_a.weight"), "BF16", [q_lora_rank, cols], ("fused", module, 0)))
            out.append((hf_name(m.group(1) + "wkv.weight"), "BF16", [rows - q_lora_rank, cols], ("fused", module, 1)))
            continue
        if name.endswith(".weight") and info["dtype"] in ("F8_E4M3", "I8", "U8"):
            module = name[: -len(".weight")]
            rows, cols = info["shape"]
            if info["dtype"] != "F8_E4M3":
                cols *= 2  # two E2M1 codes per byte
            out.append((hf_name(name), "BF16", [rows, cols], ("linear", module)))
            continue
        if info["dtype"] not in ("BF16", "F32", "F16", "I64", "I32"):
            raise ConvertError(f"{path.name}: {name} has dtype {info['dtype']} and is not a known quantized weight")
        out.append((hf_name(name), info["dtype"], info["shape"], ("copy", info)))
    return out


DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "I32": 4}


def convert(src, dst, device="cuda", log=print):
    """Writes DST (created; must not hold a config.json). Returns total bytes written."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if not (src / "config.json").is_file():
        raise ConvertError(f"{src}: no config.json (not a model directory)")
    rc = json.loads((src / "config.json").read_text())
    cfg = hf_config(rc)
    if (dst / "config.json").exists():
        raise ConvertError(f"{dst}: already holds a config.json; remove it or pick another directory")
    dst.mkdir(parents=True, exist_ok=True)
    files = shard_files(src)
    headers = [(p, read_header(p)) for p in files]
    all_tensors = {n: (p, info) for p, h in headers for n, info in h.items()}
    plans = [(p, plan_shard(p, h, int(rc.get("q_lora_rank", 0)))) for p, h in headers]
    plans = [(p, plan) for p, plan in plans if plan]
    dq = None
    weight_map, total, t0 = {}, 0, time.time()
    for i, (path, plan) in enumerate(plans):
        name = "model.safetensors" if len(plans) == 1 else f"model-{i + 1:05d}-of-{len(plans):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for hname, dtype, shape, _ in plan:
            n = DTYPE_BYTES[dtype]
            for d in shape:
                n *= d
            header[hname] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[hname] = name
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        fused_cache = {}
        with open(dst / name, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for hname, dtype, shape, how in plan:
                if how[0] == "copy":
                    f.write(read_bytes(path, how[1]))
                    continue
                if dq is None:
                    dq = Dequant(device)
                if how[0] == "linear":
                    w = dq.linear(all_tensors, how[1])
                else:
                    if how[1] not in fused_cache:
                        fused_cache = {how[1]: dq.fused_wqa_wkv(all_tensors, how[1], int(rc["q_lora_rank"]))}
                    w = fused_cache[how[1]][how[2]]
                if list(w.shape) != shape:
                    raise ConvertError(f"{hname}: decoded shape {list(w.shape)} != {shape}")
                f.write(dq.to_bytes(w))
        total += len(text) + 8 + offset
        log(f"  {name}: {len(plan)} tensors, {offset / 1e9:.3f} GB ({time.time() - t0:.1f} s)")
    if len(plans) > 1:
        (dst / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for extra in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / extra).is_file():
            (dst / extra).write_bytes((src / extra).read_bytes())
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="release-format checkpoint directory (config.json + safetensors)")
    ap.add_argument("dst", help="output directory (created)")
    ap.add_argument("--device", default="cuda", help="torch device that decodes quantized linears (default cuda)")
    a = ap.parse_args(argv)
    try:
        t0 = time.time()
        total = convert(a.src, a.dst, a.device)
        print(f"wrote {a.dst}: {total / 1e9:.3f} GB in {time.time() - t0:.1f} s")
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
