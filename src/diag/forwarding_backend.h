// A Backend decorator base that forwards every member (device, memory, policy, scope and every
// op) to an inner backend; diagnostics decorators (the tracer, the activation recorder, doctor's
// local comparison and residual capture) override only the ops they look at. Tensors stay in the
// inner backend's memory: a decorator that reads one back goes through diag/host_read.h.
// Decode-step graphs (begin/end_step_graph) are not forwarded: decorators read tensors between
// ops, so the ops under a decorator always run eagerly.
#pragma once

#include <string>

#include "ops/backend.h"

namespace clawmine::diag {

class ForwardingBackend : public ops::Backend {
 public:
  explicit ForwardingBackend(ops::Backend& inner) : inner_(inner) { policy_ = inner.linear_policy(); }

  const char* name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  DType act_dtype() const override { return inner_.act_dtype(); }
  ops::Backend& inner() const { return inner_; }

  // ---- Memory: forwarded, never traced ----
  TensorView allocate(DType dtype, const Shape& shape) override { return inner_.allocate(dtype, shape); }
  void release(const TensorView& view) override { inner_.release(view); }
  TensorView scratch(DType dtype, const Shape& shape) override { return inner_.scratch(dtype, shape); }
  size_t scratch_mark() const override { return inner_.scratch_mark(); }
  void scratch_reset(size_t mark) override { inner_.scratch_reset(mark); }
  void upload(const void* src, const TensorView& dst) override { inner_.upload(src, dst); }
  void download(const TensorView& src, void* dst) override { inner_.download(src, dst); }
  void copy(const TensorView& src, const TensorView& dst) override { inner_.copy(src, dst); }
  void fill(const TensorView& dst, float value) override { inner_.fill(dst, value); }
  void synchronize() override { inner_.synchronize(); }

  void set_linear_policy(const ops::LinearPolicy& policy) override {
    policy_ = policy;
    inner_.set_linear_policy(policy);
  }
  void set_scope(std::string_view scope) override {
    scope_.assign(scope);
    inner_.set_scope(scope);
  }

  // ---- Ops ----
  void embed(const TensorView& table, const TensorView& ids, const TensorView& out) override {
    inner_.embed(table, ids, out);
  }
  void hc_expand(const TensorView& e, const TensorView& X) override { inner_.hc_expand(e, X); }
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) override {
    inner_.rms_norm(x, weight, eps, out);
  }
  void linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) override {
    inner_.linear(x, w, out);
  }
  void grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups, const TensorView& out) override {
    inner_.grouped_linear(x, w, groups, out);
  }
  void rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
            bool inverse) override {
    inner_.rope(x, positions, inv_freq, rope_dim, inverse);
  }
  void iota(const TensorView& out, int64_t start, int64_t step) override { inner_.iota(out, start, step); }
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override { inner_.add(a, b, out); }
  void qdq(const TensorView& x, ops::Qdq kind, int64_t n_nope) override { inner_.qdq(x, kind, n_nope); }
  void hc_pre(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
              const TensorView& x_in, const TensorView& post, const TensorView& comb) override {
    inner_.hc_pre(X, w, p, x_in, post, comb);
  }
  void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
               const TensorView& X_out) override {
    inner_.hc_post(y, X, post, comb, X_out);
  }
  void hc_head(const TensorView& X, const ops::HyperConnectionWeights& w, const ops::HcParams& p,
               const TensorView& y) override {
    inner_.hc_head(X, w, p, y);
  }
  void attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                       int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) override {
    inner_.attention_index(positions, n_prev, window, entry_base, n_entries, rate, selected, idx);
  }
  void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries, const TensorView& idx,
                        const TensorView& sink, float scale, const TensorView& out) override {
    inner_.sparse_attention(q, kv, entries, idx, sink, scale, out);
  }
  void compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape, const TensorView& positions,
                      int64_t rate, bool overlap, const ops::CompressorStateView& state, const TensorView& pooled,
                      const TensorView& entry_positions) override {
    inner_.compress_chunk(kv, gate, ape, positions, rate, overlap, state, pooled, entry_positions);
  }
  void scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) override {
    inner_.scatter_rows(src, keys, divisor, dst);
  }
  void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights, float weight_scale,
                      const TensorView& positions, int64_t rate, const TensorView& scores) override {
    inner_.indexer_scores(q, keys, weights, weight_scale, positions, rate, scores);
  }
  void topk(const TensorView& values, int64_t k, const TensorView& out) override { inner_.topk(values, k, out); }
  void argmax_rows(const TensorView& values, const TensorView& out) override { inner_.argmax_rows(values, out); }
  void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid, const TensorView& ids,
                 float routed_scaling, const TensorView& idx, const TensorView& weight) override {
    inner_.moe_route(logits, bias, tid2eid, ids, routed_scaling, idx, weight);
  }
  void moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override {
    inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out);
  }
  void swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit, const TensorView& out) override {
    inner_.swiglu_mlp(x, w, swiglu_limit, out);
  }

 protected:
  ops::Backend& inner_;
  std::string scope_;
};

// Puts a backend's linear policy back on scope exit: diagnostics that switch the policy of a
// backend they were lent (the doctor, the replay explainer) leave it as they found it.
class LinearPolicyRestore {
 public:
  explicit LinearPolicyRestore(ops::Backend& be) : be_(be), saved_(be.linear_policy()) {}
  LinearPolicyRestore(const LinearPolicyRestore&) = delete;
  LinearPolicyRestore& operator=(const LinearPolicyRestore&) = delete;
  ~LinearPolicyRestore() { be_.set_linear_policy(saved_); }

 private:
  ops::Backend& be_;
  ops::LinearPolicy saved_;
};

}  // namespace clawmine::diag
