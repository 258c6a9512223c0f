#include "quant/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "quant/qdq.h"

namespace clawmine::quant {
namespace {

const float kE2m1Magnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

float block_amax(const float* w, int64_t in, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  float amax = 0.0f;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * in + c]));
  return amax;
}

void check_finite(const float* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    CLAWMINE_CHECK(std::isfinite(w[i]), "cannot quantize a non-finite weight value (element ", i, ")");
}

}  // namespace

uint8_t encode_e4m3(float x, bool saturate) {
  if (std::isnan(x)) return 0x7f;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (!saturate && std::fabs(x) >= 464.0f) return sign | 0x7f;  // torch: rounds past 448 to NaN
  const float v = std::fabs(round_to_e4m3(x));
  if (v == 0.0f) return sign;
  if (v < std::ldexp(1.0f, -6)) return sign | static_cast<uint8_t>(v / std::ldexp(1.0f, -9));  // subnormal
  const int e = static_cast<int>(std::floor(std::log2(v)));
  const int mant = static_cast<int>(v / std::ldexp(1.0f, e - 3)) - 8;
  return sign | static_cast<uint8_t>(((e + 7) << 3) | mant);
}

uint8_t encode_e2m1(float x) {
  const float v = round_to_e2m1(std::isnan(x) ? 0.0f : x);
  const uint8_t sign = std::signbit(v) ? 0x8 : 0x0;
  const float a = std::fabs(v);
  for (uint8_t i = 0; i < 8; ++i)
    if (kE2m1Magnitudes[i] == a) return sign | i;
  return sign | 7;
}

float decode_e2m1(uint8_t nibble) {
  const float m = kE2m1Magnitudes[nibble & 7];
  return (nibble & 8) ? -m : m;
}

uint8_t encode_e8m0(int exponent) { return static_cast<uint8_t>(std::clamp(exponent, -127, 127) + 127); }

int ceil_log2(float v) { return static_cast<int>(std::ceil(std::log2(v))); }

QuantizedWeight quantize_fp8_block(const float* w, int64_t out, int64_t in, ScaleDType scale_dtype) {
  check_finite(w, out * in);
  QuantizedWeight q;
  q.weight_dtype = DType::kF8E4M3;
  q.weight_shape = {out, in};
  q.weight.resize(static_cast<size_t>(out * in));
  const int64_t rb = (out + kFp8Block - 1) / kFp8Block, cb = (in + kFp8Block - 1) / kFp8Block;
  q.scale_dtype = scale_dtype == ScaleDType::kE8M0 ? DType::kF8E8M0 : DType::kF32;
  q.scale_shape = {rb, cb};
  q.scale.resize(static_cast<size_t>(rb * cb) * dtype_size(q.scale_dtype));
  for (int64_t br = 0; br < rb; ++br) {
    for (int64_t bc = 0; bc < cb; ++bc) {
      const int64_t r0 = br * kFp8Block, r1 = std::min(out, r0 + kFp8Block);
      const int64_t c0 = bc * kFp8Block, c1 = std::min(in, c0 + kFp8Block);
      const float amax = std::max(block_amax(w, in, r0, r1, c0, c1), 1e-12f);
      float s;
      if (scale_dtype == ScaleDType::kE8M0) {
        const int e = ceil_log2(amax / kE4m3Max);
        s = std::ldexp(1.0f, std::clamp(e, -127, 127));
        q.scale[br * cb + bc] = encode_e8m0(e);
      } else {
        s = amax / kE4m3Max;
        std::memcpy(q.scale.data() + 4 * (br * cb + bc), &s, 4);
      }
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) q.weight[r * in + c] = encode_e4m3(w[r * in + c] / s);
    }
  }
  return q;
}

QuantizedWeight quantize_mxfp4(const float* w, int64_t out, int64_t in) {
  CLAWMINE_CHECK(in % kMxfp4Group == 0, "MXFP4 needs in_features divisible by ", kMxfp4Group, ", got ", in);
  check_finite(w, out * in);
  QuantizedWeight q;
  q.weight_dtype = DType::kU8;
  q.weight_shape = {out, in / 2};
  q.weight.assign(static_cast<size_t>(out * in / 2), 0);
  q.scale_dtype = DType::kF8E8M0;
  q.scale_shape = {out, in / kMxfp4Group};
  q.scale.resize(static_cast<size_t>(out * in / kMxfp4Group));
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t g = 0; g < in / kMxfp4Group; ++g) {
      const int64_t c0 = g * kMxfp4Group;
      const float amax = std::max(block_amax(w, in, r, r + 1, c0, c0 + kMxfp4Group), 1e-30f);
      const int e = std::clamp(ceil_log2(amax / kE2m1Max), -127, 127);
      q.scale[r * (in / kMxfp4Group) + g] = encode_e8m0(e);
      const float s = std::ldexp(1.0f, e);
      for (int64_t c = c0; c < c0 + kMxfp4Group; ++c) {
        const uint8_t nib = encode_e2m1(w[r * in + c] / s);
        q.weight[(r * in + c) / 2] |= (c % 2 == 0) ? nib : static_cast<uint8_t>(nib << 4);
      }
    }
  }
  return q;
}

QuantizedWeight quantize_nvfp4(const float* w, int64_t out, int64_t in) {
  CLAWMINE_CHECK(in % kNvfp4Group == 0, "NVFP4 needs in_features divisible by ", kNvfp4Group, ", got ", in);
  check_finite(w, out * in);
  QuantizedWeight q;
  q.weight_dtype = DType::kU8;
  q.weight_shape = {out, in / 2};
  q.weight.assign(static_cast<size_t>(out * in / 2), 0);
  q.scale_dtype = DType::kF8E4M3;
  q.scale_shape = {out, in / kNvfp4Group};
  q.scale.resize(static_cast<size_t>(out * in / kNvfp4Group));
  const float amax = std::max(block_amax(w, in, 0, out, 0, in), 1e-30f);
  q.weight_scale_2 = amax / (kE2m1Max * kE4m3Max);
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t g = 0; g < in / kNvfp4Group; ++g) {
      const int64_t c0 = g * kNvfp4Group;
      const float bmax = block_amax(w, in, r, r + 1, c0, c0 + kNvfp4Group);
      // ModelOpt: block scale amax16 / (6 * weight_scale_2) in E4M3, kept within [2^-9, 448], zero -> 1.
      float sf = bmax > 0 ? bmax / (kE2m1Max * q.weight_scale_2) : 1.0f;
      sf = std::clamp(sf, std::ldexp(1.0f, -9), kE4m3Max);
      const uint8_t sf_byte = encode_e4m3(sf);
      q.scale[r * (in / kNvfp4Group) + g] = sf_byte;
      const float s = e4m3_to_f32(sf_byte) * q.weight_scale_2;
      for (int64_t c = c0; c < c0 + kNvfp4Group; ++c) {
        const uint8_t nib = encode_e2m1(w[r * in + c] / s);
        q.weight[(r * in + c) / 2] |= (c % 2 == 0) ? nib : static_cast<uint8_t>(nib << 4);
      }
    }
  }
  return q;
}

}  // namespace clawmine::quant
