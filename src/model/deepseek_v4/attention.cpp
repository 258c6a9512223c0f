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

// kv = rope(rms(wkv . h)) [T, Dh], round-tripped on its nope dims in official mode.
void project_keys(const LayerContext& c, const TensorView& h, const TensorView& kv) {
  const int64_t T = h.dim(0), Dh = c.cfg.head_dim, R = c.cfg.qk_rope_head_dim;
  c.be.linear(h, c.w.attn.wkv, kv);
  c.be.norm_rope_qdq(kv.reshaped({T, 1, Dh}),
                     {.norm = true,
                      .norm_weight = &c.w.attn.kv_norm,
                      .eps = eps(c),
                      .rope_dim = R,
                      .qdq = c.options.official_qdq ? ops::Qdq::kFp8Nope : ops::Qdq::kNone,
                      .n_nope = Dh - R},
                     c.positions, c.inv_freq);
}

// The layer's compressor (CSA: overlapping windows) and the indexer's.
CompressorSpec layer_compressor(const LayerContext& c) {
  return {compress_rate(c), c.kind == AttentionKind::kCompressedSparse, c.cfg.head_dim,
          c.options.official_qdq ? ops::Qdq::kFp8Nope : ops::Qdq::kNone};
}
CompressorSpec indexer_compressor(const LayerContext& c) {
  return {c.cfg.compress_rate_csa, true, c.cfg.index_head_dim, indexer_qdq(c)};
}

// The window pool [previous window (n_prev rows) | the chunk's T keys, already in place]: the
// previous rows come from the cache (window_prev, before or beside the keys' projection), and the
// cache keeps the W-1 most recent keys of the pool (its tail) for the next chunk (window_keep,
// after it). The cache's rows are right-aligned: its last row is the position just before the
// chunk, and rows before the first position are zeros (never listed by attention_index).
//
// A one-token step takes all W-1 rows at every position (window_rows), so its ops and sizes do
// not depend on the position and the step is recorded as a graph from the first decoded token;
// a chunk takes the rows of the positions that exist, min(W-1, p0).
int64_t window_rows(const LayerContext& c, int64_t T) {
  const int64_t W = c.cfg.sliding_window;
  return T == 1 ? W - 1 : std::min(W - 1, c.p0);
}
void window_prev(const LayerContext& c, LayerCache& cache, const TensorView& pool, int64_t n_prev) {
  const int64_t rows = c.cfg.sliding_window - 1;
  if (n_prev > 0) c.be.copy(cache.window.view().slice0(rows - n_prev, rows), pool.slice0(0, n_prev));
}
void window_keep(const LayerContext& c, LayerCache& cache, const TensorView& pool) {
  const int64_t rows = pool.dim(0), W = c.cfg.sliding_window;
  const int64_t n_keep = std::min(W - 1, rows);
  if (n_keep > 0) c.be.copy(pool.slice0(rows - n_keep, rows), cache.window.view().slice0(W - 1 - n_keep, W - 1));
}

// The chunk's tokens enter the layer's compressor before attention (for CSA the indexer's too:
// indexer_keys), so an entry completed inside the chunk is visible to the queries that may see it.
void compress(const LayerContext& c, const TensorView& h, LayerCache& cache) {
  c.be.set_scope(c.scope("attn.compressor"));
  compressor_step(c, h, *c.w.attn.compressor, layer_compressor(c), cache.compressor);
  c.be.set_scope(c.scope("attn"));
}

// The query latent qr = rms(wq_a · h) [T, q_lora_rank].
void project_latent(const LayerContext& c, const TensorView& h, const TensorView& qr) {
  c.be.linear(h, c.w.attn.wq_a, qr);
  c.be.rms_norm(qr, &c.w.attn.q_norm, eps(c), qr);
}

// q = rope(rms(wq_b · qr)) per head [T, H, Dh].
void project_heads(const LayerContext& c, const TensorView& qr, const TensorView& q) {
  const int64_t T = qr.dim(0);
  c.be.linear(qr, c.w.attn.wq_b, q.reshaped({T, c.cfg.num_attention_heads * c.cfg.head_dim}));
  c.be.norm_rope_qdq(q, {.norm = true, .eps = eps(c), .rope_dim = c.cfg.qk_rope_head_dim}, c.positions,
                     c.inv_freq);
}

// q = rope(rms(wq_b · rms(wq_a · h))) per head [T, H, Dh] from the latent qr [T, q_lora_rank];
// for CSA the indexer queries iq from the same qr, after q.
void project_queries(const LayerContext& c, const TensorView& h, const TensorView& qr, const TensorView& q,
                     const TensorView& iq) {
  project_latent(c, h, qr);
  project_heads(c, qr, q);
  if (!iq.empty()) indexer_queries(c, qr, iq);
}

