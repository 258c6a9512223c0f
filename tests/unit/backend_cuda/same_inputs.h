// For the elementwise / hyper-connection / routing GPU tests: one host tensor placed on both
// backends (the CPU reference gets F32 values already rounded to the GPU copy's dtype, so both
// compute from identical numbers), poisoned output pairs, and bit-exact comparisons.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "unit/backend_cuda/cuda_test_util.h"

namespace clawmine::test {

struct OnBoth {
  ops::DeviceBuffer cpu, gpu;
};

// v rounded (nearest even) to BF16 or F16 and back; F32 unchanged.
inline std::vector<float> rounded_to(std::vector<float> v, DType as) {
  if (as == DType::kBF16)
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  if (as == DType::kF16)
    for (float& x : v) x = f16_to_f32(f32_to_f16(x));
  return v;
}

// The same float values on both: F32 on the CPU, `gpu_dtype` on the GPU.
inline OnBoth same_floats(ops::Backend& cpu, ops::Backend& gpu, const std::vector<float>& v, const Shape& shape,
                          DType gpu_dtype = DType::kF32) {
  const std::vector<float> r = rounded_to(v, gpu_dtype);
  return {upload_f32(cpu, r, shape), upload_f32(gpu, r, shape, gpu_dtype)};
}

// The same integers (int32_t -> I32, int64_t -> I64) on both.
template <typename T>
OnBoth same_ints(ops::Backend& cpu, ops::Backend& gpu, const std::vector<T>& v, const Shape& shape) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8);
  const TensorView host{sizeof(T) == 4 ? DType::kI32 : DType::kI64, Device::kCpu, shape, const_cast<T*>(v.data())};
  return {upload_raw(cpu, host), upload_raw(gpu, host)};
}

// Outputs poisoned before the op: NaN floats (F32 on the CPU, gpu_dtype on the GPU) or junk ints.
inline OnBoth poisoned_both(ops::Backend& cpu, ops::Backend& gpu, const Shape& shape, DType gpu_dtype = DType::kF32) {
  const bool ints = gpu_dtype == DType::kI32 || gpu_dtype == DType::kI64;
  return {poisoned(cpu, ints ? gpu_dtype : DType::kF32, shape), poisoned(gpu, gpu_dtype, shape)};
}

// Every element equal bit for bit (so a NaN left by the poison never passes; a NaN the reference
// itself carries must come back with the same bits).
inline ::testing::AssertionResult same_bits(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << ref.size();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &ref[i], sizeof(float)) != 0 && bad++ == 0) first = i;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements differ; first at " << first
                                       << ": got " << got[first] << " (0x" << std::hex << f32_to_bits(got[first])
                                       << "), want " << std::dec << ref[first] << " (0x" << std::hex
                                       << f32_to_bits(ref[first]) << ")";
}

// rel_l2 within budget, with the numbers in the failure message.
inline ::testing::AssertionResult within(const std::vector<float>& got, const std::vector<float>& ref, double budget) {
  const double e = rel_l2(got, ref);
  if (e <= budget) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "rel_l2 " << e << " exceeds " << budget;
}

inline std::string dtype_label(DType t) { return std::string(dtype_name(t)); }

}  // namespace clawmine::test
