// Text and JSON renderings of a DoctorReport. The text puts the ranked findings (with their fixes)
// in the first lines, then the calibration, local, global and logits tables.
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "diag/doctor.h"

namespace clawmine::diag {

namespace {

std::string fixed(double v, int digits = 4) {
  if (!std::isfinite(v)) return "NaN";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

std::string doctor_text(const DoctorReport& r) {
  int64_t problems = 0;
  for (const Finding& f : r.findings) problems += f.severity >= Severity::kWarning;
  std::string s = str_cat("clawmine doctor ", r.model_dir, ": ",
                          problems ? str_cat(problems, " problem(s), worst first") : std::string("no problems found"),
                          "\n");
  int i = 0;
  for (const Finding& f : r.findings)
    s += str_cat(++i, ". [", severity_name(f.severity), "] ", f.problem, "\n   fix: ", f.fix, "\n");
  s += str_cat("\nchecked: ", r.policy, "; ", r.calib_sequences, " calibration sequences, ", r.calib_tokens,
               " tokens; ", fixed(r.seconds, 1), " s\n");
  if (!r.calib.empty()) {
    s += "\ncalibration (NVFP4 linears with input_scale; ratio = observed amax / (input_scale x 2688)):\n";
    for (const CalibRow& c : r.calib)
      s += str_cat("  ", c.name, ": input_scale ", short_num(c.input_scale), " calibrated amax ",
                   short_num(c.calibrated_amax), " observed ", short_num(c.observed_amax), " ratio ",
                   short_num(c.ratio), " saturating blocks ", fixed(100 * c.saturating_fraction, 1), "%\n");
  }
  if (!r.local.empty()) {
    s += "\nlocal accuracy (same input as W-A16; worst first):\n";
    for (size_t k = 0; k < r.local.size() && k < 12; ++k) {
      const LocalRow& l = r.local[k];
      s += str_cat("  ", l.name, " [", l.path, "]: cosine ", fixed(l.cosine), " rel err ", fixed(l.rel_err),
                   l.static_cosine > -2 ? str_cat(" (W4A4 static ", fixed(l.static_cosine), ", dynamic ",
                                                  fixed(l.dynamic_cosine), ")")
                                        : std::string(),
                   "\n");
    }
    if (r.local.size() > 12) s += str_cat("  ... ", r.local.size() - 12, " more\n");
  }
  if (!r.global.empty()) {
    s += "\nglobal drift (residual stream after each layer, quantized run vs W-A16 run):\n";
    for (const GlobalRow& g : r.global)
      s += str_cat("  layers.", g.layer, ": cosine ", fixed(g.cosine), " rel err ", fixed(g.rel_err), "\n");
  }
  if (r.logits)
    s += str_cat("\nlogits: median cosine ", fixed(r.logits->median_cosine), ", min ", fixed(r.logits->min_cosine),
                 ", top-1 agreement ", fixed(100 * r.logits->top1, 1), "%, KL ", short_num(r.logits->kl), " over ",
                 r.logits->positions, " positions\n");
  if (r.non_finite) s += str_cat("first non-finite op of the quantized run: ", r.non_finite->message, "\n");
  return s;
}

nlohmann::json doctor_json(const DoctorReport& r) {
  nlohmann::json j;
  j["model"] = r.model_dir;
  j["policy"] = r.policy;
  j["seconds"] = r.seconds;
  j["calibration"] = {{"sequences", r.calib_sequences}, {"tokens", r.calib_tokens}};
  auto& fs = j["findings"] = nlohmann::json::array();
  for (const Finding& f : r.findings)
    fs.push_back({{"severity", severity_name(f.severity)}, {"layer", f.layer}, {"subject", f.subject},
                  {"problem", f.problem}, {"fix", f.fix}, {"score", num(f.score)}});
  auto& ms = j["modules"] = nlohmann::json::array();
  for (const ModuleRow& m : r.modules)
    ms.push_back({{"name", m.name}, {"family", m.family}, {"format", m.format}, {"dtype", m.dtype},
                  {"shape", m.shape}, {"path_default", m.path_default}, {"path_quantized", m.path_quant}});
  auto& cs = j["calibration_rows"] = nlohmann::json::array();
  for (const CalibRow& c : r.calib)
    cs.push_back({{"name", c.name}, {"module", c.module}, {"layer", c.layer}, {"input_scale", c.input_scale},
                  {"calibrated_amax", c.calibrated_amax}, {"observed_amax", c.observed_amax},
                  {"overflow_ratio", c.ratio}, {"saturating_fraction", c.saturating_fraction}, {"rows", c.rows}});
  auto& ls = j["local"] = nlohmann::json::array();
  for (const LocalRow& l : r.local) {
    nlohmann::json row = {{"name", l.name}, {"op", l.op}, {"path", l.path}, {"layer", l.layer},
                          {"cosine", num(l.cosine)}, {"rel_err", num(l.rel_err)}};
    if (l.static_cosine > -2) {
      row["w4a4_static_cosine"] = num(l.static_cosine);
      row["w4a4_dynamic_cosine"] = num(l.dynamic_cosine);
    }
    ls.push_back(row);
  }
  auto& gs = j["global"] = nlohmann::json::array();
  for (const GlobalRow& g : r.global)
    gs.push_back({{"layer", g.layer}, {"cosine", num(g.cosine)}, {"rel_err", num(g.rel_err)}});
  if (r.logits)
    j["logits"] = {{"median_cosine", num(r.logits->median_cosine)}, {"min_cosine", num(r.logits->min_cosine)},
                   {"top1_agreement", r.logits->top1}, {"kl", num(r.logits->kl)}, {"positions", r.logits->positions}};
  if (r.non_finite) j["first_non_finite"] = r.non_finite->to_json();
  return j;
}

}  // namespace clawmine::diag
