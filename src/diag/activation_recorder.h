// A Backend decorator that forwards every op to another backend and records, per quantized or
// dense linear (keyed by LinearWeight::name), statistics of the activations that enter it:
// amax, RMS, rows, non-finite count, and how many 16-blocks a static NVFP4 W4A4 scale would
// saturate. Routed experts are recorded per projection (`layers.N.ffn.experts.E.w1/w3`: the rows
// routed to E; `w2`: their SwiGLU hidden, recomputed through the inner backend's linear). Used by
// quantizer calibration (input_scale = amax/2688), the load audit, and the doctor. On a backend
// whose device() is not the CPU, activations are read back per op (diag/host_read.h).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "diag/forwarding_backend.h"
#include "diag/host_read.h"
#include "model/deepseek_v4/weights.h"
#include "ops/backend.h"

namespace clawmine::diag {

struct LinearActivationStats {
  std::string name;        // LinearWeight::name, e.g. "layers.0.attn.wq_a"
  std::string fused_name;  // LinearWeight::fused_name ("" if none)
  model::deepseek_v4::WeightFormat format = model::deepseek_v4::WeightFormat::kDense;
  int64_t in_features = 0;
  int64_t calls = 0;           // ops that fed this weight
  int64_t rows = 0;            // activation rows (tokens; tokens x groups for grouped_linear)
  float amax = 0.0f;           // max |x| over finite recorded values
  double sum_sq = 0.0;         // sum of x^2 over finite values (for rms())
  int64_t values = 0;          // number of values seen
  int64_t nonfinite = 0;       // NaN or Inf input values
  float input_scale = 0.0f;    // the weight's static NVFP4 input_scale (0: none or unreadable)
  int64_t blocks16 = 0;        // 16-blocks along K seen (NVFP4 weights with input_scale only)
  int64_t saturating_blocks16 = 0;  // of those, blocks with amax16 > 2688 * input_scale

  double rms() const;
  // observed amax / (2688 * input_scale): > 1 means static W4A4 scaling saturates. 0 without input_scale.
  double overflow_ratio() const;
  double saturating_fraction() const;  // saturating_blocks16 / blocks16 (0 when none seen)
  // "layers.0.attn.fused_wqa_wkv (shard wq_a)" when fused, else the name.
  std::string display_name() const;
};

// ModelOpt's static activation scale for an observed amax: amax / 2688. amax must be > 0 and
// finite (a projection that saw no tokens needs a fallback, e.g. NVIDIA's max over the other
// experts' amax of the same projection); otherwise clawmine::Error naming `what`.
float calibrated_input_scale(float amax, const std::string& what);

// The static input_scale of a LinearWeight as a float, or 0 when it has none. The scalar must be
// host memory (model weights, or WeightScalars::with_host_scalars for placed ones).
float read_input_scale(const model::deepseek_v4::LinearWeight& w);

class ActivationRecorder final : public ForwardingBackend {
 public:
  // `inner` must outlive the recorder. The recorder starts with inner's linear policy.
  explicit ActivationRecorder(ops::Backend& inner);

  // Statistics in first-seen order; find() by LinearWeight::name (nullptr if never fed).
  const std::vector<LinearActivationStats>& stats() const { return stats_; }
  const LinearActivationStats* find(const std::string& name) const;
  void clear();

  void linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) override;
  void grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups, const TensorView& out) override;
  void moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts, const TensorView& idx,
                   const TensorView& weight, float swiglu_limit, const TensorView& out) override;
  void swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit, const TensorView& out) override;

 private:
  // x [rows, w.in_features] F32 on the host.
  void record(const ops::LinearWeight& w, const float* x, int64_t rows);
  // Records w1/w3 on x [rows, D] and w2 on the recomputed SwiGLU hidden.
  void record_expert(const ops::ExpertWeights& w, const float* x, int64_t rows, float swiglu_limit);

  std::vector<LinearActivationStats> stats_;
  std::unordered_map<std::string, size_t> index_;
  WeightScalars scalars_;
};

}  // namespace clawmine::diag
