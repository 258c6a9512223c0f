// The loader's calibration audit of static NVFP4 activation scales (quant-numerics.md §0, §2.4):
// a short forward over built-in token sequences (W4A16, so activations are the unquantized ones)
// through an ActivationRecorder, then per NVFP4 linear with an input_scale the ratio
// r = observed amax / (2688 * input_scale). r > 1 means W4A4 static scaling saturates: the audit
// warns naming the projection, the ratio and the share of saturating 16-blocks, and marks the
// scale untrusted so that `--act-scale auto` quantizes that linear's activations dynamically.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "diag/activation_recorder.h"
#include "model/deepseek_v4/model.h"

namespace clawmine::diag {

struct ScaleAuditEntry {
  std::string name;          // LinearWeight::name
  std::string display_name;  // "layers.0.attn.fused_wqa_wkv (shard wq_a)" or the name
  float input_scale = 0.0f;
  float observed_amax = 0.0f;
  double ratio = 0.0;                // observed_amax / (2688 * input_scale)
  double saturating_fraction = 0.0;  // 16-blocks with amax16 > 2688 * input_scale
  int64_t rows = 0;
  bool overflows = false;  // ratio > 1: marked untrusted
};

struct ScaleAudit {
  bool ran = false;                      // false: no NVFP4 linear has an input_scale
  std::vector<ScaleAuditEntry> entries;  // linears with an input_scale that calibration reached
  std::vector<std::string> unreached;    // linears with an input_scale that saw no calibration row
  int64_t overflowing() const;
};

// 3 sequences of 48 ids spread over [0, vocab), deterministic.
std::vector<std::vector<int32_t>> builtin_calibration_ids(int64_t vocab);

// One linear: nullopt unless w is NVFP4 with a valid input_scale and the recorder saw rows for
// it; otherwise the entry, with w.input_scale_trusted = false and a warning (if `warn`) when
// the observed amax overflows the scale.
std::optional<ScaleAuditEntry> audit_linear_scale(model::deepseek_v4::LinearWeight& w,
                                                  const ActivationRecorder& recorder, bool warn = true);

// Compares recorded statistics with every NVFP4 linear's input_scale in `weights`; sets
// input_scale_trusted = false on overflowing ones and, if `warn`, logs one warning each.
ScaleAudit audit_input_scales(model::deepseek_v4::ModelWeights& weights, const ActivationRecorder& recorder,
                              bool warn = true);

// The whole audit on a loaded model (cheap: well under a second on tiny models); a no-op unless
// some NVFP4 linear carries an input_scale. Runs on the CPU backend with W4A16/W8A16 and default
// ForwardOptions; options is read for nothing but kept so the loader passes what it was given.
ScaleAudit run_load_audit(model::deepseek_v4::Model& model, const model::deepseek_v4::LoadOptions& options);

}  // namespace clawmine::diag
