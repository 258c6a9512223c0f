# Shared pieces of the tiny DeepSeek V4 fixture generator: the three model specs, the two config
# spellings (transformers' DeepseekV4Config kwargs and the release's legacy config.json), the
# transformers <-> release tensor-name mapping with the release dtypes, the weight re-draw rules and
# a minimal safetensors reader/writer. Imports torch lazily so the specs can be read without it.
# Spec: shared/specs/transformers-parity.md §2-3, shared/specs/deepseek-v4.md §2.1.
import hashlib
import json
import math
import re
import struct

VOCAB = 512
HIDDEN = 64
HEADS = 4
HEAD_DIM = 64
ROPE_DIM = 16
Q_LORA = 64
O_GROUPS = 2
O_LORA = 32
INDEX_HEADS = 16
INDEX_HEAD_DIM = 32
CSA_RATE = 4
HC_MULT = 4
PROMPT_LEN = 24
NEW_TOKENS = 32
SHORT_LEN = 37

KIND_NAMES = {"S": "sliding_attention", "C": "compressed_sparse_attention", "H": "heavily_compressed_attention"}

# Layer kinds: S = sliding only, C = CSA (rate 4, overlap + indexer), H = HCA (rate hca_rate).
SPECS = [
    dict(name="tiny-a", seed=1001, layers="SCHC", hca_rate=8, window=16, experts=8, topk=3, inter=16,
         num_hash=2, index_topk=64, swiglu=2.5, route_scale=1.5, yarn_factor=16.0, yarn_orig=65536,
         long_len=211, hf_copy=True),
    dict(name="tiny-b", seed=2002, layers="HCHC", hca_rate=16, window=8, experts=12, topk=4, inter=16,
         num_hash=1, index_topk=8, swiglu=3.0, route_scale=2.5, yarn_factor=4.0, yarn_orig=4096,
         long_len=218, hf_copy=False),
    dict(name="tiny-c", seed=3003, layers="SSCHC", hca_rate=8, window=16, experts=8, topk=3, inter=16,
         num_hash=2, index_topk=4, swiglu=2.0, route_scale=1.5, yarn_factor=16.0, yarn_orig=65536,
         long_len=203, hf_copy=False),
]


def layer_types(spec):
    return [KIND_NAMES[k] for k in spec["layers"]]


def mlp_layer_types(spec):
    n = len(spec["layers"])
    return ["hash_moe"] * spec["num_hash"] + ["moe"] * (n - spec["num_hash"])


def rope_scaling(spec):
    return {"type": "yarn", "factor": spec["yarn_factor"],
            "original_max_position_embeddings": spec["yarn_orig"], "beta_fast": 32, "beta_slow": 1}


def hf_config_kwargs(spec):
    """DeepseekV4Config kwargs in transformers spelling (without the rope scaling dict)."""
    return dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, moe_intermediate_size=spec["inter"],
        num_hidden_layers=len(spec["layers"]), num_attention_heads=HEADS, num_key_value_heads=1,
        head_dim=HEAD_DIM, q_lora_rank=Q_LORA, num_experts_per_tok=spec["topk"],
        n_routed_experts=spec["experts"], n_shared_experts=1, scoring_func="sqrtsoftplus",
        norm_topk_prob=True, routed_scaling_factor=float(spec["route_scale"]),
        max_position_embeddings=int(spec["yarn_factor"] * spec["yarn_orig"]), rope_theta=10000.0,
        layer_types=layer_types(spec),
        compress_rates={"compressed_sparse_attention": CSA_RATE,
                        "heavily_compressed_attention": spec["hca_rate"]},
        compress_rope_theta=160000.0, hc_mult=HC_MULT, hc_sinkhorn_iters=20, hc_eps=1e-6,
        mlp_layer_types=mlp_layer_types(spec), swiglu_limit=float(spec["swiglu"]),
        sliding_window=spec["window"], o_groups=O_GROUPS, o_lora_rank=O_LORA,
        index_n_heads=INDEX_HEADS, index_head_dim=INDEX_HEAD_DIM, index_topk=spec["index_topk"],
        num_nextn_predict_layers=0, hidden_act="silu", rms_norm_eps=1e-6, bos_token_id=0,
        eos_token_id=1, tie_word_embeddings=False, partial_rotary_factor=ROPE_DIM / HEAD_DIM,
        attention_bias=False, mlp_bias=False, use_cache=True,
    )


