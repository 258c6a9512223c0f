// Mixture of experts (spec §3.4, transformers-parity #31-#35): sqrt-softplus routing by hash table
// or by biased top-k, the clamped SwiGLU expert MLP, and the routed sum. Expert outputs are
// accumulated in float32 in ascending expert id, weight applied after w2, mirroring transformers'
// index_add_ order. Expert projections go through linear_rows, so they get the linear policy's
// activation transform per weight format (W8A8 for FP8/MXFP4 experts, W4A4 for NVFP4 experts).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/op_checks.h"
#include "core/error.h"

namespace clawmine::backend::cpu {
namespace {

// torch.nn.functional.softplus with beta 1, threshold 20.
double softplus_f64(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

void check_expert(const ExpertWeights& w, int64_t D, const char* what) {
  for (const LinearWeight* lw : {&w.w1, &w.w3, &w.w2}) {
    if (!lw->present()) throw Error(str_cat("cpu ", what, ": expert weight ", lw->name, " is missing"));
  }
  if (w.w1.in_features != D || w.w3.in_features != D || w.w3.out_features != w.w1.out_features ||
      w.w2.in_features != w.w1.out_features || w.w2.out_features != D)
    throw Error(str_cat("cpu ", what, ": expert ", w.w1.name, "/", w.w3.name, "/", w.w2.name, " shapes [",
                        w.w1.out_features, ", ", w.w1.in_features, "], [", w.w3.out_features, ", ",
                        w.w3.in_features, "], [", w.w2.out_features, ", ", w.w2.in_features,
                        "] do not fit hidden size ", D));
}

}  // namespace

void CpuBackend::swiglu_rows(const float* x, int64_t rows, const ExpertWeights& w, float swiglu_limit, float* out) {
  const int64_t I = w.w1.out_features;
  std::vector<float> gate(static_cast<size_t>(rows * I)), up(static_cast<size_t>(rows * I));
  linear_rows(x, rows, w.w1, gate.data());
  linear_rows(x, rows, w.w3, up.data());
  const double L = swiglu_limit;
  for (int64_t i = 0; i < rows * I; ++i) {
    const double g = std::min(static_cast<double>(gate[i]), L);
    const double u = std::clamp(static_cast<double>(up[i]), -L, L);
    gate[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
  }
  linear_rows(gate.data(), rows, w.w2, out);
}

void CpuBackend::swiglu_mlp(const TensorView& x, const ExpertWeights& w, float swiglu_limit, const TensorView& out) {
  const float* px = f32_arg(x, "swiglu_mlp", "x");
  float* po = f32_arg(out, "swiglu_mlp", "out");
  if (x.rank() < 1) throw Error("cpu swiglu_mlp: x must have at least one dimension");
  const int64_t D = x.dim(-1), T = D ? x.numel() / D : 0;
  check_expert(w, D, "swiglu_mlp");
  expect_numel(out, T * D, "swiglu_mlp", "out");
  swiglu_rows(px, T, w, swiglu_limit, po);
}

void CpuBackend::moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                           const TensorView& ids, float routed_scaling, const TensorView& idx,
                           const TensorView& weight) {
  const float* pl = f32_arg(logits, "moe_route", "logits");
  expect_rank(logits, 2, "moe_route", "logits");
  const int64_t T = logits.dim(0), E = logits.dim(1);
  int32_t* pi = i32_arg(idx, "moe_route", "idx");
  expect_rank(idx, 2, "moe_route", "idx");
  const int64_t K = idx.dim(1);
  expect_shape(idx, {T, K}, "moe_route", "idx");
  float* pw = f32_arg(weight, "moe_route", "weight");
  expect_numel(weight, T * K, "moe_route", "weight");
  const bool hash = !tid2eid.empty();
  const float* pb = nullptr;
  const int32_t* pid = nullptr;
  int64_t V = 0;
  if (hash) {
    host_arg(tid2eid, "moe_route", "tid2eid");
    if (tid2eid.dtype != DType::kI32 && tid2eid.dtype != DType::kI64)
      throw Error(str_cat("cpu moe_route: tid2eid has dtype ", dtype_name(tid2eid.dtype), ", expected I32/I64"));
    expect_rank(tid2eid, 2, "moe_route", "tid2eid");
    V = tid2eid.dim(0);
    if (tid2eid.dim(1) != K) expect_shape(tid2eid, {V, K}, "moe_route", "tid2eid");
    if (ids.empty() || ids.numel() != T)
      throw Error(str_cat("cpu moe_route: hash routing needs one token id per token, got ",
                          ids.empty() ? 0 : ids.numel(), " for ", T));
    pid = i32_arg(ids, "moe_route", "ids");
  } else {
    if (K > E) throw Error(str_cat("cpu moe_route: top-", K, " of ", E, " experts"));
    if (!bias.empty()) {
      pb = f32_arg(bias, "moe_route", "bias");
      expect_numel(bias, E, "moe_route", "bias");
    }
  }
  // Validate the hash table rows first so that errors are raised outside the worker threads.
  for (int64_t t = 0; hash && t < T; ++t) {
    if (pid[t] < 0 || pid[t] >= V)
      throw Error(str_cat("cpu moe_route: token id ", pid[t], " (position ", t, ") is outside tid2eid's ", V, " rows"));
    for (int64_t k = 0; k < K; ++k) {
      const size_t at = static_cast<size_t>(pid[t]) * K + k;
      const int64_t e = tid2eid.dtype == DType::kI64 ? tid2eid.as<int64_t>()[at] : tid2eid.as<int32_t>()[at];
      if (e < 0 || e >= E)
        throw Error(str_cat("cpu moe_route: tid2eid[", pid[t], ", ", k, "] = ", e, " is not an expert id in [0, ", E,
                            ")"));
      pi[t * K + k] = static_cast<int32_t>(e);
    }
  }
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    std::vector<float> a(static_cast<size_t>(E)), key(static_cast<size_t>(E));
    std::vector<int32_t> order(static_cast<size_t>(E));
    for (int64_t t = tb; t < te; ++t) {
      for (int64_t e = 0; e < E; ++e) {
        a[e] = static_cast<float>(std::sqrt(softplus_f64(pl[t * E + e])));
        key[e] = pb ? a[e] + pb[e] : a[e];  // float32 add, as torch's scores + bias
      }
      int32_t* sel = pi + t * K;
      if (!hash) {
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int32_t x, int32_t y) {
          return key[x] > key[y] || (key[x] == key[y] && x < y);
        });
        std::copy(order.begin(), order.begin() + K, sel);
      }
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += a[sel[k]];
      for (int64_t k = 0; k < K; ++k)
        pw[t * K + k] = static_cast<float>(a[sel[k]] / (sum + 1e-20) * static_cast<double>(routed_scaling));
    }
  });
}

