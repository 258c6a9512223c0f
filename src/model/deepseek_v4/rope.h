// RoPE frequency tables per layer kind (spec §3.0; transformers-parity #9-#14). Sliding layers
// use rope_theta without scaling; compressed layers (and their compressor and indexer) use
// compress_rope_theta with YaRN when the config asks for it. No mscale anywhere. The float32
// arithmetic follows transformers' _compute_yarn_parameters step by step so the tables agree
// to the bit with the parity reference.
#pragma once

#include <vector>

#include "model/deepseek_v4/config.h"

namespace clawmine::model::deepseek_v4 {

// inv_freq[i], i < rope_dim/2, for the plain table (base only).
std::vector<float> rope_inv_freq_default(double base, int64_t rope_dim);
// The YaRN table: high-frequency pairs unchanged, low-frequency pairs divided by factor,
// a linear ramp between floor(corr(beta_fast)) and ceil(corr(beta_slow)).
std::vector<float> rope_inv_freq_yarn(double base, int64_t rope_dim, const RopeScaling& scaling);

// The table a layer of this kind uses.
std::vector<float> rope_inv_freq(const ModelConfig& config, AttentionKind kind);

}  // namespace clawmine::model::deepseek_v4
