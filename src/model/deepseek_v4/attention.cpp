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

CompressorSpec main_compressor_spec(const LayerContext& c) {
  const bool csa = c.kind == AttentionKind::kCompressedSparse;
  return {csa ? c.cfg.compress_rate_csa : c.cfg.compress_rate_hca, csa, c.cfg.head_dim,
          c.options.official_qdq ? CompressorSpec::Qdq::kFp8Nope : CompressorSpec::Qdq::kNone};
}

}  // namespace

Buffer indexer_select(const LayerContext& c, const TensorView& h, const TensorView& qr, LayerCache& cache) {
  const ModelConfig& cfg = c.cfg;
  const IndexerWeights& w = *c.w.attn.indexer;
  const int64_t T = h.dim(0), Hi = cfg.index_n_heads, Di = cfg.index_head_dim, m = cfg.compress_rate_csa;
  const auto qdq = c.options.official_qdq ? CompressorSpec::Qdq::kHadamardFp4 : CompressorSpec::Qdq::kNone;
  c.be.set_scope(c.scope("attn.indexer.compressor"));
  compressor_step(c, h, w.compressor, {m, true, Di, qdq}, cache.indexer);
  c.be.set_scope(c.scope("attn.indexer"));

  // Indexer queries from the shared latent qr: [T, Hi, Di], rotated like the layer, no norm.
  Buffer qi(DType::kF32, {T, Hi, Di});
  c.be.linear(qr, w.wq_b, qi.view().reshaped({T, Hi * Di}));
  c.be.rope(qi.view(), c.positions, c.inv_freq, cfg.qk_rope_head_dim, false);
  apply_qdq(qdq, qi.f32(), T * Hi, Di, Di);

  // Head weights [T, Hi], scaled by Di^-1/2 (the q.k scale) and Hi^-1/2.
  Buffer wt(DType::kF32, {T, Hi});
  c.be.linear(h, w.weights_proj, wt.view());
  const float scale = 1.0f / std::sqrt(static_cast<float>(Di)) / std::sqrt(static_cast<float>(Hi));
  for (int64_t i = 0; i < T * Hi; ++i) wt.f32()[i] *= scale;

  const RowStore& keys = cache.indexer.entries;
  const int64_t N = keys.rows();
  const int64_t k = std::min(cfg.index_topk, N);
  Buffer selected(DType::kI32, {T, k});
  if (k == 0) return selected;
  std::vector<int64_t> n_valid(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) n_valid[t] = std::min(N, (c.positions[t] + 1) / m);
  Buffer scores(DType::kF32, {T, N});
  TensorView key_view{DType::kF32, Device::kCpu, {N, Di}, const_cast<float*>(keys.data.data())};
  c.be.indexer_scores(qi.view(), key_view, wt.view(), n_valid, scores.view());
  c.be.topk(scores.view(), k, selected.view());
  return selected;
}

