// CpuBackend construction and the lookup/elementwise ops: embed, hc_expand, iota, add and the
// official quantize-dequantize round trips (quant/qdq.h) applied row by row.
#include "backend/cpu/cpu_backend.h"

#include <limits>

#include "backend/cpu/op_checks.h"
#include "core/error.h"
#include "quant/qdq.h"

namespace clawmine {
namespace ops {

std::unique_ptr<Backend> make_cpu_backend(int num_threads) {
  return std::make_unique<backend::cpu::CpuBackend>(num_threads);
}

}  // namespace ops

namespace backend::cpu {

void CpuBackend::embed(const TensorView& table, const TensorView& ids, const TensorView& out) {
  expect_rank(table, 2, "embed", "table");
  if (table.dtype != DType::kF32 && table.dtype != DType::kBF16 && table.dtype != DType::kF16)
    throw Error(str_cat("cpu embed: table has dtype ", dtype_name(table.dtype), ", expected F32/BF16/F16"));
  host_arg(table, "embed", "table");
  const int32_t* pid = i32_arg(ids, "embed", "ids");
  const int64_t V = table.dim(0), D = table.dim(1), T = ids.numel();
  float* o = f32_arg(out, "embed", "out");
  expect_numel(out, T * D, "embed", "out");
  for (int64_t t = 0; t < T; ++t) {
    if (pid[t] < 0 || pid[t] >= V)
      throw Error(str_cat("cpu embed: token id ", pid[t], " (position ", t, ") is outside the vocabulary of size ", V));
  }
  pool_.parallel_for(0, T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const size_t row = static_cast<size_t>(pid[t]) * static_cast<size_t>(D);
      for (int64_t d = 0; d < D; ++d) o[t * D + d] = load_as_f32(table.data, table.dtype, row + d);
    }
  });
}

void CpuBackend::hc_expand(const TensorView& e, const TensorView& X) {
  const float* pe = f32_arg(e, "hc_expand", "e");
  float* px = f32_arg(X, "hc_expand", "X");
  expect_rank(X, 3, "hc_expand", "X");
  const int64_t T = X.dim(0), hc = X.dim(1), D = X.dim(2);
  expect_numel(e, T * D, "hc_expand", "e");
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < hc; ++j) std::copy(pe + t * D, pe + (t + 1) * D, px + (t * hc + j) * D);
}

void CpuBackend::iota(const TensorView& out, int64_t start, int64_t step) {
  int32_t* po = i32_arg(out, "iota", "out");
  const int64_t n = out.numel();
  const int64_t last = n ? start + (n - 1) * step : start;
  for (int64_t v : {start, last})
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
      throw Error(str_cat("cpu iota: value ", v, " does not fit in I32"));
  for (int64_t i = 0; i < n; ++i) po[i] = static_cast<int32_t>(start + i * step);
}

void CpuBackend::add(const TensorView& a, const TensorView& b, const TensorView& out) {
  const float* pa = f32_arg(a, "add", "a");
  const float* pb = f32_arg(b, "add", "b");
  float* po = f32_arg(out, "add", "out");
  const int64_t n = a.numel();
  expect_numel(b, n, "add", "b");
  expect_numel(out, n, "add", "out");
  for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
}

void CpuBackend::qdq(const TensorView& x, Qdq kind, int64_t n_nope) {
  if (kind == Qdq::kNone) return;
  float* px = f32_arg(x, "qdq", "x");
  if (x.rank() < 1) throw Error("cpu qdq: x must have at least one dimension");
  const int64_t width = x.dim(-1), rows = width ? x.numel() / width : 0;
  if (kind == Qdq::kFp8Nope && (n_nope < 0 || n_nope > width))
    throw Error(str_cat("cpu qdq: n_nope ", n_nope, " is outside [0, ", width, "]"));
  if (kind == Qdq::kHadamardFp4 && (width <= 0 || (width & (width - 1)) != 0))
    throw Error(str_cat("cpu qdq: the Hadamard round trip needs a power-of-two row width, got ", width));
  pool_.parallel_for(0, rows, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      float* row = px + r * width;
      if (kind == Qdq::kFp8Nope) {
        quant::fp8_qdq_blocks(row, n_nope, 64);
      } else {
        quant::hadamard_inplace(row, width);
        quant::fp4_qdq_blocks(row, width, 32);
      }
    }
  });
}

}  // namespace backend::cpu
}  // namespace clawmine
