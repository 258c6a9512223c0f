#include "quant/qdq.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace clawmine::quant {
namespace {

// Rounds |x| to a grid with `mantissa_bits` explicit bits, minimum normal 2^min_exp and
// maximum max_value, ties to even (std::nearbyint in the default rounding mode).
float round_minifloat(float x, int mantissa_bits, int min_exp, float max_value) {
  if (std::isnan(x)) return x;
  const float a = std::min(std::fabs(x), max_value);
  int e = a > 0 ? static_cast<int>(std::floor(std::log2(a))) : min_exp;
  e = std::max(e, min_exp);
  const float step = std::ldexp(1.0f, e - mantissa_bits);
  const float q = std::min(std::nearbyint(a / step) * step, max_value);
  return std::copysign(q, x);
}

float pow2_ceil_scale(float amax, float max_value) {
  return std::ldexp(1.0f, static_cast<int>(std::ceil(std::log2(amax / max_value))));
}

}  // namespace

float round_to_e4m3(float x) { return round_minifloat(x, 3, -6, 448.0f); }
float round_to_e2m1(float x) { return round_minifloat(x, 1, 0, 6.0f); }

void fp8_qdq_blocks(float* x, int64_t n, int64_t block) {
  for (int64_t b = 0; b < n; b += block) {
    const int64_t e = std::min(n, b + block);
    float amax = 1e-4f;  // over finite values: a NaN/Inf passes through and stays visible
    for (int64_t i = b; i < e; ++i)
      if (std::isfinite(x[i])) amax = std::max(amax, std::fabs(x[i]));
    const float s = pow2_ceil_scale(amax, 448.0f);
    for (int64_t i = b; i < e; ++i)
      if (std::isfinite(x[i])) x[i] = round_to_e4m3(x[i] / s) * s;
  }
}

void fp4_qdq_blocks(float* x, int64_t n, int64_t block) {
  for (int64_t b = 0; b < n; b += block) {
    const int64_t e = std::min(n, b + block);
    float amax = 6.0f * std::ldexp(1.0f, -126);
    for (int64_t i = b; i < e; ++i)
      if (std::isfinite(x[i])) amax = std::max(amax, std::fabs(x[i]));
    const float s = pow2_ceil_scale(amax, 6.0f);
    for (int64_t i = b; i < e; ++i)
      if (std::isfinite(x[i])) x[i] = round_to_e2m1(x[i] / s) * s;
  }
}

void hadamard_inplace(float* x, int64_t n) {
  CLAWMINE_CHECK(n > 0 && (n & (n - 1)) == 0, "Hadamard size must be a power of two, got ", n);
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(n));
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace clawmine::quant
