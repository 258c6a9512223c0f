// Device-side descriptors and exact decoders of the linear weight formats (the CPU reference is
// backend/cpu/weight_decode.*): dense F32/BF16/F16; FP8 E4M3 with 128x128 block scales (E8M0
// or F32); MXFP4 (E2M1 pairs, low nibble = even element, E8M0 per 32 inputs); NVFP4 (E2M1
// pairs, E4M3 per 16 inputs, times the F32 device scalar weight_scale_2). Every kernel reads
// weights through WeightDecoder<F>, so one kernel template serves every format.
// Exactness: e2m1/e4m3 times a power-of-two or E4M3 scale is exact in float32; an F32 FP8
// scale and NVFP4's weight_scale_2 round once, in the CPU's order ((e2m1 * s) * global).
//
// Tensor-core GEMV fragments (linear_gemv.cu, bf16 activations): inside one mma.sync the order
// of k is free as long as weights and activations use the same one, so each decoder turns a
// 16-byte chunk into bf16x2 words in the order that is cheapest for it, and permutes natural
// bf16x2 words of x the same way:
//   kMma                          the format has this path (BF16, FP8 either scale, MXFP4, NVFP4)
//   MmaScales mma_scales(d, row, chunk)   what mma_step needs besides the chunk's bytes
//   mma_step(raw, sc, s, lo, hi)  k-step s (elements 4s..4s+3 of the chunk, in decoder order) as
//                                 two bf16x2 words, exact; lo pairs with x_step's lo, hi with hi
//   x_step(xw, s, lo, hi)         the same for the chunk's activations, xw = E/2 natural words
//   kMmaBlockScale                FP8: mma_step yields raw e4m3 values; the 128x128 block scale
//                                 multiplies the f32 partial sum of each 64-wide k block
//   kMmaOutUnit                   the f32 result is multiplied by kMmaOutUnit (times NVFP4's g)
// and, for the streaming GEMV that loads a group's scales ahead of its math (register prefetch),
// the same split into a raw load and a decode:
//   scale_row(d, row)             where the scales of weight row `row` start
//   scale_bits(srow, chunk)       the bits of the scale covering chunk `chunk` of that row, as
//                                 stored (NVFP4 two E4M3 bytes, MXFP4 one E8M0 byte, FP8 the
//                                 128x128 block's E8M0 byte or F32 word, else 0)
//   mma_scales_of(bits)           FP4: == mma_scales(d, row, chunk)
//   block_scale_of(bits)          FP8: the block scale's value (scale_at)
//   kMmaFastScale                 MXFP4: when mma_fast_ok(raw) (E8M0 <= 2^1) one bf16 multiply
//                                 by s * 2^126 decodes a pair (mma_scales_fast, mma_step_fast)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "backend/cuda/common.cuh"