def release_config(spec, transformers_version):
    """config.json in the official release's legacy spelling (no quantization_config)."""
    ratios = [0 if k == "S" else CSA_RATE if k == "C" else spec["hca_rate"] for k in spec["layers"]]
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": len(spec["layers"]),
        "num_attention_heads": HEADS,
        "num_key_value_heads": 1,
        "head_dim": HEAD_DIM,
        "qk_rope_head_dim": ROPE_DIM,
        "q_lora_rank": Q_LORA,
        "o_groups": O_GROUPS,
        "o_lora_rank": O_LORA,
        "sliding_window": spec["window"],
        "compress_ratios": ratios,
        "compress_rate_csa": CSA_RATE,
        "compress_rate_hca": spec["hca_rate"],
        "compress_rope_theta": 160000.0,
        "rope_theta": 10000.0,
        "rope_scaling": rope_scaling(spec),
        "max_position_embeddings": int(spec["yarn_factor"] * spec["yarn_orig"]),
        "index_n_heads": INDEX_HEADS,
        "index_head_dim": INDEX_HEAD_DIM,
        "index_topk": spec["index_topk"],
        "n_routed_experts": spec["experts"],
        "n_shared_experts": 1,
        "num_experts_per_tok": spec["topk"],
        "moe_intermediate_size": spec["inter"],
        "scoring_func": "sqrtsoftplus",
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "routed_scaling_factor": float(spec["route_scale"]),
        "num_hash_layers": spec["num_hash"],
        "swiglu_limit": float(spec["swiglu"]),
        "hc_mult": HC_MULT,
        "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-6,
        "rms_norm_eps": 1e-6,
        "num_nextn_predict_layers": 0,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "transformers_version": transformers_version,
    }


