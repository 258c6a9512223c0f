// Activation quantize-dequantize transforms for quantized linears (quant-numerics.md §1.3, §2.2):
// each token row of x is transformed here and then multiplied with the exactly dequantized
// weight, so a "W8A8" or "W4A4" path is "these functions, then the W-A16 matmul".
//   W8A8 (FP8-block / MXFP4 weights): per 128 channels s = 2^ceil(log2(max(amax, 1e-4)/448)),
//        x^ = e4m3_sat(x/s) * s (the release's act_quant with UE8M0 scales).
//   W4A4 (NVFP4 weights): global g (static 1/input_scale, or dynamic 2688/amax(row)); per 16
//        SF = e4m3(g*amax16/6), x_q = e2m1_sat(x*g/SF), x^ = x_q*SF/g; SF == 0 gives zeros.
// Amax values are taken over finite inputs; a NaN or Inf input stays as it is (so a non-finite
// activation is never hidden by quantization), and finite inputs never become NaN or Inf
// except through the deliberately non-saturating cast.
#pragma once

#include <cstdint>

namespace clawmine::quant {

inline constexpr int64_t kFp8ActBlock = 128;   // W8A8 activation block along K
inline constexpr int64_t kNvfp4ActBlock = 16;  // W4A4 activation block along K
inline constexpr float kNvfp4AmaxToScale = 2688.0f;  // 6 * 448: input_scale = amax / 2688

// In place over one token row x [n]: blocks of 128 (the last may be shorter) to FP8 E4M3 with
// power-of-two scales. Finite in, finite out.
void fp8_act_qdq_row(float* x, int64_t n);

// The dynamic NVFP4 global multiplier of a row: 2688 / amax(x), or 0 when the row is all zero
// (a zero row then stays zero). x [n].
float nvfp4_dynamic_global(const float* x, int64_t n);

// The activation block scale one 16-block gets: e4m3(g * amax16 / 6). saturate=true clamps to
// 448 (CUDA's __NV_SATFINITE); saturate=false is PyTorch's cast (464 rounds to 448, above is NaN).
float nvfp4_block_scale(float g, float amax16, bool saturate);

// In place over one token row x [n] with global multiplier g (> 0, or 0 for "all zero"):
// per 16-block SF as above; SF == 0 -> the block becomes 0; x^ = e2m1_sat(x*g/SF)*SF/g.
// A NaN SF (saturate=false only) makes its whole block NaN.
// Returns the number of 16-blocks whose unclamped scale g*amax16/6 exceeded 448.
int64_t nvfp4_act_qdq_row(float* x, int64_t n, float g, bool saturate);

}  // namespace clawmine::quant
