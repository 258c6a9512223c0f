// Argument checks and small numeric helpers shared by the CPU backend's op files. Every check
// throws clawmine::Error naming the op, the argument and the expected vs found dtype/shape.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/tensor.h"

namespace clawmine::backend::cpu {

// The view's F32 data, after checking dtype, host memory (and non-null data).
float* f32_arg(const TensorView& t, const char* op, const char* arg);
// The view's I32 data, after the same checks.
int32_t* i32_arg(const TensorView& t, const char* op, const char* arg);
// The view's data of any dtype, after checking host memory and non-null data.
void* host_arg(const TensorView& t, const char* op, const char* arg);
// Checks t.numel() == expected.
void expect_numel(const TensorView& t, int64_t expected, const char* op, const char* arg);
// Checks rank and exact shape.
void expect_shape(const TensorView& t, const Shape& shape, const char* op, const char* arg);
// Checks rank only, returns t.
void expect_rank(const TensorView& t, int rank, const char* op, const char* arg);

// sum_i a[i] * b[i] in double, in a fixed order (four interleaved partial sums, then combined).
inline double dot_f64(const float* a, const float* b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(a[i]) * b[i];
    s1 += static_cast<double>(a[i + 1]) * b[i + 1];
    s2 += static_cast<double>(a[i + 2]) * b[i + 2];
    s3 += static_cast<double>(a[i + 3]) * b[i + 3];
  }
  for (; i < n; ++i) s0 += static_cast<double>(a[i]) * b[i];
  return (s0 + s1) + (s2 + s3);
}

inline double sigmoid_f64(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace clawmine::backend::cpu