# transformers name (ForCausalLM state_dict) -> release name. Experts are handled separately.
_L = r"^model\.layers\.(\d+)\."
NAME_RULES = [
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^lm_head\.weight$", "head.weight"),
    (r"^model\.norm\.weight$", "norm.weight"),
    (r"^model\.hc_head\.hc_(fn|base|scale)$", r"hc_head_\1"),
    (_L + r"input_layernorm\.weight$", r"layers.\1.attn_norm.weight"),
    (_L + r"post_attention_layernorm\.weight$", r"layers.\1.ffn_norm.weight"),
    (_L + r"attn_hc\.(fn|base|scale)$", r"layers.\1.hc_attn_\2"),
    (_L + r"ffn_hc\.(fn|base|scale)$", r"layers.\1.hc_ffn_\2"),
    (_L + r"self_attn\.q_a_proj\.weight$", r"layers.\1.attn.wq_a.weight"),
    (_L + r"self_attn\.q_a_norm\.weight$", r"layers.\1.attn.q_norm.weight"),
    (_L + r"self_attn\.q_b_proj\.weight$", r"layers.\1.attn.wq_b.weight"),
    (_L + r"self_attn\.kv_proj\.weight$", r"layers.\1.attn.wkv.weight"),
    (_L + r"self_attn\.kv_norm\.weight$", r"layers.\1.attn.kv_norm.weight"),
    (_L + r"self_attn\.o_a_proj\.weight$", r"layers.\1.attn.wo_a.weight"),
    (_L + r"self_attn\.o_b_proj\.weight$", r"layers.\1.attn.wo_b.weight"),
    (_L + r"self_attn\.sinks$", r"layers.\1.attn.attn_sink"),
    (_L + r"self_attn\.compressor\.indexer\.q_b_proj\.weight$", r"layers.\1.attn.indexer.wq_b.weight"),
    (_L + r"self_attn\.compressor\.indexer\.kv_proj\.weight$", r"layers.\1.attn.indexer.compressor.wkv.weight"),
    (_L + r"self_attn\.compressor\.indexer\.gate_proj\.weight$", r"layers.\1.attn.indexer.compressor.wgate.weight"),
    (_L + r"self_attn\.compressor\.indexer\.position_bias$", r"layers.\1.attn.indexer.compressor.ape"),
    (_L + r"self_attn\.compressor\.indexer\.kv_norm\.weight$", r"layers.\1.attn.indexer.compressor.norm.weight"),
    (_L + r"self_attn\.compressor\.indexer\.scorer\.weights_proj\.weight$", r"layers.\1.attn.indexer.weights_proj.weight"),
    (_L + r"self_attn\.compressor\.kv_proj\.weight$", r"layers.\1.attn.compressor.wkv.weight"),
    (_L + r"self_attn\.compressor\.gate_proj\.weight$", r"layers.\1.attn.compressor.wgate.weight"),
    (_L + r"self_attn\.compressor\.position_bias$", r"layers.\1.attn.compressor.ape"),
    (_L + r"self_attn\.compressor\.kv_norm\.weight$", r"layers.\1.attn.compressor.norm.weight"),
    (_L + r"mlp\.gate\.weight$", r"layers.\1.ffn.gate.weight"),
    (_L + r"mlp\.gate\.e_score_correction_bias$", r"layers.\1.ffn.gate.bias"),
    (_L + r"mlp\.gate\.tid2eid$", r"layers.\1.ffn.gate.tid2eid"),
    (_L + r"mlp\.shared_experts\.gate_proj\.weight$", r"layers.\1.ffn.shared_experts.w1.weight"),
    (_L + r"mlp\.shared_experts\.up_proj\.weight$", r"layers.\1.ffn.shared_experts.w3.weight"),
    (_L + r"mlp\.shared_experts\.down_proj\.weight$", r"layers.\1.ffn.shared_experts.w2.weight"),
]
_EXPERTS = re.compile(_L + r"mlp\.experts\.(gate_up_proj|down_proj)$")

# Release dtypes: F32 for mHC params, sinks, compressor ape and the router bias; I64 for tid2eid.
_F32_RELEASE = re.compile(r"(^hc_head_|\.hc_(attn|ffn)_|\.attn_sink$|\.ape$|\.gate\.bias$)")


def release_dtype(release_name):
    if release_name.endswith(".tid2eid"):
        return "I64"
    return "F32" if _F32_RELEASE.search(release_name) else "BF16"


def hf_keeps_fp32(hf_name):
    """True for the transformers tensors the release stores as F32 (never rounded to bf16)."""
    return bool(re.search(r"(\.attn_hc\.|\.ffn_hc\.|\.hc_head\.|\.sinks$|\.position_bias$|"
                          r"\.e_score_correction_bias$)", hf_name))


def hf_to_release(hf_name, tensor):
    """Returns [(release_name, tensor)] for one transformers state_dict entry."""
    m = _EXPERTS.match(hf_name)
    if m:
        layer, which = m.group(1), m.group(2)
        out = []
        for e in range(tensor.shape[0]):
            p = f"layers.{layer}.ffn.experts.{e}."
            if which == "gate_up_proj":
                inter = tensor.shape[1] // 2
                out.append((p + "w1.weight", tensor[e, :inter]))
                out.append((p + "w3.weight", tensor[e, inter:]))
            else:
                out.append((p + "w2.weight", tensor[e]))
        return out
    for pattern, repl in NAME_RULES:
        if re.match(pattern, hf_name):
            return [(re.sub(pattern, repl, hf_name), tensor)]
    raise KeyError(f"no release name for transformers tensor {hf_name}")


