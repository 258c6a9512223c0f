// moe_route (biased top-k with ties, softplus threshold, hash path via tid2eid rows, id checks),
// moe_experts / swiglu_mlp against a double reference with active clamps and a duplicated expert,
// and bit-identical results for 1 and 2 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "ops/backend.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {
namespace {

using model::deepseek_v4::ExpertWeights;

class CpuMoe : public ::testing::TestWithParam<int> {
 protected:
  std::unique_ptr<ops::Backend> be = ops::make_cpu_backend(GetParam());
};

double sqrt_softplus(double x) { return std::sqrt(x > 20 ? x : std::log1p(std::exp(x))); }

TEST_P(CpuMoe, RoutedTopkMatchesReference) {
  const int64_t T = 6, E = 8, K = 3;
  std::vector<float> logits = random_normal(T * E, 501, 2.0f), bias = random_normal(E, 502, 0.3f);
  logits[5] = 30.0f;  // above softplus' threshold: softplus(x) = x
  std::vector<int32_t> idx(T * K, 77);
  std::vector<float> w(T * K);
  poison(w);
  be->moe_route(f32_view(logits, {T, E}), f32_view(bias, {E}), TensorView{}, TensorView{}, 1.5f, i32_view(idx, {T, K}),
                f32_view(w, {T, K}));
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> a(E);
    std::vector<float> key(E);
    for (int64_t e = 0; e < E; ++e) {
      a[e] = sqrt_softplus(logits[t * E + e]);
      key[e] = static_cast<float>(a[e]) + bias[e];
    }
    std::vector<int32_t> ord(E);
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int32_t x, int32_t y) { return key[x] > key[y]; });
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += a[ord[k]];
    for (int64_t k = 0; k < K; ++k) {
      ASSERT_EQ(idx[t * K + k], ord[k]) << "t=" << t << " k=" << k;
      EXPECT_NEAR(w[t * K + k], a[ord[k]] / sum * 1.5, 1e-6) << "t=" << t << " k=" << k;
    }
  }
  EXPECT_NEAR(w[0] + w[1] + w[2], 1.5f, 1e-6);
}

TEST_P(CpuMoe, RoutedTiesPickLowerExpert) {
  std::vector<float> logits = {0.0f, 1.0f, 1.0f, 1.0f}, w(2);
  std::vector<int32_t> idx(2, 77);
  be->moe_route(f32_view(logits, {1, 4}), TensorView{}, TensorView{}, TensorView{}, 2.0f, i32_view(idx, {1, 2}),
                f32_view(w, {1, 2}));
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2}));
  EXPECT_FLOAT_EQ(w[0], 1.0f);
  EXPECT_FLOAT_EQ(w[1], 1.0f);
}

TEST_P(CpuMoe, HashRoutingUsesTid2eidRows) {
  const int64_t T = 4, E = 8, K = 3, V = 5;
  std::vector<float> logits = random_normal(T * E, 511), w(T * K);
  std::vector<int32_t> ids = {4, 0, 4, 2};
  for (DType dt : {DType::kI64, DType::kI32}) {
    HostTensor table(dt, {V, K});
    for (int64_t i = 0; i < V * K; ++i) {
      const int64_t e = (i * 5 + 3) % E;  // distinct ids within each row
      if (dt == DType::kI64) table.as<int64_t>()[i] = e;
      else table.as<int32_t>()[i] = static_cast<int32_t>(e);
    }
    std::vector<int32_t> idx(T * K, 77);
    poison(w);
    be->moe_route(f32_view(logits, {T, E}), TensorView{}, table.view(), i32_view(ids, {T}), 1.5f, i32_view(idx, {T, K}),
                  f32_view(w, {T, K}));
    for (int64_t t = 0; t < T; ++t) {
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t e = ((ids[t] * K + k) * 5 + 3) % E;  // row ids[t] of the table
        ASSERT_EQ(idx[t * K + k], e) << "t=" << t << " k=" << k;
        sum += sqrt_softplus(logits[t * E + e]);
      }
      for (int64_t k = 0; k < K; ++k)
        EXPECT_NEAR(w[t * K + k], sqrt_softplus(logits[t * E + idx[t * K + k]]) / sum * 1.5, 1e-6);
    }
  }
}