namespace clawmine::backend::cuda {

// Storage formats as kernels see them (dense dtypes and FP8 scale dtypes are separate formats
// so the decoder is resolved at compile time).
enum class WFmt : int32_t { kF32 = 0, kBF16, kF16, kFp8E8M0, kFp8F32, kMxfp4, kNvfp4 };
inline constexpr int kNumWFmt = 7;
const char* wfmt_name(WFmt f);
// E2M1 weights with per-block scales (MXFP4: E8M0 per 32; NVFP4: E4M3 per 16 and a global scale).
__host__ __device__ constexpr bool wfmt_fp4(WFmt f) { return f == WFmt::kMxfp4 || f == WFmt::kNvfp4; }

// One linear weight in device memory: W logically [rows, k].
struct WeightDesc {
  const uint8_t* w = nullptr;             // [rows, row_bytes]
  const uint8_t* scale = nullptr;         // FP8 [ceil(rows/128), scale_ld]; FP4 [rows, scale_ld]
  const float* scale2 = nullptr;          // NVFP4 weight_scale_2 (device F32 scalar)
  const float* input_scale = nullptr;     // NVFP4 static activation scale (device F32 scalar) or null
  int64_t rows = 0;                       // out_features
  int64_t k = 0;                          // in_features
  int64_t row_bytes = 0;                  // bytes of one stored row
  int64_t scale_ld = 0;                   // scale elements per scale row
  int32_t fmt = 0;                        // WFmt
  int32_t input_scale_trusted = 1;        // LinearWeight::input_scale_trusted
};

// The L2 prefetch size of the weight stream's loads in bytes: 0 the load's own sectors; 128 (the
// default) or 256 a miss fetches the aligned 128 / 256 bytes around it from DRAM.
// The decode GEMVs read each row in 64-byte pieces (FP4: a k block of a row per quad of lanes), so
// at 0 a 128-byte line comes from DRAM in two requests issued a k block apart. tools/load_pattern
// (H200, the routed experts' one-token gate/up, loads alone): the wgmma kernel's pattern 14.0 us ->
// 12.9 at 128 (the address-order read of the same bytes: 12.6), 17.1 -> 14.9 with 300 cycles of
// math per k block; the kernels themselves (tools/gemv_probe, T = 1): MXFP4 experts' gate/up
// streaming 27.5 -> 26.4 us, on wgmma 20.2 -> 19.9, down 15.8 -> 15.0 / 11.6 -> 11.4, FP8 within
// noise; decode b=1 5.24 -> 5.22 ms/token at 128 in two calls, 5.30-5.36 at 256
// (docs/PERFORMANCE.md, thirty-seventh session). The loaded values are the same at every setting.
#ifndef CLAWMINE_WEIGHT_L2_PREFETCH
#define CLAWMINE_WEIGHT_L2_PREFETCH 128
#endif
constexpr int kWeightL2Prefetch = CLAWMINE_WEIGHT_L2_PREFETCH;
// 16-byte weight load that bypasses L1 (weights are streamed once per pass); kL2: the L2 prefetch
// size (tools/load_pattern times each).
template <int kL2 = kWeightL2Prefetch>
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  static_assert(kL2 == 0 || kL2 == 128 || kL2 == 256, "L2 prefetch size: 0, 128 or 256");
  uint4 v;
#define CLAWMINE_LD_STREAM16(L2)                                                         \
  asm volatile("ld.global.nc.L1::no_allocate" L2 ".v4.u32 {%0, %1, %2, %3}, [%4];" \
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)                            \
               : "l"(p))
  if constexpr (kL2 == 256) {
    CLAWMINE_LD_STREAM16(".L2::256B");
  } else if constexpr (kL2 == 128) {
    CLAWMINE_LD_STREAM16(".L2::128B");
  } else {
    CLAWMINE_LD_STREAM16("");
  }
#undef CLAWMINE_LD_STREAM16
  return v;
}
__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// E2M1 nibble -> float, exactly: the 3 magnitude bits placed as a float32 exponent/mantissa give
// value * 2^-126 (0.5 lands on the subnormal 2^-127); the power-of-two multiply restores it.
__device__ __forceinline__ float e2m1_value(uint32_t nib) {
  return __uint_as_float(((nib & 8u) << 28) | ((nib & 7u) << 22)) * 0x1p126f;
}
// Two E4M3 bytes (low byte = first element) -> two floats via the hardware E4M3 -> F16
// conversion (every E4M3 value, NaN included, is exact in F16).
__device__ __forceinline__ void e4m3x2_values(uint32_t two_bytes, float& lo, float& hi) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes & 0xffffu), __NV_E4M3);
  __half2 h2;
  h2 = *reinterpret_cast<const __half2*>(&h);
  lo = __low2float(h2);
  hi = __high2float(h2);
}

