#!/usr/bin/env python3
"""Trains the demo model's tiny byte-level BPE tokenizer (exactly 512 ids) and writes
tokenizer.json + tokenizer_config.json in the HF `tokenizers` format, with the DeepSeek
pre-tokenizer/decoder structure and the V4 chat-encoding special tokens (spec deepseek-v4.md §5.1).
Pure Python 3 standard library. Usage: make_tiny_tokenizer.py OUT_DIR TEXT_FILE...
(the committed files came from: tests/fixtures/models/tiny-a /work/shared/specs/*.md docs/*.md)"""

import collections
import json
import os
import re
import sys

kVocabSize = 512
kLeadingSpecials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
# Tokens the V4 chat encoding and output parser use (encoding_dsv4.py), as added special tokens.
kTrailingSpecials = [
    "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜", "<｜latest_reminder｜>",
    "<｜action｜>", "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜title｜>", "<｜read_url｜>",
    "<｜task｜>", "<｜answer｜>", "<｜search｜>", "<dsml:",
]

from deepseek_tokenizer_sections import DECODER, NORMALIZER, POST_PROCESSOR, PRE_TOKENIZER  # noqa: E402

# Training-time approximation of the split regex with Python's `re` (no \p classes): numbers of
# up to 3 digits, letter runs with an optional leading non-letter, punctuation runs, whitespace.
kTrainSplit = re.compile(
    r"\d{1,3}|[!-/:-@\[-`{-~][A-Za-z]+|[^\r\n\w]?[^\W\d_]+| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+|_+")


def bytes_to_unicode():
    """GPT-2's reversible byte → printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def train(text, n_merges, byte_map):
    words = collections.Counter(kTrainSplit.findall(text))
    seqs = {w: [byte_map[b] for b in w.encode("utf-8")] for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, count in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # ties: deterministic
        merges.append(best)
        joined = best[0] + best[1]
        for w in words:
            s = seqs[w]
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == best[0] and s[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def added_token(id_, content):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: make_tiny_tokenizer.py OUT_DIR TEXT_FILE...")
    out_dir = sys.argv[1]
    text = "".join(open(p, encoding="utf-8").read() for p in sorted(sys.argv[2:]))
    byte_map = bytes_to_unicode()

    vocab = {}
    for s in kLeadingSpecials:
        vocab[s] = len(vocab)
    for b in sorted(byte_map, key=lambda b: ord(byte_map[b])):  # GPT-2 order, as the real vocab
        vocab[byte_map[b]] = len(vocab)
    n_merges = kVocabSize - len(kTrailingSpecials) - len(vocab)
    merges = train(text, n_merges, byte_map)
    if len(merges) != n_merges:
        sys.exit(f"training text too small: {len(merges)} merges, need {n_merges}")
    for a, b in merges:
        vocab[a + b] = len(vocab)

    added = [added_token(i, s) for i, s in enumerate(kLeadingSpecials)]
    added += [added_token(len(vocab) + i, s) for i, s in enumerate(kTrailingSpecials)]
    assert len(vocab) + len(kTrailingSpecials) == kVocabSize

    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": NORMALIZER, "pre_tokenizer": PRE_TOKENIZER, "post_processor": POST_PROCESSOR,
        "decoder": DECODER,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }
    config = {
        "add_bos_token": False, "add_eos_token": False,
        "bos_token": kLeadingSpecials[0], "eos_token": kLeadingSpecials[1], "pad_token": kLeadingSpecials[1],
        "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"{out_dir}: {kVocabSize} ids ({len(merges)} merges, {len(kTrailingSpecials)} trailing specials)")


if __name__ == "__main__":
    main()
