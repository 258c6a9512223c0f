// Random tensor contents, drawn directly in their stored encoding (no float32 weight is ever
// materialized): BF16/F32 normals and uniforms, E4M3 and packed E2M1 weight codes from a
// quantized normal, E8M0 / E4M3 block scales, and hash-routing tables. Every fill is a pure
// function of (seed, unit range), so any split of a tensor into chunks, on any number of
// threads, gives the same bytes.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace clawmine::tools {

enum class Fill {
  kNormal,    // BF16 or F32: mean + stddev * N(0, 1)
  kUniform,   // F32: U(lo, hi)
  kConst,     // F32: mean
  kE4m3Code,  // F8_E4M3 weight codes: N(0, kE4m3CodeStd) rounded to E4M3 (|code| <= 417 < 448)
  kE2m1Pair,  // U8/I8 bytes of two E2M1 codes (low nibble = even input): N(0, kE2m1CodeStd) rounded
  kE8m0Scale, // F8_E8M0: 2^e, e in {floor(x), floor(x)+1} mixed so that E[scale^2] = 4^x, x = log2_rms
  kE4m3Scale, // F8_E4M3 block scales: uniform over the codes 0x68..0x7e (128 ... 448, never 0 or NaN)
  kTid2eid,   // I64 rows of `row_len` distinct expert ids in [0, experts)
};

struct FillSpec {
  Fill kind = Fill::kNormal;
  double mean = 0.0;
  double stddev = 0.0;
  double lo = 0.0, hi = 0.0;  // kUniform
  double log2_rms = 0.0;      // kE8m0Scale
  int64_t experts = 0;        // kTid2eid
};

inline constexpr double kE4m3CodeStd = 100.0;
inline constexpr double kE2m1CodeStd = 2.5;

// Root mean square of the values the code tables produce (the exact mean over the table), used
// to choose scales so that dequantized weights have the intended RMS.
double e4m3_code_rms();   // over kE4m3Code values
double e2m1_code_rms();   // over kE2m1Pair nibble values
double e4m3_scale_rms();  // over kE4m3Scale values

// A seed for chunk `chunk` of the tensor named `name` under the model seed.
uint64_t chunk_seed(uint64_t model_seed, const char* name, uint64_t chunk);

// Writes units [begin, end) of a tensor whose data starts at `data`. A unit is one element of
// `dtype`, except kE2m1Pair (one byte = two codes) and kTid2eid (one row of `row_len` ids).
void fill_units(const FillSpec& spec, DType dtype, int64_t row_len, uint8_t* data, int64_t begin, int64_t end,
                uint64_t seed);

}  // namespace clawmine::tools
