#!/usr/bin/env python3
"""Trains the embedded demo model (docs/DEMO_MODEL.md) on the GPU machine in one call:
1. a byte-level BPE tokenizer (HF `tokenizers`, ~8K ids) with DeepSeek's exact pre-tokenizer and
   the V4 special tokens (BOS id 0, EOS id 1);
2. a small DeepseekV4ForCausalLM (transformers 5.17) with every V4 feature: sliding, CSA and HCA
   layers, hash and routed MoE (aux-free bias balancing), mHC; bf16 autocast + AdamW, step count set
   from a time budget after measuring throughput;
3. writes the release layout (names/dtypes of tools/reference/dsv4_tiny.py) + tokenizer files,
   reloads the written BF16 weights into a float32 eager model, computes perplexity (method below)
   and greedy chat samples, and packs everything into OUT/demo.tar.gz (split into <= 15 MB parts).

Perplexity (clawmine perplexity computes the same): ids = [BOS] + encode(file text); windows of
`ctx` ids start at 0, stride, 2*stride, ... until one reaches the end; each window is a fresh
forward from position 0; a window scores the targets t in [max(prev_end, begin + 1), end) with
the log-softmax of the logits at t - 1 (float32); prev_end starts at 1; ppl = exp(sum nll / count).

Usage: train_demo.py --corpus .demo-corpus --out $OUT [--smoke] [--budget-s 560]"""

import argparse
import json
import math
import os
import pathlib
import random
import re
import subprocess
import sys
import time

T0 = time.time()
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tools" / "reference"))

import dsv4_tiny as T  # noqa: E402  (name mapping, release config, safetensors writer)

SPECIALS = [
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>",
    "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜", "<｜latest_reminder｜>",
    "<｜action｜>", "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜title｜>", "<｜read_url｜>",
    "<｜task｜>", "<｜answer｜>", "<｜search｜>", "<dsml:",
]
BOS_ID, EOS_ID = 0, 1

from deepseek_tokenizer_sections import DECODER, NORMALIZER, POST_PROCESSOR, PRE_TOKENIZER  # noqa: E402
TOKENIZER_CONFIG = {
    "add_bos_token": False, "add_eos_token": False,
    "bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "pad_token": SPECIALS[1],
    "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 16384,
    "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
}

# Model: S = sliding, C = CSA (rate 4 + indexer), H = HCA (rate 16). Hash MoE on the first 2 layers.
SPEC = dict(name="demo", seed=10, layers="SCHCHC", hca_rate=16, window=64, experts=16, topk=4, inter=128,
            num_hash=2, index_topk=64, swiglu=10.0, route_scale=1.5, yarn_factor=4.0, yarn_orig=4096)
DIMS = dict(VOCAB=8192, HIDDEN=256, HEADS=4, HEAD_DIM=64, ROPE_DIM=16, Q_LORA=128, O_GROUPS=2, O_LORA=64,
            INDEX_HEADS=16, INDEX_HEAD_DIM=32, CSA_RATE=4, HC_MULT=4)
SEQ = 512
EVAL_CTX, EVAL_STRIDE = 512, 256
CHAT_PROMPTS = ["What is Debian?", "How do I install a package?", "Tell me a joke.",
                "What is a Python list?", "Why is the server down?", "What does hacker mean?"]


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


# ---------------------------------------------------------------- corpus and tokenizer
def load_corpus(corpus, smoke):
    plain = [json.loads(l)["text"] for l in open(os.path.join(corpus, "plain.jsonl"), encoding="utf-8")]
    chat = [json.loads(l)["text"] for l in open(os.path.join(corpus, "chat.jsonl"), encoding="utf-8")]
    if smoke:
        plain, chat = plain[::25], chat[::25]
    return plain, chat


