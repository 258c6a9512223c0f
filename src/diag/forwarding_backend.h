// A Backend decorator base that forwards every op (and the policy and scope) to an inner backend;
// diagnostics decorators (doctor's local comparison and residual capture) override only the ops
// they look at.
#pragma once

#include <string>

#include "ops/backend.h"

namespace clawmine::diag {

class ForwardingBackend : public ops::Backend {
 public:
  explicit ForwardingBackend(ops::Backend& inner) : inner_(inner) { policy_ = inner.linear_policy(); }

  const char* name() const override { return inner_.name(); }
  void set_linear_policy(const ops::LinearPolicy& policy) override {
    policy_ = policy;
    inner_.set_linear_policy(policy);
  }
  void set_scope(std::string_view scope) override {
    scope_.assign(scope);
    inner_.set_scope(scope);
  }
  void embed(const TensorView& table, const std::vector<int32_t>& ids, const TensorView& out) override {
    inner_.embed(table, ids, out);
  }
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) override {
    inner_.rms_norm(x, weight, eps, out);
  }
  void linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) override {
    inner_.linear(x, w, out);
  }
  void grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups, const TensorView& out) override {
    inner_.grouped_linear(x, w, groups, out);
  }
  void rope(const TensorView& x, const std::vector<int64_t>& positions, const std::vector<float>& inv_freq,
            int64_t rope_dim, bool inverse) override {
    inner_.rope(x, positions, inv_freq, rope_dim, inverse);
  }
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override { inner_.add(a, b, out); }
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
  void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& idx, const TensorView& sink,
                        float scale, const TensorView& out) override {
    inner_.sparse_attention(q, kv, idx, sink, scale, out);
  }
  void compress_pool(const TensorView& kv, const TensorView& score, const TensorView& out) override {
    inner_.compress_pool(kv, score, out);
  }
  void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                      const std::vector<int64_t>& n_valid, const TensorView& scores) override {
    inner_.indexer_scores(q, keys, weights, n_valid, scores);
  }
  void topk(const TensorView& values, int64_t k, const TensorView& out) override { inner_.topk(values, k, out); }
  void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                 const std::vector<int32_t>& ids, float routed_scaling, const TensorView& idx,
                 const TensorView& weight) override {
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

}  // namespace clawmine::diag
