// Bit-exact row decoding of hand-built FP8 / MXFP4 / NVFP4 / dense bytes, and shape validation.
#include "backend/cpu/weight_decode.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::backend::cpu {
namespace {

using test::HostTensor;

std::vector<float> decode(const LinearWeight& w, int64_t row) {
  std::vector<float> out(static_cast<size_t>(w.in_features), NAN);
  decode_row(w, row, out.data());
  return out;
}

TEST(WeightDecode, E2m1Table) {
  const float expected[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  for (uint8_t n = 0; n < 16; ++n) {
    EXPECT_EQ(e2m1_to_f32(n), expected[n]) << int(n);
    EXPECT_EQ(std::signbit(e2m1_to_f32(n)), n >= 8) << int(n);
  }
}

TEST(WeightDecode, Fp8BlockWithE8m0Scales) {
  // [130, 260]: scale blocks [2, 3]; every code 0x38 (= 1.0) except three hand-picked ones.
  HostTensor q(DType::kF8E4M3, {130, 260}), s(DType::kF8E8M0, {2, 3});
  std::fill(q.bytes.begin(), q.bytes.end(), 0x38);
  q.as<uint8_t>()[0] = 0xC4;              // -(1 + 4/8) * 2^(8-7) = -3
  q.as<uint8_t>()[129 * 260 + 259] = 0x01;  // subnormal 2^-9
  q.as<uint8_t>()[5 * 260 + 130] = 0x7E;    // 448, the largest finite E4M3
  for (int bo = 0; bo < 2; ++bo)
    for (int bi = 0; bi < 3; ++bi) s.as<uint8_t>()[bo * 3 + bi] = static_cast<uint8_t>(127 + bo * 3 + bi);
  LinearWeight w;
  w.name = "layers.0.attn.wq_a";
  w.out_features = 130;
  w.in_features = 260;
  w.format = WeightFormat::kFp8Block;
  w.weight = q.view();
  w.scale = s.view();
  ASSERT_NO_THROW(validate_linear_weight(w));
  for (int64_t o : {0, 5, 127, 128, 129}) {
    const std::vector<float> row = decode(w, o);
    for (int64_t i = 0; i < 260; ++i) {
      float expect = std::ldexp(1.0f, static_cast<int>(o / 128 * 3 + i / 128));
      if (o == 0 && i == 0) expect = -3.0f;
      if (o == 129 && i == 259) expect = std::ldexp(1.0f, -9 + 5);
      if (o == 5 && i == 130) expect = 896.0f;
      ASSERT_EQ(row[i], expect) << "o=" << o << " i=" << i;
    }
  }
}

TEST(WeightDecode, Fp8BlockWithF32Scales) {
  HostTensor q(DType::kF8E4M3, {2, 3}), s(DType::kF32, {1, 1});
  const uint8_t codes[6] = {0x38, 0x3C, 0xC0, 0x00, 0x30, 0x44};  // 1, 1.5, -2, 0, 0.5, 3
  std::copy(codes, codes + 6, q.as<uint8_t>());
  s.as<float>()[0] = 0.3f;
  LinearWeight w;
  w.name = "w";
  w.out_features = 2;
  w.in_features = 3;
  w.format = WeightFormat::kFp8Block;
  w.weight = q.view();
  w.scale = s.view();
  validate_linear_weight(w);
  EXPECT_EQ(decode(w, 0), (std::vector<float>{1.0f * 0.3f, 1.5f * 0.3f, -2.0f * 0.3f}));
  EXPECT_EQ(decode(w, 1), (std::vector<float>{0.0f, 0.5f * 0.3f, 3.0f * 0.3f}));
}

TEST(WeightDecode, Mxfp4LowNibbleFirst) {
  HostTensor q(DType::kU8, {2, 32}), s(DType::kF8E8M0, {2, 2});
  std::fill(q.bytes.begin(), q.bytes.begin() + 32, 0x21);  // row 0: even 0.5, odd 1.0
  std::fill(q.bytes.begin() + 32, q.bytes.end(), 0xF8);    // row 1: even -0.0, odd -6
  const uint8_t scales[4] = {127, 129, 120, 130};         // 1, 4 | 2^-7, 8
  std::copy(scales, scales + 4, s.as<uint8_t>());
  LinearWeight w;
  w.name = "layers.3.ffn.experts.7.w1";
  w.out_features = 2;
  w.in_features = 64;
  w.format = WeightFormat::kMxfp4;
  w.weight = q.view();
  w.scale = s.view();
  validate_linear_weight(w);
  const std::vector<float> r0 = decode(w, 0), r1 = decode(w, 1);
  for (int i = 0; i < 64; ++i) {
    const float scale0 = i < 32 ? 1.0f : 4.0f, scale1 = i < 32 ? 0.0078125f : 8.0f;
    EXPECT_EQ(r0[i], (i % 2 ? 1.0f : 0.5f) * scale0) << i;
    if (i % 2) {
      EXPECT_EQ(r1[i], -6.0f * scale1) << i;
    } else {
      EXPECT_EQ(r1[i], 0.0f) << i;
      EXPECT_TRUE(std::signbit(r1[i])) << i;
    }
  }
  // I8 storage decodes identically.
  HostTensor qi(DType::kI8, {2, 32});
  qi.bytes = q.bytes;
  w.weight = qi.view();
  validate_linear_weight(w);
  EXPECT_EQ(decode(w, 0), r0);
}

TEST(WeightDecode, Nvfp4TimesGlobalScale) {
  HostTensor q(DType::kU8, {1, 16}), s(DType::kF8E4M3, {1, 2}), g(DType::kF32, {});
  std::fill(q.bytes.begin(), q.bytes.end(), 0x7A);  // even: 0xA = -1, odd: 0x7 = 6
  s.as<uint8_t>()[0] = 0x40;                        // 2.0
  s.as<uint8_t>()[1] = 0x3C;                        // 1.5
  g.as<float>()[0] = 0.25f;
  LinearWeight w;
  w.name = "w";
  w.out_features = 1;
  w.in_features = 32;
  w.format = WeightFormat::kNvfp4;
  w.weight = q.view();
  w.scale = s.view();
  w.weight_scale_2 = g.view();
  validate_linear_weight(w);
  const std::vector<float> r = decode(w, 0);
  for (int i = 0; i < 32; ++i) {
    const float expect = i < 16 ? (i % 2 ? 3.0f : -0.5f) : (i % 2 ? 2.25f : -0.375f);
    EXPECT_EQ(r[i], expect) << i;
  }
}

TEST(WeightDecode, DenseBf16AndF16) {
  HostTensor b(DType::kBF16, {1, 3}), h(DType::kF16, {1, 3});
  const uint16_t bf[3] = {0x3f80, 0xc020, 0x3e00};  // 1, -2.5, 0.125
  const uint16_t hf[3] = {0x3c00, 0xc100, 0x3000};  // 1, -2.5, 0.125
  std::copy(bf, bf + 3, b.as<uint16_t>());
  std::copy(hf, hf + 3, h.as<uint16_t>());
  LinearWeight w;
  w.name = "w";
  w.out_features = 1;
  w.in_features = 3;
  for (const HostTensor* t : {&b, &h}) {
    w.weight = t->view();
    validate_linear_weight(w);
    EXPECT_EQ(decode(w, 0), (std::vector<float>{1.0f, -2.5f, 0.125f}));
  }
}

TEST(WeightDecode, ValidationNamesTheWeight) {
  HostTensor q(DType::kF8E4M3, {130, 260}), s(DType::kF8E8M0, {1, 3});
  LinearWeight w;
  w.name = "layers.2.attn.wkv";
  w.out_features = 130;
  w.in_features = 260;
  w.format = WeightFormat::kFp8Block;
  w.weight = q.view();
  w.scale = s.view();
  try {
    validate_linear_weight(w);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("layers.2.attn.wkv"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[1, 3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
  }
  w.format = WeightFormat::kMxfp4;  // in 260 is not a multiple of 32
  EXPECT_THROW(validate_linear_weight(w), Error);
  w.format = WeightFormat::kDense;  // F8 weight is not a dense dtype
  EXPECT_THROW(validate_linear_weight(w), Error);
}

}  // namespace
}  // namespace clawmine::backend::cpu
