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

  const bool branches = T <= kBranchMaxTokens;
  const TensorView routed = c.act({T, cfg.hidden_size}), shared = c.act({T, cfg.hidden_size});
  const TensorView logits = c.be.scratch(DType::kF32, {T, E});
  const TensorView idx = c.be.scratch(DType::kI32, {T, K}), weight = c.be.scratch(DType::kF32, {T, K});
  c.be.moe_router(h, w.gate, hash ? TensorView{} : w.gate_bias, hash ? w.tid2eid : TensorView{}, c.ids,
                  static_cast<float>(cfg.routed_scaling_factor), logits, idx, weight);
  // The shared expert reads h alone: at decode sizes it runs on a branch of its own, forked after
  // the route so that the routed experts' first launch, ready at the same time, is not kept
  // waiting for multiprocessors by the shared expert's blocks (forked at the start it filled them
  // while the router ran). H100, decode b=1 with the shared gate/up as one paired streaming launch:
  // 7.09-7.17 -> 6.92-6.93 ms/token (docs/PERFORMANCE.md, sixteenth session).
  if (branches) c.be.branch(1);
  c.be.swiglu_mlp(h, w.shared_experts, limit, shared);
  if (branches) c.be.branch(0);
  c.be.moe_experts(h, w.experts, idx, weight, limit, routed);
  if (branches) c.be.join_branches();
  return {routed, shared};
}

}  // namespace clawmine::model::deepseek_v4