TEST_P(CpuMoe, HashRoutingRejectsBadExpertAndToken) {
  std::vector<float> logits(8, 0.5f), w(2);
  std::vector<int32_t> idx(2);
  HostTensor table(DType::kI64, {2, 2});
  std::vector<int32_t> id0 = {0}, id2 = {2};
  table.as<int64_t>()[0] = 1;
  table.as<int64_t>()[1] = 8;  // E = 8: out of range
  table.as<int64_t>()[2] = 0;
  table.as<int64_t>()[3] = 2;
  try {
    be->moe_route(f32_view(logits, {1, 8}), TensorView{}, table.view(), i32_view(id0, {1}), 1.0f, i32_view(idx, {1, 2}),
                  f32_view(w, {1, 2}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("= 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(be->moe_route(f32_view(logits, {1, 8}), TensorView{}, table.view(), i32_view(id2, {1}), 1.0f, i32_view(idx, {1, 2}),
                             f32_view(w, {1, 2})),
               Error);
}

// Dense F32 experts with their storage.
struct Experts {
  std::vector<std::vector<float>> w1, w3, w2;
  std::vector<ExpertWeights> ew;
  Experts(int64_t E, int64_t D, int64_t I, uint32_t seed) : w1(E), w3(E), w2(E), ew(E) {
    for (int64_t e = 0; e < E; ++e) {
      w1[e] = random_normal(I * D, seed + 3 * e, 0.5f);
      w3[e] = random_normal(I * D, seed + 3 * e + 1, 0.5f);
      w2[e] = random_normal(D * I, seed + 3 * e + 2, 0.5f);
      const std::string p = "layers.0.ffn.experts." + std::to_string(e);
      ew[e].w1 = dense_weight(w1[e], I, D, p + ".w1");
      ew[e].w3 = dense_weight(w3[e], I, D, p + ".w3");
      ew[e].w2 = dense_weight(w2[e], D, I, p + ".w2");
    }
  }
};

// y = w2(silu(min(w1 x, L)) * clamp(w3 x, -L, L)) in double; counts how often a clamp was active.
std::vector<double> ref_expert(const Experts& ex, int64_t e, const float* x, int64_t D, int64_t I, double L,
                               int* clamps) {
  std::vector<double> h(I), y(D, 0.0);
  for (int64_t i = 0; i < I; ++i) {
    double g = 0, u = 0;
    for (int64_t d = 0; d < D; ++d) {
      g += double(ex.w1[e][i * D + d]) * x[d];
      u += double(ex.w3[e][i * D + d]) * x[d];
    }
    *clamps += (g > L) + (std::fabs(u) > L);
    g = std::min(g, L);
    u = std::max(-L, std::min(u, L));
    h[i] = g / (1 + std::exp(-g)) * u;
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = 0; i < I; ++i) y[d] += double(ex.w2[e][d * I + i]) * h[i];
  return y;
}

TEST_P(CpuMoe, ExpertsMatchReference) {
  const int64_t T = 5, D = 16, I = 12, E = 4, K = 2;
  const float L = 2.0f;
  Experts ex(E, D, I, 521);
  std::vector<float> x = random_normal(T * D, 530), w = random_normal(T * K, 531), out(T * D);
  std::vector<int32_t> idx = {2, 2, 0, 3, 1, 0, 3, 1, 2, 0};  // token 0 routes to expert 2 twice
  poison(out);
  be->moe_experts(f32_view(x, {T, D}), ex.ew, i32_view(idx, {T, K}), f32_view(w, {T, K}), L, f32_view(out, {T, D}));
  std::vector<float> ref(T * D, 0.0f);
  int clamps = 0;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> acc(D, 0.0);
    for (int64_t k = 0; k < K; ++k) {
      const std::vector<double> y = ref_expert(ex, idx[t * K + k], x.data() + t * D, D, I, L, &clamps);
      for (int64_t d = 0; d < D; ++d) acc[d] += w[t * K + k] * y[d];
    }
    for (int64_t d = 0; d < D; ++d) ref[t * D + d] = static_cast<float>(acc[d]);
  }
  EXPECT_GT(clamps, 10);  // the clamps are exercised
  EXPECT_LE(max_rel_diff(out, ref), 2e-6);
}

TEST_P(CpuMoe, ExpertsRejectUnknownExpert) {
  Experts ex(2, 4, 4, 541);
  std::vector<float> x(4, 1.0f), w(1, 1.0f), out(4);
  std::vector<int32_t> idx = {2};
  EXPECT_THROW(be->moe_experts(f32_view(x, {1, 4}), ex.ew, i32_view(idx, {1, 1}), f32_view(w, {1, 1}), 10.0f,
                               f32_view(out, {1, 4})),
               Error);
}

TEST_P(CpuMoe, SwigluMlpMatchesReference) {
  const int64_t T = 3, D = 16, I = 24;
  Experts ex(1, D, I, 551);
  std::vector<float> x = random_normal(T * D, 552), out(T * D), ref(T * D);
  poison(out);
  be->swiglu_mlp(f32_view(x, {T, D}), ex.ew[0], 1.5f, f32_view(out, {T, D}));
  int clamps = 0;
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<double> y = ref_expert(ex, 0, x.data() + t * D, D, I, 1.5, &clamps);
    for (int64_t d = 0; d < D; ++d) ref[t * D + d] = static_cast<float>(y[d]);
  }
  EXPECT_GT(clamps, 5);
  EXPECT_LE(max_rel_diff(out, ref), 2e-6);
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuMoe, ::testing::Values(1, 2));

TEST(CpuMoeThreads, OneAndTwoThreadsGiveIdenticalBits) {
  auto be1 = ops::make_cpu_backend(1), be2 = ops::make_cpu_backend(2);
  const int64_t T = 9, D = 64, I = 96, E = 6, K = 3;
  Experts ex(E, D, I, 561);
  std::vector<float> logits = random_normal(T * E, 562), x = random_normal(T * D, 563);
  std::vector<int32_t> idx1(T * K), idx2(T * K);
  std::vector<float> w1(T * K), w2(T * K), o1(T * D), o2(T * D);
  poison(o1);
  poison(o2);
  be1->moe_route(f32_view(logits, {T, E}), TensorView{}, TensorView{}, TensorView{}, 2.5f, i32_view(idx1, {T, K}),
                 f32_view(w1, {T, K}));
  be2->moe_route(f32_view(logits, {T, E}), TensorView{}, TensorView{}, TensorView{}, 2.5f, i32_view(idx2, {T, K}),
                 f32_view(w2, {T, K}));
  EXPECT_EQ(idx1, idx2);
  EXPECT_TRUE(same_bits(w1, w2));
  be1->moe_experts(f32_view(x, {T, D}), ex.ew, i32_view(idx1, {T, K}), f32_view(w1, {T, K}), 10.0f,
                   f32_view(o1, {T, D}));
  be2->moe_experts(f32_view(x, {T, D}), ex.ew, i32_view(idx2, {T, K}), f32_view(w2, {T, K}), 10.0f,
                   f32_view(o2, {T, D}));
  EXPECT_TRUE(same_bits(o1, o2));
  for (float v : o1) ASSERT_TRUE(std::isfinite(v));
}

}  // namespace
}  // namespace clawmine::test
