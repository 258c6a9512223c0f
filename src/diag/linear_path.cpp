#include "diag/linear_path.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/act_policy.h"
#include "backend/cpu/weight_decode.h"
#include "core/dtype.h"
#include "core/error.h"
#include "diag/activation_recorder.h"
#include "quant/act_quant.h"

namespace clawmine::diag {

using model::deepseek_v4::WeightFormat;

std::string linear_display_name(const model::deepseek_v4::LinearWeight& w) {
  return w.fused_name.empty() ? w.name : w.fused_name;
}

LinearPath linear_path(const ops::LinearPolicy& policy, const model::deepseek_v4::LinearWeight& w) {
  LinearPath p;
  const char* fmt = model::deepseek_v4::weight_format_name(w.format);
  if (w.format == WeightFormat::kDense) {
    p.label = str_cat("dense (", dtype_name(w.weight.dtype), ")");
    return p;
  }
  const char* wbits = w.format == WeightFormat::kFp8Block ? "W8" : "W4";
  p.input_scale = w.format == WeightFormat::kNvfp4 ? read_input_scale(w) : 0.0f;
  std::string act;
  try {
    const backend::cpu::ActTransform t = backend::cpu::resolve_act_transform(policy, w);
    switch (t.path) {
      case backend::cpu::ActPath::kNone: act = "A16"; break;
      case backend::cpu::ActPath::kFp8Block128: act = "A8"; break;
      case backend::cpu::ActPath::kNvfp4Static:
        act = "A4 static";
        p.w4a4 = p.static_scale = true;
        p.global = t.static_global;
        break;
      case backend::cpu::ActPath::kNvfp4Dynamic:
        act = "A4 dynamic";
        p.w4a4 = true;
        break;
    }
  } catch (const Error&) {
    act = "A4 static (invalid input_scale)";
    p.w4a4 = p.static_scale = true;
  }
  p.label = str_cat(wbits, act, " (", fmt, policy.saturate ? "" : ", non-saturating", ")");
  return p;
}

BlockScaleStats block_scale_stats(const float* x, int64_t rows, int64_t n, float global) {
  BlockScaleStats s;
  const int64_t B = quant::kNvfp4ActBlock;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    const float g = global > 0.0f ? global : quant::nvfp4_dynamic_global(xr, n);
    for (int64_t b = 0; b < n; b += B) {
      float amax16 = 0.0f;
      for (int64_t i = b; i < std::min(n, b + B); ++i)
        if (std::isfinite(xr[i])) amax16 = std::max(amax16, std::fabs(xr[i]));
      const double sf = static_cast<double>(g) * amax16 / 6.0;
      s.max_scale = std::max(s.max_scale, sf);
      ++s.blocks;
      if (sf > 448.0) ++s.over_448;
    }
  }
  return s;
}

int64_t first_non_finite_weight_row(const model::deepseek_v4::LinearWeight& w) {
  if (!w.present()) return -1;
  backend::cpu::validate_linear_weight(w);
  std::vector<float> row(static_cast<size_t>(w.in_features));
  for (int64_t o = 0; o < w.out_features; ++o) {
    backend::cpu::decode_row(w, o, row.data());
    for (float v : row)
      if (!std::isfinite(v)) return o;
  }
  return -1;
}

}  // namespace clawmine::diag