// Two E4M3 bytes (low byte = first element) -> one bf16x2 word, exactly (NaN stays NaN): the
// hardware E4M3 -> F16 pair conversion, widened to f32, packed to bf16 (every E4M3 value has at
// most 4 significant bits, so the last rounding is exact).
__device__ __forceinline__ uint32_t e4m3x2_bf16x2(uint32_t two_bytes) {
  float lo, hi;
  e4m3x2_values(two_bytes, lo, hi);
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t bf16x2_bits(__nv_bfloat162 v) { return *reinterpret_cast<const uint32_t*>(&v); }
__device__ __forceinline__ __nv_bfloat162 as_bf16x2(uint32_t u) { return *reinterpret_cast<const __nv_bfloat162*>(&u); }
// Nibbles j and j+4 of a word of packed E2M1 (j = 0..3) as one bf16x2 word whose bits are the
// nibbles' own: sign to bit 15 (31), exponent/mantissa bits to 8:6 (24:22). That bf16 value is
// e2m1 * 2^-126 (0.5 lands on the bf16 subnormal 2^-127); see Fp4Decoder::mma_step.
__device__ __forceinline__ uint32_t e2m1_pair_bits(uint32_t word, int j) {
  const uint32_t q = word << (12 - 4 * j);  // nibble j at bits 15:12, nibble j+4 at 31:28
  return (q & 0x80008000u) | ((q >> 6) & 0x01c001c0u);
}

// WeightDecoder<F>: kChunk elements per 16 stored bytes, decoded kPiece (<= 8) at a time.
//   Scales load_scales(d, row, chunk)      the chunk's scale values (loaded early with the chunk)
//   piece<kGlobal>(raw, q, sc, g, w)       elements [q*kPiece, (q+1)*kPiece) of the chunk, exact;
//                                          kGlobal=false leaves out NVFP4's global g (the caller
//                                          multiplies it once, e.g. in a bf16 MMA epilogue)
//   one(d, row, k, g)                      one element, any alignment (fallback paths)
//   kBf16Exact                             decoded values (without g) are exact in bf16
// and, for the GEMV, which factors the scales out of the inner products (one multiply per
// piece instead of one per element; only the float rounding order changes):
//   kScaled                                the format has block scales
//   raw(raw, q, w)                         the piece's unscaled values, exact, in units of kRawUnit
//   piece_scale(sc, q, g)                  the piece's multiplier (block scale, times g for NVFP4)
template <WFmt F>
struct WeightDecoder;

template <>
struct WeightDecoder<WFmt::kF32> {
  static constexpr int kChunk = 4, kPiece = 4;
  static constexpr bool kBf16Exact = false;
  struct Scales {};
  __device__ static Scales load_scales(const WeightDesc&, int64_t, int64_t) { return {}; }
  template <bool kGlobal = true>
  __device__ static void piece(const uint4& raw, int, const Scales&, float, float* w) {
    w[0] = __uint_as_float(raw.x);
    w[1] = __uint_as_float(raw.y);
    w[2] = __uint_as_float(raw.z);
    w[3] = __uint_as_float(raw.w);
  }
  __device__ static float one(const WeightDesc& d, int64_t row, int64_t k, float) {
    return reinterpret_cast<const float*>(d.w + row * d.row_bytes)[k];
  }
  static constexpr bool kScaled = false;
  static constexpr float kRawUnit = 1.0f;
  __device__ static void raw(const uint4& r, int q, float* w) { piece<true>(r, q, Scales{}, 1.0f, w); }
  __device__ static float piece_scale(const Scales&, int, float) { return 1.0f; }
  static constexpr bool kMma = false;
};

template <WFmt F, bool kBf16>
struct Half16Decoder {
  static constexpr int kChunk = 8, kPiece = 8;
  static constexpr bool kBf16Exact = kBf16;
  struct Scales {};
  __device__ static Scales load_scales(const WeightDesc&, int64_t, int64_t) { return {}; }
  __device__ static float value(uint16_t b) {
    if constexpr (kBf16) {
      return __uint_as_float(static_cast<uint32_t>(b) << 16);
    } else {
      return __half2float(__ushort_as_half(b));
    }
  }
  template <bool kGlobal = true>
  __device__ static void piece(const uint4& raw, int, const Scales&, float, float* w) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t v = word_of(raw, i);
      w[2 * i] = value(static_cast<uint16_t>(v & 0xffffu));
      w[2 * i + 1] = value(static_cast<uint16_t>(v >> 16));
    }
  }
  __device__ static float one(const WeightDesc& d, int64_t row, int64_t k, float) {
    return value(reinterpret_cast<const uint16_t*>(d.w + row * d.row_bytes)[k]);
  }
  static constexpr bool kScaled = false;
  static constexpr float kRawUnit = 1.0f;
  __device__ static void raw(const uint4& r, int q, float* w) { piece<true>(r, q, Scales{}, 1.0f, w); }
  __device__ static float piece_scale(const Scales&, int, float) { return 1.0f; }
  // Tensor-core GEMV (BF16 only: F16 values are not all bf16): the stored words, natural order.
  static constexpr bool kMma = kBf16;
  static constexpr bool kMmaBlockScale = false;
  static constexpr float kMmaOutUnit = 1.0f;
  static constexpr bool kMmaFastScale = false;
  struct MmaScales {};
  __device__ static MmaScales mma_scales(const WeightDesc&, int64_t, int64_t) { return {}; }
  __device__ static const uint8_t* scale_row(const WeightDesc&, int64_t) { return nullptr; }
  __device__ static uint32_t scale_bits(const uint8_t*, int64_t) { return 0u; }
  __device__ static MmaScales mma_scales_of(uint32_t) { return {}; }
  __device__ static void mma_step(const uint4& r, const MmaScales&, int s, uint32_t& lo, uint32_t& hi) {
    lo = word_of(r, 2 * s);
    hi = word_of(r, 2 * s + 1);
  }
  __device__ static void x_step(const uint32_t* xw, int s, uint32_t& lo, uint32_t& hi) {
    lo = xw[2 * s];
    hi = xw[2 * s + 1];
  }
};
template <>
struct WeightDecoder<WFmt::kBF16> : Half16Decoder<WFmt::kBF16, true> {};
template <>
struct WeightDecoder<WFmt::kF16> : Half16Decoder<WFmt::kF16, false> {};

