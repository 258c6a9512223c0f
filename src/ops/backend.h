// The narrow op interface between the model and a device. The model code (model/deepseek_v4)
// expresses the maths with these ops only; backend/cpu is the float32 reference that
// implements every op plainly, backend/cuda implements the same names (and may fuse behind
// them). Activations are F32 on the CPU backend. Shapes use the config's vocabulary:
// T tokens, D hidden, H heads, Dh head_dim, hc hyper-connection streams, E experts, K top-k.
// Tensor arguments are contiguous views; outputs are written, never read (poisoned in tests).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "model/deepseek_v4/weights.h"

namespace clawmine::ops {

using model::deepseek_v4::ExpertWeights;
using model::deepseek_v4::HyperConnectionWeights;
using model::deepseek_v4::LinearWeight;

struct HcParams {
  int64_t hc_mult = 4;
  int64_t sinkhorn_iters = 20;
  float hc_eps = 1e-6f;
  float rms_eps = 1e-6f;  // the unweighted RMS over the flattened streams uses rms_norm_eps
};

// How quantized linears treat activations (issue: quantized checkpoints). W4A16/W8A16 dequantize
// weights exactly and keep activations; W8A8 quantizes activations per token per 128 to E4M3
// with power-of-two (UE8M0) scales as the release does (FP8-block and MXFP4 linears); W4A4
// emulates a Blackwell NVFP4 GEMM: activations to E2M1 with E4M3 scales per 16 under a global
// scale g that is static (1/input_scale), dynamic (2688/amax per token) or auto (dynamic unless
// the weight's input_scale is present and trusted). Every conversion saturates; saturate=false
// (diagnostics and tests only) reproduces a non-saturating E4M3 cast and so its NaN.
enum class Nvfp4Path { kW4A16, kW4A4 };
enum class Fp8Path { kW8A16, kW8A8 };
enum class ActScale { kStatic, kDynamic, kAuto };
struct LinearPolicy {
  Nvfp4Path nvfp4 = Nvfp4Path::kW4A16;
  Fp8Path fp8 = Fp8Path::kW8A16;
  ActScale act_scale = ActScale::kAuto;
  bool saturate = true;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // Applies to every later linear, grouped_linear and expert projection.
  virtual void set_linear_policy(const LinearPolicy& policy) { policy_ = policy; }
  const LinearPolicy& linear_policy() const { return policy_; }

  // Names the model sub-step the next ops belong to ("layers.0.attn", "layers.3.ffn", "head"),
  // for diagnostics (diag/trace.h); compute backends ignore it. The view is copied if kept.
  virtual void set_scope(std::string_view scope) {}

  // out[t, :] = table[ids[t], :] as F32.  table [V, D] (BF16/F32/F16), out [T, D].
  // An id outside [0, V) is an error naming it.
  virtual void embed(const TensorView& table, const std::vector<int32_t>& ids, const TensorView& out) = 0;

  // out[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * weight  (weight null: weightless).
  // x, out [rows, n] (views of any rank: the last dim is n); weight [n] any float dtype. out may alias x.
  virtual void rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) = 0;

  // out = x @ W^T.  x [T, in] F32, out [T, out]; W dequantized exactly per w.format.
  virtual void linear(const TensorView& x, const LinearWeight& w, const TensorView& out) = 0;

  // Block-diagonal grouped projection (wo_a): W = w viewed [G, Lo, in_g];
  // out[t, g, :] = W[g] @ x[t, g, :].  x [T, G, in_g], out [T, G, Lo].
  virtual void grouped_linear(const TensorView& x, const LinearWeight& w, int64_t groups, const TensorView& out) = 0;

  // In place: interleaved-pair RoPE on the trailing rope_dim dims of every vector.
  // x [T, n_vec, dim] F32; angle(t, i) = float(inv_freq[i] * float(positions[t])) computed in
  // float32 (transformers-parity #14); pair i = (x[dim-rope_dim+2i], x[dim-rope_dim+2i+1]):
  // (a, b) -> (a cos - b sin, a sin + b cos); inverse uses -sin.  inv_freq has rope_dim/2 entries.
  virtual void rope(const TensorView& x, const std::vector<int64_t>& positions, const std::vector<float>& inv_freq,
                    int64_t rope_dim, bool inverse) = 0;

  // out = a + b, elementwise, same shapes. out may alias a or b.
  virtual void add(const TensorView& a, const TensorView& b, const TensorView& out) = 0;

