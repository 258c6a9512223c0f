// linear and grouped_linear: the token rows first get the activation transform the linear
// policy picks for the weight's format (act_policy.h), then each weight row is decoded once per
// call into a per-thread float scratch row (weight_decode.h) and dotted, in double, with every
// token row. Parallel over output features.
#include <vector>

#include "backend/cpu/act_policy.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/op_checks.h"
#include "backend/cpu/weight_decode.h"
#include "core/error.h"

namespace clawmine::backend::cpu {
namespace {

// The CPU decodes weights from host memory (placed device copies are for other backends).
void expect_host_weight(const LinearWeight& w) {
  for (const TensorView* t : {&w.weight, &w.scale, &w.weight_scale_2, &w.input_scale})
    if (!t->empty() && t->device != Device::kCpu)
      throw Error(str_cat("cpu linear ", w.name, ": weight tensors are not in host memory"));
}

}  // namespace

void CpuBackend::linear_rows(const float* x, int64_t rows, const LinearWeight& w, float* out) {
  validate_linear_weight(w);
  expect_host_weight(w);
  const int64_t O = w.out_features, I = w.in_features;
  std::vector<float> xq;
  x = apply_act_transform(resolve_act_transform(policy_, w), x, rows, I, xq, pool_);
  pool_.parallel_for(0, O, [&](int64_t ob, int64_t oe) {
    std::vector<float> row(static_cast<size_t>(I));
    for (int64_t o = ob; o < oe; ++o) {
      decode_row(w, o, row.data());
      for (int64_t r = 0; r < rows; ++r) out[r * O + o] = static_cast<float>(dot_f64(x + r * I, row.data(), I));
    }
  });
}

void CpuBackend::linear(const TensorView& x, const LinearWeight& w, const TensorView& out) {
  const float* px = f32_arg(x, "linear", "x");
  float* po = f32_arg(out, "linear", "out");
  if (x.rank() < 1 || x.dim(-1) != w.in_features)
    throw Error(str_cat("cpu linear ", w.name, ": x has shape ", shape_str(x.shape), ", expected last dim ",
                        w.in_features));
  const int64_t rows = x.numel() / w.in_features;
  if (out.numel() != rows * w.out_features || out.dim(-1) != w.out_features)
    throw Error(str_cat("cpu linear ", w.name, ": out has shape ", shape_str(out.shape), ", expected [", rows, ", ",
                        w.out_features, "]"));
  linear_rows(px, rows, w, po);
}

void CpuBackend::grouped_linear(const TensorView& x, const LinearWeight& w, int64_t groups, const TensorView& out) {
  const float* px = f32_arg(x, "grouped_linear", "x");
  float* po = f32_arg(out, "grouped_linear", "out");
  validate_linear_weight(w);
  expect_host_weight(w);
  if (groups <= 0 || w.out_features % groups != 0)
    throw Error(str_cat("cpu grouped_linear ", w.name, ": out_features ", w.out_features, " not divisible into ",
                        groups, " groups"));
  const int64_t G = groups, Lo = w.out_features / G, In = w.in_features;
  if (x.numel() % (G * In) != 0 || x.dim(-1) != In)
    throw Error(str_cat("cpu grouped_linear ", w.name, ": x has shape ", shape_str(x.shape), ", expected [T, ", G,
                        ", ", In, "]"));
  const int64_t T = x.numel() / (G * In);
  expect_numel(out, T * G * Lo, "grouped_linear", "out");
  // Each (token, group) row is one activation row of its group's GEMM.
  std::vector<float> xq;
  px = apply_act_transform(resolve_act_transform(policy_, w), px, T * G, In, xq, pool_);
  // Row r = g*Lo + l of W belongs to group g: out[t, g, l] = W[r] . x[t, g, :].
  pool_.parallel_for(0, w.out_features, [&](int64_t rb, int64_t re) {
    std::vector<float> row(static_cast<size_t>(In));
    for (int64_t r = rb; r < re; ++r) {
      decode_row(w, r, row.data());
      const int64_t g = r / Lo;
      for (int64_t t = 0; t < T; ++t)
        po[t * G * Lo + r] = static_cast<float>(dot_f64(px + (t * G + g) * In, row.data(), In));
    }
  });
}

}  // namespace clawmine::backend::cpu
