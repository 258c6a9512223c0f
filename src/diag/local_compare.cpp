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

LocalCompare::LocalCompare(ops::Backend& backend, const ops::LinearPolicy& ref, const ops::LinearPolicy& quant)
    : ForwardingBackend(backend), ref_(ref), quant_(quant), scalars_(backend) {
  set_linear_policy(ref);
}

template <typename Op>
void LocalCompare::under(const ops::LinearPolicy& p, Op op) {
  inner_.set_linear_policy(p);
  try {
    op();
  } catch (...) {
    inner_.set_linear_policy(ref_);
    throw;
  }
  inner_.set_linear_policy(ref_);
}

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
  const HostF32 ref(inner_, out);
  ops::ScratchFrame frame(inner_);
  const TensorView q = inner_.scratch(out.dtype, out.shape);
  const ops::LinearWeight& ws = scalars_.with_host_scalars(w);
  const bool has_static = w.format == WeightFormat::kNvfp4 && read_input_scale(ws) > 0.0f;
  LocalOpAccuracy& r = slot(LinearActivationStats{w.name, w.fused_name}.display_name(), "linear",
                            linear_path(quant_, ws).label);
  under(quant_, [&] { inner_.linear(x, w, q); });
  r.quant.add(HostF32(inner_, q).data(), ref.data(), ref.size());
  if (has_static) {
    r.has_static = true;
    for (auto [scale, sums] : {std::pair{ops::ActScale::kStatic, &r.w4a4_static},
                               std::pair{ops::ActScale::kDynamic, &r.w4a4_dynamic}}) {
      ops::LinearPolicy p = quant_;
      p.nvfp4 = ops::Nvfp4Path::kW4A4;
      p.act_scale = scale;
      under(p, [&] { inner_.linear(x, w, q); });
      sums->add(HostF32(inner_, q).data(), ref.data(), ref.size());
    }
  }
}

void LocalCompare::grouped_linear(const TensorView& x, const ops::LinearWeight& w, int64_t groups,
                                  const TensorView& out) {
  inner_.grouped_linear(x, w, groups, out);
  if (w.format == WeightFormat::kDense) return;
  const HostF32 ref(inner_, out);
  ops::ScratchFrame frame(inner_);
  const TensorView q = inner_.scratch(out.dtype, out.shape);
  under(quant_, [&] { inner_.grouped_linear(x, w, groups, q); });
  slot(linear_display_name(w), "grouped_linear", linear_path(quant_, scalars_.with_host_scalars(w)).label)
      .quant.add(HostF32(inner_, q).data(), ref.data(), ref.size());
}

void LocalCompare::moe_experts(const TensorView& x, const std::vector<ops::ExpertWeights>& experts,
                               const TensorView& idx, const TensorView& weight, float swiglu_limit,
                               const TensorView& out) {
  if (experts.empty() || experts[0].w1.format == WeightFormat::kDense) {
    inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out);
    return;
  }
  ops::ScratchFrame frame(inner_);
  const TensorView xs = inner_.scratch(x.dtype, x.shape);  // out may alias x
  inner_.copy(x, xs);
  inner_.moe_experts(x, experts, idx, weight, swiglu_limit, out);
  const HostF32 ref(inner_, out);
  const TensorView q = inner_.scratch(out.dtype, out.shape);
  under(quant_, [&] { inner_.moe_experts(xs, experts, idx, weight, swiglu_limit, q); });
  slot(scope_ + ".experts", "moe_experts", linear_path(quant_, scalars_.with_host_scalars(experts[0].w1)).label)
      .quant.add(HostF32(inner_, q).data(), ref.data(), ref.size());
}

void LocalCompare::swiglu_mlp(const TensorView& x, const ops::ExpertWeights& w, float swiglu_limit,
                              const TensorView& out) {
  if (w.w1.format == WeightFormat::kDense) {
    inner_.swiglu_mlp(x, w, swiglu_limit, out);
    return;
  }
  ops::ScratchFrame frame(inner_);
  const TensorView xs = inner_.scratch(x.dtype, x.shape);  // out may alias x
  inner_.copy(x, xs);
  inner_.swiglu_mlp(x, w, swiglu_limit, out);
  const HostF32 ref(inner_, out);
  const TensorView q = inner_.scratch(out.dtype, out.shape);
  under(quant_, [&] { inner_.swiglu_mlp(xs, w, swiglu_limit, q); });
  slot(scope_ + ".shared_experts", "swiglu_mlp", linear_path(quant_, scalars_.with_host_scalars(w.w1)).label)
      .quant.add(HostF32(inner_, q).data(), ref.data(), ref.size());
}

}  // namespace clawmine::diag
