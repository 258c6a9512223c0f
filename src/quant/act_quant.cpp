#include "quant/act_quant.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "quant/codec.h"
#include "quant/qdq.h"

namespace clawmine::quant {

namespace {

// max |x| over the finite values of x[b, e).
float finite_amax(const float* x, int64_t b, int64_t e) {
  float amax = 0.0f;
  for (int64_t i = b; i < e; ++i)
    if (std::isfinite(x[i])) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

}  // namespace

void fp8_act_qdq_row(float* x, int64_t n) {
  for (int64_t b = 0; b < n; b += kFp8ActBlock) {
    const int64_t e = std::min(n, b + kFp8ActBlock);
    const float amax = std::max(finite_amax(x, b, e), 1e-4f);
    const float s = std::ldexp(1.0f, static_cast<int>(std::ceil(std::log2(amax / kE4m3Max))));
    for (int64_t i = b; i < e; ++i)
      if (std::isfinite(x[i])) x[i] = round_to_e4m3(x[i] / s) * s;
  }
}

float nvfp4_dynamic_global(const float* x, int64_t n) {
  const float amax = finite_amax(x, 0, n);
  return amax > 0.0f ? kNvfp4AmaxToScale / amax : 0.0f;
}

float nvfp4_block_scale(float g, float amax16, bool saturate) {
  const float v = g * amax16 / 6.0f;
  if (std::isnan(v)) return v;
  // PyTorch rounds to nearest even first: 464 ties to 448, anything above becomes NaN.
  if (!saturate && std::fabs(v) > 464.0f) return std::numeric_limits<float>::quiet_NaN();
  return round_to_e4m3(v);  // saturates to 448
}

int64_t nvfp4_act_qdq_row(float* x, int64_t n, float g, bool saturate) {
  int64_t overflowing = 0;
  for (int64_t b = 0; b < n; b += kNvfp4ActBlock) {
    const int64_t e = std::min(n, b + kNvfp4ActBlock);
    const float amax16 = finite_amax(x, b, e);
    if (g * amax16 / 6.0f > kE4m3Max) ++overflowing;
    const float sf = g > 0.0f ? nvfp4_block_scale(g, amax16, saturate) : 0.0f;
    if (std::isnan(sf)) {
      std::fill(x + b, x + e, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    for (int64_t i = b; i < e; ++i) {
      if (!std::isfinite(x[i])) continue;  // a non-finite input stays non-finite: never hidden
      x[i] = sf == 0.0f ? 0.0f : round_to_e2m1(x[i] * g / sf) * sf / g;
    }
  }
  return overflowing;
}

}  // namespace clawmine::quant
