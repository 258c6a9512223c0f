// Parsing of the quantization descriptions into QuantConfig (config.h): config.json's
// `quantization_config` (the release's FP8 block config, or a ModelOpt entry) plus top-level
// `expert_dtype`, and NVIDIA ModelOpt's hf_quant_config.json. Spec: shared/specs/
// quant-numerics.md §1.5, §1.7, §1.8.
#pragma once

#include <string>

#include "model/deepseek_v4/config.h"
#include "model/deepseek_v4/json_fields.h"

namespace clawmine::model::deepseek_v4 {

// Reads `quantization_config` and `expert_dtype` from the config.json root object.
void read_quantization_config(const JsonFields& root, QuantConfig& quant);

// Folds hf_quant_config.json (text read from `source`) into `quant`; its ModelOpt fields
// replace any given by config.json.
void read_hf_quant_config(const std::string& text, const std::string& source, QuantConfig& quant);

}  // namespace clawmine::model::deepseek_v4