// FP8 E4M3 [rows, k] with one scale per 128x128 block; w = e4m3 * s (one rounding for F32 s).
template <bool kF32Scale>
struct Fp8Decoder {
  static constexpr int kChunk = 16, kPiece = 8;
  static constexpr int kBlock = 128;
  static constexpr bool kBf16Exact = !kF32Scale;
  struct Scales {
    float s;
  };
  __device__ static const uint8_t* scale_row(const WeightDesc& d, int64_t row) {
    return d.scale + (row / kBlock) * d.scale_ld * (kF32Scale ? 4 : 1);
  }
  __device__ static uint32_t scale_bits(const uint8_t* srow, int64_t chunk) {
    const int64_t i = chunk / (kBlock / kChunk);
    if constexpr (kF32Scale) {
      return __ldg(reinterpret_cast<const unsigned int*>(srow) + i);
    } else {
      return __ldg(srow + i);
    }
  }
  __device__ static float block_scale_of(uint32_t raw) {
    if constexpr (kF32Scale) {
      return __uint_as_float(raw);
    } else {
      return decode_e8m0(static_cast<uint8_t>(raw));
    }
  }
  __device__ static float scale_at(const WeightDesc& d, int64_t row, int64_t k) {
    return block_scale_of(scale_bits(scale_row(d, row), k / kChunk));
  }
  __device__ static Scales load_scales(const WeightDesc& d, int64_t row, int64_t chunk) {
    return {scale_at(d, row, chunk * kChunk)};
  }
  static constexpr bool kScaled = true;
  static constexpr float kRawUnit = 1.0f;
  __device__ static void raw(const uint4& r, int q, float* w) {
    const uint32_t lo = word_of(r, 2 * q), hi = word_of(r, 2 * q + 1);
    e4m3x2_values(lo, w[0], w[1]);
    e4m3x2_values(lo >> 16, w[2], w[3]);
    e4m3x2_values(hi, w[4], w[5]);
    e4m3x2_values(hi >> 16, w[6], w[7]);
  }
  __device__ static float piece_scale(const Scales& sc, int, float) { return sc.s; }
  template <bool kGlobal = true>
  __device__ static void piece(const uint4& r, int q, const Scales& sc, float, float* w) {
    raw(r, q, w);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = w[i] * sc.s;
  }
  __device__ static float one(const WeightDesc& d, int64_t row, int64_t k, float) {
    return decode_e4m3(d.w[row * d.row_bytes + k]) * scale_at(d, row, k);
  }
  // Tensor-core GEMV: raw e4m3 values (bf16-exact) in natural order; the block scale multiplies
  // f32 partial sums (a 64-wide k block and a 16-row m tile never straddle a 128 block).
  static constexpr bool kMma = true;
  static constexpr bool kMmaBlockScale = true;
  static constexpr float kMmaOutUnit = 1.0f;
  static constexpr bool kMmaFastScale = false;
  struct MmaScales {};
  __device__ static MmaScales mma_scales(const WeightDesc&, int64_t, int64_t) { return {}; }
  __device__ static MmaScales mma_scales_of(uint32_t) { return {}; }
  __device__ static void mma_step(const uint4& r, const MmaScales&, int s, uint32_t& lo, uint32_t& hi) {
    const uint32_t v = word_of(r, s);
    lo = e4m3x2_bf16x2(v);
    hi = e4m3x2_bf16x2(v >> 16);
  }
  __device__ static void x_step(const uint32_t* xw, int s, uint32_t& lo, uint32_t& hi) {
    lo = xw[2 * s];
    hi = xw[2 * s + 1];
  }
};
template <>
struct WeightDecoder<WFmt::kFp8E8M0> : Fp8Decoder<false> {};
template <>
struct WeightDecoder<WFmt::kFp8F32> : Fp8Decoder<true> {};