// Key lists (steps B/D): W window slots then the compressed entries each query may see (every
// complete one for HCA, and for CSA while the indexer would select them all (iq empty); else the
// indexer's top-k); -1 pads. T queries over a pool of n_pool rows and the cache's N entries.
TensorView key_list(const LayerContext& c, LayerCache& cache, int64_t n_prev, int64_t n_pool, const TensorView& iq,
                    const TensorView& iw) {
  const int64_t T = c.positions.dim(0), W = c.cfg.sliding_window;
  const int64_t m = c.kind == AttentionKind::kSliding ? 1 : compress_rate(c);
  const TensorView entries = c.kind == AttentionKind::kSliding ? TensorView{} : cache.compressor.entries.view();
  const int64_t N = entries.empty() ? 0 : entries.dim(0);
  if (iq.empty()) {
    const TensorView idx = c.be.scratch(DType::kI32, {T, W + N});
    c.be.attention_index(c.positions, n_prev, W, n_pool, N, m, TensorView{}, idx);
    return idx;
  }
  const TensorView selected = indexer_select(c, iq, iw, cache);
  c.be.set_scope(c.scope("attn"));
  const int64_t n_sel = selected.empty() ? 0 : selected.dim(1);
  const TensorView idx = c.be.scratch(DType::kI32, {T, W + n_sel});
  c.be.attention_index(c.positions, n_prev, W, n_pool, n_sel > 0 ? N : 0, m, selected, idx);
  return idx;
}

// Step F: attention with sink over the pool and the entries; step G: inverse RoPE at the query
// position (one op), into o [T, H, Dh].
void attend(const LayerContext& c, const TensorView& q, const TensorView& pool, LayerCache& cache,
            const TensorView& idx, const TensorView& o) {
  const TensorView entries = c.kind == AttentionKind::kSliding ? TensorView{} : cache.compressor.entries.view();
  c.be.sparse_attention_rope(q, pool, entries, idx, c.w.attn.attn_sink,
                             1.0f / std::sqrt(static_cast<float>(c.cfg.head_dim)), c.positions, c.inv_freq,
                             c.cfg.qk_rope_head_dim, o);
}

// The grouped output: wo_a per group, then wo_b: o [T, H, Dh] -> [T, D].
TensorView output(const LayerContext& c, const TensorView& o) {
  const int64_t T = o.dim(0), H = c.cfg.num_attention_heads, Dh = c.cfg.head_dim, G = c.cfg.o_groups;
  const TensorView z = c.act({T, G, c.cfg.o_lora_rank});
  c.be.grouped_linear(o.reshaped({T, G, H / G * Dh}), c.w.attn.wo_a, G, z);
  const TensorView out = c.act({T, c.cfg.hidden_size});
  c.be.linear(z.reshaped({T, G * c.cfg.o_lora_rank}), c.w.attn.wo_b, out);
  return out;
}

}  // namespace

void indexer_keys(const LayerContext& c, const TensorView& h, LayerCache& cache) {
  c.be.set_scope(c.scope("attn.indexer.compressor"));
  compressor_step(c, h, c.w.attn.indexer->compressor, indexer_compressor(c), cache.indexer);
}

