// rms_norm (weighted, weightless, in place) and rope (against a naive loop, inverse of forward,
// a hand-checked quarter turn, untouched non-rope dims).
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "ops/backend.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {
namespace {

class CpuNormRope : public ::testing::TestWithParam<int> {
 protected:
  std::unique_ptr<ops::Backend> be = ops::make_cpu_backend(GetParam());
};

std::vector<float> ref_rms_norm(const std::vector<float>& x, const std::vector<float>* w, int64_t n, double eps) {
  std::vector<float> y(x.size());
  for (size_t r = 0; r < x.size() / n; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(x[r * n + i]) * x[r * n + i];
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = static_cast<float>(x[r * n + i] * inv * (w ? (*w)[i] : 1.0));
  }
  return y;
}

TEST_P(CpuNormRope, RmsNormWeightedBf16) {
  const int64_t n = 48;
  std::vector<float> x = random_normal(3 * 4 * n, 101, 3.0f), y(x.size());
  HostTensor w(DType::kBF16, {n});
  std::vector<float> wf(n);
  const std::vector<float> wr = random_normal(n, 102);
  for (int64_t i = 0; i < n; ++i) {
    w.as<uint16_t>()[i] = f32_to_bf16(wr[i]);
    wf[i] = bf16_to_f32(w.as<uint16_t>()[i]);
  }
  poison(y);
  const TensorView wv = w.view();
  be->rms_norm(f32_view(x, {3, 4, n}), &wv, 1e-6f, f32_view(y, {3, 4, n}));
  const std::vector<float> ref = ref_rms_norm(x, &wf, n, 1e-6f);
  EXPECT_LE(max_rel_diff(y, ref), kTightRel);
  // In place gives the same bits.
  be->rms_norm(f32_view(x, {12, n}), &wv, 1e-6f, f32_view(x, {12, n}));
  EXPECT_TRUE(same_bits(x, y));
}

TEST_P(CpuNormRope, RmsNormWeightless) {
  const int64_t n = 64;
  std::vector<float> x = random_normal(5 * n, 103), y(x.size());
  poison(y);
  be->rms_norm(f32_view(x, {5, n}), nullptr, 1e-6f, f32_view(y, {5, n}));
  EXPECT_LE(max_rel_diff(y, ref_rms_norm(x, nullptr, n, 1e-6f)), kTightRel);
  for (int r = 0; r < 5; ++r) {  // unit RMS rows
    double ss = 0;
    for (int i = 0; i < n; ++i) ss += double(y[r * n + i]) * y[r * n + i];
    EXPECT_NEAR(ss / n, 1.0, 1e-5);
  }
}

std::vector<float> test_inv_freq(int64_t half) {
  std::vector<float> f(half);
  for (int64_t i = 0; i < half; ++i) f[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / (2.0 * half)));
  return f;
}

TEST_P(CpuNormRope, RopeMatchesNaive) {
  const int64_t T = 3, V = 2, dim = 16, rd = 8;
  std::vector<int32_t> pos = {0, 5, 1000};
  std::vector<float> inv = test_inv_freq(rd / 2);
  for (bool inverse : {false, true}) {
    std::vector<float> x = random_normal(T * V * dim, 104), x0 = x;
    be->rope(f32_view(x, {T, V, dim}), i32_view(pos, {T}), f32_view(inv, {rd / 2}), rd, inverse);
    std::vector<float> ref = x0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t v = 0; v < V; ++v)
        for (int64_t i = 0; i < rd / 2; ++i) {
          const float angle = inv[i] * static_cast<float>(pos[t]);
          const double c = static_cast<float>(std::cos(double(angle)));
          const double s = (inverse ? -1.0 : 1.0) * static_cast<float>(std::sin(double(angle)));
          const size_t at = (t * V + v) * dim + dim - rd + 2 * i;
          ref[at] = static_cast<float>(x0[at] * c - x0[at + 1] * s);
          ref[at + 1] = static_cast<float>(x0[at] * s + x0[at + 1] * c);
        }
    EXPECT_LE(max_rel_diff(x, ref), kTightRel);
    for (int64_t r = 0; r < T * V; ++r)  // leading dim - rope_dim dims are untouched
      for (int64_t d = 0; d < dim - rd; ++d) EXPECT_EQ(x[r * dim + d], x0[r * dim + d]);
  }
}

TEST_P(CpuNormRope, RopeInverseUndoesForward) {
  const int64_t T = 4, V = 3, dim = 32, rd = 16;
  std::vector<int32_t> pos = {0, 1, 77, 4095};
  std::vector<float> inv = test_inv_freq(rd / 2);
  std::vector<float> x = random_normal(T * V * dim, 105), x0 = x;
  be->rope(f32_view(x, {T, V, dim}), i32_view(pos, {T}), f32_view(inv, {rd / 2}), rd, false);
  EXPECT_GT(max_rel_diff(x, x0), 1e-2);  // it did rotate
  be->rope(f32_view(x, {T, V, dim}), i32_view(pos, {T}), f32_view(inv, {rd / 2}), rd, true);
  EXPECT_LE(max_rel_diff(x, x0), 1e-6);
}

TEST_P(CpuNormRope, RopeQuarterTurn) {
  std::vector<float> x = {1.0f, 0.0f}, inv = {static_cast<float>(M_PI / 2)};
  std::vector<int32_t> pos = {1};
  be->rope(f32_view(x, {1, 1, 2}), i32_view(pos, {1}), f32_view(inv, {1}), 2, false);
  EXPECT_NEAR(x[0], 0.0f, 1e-7);
  EXPECT_EQ(x[1], 1.0f);
  be->rope(f32_view(x, {1, 1, 2}), i32_view(pos, {1}), f32_view(inv, {1}), 2, true);
  EXPECT_NEAR(x[0], 1.0f, 1e-7);
  EXPECT_NEAR(x[1], 0.0f, 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuNormRope, ::testing::Values(1, 2));

}  // namespace
}  // namespace clawmine::test
