// How a linear runs under a LinearPolicy, in words, and what its activation scales do to a given
// input: the compute-path label ("W4A4 static (nvfp4)", "W8A16 (fp8-block)", "dense (bf16)") and,
// for NVFP4 W4A4, the activation block scales SF = g*amax16/6 that a 16-block reaches against
// E4M3's 448 (quant-numerics.md §2.4). Shared by the trace, the locator and the doctor.
#pragma once

#include <cstdint>
#include <string>

#include "model/deepseek_v4/weights.h"
#include "ops/backend.h"

namespace clawmine::diag {

// "layers.0.attn.fused_wqa_wkv" for a fused shard, else LinearWeight::name.
std::string linear_display_name(const model::deepseek_v4::LinearWeight& w);

struct LinearPath {
  std::string label;        // "W4A4 static (nvfp4)"
  bool w4a4 = false;
  bool static_scale = false;
  float input_scale = 0.0f;  // the weight's static input_scale (0: none or invalid)
  float global = 0.0f;       // static g = 1/input_scale (0 when dynamic or none)
};
// w's scalars (input_scale) must be host memory: model weights, or WeightScalars (host_read.h)
// for weights placed on a device.
LinearPath linear_path(const ops::LinearPolicy& policy, const model::deepseek_v4::LinearWeight& w);

// Block-scale analysis of x [rows, n] under a static global g: the largest unclamped scale
// g*amax16/6 and the 16-blocks above 448. With g == 0 the per-row dynamic g = 2688/amax(row).
struct BlockScaleStats {
  double max_scale = 0.0;
  int64_t blocks = 0;
  int64_t over_448 = 0;
};
BlockScaleStats block_scale_stats(const float* x, int64_t rows, int64_t n, float global);

// The first weight row holding NaN/Inf after exact decoding, or -1. w must be host memory
// (HostLinearWeight in host_read.h downloads a placed one).
int64_t first_non_finite_weight_row(const model::deepseek_v4::LinearWeight& w);

}  // namespace clawmine::diag
