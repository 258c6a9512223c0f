// Exact float32 decoding of linear weights, one logical row at a time, for every WeightFormat:
// dense F32/BF16/F16; FP8 E4M3 with 128x128 block scales (E8M0 or F32); MXFP4 (E2M1 pairs, low
// nibble = even element, E8M0 scale per 32 inputs); NVFP4 (E2M1 pairs, E4M3 scale per 16 inputs,
// times the F32 weight_scale_2). Shared by the CPU backend and anything needing W as floats.
#pragma once

#include <cstdint>

#include "model/deepseek_v4/weights.h"

namespace clawmine::backend::cpu {

using model::deepseek_v4::LinearWeight;
using model::deepseek_v4::WeightFormat;

inline constexpr int64_t kFp8BlockSize = 128;  // FP8 scale block: 128 x 128 (out x in)
inline constexpr int64_t kMxfp4GroupSize = 32;  // MXFP4: one E8M0 scale per 32 inputs of a row
inline constexpr int64_t kNvfp4GroupSize = 16;  // NVFP4: one E4M3 scale per 16 inputs of a row

// E2M1 nibble (bit 3 = sign) -> {0, 0.5, 1, 1.5, 2, 3, 4, 6} with sign; 0x8 is -0.0.
float e2m1_to_f32(uint8_t nibble);

// Checks dtypes and shapes of weight and scales against out_features/in_features and format;
// throws clawmine::Error naming w.name, what was expected and what was found.
void validate_linear_weight(const LinearWeight& w);

// out[i] = W[row, i] for i < w.in_features, exactly (every product of an FP4/FP8 value and a
// power-of-two scale is exact; F32 FP8 scales and NVFP4's weight_scale_2 round once, like torch's
// float32 dequantization). Assumes validate_linear_weight(w) passed.  out [in_features].
void decode_row(const LinearWeight& w, int64_t row, float* out);

}  // namespace clawmine::backend::cpu
