#include "diag/local_compare.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "diag/activation_recorder.h"
#include "diag/linear_path.h"

namespace clawmine::diag {

using model::deepseek_v4::WeightFormat;

void AgreementSums::add(const float* a, const float* ref, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double x = a[i], y = ref[i];
    if (!std::isfinite(x) || !std::isfinite(y)) {
      non_finite = true;
      continue;
    }
    ab += x * y;
    aa += x * x;
    bb += y * y;
    dd += (x - y) * (x - y);
  }
}

double AgreementSums::cosine() const {
  if (non_finite) return std::numeric_limits<double>::quiet_NaN();
  if (aa == 0 && bb == 0) return 1.0;
  return aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : 0.0;
}

double AgreementSums::rel_err() const {
  if (non_finite) return std::numeric_limits<double>::quiet_NaN();
  return bb > 0 ? std::sqrt(dd / bb) : std::sqrt(dd);
}

int layer_index_of(const std::string& name) {
  if (name.rfind("layers.", 0) != 0) return -1;
  return std::atoi(name.c_str() + 7);
}

LocalCompare::LocalCompare(ops::Backend& ref, ops::Backend& quant) : ForwardingBackend(ref), quant_(quant) {}

LocalOpAccuracy& LocalCompare::slot(const std::string& name, const char* op, const std::string& path) {
  auto [it, fresh] = index_.try_emplace(name, results_.size());
  if (fresh) {
    LocalOpAccuracy r;
    r.name = name;
    r.op = op;
    r.path = path;
    r.layer = layer_index_of(name);
    results_.push_back(std::move(r));
  }
  return results_[it->second];
}

void LocalCompare::linear(const TensorView& x, const ops::LinearWeight& w, const TensorView& out) {
  inner_.linear(x, w, out);
  if (w.format == WeightFormat::kDense) return;
  const int64_t n = out.numel();
  std::vector<float> q(static_cast<size_t>(n));
  TensorView qv{DType::kF32, Device::kCpu, out.shape, q.data()};
  const ops::LinearPolicy policy = quant_.linear_policy();
  LocalOpAccuracy& r = slot(LinearActivationStats{w.name, w.fused_name}.display_name(), "linear",
                            linear_path(policy, w).label);
  quant_.linear(x, w, qv);
  r.quant.add(q.data(), out.f32(), n);
  if (w.format == WeightFormat::kNvfp4 && read_input_scale(w) > 0.0f) {
    r.has_static = true;
    for (auto [scale, sums] : {std::pair{ops::ActScale::kStatic, &r.w4a4_static},
                               std::pair{ops::ActScale::kDynamic, &r.w4a4_dynamic}}) {
      ops::LinearPolicy p = policy;
      p.nvfp4 = ops::Nvfp4Path::kW4A4;
      p.act_scale = scale;
      quant_.set_linear_policy(p);
      quant_.linear(x, w, qv);
      sums->add(q.data(), out.f32(), n);
    }
    quant_.set_linear_policy(policy);
  }
}

void LocalCompare::grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups,
                                  const TensorView& out) {
  inner_.grouped_linear(x, w, groups, out);
  if (w.format == WeightFormat::kDense) return;
  std::vector<float> q(static_cast<size_t>(out.numel()));
  quant_.grouped_linear(x, w, groups, TensorView{DType::kF32, Device::kCpu, out.shape, q.data()});
  slot(linear_display_name(w), "grouped_linear", linear_path(quant_.linear_policy(), w).label)
      .quant.add(q.data(), out.f32(), out.numel());
}

void LocalCompare::moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts,
                               const TensorView& idx, const TensorView& weight, float swiglu_limit,
                               const TensorView& out) {
  const std::vector<float> xs(x.f32(), x.f32() + x.numel());  // out may alias x
  inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out);
  if (experts.empty() || experts[0].w1.format == WeightFormat::kDense) return;
  std::vector<float> q(static_cast<size_t>(out.numel()));
  quant_.moe_experts(TensorView{DType::kF32, Device::kCpu, x.shape, const_cast<float*>(xs.data())}, experts, idx,
                     weight, swiglu_limit, TensorView{DType::kF32, Device::kCpu, out.shape, q.data()});
  slot(scope_ + ".experts", "moe_experts", linear_path(quant_.linear_policy(), experts[0].w1).label)
      .quant.add(q.data(), out.f32(), out.numel());
}

void LocalCompare::swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit,
                              const TensorView& out) {
  const std::vector<float> xs(x.f32(), x.f32() + x.numel());
  inner_.swiglu_mlp(x, w, swiglu_limit, out);
  if (w.w1.format == WeightFormat::kDense) return;
  std::vector<float> q(static_cast<size_t>(out.numel()));
  quant_.swiglu_mlp(TensorView{DType::kF32, Device::kCpu, x.shape, const_cast<float*>(xs.data())}, w, swiglu_limit,
                    TensorView{DType::kF32, Device::kCpu, out.shape, q.data()});
  slot(scope_ + ".shared_experts", "swiglu_mlp", linear_path(quant_.linear_policy(), w.w1).label)
      .quant.add(q.data(), out.f32(), out.numel());
}

}  // namespace clawmine::diag
