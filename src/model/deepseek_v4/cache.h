// Per-sequence decoding state (spec §4.2-4.3), in the memory of the backend that runs the
// sequence: for each layer the raw sliding-window KV of the last W-1 tokens, and for compressed
// layers the compressed entries plus the compressor's carried state (ops::CompressorStateView:
// the incomplete current window, and for CSA the previous window's first halves). CSA layers
// also keep the indexer's compressed keys and its compressor state. Every row count follows
// from `position`, so nothing else is stored. Any chunking of a prompt (one pass, N tokens at a
// time, token by token) leaves the same state, so prefill then decode equals one full pass.
//
// Memory comes lazily from the backend of the first Model::forward (one cache serves one
// backend) and is released with the cache: that backend must outlive it.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/backend.h"

namespace clawmine::model::deepseek_v4 {

// One compressor (the main KV compressor or the indexer's), rate m, entry width hd, c = 2 for
// CSA (overlap) else 1.
struct CompressorCache {
  ops::DeviceBuffer pending_kv;    // [m, c*hd] F32: row p % m = position p of the current window
  ops::DeviceBuffer pending_gate;  // [m, c*hd] F32: gate logits, position bias included
  ops::DeviceBuffer overlap_kv;    // CSA: [m, hd] F32 first halves of the last complete window
  ops::DeviceBuffer overlap_gate;  // CSA: [m, hd] F32
  // [capacity, hd] act dtype: row j = entry of window j (normed, rotated at j*m, round-tripped);
  // rows [0, position / m) are complete entries, row position / m may hold the incomplete
  // window's entry so far (never attended: keys past (p+1)/m are masked), later rows are zeros.
  // Grows by doubling, from 64 rows (reserve_cache).
  ops::DeviceBuffer entries;

  ops::CompressorStateView state() const {
    return {pending_kv.view(), pending_gate.view(), overlap_kv.view(), overlap_gate.view()};
  }
  int64_t capacity() const { return entries.view().empty() ? 0 : entries.view().dim(0); }
};

struct LayerCache {
  // [W-1, Dh] act dtype, right-aligned: row W-2-i holds the raw key of position `position`-1-i
  // (i < min(W-1, position)); rows of positions before 0 are zeros.
  ops::DeviceBuffer window;
  CompressorCache compressor;  // CSA and HCA layers
  CompressorCache indexer;     // CSA layers: entries are the indexer keys
};

struct SequenceCache {
  int64_t position = 0;  // tokens consumed so far = absolute position of the next token
  std::vector<LayerCache> layers;
  ops::Backend* backend = nullptr;  // set by the first forward, which allocates the rows
  // Changes (to a value never used before, by any cache) whenever reserve_cache allocates: the
  // buffers' addresses and sizes are part of a decode step's graph key.
  uint64_t layout_id = 0;
  // The last recorded decode step: its graph key and where its logits land (scratch addresses
  // repeat for equal steps), so a replay needs no op calls to find them.
  uint64_t step_key = 0;
  uint64_t seen_key = 0;  // the key of the owner's last step that could be recorded (run_step)
  TensorView step_logits;
  TensorView step_tokens;  // a greedy step's argmax (Model::forward_greedy), else empty
};

}  // namespace clawmine::model::deepseek_v4