def train_tokenizer(plain, chat, vocab_size):
    from tokenizers import Tokenizer, trainers, pre_tokenizers

    skeleton = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": NORMALIZER, "pre_tokenizer": PRE_TOKENIZER, "post_processor": POST_PROCESSOR,
        "decoder": DECODER,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {}, "merges": []},
    }
    tok = Tokenizer.from_str(json.dumps(skeleton))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    specials = re.compile("|".join(re.escape(s) for s in SPECIALS))
    texts = plain + [specials.sub("", c) for c in chat]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    data = json.loads(tok.to_str())
    data["normalizer"], data["pre_tokenizer"] = NORMALIZER, PRE_TOKENIZER
    data["post_processor"], data["decoder"] = POST_PROCESSOR, DECODER
    final = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    for i, s in enumerate(SPECIALS):
        assert final.token_to_id(s) == i, (s, final.token_to_id(s))
    probe = "Hello, World! 12345 <｜User｜>hi<｜Assistant｜></think>ok<｜end▁of▁sentence｜>\n\n  x"
    assert final.encode(probe).ids == tok.encode(probe).ids
    assert final.decode(final.encode(probe).ids, skip_special_tokens=False) == probe
    return final, data


def encode_docs(tok, plain, chat):
    import numpy as np

    out = []
    for batch_start in range(0, len(plain), 512):
        for enc in tok.encode_batch(plain[batch_start:batch_start + 512], add_special_tokens=False):
            out.append(np.array([BOS_ID] + enc.ids + [EOS_ID], dtype=np.int64))
    n_plain = len(out)
    for batch_start in range(0, len(chat), 512):
        for enc in tok.encode_batch(chat[batch_start:batch_start + 512], add_special_tokens=False):
            out.append(np.array(enc.ids, dtype=np.int64))
    return out, n_plain


def epoch_stream(docs, n_plain, rng):
    """One epoch: every plain document once and every chat sample twice, shuffled, concatenated."""
    import numpy as np

    order = list(range(len(docs))) + list(range(n_plain, len(docs)))
    rng.shuffle(order)
    stream = np.concatenate([docs[i] for i in order])
    n = len(stream) // SEQ
    return stream[: n * SEQ].reshape(n, SEQ)


# ---------------------------------------------------------------- model
def set_dims():
    for k, v in DIMS.items():
        setattr(T, k, v)


def build_config():
    from transformers import DeepseekV4Config

    base = T.hf_config_kwargs(SPEC)
    yarn = T.rope_scaling(SPEC)
    errors = []
    for extra in (dict(rope_scaling=dict(yarn)),
                  dict(rope_parameters={"rope_type": "yarn", **{k: v for k, v in yarn.items() if k != "type"}})):
        try:
            cfg = DeepseekV4Config(**base, **extra)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            continue
        comp = cfg.rope_parameters.get("compress", {})
        if comp.get("rope_type") == "yarn" and comp.get("attention_factor") == 1.0:
            assert cfg.layer_types == T.layer_types(SPEC) and cfg.mlp_layer_types == T.mlp_layer_types(SPEC)
            return cfg
        errors.append(f"resolved compress rope {comp}")
    raise RuntimeError("no config spelling gave yarn with attention_factor 1.0: " + " | ".join(errors))


def make_model(cfg, eager_experts):
    from transformers import DeepseekV4ForCausalLM

    model = DeepseekV4ForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    if eager_experts:
        model.set_experts_implementation("eager")
    return model


def init_weights(model, gen):
    """Explicit init of every state-dict entry (training-friendly scales; the release F32 tensors
    get small non-zero values so every path carries signal)."""
    import torch

    n_layers = len(SPEC["layers"])
    out_std = 0.02 / math.sqrt(2 * n_layers)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    state = model.state_dict()
    with torch.no_grad():
        for name in state:
            t = params.get(name)
            if t is None:
                raise KeyError(f"state dict entry {name} is neither a parameter nor a buffer")
            shape = tuple(t.shape)

            def randn(std):
                return torch.randn(shape, generator=gen) * std

            if name.endswith("tid2eid"):
                rows = [torch.randperm(SPEC["experts"], generator=gen)[: shape[1]] for _ in range(shape[0])]
                new = torch.stack(rows).to(t.dtype)
            elif re.search(r"(attn_hc\.fn|ffn_hc\.fn|hc_head\.hc_fn)$", name):
                new = randn(0.02)
            elif re.search(r"(attn_hc\.base|ffn_hc\.base|hc_head\.hc_base)$", name):
                new = randn(0.1)
            elif re.search(r"(attn_hc\.scale|ffn_hc\.scale|hc_head\.hc_scale)$", name):
                new = torch.full(shape, 0.5)
            elif name.endswith((".sinks", ".position_bias", ".e_score_correction_bias")):
                new = torch.zeros(shape)
            elif name.endswith("experts.down_proj") or re.search(r"(o_b_proj|down_proj)\.weight$", name):
                new = randn(out_std)
            elif name.endswith("experts.gate_up_proj") or (name.endswith(".weight") and len(shape) == 2):
                new = randn(0.02)
            elif name.endswith(".weight") and len(shape) == 1:
                new = torch.ones(shape)
            else:
                raise KeyError(f"no init rule for {name} {shape}")
            t.copy_(new.to(t.dtype))


