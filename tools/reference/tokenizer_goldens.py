#!/usr/bin/env python3
"""Token-id goldens from Hugging Face `tokenizers` for the DeepSeek V4 tokenizer.

Usage: tokenizer_goldens.py TOKENIZER_DIR OUT.json
TOKENIZER_DIR holds the tokenizer.json built by tools/tokenizer/make_v4_tokenizer.js. Writes
{"tokenizers_version", "cases": [{"text"| "bytes_hex", "ids", ["decoded"]}]} for a few thousand
deterministic strings: English, code, CJK, emoji, numbers of every length, whitespace runs,
mixed scripts, added/special tokens inside text, and invalid UTF-8. Invalid byte strings are
turned into text with bytes.decode("utf-8", errors="replace") before encoding (each maximal
ill-formed subpart becomes U+FFFD), which is the policy clawmine's encoder implements.
"""
import json
import random
import sys

import tokenizers

WORDS = ("the quick brown fox jumps over lazy dog Hello World DeepSeek inference tensor don't it's "
         "we're I'll THE Über naïve café internationalization a I x").split()
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
        "const x = {\"key\": [1, 2, 3]};", "#include <vector>\nint main() { return 0; }",
        "    if (a != b && c >= d) { throw std::runtime_error(\"bad\"); }", "x+=1;y-=2;z*=3",
        "<div class=\"a\">text</div>", "```python\nprint('hi')\n```", "$ ls -la | grep -v ^d"]
CJK = ["你好世界", "深度求索", "机器学习模型", "日本語のテキスト", "カタカナ", "ひらがな", "한국어", "中文，标点。",
       "「引用」", "数字123和字母abc混合", "龥龤"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "❤️", "🔥🔥", "🤖"]
OTHER = ["Привет мир", "Γειά σου", "مرحبا", "שלום", "नमस्ते", "สวัสดี", "ÅÄÖ", "ﬁ", "e\u0301", "\u00a0", "Ⅷ ½ ²",
         "٣٤٥", "\u2028", "\u200b", "\ufeff"]
SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>",
           "｜DSML｜", "<｜DSML｜invoke name=\"x\">", "<｜latest_reminder｜>", "<tool_result>", "<|EOT|>",
           "<｜place▁holder▁no▁7｜>", "<|place_holder_mm_span_0021|>", "<dsml:", "<｜User", "<thin", "<｜image｜>"]
SPACE = [" ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \n ", "    \n", "\n   ", "\u3000", "        ", "\r", "\v\f"]


def mixed(r):
    out = []
    for _ in range(r.randint(1, 10)):
        k = r.random()
        pool = (WORDS if k < 0.3 else CODE if k < 0.4 else CJK if k < 0.5 else EMOJI if k < 0.55
                else OTHER if k < 0.65 else SPECIAL if k < 0.75 else None)
        if pool is None:
            out.append("".join(str(r.randint(0, 9)) for _ in range(r.randint(1, 12))))
        else:
            out.append(r.choice(pool))
        out.append(r.choice(SPACE + [" ", " ", "", ",", "."]))
    return "".join(out)


def cases():
    r = random.Random(6)
    texts = ["", " ", "a", "Hello, world!", "1", "12", "123", "1234"]
    texts += ["".join(str((i * 7 + k) % 10) for k in range(n)) for n in range(1, 41) for i in range(2)]
    texts += [w * n for w in [" ", "\n", "\t", " \n", "a", "ab", "你"] for n in (1, 2, 3, 5, 8, 17, 64)]
    texts += WORDS + CODE + CJK + EMOJI + OTHER + SPECIAL
    texts += [a + b for a in SPECIAL[:8] for b in ["x", " x", "\n", "你好", "123"]]
    texts += [mixed(r) for _ in range(2500)]
    texts += ["".join(chr(r.choice([r.randint(0x20, 0x7e), r.randint(0xa0, 0x2ff), r.randint(0x4e00, 0x9fa5),
                                    r.randint(0x3040, 0x30ff), r.randint(0x1f300, 0x1f64f)]))
                      for _ in range(r.randint(1, 30))) for _ in range(500)]
    for t in texts:
        yield {"text": t}, t
    invalid = [b"\xff", b"\xc3", b"abc\x80def", b"\xe2\x82", b"\xe2\x82x", b"\xf0\x9f\x98", b"\xed\xa0\x80",
               b"\xc0\xaf", b"\xf4\x90\x80\x80", b"ok\xe4\xbd\xa0\xe5\xa5", b"\xfe\xfe<think>\xff"]
    invalid += [bytes(r.randint(0, 255) for _ in range(r.randint(1, 24))) for _ in range(100)]
    for b in invalid:
        yield {"bytes_hex": b.hex()}, b.decode("utf-8", errors="replace")


def main():
    tok = tokenizers.Tokenizer.from_file(f"{sys.argv[1]}/tokenizer.json")
    rows = []
    for row, text in cases():
        ids = tok.encode(text, add_special_tokens=False).ids
        row["ids"] = ids
        if "bytes_hex" in row:
            row["decoded"] = tok.decode(ids, skip_special_tokens=False)
        rows.append(row)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump({"tokenizers_version": tokenizers.__version__, "cases": rows}, f, ensure_ascii=False,
                  separators=(",", ":"))


if __name__ == "__main__":
    main()
