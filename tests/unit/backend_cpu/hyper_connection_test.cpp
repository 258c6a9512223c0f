// hc_pre / hc_post / hc_head against straightforward double loops written from spec §3.2, plus
// hand checks: Sinkhorn output is doubly stochastic, hc_post consumes comb transposed.
#include <gtest/gtest.h>

#include <cmath>

#include "ops/backend.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {
namespace {

using model::deepseek_v4::HyperConnectionWeights;

class CpuHc : public ::testing::TestWithParam<int> {
 protected:
  std::unique_ptr<ops::Backend> be = ops::make_cpu_backend(GetParam());
};

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct HcCase {
  int64_t T = 3, hc = 4, D = 8;
  std::vector<float> X, fn, base, scale;
  HyperConnectionWeights w() {
    HyperConnectionWeights hw;
    const int64_t m = static_cast<int64_t>(base.size());
    hw.fn = f32_view(fn, {m, hc * D});
    hw.base = f32_view(base, {m});
    hw.scale = f32_view(scale, {static_cast<int64_t>(scale.size())});
    return hw;
  }
};

HcCase make_case(int64_t n_mix_rows, size_t n_scale, uint32_t seed) {
  HcCase c;
  c.X = random_normal(c.T * c.hc * c.D, seed);
  c.fn = random_normal(n_mix_rows * c.hc * c.D, seed + 1, 0.3f);
  c.base = random_normal(n_mix_rows, seed + 2);
  c.scale = random_normal(n_scale, seed + 3);
  for (float& s : c.scale) s = 1.0f + std::fabs(s);
  return c;
}

// mix[m] for token t, in double: (xf . fn[m]) / sqrt(mean(xf^2) + eps).
std::vector<double> ref_mix(const HcCase& c, int64_t t, int64_t n_mix, double eps) {
  const int64_t n = c.hc * c.D;
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(c.X[t * n + i]) * c.X[t * n + i];
  const double r = 1.0 / std::sqrt(ss / n + eps);
  std::vector<double> mix(n_mix);
  for (int64_t m = 0; m < n_mix; ++m) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += double(c.X[t * n + i]) * c.fn[m * n + i];
    mix[m] = acc * r;
  }
  return mix;
}

TEST_P(CpuHc, PreMatchesReference) {
  HcCase c = make_case(24, 3, 301);
  const ops::HcParams p;  // hc 4, 20 iterations, eps 1e-6
  const int64_t T = c.T, hc = c.hc, D = c.D;
  std::vector<float> x_in(T * D), post(T * hc), comb(T * hc * hc);
  poison(x_in);
  poison(post);
  poison(comb);
  be->hc_pre(f32_view(c.X, {T, hc, D}), c.w(), p, f32_view(x_in, {T, D}), f32_view(post, {T, hc}),
             f32_view(comb, {T, hc, hc}));
  std::vector<float> rx(x_in.size()), rpost(post.size()), rcomb(comb.size());
  const double eps = p.hc_eps;
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<double> mix = ref_mix(c, t, 24, p.rms_eps);
    double C[4][4];
    for (int j = 0; j < 4; ++j) {
      rpost[t * 4 + j] = static_cast<float>(2 * sig(mix[4 + j] * c.scale[1] + c.base[4 + j]));
      double z = 0, lg[4];
      for (int k = 0; k < 4; ++k) {
        lg[k] = mix[8 + 4 * j + k] * c.scale[2] + c.base[8 + 4 * j + k];
        z += std::exp(lg[k]);
      }
      for (int k = 0; k < 4; ++k) C[j][k] = std::exp(lg[k]) / z + eps;
    }
    for (int it = 0; it < 20; ++it) {
      if (it > 0)
        for (int j = 0; j < 4; ++j) {
          const double s = C[j][0] + C[j][1] + C[j][2] + C[j][3];
          for (int k = 0; k < 4; ++k) C[j][k] /= s + eps;
        }
      for (int k = 0; k < 4; ++k) {
        const double s = C[0][k] + C[1][k] + C[2][k] + C[3][k];
        for (int j = 0; j < 4; ++j) C[j][k] /= s + eps;
      }
    }
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < 4; ++k) rcomb[(t * 4 + j) * 4 + k] = static_cast<float>(C[j][k]);
    for (int64_t d = 0; d < D; ++d) {
      double acc = 0;
      for (int j = 0; j < 4; ++j) acc += (sig(mix[j] * c.scale[0] + c.base[j]) + eps) * c.X[(t * 4 + j) * D + d];
      rx[t * D + d] = static_cast<float>(acc);
    }
  }
  EXPECT_LE(max_rel_diff(x_in, rx), kTightRel);
  EXPECT_LE(max_rel_diff(post, rpost), kTightRel);
  EXPECT_LE(max_rel_diff(comb, rcomb), kTightRel);
}

