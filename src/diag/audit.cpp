#include "diag/audit.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/log.h"
#include "model/deepseek_v4/weight_walk.h"
#include "quant/act_quant.h"

namespace clawmine::diag {

using namespace model::deepseek_v4;

namespace {

constexpr int64_t kCalibSequences = 3;
constexpr int64_t kCalibLength = 48;

bool has_input_scale(const LinearWeight& w) { return w.format == WeightFormat::kNvfp4 && !w.input_scale.empty(); }

std::string fmt(double v, int precision = 3) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}

}  // namespace

int64_t ScaleAudit::overflowing() const {
  return std::count_if(entries.begin(), entries.end(), [](const ScaleAuditEntry& e) { return e.overflows; });
}

std::vector<std::vector<int32_t>> builtin_calibration_ids(int64_t vocab) {
  std::vector<std::vector<int32_t>> seqs(kCalibSequences);
  uint64_t state = 0x9e3779b97f4a7c15ull;
  for (int64_t s = 0; s < kCalibSequences; ++s) {
    for (int64_t i = 0; i < kCalibLength; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;  // LCG: varied, reproducible
      // Sequence 0 sweeps the vocabulary evenly; 1 and 2 are pseudo-random.
      const uint64_t v = s == 0 ? static_cast<uint64_t>(i * vocab / kCalibLength) : (state >> 33) % vocab;
      seqs[s].push_back(static_cast<int32_t>(v));
    }
  }
  return seqs;
}

std::optional<ScaleAuditEntry> audit_linear_scale(LinearWeight& w, const ActivationRecorder& recorder, bool warn) {
  const float input_scale = has_input_scale(w) ? read_input_scale(w) : 0.0f;
  const LinearActivationStats* s = recorder.find(w.name);
  if (input_scale <= 0.0f || !s || s->rows == 0) return std::nullopt;
  ScaleAuditEntry e;
  e.name = w.name;
  e.display_name = s->display_name();
  e.input_scale = input_scale;
  e.observed_amax = s->amax;
  e.ratio = s->overflow_ratio();
  e.saturating_fraction = s->saturating_fraction();
  e.rows = s->rows;
  e.overflows = e.ratio > 1.0;
  if (e.overflows) {
    w.input_scale_trusted = false;
    if (warn)
      log_warn("audit", e.display_name, ": calibration activations reach ", fmt(e.ratio),
               "x the amax its input_scale ", fmt(e.input_scale), " was calibrated for (observed amax ",
               fmt(e.observed_amax), " vs ", fmt(e.input_scale * quant::kNvfp4AmaxToScale),
               "); W4A4 static would saturate ", fmt(100.0 * e.saturating_fraction), "% of 16-blocks",
               e.ratio > 464.0 / 448.0 ? " (a non-saturating FP8 cast would give NaN)" : "",
               ". --act-scale auto quantizes its activations dynamically");
  }
  return e;
}

ScaleAudit audit_input_scales(ModelWeights& weights, const ActivationRecorder& recorder, bool warn) {
  ScaleAudit audit;
  for_each_linear(weights, [&](LinearWeight& w, WeightFamily) {
    if (!has_input_scale(w)) return;
    audit.ran = true;
    if (std::optional<ScaleAuditEntry> e = audit_linear_scale(w, recorder, warn)) {
      audit.entries.push_back(std::move(*e));
    } else if (read_input_scale(w) > 0.0f) {
      audit.unreached.push_back(w.name);  // invalid scales are the scale validator's business
    }
  });
  if (warn && !audit.unreached.empty())
    log_info("audit", audit.unreached.size(), " NVFP4 linear(s) with an input_scale saw no calibration token (first: ",
             audit.unreached.front(), "); their scales stay as they are");
  return audit;
}

ScaleAudit run_load_audit(Model& model, const LoadOptions& options) {
  int64_t n = 0;
  for_each_linear(model.mutable_weights(), [&](LinearWeight& w, WeightFamily) { n += has_input_scale(w) ? 1 : 0; });
  if (n == 0) return {};
  // A full-size checkpoint takes minutes here (a CPU forward through every layer): say so first.
  log_info("audit", "checking the input_scale of ", n, " NVFP4 linear(s) against a CPU forward of ", kCalibSequences,
           " x ", kCalibLength, " tokens through ", model.config().num_hidden_layers,
           " layer(s) (--act-scale dynamic or --nvfp4-path w4a16 skip this)");
  const auto t0 = std::chrono::steady_clock::now();
  auto cpu = ops::make_cpu_backend(0);
  ops::LinearPolicy reference;  // W4A16 / W8A16: the activations the checkpoint's scales were meant for
  reference.nvfp4 = ops::Nvfp4Path::kW4A16;
  reference.fp8 = ops::Fp8Path::kW8A16;
  cpu->set_linear_policy(reference);
  ActivationRecorder recorder(*cpu);
  const ForwardOptions fwd;
  for (const std::vector<int32_t>& ids : builtin_calibration_ids(model.config().vocab_size)) {
    SequenceCache cache = model.new_cache();
    model.forward(recorder, cache, ids, fwd);
  }
  ScaleAudit audit = audit_input_scales(model.mutable_weights(), recorder, true);
  log_info("audit", "done in ", fmt(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()),
           " s");
  return audit;
}

}  // namespace clawmine::diag
