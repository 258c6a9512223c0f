// The doctor's static audit: every bound weight is decoded and checked for NaN/Inf (naming the
// tensor and row), NVFP4 input scales are checked for being usable, and each linear's storage and
// compute paths are listed.
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "diag/activation_recorder.h"
#include "diag/doctor_passes.h"
#include "diag/linear_path.h"
#include "diag/local_compare.h"
#include "model/deepseek_v4/weight_walk.h"

namespace clawmine::diag {

using namespace model::deepseek_v4;

namespace {

// Index of the first non-finite element of a float tensor, or -1 (integer tensors: -1).
int64_t first_non_finite(const TensorView& t) {
  if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16) return -1;
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(load_as_f32(t.data, t.dtype, static_cast<size_t>(i)))) return i;
  return -1;
}

}  // namespace

void static_audit(const Model& model, const ops::LinearPolicy& ref, const ops::LinearPolicy& quant,
                  DoctorReport& r) {
  for_each_weight(model.weights(), [&](const WeightRef& ref_w) {
    const int layer = layer_index_of(ref_w.name);
    if (ref_w.linear) {
      const LinearWeight& w = *ref_w.linear;
      ModuleRow m;
      m.name = linear_display_name(w) + (w.fused_name.empty() ? "" : str_cat(" (shard ", w.name, ")"));
      m.family = weight_family_name(ref_w.family);
      m.format = weight_format_name(w.format);
      m.dtype = std::string(dtype_name(w.weight.dtype));
      m.shape = str_cat("[", w.out_features, ", ", w.in_features, "]");
      m.path_default = linear_path(ref, w).label;
      m.path_quant = linear_path(quant, w).label;
      r.modules.push_back(std::move(m));
      const int64_t row = first_non_finite_weight_row(w);
      if (row >= 0)
        r.findings.push_back({Severity::kCritical, layer, 1.0, w.name + ".weight",
                              str_cat("weight tensor ", w.name, ".weight holds NaN/Inf (first in row ", row,
                                      " after decoding ", weight_format_name(w.format), ")"),
                              "re-export or re-download the checkpoint: this tensor is corrupt"});
      if (w.format == WeightFormat::kNvfp4 && !w.input_scale.empty() && read_input_scale(w) == 0.0f)
        r.findings.push_back({Severity::kError, layer, 0.5, w.name + ".input_scale",
                              str_cat(w.name, ".input_scale is not a finite positive number: W4A4 static cannot use it"),
                              "run with --act-scale dynamic (auto does this), or on W4A16"});
      return;
    }
    const int64_t i = first_non_finite(*ref_w.tensor);
    if (i >= 0)
      r.findings.push_back({Severity::kCritical, layer, 1.0, ref_w.name,
                            str_cat("tensor ", ref_w.name, " holds NaN/Inf (first at flat index ", i, ")"),
                            "re-export or re-download the checkpoint: this tensor is corrupt"});
  });
}

}  // namespace clawmine::diag
