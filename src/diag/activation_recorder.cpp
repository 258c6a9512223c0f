#include "diag/activation_recorder.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/act_quant.h"

namespace clawmine::diag {

using model::deepseek_v4::WeightFormat;

double LinearActivationStats::rms() const { return values > 0 ? std::sqrt(sum_sq / static_cast<double>(values)) : 0.0; }

double LinearActivationStats::overflow_ratio() const {
  return input_scale > 0.0f ? amax / (static_cast<double>(quant::kNvfp4AmaxToScale) * input_scale) : 0.0;
}

double LinearActivationStats::saturating_fraction() const {
  return blocks16 > 0 ? static_cast<double>(saturating_blocks16) / static_cast<double>(blocks16) : 0.0;
}

std::string LinearActivationStats::display_name() const {
  if (fused_name.empty()) return name;
  const auto dot = name.rfind('.');
  return str_cat(fused_name, " (shard ", dot == std::string::npos ? name : name.substr(dot + 1), ")");
}

float calibrated_input_scale(float amax, const std::string& what) {
  if (!(amax > 0.0f) || !std::isfinite(amax))
    throw Error(str_cat("calibration of ", what, ": observed activation amax is ", amax,
                        "; input_scale = amax/2688 needs a finite amax > 0 (did any token reach it?)"));
  return amax / quant::kNvfp4AmaxToScale;
}

float read_input_scale(const model::deepseek_v4::LinearWeight& w) {
  if (w.input_scale.empty() || w.input_scale.numel() < 1) return 0.0f;
  const float s = load_as_f32(w.input_scale.data, w.input_scale.dtype, 0);
  return std::isfinite(s) && s > 0.0f ? s : 0.0f;
}

ActivationRecorder::ActivationRecorder(ops::Backend& inner) : ForwardingBackend(inner), scalars_(inner) {}

const LinearActivationStats* ActivationRecorder::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &stats_[it->second];
}

void ActivationRecorder::clear() {
  stats_.clear();
  index_.clear();
}

void ActivationRecorder::record(const ops::LinearWeight& w, const float* x, int64_t rows) {
  auto [it, fresh] = index_.try_emplace(w.name, stats_.size());
  if (fresh) {
    LinearActivationStats s;
    s.name = w.name;
    s.fused_name = w.fused_name;
    s.format = w.format;
    s.in_features = w.in_features;
    s.input_scale = w.format == WeightFormat::kNvfp4 ? read_input_scale(scalars_.with_host_scalars(w)) : 0.0f;
    stats_.push_back(std::move(s));
  }
  LinearActivationStats& s = stats_[it->second];
  const int64_t n = w.in_features;
  const float limit16 = quant::kNvfp4AmaxToScale * s.input_scale;  // amax16 above this saturates
  ++s.calls;
  s.rows += rows;
  s.values += rows * n;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    for (int64_t b = 0; b < n; b += quant::kNvfp4ActBlock) {
      const int64_t e = std::min(n, b + quant::kNvfp4ActBlock);
      float amax16 = 0.0f;
      for (int64_t i = b; i < e; ++i) {
        const float v = xr[i];
        if (!std::isfinite(v)) {
          ++s.nonfinite;
          continue;
        }
        amax16 = std::max(amax16, std::fabs(v));
        s.sum_sq += static_cast<double>(v) * v;
      }
      s.amax = std::max(s.amax, amax16);
      if (s.input_scale > 0.0f) {
        ++s.blocks16;
        if (amax16 > limit16) ++s.saturating_blocks16;
      }
    }
  }
}

void ActivationRecorder::record_expert(const ops::ExpertWeights& w, const float* x, int64_t rows, float swiglu_limit) {
  if (rows == 0) return;
  record(w.w1, x, rows);
  record(w.w3, x, rows);
  std::vector<float> gate = linear_on_host_rows(inner_, w.w1, x, rows);
  const std::vector<float> up = linear_on_host_rows(inner_, w.w3, x, rows);
  const double L = swiglu_limit;
  for (size_t i = 0; i < gate.size(); ++i) {
    const double g = std::min(static_cast<double>(gate[i]), L);
    const double u = std::clamp(static_cast<double>(up[i]), -L, L);
    gate[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
  }
  record(w.w2, gate.data(), rows);
}

void ActivationRecorder::linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) {
  inner_.linear(x, w, out);  // validates shapes first
  const HostF32 xs(inner_, x);
  record(w, xs.data(), xs.size() / w.in_features);
}
void ActivationRecorder::grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups,
                                        const TensorView& out) {
  inner_.grouped_linear(x, w, groups, out);
  const HostF32 xs(inner_, x);
  record(w, xs.data(), xs.size() / w.in_features);
}

void ActivationRecorder::moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts,
                                     const TensorView& idx, const TensorView& weight, float swiglu_limit,
                                     const TensorView& out) {
  const HostF32 xs(inner_, x, true);  // a copy: out may alias x
  inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out);  // validates shapes and ids first
  const int64_t T = x.dim(0), D = x.dim(1), K = idx.dim(1), E = static_cast<int64_t>(experts.size());
  const float* px = xs.data();
  const std::vector<int32_t> ids = host_i32(inner_, idx);
  std::vector<float> rows;
  for (int64_t e = 0; e < E; ++e) {
    rows.clear();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k)
        if (ids[t * K + k] == e) rows.insert(rows.end(), px + t * D, px + (t + 1) * D);
    record_expert(experts[e], rows.data(), static_cast<int64_t>(rows.size()) / std::max<int64_t>(D, 1), swiglu_limit);
  }
}

void ActivationRecorder::swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit,
                                    const TensorView& out) {
  const HostF32 xs(inner_, x, true);  // a copy: out may alias x
  inner_.swiglu_mlp(x, w, swiglu_limit, out);
  const int64_t D = x.dim(-1);
  record_expert(w, xs.data(), D ? x.numel() / D : 0, swiglu_limit);
}

}  // namespace clawmine::diag
