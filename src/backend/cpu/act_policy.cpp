#include "backend/cpu/act_policy.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/act_quant.h"

namespace clawmine::backend::cpu {

using model::deepseek_v4::WeightFormat;

const char* act_path_name(ActPath p) {
  switch (p) {
    case ActPath::kNone: return "A16";
    case ActPath::kFp8Block128: return "A8 (FP8 per 128)";
    case ActPath::kNvfp4Static: return "A4 static";
    case ActPath::kNvfp4Dynamic: return "A4 dynamic";
  }
  return "?";
}

ActTransform resolve_act_transform(const ops::LinearPolicy& policy, const ops::LinearWeight& w) {
  ActTransform t;
  t.saturate = policy.saturate;
  switch (w.format) {
    case WeightFormat::kDense:
      return t;
    case WeightFormat::kFp8Block:
    case WeightFormat::kMxfp4:
      if (policy.fp8 == ops::Fp8Path::kW8A8) t.path = ActPath::kFp8Block128;
      return t;
    case WeightFormat::kNvfp4:
      break;
  }
  if (policy.nvfp4 == ops::Nvfp4Path::kW4A16) return t;
  const bool has_scale = !w.input_scale.empty() && w.input_scale.numel() >= 1;
  const float s = has_scale ? load_as_f32(w.input_scale.data, w.input_scale.dtype, 0) : 0.0f;
  const bool valid = has_scale && std::isfinite(s) && s > 0.0f && std::isfinite(1.0f / s);
  if (policy.act_scale == ops::ActScale::kStatic) {
    if (!has_scale)
      throw Error(str_cat("linear ", w.name, ": --act-scale static needs the checkpoint's input_scale, which ", w.name,
                          " does not have (use --act-scale dynamic or auto)"));
    if (!valid)
      throw Error(str_cat("linear ", w.name, ": --act-scale static cannot use input_scale = ", s,
                          " (must be finite and > 0; use --act-scale dynamic or auto)"));
  }
  const bool use_static = policy.act_scale == ops::ActScale::kStatic ||
                          (policy.act_scale == ops::ActScale::kAuto && valid && w.input_scale_trusted);
  if (use_static) {
    t.path = ActPath::kNvfp4Static;
    t.static_global = 1.0f / s;
  } else {
    t.path = ActPath::kNvfp4Dynamic;
  }
  return t;
}

const float* apply_act_transform(const ActTransform& t, const float* x, int64_t rows, int64_t n,
                                 std::vector<float>& scratch, ThreadPool& pool) {
  if (t.path == ActPath::kNone) return x;
  scratch.assign(x, x + rows * n);
  float* xs = scratch.data();
  pool.parallel_for(0, rows, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      float* row = xs + r * n;
      switch (t.path) {
        case ActPath::kFp8Block128:
          quant::fp8_act_qdq_row(row, n);
          break;
        case ActPath::kNvfp4Static:
          quant::nvfp4_act_qdq_row(row, n, t.static_global, t.saturate);
          break;
        case ActPath::kNvfp4Dynamic:
          quant::nvfp4_act_qdq_row(row, n, quant::nvfp4_dynamic_global(row, n), t.saturate);
          break;
        case ActPath::kNone:
          break;
      }
    }
  });
  return xs;
}

}  // namespace clawmine::backend::cpu
