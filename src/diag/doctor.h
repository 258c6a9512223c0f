// `clawmine doctor`: one pass over a checkpoint that answers "will this run right here, and if
// not, which module and what to do". Static audit (scales, non-finite weights, formats and compute
// paths per module), calibration (observed activation amax vs each static input_scale), accuracy
// (local per-op and global per-layer agreement of the quantized path with the W-A16 path, final
// logits), and a ranked list of findings with fixes. Reports: text, JSON, self-contained HTML.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "diag/locator.h"
#include "ops/backend.h"

namespace clawmine::diag {

struct DoctorOptions {
  std::string model_dir;
  std::vector<std::vector<int32_t>> calib;  // token sequences; empty: built-in varied sequences
  // The quantized path judged against W-A16: NVFP4 linears W4A4 and FP8/MXFP4 linears W8A8 with
  // this activation-scale policy and saturation.
  ops::ActScale act_scale = ops::ActScale::kAuto;
  bool saturate = true;
  std::vector<std::string> dequant;  // --dequant globs applied at load
  int threads = 0;  // CPU backends the doctor makes (calibration; run_doctor without a backend)
  std::string trace_file;  // non-empty: JSON lines of the quantized run's trace go here
};

enum class Severity { kInfo = 0, kWarning = 1, kError = 2, kCritical = 3 };
const char* severity_name(Severity s);

struct Finding {
  Severity severity = Severity::kInfo;
  int layer = -1;       // -1: not tied to a layer (load, embed, head)
  double score = 0.0;   // ranking inside a severity, layer and order: larger is worse
  std::string subject;  // module or tensor
  std::string problem;  // one line
  std::string fix;      // one line: the flag or action that fixes it
  int64_t order = 1 << 30;  // execution order inside the layer where known (root causes first)
};

struct ModuleRow {
  std::string name, family, format, dtype, shape;
  std::string path_default;  // W-A16 policy (this machine's default on CPU and Hopper)
  std::string path_quant;    // the judged policy
};

struct CalibRow {
  std::string name;      // display name (fused shard spelled out)
  std::string module;    // fused module name or the release name
  int layer = -1;
  float input_scale = 0.0f;
  double calibrated_amax = 0.0;  // input_scale * 2688
  double observed_amax = 0.0;
  double ratio = 0.0;            // observed / calibrated
  double saturating_fraction = 0.0;
  int64_t rows = 0;
};

struct LocalRow {
  std::string name, op, path;
  int layer = -1;
  double cosine = 0.0, rel_err = 0.0;
  double static_cosine = -2.0, dynamic_cosine = -2.0;  // -2: not applicable
};

struct GlobalRow {
  int layer = 0;
  double cosine = 0.0, rel_err = 0.0;  // residual stream after the layer, quantized vs W-A16 run
};

struct LogitsAgreement {
  double median_cosine = 0.0, min_cosine = 0.0, top1 = 0.0, kl = 0.0;  // kl: mean KL(ref || quant)
  int64_t positions = 0;
};

struct DoctorReport {
  std::string model_dir;
  std::string policy;  // "W4A4 act-scale auto, W8A8, saturating"
  std::vector<Finding> findings;  // ranked, worst first
  std::vector<ModuleRow> modules;
  std::vector<CalibRow> calib;
  std::vector<LocalRow> local;     // worst first
  std::vector<GlobalRow> global;
  std::optional<LogitsAgreement> logits;
  std::optional<NonFiniteFinding> non_finite;  // first non-finite op of the quantized run
  int64_t calib_sequences = 0, calib_tokens = 0;
  double seconds = 0.0;
};

// Runs every pass on `backend` (which keeps its linear policy afterwards): the model is loaded,
// audited on the host, calibrated on the W-A16 path (on `backend` when it is the CPU, else on a
// CPU backend: the trust flags it sets must be in place before Model::place copies the weights),
// placed on `backend`, and its accuracy passes run there, reference and quantized policy alike.
DoctorReport run_doctor(const DoctorOptions& options, ops::Backend& backend);
// The same on a CPU backend with options.threads threads.
DoctorReport run_doctor(const DoctorOptions& options);

// The built-in calibration set for a vocabulary: varied sequences (random, ramps, repeats).
std::vector<std::vector<int32_t>> doctor_calibration_ids(int64_t vocab);

std::string doctor_text(const DoctorReport& r);     // findings first, then the tables
nlohmann::json doctor_json(const DoctorReport& r);
std::string doctor_html(const DoctorReport& r);     // self-contained, inline SVG plots

// Sorts findings worst first: severity, then earlier layer (the first broken layer poisons the
// rest), then execution order, then score.
void rank_findings(std::vector<Finding>& findings);

}  // namespace clawmine::diag
