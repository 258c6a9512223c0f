// rms_norm and rope. RMSNorm: sum of squares and the scaling in double, rounded once per output.
// RoPE: the angle is a float32 product (as transformers computes it, parity #14); cos/sin of that
// float are taken in double, rounded to float, and the rotation is done in double, rounded once.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/op_checks.h"
#include "core/error.h"

namespace clawmine::backend::cpu {

void CpuBackend::rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) {
  const float* px = f32_arg(x, "rms_norm", "x");
  float* po = f32_arg(out, "rms_norm", "out");
  if (x.rank() < 1) throw Error("cpu rms_norm: x must have at least one dimension");
  const int64_t n = x.dim(-1), rows = n ? x.numel() / n : 0;
  expect_numel(out, x.numel(), "rms_norm", "out");
  std::vector<double> w(static_cast<size_t>(n), 1.0);
  if (weight != nullptr) {
    expect_numel(*weight, n, "rms_norm", "weight");
    host_arg(*weight, "rms_norm", "weight");
    for (int64_t i = 0; i < n; ++i) w[i] = load_as_f32(weight->data, weight->dtype, static_cast<size_t>(i));
  }
  pool_.parallel_for(0, rows, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const float* xr = px + r * n;
      const double ms = dot_f64(xr, xr, n) / static_cast<double>(n);
      const double inv = 1.0 / std::sqrt(ms + static_cast<double>(eps));
      float* orow = po + r * n;  // may alias xr: each element is read before it is written
      for (int64_t i = 0; i < n; ++i) orow[i] = static_cast<float>(static_cast<double>(xr[i]) * inv * w[i]);
    }
  });
}

void CpuBackend::rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq,
                      int64_t rope_dim, bool inverse) {
  float* px = f32_arg(x, "rope", "x");
  expect_rank(x, 3, "rope", "x");
  const int64_t T = x.dim(0), V = x.dim(1), dim = x.dim(2), half = rope_dim / 2;
  if (rope_dim <= 0 || rope_dim % 2 != 0 || rope_dim > dim)
    throw Error(str_cat("cpu rope: rope_dim ", rope_dim, " must be even, positive and at most dim ", dim));
  const int32_t* pos = i32_arg(positions, "rope", "positions");
  expect_numel(positions, T, "rope", "positions");
  const float* freq = f32_arg(inv_freq, "rope", "inv_freq");
  expect_numel(inv_freq, half, "rope", "inv_freq");
  const double sign = inverse ? -1.0 : 1.0;
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    std::vector<double> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t t = tb; t < te; ++t) {
      const float p = static_cast<float>(pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = freq[i] * p;  // float32 product, like torch
        c[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
        s[i] = sign * static_cast<float>(std::sin(static_cast<double>(angle)));
      }
      for (int64_t v = 0; v < V; ++v) {
        float* r = px + (t * V + v) * dim + (dim - rope_dim);
        for (int64_t i = 0; i < half; ++i) {
          const double a = r[2 * i], b = r[2 * i + 1];
          r[2 * i] = static_cast<float>(a * c[i] - b * s[i]);
          r[2 * i + 1] = static_cast<float>(a * s[i] + b * c[i]);
        }
      }
    }
  });
}

}  // namespace clawmine::backend::cpu
