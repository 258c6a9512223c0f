// Encoders against the decoders bit for bit (every code), the spec's tie and saturation
// cases, and weight quantizers whose dequantized output is within each format's error.
#include "quant/codec.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "support/test_support.h"

namespace clawmine::quant {
namespace {

TEST(Codec, E4m3EveryCodeRoundTrips) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN codes
    EXPECT_EQ(encode_e4m3(e4m3_to_f32(static_cast<uint8_t>(b))), b) << b;
  }
}

TEST(Codec, E4m3SaturatesUnlessAskedNotTo) {
  EXPECT_EQ(encode_e4m3(460.0f), 0x7e);
  EXPECT_EQ(encode_e4m3(1e6f), 0x7e);
  EXPECT_EQ(encode_e4m3(-1e6f), 0xfe);
  EXPECT_EQ(encode_e4m3(460.0f, false), 0x7e);  // torch: 460 -> 448
  EXPECT_EQ(encode_e4m3(470.0f, false), 0x7f);  // torch: 470 -> NaN
  EXPECT_TRUE(std::isnan(e4m3_to_f32(encode_e4m3(1e4f, false))));
}

TEST(Codec, E2m1EveryCodeAndTies) {
  for (uint8_t n = 0; n < 16; ++n) {
    if (n == 8) continue;  // -0 encodes as 0x8 too, but compare values
    EXPECT_EQ(encode_e2m1(decode_e2m1(n)), n) << int(n);
  }
  const float in[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 7.0f};
  const float want[] = {0.0f, 1.0f, 1.0f, 2.0f, 2.0f, 4.0f, 4.0f, 6.0f};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(decode_e2m1(encode_e2m1(in[i])), want[i]) << in[i];
}

TEST(Codec, E8m0) {
  EXPECT_EQ(encode_e8m0(0), 127);
  EXPECT_EQ(e8m0_to_f32(encode_e8m0(-5)), std::ldexp(1.0f, -5));
  EXPECT_EQ(ceil_log2(448.0f / 448.0f), 0);
  EXPECT_EQ(ceil_log2(449.0f / 448.0f), 1);
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
  return std::sqrt(num / den);
}

std::vector<float> dequant_fp8(const QuantizedWeight& q, int64_t out, int64_t in) {
  std::vector<float> w(static_cast<size_t>(out * in));
  const int64_t cb = q.scale_shape[1];
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const int64_t si = (r / 128) * cb + c / 128;
      const float s = q.scale_dtype == DType::kF8E8M0 ? e8m0_to_f32(q.scale[si]) : load_as_f32(q.scale.data(), DType::kF32, si);
      w[r * in + c] = e4m3_to_f32(q.weight[r * in + c]) * s;
    }
  return w;
}

std::vector<float> dequant_fp4(const QuantizedWeight& q, int64_t out, int64_t in, int64_t group) {
  std::vector<float> w(static_cast<size_t>(out * in));
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const uint8_t byte = q.weight[(r * in + c) / 2];
      const uint8_t nib = c % 2 == 0 ? byte & 0xf : byte >> 4;
      const int64_t si = r * (in / group) + c / group;
      const float s = group == 32 ? e8m0_to_f32(q.scale[si]) : e4m3_to_f32(q.scale[si]) * q.weight_scale_2;
      w[r * in + c] = decode_e2m1(nib) * s;
    }
  return w;
}

TEST(Codec, WeightQuantizersStayWithinFormatError) {
  const int64_t out = 200, in = 320;  // partial 128-blocks on both axes
  auto w = test::random_normal(static_cast<size_t>(out * in), 11, 0.05f);
  w[7] = 0.9f;  // an outlier
  const double fp8_e8m0 = rel_error(dequant_fp8(quantize_fp8_block(w.data(), out, in, ScaleDType::kE8M0), out, in), w);
  const double fp8_f32 = rel_error(dequant_fp8(quantize_fp8_block(w.data(), out, in, ScaleDType::kF32), out, in), w);
  const double mx = rel_error(dequant_fp4(quantize_mxfp4(w.data(), out, in), out, in, 32), w);
  const double nv = rel_error(dequant_fp4(quantize_nvfp4(w.data(), out, in), out, in, 16), w);
  EXPECT_LT(fp8_e8m0, 0.05);
  EXPECT_LT(fp8_f32, 0.05);
  EXPECT_LT(mx, 0.15);
  EXPECT_LT(nv, 0.12);
  EXPECT_GT(nv, 0.01);  // really quantized
  EXPECT_LT(nv, mx);    // finer scales beat E8M0 per 32
}

TEST(Codec, Nvfp4PacksLowNibbleFirst) {
  std::vector<float> w(16, 0.0f);
  w[0] = 6.0f;   // block amax 6 -> weight_scale_2 = 6/2688, sf = 448 -> e2m1 6 = code 7
  w[1] = -3.0f;  // code 0x8 | 5
  const auto q = quantize_nvfp4(w.data(), 1, 16);
  EXPECT_EQ(q.weight[0], 0xd7);
  EXPECT_EQ(q.scale[0], 0x7e);
  EXPECT_FLOAT_EQ(q.weight_scale_2, 6.0f / 2688.0f);
}

}  // namespace
}  // namespace clawmine::quant
