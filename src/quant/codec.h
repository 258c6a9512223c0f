// Narrow-format encoders and weight quantizers: E4M3, E2M1, E8M0 scalars, and the three weight
// layouts DeepSeek V4 checkpoints use (spec deepseek-v4.md §2.2, quant-numerics.md §1):
//   FP8 block:  E4M3 [out, in], one scale per 128x128 block (E8M0 power of two, or F32)
//   MXFP4:      E2M1 pairs [out, in/2] (low nibble = even input), E8M0 scale per 32 inputs
//   NVFP4:      E2M1 pairs [out, in/2], E4M3 scale per 16 inputs, F32 weight_scale_2 = amax/2688
// Every conversion rounds to nearest even and saturates; nothing finite becomes NaN or Inf
// unless a caller asks for the non-saturating cast on purpose (diagnostics, tests).
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace clawmine::quant {

inline constexpr int64_t kFp8Block = 128;
inline constexpr int64_t kMxfp4Group = 32;
inline constexpr int64_t kNvfp4Group = 16;
inline constexpr float kE4m3Max = 448.0f;
inline constexpr float kE2m1Max = 6.0f;

// E4M3 byte of x. saturate=false reproduces PyTorch's cast: |x| >= 464 gives the NaN code 0x7f.
uint8_t encode_e4m3(float x, bool saturate = true);
// E2M1 nibble of x (bit 3 = sign), saturated to +-6.
uint8_t encode_e2m1(float x);
float decode_e2m1(uint8_t nibble);
// E8M0 byte of 2^exponent, exponent clamped to [-127, 127].
uint8_t encode_e8m0(int exponent);
// ceil(log2(v)) for v > 0, the power-of-two scale exponent the release code uses.
int ceil_log2(float v);

enum class ScaleDType { kE8M0, kF32 };

// A quantized linear weight as it is stored: bytes of the weight and of its scales.
struct QuantizedWeight {
  DType weight_dtype = DType::kU8;
  Shape weight_shape;
  std::vector<uint8_t> weight;
  DType scale_dtype = DType::kF8E8M0;
  Shape scale_shape;
  std::vector<uint8_t> scale;
  float weight_scale_2 = 0.0f;  // NVFP4 only
};

// W [out, in] float32, row-major.
QuantizedWeight quantize_fp8_block(const float* w, int64_t out, int64_t in, ScaleDType scale_dtype);
QuantizedWeight quantize_mxfp4(const float* w, int64_t out, int64_t in);
QuantizedWeight quantize_nvfp4(const float* w, int64_t out, int64_t in);

}  // namespace clawmine::quant
