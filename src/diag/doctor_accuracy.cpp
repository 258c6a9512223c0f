// The doctor's accuracy pass, on the backend the doctor was given (the model placed there). Local:
// LocalCompare runs each quantized op next to the W-A16 op on the same input. Global: the
// calibration ids run twice, W-A16 and quantized (the latter under the trace, whose locator names
// the first non-finite op), and the residual stream after each layer and the final logits are
// compared (cosine, top-1 agreement, KL). The backend's policy is restored at the end.
#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "diag/doctor_passes.h"
#include "diag/forwarding_backend.h"
#include "diag/host_read.h"
#include "diag/local_compare.h"
#include "diag/trace.h"

namespace clawmine::diag {

using namespace model::deepseek_v4;

namespace {

// Keeps a copy of the residual stream after each layer (the MoE site's hc_post output).
class ResidualCapture final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  std::vector<std::vector<float>> layers;  // per layer, concatenated over forwards
  void hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
               const TensorView& X_out) override {
    inner_.hc_post(y, X, post, comb, X_out);
    if (scope_.size() < 7 || scope_.compare(scope_.size() - 7, 7, ".hc_ffn") != 0) return;
    const size_t l = static_cast<size_t>(layer_index_of(scope_));
    if (layers.size() <= l) layers.resize(l + 1);
    const HostF32 h(inner_, X_out);
    layers[l].insert(layers[l].end(), h.data(), h.data() + h.size());
  }
};

// log-softmax of a row in double.
std::vector<double> log_softmax(const float* x, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] - m - std::log(s);
  return out;
}

void local_rows(const LocalCompare& cmp, DoctorReport& r) {
  for (const LocalOpAccuracy& a : cmp.results()) {
    LocalRow row{a.name, a.op, a.path, a.layer, a.quant.cosine(), a.quant.rel_err()};
    if (a.has_static) {
      row.static_cosine = a.w4a4_static.cosine();
      row.dynamic_cosine = a.w4a4_dynamic.cosine();
    }
    r.local.push_back(row);
    // quant-numerics.md §5: a single quantized GEMM >= 0.99 (below 0.98 means a scale or layout
    // bug); a W4A4 expert block (two chained GEMMs) about 0.985-0.99.
    const bool block = a.op == "moe_experts" || a.op == "swiglu_mlp";
    const double error_below = block ? 0.97 : 0.98, warn_below = block ? 0.98 : 0.985;
    const double c = row.cosine;
    const bool nan = !std::isfinite(c);
    if (!nan && c >= warn_below) continue;
    const bool dynamic_fixes = a.has_static && row.dynamic_cosine >= 0.99 && a.path.find("static") != std::string::npos;
    const auto shard = a.name.find(" (shard");
    const std::string module = shard == std::string::npos ? a.name : a.name.substr(0, shard);
    r.findings.push_back(
        {nan ? Severity::kCritical : c < error_below ? Severity::kError : Severity::kWarning, a.layer, 1.0 - (nan ? -1 : c),
         a.name,
         str_cat(a.name, " (", a.path, "): local cosine ", nan ? "NaN" : short_num(c), " vs W-A16, relative error ",
                 short_num(row.rel_err), dynamic_fixes ? str_cat(" (dynamic act scale: ", short_num(row.dynamic_cosine), ")") : "",
                 nan || c >= error_below ? "" : "; this far below the expected agreement points at a scale or layout bug"),
         dynamic_fixes ? "run with --act-scale dynamic" : str_cat("--dequant ", module)});
  }
  std::sort(r.local.begin(), r.local.end(), [](const LocalRow& a, const LocalRow& b) {
    const double ca = std::isfinite(a.cosine) ? a.cosine : -9, cb = std::isfinite(b.cosine) ? b.cosine : -9;
    return ca < cb;
  });
}

}  // namespace

void accuracy_pass(const Model& model, ops::Backend& be, const ops::LinearPolicy& ref,
                   const ops::LinearPolicy& quant, const std::vector<std::vector<int32_t>>& ids,
                   const DoctorOptions& o, DoctorReport& r) {
  const LinearPolicyRestore restore(be);
  const ForwardOptions fwd;
  {
    LocalCompare cmp(be, ref, quant);
    for (const auto& seq : ids) {
      SequenceCache cache = model.new_cache();
      model.forward(cmp, cache, seq, fwd);
    }
    local_rows(cmp, r);
  }

  // One backend runs both: each decorator sets its policy before its forward.
  ResidualCapture ref_cap(be);
  Tracer tracer(be, TraceOptions{o.trace_file});
  ResidualCapture q_cap(tracer);
  std::vector<double> cosines;
  LogitsAgreement la;
  int64_t top1 = 0;
  double kl = 0;
  const int64_t V = model.config().vocab_size;
  for (const auto& seq : ids) {
    SequenceCache c1 = model.new_cache(), c2 = model.new_cache();
    ref_cap.set_linear_policy(ref);
    const Buffer lr = model.forward(ref_cap, c1, seq, fwd);
    Buffer lq;
    try {
      q_cap.set_linear_policy(quant);
      lq = model.forward(q_cap, c2, seq, fwd);
    } catch (const Error&) {
      if (!tracer.first_non_finite()) throw;  // an op refused the NaN input; the locator has the origin
      break;
    }
    for (int64_t t = 0; t < static_cast<int64_t>(seq.size()); ++t) {
      const float* a = lq.f32() + t * V;
      const float* b = lr.f32() + t * V;
      const Agreement g = agreement(a, b, V);
      cosines.push_back(std::isfinite(g.cosine) ? g.cosine : -1.0);
      top1 += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
      const auto pa = log_softmax(a, V), pb = log_softmax(b, V);
      double k = 0;
      for (int64_t i = 0; i < V; ++i) k += std::exp(pb[i]) * (pb[i] - pa[i]);
      kl += k;
    }
  }
  la.positions = static_cast<int64_t>(cosines.size());
  if (la.positions) {
    std::sort(cosines.begin(), cosines.end());
    la.min_cosine = cosines.front();
    la.median_cosine = cosines[cosines.size() / 2];
    la.top1 = static_cast<double>(top1) / la.positions;
    la.kl = kl / la.positions;
    r.logits = la;
  }
  for (size_t l = 0; l < ref_cap.layers.size() && l < q_cap.layers.size(); ++l) {
    const auto& a = q_cap.layers[l];
    const auto& b = ref_cap.layers[l];
    AgreementSums s;
    s.add(a.data(), b.data(), static_cast<int64_t>(std::min(a.size(), b.size())));
    r.global.push_back({static_cast<int>(l), s.cosine(), s.rel_err()});
  }
  if (tracer.first_non_finite()) {
    const NonFiniteFinding& f = *tracer.first_non_finite();
    r.non_finite = f;
    const bool unsat = !quant.saturate;
    r.findings.push_back({Severity::kCritical, layer_index_of(f.op_name), 3.0, f.op_name,
                          str_cat("the quantized run goes non-finite first at ", f.message),
                          unsat ? str_cat("drop --unsafe-nonsaturating-fp8 (saturating casts stay finite) and run with "
                                          "--act-scale dynamic or --dequant ", f.op_name)
                                : str_cat("run with --act-scale dynamic or --dequant ", f.op_name)});
  }
}

}  // namespace clawmine::diag
