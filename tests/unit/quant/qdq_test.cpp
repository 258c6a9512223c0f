// The official code's round trips: every representable E4M3/E2M1 value is a fixed point,
// midpoints round to the even neighbour, out-of-range saturates, nothing finite becomes
// NaN; block scales are powers of two; the Hadamard transform is orthonormal.
#include "quant/qdq.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "support/test_support.h"

namespace clawmine::quant {
namespace {

TEST(Qdq, EveryE4m3ValueIsAFixedPoint) {
  for (int b = 0; b < 256; ++b) {
    const float v = e4m3_to_f32(static_cast<uint8_t>(b));
    if (std::isnan(v)) continue;
    EXPECT_EQ(round_to_e4m3(v), v) << b;
  }
}

TEST(Qdq, E4m3TiesToEvenAndSaturates) {
  EXPECT_EQ(round_to_e4m3(1.0625f), 1.0f);     // halfway 1.0 (even) / 1.125
  EXPECT_EQ(round_to_e4m3(1.1875f), 1.25f);    // halfway 1.125 / 1.25 (even)
  EXPECT_EQ(round_to_e4m3(1e9f), 448.0f);
  EXPECT_EQ(round_to_e4m3(-1e30f), -448.0f);
  EXPECT_EQ(round_to_e4m3(std::ldexp(1.0f, -10)), 0.0f);  // half of the smallest subnormal: ties to 0
  EXPECT_EQ(round_to_e4m3(std::ldexp(3.0f, -10)), std::ldexp(1.0f, -8));  // 1.5 ulp -> 2 (even)
}

TEST(Qdq, E2m1GridTiesToEvenAndSaturates) {
  const float grid[] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (float g : grid) {
    EXPECT_EQ(round_to_e2m1(g), g);
    EXPECT_EQ(round_to_e2m1(-g), -g);
  }
  EXPECT_EQ(round_to_e2m1(0.25f), 0.0f);
  EXPECT_EQ(round_to_e2m1(0.75f), 1.0f);
  EXPECT_EQ(round_to_e2m1(2.5f), 2.0f);
  EXPECT_EQ(round_to_e2m1(3.5f), 4.0f);
  EXPECT_EQ(round_to_e2m1(5.0f), 4.0f);
  EXPECT_EQ(round_to_e2m1(100.0f), 6.0f);
}

TEST(Qdq, Fp8BlocksStayCloseAndFinite) {
  auto x = test::random_normal(256, 7, 3.0f);
  x[5] = 1e30f;  // a huge value only saturates its own block's scale
  auto y = x;
  fp8_qdq_blocks(y.data(), 256, 64);
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_TRUE(std::isfinite(y[i])) << i;
    if (i >= 64) EXPECT_NEAR(y[i], x[i], std::fabs(x[i]) * 0.0625f + 1e-3f) << i;
  }
}

TEST(Qdq, NonFiniteValuesPassThroughAndDoNotSetTheScale) {
  std::vector<float> x = {1.0f, INFINITY, NAN, -2.0f};
  fp8_qdq_blocks(x.data(), 4, 4);
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_TRUE(std::isinf(x[1]));
  EXPECT_TRUE(std::isnan(x[2]));
  EXPECT_EQ(x[3], -2.0f);
  fp4_qdq_blocks(x.data(), 4, 4);
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_TRUE(std::isinf(x[1]));
}

TEST(Qdq, Fp4BlocksUsePowerOfTwoScales) {
  std::vector<float> x(32, 0.0f);
  x[0] = 12.0f;  // amax 12 -> scale 2^ceil(log2(12/6)) = 2
  x[1] = 5.0f;   // 2.5 -> 2 (ties to even) -> 4
  x[2] = -7.0f;  // -3.5 -> -4 -> -8
  fp4_qdq_blocks(x.data(), 32, 32);
  EXPECT_EQ(x[0], 12.0f);
  EXPECT_EQ(x[1], 4.0f);
  EXPECT_EQ(x[2], -8.0f);
}

TEST(Qdq, HadamardIsOrthonormalAndInvolutive) {
  auto x = test::random_normal(128, 3);
  auto y = x;
  hadamard_inplace(y.data(), 128);
  double nx = 0, ny = 0;
  for (int i = 0; i < 128; ++i) nx += x[i] * x[i], ny += y[i] * y[i];
  EXPECT_NEAR(nx, ny, 1e-4 * nx);
  hadamard_inplace(y.data(), 128);
  EXPECT_LE(test::max_rel_diff(y, x), 1e-6);
  std::vector<float> e(8, 0.0f);
  e[0] = 1.0f;
  hadamard_inplace(e.data(), 8);
  for (float v : e) EXPECT_FLOAT_EQ(v, 1.0f / std::sqrt(8.0f));
}

}  // namespace
}  // namespace clawmine::quant
