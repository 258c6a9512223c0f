// Doctor's local accuracy decorator: every op runs under the reference policy (W-A16: exact
// weights, float activations) and the model continues with its output; each quantized linear,
// grouped linear, routed-expert block and shared expert also runs under the quantized policy on
// the same backend with the same input (and the reference's routing) into scratch, and the two
// outputs are compared on the host. Errors are thus measured per op, not amplified by flipped
// decisions (testing-numerics.md). NVFP4 linears with a static input_scale are also tried with
// static and dynamic activation scales. Any backend: outputs are read back (diag/host_read.h).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "diag/forwarding_backend.h"
#include "diag/host_read.h"

namespace clawmine::diag {

struct AgreementSums {
  double ab = 0, aa = 0, bb = 0, dd = 0;
  bool non_finite = false;
  void add(const float* a, const float* ref, int64_t n);
  double cosine() const;
  double rel_err() const;
};

struct LocalOpAccuracy {
  std::string name;   // module ("layers.0.attn.fused_wqa_wkv (shard wq_a)", "layers.3.ffn.experts")
  std::string op;     // "linear", "grouped_linear", "moe_experts", "swiglu_mlp"
  std::string path;   // the quantized path's label
  int layer = -1;
  AgreementSums quant;                 // the chosen quantized policy
  AgreementSums w4a4_static, w4a4_dynamic;  // NVFP4 with input_scale only
  bool has_static = false;
};

class LocalCompare final : public ForwardingBackend {
 public:
  // `backend` (which must outlive this) runs the model under `ref` (a W-A16 policy) and each
  // quantized op again under `quant`, the policy being judged; it is left under `ref`.
  LocalCompare(ops::Backend& backend, const ops::LinearPolicy& ref, const ops::LinearPolicy& quant);
  const std::vector<LocalOpAccuracy>& results() const { return results_; }

  void linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) override;
  void grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups, const TensorView& out) override;
  void moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override;
  void swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit, const TensorView& out) override;

 private:
  LocalOpAccuracy& slot(const std::string& name, const char* op, const std::string& path);
  // Runs `op` under policy p (then back to the reference policy).
  template <typename Op>
  void under(const ops::LinearPolicy& p, Op op);
  ops::LinearPolicy ref_, quant_;
  WeightScalars scalars_;
  std::vector<LocalOpAccuracy> results_;
  std::unordered_map<std::string, size_t> index_;
};

int layer_index_of(const std::string& name);  // "layers.3.ffn.experts" -> 3; else -1

}  // namespace clawmine::diag
