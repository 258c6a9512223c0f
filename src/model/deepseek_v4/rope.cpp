#include "model/deepseek_v4/rope.h"

#include <algorithm>
#include <cmath>

namespace clawmine::model::deepseek_v4 {
namespace {

// base ** (2i / dim) in float32, as torch evaluates `base ** (arange(0, dim, 2).float() / dim)`.
float pos_freq(double base, int64_t i, int64_t rope_dim) {
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
  return std::pow(static_cast<float>(base), exponent);
}

// The pair index whose wavelength makes `num_rotations` turns over the original context.
double yarn_correction_dim(double num_rotations, int64_t rope_dim, double base, double max_pos) {
  return (rope_dim * std::log(max_pos / (num_rotations * 2 * M_PI))) / (2 * std::log(base));
}

}  // namespace

std::vector<float> rope_inv_freq_default(double base, int64_t rope_dim) {
  std::vector<float> inv(static_cast<size_t>(rope_dim / 2));
  for (int64_t i = 0; i < rope_dim / 2; ++i) inv[i] = 1.0f / pos_freq(base, i, rope_dim);
  return inv;
}

std::vector<float> rope_inv_freq_yarn(double base, int64_t rope_dim, const RopeScaling& s) {
  const double max_pos = static_cast<double>(s.original_max_position_embeddings);
  double low = std::floor(yarn_correction_dim(s.beta_fast, rope_dim, base, max_pos));
  double high = std::ceil(yarn_correction_dim(s.beta_slow, rope_dim, base, max_pos));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(rope_dim - 1));
  if (low == high) high += 0.001;  // avoids a zero-width ramp, as the reference does
  const float lo = static_cast<float>(low), hi = static_cast<float>(high);
  const float factor = static_cast<float>(s.factor);
  std::vector<float> inv(static_cast<size_t>(rope_dim / 2));
  for (int64_t i = 0; i < rope_dim / 2; ++i) {
    const float pf = pos_freq(base, i, rope_dim);
    const float extrapolation = 1.0f / pf;
    const float interpolation = 1.0f / (factor * pf);
    const float ramp = std::clamp((static_cast<float>(i) - lo) / (hi - lo), 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    inv[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return inv;
}

std::vector<float> rope_inv_freq(const ModelConfig& config, AttentionKind kind) {
  if (kind == AttentionKind::kSliding) return rope_inv_freq_default(config.rope_theta, config.qk_rope_head_dim);
  if (!config.rope_scaling.yarn) return rope_inv_freq_default(config.compress_rope_theta, config.qk_rope_head_dim);
  return rope_inv_freq_yarn(config.compress_rope_theta, config.qk_rope_head_dim, config.rope_scaling);
}

}  // namespace clawmine::model::deepseek_v4
