// What one decoder layer's sub-steps share while a chunk runs through it. Internal to the
// forward pass (model.cpp, attention.cpp, compressor.cpp, moe.cpp). Every tensor here lives in
// the backend's memory; the only host values are the chunk's first position and its length,
// from which every row count (window rows, entries, windows completed) follows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/deepseek_v4/cache.h"
#include "model/deepseek_v4/config.h"
#include "model/deepseek_v4/model.h"
#include "model/deepseek_v4/weights.h"
#include "ops/backend.h"

namespace clawmine::model::deepseek_v4 {

struct LayerContext {
  ops::Backend& be;
  const ModelConfig& cfg;
  const LayerWeights& w;  // on the backend's device
  int layer = 0;
  AttentionKind kind = AttentionKind::kSliding;
  const TensorView& inv_freq;   // [rope_dim/2] F32: the layer's RoPE table
  const TensorView& positions;  // [T] I32: absolute positions p0 .. p0+T-1 of the chunk
  const TensorView& ids;        // [T] I32: token ids (hash routing)
  int64_t p0 = 0;               // positions[0], known on the host: sizes only (ops read positions)
  const ForwardOptions& options;

  // [shape] scratch in the backend's activation dtype.
  TensorView act(const Shape& shape) const { return be.scratch(be.act_dtype(), shape); }
  // "layers.N.<part>": the diagnostics scope of a sub-step (ops::Backend::set_scope).
  std::string scope(const char* part) const { return "layers." + std::to_string(layer) + "." + part; }
};

// A compressor's shape: window rate m, CSA overlap (two halves, 2m slots), entry width hd, and
// the round trip applied to its entries.
struct CompressorSpec {
  int64_t rate = 0;
  bool overlap = false;
  int64_t head_dim = 0;
  ops::Qdq qdq = ops::Qdq::kNone;
};

// Attention sub-layer: h [T, D] -> out [T, D] (scratch); reads and extends cache.
TensorView attention(const LayerContext& c, const TensorView& h, LayerCache& cache);

// Attention for a decode step of B sequences, one token each (Model::forward_batch): h [B, D]
// row b is sequence b's token at position p0[b] (c.positions[b]), caches[b] its layer cache.
// The projections, norms and RoPE run on all B rows at once; the cache reads and writes (window,
// compressors, key lists, the indexer's top-k) and the attention itself run per sequence, each
// on its own one-token context, as attention() would run them for that sequence alone.
TensorView attention_batch(const LayerContext& c, const TensorView& h, const std::vector<LayerCache*>& caches,
                           const std::vector<int64_t>& p0);

// Consumes the chunk h [T, D] into a compressor; the entries of windows completed in the chunk
// are written to st.entries rows [p0/m, (p0+T)/m) (capacity reserved by the caller).
void compressor_step(const LayerContext& c, const TensorView& h, const CompressorWeights& w,
                     const CompressorSpec& spec, CompressorCache& st);
// compressor_step in its two parts. compressor_project: kv and gate logits of every row of h,
// [2, T, width] F32 scratch (row-wise: the rows may be different sequences' tokens);
// compressor_rows(kv_gate, part, begin, end): rows [begin, end) of part 0 (kv) or 1 (gate);
// compressor_store: one sequence's chunk (kv, gate [T, width] at c.positions) into st.
TensorView compressor_project(const LayerContext& c, const TensorView& h, const CompressorWeights& w,
                              const CompressorSpec& spec);
TensorView compressor_rows(const TensorView& kv_gate, int64_t part, int64_t begin, int64_t end);
void compressor_store(const LayerContext& c, const TensorView& kv, const TensorView& gate, const CompressorWeights& w,
                      const CompressorSpec& spec, CompressorCache& st);

// Chunks of at most this many tokens (decode) run independent op chains of a sub-layer on
// backend branches (ops::Backend::branch): attention's keys, compressors and queries, the shared
// expert beside the routed ones. Larger chunks run in order (no scratch reuse inside a
// branch region would cost prefill too much memory).
constexpr int64_t kBranchMaxTokens = 16;

// Lightning indexer (CSA), in four parts that attention() runs on its branches:
// indexer_keys feeds the chunk h to the indexer's own compressor; indexer_weights writes the head
// weights [T, Hi] from h; indexer_queries writes the indexer queries q [T, Hi, Di] (rotated,
// round-tripped in official mode) from the shared latent qr; indexer_select then returns the
// selected compressed-entry ids [T, k] I32 (-1 = none) in scratch, or an empty view when no entry
// exists.
void indexer_keys(const LayerContext& c, const TensorView& h, LayerCache& cache);
void indexer_weights(const LayerContext& c, const TensorView& h, const TensorView& weights);
void indexer_queries(const LayerContext& c, const TensorView& qr, const TensorView& q);
TensorView indexer_select(const LayerContext& c, const TensorView& q, const TensorView& weights, LayerCache& cache);
// Whether a CSA layer's chunk needs the indexer: false while its top-k would select every entry
// (the indexer store's rows <= index_topk; ForwardOptions::indexer_always), or for other layers.
bool needs_indexer(const LayerContext& c, const LayerCache& cache);

// MoE sub-layer: h [T, D] -> routed + shared [T, D] (scratch). The sum is left to the op that
// consumes it (hc_post_pre's y_add adds them as add() would), so the two branches join there.
struct MoeOut {
  TensorView routed, shared;
};
MoeOut moe(const LayerContext& c, const TensorView& h);

// Allocates the cache's fixed-size rows on the first forward and grows the entry stores so
// that they hold every entry complete at position end (rows end / m).
void reserve_cache(ops::Backend& be, const ModelConfig& cfg, SequenceCache& cache, int64_t end);

}  // namespace clawmine::model::deepseek_v4
