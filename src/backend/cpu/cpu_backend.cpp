// CpuBackend construction and the elementwise/lookup ops (embed, add).
#include "backend/cpu/cpu_backend.h"

#include "backend/cpu/op_checks.h"
#include "core/error.h"

namespace clawmine {
namespace ops {

std::unique_ptr<Backend> make_cpu_backend(int num_threads) {
  return std::make_unique<backend::cpu::CpuBackend>(num_threads);
}

}  // namespace ops

namespace backend::cpu {

void CpuBackend::embed(const TensorView& table, const std::vector<int32_t>& ids, const TensorView& out) {
  expect_rank(table, 2, "embed", "table");
  if (table.dtype != DType::kF32 && table.dtype != DType::kBF16 && table.dtype != DType::kF16)
    throw Error(str_cat("cpu embed: table has dtype ", dtype_name(table.dtype), ", expected F32/BF16/F16"));
  const int64_t V = table.dim(0), D = table.dim(1), T = static_cast<int64_t>(ids.size());
  float* o = f32_arg(out, "embed", "out");
  expect_numel(out, T * D, "embed", "out");
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= V)
      throw Error(str_cat("cpu embed: token id ", ids[t], " (position ", t, ") is outside the vocabulary of size ", V));
  }
  pool_.parallel_for(0, T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const size_t row = static_cast<size_t>(ids[t]) * static_cast<size_t>(D);
      for (int64_t d = 0; d < D; ++d) o[t * D + d] = load_as_f32(table.data, table.dtype, row + d);
    }
  });
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

}  // namespace backend::cpu
}  // namespace clawmine
