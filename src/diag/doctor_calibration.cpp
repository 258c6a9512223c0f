// The doctor's calibration pass: the calibration ids run through the W-A16 path under the
// ActivationRecorder; per NVFP4 linear with a static input_scale the observed amax is set against
// the calibrated amax (input_scale x 2688), with the share of 16-blocks a static W4A4 scale would
// saturate. One finding per checkpoint module (fused shards together).
#include <algorithm>
#include <map>

#include "core/error.h"
#include "diag/activation_recorder.h"
#include "diag/doctor_passes.h"
#include "diag/local_compare.h"
#include "diag/locator.h"
#include "model/deepseek_v4/weight_walk.h"
#include "quant/act_quant.h"

namespace clawmine::diag {

using namespace model::deepseek_v4;

void calibration_pass(Model& model, ops::Backend& be, const ops::LinearPolicy& ref,
                      const std::vector<std::vector<int32_t>>& ids, const DoctorOptions& o, DoctorReport& r) {
  const LinearPolicyRestore restore(be);
  ActivationRecorder rec(be);
  rec.set_linear_policy(ref);
  ForwardOptions fwd;
  for (const auto& seq : ids) {
    SequenceCache cache = model.new_cache();
    model.forward(rec, cache, seq, fwd);
  }
  // Findings group by checkpoint module; a layer's routed experts form one group.
  struct Module {
    int layer = -1;
    int64_t order = 0;
    double ratio = 0.0, frac = 0.0;
    std::string shards, worst;
    int64_t linears = 0, over = 0;
  };
  std::map<std::string, Module> modules;
  std::vector<std::string> order;
  for (const LinearActivationStats& s : rec.stats()) {
    if (s.input_scale <= 0.0f || s.rows == 0) continue;
    CalibRow c;
    c.name = s.display_name();
    c.module = s.fused_name.empty() ? s.name : s.fused_name;
    c.layer = layer_index_of(s.name);
    c.input_scale = s.input_scale;
    c.calibrated_amax = static_cast<double>(s.input_scale) * quant::kNvfp4AmaxToScale;
    c.observed_amax = s.amax;
    c.ratio = s.overflow_ratio();
    c.saturating_fraction = s.saturating_fraction();
    c.rows = s.rows;
    const auto experts = c.module.find(".ffn.experts.");
    const std::string group = experts == std::string::npos ? c.module : c.module.substr(0, experts + 12);
    auto [it, fresh] = modules.try_emplace(group);
    if (fresh) order.push_back(group);
    Module& m = it->second;
    if (fresh) m.order = static_cast<int64_t>(order.size());
    m.layer = c.layer;
    ++m.linears;
    m.over += c.ratio > 1.0;
    if (c.ratio > m.ratio) m.worst = s.name;
    m.ratio = std::max(m.ratio, c.ratio);
    m.frac = std::max(m.frac, c.saturating_fraction);
    const auto dot = s.name.rfind('.');
    if (experts == std::string::npos)
      m.shards += str_cat(m.shards.empty() ? "" : ", ", s.name.substr(dot + 1), " ", short_num(c.ratio), "x");
    else
      m.shards = str_cat(m.over, " of ", m.linears, " expert projections over; worst ", m.worst);
    r.calib.push_back(std::move(c));
  }
  std::sort(r.calib.begin(), r.calib.end(), [](const CalibRow& a, const CalibRow& b) { return a.ratio > b.ratio; });

  for (const std::string& name : order) {
    const Module& m = modules[name];
    if (m.ratio > 1.0) {
      const bool nan_risk = m.ratio > 464.0 / 448.0;
      // Saturating casts clip the few blocks over (finite, slightly degraded; calibration on other
      // data overshoots like this): info up to 1.5x, then warning, error past 2x. Non-saturating
      // casts make anything past 464/448 NaN.
      const Severity sev = (!o.saturate && nan_risk) || m.ratio > 2.0 ? Severity::kError
                           : m.ratio > 1.5                            ? Severity::kWarning
                                                                      : Severity::kInfo;
      r.findings.push_back(
          {sev, m.layer, m.ratio, name,
           str_cat(name, ": activations reach ", short_num(m.ratio), "x the amax its input_scale was calibrated for (",
                   m.shards, "); W4A4 static saturates ", short_num(100.0 * m.frac), "% of 16-blocks",
                   nan_risk ? " and a non-saturating FP8 cast turns them into NaN" : ""),
           str_cat("run with --act-scale dynamic (auto does this) or --dequant ", name), m.order});
    } else if (m.ratio > 0.0 && m.ratio < 1.0 / 32.0) {
      r.findings.push_back({Severity::kWarning, m.layer, 1.0 / m.ratio, name,
                            str_cat(name, ": input_scale is ", short_num(1.0 / m.ratio),
                                    "x larger than the activations need: small values underflow in W4A4 static"),
                            "run with --act-scale dynamic", m.order});
    }
  }
  // As the loader's audit does: `auto` goes dynamic where the static scale overflows.
  std::map<std::string, double> ratio;
  for (const CalibRow& c : r.calib) ratio[c.module] = std::max(ratio[c.module], c.ratio);
  for_each_linear(model.mutable_weights(), [&](LinearWeight& w, WeightFamily) {
    const auto it = ratio.find(w.fused_name.empty() ? w.name : w.fused_name);
    if (it != ratio.end() && it->second > 1.0) w.input_scale_trusted = false;
  });
}

}  // namespace clawmine::diag