TEST_P(CpuHc, CombIsDoublyStochastic) {
  HcCase c = make_case(24, 3, 311);
  c.scale[2] = 1.0f;  // logits of std ~2: softmax rows alone are far from doubly stochastic
  const int64_t T = c.T, hc = c.hc, D = c.D;
  std::vector<float> x_in(T * D), post(T * hc), comb(T * hc * hc);
  poison(comb);
  be->hc_pre(f32_view(c.X, {T, hc, D}), c.w(), ops::HcParams{}, f32_view(x_in, {T, D}), f32_view(post, {T, hc}),
             f32_view(comb, {T, hc, hc}));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t a = 0; a < hc; ++a) {
      double row = 0, col = 0;
      for (int64_t b = 0; b < hc; ++b) {
        row += comb[(t * hc + a) * hc + b];
        col += comb[(t * hc + b) * hc + a];
        EXPECT_GT(comb[(t * hc + a) * hc + b], 0.0f);
      }
      EXPECT_NEAR(row, 1.0, 1e-5) << "t=" << t << " row " << a;
      EXPECT_NEAR(col, 1.0, 1e-5) << "t=" << t << " col " << a;
    }
}

TEST_P(CpuHc, PostUsesTransposedComb) {
  // hc 2, D 1, post 0, comb [[0, 1], [0, 0]]: stream 1 receives stream 0, stream 0 gets nothing.
  std::vector<float> y = {5.0f}, X = {2.0f, 3.0f}, post = {0.0f, 0.0f}, comb = {0, 1, 0, 0}, out(2);
  poison(out);
  be->hc_post(f32_view(y, {1, 1}), f32_view(X, {1, 2, 1}), f32_view(post, {1, 2}), f32_view(comb, {1, 2, 2}),
              f32_view(out, {1, 2, 1}));
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 2.0f);
}

TEST_P(CpuHc, PostMatchesReference) {
  const int64_t T = 3, hc = 4, D = 16;
  std::vector<float> y = random_normal(T * D, 321), X = random_normal(T * hc * D, 322),
                     post = random_normal(T * hc, 323), comb = random_normal(T * hc * hc, 324), out(T * hc * D);
  poison(out);
  be->hc_post(f32_view(y, {T, D}), f32_view(X, {T, hc, D}), f32_view(post, {T, hc}), f32_view(comb, {T, hc, hc}),
              f32_view(out, {T, hc, D}));
  std::vector<float> ref(out.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < hc; ++k)
      for (int64_t d = 0; d < D; ++d) {
        double acc = double(post[t * hc + k]) * y[t * D + d];
        for (int64_t j = 0; j < hc; ++j) acc += double(comb[(t * hc + j) * hc + k]) * X[(t * hc + j) * D + d];
        ref[(t * hc + k) * D + d] = static_cast<float>(acc);
      }
  EXPECT_LE(max_rel_diff(out, ref), kTightRel);
}

TEST_P(CpuHc, HeadMatchesReference) {
  HcCase c = make_case(4, 1, 331);
  const int64_t T = c.T, D = c.D;
  std::vector<float> y(T * D);
  poison(y);
  be->hc_head(f32_view(c.X, {T, 4, D}), c.w(), ops::HcParams{}, f32_view(y, {T, D}));
  std::vector<float> ref(y.size());
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<double> mix = ref_mix(c, t, 4, 1e-6f);
    for (int64_t d = 0; d < D; ++d) {
      double acc = 0;
      for (int j = 0; j < 4; ++j) acc += (sig(mix[j] * c.scale[0] + c.base[j]) + 1e-6f) * c.X[(t * 4 + j) * D + d];
      ref[t * D + d] = static_cast<float>(acc);
    }
  }
  EXPECT_LE(max_rel_diff(y, ref), kTightRel);
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuHc, ::testing::Values(1, 2));

}  // namespace
}  // namespace clawmine::test
