// Attention sub-layer (spec §3.3). Low-rank queries with a weightless per-head RMS norm, one
// shared K=V head, interleaved RoPE on the trailing dims; keys are the sliding window (W keys
// including the query itself) plus compressed entries (HCA: all causally available; CSA: the
// lightning indexer's top-k); softmax with a per-head sink; inverse RoPE on the output at the
// query position; grouped low-rank output projection wo_a (per group) then wo_b.
#include <algorithm>
#include <cmath>

#include "model/deepseek_v4/layer.h"

namespace clawmine::model::deepseek_v4 {
namespace {

float eps(const LayerContext& c) { return static_cast<float>(c.cfg.rms_norm_eps); }

// The indexer's round trip on its compressed keys and its queries (official mode).
ops::Qdq indexer_qdq(const LayerContext& c) {
  return c.options.official_qdq ? ops::Qdq::kHadamardFp4 : ops::Qdq::kNone;
}

int64_t compress_rate(const LayerContext& c) {
  return c.kind == AttentionKind::kCompressedSparse ? c.cfg.compress_rate_csa : c.cfg.compress_rate_hca;
}

}  // namespace

void indexer_keys(const LayerContext& c, const TensorView& h, LayerCache& cache, const TensorView& weights) {
  const ModelConfig& cfg = c.cfg;
  c.be.set_scope(c.scope("attn.indexer.compressor"));
  compressor_step(c, h, c.w.attn.indexer->compressor,
                  {cfg.compress_rate_csa, true, cfg.index_head_dim, indexer_qdq(c)}, cache.indexer);
  c.be.set_scope(c.scope("attn.indexer"));
  // Head weights [T, Hi], scaled by Di^-1/2 (the q.k scale) and Hi^-1/2 inside the scores.
  c.be.linear(h, c.w.attn.indexer->weights_proj, weights);
}

void indexer_queries(const LayerContext& c, const TensorView& qr, const TensorView& q) {
  const ModelConfig& cfg = c.cfg;
  const int64_t T = qr.dim(0), Hi = cfg.index_n_heads, Di = cfg.index_head_dim;
  c.be.set_scope(c.scope("attn.indexer"));
  // Indexer queries from the shared latent qr: [T, Hi, Di], rotated like the layer, no norm.
  c.be.linear(qr, c.w.attn.indexer->wq_b, q.reshaped({T, Hi * Di}));
  c.be.norm_rope_qdq(q, {.rope_dim = cfg.qk_rope_head_dim, .qdq = indexer_qdq(c), .n_nope = Di}, c.positions,
                     c.inv_freq);
}

TensorView indexer_select(const LayerContext& c, const TensorView& q, const TensorView& weights, LayerCache& cache) {
  const ModelConfig& cfg = c.cfg;
  const int64_t T = q.dim(0), Hi = cfg.index_n_heads, Di = cfg.index_head_dim, m = cfg.compress_rate_csa;
  c.be.set_scope(c.scope("attn.indexer"));
  const float scale = 1.0f / std::sqrt(static_cast<float>(Di)) / std::sqrt(static_cast<float>(Hi));

  // Indexer keys: every row of the entry store. Each query scores only the windows complete at
  // its position (the rest are -inf, never picked): the sizes stay the same from one decode step
  // to the next until the store grows.
  const TensorView keys = cache.indexer.entries.view();
  const int64_t N = keys.empty() ? 0 : keys.dim(0);
  const int64_t k = std::min(cfg.index_topk, N);
  if (k == 0) return {};
  const TensorView scores = c.be.scratch(DType::kF32, {T, N});
  c.be.indexer_scores(q, keys, weights, scale, c.positions, m, scores);
  const TensorView selected = c.be.scratch(DType::kI32, {T, k});
  c.be.topk(scores, k, selected);
  return selected;
}

TensorView attention(const LayerContext& c, const TensorView& h, LayerCache& cache) {
  const ModelConfig& cfg = c.cfg;
  const AttentionWeights& w = c.w.attn;
  const int64_t T = h.dim(0), H = cfg.num_attention_heads, Dh = cfg.head_dim, R = cfg.qk_rope_head_dim;
  const int64_t W = cfg.sliding_window, G = cfg.o_groups, Lo = cfg.o_lora_rank;

  // Step A: q = rope(rms(wq_b · rms(wq_a · h))) per head; kv = rope(rms(wkv · h)). At decode
  // sizes three independent chains run on three branches until the indexer scores: 1 the keys
  // (kv, the window pool, the window kept for the next chunk, and the key lists where they need
  // no top-k), 2 the compressors (and the indexer's, with its head weights), 0 the queries (q
  // and the indexer queries).
  const bool branches = T <= kBranchMaxTokens;
  auto on = [&](int b) {
    if (branches) c.be.branch(b);
  };
  const int64_t n_prev = std::min(W - 1, c.p0);
  const TensorView pool = c.act({n_prev + T, Dh});
  const TensorView qr = c.act({T, cfg.q_lora_rank});
  const TensorView q = c.act({T, H, Dh});
  const bool compressed = c.kind != AttentionKind::kSliding;
  const bool sparse = c.kind == AttentionKind::kCompressedSparse;
  const int64_t m = compressed ? compress_rate(c) : 1;
  // Compressed keys: the whole entry store (its size is known on the host); attention_index
  // lists only the entries complete at each query's position.
  const TensorView entries = compressed ? cache.compressor.entries.view() : TensorView{};
  const int64_t N = entries.empty() ? 0 : entries.dim(0);
  const TensorView iq = sparse ? c.act({T, cfg.index_n_heads, cfg.index_head_dim}) : TensorView{};
  const TensorView iw = sparse ? c.act({T, cfg.index_n_heads}) : TensorView{};

  on(1);
  // The chunk's raw keys are computed in place in the window pool (after the n_prev previous
  // rows, see below), so they need no copy into it.
  const TensorView kv = pool.slice0(n_prev, n_prev + T);
  c.be.linear(h, w.wkv, kv);
  c.be.norm_rope_qdq(kv.reshaped({T, 1, Dh}),
                     {.norm = true,
                      .norm_weight = &w.kv_norm,
                      .eps = eps(c),
                      .rope_dim = R,
                      .qdq = c.options.official_qdq ? ops::Qdq::kFp8Nope : ops::Qdq::kNone,
                      .n_nope = Dh - R},
                     c.positions, c.inv_freq);
  // Key rows: the window pool [previous window (n_prev) | this chunk (T), already there], then
  // the compressed entries in place in the cache (N rows, every window complete by the chunk's end).
  if (n_prev > 0) c.be.copy(cache.window.view().slice0(0, n_prev), pool.slice0(0, n_prev));
  // The window keeps the W-1 most recent raw keys (the tail of the pool) for the next chunk.
  const int64_t n_keep = std::min(W - 1, n_prev + T);
  if (n_keep > 0) c.be.copy(pool.slice0(n_prev + T - n_keep, n_prev + T), cache.window.view().slice0(0, n_keep));
  // Steps B/D without a top-k (sliding, HCA): per query, W window slots then every entry; -1 pads.
  TensorView idx;
  if (!sparse) {
    idx = c.be.scratch(DType::kI32, {T, W + N});
    c.be.attention_index(c.positions, n_prev, W, n_prev + T, N, m, TensorView{}, idx);
  }

  // Steps C and E: the chunk's tokens enter the compressors before attention, so an entry
  // completed inside the chunk is visible to the queries that may see it.
  if (compressed) {
    on(2);
    c.be.set_scope(c.scope("attn.compressor"));
    compressor_step(c, h, *w.compressor,
                    {m, sparse, Dh, c.options.official_qdq ? ops::Qdq::kFp8Nope : ops::Qdq::kNone},
                    cache.compressor);
    if (sparse) indexer_keys(c, h, cache, iw);
    c.be.set_scope(c.scope("attn"));
  }

  on(0);
  c.be.linear(h, w.wq_a, qr);
  c.be.rms_norm(qr, &w.q_norm, eps(c), qr);
  c.be.linear(qr, w.wq_b, q.reshaped({T, H * Dh}));
  c.be.norm_rope_qdq(q, {.norm = true, .eps = eps(c), .rope_dim = R}, c.positions, c.inv_freq);
  if (sparse) indexer_queries(c, qr, iq);
  if (branches) c.be.join_branches();

  if (sparse) {
    // Steps B/D with the indexer's top-k: W window slots then the selected entries; -1 pads.
    const TensorView selected = indexer_select(c, iq, iw, cache);
    c.be.set_scope(c.scope("attn"));
    const int64_t n_sel = selected.empty() ? 0 : selected.dim(1);
    idx = c.be.scratch(DType::kI32, {T, W + n_sel});
    c.be.attention_index(c.positions, n_prev, W, n_prev + T, n_sel > 0 ? N : 0, m, selected, idx);
  }

  // Step F: attention with sink; Step G: inverse RoPE at the query position, grouped output.
  const TensorView o = c.act({T, H, Dh});
  c.be.sparse_attention_rope(q, pool, entries, idx, w.attn_sink, 1.0f / std::sqrt(static_cast<float>(Dh)),
                             c.positions, c.inv_freq, R, o);
  const TensorView z = c.act({T, G, Lo});
  c.be.grouped_linear(o.reshaped({T, G, H / G * Dh}), w.wo_a, G, z);
  const TensorView out = c.act({T, cfg.hidden_size});
  c.be.linear(z.reshaped({T, G * Lo}), w.wo_b, out);
  return out;
}

}  // namespace clawmine::model::deepseek_v4
