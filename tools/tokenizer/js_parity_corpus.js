#!/usr/bin/env node
// Generates a deterministic mixed corpus (English, code, CJK, emoji, numbers, whitespace runs,
// mixed scripts, special tokens inside text) and encodes it with the npm package's JavaScript
// tokenizer (transformers.js port), an implementation independent of ours.
// Usage: node js_parity_corpus.js TOKENIZER_DIR OUT.json [COUNT] [SEED]
// Writes [{"text": ..., "ids": [...]}, ...].
'use strict';
const fs = require('fs');
const path = require('path');
const { TokenizerLoader } = require(path.join(__dirname, '..', 'npm', 'node_modules', '@lenml', 'tokenizers'));

function rng(seed) {  // mulberry32
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const kWords = ('the quick brown fox jumps over lazy dog Hello World tokenizer DeepSeek model inference ' +
  'attention cache kernel tensor matrix vector don\'t it\'s we\'re THE Über naïve café résumé ' +
  'internationalization pneumonoultramicroscopicsilicovolcanoconiosis a I x y z').split(' ');
const kCode = ['def f(x):\n    return x * 2\n', 'for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n',
  'const x = {"key": [1, 2, 3], \'b\': null};', '#include <vector>\nint main() { return 0; }',
  '    if (a != b && c >= d) { throw std::runtime_error("bad"); }', 'SELECT * FROM t WHERE id=42;',
  '<div class="a">text</div>', 'x+=1;y-=2;z*=3', '```python\nprint("hi")\n```', '$ ls -la /usr/bin | grep -v ^d',
  'fn main() -> Result<(), Box<dyn Error>> { Ok(()) }', '// comment\n/* block */', 'a_b_c = self.__init__()'];
const kCjk = ['你好世界', '深度求索', '机器学习模型', '日本語のテキスト', 'カタカナ', 'ひらがな', '한국어 텍스트',
  '中文，标点。', '「引用」', '（括号）', '数字123和字母abc混合', '龥龤', '〇一二三'];
const kEmoji = ['😀', '👍🏽', '👨‍👩‍👧‍👦', '🇯🇵', '❤️', '🔥🔥', '✨', '🤖'];
const kOther = ['Привет мир', 'Γειά σου', 'مرحبا بالعالم', 'שלום', 'नमस्ते', 'สวัสดี', 'Ελληνικά', 'ÅÄÖ',
  'ﬁ ligature', 'e\u0301 combining', '\u00a0nbsp', 'tab\there', 'Ⅷ ½ ²', '٣٤٥', '१२३'];
const kSpecial = ['<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', '<｜User｜>', '<｜Assistant｜>', '<think>',
  '</think>', '｜DSML｜', '<｜DSML｜invoke name="x">', '<｜latest_reminder｜>', '<tool_result>', '<|EOT|>',
  '<｜place▁holder▁no▁7｜>', '<|place_holder_mm_span_0021|>', '<｜tool▁sep｜>', '<dsml:', '<｜User', '<thin'];
const kSpace = [' ', '  ', '   ', '\n', '\n\n', '\r\n', '\t', ' \n ', '    \n', '\n   ', '\u3000', '        '];

function pick(r, a) { return a[Math.floor(r() * a.length)]; }

function number(r) {
  const len = 1 + Math.floor(r() * 14);
  let s = '';
  for (let i = 0; i < len; i++) s += String(Math.floor(r() * 10));
  return r() < 0.2 ? s + '.' + String(Math.floor(r() * 1000)) : s;
}

function randomChar(r) {
  const ranges = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x4e00, 0x9fa5],
    [0x3040, 0x30ff], [0xac00, 0xd7a3], [0x2000, 0x206f], [0x1f600, 0x1f64f], [0xff01, 0xff5e]];
  const [lo, hi] = pick(r, ranges);
  return String.fromCodePoint(lo + Math.floor(r() * (hi - lo + 1)));
}

function sample(r) {
  const parts = 1 + Math.floor(r() * 12);
  let s = '';
  for (let i = 0; i < parts; i++) {
    const k = r();
    if (k < 0.3) s += pick(r, kWords);
    else if (k < 0.4) s += pick(r, kCode);
    else if (k < 0.5) s += pick(r, kCjk);
    else if (k < 0.55) s += pick(r, kEmoji);
    else if (k < 0.62) s += pick(r, kOther);
    else if (k < 0.7) s += number(r);
    else if (k < 0.75) s += pick(r, kSpecial);
    else if (k < 0.85) { for (let n = 1 + Math.floor(r() * 6); n > 0; n--) s += randomChar(r); }
    s += pick(r, kSpace.concat([' ', ' ', ' ', '', '', ',', '.', '!']));
  }
  return s;
}

function main() {
  const [dir, out, countArg, seedArg] = process.argv.slice(2);
  if (!dir || !out) throw new Error('usage: js_parity_corpus.js TOKENIZER_DIR OUT.json [COUNT] [SEED]');
  const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')),
  });
  const r = rng(Number(seedArg || 1234));
  const count = Number(countArg || 3000);
  const rows = [];
  for (let i = 0; i < count; i++) {
    const text = sample(r);
    rows.push({ text, ids: Array.from(tok.encode(text, { add_special_tokens: false })) });
  }
  fs.writeFileSync(out, JSON.stringify(rows));
}

main();
