// Loading and the top-level forward pass (spec §3.1-§3.2, §3.5): embed, broadcast to hc
// streams, per layer two hyper-connection sites around attention and MoE, then hc_head, the
// final norm and the head. Residual streams stay float32.
#include "model/deepseek_v4/model.h"

#include "diag/audit.h"
#include "model/deepseek_v4/binder.h"
#include "model/deepseek_v4/dequant.h"
#include "model/deepseek_v4/layer.h"
#include "model/deepseek_v4/rope.h"
#include "model/deepseek_v4/scale_validation.h"

namespace clawmine::model::deepseek_v4 {

void RowStore::keep_last(int64_t n) {
  const int64_t r = rows();
  if (r > n) data.erase(data.begin(), data.begin() + (r - n) * width);
}

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir, const LoadOptions& options) {
  std::unique_ptr<Model> m(new Model());
  m->config_ = load_model_config(dir);
  m->checkpoint_ = io::Checkpoint::open(dir);
  m->weights_ = bind_weights(m->checkpoint_, m->config_).weights;
  // --dequant globs resolve first (a pattern matching nothing is an error) so the scale checks
  // know which input_scales no compute path will read; decoding needs valid block scales.
  const DequantSelection dequant = select_dequant(m->weights_, options.dequant);
  validate_scales(m->weights_, m->checkpoint_, options.policy, dequant.names);
  m->owned_ = dequantize(dequant);
  m->inv_freq_main_ = rope_inv_freq(m->config_, AttentionKind::kSliding);
  m->inv_freq_compress_ = rope_inv_freq(m->config_, AttentionKind::kHeavilyCompressed);
  // The calibration audit of static NVFP4 input scales (diag/audit.h) runs a short forward and
  // marks overflowing scales untrusted; it sees the weights as the compute paths will.
  if (options.audit) diag::run_load_audit(*m, options);
  return m;
}

SequenceCache Model::new_cache() const {
  SequenceCache cache;
  cache.layers.resize(static_cast<size_t>(config_.num_hidden_layers));
  return cache;
}

namespace {

// One decoder block (spec §3.2, the reference Block.forward):
//   x, post, comb = hc_pre(X);  X = hc_post(attention(attn_norm(x)), X, post, comb)
//   x, post, comb = hc_pre(X);  X = hc_post(moe(ffn_norm(x)), X, post, comb)
void block(const LayerContext& c, Buffer& X, LayerCache& cache, const std::vector<int32_t>& ids) {
  const int64_t T = X.view().dim(0), hc = c.cfg.hc_mult, D = c.cfg.hidden_size;
  const ops::HcParams hp{hc, c.cfg.hc_sinkhorn_iters, static_cast<float>(c.cfg.hc_eps),
                         static_cast<float>(c.cfg.rms_norm_eps)};
  const float eps = static_cast<float>(c.cfg.rms_norm_eps);
  Buffer x(DType::kF32, {T, D}), post(DType::kF32, {T, hc}), comb(DType::kF32, {T, hc, hc});
  Buffer X_next(DType::kF32, {T, hc, D});

  c.be.set_scope(c.scope("hc_attn"));
  c.be.hc_pre(X.view(), c.w.hc_attn, hp, x.view(), post.view(), comb.view());
  c.be.set_scope(c.scope("attn"));
  c.be.rms_norm(x.view(), &c.w.attn_norm, eps, x.view());
  Buffer a = attention(c, x.view(), cache);
  c.be.set_scope(c.scope("hc_attn"));
  c.be.hc_post(a.view(), X.view(), post.view(), comb.view(), X_next.view());
  std::swap(X, X_next);

  c.be.set_scope(c.scope("hc_ffn"));
  c.be.hc_pre(X.view(), c.w.hc_ffn, hp, x.view(), post.view(), comb.view());
  c.be.set_scope(c.scope("ffn"));
  c.be.rms_norm(x.view(), &c.w.ffn_norm, eps, x.view());
  Buffer f = moe(c, x.view(), ids);
  c.be.set_scope(c.scope("hc_ffn"));
  c.be.hc_post(f.view(), X.view(), post.view(), comb.view(), X_next.view());
  std::swap(X, X_next);
}

}  // namespace

Buffer Model::forward(ops::Backend& be, SequenceCache& cache, const std::vector<int32_t>& ids,
                      const ForwardOptions& options) const {
  const ModelConfig& cfg = config_;
  const int64_t T = static_cast<int64_t>(ids.size()), D = cfg.hidden_size, hc = cfg.hc_mult;
  CLAWMINE_CHECK(T > 0, "forward needs at least one token");
  CLAWMINE_CHECK(static_cast<int64_t>(cache.layers.size()) == cfg.num_hidden_layers,
                 "cache was made for another model");
  std::vector<int64_t> positions(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) positions[t] = cache.position + t;

  // X [T, hc, D]: the embedding copied into every stream.
  Buffer e(DType::kF32, {T, D});
  be.set_scope("embed");
  be.embed(weights_.embed, ids, e.view());
  Buffer X(DType::kF32, {T, hc, D});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < hc; ++j) std::copy(e.f32() + t * D, e.f32() + (t + 1) * D, X.f32() + (t * hc + j) * D);

  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const AttentionKind kind = cfg.layer_types[static_cast<size_t>(l)];
    const LayerContext c{be, cfg, weights_.layers[static_cast<size_t>(l)], static_cast<int>(l), kind,
                         kind == AttentionKind::kSliding ? inv_freq_main_ : inv_freq_compress_, positions, options};
    block(c, X, cache.layers[static_cast<size_t>(l)], ids);
  }

  // hc_head -> norm -> head, at every position.
  const ops::HcParams hp{hc, cfg.hc_sinkhorn_iters, static_cast<float>(cfg.hc_eps), static_cast<float>(cfg.rms_norm_eps)};
  Buffer y(DType::kF32, {T, D});
  be.set_scope("head");
  be.hc_head(X.view(), weights_.hc_head, hp, y.view());
  be.rms_norm(y.view(), &weights_.norm, static_cast<float>(cfg.rms_norm_eps), y.view());
  LinearWeight head;
  head.name = "head";
  head.out_features = cfg.vocab_size;
  head.in_features = D;
  head.weight = weights_.head;
  Buffer logits(DType::kF32, {T, cfg.vocab_size});
  be.linear(y.view(), head, logits.view());
  cache.position += T;
  return logits;
}

}  // namespace clawmine::model::deepseek_v4
