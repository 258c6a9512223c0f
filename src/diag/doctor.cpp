// run_doctor: loads the model (reporting a load error as a finding), then the static audit, the
// calibration pass and the accuracy passes (on the backend it is given), and ranks what they found.
#include "diag/doctor.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "diag/activation_recorder.h"
#include "diag/doctor_passes.h"
#include "diag/linear_path.h"
#include "diag/local_compare.h"
#include "model/deepseek_v4/weight_walk.h"

namespace clawmine::diag {

using model::deepseek_v4::Model;

const char* severity_name(Severity s) {
  switch (s) {
    case Severity::kInfo: return "info";
    case Severity::kWarning: return "warning";
    case Severity::kError: return "error";
    case Severity::kCritical: return "critical";
  }
  return "?";
}

void rank_findings(std::vector<Finding>& f) {
  std::stable_sort(f.begin(), f.end(), [](const Finding& a, const Finding& b) {
    if (a.severity != b.severity) return a.severity > b.severity;
    const int la = a.layer < 0 ? 1 << 20 : a.layer, lb = b.layer < 0 ? 1 << 20 : b.layer;
    if (la != lb) return la < lb;
    if (a.order != b.order) return a.order < b.order;
    return a.score > b.score;
  });
}

std::vector<std::vector<int32_t>> doctor_calibration_ids(int64_t vocab) {
  std::mt19937 rng(20261125);
  const int32_t V = static_cast<int32_t>(std::max<int64_t>(vocab, 2));
  std::vector<std::vector<int32_t>> out(4);
  std::uniform_int_distribution<int32_t> any(0, V - 1);
  for (int i = 0; i < 48; ++i) out[0].push_back(any(rng));
  for (int i = 0; i < 48; ++i) out[1].push_back((i * 7 + 3) % V);                  // a ramp
  for (int i = 0; i < 48; ++i) out[2].push_back(static_cast<int32_t>((i % 5) * (V / 5)));  // repeats
  std::uniform_int_distribution<int32_t> low(0, std::min(V - 1, 63));
  for (int i = 0; i < 32; ++i) out[3].push_back(low(rng));                       // frequent ids
  return out;
}

DoctorReport run_doctor(const DoctorOptions& o) {
  auto cpu = ops::make_cpu_backend(o.threads);
  return run_doctor(o, *cpu);
}

DoctorReport run_doctor(const DoctorOptions& o, ops::Backend& backend) {
  const auto start = std::chrono::steady_clock::now();
  DoctorReport r;
  r.model_dir = o.model_dir;
  const ops::LinearPolicy quant{ops::Nvfp4Path::kW4A4, ops::Fp8Path::kW8A8, o.act_scale, o.saturate};
  const ops::LinearPolicy ref{ops::Nvfp4Path::kW4A16, ops::Fp8Path::kW8A16, ops::ActScale::kAuto, true};
  r.policy = str_cat("W4A4 (act-scale ", o.act_scale == ops::ActScale::kStatic    ? "static"
                                         : o.act_scale == ops::ActScale::kDynamic ? "dynamic"
                                                                                  : "auto",
                     ") and W8A8", o.saturate ? "" : ", non-saturating FP8 casts", " vs W4A16/W8A16");

  model::deepseek_v4::LoadOptions lo;
  lo.dequant = o.dequant;
  lo.policy = quant;
  lo.audit = false;  // the doctor runs its own calibration
  std::unique_ptr<Model> model;
  try {
    model = Model::load(o.model_dir, lo);
  } catch (const Error& e) {
    r.findings.push_back({Severity::kCritical, -1, 1.0, "load",
                          str_cat("loading under ", r.policy, " fails: ", e.what()),
                          "fix or re-export the named tensor; an unusable input_scale is harmless with "
                          "--act-scale dynamic or on W4A16"});
    try {
      lo.policy = ref;
      model = Model::load(o.model_dir, lo);
    } catch (const Error& e2) {
      if (std::string(e2.what()) != e.what())
        r.findings.push_back({Severity::kCritical, -1, 0.9, "load", str_cat("loading under W4A16 fails too: ", e2.what()),
                              "fix or re-export the named tensor"});
      rank_findings(r.findings);
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return r;
    }
  }

  static_audit(*model, ref, quant, r);
  auto ids = o.calib.empty() ? doctor_calibration_ids(model->config().vocab_size) : o.calib;
  for (const auto& s : ids) {
    for (int32_t id : s)
      if (id < 0 || id >= model->config().vocab_size)
        throw Error(str_cat("doctor: calibration id ", id, " is outside the vocabulary [0, ",
                            model->config().vocab_size, ")"));
    ++r.calib_sequences;
    r.calib_tokens += static_cast<int64_t>(s.size());
  }
  // Non-finite weights make every pass non-finite: they are the finding; the passes are skipped.
  const bool corrupt = std::any_of(r.findings.begin(), r.findings.end(),
                                   [](const Finding& f) { return f.severity == Severity::kCritical; });
  try {
    if (!corrupt) {
      std::unique_ptr<ops::Backend> cpu;
      if (backend.device() != Device::kCpu) cpu = ops::make_cpu_backend(o.threads);
      calibration_pass(*model, cpu ? *cpu : backend, ref, ids, o, r);
      model->place(backend);
      accuracy_pass(*model, backend, ref, quant, ids, o, r);
    }
  } catch (const Error& e) {
    r.findings.push_back({Severity::kCritical, -1, 0.5, "passes",
                          str_cat("the calibration/accuracy passes stopped: ", e.what()),
                          "trace the failing run with `clawmine logits --trace FILE` to find the first non-finite op"});
  }
  rank_findings(r.findings);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace clawmine::diag