def release_tensors(state):
    import torch

    out = {}
    for hf_name, t in state.items():
        for rel_name, rt in T.hf_to_release(hf_name, t.detach().float().cpu() if t.is_floating_point() else t.cpu()):
            dt = T.release_dtype(rel_name)
            rt = rt.contiguous()
            rt = rt.to(torch.bfloat16) if dt == "BF16" else rt.float() if dt == "F32" else rt.to(torch.int64)
            assert rel_name not in out, rel_name
            out[rel_name] = rt.contiguous()
    return out


class Balancer:
    """DeepSeek's auxiliary-loss-free balancing: after each step, raise the routing bias of
    under-loaded experts and lower it for over-loaded ones (routed layers only)."""

    def __init__(self, model, rate):
        import torch

        self.rate, self.counts, self.gates = rate, {}, {}
        for i, layer in enumerate(model.model.layers):
            gate = layer.mlp.gate
            bias = getattr(gate, "e_score_correction_bias", None)
            if bias is None:
                continue
            self.gates[i] = gate
            self.counts[i] = torch.zeros(SPEC["experts"], device=bias.device)
            gate.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def hook(module, args, out):
            idx = out[2]
            self.counts[i] += torch_bincount(idx.reshape(-1), SPEC["experts"])
        return hook

    def step(self):
        import torch

        stats = {}
        with torch.no_grad():
            for i, gate in self.gates.items():
                c = self.counts[i]
                if c.sum() > 0:
                    gate.e_score_correction_bias.add_(self.rate * torch.sign(c.mean() - c))
                    stats[i] = float(c.max() / c.mean())
                c.zero_()
        return stats


def torch_bincount(idx, n):
    import torch

    return torch.bincount(idx.long(), minlength=n).float()


# ---------------------------------------------------------------- evaluation
def perplexity(model, ids, ctx, stride, device):
    import torch

    assert 0 < stride <= ctx
    n = len(ids)
    nll_sum, count, prev_end, begin = 0.0, 0, 1, 0
    ids_t = torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():
        while n > 1:
            end = min(begin + ctx, n)
            x = ids_t[begin:end][None].to(device)
            logits = model(input_ids=x, use_cache=False).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1)
            first = max(prev_end, begin + 1)
            t = torch.arange(first, end)
            nll = -lp[(t - 1 - begin).to(device), ids_t[t].to(device)]
            nll_sum += float(nll.double().sum())
            count += int(t.numel())
            prev_end = end
            if end == n:
                break
            begin += stride
    return {"ppl": math.exp(nll_sum / count), "nll_sum": nll_sum, "tokens_scored": count, "ids": n,
            "ctx": ctx, "stride": stride}


def chat_samples(model, tok, device):
    import torch

    out = []
    for prompt in CHAT_PROMPTS:
        text = f"{SPECIALS[0]}<｜User｜>{prompt}<｜Assistant｜></think>"
        ids = tok.encode(text).ids
        try:
            with torch.no_grad():
                gen = model.generate(torch.tensor([ids], device=device), max_new_tokens=60, do_sample=False,
                                     eos_token_id=EOS_ID, pad_token_id=EOS_ID)
            new = gen[0, len(ids):].tolist()
            out.append({"prompt": prompt, "ids": ids, "completion_ids": new,
                        "completion": tok.decode(new, skip_special_tokens=False)})
        except Exception as e:
            out.append({"prompt": prompt, "error": f"{type(e).__name__}: {e}"})
        log("chat", repr(prompt), "->", repr(out[-1].get("completion", out[-1].get("error")))[:200])
    return out


