// The passes of run_doctor (doctor.h), each adding rows and findings to the report:
// static_audit (doctor_audit.cpp), calibration_pass (doctor_calibration.cpp), accuracy_pass
// (doctor_accuracy.cpp). Internal to the diag module.
#pragma once

#include <cstdint>
#include <vector>

#include "diag/doctor.h"
#include "model/deepseek_v4/model.h"

namespace clawmine::diag {

// Formats, dtypes and paths per module; non-finite weights and invalid input scales.
void static_audit(const model::deepseek_v4::Model& model, const ops::LinearPolicy& ref,
                  const ops::LinearPolicy& quant, DoctorReport& r);
// Observed amax vs input_scale*2688 on the W-A16 path, run on `be`; marks overflowing input
// scales untrusted in model.mutable_weights() (so --act-scale auto goes dynamic there, as the
// loader's audit does). Runs before Model::place, so the placed copies carry the flags.
void calibration_pass(model::deepseek_v4::Model& model, ops::Backend& be, const ops::LinearPolicy& ref,
                      const std::vector<std::vector<int32_t>>& ids, const DoctorOptions& o, DoctorReport& r);
// Local per-op and global per-layer agreement, logits, and the quantized run's first non-finite
// op, all on `be` (the model placed there); be's linear policy is restored afterwards.
void accuracy_pass(const model::deepseek_v4::Model& model, ops::Backend& be, const ops::LinearPolicy& ref,
                   const ops::LinearPolicy& quant, const std::vector<std::vector<int32_t>>& ids,
                   const DoctorOptions& o, DoctorReport& r);

}  // namespace clawmine::diag
