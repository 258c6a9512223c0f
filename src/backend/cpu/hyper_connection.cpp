// Manifold-constrained hyper-connections (spec §3.2, transformers-parity #3-#7): hc_pre (RMS-scaled
// mix, pre/post gates, Sinkhorn-normalized comb, stream collapse), hc_post (comb used transposed)
// and hc_head. All per-token maths in double, rounded once to the float outputs; parallel over tokens.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/op_checks.h"
#include "core/error.h"

namespace clawmine::backend::cpu {
namespace {

// mix[m] = (xf . fn[m]) * rsqrt(mean(xf^2) + rms_eps) for m < n_mix.  xf [n], fn [n_mix, n].
void hc_mix(const float* xf, int64_t n, const float* fn, int64_t n_mix, float rms_eps, double* mix) {
  const double r = 1.0 / std::sqrt(dot_f64(xf, xf, n) / static_cast<double>(n) + static_cast<double>(rms_eps));
  for (int64_t m = 0; m < n_mix; ++m) mix[m] = dot_f64(xf, fn + m * n, n) * r;
}

// C [hc, hc] row-major [j][k], in: the logits; out: softmax over k + eps, one column
// normalization, then (iters-1) x (row, column) normalizations, each dividing by (sum + eps).
void sinkhorn(double* C, int64_t hc, int64_t iters, double eps) {
  for (int64_t j = 0; j < hc; ++j) {
    double* row = C + j * hc;
    const double mx = *std::max_element(row, row + hc);
    double sum = 0;
    for (int64_t k = 0; k < hc; ++k) sum += (row[k] = std::exp(row[k] - mx));
    for (int64_t k = 0; k < hc; ++k) row[k] = row[k] / sum + eps;
  }
  auto normalize_columns = [&] {
    for (int64_t k = 0; k < hc; ++k) {
      double sum = 0;
      for (int64_t j = 0; j < hc; ++j) sum += C[j * hc + k];
      for (int64_t j = 0; j < hc; ++j) C[j * hc + k] /= sum + eps;
    }
  };
  normalize_columns();
  for (int64_t it = 1; it < iters; ++it) {
    for (int64_t j = 0; j < hc; ++j) {
      double sum = 0;
      for (int64_t k = 0; k < hc; ++k) sum += C[j * hc + k];
      for (int64_t k = 0; k < hc; ++k) C[j * hc + k] /= sum + eps;
    }
    normalize_columns();
  }
}

struct HcShapes {
  int64_t T, hc, D;
};

HcShapes check_streams(const TensorView& X, int64_t hc_mult, const char* op) {
  f32_arg(X, op, "X");
  expect_rank(X, 3, op, "X");
  if (X.dim(1) != hc_mult)
    throw Error(str_cat("cpu ", op, ": X has shape ", shape_str(X.shape), " but hc_mult is ", hc_mult));
  return {X.dim(0), X.dim(1), X.dim(2)};
}

}  // namespace

void CpuBackend::hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                        const TensorView& x_in, const TensorView& post, const TensorView& comb) {
  const auto [T, hc, D] = check_streams(X, p.hc_mult, "hc_pre");
  const int64_t n_mix = (2 + hc) * hc;
  if (p.sinkhorn_iters < 1) throw Error(str_cat("cpu hc_pre: sinkhorn_iters ", p.sinkhorn_iters, " must be >= 1"));
  const float* px = X.f32();
  const float* fn = f32_arg(w.fn, "hc_pre", "fn");
  const float* base = f32_arg(w.base, "hc_pre", "base");
  const float* scale = f32_arg(w.scale, "hc_pre", "scale");
  expect_shape(w.fn, {n_mix, hc * D}, "hc_pre", "fn");
  expect_numel(w.base, n_mix, "hc_pre", "base");
  expect_numel(w.scale, 3, "hc_pre", "scale");
  float* pxi = f32_arg(x_in, "hc_pre", "x_in");
  float* ppost = f32_arg(post, "hc_pre", "post");
  float* pcomb = f32_arg(comb, "hc_pre", "comb");
  expect_numel(x_in, T * D, "hc_pre", "x_in");
  expect_numel(post, T * hc, "hc_pre", "post");
  expect_numel(comb, T * hc * hc, "hc_pre", "comb");
  const double hc_eps = p.hc_eps;
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    std::vector<double> mix(static_cast<size_t>(n_mix)), pre(static_cast<size_t>(hc));
    for (int64_t t = tb; t < te; ++t) {
      const float* xt = px + t * hc * D;
      hc_mix(xt, hc * D, fn, n_mix, p.rms_eps, mix.data());
      for (int64_t j = 0; j < hc; ++j) {
        pre[j] = sigmoid_f64(mix[j] * scale[0] + base[j]) + hc_eps;
        ppost[t * hc + j] = static_cast<float>(2.0 * sigmoid_f64(mix[hc + j] * scale[1] + base[hc + j]));
      }
      double* C = mix.data() + 2 * hc;
      for (int64_t m = 0; m < hc * hc; ++m) C[m] = C[m] * scale[2] + base[2 * hc + m];
      sinkhorn(C, hc, p.sinkhorn_iters, hc_eps);
      for (int64_t m = 0; m < hc * hc; ++m) pcomb[t * hc * hc + m] = static_cast<float>(C[m]);
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < hc; ++j) acc += pre[j] * xt[j * D + d];
        pxi[t * D + d] = static_cast<float>(acc);
      }
    }
  });
}

