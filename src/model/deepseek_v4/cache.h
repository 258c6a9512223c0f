// Per-sequence decoding state (spec §4.2-4.3): for each layer the raw sliding-window KV of the
// last W-1 tokens, and for compressed layers the compressed entries plus the compressor's
// carried state (the incomplete current window, and for CSA the previous window's first
// halves). CSA layers also keep the indexer's compressed keys and its compressor state.
// Any chunking of a prompt (one pass, N tokens at a time, token by token) leaves the same
// state, so prefill then decode equals one full pass.
#pragma once

#include <cstdint>
#include <vector>

namespace clawmine::model::deepseek_v4 {

// Rows of equal width, appended at the end; row-major float32.
struct RowStore {
  int64_t width = 0;
  std::vector<float> data;

  int64_t rows() const { return width ? static_cast<int64_t>(data.size()) / width : 0; }
  const float* row(int64_t r) const { return data.data() + r * width; }
  float* row(int64_t r) { return data.data() + r * width; }
  void append(const float* src, int64_t n_rows) { data.insert(data.end(), src, src + n_rows * width); }
  void clear() { data.clear(); }
  // Keeps only the last n rows.
  void keep_last(int64_t n);
};

// State of one compressor (the main KV compressor or the indexer's).
struct CompressorState {
  RowStore pending_kv;    // [< m, c*hd] projections of the tokens of the incomplete window
  RowStore pending_gate;  // [< m, c*hd] gate logits (position bias included)
  RowStore overlap_kv;    // CSA: [m, hd] first halves of the last complete window (empty before one)
  RowStore overlap_gate;  // CSA: [m, hd]
  RowStore entries;       // [n_entries, hd] finished compressed entries (normed, rotated)
};

struct LayerCache {
  RowStore window;             // [<= W-1, Dh] raw KV of the most recent tokens
  CompressorState compressor;  // CSA and HCA layers
  CompressorState indexer;     // CSA layers: entries are the indexer keys
};

struct SequenceCache {
  int64_t position = 0;  // tokens consumed so far = absolute position of the next token
  std::vector<LayerCache> layers;
};

}  // namespace clawmine::model::deepseek_v4