Buffer attention(const LayerContext& c, const TensorView& h, LayerCache& cache) {
  const ModelConfig& cfg = c.cfg;
  const AttentionWeights& w = c.w.attn;
  const int64_t T = h.dim(0), H = cfg.num_attention_heads, Dh = cfg.head_dim, R = cfg.qk_rope_head_dim;
  const int64_t W = cfg.sliding_window, G = cfg.o_groups, Lo = cfg.o_lora_rank;

  // Step A: q = rope(rms(wq_b · rms(wq_a · h))) per head; kv = rope(rms(wkv · h)).
  Buffer qr(DType::kF32, {T, cfg.q_lora_rank});
  c.be.linear(h, w.wq_a, qr.view());
  c.be.rms_norm(qr.view(), &w.q_norm, eps(c), qr.view());
  Buffer q(DType::kF32, {T, H, Dh});
  c.be.linear(qr.view(), w.wq_b, q.view().reshaped({T, H * Dh}));
  c.be.rms_norm(q.view(), nullptr, eps(c), q.view());
  c.be.rope(q.view(), c.positions, c.inv_freq, R, false);

  Buffer kv(DType::kF32, {T, Dh});
  c.be.linear(h, w.wkv, kv.view());
  c.be.rms_norm(kv.view(), &w.kv_norm, eps(c), kv.view());
  c.be.rope(kv.view().reshaped({T, 1, Dh}), c.positions, c.inv_freq, R, false);
  const CompressorSpec spec = main_compressor_spec(c);
  apply_qdq(c.options.official_qdq ? CompressorSpec::Qdq::kFp8Nope : CompressorSpec::Qdq::kNone, kv.f32(), T, Dh,
            Dh - R);

  // Steps C and E: the chunk's tokens enter the compressors before attention, so an entry
  // completed inside the chunk is visible to the queries that may see it.
  Buffer selected;
  c.be.set_scope(c.scope("attn.compressor"));
  if (c.kind != AttentionKind::kSliding) compressor_step(c, h, *w.compressor, spec, cache.compressor);
  c.be.set_scope(c.scope("attn.indexer"));
  if (c.kind == AttentionKind::kCompressedSparse) selected = indexer_select(c, h, qr.view(), cache);
  c.be.set_scope(c.scope("attn"));

  // Key rows: [previous window (n_prev) | this chunk (T) | compressed entries (N)].
  cache.window.width = Dh;
  const int64_t n_prev = cache.window.rows();
  const int64_t N = c.kind == AttentionKind::kSliding ? 0 : cache.compressor.entries.rows();
  Buffer keys(DType::kF32, {n_prev + T + N, Dh});
  std::copy(cache.window.data.begin(), cache.window.data.end(), keys.f32());
  std::copy(kv.f32(), kv.f32() + T * Dh, keys.f32() + n_prev * Dh);
  if (N) std::copy(cache.compressor.entries.data.begin(), cache.compressor.entries.data.end(),
                   keys.f32() + (n_prev + T) * Dh);

  // Step B/D: per query, W window keys then its compressed keys; -1 pads.
  const int64_t n_compressed = c.kind == AttentionKind::kHeavilyCompressed ? N
                               : c.kind == AttentionKind::kCompressedSparse ? selected.view().dim(1) : 0;
  const int64_t S = W + n_compressed;
  Buffer idx(DType::kI32, {T, S});
  const int64_t p0 = c.positions[0];
  for (int64_t t = 0; t < T; ++t) {
    int32_t* row = idx.view().as<int32_t>() + t * S;
    std::fill(row, row + S, -1);
    const int64_t p = c.positions[t];
    int64_t s = 0;
    for (int64_t kp = std::max<int64_t>(0, p - W + 1); kp <= p; ++kp) row[s++] = static_cast<int32_t>(n_prev + kp - p0);
    s = W;
    if (c.kind == AttentionKind::kHeavilyCompressed) {
      const int64_t available = std::min(N, (p + 1) / spec.rate);
      for (int64_t j = 0; j < available; ++j) row[s++] = static_cast<int32_t>(n_prev + T + j);
    } else if (c.kind == AttentionKind::kCompressedSparse) {
      const int32_t* sel = selected.view().as<int32_t>() + t * n_compressed;
      for (int64_t i = 0; i < n_compressed; ++i)
        if (sel[i] >= 0) row[s++] = static_cast<int32_t>(n_prev + T + sel[i]);
    }
  }

  // Step F: attention with sink; Step G: inverse RoPE at the query position, grouped output.
  Buffer o(DType::kF32, {T, H, Dh});
  c.be.sparse_attention(q.view(), keys.view(), idx.view(), w.attn_sink, 1.0f / std::sqrt(static_cast<float>(Dh)),
                        o.view());
  c.be.rope(o.view(), c.positions, c.inv_freq, R, true);
  Buffer z(DType::kF32, {T, G, Lo});
  c.be.grouped_linear(o.view().reshaped({T, G, H / G * Dh}), w.wo_a, G, z.view());
  Buffer out(DType::kF32, {T, cfg.hidden_size});
  c.be.linear(z.view().reshaped({T, G * Lo}), w.wo_b, out.view());

  // The window keeps the W-1 most recent raw keys for the next chunk.
  cache.window.append(kv.f32(), T);
  cache.window.keep_last(W - 1);
  return out;
}

}  // namespace clawmine::model::deepseek_v4
