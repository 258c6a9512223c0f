// MoE sub-layer (spec §3.4): router scores sqrt(softplus(x Wg)); the first num_hash_layers
// layers pick experts by token id (tid2eid), the others by top-k of score + bias; selected
// weights are renormalized and scaled; routed SwiGLU experts (clamped) plus the shared expert
// (the caller adds the two).
#include "model/deepseek_v4/layer.h"

namespace clawmine::model::deepseek_v4 {

MoeOut moe(const LayerContext& c, const TensorView& h) {
  const ModelConfig& cfg = c.cfg;
  const MoeWeights& w = c.w.ffn;
  const int64_t T = h.dim(0), E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  const bool hash = cfg.mlp_layer_types[static_cast<size_t>(c.layer)] == MoeKind::kHash;
  const float limit = static_cast<float>(cfg.swiglu_limit);

  // The shared expert and the routed ones read h alone: at decode sizes they run on two branches.
  const bool branches = T <= kBranchMaxTokens;
  const TensorView routed = c.act({T, cfg.hidden_size}), shared = c.act({T, cfg.hidden_size});
  if (branches) c.be.branch(1);
  c.be.swiglu_mlp(h, w.shared_experts, limit, shared);
  if (branches) c.be.branch(0);

  const TensorView logits = c.be.scratch(DType::kF32, {T, E});
  c.be.linear(h, w.gate, logits);
  const TensorView idx = c.be.scratch(DType::kI32, {T, K}), weight = c.be.scratch(DType::kF32, {T, K});
  c.be.moe_route(logits, hash ? TensorView{} : w.gate_bias, hash ? w.tid2eid : TensorView{}, c.ids,
                 static_cast<float>(cfg.routed_scaling_factor), idx, weight);
  c.be.moe_experts(h, w.experts, idx, weight, limit, routed);
  if (branches) c.be.join_branches();
  return {routed, shared};
}

}  // namespace clawmine::model::deepseek_v4