// Packed E2M1 pairs with a per-group scale: MXFP4 (E8M0 per 32) or NVFP4 (E4M3 per 16, then g).
template <bool kNv>
struct Fp4Decoder {
  static constexpr int kChunk = 32, kPiece = 8;
  static constexpr int kGroup = kNv ? 16 : 32;
  static constexpr bool kBf16Exact = true;  // e2m1 (2 significant bits) * E4M3/E8M0 scale
  struct Scales {
    float s[kChunk / kGroup];
  };
  __device__ static float scale_value(uint8_t b) { return kNv ? decode_e4m3(b) : decode_e8m0(b); }
  __device__ static Scales load_scales(const WeightDesc& d, int64_t row, int64_t chunk) {
    Scales sc;
    const uint8_t* p = d.scale + row * d.scale_ld + chunk * (kChunk / kGroup);
#pragma unroll
    for (int i = 0; i < kChunk / kGroup; ++i) sc.s[i] = scale_value(__ldg(p + i));
    return sc;
  }
  // Unscaled values in units of 2^14: nibbles j and j+4 of the piece's word (bits 4j and
  // 4j+16) become one half2 whose exponent/mantissa bits are the nibble's (e2m1 * 2^-14, exact,
  // 0.5 landing on a half subnormal), widened to float.
  static constexpr bool kScaled = true;
  static constexpr float kRawUnit = 0x1p14f;
  __device__ static void raw(const uint4& r, int q, float* w) {
    const uint32_t v = word_of(r, q);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t t = v >> (4 * j);
      const uint32_t h = ((t & 0x00070007u) << 9) | ((t & 0x00080008u) << 12);
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
      w[j] = f.x;
      w[j + 4] = f.y;
    }
  }
  __device__ static float piece_scale(const Scales& sc, int q, float g) {
    const float s = sc.s[(q * kPiece) / kGroup];
    return kNv ? s * g : s;
  }
  template <bool kGlobal = true>
  __device__ static void piece(const uint4& raw, int q, const Scales& sc, float g, float* w) {
    const uint32_t v = word_of(raw, q);
    const float s = sc.s[(q * kPiece) / kGroup];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float e = e2m1_value(v >> (4 * i)) * s;  // exact
      w[i] = (kNv && kGlobal) ? e * g : e;
    }
  }
  __device__ static float one(const WeightDesc& d, int64_t row, int64_t k, float g) {
    const uint8_t b = d.w[row * d.row_bytes + k / 2];
    const float e = e2m1_value((k & 1) ? (b >> 4) : b) * scale_value(d.scale[row * d.scale_ld + k / kGroup]);
    return kNv ? e * g : e;
  }
  // Tensor-core GEMV. Word q of the chunk gives steps 2q and 2q+1; step s pairs elements (j, j+4)
  // of the word, j = 2(s%2) (lo) and j+1 (hi), from e2m1_pair_bits (e2m1 * 2^-126), then exact
  // bf16 multiplies: MXFP4 by 2^126 and then the E8M0 scale s (two steps: s * 2^126 can leave
  // bf16's range); NVFP4 by s * 2^118 in one (E4M3 s in [2^-9, 448] keeps it finite), so its
  // values are e2m1 * s * 2^-8 (at most 6 significant bits) and the result is scaled by 2^8 * g.
  static constexpr bool kMma = true;
  static constexpr bool kMmaBlockScale = false;
  static constexpr float kMmaOutUnit = kNv ? 256.0f : 1.0f;
  struct MmaScales {
    uint32_t m[kChunk / kGroup];  // bf16x2 multipliers (both halves equal)
  };
  // Packed: NVFP4's two E4M3 scales of a chunk with one E4M3x2 -> F16x2 conversion (exact, NaN
  // stays NaN), widened, times 2^118, packed to bf16 (exact); MXFP4's E8M0 as its power of two.
  __device__ static const uint8_t* scale_row(const WeightDesc& d, int64_t row) { return d.scale + row * d.scale_ld; }
  __device__ static uint32_t scale_bits(const uint8_t* srow, int64_t chunk) {
    const uint8_t* p = srow + chunk * (kChunk / kGroup);
    if constexpr (kNv) {
      return __ldg(reinterpret_cast<const unsigned short*>(p));  // K % 32 == 0: even offset
    } else {
      return __ldg(p);
    }
  }
  __device__ static MmaScales mma_scales_of(uint32_t raw) {
    MmaScales sc;
    if constexpr (kNv) {
      float s0, s1;
      e4m3x2_values(raw, s0, s1);
      const uint32_t b = bf16x2_bits(__floats2bfloat162_rn(s0 * 0x1p118f, s1 * 0x1p118f));
      sc.m[0] = __byte_perm(b, 0u, 0x1010);
      sc.m[1] = __byte_perm(b, 0u, 0x3232);
    } else {
      sc.m[0] = bf16x2_bits(__float2bfloat162_rn(decode_e8m0(static_cast<uint8_t>(raw))));
    }
    return sc;
  }
  __device__ static MmaScales mma_scales(const WeightDesc& d, int64_t row, int64_t chunk) {
    return mma_scales_of(scale_bits(scale_row(d, row), chunk));
  }
  // MXFP4 with E8M0 byte e <= 128 (s <= 2): s * 2^126 = 2^(e-1) is a normal bf16 (exponent field
  // e + 126 <= 254), so one exact multiply of the e2m1 * 2^-126 pair gives e2m1 * s. NaN (0xff)
  // and larger scales keep the two-multiply mma_step.
  static constexpr bool kMmaFastScale = !kNv;
  __device__ static bool mma_fast_ok(uint32_t raw) { return raw <= 128u; }
  __device__ static MmaScales mma_scales_fast(uint32_t raw) {
    MmaScales sc;
    sc.m[0] = ((raw + 126u) << 7) * 0x00010001u;
    return sc;
  }
  __device__ static void mma_step_fast(const uint4& r, const MmaScales& sc, int s, uint32_t& lo, uint32_t& hi) {
    const uint32_t v = word_of(r, s / 2);
    const int j = 2 * (s % 2);
    const __nv_bfloat162 m = as_bf16x2(sc.m[(s * 4) / kGroup]);
    lo = bf16x2_bits(__hmul2(as_bf16x2(e2m1_pair_bits(v, j)), m));
    hi = bf16x2_bits(__hmul2(as_bf16x2(e2m1_pair_bits(v, j + 1)), m));
  }
  __device__ static void mma_step(const uint4& r, const MmaScales& sc, int s, uint32_t& lo, uint32_t& hi) {
    const uint32_t v = word_of(r, s / 2);
    const int j = 2 * (s % 2);
    const __nv_bfloat162 m = as_bf16x2(sc.m[(s * 4) / kGroup]);
    __nv_bfloat162 a = as_bf16x2(e2m1_pair_bits(v, j)), b = as_bf16x2(e2m1_pair_bits(v, j + 1));
    if constexpr (!kNv) {
      const __nv_bfloat162 two126 = as_bf16x2(0x7e807e80u);
      a = __hmul2(a, two126);
      b = __hmul2(b, two126);
    }
    lo = bf16x2_bits(__hmul2(a, m));
    hi = bf16x2_bits(__hmul2(b, m));
  }
  // xw: 16 natural words (x0x1, x2x3, ...); step s of word q needs (x_j, x_j+4) and (x_j+1, x_j+5).
  __device__ static void x_step(const uint32_t* xw, int s, uint32_t& lo, uint32_t& hi) {
    const int q = s / 2, j = 2 * (s % 2);
    const uint32_t a = xw[4 * q + j / 2], b = xw[4 * q + 2 + j / 2];  // {x_j, x_j+1}, {x_j+4, x_j+5}
    lo = __byte_perm(a, b, 0x5410);
    hi = __byte_perm(a, b, 0x7632);
  }
};
template <>
struct WeightDecoder<WFmt::kMxfp4> : Fp4Decoder<false> {};
template <>
struct WeightDecoder<WFmt::kNvfp4> : Fp4Decoder<true> {};

// NVFP4's global scale (1 for every other format), read in-kernel from the device scalar.
template <WFmt F>
__device__ __forceinline__ float global_scale(const WeightDesc& d) {
  if constexpr (F == WFmt::kNvfp4) {
    return __ldg(d.scale2);
  } else {
    return 1.0f;
  }
}

}  // namespace clawmine::backend::cuda
