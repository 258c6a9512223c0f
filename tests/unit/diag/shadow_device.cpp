#include "unit/diag/shadow_device.h"

#include "core/error.h"

namespace clawmine::test {
namespace {

constexpr uintptr_t kTag = uintptr_t{1} << 62;

TensorView tag(TensorView v) {
  const auto p = reinterpret_cast<uintptr_t>(v.data);
  CLAWMINE_CHECK((p & kTag) == 0, "shadow device: host address ", v.data, " already has the tag bit");
  v.data = reinterpret_cast<void*>(p | kTag);
  v.device = Device::kCuda;
  return v;
}

ops::LinearWeight untag_linear(const ops::LinearWeight& w, const char* op) {
  ops::LinearWeight h = w;
  h.weight = shadow_untag(w.weight, op, "weight");
  h.scale = shadow_untag(w.scale, op, "scale");
  h.weight_scale_2 = shadow_untag(w.weight_scale_2, op, "weight_scale_2");
  h.input_scale = shadow_untag(w.input_scale, op, "input_scale");
  return h;
}

ops::ExpertWeights untag_expert(const ops::ExpertWeights& e, const char* op) {
  return {untag_linear(e.w1, op), untag_linear(e.w3, op), untag_linear(e.w2, op)};
}

ops::HyperConnectionWeights untag_hc(const ops::HyperConnectionWeights& w, const char* op) {
  return {shadow_untag(w.fn, op, "fn"), shadow_untag(w.base, op, "base"), shadow_untag(w.scale, op, "scale")};
}

}  // namespace

TensorView shadow_untag(const TensorView& v, const char* op, const char* arg) {
  if (v.empty()) return v;
  const auto p = reinterpret_cast<uintptr_t>(v.data);
  if (v.device != Device::kCuda || (p & kTag) == 0)
    throw Error(str_cat("shadow device: ", op, " argument ", arg, " ", shape_str(v.shape),
                        " is host memory, not a view of this device"));
  TensorView h = v;
  h.data = reinterpret_cast<void*>(p & ~kTag);
  h.device = Device::kCpu;
  return h;
}

ShadowDevice::ShadowDevice(int threads) : cpu_(ops::make_cpu_backend(threads)) { policy_ = cpu_->linear_policy(); }

TensorView ShadowDevice::allocate(DType dtype, const Shape& shape) { return tag(cpu_->allocate(dtype, shape)); }
void ShadowDevice::release(const TensorView& view) { cpu_->release(shadow_untag(view, "release", "view")); }
TensorView ShadowDevice::scratch(DType dtype, const Shape& shape) { return tag(cpu_->scratch(dtype, shape)); }

void ShadowDevice::upload(const void* src, const TensorView& dst) {
  ++uploads_;
  cpu_->upload(src, shadow_untag(dst, "upload", "dst"));
}
void ShadowDevice::download(const TensorView& src, void* dst) {
  ++downloads_;
  cpu_->download(shadow_untag(src, "download", "src"), dst);
}
void ShadowDevice::copy(const TensorView& src, const TensorView& dst) {
  cpu_->copy(shadow_untag(src, "copy", "src"), shadow_untag(dst, "copy", "dst"));
}
void ShadowDevice::fill(const TensorView& dst, float value) { cpu_->fill(shadow_untag(dst, "fill", "dst"), value); }

void ShadowDevice::set_linear_policy(const ops::LinearPolicy& policy) {
  policy_ = policy;
  cpu_->set_linear_policy(policy);
}

void ShadowDevice::embed(const TensorView& table, const TensorView& ids, const TensorView& out) {
  cpu_->embed(shadow_untag(table, "embed", "table"), shadow_untag(ids, "embed", "ids"),
              shadow_untag(out, "embed", "out"));
}
void ShadowDevice::hc_expand(const TensorView& e, const TensorView& X) {
  cpu_->hc_expand(shadow_untag(e, "hc_expand", "e"), shadow_untag(X, "hc_expand", "X"));
}
void ShadowDevice::rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) {
  const TensorView w = weight ? shadow_untag(*weight, "rms_norm", "weight") : TensorView{};
  cpu_->rms_norm(shadow_untag(x, "rms_norm", "x"), weight ? &w : nullptr, eps, shadow_untag(out, "rms_norm", "out"));
}
void ShadowDevice::linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) {
  cpu_->linear(shadow_untag(x, "linear", "x"), untag_linear(w, "linear"), shadow_untag(out, "linear", "out"));
}
void ShadowDevice::grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups,
                                  const TensorView& out) {
  cpu_->grouped_linear(shadow_untag(x, "grouped_linear", "x"), untag_linear(w, "grouped_linear"), groups,
                       shadow_untag(out, "grouped_linear", "out"));
}
void ShadowDevice::rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq,
                        int64_t rope_dim, bool inverse) {
  cpu_->rope(shadow_untag(x, "rope", "x"), shadow_untag(positions, "rope", "positions"),
             shadow_untag(inv_freq, "rope", "inv_freq"), rope_dim, inverse);
}
void ShadowDevice::iota(const TensorView& out, int64_t start, int64_t step) {
  cpu_->iota(shadow_untag(out, "iota", "out"), start, step);
}
void ShadowDevice::add(const TensorView& a, const TensorView& b, const TensorView& out) {
  cpu_->add(shadow_untag(a, "add", "a"), shadow_untag(b, "add", "b"), shadow_untag(out, "add", "out"));
}
void ShadowDevice::qdq(const TensorView& x, ops::Qdq kind, int64_t n_nope) {
  cpu_->qdq(shadow_untag(x, "qdq", "x"), kind, n_nope);
}
void ShadowDevice::hc_pre(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
                          const TensorView& x_in, const TensorView& post, const TensorView& comb) {
  cpu_->hc_pre(shadow_untag(X, "hc_pre", "X"), untag_hc(w, "hc_pre"), p, shadow_untag(x_in, "hc_pre", "x_in"),
               shadow_untag(post, "hc_pre", "post"), shadow_untag(comb, "hc_pre", "comb"));
}
void ShadowDevice::hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
                           const TensorView& X_out) {
  cpu_->hc_post(shadow_untag(y, "hc_post", "y"), shadow_untag(X, "hc_post", "X"), shadow_untag(post, "hc_post", "post"),
                shadow_untag(comb, "hc_post", "comb"), shadow_untag(X_out, "hc_post", "X_out"));
}
void ShadowDevice::hc_head(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
                           const TensorView& y) {
  cpu_->hc_head(shadow_untag(X, "hc_head", "X"), untag_hc(w, "hc_head"), p, shadow_untag(y, "hc_head", "y"));
}
void ShadowDevice::attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                                   int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) {
  cpu_->attention_index(shadow_untag(positions, "attention_index", "positions"), n_prev, window, entry_base, n_entries,
                        rate, shadow_untag(selected, "attention_index", "selected"),
                        shadow_untag(idx, "attention_index", "idx"));
}
void ShadowDevice::sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries,
                                    const TensorView& idx, const TensorView& sink, float scale, const TensorView& out) {
  const char* op = "sparse_attention";
  cpu_->sparse_attention(shadow_untag(q, op, "q"), shadow_untag(kv, op, "kv"), shadow_untag(entries, op, "entries"),
                         shadow_untag(idx, op, "idx"), shadow_untag(sink, op, "sink"), scale,
                         shadow_untag(out, op, "out"));
}
void ShadowDevice::compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                                  const TensorView& positions, int64_t rate, bool overlap,
                                  const ops::CompressorStateView& state, const TensorView& pooled,
                                  const TensorView& entry_positions) {
  const char* op = "compress_chunk";
  const ops::CompressorStateView s{shadow_untag(state.pending_kv, op, "pending_kv"),
                                   shadow_untag(state.pending_gate, op, "pending_gate"),
                                   shadow_untag(state.overlap_kv, op, "overlap_kv"),
                                   shadow_untag(state.overlap_gate, op, "overlap_gate")};
  cpu_->compress_chunk(shadow_untag(kv, op, "kv"), shadow_untag(gate, op, "gate"), shadow_untag(ape, op, "ape"),
                       shadow_untag(positions, op, "positions"), rate, overlap, s, shadow_untag(pooled, op, "pooled"),
                       shadow_untag(entry_positions, op, "entry_positions"));
}
void ShadowDevice::scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) {
  const char* op = "scatter_rows";
  cpu_->scatter_rows(shadow_untag(src, op, "src"), shadow_untag(keys, op, "keys"), divisor, shadow_untag(dst, op, "dst"));
}
void ShadowDevice::indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                                  float weight_scale, const TensorView& positions, int64_t rate,
                                  const TensorView& scores) {
  const char* op = "indexer_scores";
  cpu_->indexer_scores(shadow_untag(q, op, "q"), shadow_untag(keys, op, "keys"), shadow_untag(weights, op, "weights"),
                       weight_scale, shadow_untag(positions, op, "positions"), rate,
                       shadow_untag(scores, op, "scores"));
}
void ShadowDevice::topk(const TensorView& values, int64_t k, const TensorView& out) {
  cpu_->topk(shadow_untag(values, "topk", "values"), k, shadow_untag(out, "topk", "out"));
}
void ShadowDevice::argmax_rows(const TensorView& values, const TensorView& out) {
  cpu_->argmax_rows(shadow_untag(values, "argmax_rows", "values"), shadow_untag(out, "argmax_rows", "out"));
}
void ShadowDevice::moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                             const TensorView& ids, float routed_scaling, const TensorView& idx,
                             const TensorView& weight) {
  const char* op = "moe_route";
  cpu_->moe_route(shadow_untag(logits, op, "logits"), shadow_untag(bias, op, "bias"),
                  shadow_untag(tid2eid, op, "tid2eid"), shadow_untag(ids, op, "ids"), routed_scaling,
                  shadow_untag(idx, op, "idx"), shadow_untag(weight, op, "weight"));
}
void ShadowDevice::moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts,
                               const TensorView& idx, const TensorView& weight, float swiglu_limit,
                               const TensorView& out) {
  const char* op = "moe_experts";
  std::vector<ops::ExpertWeights> host;
  host.reserve(experts.size());
  for (const ops::ExpertWeights& e : experts) host.push_back(untag_expert(e, op));
  cpu_->moe_experts(shadow_untag(x, op, "x"), host, shadow_untag(idx, op, "idx"), shadow_untag(weight, op, "weight"),
                    swiglu_limit, shadow_untag(out, op, "out"));
}
void ShadowDevice::swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit,
                              const TensorView& out) {
  cpu_->swiglu_mlp(shadow_untag(x, "swiglu_mlp", "x"), untag_expert(w, "swiglu_mlp"), swiglu_limit,
                   shadow_untag(out, "swiglu_mlp", "out"));
}

}  // namespace clawmine::test