  // Manifold-constrained hyper-connection pre-mix (spec §3.2):
  //   r = rsqrt(mean(X[t]^2 over hc*D) + rms_eps); mix = (X[t] flattened @ fn^T) * r      [(2+hc)*hc]
  //   pre[j] = sigmoid(mix[j]*scale[0] + base[j]) + hc_eps
  //   post[j] = 2*sigmoid(mix[hc+j]*scale[1] + base[hc+j])
  //   C[j][k] = softmax_k(mix[2hc + hc*j + k]*scale[2] + base[2hc + hc*j + k]) + hc_eps,
  //   then column-normalize, then (sinkhorn_iters-1) x (row-normalize, column-normalize), each /(sum + hc_eps)
  //   x_in[t, d] = sum_j pre[j] * X[t, j, d]
  // X [T, hc, D]; x_in [T, D]; post [T, hc]; comb [T, hc, hc] (row-major [j][k]).
  virtual void hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& x_in,
                      const TensorView& post, const TensorView& comb) = 0;
  // X_out[t, k, d] = post[t, k] * y[t, d] + sum_j comb[t, j, k] * X[t, j, d]   (note: comb transposed)
  // y [T, D]; X, X_out [T, hc, D] (X_out must not alias X).
  virtual void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
                       const TensorView& X_out) = 0;
  // y[t, d] = sum_j (sigmoid(mix[j]*scale[0] + base[j]) + hc_eps) * X[t, j, d] with mix as in hc_pre
  // (fn [hc, hc*D], base [hc], scale [1]).  X [T, hc, D]; y [T, D].
  virtual void hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p, const TensorView& y) = 0;

  // Sparse attention with a per-head sink (spec §3.3 F). For query t and head h over the key
  // rows kv[idx[t, s]] (s < S; idx -1 = skip):  l_s = (q[t,h] . kv[i_s]) * scale,
  //   out[t,h] = sum_s exp(l_s - M) kv[i_s] / (sum_s exp(l_s - M) + exp(sink[h] - M)), M = max(l, sink[h]).
  // K = V = kv rows. q [T, H, Dh]; kv [N, Dh]; idx [T, S] I32; sink [H] F32; out [T, H, Dh].
  // A query with no valid key gets out = 0.
  virtual void sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& idx,
                                const TensorView& sink, float scale, const TensorView& out) = 0;

  // Compressor pooling (spec §3.3 C): out[n, d] = sum_s softmax_s(score[n, s, d]) * kv[n, s, d];
  // per channel d, over the slot axis; slots with score -inf take no weight.
  // kv, score [N, S, d]; out [N, d].
  virtual void compress_pool(const TensorView& kv, const TensorView& score, const TensorView& out) = 0;

  // Lightning-indexer scores (spec §3.3 E, transformers-parity #24):
  //   scores[t, j] = sum_h relu(q[t,h] . keys[j]) * weights[t, h]   for j < n_valid[t], else -inf.
  // q [T, Hi, Di]; keys [N, Di]; weights [T, Hi] (already scaled); scores [T, N] F32.
  virtual void indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                              const std::vector<int64_t>& n_valid, const TensorView& scores) = 0;

  // Per row: the indices of the k largest finite values, largest first; ties go to the lower
  // index (a documented deterministic rule); -inf entries are never picked (their slots get -1).
  // values [T, N] F32; out [T, k] I32.
  virtual void topk(const TensorView& values, int64_t k, const TensorView& out) = 0;

  // MoE routing (spec §3.4): a = sqrt(softplus(logits)); selection = tid2eid[ids[t]] (hash,
  // when tid2eid is given) or top-k of a + bias (routed; ties -> lower expert id);
  // weights = a[sel] / (sum a[sel] + 1e-20) * routed_scaling.
  // logits [T, E] F32; bias [E] F32 or empty; tid2eid [V, K] I32/I64 or empty; idx [T, K] I32; weight [T, K] F32.
  virtual void moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                         const std::vector<int32_t>& ids, float routed_scaling, const TensorView& idx,
                         const TensorView& weight) = 0;

  // Routed experts: out[t] = sum_k weight[t,k] * expert_{idx[t,k]}(x[t]) summed in ascending
  // expert id, where expert(x) = w2( silu(min(x@w1^T, limit)) * clamp(x@w3^T, -limit, limit) ).
  // x [T, D]; idx, weight [T, K]; out [T, D].  A duplicated expert id counts once per occurrence.
  virtual void moe_experts(const TensorView& x, const std::vector<ExpertWeights>& experts, const TensorView& idx,
                           const TensorView& weight, float swiglu_limit, const TensorView& out) = 0;
  // One SwiGLU MLP with the same clamp (the shared expert): out = expert(x).  x [T, D]; out [T, D].
  virtual void swiglu_mlp(const TensorView& x, const ExpertWeights& w, float swiglu_limit, const TensorView& out) = 0;

 protected:
  LinearPolicy policy_;
};

std::unique_ptr<Backend> make_cpu_backend(int num_threads = 0);  // 0: hardware concurrency

}  // namespace clawmine::ops
