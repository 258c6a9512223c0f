// The walk mirrors the structure of weights.h; names follow the release checkpoint.
#include "model/deepseek_v4/weight_walk.h"

#include "core/error.h"

namespace clawmine::model::deepseek_v4 {

namespace {

class Walker {
 public:
  explicit Walker(const std::function<void(const WeightRef&)>& fn) : fn_(fn) {}

  void tensor(const std::string& name, WeightFamily family, const TensorView& t) {
    if (t.empty()) return;
    WeightRef r;
    r.name = name;
    r.family = family;
    r.mtp = mtp_;
    r.tensor = &t;
    fn_(r);
  }

  void linear(WeightFamily family, const LinearWeight& l) {
    if (!l.present()) return;
    WeightRef r;
    r.name = l.name;
    r.family = family;
    r.mtp = mtp_;
    r.linear = &l;
    fn_(r);
  }

  void hc(const std::string& p, const HyperConnectionWeights& h) {
    tensor(p + "_fn", WeightFamily::kHyperConnection, h.fn);
    tensor(p + "_base", WeightFamily::kHyperConnection, h.base);
    tensor(p + "_scale", WeightFamily::kHyperConnection, h.scale);
  }

  void compressor(const std::string& p, WeightFamily family, const CompressorWeights& c) {
    linear(family, c.wkv);
    linear(family, c.wgate);
    tensor(p + ".ape", family, c.ape);
    tensor(p + ".norm.weight", family, c.norm);
  }

  void expert(WeightFamily family, const ExpertWeights& e) {
    linear(family, e.w1);
    linear(family, e.w3);
    linear(family, e.w2);
  }

  void layer(const std::string& p, const LayerWeights& l) {
    tensor(p + ".attn_norm.weight", WeightFamily::kNorm, l.attn_norm);
    tensor(p + ".ffn_norm.weight", WeightFamily::kNorm, l.ffn_norm);
    hc(p + ".hc_attn", l.hc_attn);
    hc(p + ".hc_ffn", l.hc_ffn);
    const AttentionWeights& a = l.attn;
    const WeightFamily kA = WeightFamily::kAttention;
    linear(kA, a.wq_a);
    tensor(p + ".attn.q_norm.weight", kA, a.q_norm);
    linear(kA, a.wq_b);
    linear(kA, a.wkv);
    tensor(p + ".attn.kv_norm.weight", kA, a.kv_norm);
    linear(kA, a.wo_a);
    linear(kA, a.wo_b);
    tensor(p + ".attn.attn_sink", kA, a.attn_sink);
    if (a.compressor) compressor(p + ".attn.compressor", WeightFamily::kCompressor, *a.compressor);
    if (a.indexer) {
      linear(WeightFamily::kIndexer, a.indexer->wq_b);
      linear(WeightFamily::kIndexer, a.indexer->weights_proj);
      compressor(p + ".attn.indexer.compressor", WeightFamily::kIndexer, a.indexer->compressor);
    }
    const MoeWeights& m = l.ffn;
    linear(WeightFamily::kRouter, m.gate);
    tensor(p + ".ffn.gate.bias", WeightFamily::kRouter, m.gate_bias);
    tensor(p + ".ffn.gate.tid2eid", WeightFamily::kRouter, m.tid2eid);
    for (const ExpertWeights& e : m.experts) expert(WeightFamily::kRoutedExperts, e);
    expert(WeightFamily::kSharedExperts, m.shared_experts);
  }

  void model(const ModelWeights& w) {
    tensor("embed.weight", WeightFamily::kEmbedding, w.embed);
    if (w.head.data != w.embed.data) tensor("head.weight", WeightFamily::kEmbedding, w.head);
    tensor("norm.weight", WeightFamily::kNorm, w.norm);
    hc("hc_head", w.hc_head);
    for (size_t i = 0; i < w.layers.size(); ++i) layer(str_cat("layers.", i), w.layers[i]);
    if (!w.mtp) return;
    mtp_ = true;
    const MtpWeights& m = *w.mtp;
    linear(WeightFamily::kMtpProjection, m.e_proj);
    linear(WeightFamily::kMtpProjection, m.h_proj);
    tensor("mtp.0.enorm.weight", WeightFamily::kMtpProjection, m.enorm);
    tensor("mtp.0.hnorm.weight", WeightFamily::kMtpProjection, m.hnorm);
    tensor("mtp.0.norm.weight", WeightFamily::kMtpProjection, m.norm);
    hc("mtp.0.hc_head", m.hc_head);
    layer("mtp.0", m.block);
    mtp_ = false;
  }

 private:
  const std::function<void(const WeightRef&)>& fn_;
  bool mtp_ = false;
};

}  // namespace

const char* weight_family_name(WeightFamily f) {
  switch (f) {
    case WeightFamily::kEmbedding: return "embedding";
    case WeightFamily::kAttention: return "attention";
    case WeightFamily::kCompressor: return "compressor";
    case WeightFamily::kIndexer: return "indexer";
    case WeightFamily::kRouter: return "router";
    case WeightFamily::kRoutedExperts: return "routed experts";
    case WeightFamily::kSharedExperts: return "shared experts";
    case WeightFamily::kHyperConnection: return "hyper-connections";
    case WeightFamily::kNorm: return "norms";
    case WeightFamily::kMtpProjection: return "mtp projections";
  }
  return "?";
}

void for_each_weight(const ModelWeights& w, const std::function<void(const WeightRef&)>& fn) {
  Walker(fn).model(w);
}

void for_each_linear(ModelWeights& w, const std::function<void(LinearWeight&, WeightFamily)>& fn) {
  // The walk is written once, over const weights; `w` itself is writable, so the cast is sound.
  for_each_weight(w, [&](const WeightRef& r) {
    if (r.linear) fn(const_cast<LinearWeight&>(*r.linear), r.family);
  });
}

}  // namespace clawmine::model::deepseek_v4