void indexer_weights(const LayerContext& c, const TensorView& h, const TensorView& weights) {
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

bool indexer_takes_every_entry(const ModelConfig& cfg, const CompressorCache& indexer) {
  return indexer.capacity() <= cfg.index_topk;
}

bool needs_indexer(const LayerContext& c, const LayerCache& cache) {
  if (c.kind != AttentionKind::kCompressedSparse) return false;
  return c.options.indexer_always || !indexer_takes_every_entry(c.cfg, cache.indexer);
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
  const int64_t T = h.dim(0), H = cfg.num_attention_heads, Dh = cfg.head_dim;

  // Step A: q = rope(rms(wq_b · rms(wq_a · h))) per head; kv = rope(rms(wkv · h)). At decode
  // sizes the independent chains run on branches until the indexer scores, each forked from the
  // main stream where its first op is issued:
  //   3: the layer's compressor and 2: the indexer's keys (its compressor), both from h alone
  //      and the longest chains of a compressed layer (a GEMV, then the pooling kernel), so they
  //      start with the layer; 5: the indexer's head weights (a GEMV from h), beside them;
  //   6: kv, in place in the pool (a GEMV and its norm/rope), from h alone, with the layer;
  //   1: the keys: the previous window rows into the pool and the key lists where they need no
  //      top-k (neither reads kv), then, once kv is in (branch_wait(6)), the window kept for the
  //      next chunk;
  //   0: the queries: the latent, then (CSA) the indexer queries ahead of wq_b, so that their
  //      GEMV is not left waiting for multiprocessors behind wq_b's resident blocks;
  //   4: (CSA) the top-k selection and the key lists, forked after the indexer queries, once the
  //      indexer keys (2) and head weights (5) are done (branch_wait): beside wq_b instead of
  //      after the join.
  // (H100, docs/PERFORMANCE.md, thirteenth session: with the compressors and the indexer behind
  // the keys on one side stream, a CSA layer's attention started ~40 us after its queries were
  // ready; this layout: decode b=1 8.00 -> 7.48 ms/token. The order in which the side branches
  // are issued made no difference. Fourteenth session: the selection on branch 4, 7.40 / 7.39 ->
  // 7.35 / 7.33 ms/token. Fifteenth: the head weights on 5 and kv on 6, where they waited behind
  // the indexer's pooling kernel and the window copy, and then for multiprocessors behind wq_b:
  // 7.21-7.24 -> 7.17-7.19 ms/token.)
  const bool branches = T <= kBranchMaxTokens;
  auto on = [&](int b) {
    if (branches) c.be.branch(b);
  };
  // kv and the keys start as soon as their forks allow (they lead to the attention's last
  // inputs); the compressors, started as early, put their blocks beside wkv's and lose (H200,
  // thirty-sixth session, decode b=1: kv and keys early 5.32-5.35 -> 5.23-5.26 ms/token; with the
  // compressors too 5.35-5.37; with the shared expert's fork (moe.cpp) too 5.46-5.52).
  auto on_early = [&](int b) {
    if (branches) c.be.branch_early(b);
  };
  const int64_t n_prev = window_rows(c, T);
  const TensorView pool = c.act({n_prev + T, Dh});
  const TensorView qr = c.act({T, cfg.q_lora_rank});
  const TensorView q = c.act({T, H, Dh});
  const bool compressed = c.kind != AttentionKind::kSliding;
  // CSA: the indexer's keys always (its store serves later chunks); its queries, head weights and
  // selection only where its top-k does not take every entry (needs_indexer).
  const bool sparse = c.kind == AttentionKind::kCompressedSparse;
  const bool select = needs_indexer(c, cache);
  const TensorView iq = select ? c.act({T, cfg.index_n_heads, cfg.index_head_dim}) : TensorView{};
  const TensorView iw = select ? c.act({T, cfg.index_n_heads}) : TensorView{};

  if (compressed) {
    on(3);
    compress(c, h, cache);
  }
  if (sparse) {
    on(2);
    indexer_keys(c, h, cache);
    if (select) {
      on(5);
      indexer_weights(c, h, iw);
    }
    c.be.set_scope(c.scope("attn"));
  }
  // The chunk's raw keys are computed in place in the window pool (after the n_prev previous
  // rows), so they need no copy into it; the compressed entries stay in place in the cache.
  on_early(6);
  project_keys(c, h, pool.slice0(n_prev, n_prev + T));
  on_early(1);
  window_prev(c, cache, pool, n_prev);
  TensorView idx;
  if (!select) idx = key_list(c, cache, n_prev, n_prev + T, iq, iw);
  c.be.branch_wait(6);
  window_keep(c, cache, pool);
  on(0);
  project_latent(c, h, qr);
  if (select && branches) {
    indexer_queries(c, qr, iq);
    c.be.set_scope(c.scope("attn"));
    on(4);
    c.be.branch_wait(2);
    c.be.branch_wait(5);
    idx = key_list(c, cache, n_prev, n_prev + T, iq, iw);
    on(0);
  }
  project_heads(c, qr, q);
  if (branches) {
    c.be.join_branches();
  } else if (select) {  // in order: the indexer queries after q, then the selection
    indexer_queries(c, qr, iq);
    idx = key_list(c, cache, n_prev, n_prev + T, iq, iw);
  }

  const TensorView o = c.act({T, H, Dh});
  attend(c, q, pool, cache, idx, o);
  return output(c, o);
}

TensorView attention_batch(const LayerContext& c, const TensorView& h, const std::vector<LayerCache*>& caches,
                           const std::vector<int64_t>& p0) {
  const ModelConfig& cfg = c.cfg;
  const int64_t B = h.dim(0), H = cfg.num_attention_heads, Dh = cfg.head_dim;
  CLAWMINE_CHECK(static_cast<int64_t>(caches.size()) == B && static_cast<int64_t>(p0.size()) == B,
                 "attention_batch: ", caches.size(), " caches and ", p0.size(), " positions for ", B, " rows");
  const bool compressed = c.kind != AttentionKind::kSliding;
  const bool sparse = c.kind == AttentionKind::kCompressedSparse;
  // The indexer's queries and head weights where any sequence needs its selection; each
  // sequence's key list uses them only where it does itself (as its own step would).
  std::vector<bool> select(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) select[static_cast<size_t>(b)] = needs_indexer(c, *caches[static_cast<size_t>(b)]);
  const bool any_select = std::find(select.begin(), select.end(), true) != select.end();
  // Row-wise over the batch: keys, queries, the indexer's queries and head weights, and both
  // compressors' projections (kv and gate logits of every row).
  const TensorView kv = c.act({B, Dh});
  const TensorView qr = c.act({B, cfg.q_lora_rank});
  const TensorView q = c.act({B, H, Dh});
  const TensorView iq = any_select ? c.act({B, cfg.index_n_heads, cfg.index_head_dim}) : TensorView{};
  const TensorView iw = any_select ? c.act({B, cfg.index_n_heads}) : TensorView{};
  project_keys(c, h, kv);
  project_queries(c, h, qr, q, iq);
  TensorView kv_gate, index_kv_gate;
  if (compressed) {
    c.be.set_scope(c.scope("attn.compressor"));
    kv_gate = compressor_project(c, h, *c.w.attn.compressor, layer_compressor(c));
  }
  if (sparse) {
    c.be.set_scope(c.scope("attn.indexer.compressor"));
    index_kv_gate = compressor_project(c, h, c.w.attn.indexer->compressor, indexer_compressor(c));
    if (any_select) {
      c.be.set_scope(c.scope("attn.indexer"));
      c.be.linear(h, c.w.attn.indexer->weights_proj, iw);
    }
  }
  c.be.set_scope(c.scope("attn"));

  // Per sequence, on its one-token context: the window pool, the compressors' state and entries,
  // the key list and the attention. The sequences' chains are independent (each its own cache
  // and rows), so they run on lanes: backend branches 1 .. kMaxBranches-1, sequence b on lane
  // b % lanes, joined before the output projection.
  const int64_t lanes = B > 1 ? std::min<int64_t>(B, ops::Backend::kMaxBranches - 1) : 0;
  const TensorView o = c.act({B, H, Dh});
  for (int64_t b = 0; b < B; ++b) {
    if (lanes > 0) c.be.branch(static_cast<int>(1 + b % lanes));
    const TensorView positions = c.positions.slice0(b, b + 1), ids = c.ids.slice0(b, b + 1);
    const LayerContext cb{c.be, cfg, c.w, c.layer, c.kind, c.inv_freq, positions, ids, p0[static_cast<size_t>(b)],
                          c.options};
    LayerCache& cache = *caches[static_cast<size_t>(b)];
    const int64_t n_prev = window_rows(cb, 1);
    const TensorView pool = c.act({n_prev + 1, Dh});
    window_prev(cb, cache, pool, n_prev);
    c.be.copy(kv.slice0(b, b + 1), pool.slice0(n_prev, n_prev + 1));
    window_keep(cb, cache, pool);
    if (compressed) {
      c.be.set_scope(c.scope("attn.compressor"));
      compressor_store(cb, compressor_rows(kv_gate, 0, b, b + 1), compressor_rows(kv_gate, 1, b, b + 1),
                       *c.w.attn.compressor, layer_compressor(c), cache.compressor);
    }
    if (sparse) {
      c.be.set_scope(c.scope("attn.indexer.compressor"));
      compressor_store(cb, compressor_rows(index_kv_gate, 0, b, b + 1), compressor_rows(index_kv_gate, 1, b, b + 1),
                       c.w.attn.indexer->compressor, indexer_compressor(c), cache.indexer);
    }
    if (compressed) c.be.set_scope(c.scope("attn"));
    const bool sel = select[static_cast<size_t>(b)];
    const TensorView idx = key_list(cb, cache, n_prev, n_prev + 1, sel ? iq.slice0(b, b + 1) : TensorView{},
                                    sel ? iw.slice0(b, b + 1) : TensorView{});
    attend(cb, q.slice0(b, b + 1), pool, cache, idx, o.slice0(b, b + 1));
  }
  if (lanes > 0) c.be.join_branches();
  return output(c, o);
}

}  // namespace clawmine::model::deepseek_v4
