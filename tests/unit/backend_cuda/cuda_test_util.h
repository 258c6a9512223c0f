// Helpers for the GPU op tests: every CUDA op is checked against the CPU reference backend on
// the same fresh random inputs. Tests derive from GpuTest, which skips cleanly (GTEST_SKIP)
// when no CUDA device is present, so the suite passes on CPU-only CI and runs on the device.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device.h"
#include "backend/cuda/op_errors.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "model/deepseek_v4/weights.h"
#include "ops/backend.h"
#include "support/test_support.h"

namespace clawmine::test {

// The options of a CUDA backend for whole-model tests: 30% of the GPU's memory, the given
// activations, graphs on or off.
inline backend::cuda::CudaOptions model_cuda_options(DType act, bool graphs) {
  backend::cuda::CudaOptions o;
  o.memory_fraction = 0.3;
  o.act_dtype = act;
  o.graphs = graphs;
  return o;
}
inline std::unique_ptr<ops::Backend> model_cuda_backend(DType act, bool graphs) {
  return backend::cuda::make_cuda_backend(model_cuda_options(act, graphs));
}

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (backend::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    cpu = ops::make_cpu_backend(0);
    backend::cuda::CudaOptions o;
    o.memory_fraction = 0.5;
    o.act_dtype = DType::kF32;
    cuda = backend::cuda::make_cuda_backend(o);
  }
  std::unique_ptr<ops::Backend> cpu, cuda;
};

// Host bytes of any dtype with a view.
struct HostBytes {
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<uint8_t> bytes;
  HostBytes() = default;
  HostBytes(DType t, Shape s) : dtype(t), shape(std::move(s)), bytes(shape_numel(shape) * dtype_size(t)) {}
  TensorView view() const { return TensorView{dtype, Device::kCpu, shape, const_cast<uint8_t*>(bytes.data())}; }
};

// F32 host values converted to `as` (F32 or BF16 or F16) and uploaded to a fresh long-lived buffer.
inline ops::DeviceBuffer upload_f32(ops::Backend& be, const std::vector<float>& v, const Shape& shape,
                                    DType as = DType::kF32) {
  ops::DeviceBuffer d(be, as, shape);
  std::vector<uint16_t> half;
  const void* src = v.data();
  if (as == DType::kBF16 || as == DType::kF16) {
    half.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) half[i] = as == DType::kBF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
    src = half.data();
  }
  be.upload(src, d.view());
  return d;
}
// Raw host bytes (any dtype, e.g. I32 indices, packed FP4, E4M3 scales) uploaded as they are.
inline ops::DeviceBuffer upload_raw(ops::Backend& be, const TensorView& host) {
  ops::DeviceBuffer d(be, host.dtype, host.shape);
  be.upload(host.data, d.view());
  return d;
}
// A device buffer filled with NaN (F32/BF16/F16) or 0x7f7f7f7f bytes (integers): poisoned output.
inline ops::DeviceBuffer poisoned(ops::Backend& be, DType dtype, const Shape& shape) {
  ops::DeviceBuffer d(be, dtype, shape);
  if (dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16) {
    be.fill(d.view(), std::nanf(""));
  } else {
    std::vector<uint8_t> junk(d.view().nbytes(), 0x7f);
    be.upload(junk.data(), d.view());
  }
  return d;
}
// Downloads a float tensor (F32/BF16/F16) as F32 values.
inline std::vector<float> download_f32(ops::Backend& be, const TensorView& d) {
  std::vector<uint8_t> raw(d.nbytes());
  be.download(d, raw.data());
  std::vector<float> out(static_cast<size_t>(d.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = load_as_f32(raw.data(), d.dtype, i);
  return out;
}
template <typename T>
std::vector<T> download_as(ops::Backend& be, const TensorView& d) {
  std::vector<T> out(d.nbytes() / sizeof(T));
  be.download(d, out.data());
  return out;
}

// ||got - ref|| / ||ref|| in double; +inf if any element of got is not finite where ref is.
// The data error a kernel recorded since the last check, as the next synchronizing call reports it
// ("" when none): synchronize() raises it where memory.cu checks op errors, else check_op_errors does.
inline std::string reported_op_error(ops::Backend& be) {
  try {
    be.synchronize();
    backend::cuda::check_op_errors(be);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline double rel_l2(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isfinite(ref[i]) && !std::isfinite(got[i])) return INFINITY;
    if (!std::isfinite(ref[i])) {
      if (std::isnan(ref[i]) != std::isnan(got[i]) || (std::isinf(ref[i]) && got[i] != ref[i])) return INFINITY;
      continue;
    }
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Precision budgets by METHOD.md: float32 arithmetic far under 1e-3; BF16 operands 1e-3..1e-2.
inline constexpr double kF32Budget = 1e-5;
inline constexpr double kBf16Budget = 1e-2;

}  // namespace clawmine::test
