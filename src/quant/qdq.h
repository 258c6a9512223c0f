// Quantize-dequantize round trips that DeepSeek's official inference code applies to
// activations it keeps in caches (spec §3.0 "QAT simulations"): FP8 E4M3 with per-block
// power-of-two (UE8M0) scales on the KV nope dims, and Hadamard + FP4 E2M1 with per-32
// power-of-two scales on the indexer's q and keys. Every conversion saturates; a finite input
// never becomes NaN or Inf.
#pragma once

#include <cstdint>

namespace clawmine::quant {

// Nearest E4M3 value (ties to even), saturated to +-448. NaN stays NaN.
float round_to_e4m3(float x);
// Nearest E2M1 value (ties to even) in {0, .5, 1, 1.5, 2, 3, 4, 6}, saturated to +-6.
float round_to_e2m1(float x);

// In place over n values in blocks of `block`: s = 2^ceil(log2(max(amax, 1e-4) / 448)),
// x = e4m3(x / s) * s.
void fp8_qdq_blocks(float* x, int64_t n, int64_t block);
// In place in blocks of `block`: s = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)), x = e2m1(x / s) * s.
void fp4_qdq_blocks(float* x, int64_t n, int64_t block);
// In place: the Sylvester-ordered Walsh-Hadamard transform scaled by 1/sqrt(n); n a power of two.
void hadamard_inplace(float* x, int64_t n);

}  // namespace clawmine::quant