# ---------------------------------------------------------------- main
def pack(out_dir, model_dir):
    tar = os.path.join(out_dir, "demo.tar.gz")
    subprocess.run(["tar", "czf", tar, "-C", str(model_dir.parent), model_dir.name], check=True)
    for old in pathlib.Path(out_dir).glob("demo.tar.gz.part-*"):
        old.unlink()
    subprocess.run(["split", "-b", "15m", "-d", tar, tar + ".part-"], check=True)
    os.unlink(tar)
    for name in ("eval.json", "loss_curve.json", "train_info.json"):
        if (model_dir / name).exists():
            subprocess.run(["cp", str(model_dir / name), out_dir], check=True)
    log("packed", sorted(p.name for p in pathlib.Path(out_dir).glob("demo.tar.gz.part-*")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=".demo-corpus")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/demo-out"))
    ap.add_argument("--work", default="/tmp/demo-work", help="where the model folder is assembled")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--budget-s", type=float, default=560.0, help="whole-script wall-clock budget")
    ap.add_argument("--reserve-s", type=float, default=110.0, help="kept for saving and evaluation")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--extra-eval", nargs="*", default=["tests/fixtures/demo/heldout_sample.txt"])
    args = ap.parse_args()
    if args.smoke:
        args.budget_s = min(args.budget_s, 75.0)
        args.reserve_s = min(args.reserve_s, 35.0)

    import numpy as np
    import torch
    import transformers

    set_dims()
    torch.manual_seed(SPEC["seed"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log("torch", torch.__version__, "transformers", transformers.__version__, "device", device,
        torch.cuda.get_device_name(0) if device == "cuda" else "")
    out_dir = pathlib.Path(args.out)
    model_dir = pathlib.Path(args.work) / "demo"
    model_dir.mkdir(parents=True, exist_ok=True)

    plain, chat = load_corpus(args.corpus, args.smoke)
    log(f"corpus: {len(plain)} plain docs, {len(chat)} chat samples")
    tok, tok_json = train_tokenizer(plain, chat, DIMS["VOCAB"])
    vocab = tok.get_vocab_size()
    log("tokenizer vocab", vocab)
    if vocab != DIMS["VOCAB"]:
        log(f"warning: tokenizer has {vocab} ids; model vocab stays {DIMS['VOCAB']}")
    with open(model_dir / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(model_dir / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(TOKENIZER_CONFIG, f, ensure_ascii=False, indent=2)
        f.write("\n")
    docs, n_plain = encode_docs(tok, plain, chat)
    n_tokens = int(sum(len(d) for d in docs))
    log(f"encoded: {n_tokens} tokens ({sum(len(d) for d in docs[:n_plain])} plain)")

    cfg = build_config()
    model = make_model(cfg, eager_experts=False)
    init_weights(model, torch.Generator().manual_seed(SPEC["seed"]))
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, experts impl "
        f"{getattr(model, 'get_experts_implementation', lambda: '?')()}")
    balancer = Balancer(model, rate=1e-3)
    for name, p in model.named_parameters():
        if name.endswith("e_score_correction_bias") or name.endswith("tid2eid"):
            p.requires_grad_(False)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "hc" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim < 2 or "hc" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda")

    rng = random.Random(SPEC["seed"])
    deadline = T0 + args.budget_s - args.reserve_s
    warmup, total_steps, step, epoch = 60, None, 0, 0
    losses, balance = [], []
    batches = epoch_stream(docs, n_plain, rng)
    perm, pos = np.random.default_rng(SPEC["seed"]).permutation(len(batches)), 0
    t_measure = None
    log(f"training until {deadline - T0:.0f}s; {len(batches)} sequences of {SEQ} per epoch")
    while True:
        now = time.time()
        if step == 10:
            t_measure = now
        if step == 40 and total_steps is None:
            per_step = (now - t_measure) / 30
            total_steps = max(50, int(40 + (deadline - now) / per_step))
            log(f"{per_step * 1000:.0f} ms/step, {args.batch * SEQ / per_step:.0f} tokens/s -> {total_steps} steps")
        if (total_steps is not None and step >= total_steps) or now > deadline:
            break
        if pos + args.batch > len(perm):
            epoch += 1
            batches = epoch_stream(docs, n_plain, rng)
            perm, pos = np.random.default_rng(SPEC["seed"] + epoch).permutation(len(batches)), 0
        x = torch.from_numpy(batches[perm[pos:pos + args.batch]]).to(device)
        pos += args.batch
        horizon = total_steps or 10 ** 9
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / horizon))))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        stats = balancer.step()
        step += 1
        if step % 10 == 0 or step == 1:
            lv = loss.item()
            if not math.isfinite(lv):
                raise RuntimeError(f"loss is {lv} at step {step}")
            losses.append({"step": step, "loss": round(lv, 4), "lr": lr, "grad_norm": round(float(gnorm), 4),
                           "tokens": step * args.batch * SEQ, "epoch": epoch})
            balance.append({"step": step, "max_over_mean_load": {str(k): round(v, 3) for k, v in stats.items()}})
            if step % 50 == 0 or step == 1:
                log(f"step {step} loss {lv:.4f} lr {lr:.2e} gnorm {float(gnorm):.2f} epoch {epoch} "
                    f"load max/mean {[round(v, 2) for v in stats.values()]}")
    train_s = time.time() - T0
    log(f"trained {step} steps, {step * args.batch * SEQ} tokens, {epoch} full epochs")

    rel_cfg = T.release_config(SPEC, transformers.__version__)
    rel_cfg["vocab_size"] = DIMS["VOCAB"]
    tensors = release_tensors(model.state_dict())
    T.write_safetensors(model_dir / "model.safetensors", tensors)
    with open(model_dir / "config.json", "w") as f:
        json.dump(rel_cfg, f, indent=2)
        f.write("\n")
    with open(model_dir / "resolved_config.json", "w") as f:
        json.dump(cfg.to_dict(), f, indent=1, default=str)
    train_info = {"spec": SPEC, "dims": DIMS, "seq_len": SEQ, "batch": args.batch, "peak_lr": args.lr,
                  "steps": step, "tokens_seen": step * args.batch * SEQ, "corpus_tokens": n_tokens,
                  "epochs_completed": epoch, "parameters": n_params, "train_wall_s": round(train_s, 1),
                  "smoke": args.smoke, "torch": torch.__version__, "transformers": transformers.__version__,
                  "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                  "balance": balance[-5:]}
    with open(model_dir / "loss_curve.json", "w") as f:
        json.dump(losses, f)
    with open(model_dir / "train_info.json", "w") as f:
        json.dump(train_info, f, indent=1)
    pack(out_dir, model_dir)

    # Evaluate the written BF16 weights in float32, eager attention and experts.
    del model, opt
    torch.cuda.empty_cache() if device == "cuda" else None
    ev = make_model(cfg, eager_experts=True).float()
    shapes = {k: tuple(v.shape) for k, v in ev.state_dict().items()}
    read = {k: t for k, (_, t) in T.read_safetensors(model_dir / "model.safetensors").items()}
    ev.load_state_dict(T.release_to_hf(shapes, read), strict=True)
    ev.to(device).eval()
    evals = {"method": __doc__.split("Perplexity")[1].split("Usage")[0].strip(), "dtype": "float32",
             "attn_implementation": "eager", "experts_implementation": "eager", "files": {}}
    torch.backends.cuda.matmul.allow_tf32 = False
    heldout = open(os.path.join(args.corpus, "heldout.txt"), encoding="utf-8").read()
    texts = {"heldout.txt (full)": heldout}
    for p in args.extra_eval:
        if os.path.exists(ROOT / p):
            texts[p] = open(ROOT / p, encoding="utf-8").read()
    for name, text in texts.items():
        ids = [BOS_ID] + tok.encode(text, add_special_tokens=False).ids
        if args.smoke:
            ids = ids[:3000]
        r = perplexity(ev, ids, EVAL_CTX, EVAL_STRIDE, device)
        evals["files"][name] = r
        log(f"perplexity {name}: {r['ppl']:.4f} over {r['tokens_scored']} tokens")
    evals["chat_samples"] = chat_samples(ev, tok, device)
    with open(model_dir / "eval.json", "w", encoding="utf-8") as f:
        json.dump(evals, f, indent=1, ensure_ascii=False)
    pack(out_dir, model_dir)
    log("done")


if __name__ == "__main__":
    main()