void CpuBackend::hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
                         const TensorView& X_out) {
  f32_arg(X, "hc_post", "X");
  expect_rank(X, 3, "hc_post", "X");
  const int64_t T = X.dim(0), hc = X.dim(1), D = X.dim(2);
  const float* py = f32_arg(y, "hc_post", "y");
  const float* px = X.f32();
  const float* ppost = f32_arg(post, "hc_post", "post");
  const float* pcomb = f32_arg(comb, "hc_post", "comb");
  float* po = f32_arg(X_out, "hc_post", "X_out");
  expect_numel(y, T * D, "hc_post", "y");
  expect_numel(post, T * hc, "hc_post", "post");
  expect_numel(comb, T * hc * hc, "hc_post", "comb");
  expect_numel(X_out, T * hc * D, "hc_post", "X_out");
  if (static_cast<const void*>(po) == static_cast<const void*>(px))
    throw Error("cpu hc_post: X_out must not alias X");
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const float* C = pcomb + t * hc * hc;
      const float* xt = px + t * hc * D;
      for (int64_t k = 0; k < hc; ++k) {
        const double pk = ppost[t * hc + k];
        for (int64_t d = 0; d < D; ++d) {
          double acc = pk * py[t * D + d];
          for (int64_t j = 0; j < hc; ++j) acc += static_cast<double>(C[j * hc + k]) * xt[j * D + d];
          po[(t * hc + k) * D + d] = static_cast<float>(acc);
        }
      }
    }
  });
}

void CpuBackend::hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                         const TensorView& y) {
  const auto [T, hc, D] = check_streams(X, p.hc_mult, "hc_head");
  const float* px = X.f32();
  const float* fn = f32_arg(w.fn, "hc_head", "fn");
  const float* base = f32_arg(w.base, "hc_head", "base");
  const float* scale = f32_arg(w.scale, "hc_head", "scale");
  expect_shape(w.fn, {hc, hc * D}, "hc_head", "fn");
  expect_numel(w.base, hc, "hc_head", "base");
  if (w.scale.numel() < 1) throw Error("cpu hc_head: scale is empty");
  float* py = f32_arg(y, "hc_head", "y");
  expect_numel(y, T * D, "hc_head", "y");
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    std::vector<double> pre(static_cast<size_t>(hc));
    for (int64_t t = tb; t < te; ++t) {
      const float* xt = px + t * hc * D;
      hc_mix(xt, hc * D, fn, hc, p.rms_eps, pre.data());
      for (int64_t j = 0; j < hc; ++j) pre[j] = sigmoid_f64(pre[j] * scale[0] + base[j]) + p.hc_eps;
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < hc; ++j) acc += pre[j] * xt[j * D + d];
        py[t * D + d] = static_cast<float>(acc);
      }
    }
  });
}

}  // namespace clawmine::backend::cpu
