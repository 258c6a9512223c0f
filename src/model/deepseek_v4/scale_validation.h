// Load-time checks of every quantization scale of a bound model (quant-numerics.md §0.4, §7.1):
// FP8/MXFP4 block scales (E8M0 or F32), NVFP4 block scales (E4M3), weight_scale_2 and
// input_scale must be finite and > 0, and fused shards must agree. All problems go into one
// clawmine::Error naming tensor, file, element, value and what was expected. input_scale is
// read only by W4A4 with a static (or auto) activation scale: elsewhere a bad one is a warning.
#pragma once

#include <set>
#include <string>

#include "io/safetensors.h"
#include "model/deepseek_v4/weights.h"
#include "ops/backend.h"

namespace clawmine::model::deepseek_v4 {

// Checks the scales of every linear in `w` (views into `ckpt`). Sets input_scale_trusted =
// false on NVFP4 linears whose input_scale is missing or invalid; that is an error only under
// --nvfp4-path w4a4 --act-scale static, otherwise a log_warn saying the policy does not read it.
// `dequantized`: release names of modules --dequant turns dense (their input_scale is unused).
void validate_scales(ModelWeights& w, const io::Checkpoint& ckpt, const ops::LinearPolicy& policy,
                     const std::set<std::string>& dequantized = {});

}  // namespace clawmine::model::deepseek_v4