void CpuBackend::moe_experts(const TensorView& x, const std::vector<ExpertWeights>& experts, const TensorView& idx,
                             const TensorView& weight, float swiglu_limit, const TensorView& out) {
  const float* px = f32_arg(x, "moe_experts", "x");
  expect_rank(x, 2, "moe_experts", "x");
  const int64_t T = x.dim(0), D = x.dim(1), E = static_cast<int64_t>(experts.size());
  i32_arg(idx, "moe_experts", "idx");
  expect_rank(idx, 2, "moe_experts", "idx");
  const int64_t K = idx.dim(1);
  expect_shape(idx, {T, K}, "moe_experts", "idx");
  const float* pw = f32_arg(weight, "moe_experts", "weight");
  expect_numel(weight, T * K, "moe_experts", "weight");
  float* po = f32_arg(out, "moe_experts", "out");
  expect_numel(out, T * D, "moe_experts", "out");
  const int32_t* pi = idx.as<int32_t>();
  // Occurrences (token, slot) per expert; tokens ascending, slots ascending within a token.
  std::vector<std::vector<int64_t>> occurrences(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = pi[t * K + k];
      if (e < 0 || e >= E)
        throw Error(str_cat("cpu moe_experts: expert id ", e, " at [", t, ", ", k, "] is outside [0, ", E, ")"));
      occurrences[e].push_back(t * K + k);
    }
  }
  std::fill(po, po + T * D, 0.0f);
  std::vector<float> xs, ys;
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<int64_t>& occ = occurrences[e];
    if (occ.empty()) continue;
    check_expert(experts[e], D, "moe_experts");
    const int64_t n = static_cast<int64_t>(occ.size());
    xs.resize(static_cast<size_t>(n * D));
    ys.resize(static_cast<size_t>(n * D));
    for (int64_t i = 0; i < n; ++i) std::copy_n(px + (occ[i] / K) * D, D, xs.data() + i * D);
    swiglu_rows(xs.data(), n, experts[e], swiglu_limit, ys.data());
    for (int64_t i = 0; i < n; ++i) {
      const float wk = pw[occ[i]];
      float* o = po + (occ[i] / K) * D;
      for (int64_t d = 0; d < D; ++d) o[d] += ys[i * D + d] * wk;  // float32, like index_add_ of y * w
    }
  }
}

}  // namespace clawmine::backend::cpu
