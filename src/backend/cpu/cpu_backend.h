// The float32 reference backend: every op of ops::Backend written plainly, with long dot
// products accumulated in double and each output element computed by exactly one thread in a
// fixed order, so results are bit-identical for any thread count. The ops are defined in one
// file per family (linear.cpp, norm_rope.cpp, hyper_connection.cpp, attention.cpp, moe.cpp).
#pragma once

#include "core/thread_pool.h"
#include "ops/backend.h"

namespace clawmine::backend::cpu {

using ops::ExpertWeights;
using ops::HcParams;
using ops::HyperConnectionWeights;
using ops::LinearWeight;

class CpuBackend final : public ops::Backend {
 public:
  explicit CpuBackend(int num_threads) : pool_(num_threads) {}
  const char* name() const override { return "cpu"; }
  int num_threads() const { return pool_.num_threads(); }

  void embed(const TensorView& table, const std::vector<int32_t>& ids, const TensorView& out) override;
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) override;
  void linear(const TensorView& x, const LinearWeight& w, const TensorView& out) override;
  void grouped_linear(const TensorView& x, const LinearWeight& w, int64_t groups, const TensorView& out) override;
  void rope(const TensorView& x, const std::vector<int64_t>& positions, const std::vector<float>& inv_freq,
            int64_t rope_dim, bool inverse) override;
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override;
  void hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& x_in,
              const TensorView& post, const TensorView& comb) override;
  void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
               const TensorView& X_out) override;
  void hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& y) override;
  void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& idx, const TensorView& sink,
                        float scale, const TensorView& out) override;
  void compress_pool(const TensorView& kv, const TensorView& score, const TensorView& out) override;
  void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                      const std::vector<int64_t>& n_valid, const TensorView& scores) override;
  void topk(const TensorView& values, int64_t k, const TensorView& out) override;
  void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                 const std::vector<int32_t>& ids, float routed_scaling, const TensorView& idx,
                 const TensorView& weight) override;
  void moe_experts(const TensorView& x, const std::vector<ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override;
  void swiglu_mlp(const TensorView& x, const ExpertWeights& w, float swiglu_limit, const TensorView& out) override;

 private:
  // out[r, o] = x[r, :] . W[o, :] for r < rows; x [rows, in], out [rows, out] (raw F32 pointers).
  void linear_rows(const float* x, int64_t rows, const LinearWeight& w, float* out);
  // One clamped SwiGLU MLP over rows of x: out = w2(silu(min(w1 x, L)) * clamp(w3 x, -L, L)).
  void swiglu_rows(const float* x, int64_t rows, const ExpertWeights& w, float swiglu_limit, float* out);

  ThreadPool pool_;
};

}  // namespace clawmine::backend::cpu
