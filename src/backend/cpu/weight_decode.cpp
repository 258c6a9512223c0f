// Row decoders for each WeightFormat, via 256-entry tables for the 8-bit codes (E4M3, E8M0) so
// the hot loop is a lookup and a multiply.
#include "backend/cpu/weight_decode.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace clawmine::backend::cpu {
namespace {

constexpr float kE2m1Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

struct ByteTables {
  std::array<float, 256> e4m3;
  std::array<float, 256> e8m0;
  ByteTables() {
    for (int b = 0; b < 256; ++b) {
      e4m3[b] = e4m3_to_f32(static_cast<uint8_t>(b));
      e8m0[b] = e8m0_to_f32(static_cast<uint8_t>(b));
    }
  }
};

const ByteTables& tables() {
  static const ByteTables t;
  return t;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void expect_tensor(const LinearWeight& w, const char* what, const TensorView& t, const Shape& shape,
                   std::initializer_list<DType> dtypes) {
  if (t.empty()) throw Error(str_cat("linear weight ", w.name, ": ", what, " is missing"));
  bool dtype_ok = false;
  for (DType d : dtypes) dtype_ok = dtype_ok || t.dtype == d;
  std::string allowed;
  for (DType d : dtypes) allowed += (allowed.empty() ? "" : "/") + std::string(dtype_name(d));
  if (!dtype_ok)
    throw Error(str_cat("linear weight ", w.name, ": ", what, " has dtype ", dtype_name(t.dtype), ", expected ",
                        allowed));
  if (t.shape != shape)
    throw Error(str_cat("linear weight ", w.name, ": ", what, " has shape ", shape_str(t.shape), ", expected ",
                        shape_str(shape)));
}

void decode_fp4_pairs(const uint8_t* packed, int64_t n, float* out) {
  for (int64_t k = 0; k < n / 2; ++k) {
    out[2 * k] = kE2m1Values[packed[k] & 0xf];
    out[2 * k + 1] = kE2m1Values[packed[k] >> 4];
  }
}

}  // namespace

float e2m1_to_f32(uint8_t nibble) { return kE2m1Values[nibble & 0xf]; }

void validate_linear_weight(const LinearWeight& w) {
  const int64_t O = w.out_features, I = w.in_features;
  if (O <= 0 || I <= 0)
    throw Error(str_cat("linear weight ", w.name, ": bad logical shape [", O, ", ", I, "]"));
  switch (w.format) {
    case WeightFormat::kDense:
      expect_tensor(w, "weight", w.weight, {O, I}, {DType::kF32, DType::kBF16, DType::kF16});
      return;
    case WeightFormat::kFp8Block:
      expect_tensor(w, "weight", w.weight, {O, I}, {DType::kF8E4M3});
      expect_tensor(w, "scale", w.scale, {ceil_div(O, kFp8BlockSize), ceil_div(I, kFp8BlockSize)},
                    {DType::kF8E8M0, DType::kF32});
      return;
    case WeightFormat::kMxfp4:
    case WeightFormat::kNvfp4: {
      const bool mx = w.format == WeightFormat::kMxfp4;
      const int64_t group = mx ? kMxfp4GroupSize : kNvfp4GroupSize;
      if (I % group != 0)
        throw Error(str_cat("linear weight ", w.name, ": ", model::deepseek_v4::weight_format_name(w.format), " needs in_features (", I,
                            ") divisible by ", group));
      expect_tensor(w, "weight", w.weight, {O, I / 2}, {DType::kU8, DType::kI8});
      expect_tensor(w, "scale", w.scale, {O, I / group}, {mx ? DType::kF8E8M0 : DType::kF8E4M3});
      if (!mx) {
        if (w.weight_scale_2.empty() || w.weight_scale_2.dtype != DType::kF32 || w.weight_scale_2.numel() != 1)
          throw Error(str_cat("linear weight ", w.name, ": nvfp4 needs weight_scale_2 as one F32 value"));
      }
      return;
    }
  }
  throw Error(str_cat("linear weight ", w.name, ": unknown weight format"));
}

void decode_row(const LinearWeight& w, int64_t row, float* out) {
  const int64_t I = w.in_features;
  const ByteTables& tab = tables();
  switch (w.format) {
    case WeightFormat::kDense: {
      const uint8_t* base = static_cast<const uint8_t*>(w.weight.data);
      if (w.weight.dtype == DType::kF32) {
        std::memcpy(out, base + static_cast<size_t>(row * I) * 4, static_cast<size_t>(I) * 4);
      } else if (w.weight.dtype == DType::kBF16) {
        const uint16_t* p = reinterpret_cast<const uint16_t*>(base) + row * I;
        for (int64_t i = 0; i < I; ++i) out[i] = bf16_to_f32(p[i]);
      } else {
        const uint16_t* p = reinterpret_cast<const uint16_t*>(base) + row * I;
        for (int64_t i = 0; i < I; ++i) out[i] = f16_to_f32(p[i]);
      }
      return;
    }
    case WeightFormat::kFp8Block: {
      const uint8_t* q = static_cast<const uint8_t*>(w.weight.data) + row * I;
      const int64_t scale_cols = w.scale.dim(1);
      const int64_t srow = row / kFp8BlockSize;
      for (int64_t b = 0; b < scale_cols; ++b) {
        const size_t si = static_cast<size_t>(srow * scale_cols + b);
        const float s = w.scale.dtype == DType::kF32 ? static_cast<const float*>(w.scale.data)[si]
                                                     : tab.e8m0[static_cast<const uint8_t*>(w.scale.data)[si]];
        const int64_t end = std::min(I, (b + 1) * kFp8BlockSize);
        for (int64_t i = b * kFp8BlockSize; i < end; ++i) out[i] = tab.e4m3[q[i]] * s;
      }
      return;
    }
    case WeightFormat::kMxfp4:
    case WeightFormat::kNvfp4: {
      const bool mx = w.format == WeightFormat::kMxfp4;
      const int64_t group = mx ? kMxfp4GroupSize : kNvfp4GroupSize;
      const uint8_t* packed = static_cast<const uint8_t*>(w.weight.data) + row * (I / 2);
      const uint8_t* scales = static_cast<const uint8_t*>(w.scale.data) + row * (I / group);
      decode_fp4_pairs(packed, I, out);
      const float global = mx ? 1.0f : *static_cast<const float*>(w.weight_scale_2.data);
      for (int64_t g = 0; g < I / group; ++g) {
        const float s = mx ? tab.e8m0[scales[g]] : tab.e4m3[scales[g]];
        // e2m1 * scale is exact (at most 6 significant bits); the global scale rounds once.
        for (int64_t i = g * group; i < (g + 1) * group; ++i) out[i] = mx ? out[i] * s : (out[i] * s) * global;
      }
      return;
    }
  }
}

}  // namespace clawmine::backend::cpu
