# Copies a tiny BF16 release-format model with its MoE intermediate size widened (fresh expert
# weights, N(0, 1/in_features), rounded to bf16), for layouts the tiny models cannot hold as is:
# MXFP4 needs in_features % 32 == 0 and the tiny models' down projections have in = 16.
# Pure Python (no numpy/torch), so make_quant_fixtures.sh runs it on the build machine.
#   python3 tools/reference/widen_experts.py IN_DIR OUT_DIR --inter 32 --seed 4242
import argparse
import json
import pathlib
import random
import re
import shutil
import struct

EXPERT = re.compile(r"^layers\.\d+\.ffn\.(experts\.\d+|shared_experts)\.(w1|w2|w3)\.weight$")


def read_safetensors(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    return {k: (v["dtype"], v["shape"], data[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
            for k, v in header.items()}, meta


def write_safetensors(path, tensors, meta):
    header, blobs, offset = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def bf16_bytes(values):
    out = bytearray()
    for v in values:
        (u,) = struct.unpack("<I", struct.pack("<f", v))
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
        out += struct.pack("<H", u & 0xFFFF)
    return bytes(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--inter", type=int, default=32)
    ap.add_argument("--seed", type=int, default=4242)
    a = ap.parse_args()
    src, dst = pathlib.Path(a.src), pathlib.Path(a.dst)
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    dim = cfg["hidden_size"]
    tensors, meta = read_safetensors(src / "model.safetensors")
    rng = random.Random(a.seed)
    for name in sorted(tensors):
        m = EXPERT.match(name)
        if not m:
            continue
        shape = [dim, a.inter] if m.group(2) == "w2" else [a.inter, dim]
        std = shape[1] ** -0.5
        tensors[name] = ("BF16", shape, bf16_bytes(rng.gauss(0.0, std) for _ in range(shape[0] * shape[1])))
    write_safetensors(dst / "model.safetensors", tensors, meta)
    cfg["moe_intermediate_size"] = a.inter
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)


if __name__ == "__main__":
    main()
