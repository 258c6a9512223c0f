#include "cli/bench_profile.h"

#include <algorithm>

namespace clawmine::cli {

double linear_weight_bytes(const ops::LinearWeight& w) {
  return static_cast<double>(w.weight.nbytes() + w.scale.nbytes() + w.weight_scale_2.nbytes() +
                             w.input_scale.nbytes());
}

std::string without_layer(const std::string& name) {
  const std::string prefix = "layers.";
  if (name.rfind(prefix, 0) != 0) return name;
  const size_t dot = name.find('.', prefix.size());
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

namespace {

// "ffn.experts.17.w1" -> "ffn.experts"; "ffn.shared_experts.w1" -> "ffn.shared_experts".
std::string expert_module(const std::string& w1_name) {
  std::string m = without_layer(w1_name);
  const size_t e = m.find(".experts.");
  if (e != std::string::npos) return m.substr(0, e + 8);
  const size_t dot = m.rfind('.');
  return dot == std::string::npos ? m : m.substr(0, dot);
}

}  // namespace

std::string OpProfiler::scope_module() const { return without_layer(scope_); }

std::vector<OpProfiler::Row> OpProfiler::rows() const {
  std::vector<Row> v;
  for (const auto& [key, r] : rows_) v.push_back(r);
  std::sort(v.begin(), v.end(), [](const Row& a, const Row& b) { return a.seconds > b.seconds; });
  return v;
}

double OpProfiler::total_seconds() const {
  double s = 0;
  for (const auto& [key, r] : rows_) s += r.seconds;
  return s;
}

int64_t OpProfiler::total_calls() const {
  int64_t n = 0;
  for (const auto& [key, r] : rows_) n += r.calls;
  return n;
}

double OpProfiler::call_floor_seconds() {
  ops::ScratchFrame frame(inner_);
  const TensorView one = inner_.scratch(DType::kI32, {1});
  inner_.synchronize();
  std::vector<double> t;
  for (int i = 0; i < 50; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    inner_.iota(one, 0, 1);
    inner_.synchronize();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void OpProfiler::upload(const void* src, const TensorView& dst) {
  timed("upload", scope_module(), 0, [&] { inner_.upload(src, dst); });
}
void OpProfiler::download(const TensorView& src, void* dst) {
  timed("download", scope_module(), 0, [&] { inner_.download(src, dst); });
}
void OpProfiler::copy(const TensorView& src, const TensorView& dst) {
  timed("copy", scope_module(), 0, [&] { inner_.copy(src, dst); });
}
void OpProfiler::fill(const TensorView& dst, float value) {
  timed("fill", scope_module(), 0, [&] { inner_.fill(dst, value); });
}

void OpProfiler::embed(const TensorView& table, const TensorView& ids, const TensorView& out) {
  timed("embed", scope_module(), 0, [&] { inner_.embed(table, ids, out); });
}
void OpProfiler::hc_expand(const TensorView& e, const TensorView& X) {
  timed("hc_expand", scope_module(), 0, [&] { inner_.hc_expand(e, X); });
}
void OpProfiler::rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) {
  timed("rms_norm", scope_module(), 0, [&] { inner_.rms_norm(x, weight, eps, out); });
}
void OpProfiler::linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) {
  timed("linear", without_layer(w.name), linear_weight_bytes(w), [&] { inner_.linear(x, w, out); });
}
void OpProfiler::grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups,
                                const TensorView& out) {
  timed("grouped_linear", without_layer(w.name), linear_weight_bytes(w),
        [&] { inner_.grouped_linear(x, w, groups, out); });
}
void OpProfiler::rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
                      bool inverse) {
  timed(inverse ? "rope (inverse)" : "rope", scope_module(), 0,
        [&] { inner_.rope(x, positions, inv_freq, rope_dim, inverse); });
}
void OpProfiler::iota(const TensorView& out, int64_t start, int64_t step) {
  timed("iota", scope_module(), 0, [&] { inner_.iota(out, start, step); });
}
void OpProfiler::add(const TensorView& a, const TensorView& b, const TensorView& out) {
  timed("add", scope_module(), 0, [&] { inner_.add(a, b, out); });
}
void OpProfiler::qdq(const TensorView& x, ops::Qdq kind, int64_t n_nope) {
  timed("qdq", scope_module(), 0, [&] { inner_.qdq(x, kind, n_nope); });
}
void OpProfiler::hc_pre(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
                        const TensorView& x_in, const TensorView& post, const TensorView& comb) {
  timed("hc_pre", scope_module(), static_cast<double>(w.fn.nbytes()), [&] { inner_.hc_pre(X, w, p, x_in, post, comb); });
}
void OpProfiler::hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
                         const TensorView& X_out) {
  timed("hc_post", scope_module(), 0, [&] { inner_.hc_post(y, X, post, comb, X_out); });
}
void OpProfiler::hc_head(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
                         const TensorView& y) {
  timed("hc_head", scope_module(), static_cast<double>(w.fn.nbytes()), [&] { inner_.hc_head(X, w, p, y); });
}
void OpProfiler::attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                                 int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) {
  timed("attention_index", scope_module(), 0,
        [&] { inner_.attention_index(positions, n_prev, window, entry_base, n_entries, rate, selected, idx); });
}
void OpProfiler::sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries,
                                  const TensorView& idx, const TensorView& sink, float scale, const TensorView& out) {
  timed("sparse_attention", scope_module(), 0,
        [&] { inner_.sparse_attention(q, kv, entries, idx, sink, scale, out); });
}
void OpProfiler::compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                                const TensorView& positions, int64_t rate, bool overlap,
                                const ops::CompressorStateView& state, const TensorView& pooled,
                                const TensorView& entry_positions) {
  timed("compress_chunk", scope_module(), 0,
        [&] { inner_.compress_chunk(kv, gate, ape, positions, rate, overlap, state, pooled, entry_positions); });
}
void OpProfiler::scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) {
  timed("scatter_rows", scope_module(), 0, [&] { inner_.scatter_rows(src, keys, divisor, dst); });
}
void OpProfiler::indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                                float weight_scale, const TensorView& positions, int64_t rate,
                                const TensorView& scores) {
  timed("indexer_scores", scope_module(), 0,
        [&] { inner_.indexer_scores(q, keys, weights, weight_scale, positions, rate, scores); });
}
void OpProfiler::topk(const TensorView& values, int64_t k, const TensorView& out) {
  timed("topk", scope_module(), 0, [&] { inner_.topk(values, k, out); });
}
void OpProfiler::argmax_rows(const TensorView& values, const TensorView& out) {
  timed("argmax_rows", scope_module(), 0, [&] { inner_.argmax_rows(values, out); });
}
void OpProfiler::moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                           const TensorView& ids, float routed_scaling, const TensorView& idx,
                           const TensorView& weight) {
  timed("moe_route", scope_module(), 0,
        [&] { inner_.moe_route(logits, bias, tid2eid, ids, routed_scaling, idx, weight); });
}
void OpProfiler::moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts,
                             const TensorView& idx, const TensorView& weight, float swiglu_limit,
                             const TensorView& out) {
  // One token (decode): its top-k experts are distinct, so it reads k experts' weights.
  double bytes = 0;
  if (!experts.empty() && idx.rank() == 2 && idx.dim(0) == 1) {
    const ops::ExpertWeights& e = experts[0];
    bytes = static_cast<double>(idx.dim(1)) *
            (linear_weight_bytes(e.w1) + linear_weight_bytes(e.w3) + linear_weight_bytes(e.w2));
  }
  const std::string module = experts.empty() ? scope_module() : expert_module(experts[0].w1.name);
  timed("moe_experts", module, bytes, [&] { inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out); });
}
void OpProfiler::swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit,
                            const TensorView& out) {
  timed("swiglu_mlp", expert_module(w.w1.name),
        linear_weight_bytes(w.w1) + linear_weight_bytes(w.w3) + linear_weight_bytes(w.w2),
        [&] { inner_.swiglu_mlp(x, w, swiglu_limit, out); });
}

}  // namespace clawmine::cli