def release_to_hf(hf_state_shapes, release_tensors):
    """Rebuilds a transformers state dict (float32 / int64) from release tensors, by running the
    forward mapping over the names of `hf_state_shapes` (name -> shape) and gathering."""
    import torch

    out = {}
    used = set()
    for hf_name, shape in hf_state_shapes.items():
        m = _EXPERTS.match(hf_name)
        if m:
            layer, which = m.group(1), m.group(2)
            rows = []
            for e in range(shape[0]):
                p = f"layers.{layer}.ffn.experts.{e}."
                names = [p + "w1.weight", p + "w3.weight"] if which == "gate_up_proj" else [p + "w2.weight"]
                used.update(names)
                rows.append(torch.cat([release_tensors[n].float() for n in names], dim=0))
            out[hf_name] = torch.stack(rows)
        else:
            (rel_name, _), = hf_to_release(hf_name, None)
            used.add(rel_name)
            t = release_tensors[rel_name]
            out[hf_name] = t if t.dtype == torch.int64 else t.float()
        if tuple(out[hf_name].shape) != tuple(shape):
            raise ValueError(f"{hf_name}: shape {tuple(out[hf_name].shape)} != {tuple(shape)}")
    unused = set(release_tensors) - used
    if unused:
        raise ValueError(f"release tensors not used by the model: {sorted(unused)[:8]}")
    return out


def draw(hf_name, shape, spec, gen):
    """One re-drawn tensor for a transformers state_dict entry (float32, or int64 for tid2eid)."""
    import torch

    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float32)

    def uniform(lo, hi, *s):
        return lo + (hi - lo) * torch.rand(*s, generator=gen, dtype=torch.float32)

    if hf_name.endswith("tid2eid"):
        rows = [torch.randperm(spec["experts"], generator=gen)[: shape[1]] for _ in range(shape[0])]
        return torch.stack(rows).to(torch.int64)
    if hf_name == "model.embed_tokens.weight":
        w = randn(*shape)
        outliers = torch.randperm(shape[1], generator=gen)[:4]
        w[:, outliers] *= uniform(4.0, 8.0, 4)
        return w
    if re.search(r"(\.attn_hc\.fn|\.ffn_hc\.fn|\.hc_head\.hc_fn)$", hf_name):
        return randn(*shape) / math.sqrt(shape[1])
    if re.search(r"(\.attn_hc\.base|\.ffn_hc\.base|\.hc_head\.hc_base)$", hf_name):
        return randn(*shape)
    if re.search(r"(\.attn_hc\.scale|\.ffn_hc\.scale|\.hc_head\.hc_scale)$", hf_name):
        return uniform(0.1, 1.0, *shape)
    if hf_name.endswith(".sinks"):
        return randn(*shape)
    if hf_name.endswith(".position_bias"):
        return 0.5 * randn(*shape)
    if hf_name.endswith(".e_score_correction_bias"):
        return 0.1 * randn(*shape)
    if hf_name.endswith("experts.gate_up_proj") or hf_name.endswith("experts.down_proj"):
        return randn(*shape) / math.sqrt(shape[2])
    if hf_name.endswith(".weight") and len(shape) == 1:
        if "norm" not in hf_name:
            raise KeyError(f"unexpected 1-D weight {hf_name}")
        return 1.0 + 0.1 * randn(*shape)
    if hf_name.endswith(".weight") and len(shape) == 2:
        return randn(*shape) / math.sqrt(shape[1])
    raise KeyError(f"no draw rule for {hf_name} {tuple(shape)}")


_ST_DTYPES = {"BF16": "bfloat16", "F32": "float32", "I64": "int64"}


def write_safetensors(path, tensors):
    """tensors: release name -> torch tensor already in its release dtype. Uses the safetensors
    package when present, else writes the format by hand (u64 LE header size, JSON, raw data)."""
    import torch

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        from safetensors.torch import save_file
    except ImportError:
        save_file = None
    if save_file is not None:
        save_file(tensors, str(path), metadata={"format": "pt"})
        return "safetensors " + __import__("safetensors").__version__
    names = {torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return "hand-written writer"


def read_safetensors(path):
    """Minimal reader: release name -> (dtype string, torch tensor)."""
    import torch

    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dt = getattr(torch, _ST_DTYPES[info["dtype"]])
        t = torch.frombuffer(bytearray(data[base + begin:base + end]), dtype=dt).reshape(info["shape"])
        out[name] = (info["dtype"], t)
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()
