// Activation transforms for W8A8 and W4A4: hand-computed cases, fixed points (already
// representable rows come back unchanged), saturation to the calibrated range, zero rows and
// blocks, and NaN only from the non-saturating cast once a block scale passes 464.
#include "quant/act_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/dtype.h"
#include "quant/qdq.h"
#include "support/test_support.h"

namespace clawmine::quant {
namespace {

constexpr float kE2m1Grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

TEST(ActQuantFp8, HandComputedBlocks) {
  // Block 0: amax 3 -> s = 2^ceil(log2(3/448)) = 2^-7; 1.1*128 = 140.8 -> 144; -0.3*128 = -38.4 -> -40.
  // Block 1: amax 1000 -> s = 4; 1000/4 = 250 -> 256 -> 1024; 10/4 = 2.5 -> 2.5.
  std::vector<float> x(256, 0.0f);
  x[0] = 3.0f, x[1] = 1.1f, x[2] = -0.3f;
  x[128] = 1000.0f, x[129] = 10.0f;
  fp8_act_qdq_row(x.data(), 256);
  EXPECT_EQ(x[0], 3.0f);
  EXPECT_EQ(x[1], 1.125f);
  EXPECT_EQ(x[2], -0.3125f);
  EXPECT_EQ(x[3], 0.0f);
  EXPECT_EQ(x[128], 1024.0f);
  EXPECT_EQ(x[129], 10.0f);
}

TEST(ActQuantFp8, RepresentableRowIsAFixedPoint) {
  // Each block holds E4M3 values times 2^k with one element at 448 * 2^k: s = 2^k exactly.
  std::vector<float> x(300);
  for (size_t i = 0; i < x.size(); ++i) {
    const int k = static_cast<int>(i / 128) - 3;
    const uint8_t code = static_cast<uint8_t>((i * 37) % 0x7e);
    x[i] = std::ldexp(i % 128 == 5 ? 448.0f : e4m3_to_f32(code) * (i % 2 ? -1.0f : 1.0f), k);
  }
  const std::vector<float> before = x;
  fp8_act_qdq_row(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(x, before);
}

TEST(ActQuantFp8, RandomRowsStayCloseAndFinite) {
  std::vector<float> x = test::random_normal(1000, 11, 3.0f);
  x[7] = 1e6f;  // an outlier only affects its own block
  const std::vector<float> ref = x;
  fp8_act_qdq_row(x.data(), 1000);
  ASSERT_TRUE(all_finite(x));
  for (size_t i = 128; i < x.size(); ++i) EXPECT_NEAR(x[i], ref[i], std::fabs(ref[i]) / 16 + 1e-3) << i;
}

TEST(ActQuantNvfp4, BlockScaleSaturatesOrTurnsNaNPast464) {
  EXPECT_EQ(nvfp4_block_scale(1.0f, 6.0f, true), 1.0f);
  EXPECT_EQ(nvfp4_block_scale(1.0f, 2688.0f, true), 448.0f);
  EXPECT_EQ(nvfp4_block_scale(1.0f, 6000.0f, true), 448.0f);
  EXPECT_EQ(nvfp4_block_scale(1.0f, 1e30f, true), 448.0f);
  EXPECT_EQ(nvfp4_block_scale(1.0f, 6.0f * 460.0f, false), 448.0f);
  EXPECT_EQ(nvfp4_block_scale(1.0f, 6.0f * 464.0f, false), 448.0f);  // ties to even, as torch measured
  EXPECT_TRUE(std::isnan(nvfp4_block_scale(1.0f, 6.0f * 470.0f, false)));
  EXPECT_EQ(nvfp4_block_scale(1.0f, 0.0f, false), 0.0f);
  EXPECT_EQ(nvfp4_dynamic_global(std::vector<float>(16, 0.0f).data(), 16), 0.0f);
  const std::vector<float> r = {0.5f, -4.0f, 2.0f};
  EXPECT_EQ(nvfp4_dynamic_global(r.data(), 3), 672.0f);
}

TEST(ActQuantNvfp4, HandComputedBlock) {
  // g = 1, amax16 = 3 -> SF = e4m3(0.5) = 0.5: x/0.5 = {6, 2.5->2, -0.9->-1, 1.3->1.5 (1.25..1.75 -> 1.5)}.
  std::vector<float> x(16, 0.0f);
  x[0] = 3.0f, x[1] = 1.25f, x[2] = -0.45f, x[3] = 0.7f;
  EXPECT_EQ(nvfp4_act_qdq_row(x.data(), 16, 1.0f, true), 0);
  EXPECT_EQ(x[0], 3.0f);
  EXPECT_EQ(x[1], 1.0f);
  EXPECT_EQ(x[2], -0.5f);
  EXPECT_EQ(x[3], 0.75f);
  EXPECT_EQ(x[4], 0.0f);
}

TEST(ActQuantNvfp4, RepresentableRowIsAFixedPoint) {
  // Blocks of k * s (k on the E2M1 grid, one element 6 * s); s an E4M3 value; g = 1 static.
  const float scales[] = {0.375f, 2.0f, 0.015625f, 40.0f};
  std::vector<float> x(64);
  for (size_t i = 0; i < x.size(); ++i) {
    const float s = scales[i / 16];
    const float k = i % 16 == 3 ? 6.0f : kE2m1Grid[(i * 5) % 8];
    x[i] = (i % 3 ? k : -k) * s;
  }
  std::vector<float> y = x;
  nvfp4_act_qdq_row(y.data(), 64, 1.0f, true);
  EXPECT_EQ(y, x);
  // Dynamic: one power-of-two s for every block, so g = 2688/(6s) = 448/s is exact.
  for (size_t i = 0; i < x.size(); ++i) x[i] = (i % 16 == 3 ? 6.0f : kE2m1Grid[(i * 3) % 8]) * 0.25f;
  y = x;
  nvfp4_act_qdq_row(y.data(), 64, nvfp4_dynamic_global(y.data(), 64), true);
  EXPECT_EQ(y, x);
}

TEST(ActQuantNvfp4, DynamicRowsAreCloseAndFinite) {
  std::vector<float> x = test::random_normal(4096, 5, 1.0f);
  x[100] = 8.0f, x[2000] = -6.5f;
  std::vector<float> y = x;
  EXPECT_EQ(nvfp4_act_qdq_row(y.data(), 4096, nvfp4_dynamic_global(y.data(), 4096), false), 0);
  ASSERT_TRUE(all_finite(y));
  EXPECT_GT(cosine(x, y), 0.99);
  for (int64_t b = 0; b < 4096; b += 16) {
    float amax16 = 0;
    for (int64_t i = b; i < b + 16; ++i) amax16 = std::max(amax16, std::fabs(x[i]));
    for (int64_t i = b; i < b + 16; ++i) ASSERT_LE(std::fabs(y[i] - x[i]), amax16 / 6 + amax16 / 8) << i;
  }
}

TEST(ActQuantNvfp4, TooSmallStaticScaleClipsToTheCalibratedRange) {
  // input_scale 2.5141e-4 -> g = 3977.6, calibrated amax 0.676; the row's amax is ~4.
  std::vector<float> x = test::random_normal(256, 9, 1.0f);
  x[3] = 4.0f;
  const float g = 1.0f / 2.5141e-4f;
  std::vector<float> sat = x, nonsat = x;
  const int64_t over = nvfp4_act_qdq_row(sat.data(), 256, g, true);
  EXPECT_GT(over, 8);
  ASSERT_TRUE(all_finite(sat));
  for (float v : sat) EXPECT_LE(std::fabs(v), 2688.0f / g * 1.0001f);
  EXPECT_EQ(nvfp4_act_qdq_row(nonsat.data(), 256, g, false), over);
  int64_t nan_blocks = 0;
  for (int64_t b = 0; b < 256; b += 16) {
    float amax16 = 0;
    for (int64_t i = b; i < b + 16; ++i) amax16 = std::max(amax16, std::fabs(x[i]));
    const bool expect_nan = g * amax16 / 6 > 464.0f;
    nan_blocks += expect_nan;
    for (int64_t i = b; i < b + 16; ++i) {
      EXPECT_EQ(std::isnan(nonsat[i]), expect_nan) << i;
      if (!expect_nan) EXPECT_EQ(nonsat[i], sat[i]) << i;
    }
  }
  EXPECT_GT(nan_blocks, 0);
}

TEST(ActQuantNvfp4, ZeroRowsAndZeroBlocksStayZero) {
  std::vector<float> x(48, 0.0f);
  nvfp4_act_qdq_row(x.data(), 48, nvfp4_dynamic_global(x.data(), 48), false);
  for (float v : x) EXPECT_EQ(v, 0.0f);
  x[20] = 1.0f;  // blocks 0 and 2 are zero: SF 0 -> zeros, not NaN
  nvfp4_act_qdq_row(x.data(), 48, nvfp4_dynamic_global(x.data(), 48), false);
  for (int i = 0; i < 48; ++i) EXPECT_EQ(x[i], i == 20 ? 1.0f : 0.0f) << i;
}

TEST(ActQuantNvfp4, ShortLastBlock) {
  // 20 values: a full block (amax 6 -> SF 1, all on the grid) and a block of 4 with amax 12 ->
  // SF 2: 0.5/2 = 0.25 ties to 0; 1.5/2 = 0.75 ties to 1 (even code) -> 2; 12 -> 12; -3 -> -3.
  std::vector<float> x(20);
  for (int i = 0; i < 16; ++i) x[i] = i == 9 ? 6.0f : kE2m1Grid[i % 8];
  x[16] = 0.5f, x[17] = 1.5f, x[18] = 12.0f, x[19] = -3.0f;
  nvfp4_act_qdq_row(x.data(), 20, 1.0f, true);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(x[i], i == 9 ? 6.0f : kE2m1Grid[i % 8]) << i;
  EXPECT_EQ(x[16], 0.0f);
  EXPECT_EQ(x[17], 2.0f);
  EXPECT_EQ(x[18], 12.0f);
  EXPECT_EQ(x[19], -3.0f);
}

TEST(ActQuant, NonFiniteInputsStayNonFiniteAndDoNotSpread) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // A block of only NaN (amax over finite values is 0, so SF = 0) must not turn into zeros.
  std::vector<float> x(160, 0.5f);
  for (int i = 0; i < 16; ++i) x[i] = nan;
  x[20] = inf;
  x[140] = -inf;
  std::vector<float> a = x, b = x, c = x;
  nvfp4_act_qdq_row(a.data(), 160, nvfp4_dynamic_global(a.data(), 160), true);
  nvfp4_act_qdq_row(b.data(), 160, 1000.0f, false);
  fp8_act_qdq_row(c.data(), 160);
  for (const std::vector<float>* v : {&a, &c}) {
    for (int i = 0; i < 16; ++i) EXPECT_TRUE(std::isnan((*v)[i])) << i;
    EXPECT_EQ((*v)[20], inf);
    EXPECT_EQ((*v)[140], -inf);
    EXPECT_EQ((*v)[21], 0.5f);  // finite neighbours of an Inf keep their own scale
    EXPECT_EQ((*v)[141], 0.5f);
  }
  for (int i = 0; i < 16; ++i) EXPECT_TRUE(std::isnan(b[i])) << i;
  EXPECT_EQ(nvfp4_dynamic_global(x.data(), 160), 2688.0f / 0.5f);
}

}  // namespace
}  // namespace clawmine::quant
