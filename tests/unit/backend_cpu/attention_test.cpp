// sparse_attention, compress_pool, indexer_scores and topk against naive references and hand cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "ops/backend.h"
#include "unit/backend_cpu/cpu_test_util.h"

namespace clawmine::test {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

class CpuAttention : public ::testing::TestWithParam<int> {
 protected:
  std::unique_ptr<ops::Backend> be = ops::make_cpu_backend(GetParam());
};

// transformers' formulation: the sink is one more logit in the softmax, its column is dropped.
std::vector<float> ref_attention(const std::vector<float>& q, const std::vector<float>& kv,
                                 const std::vector<int32_t>& idx, const std::vector<float>* sink, int64_t T,
                                 int64_t H, int64_t Dh, int64_t S, double scale) {
  std::vector<double> acc(T * H * Dh, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> logits;
      std::vector<int32_t> rows;
      for (int64_t s = 0; s < S; ++s) {
        const int32_t r = idx[t * S + s];
        if (r < 0) continue;
        double dot = 0;
        for (int64_t d = 0; d < Dh; ++d) dot += double(q[(t * H + h) * Dh + d]) * kv[r * Dh + d];
        logits.push_back(dot * scale);
        rows.push_back(r);
      }
      if (rows.empty()) continue;
      if (sink) logits.push_back((*sink)[h]);
      const double mx = *std::max_element(logits.begin(), logits.end());
      double z = 0;
      for (double l : logits) z += std::exp(l - mx);
      for (size_t i = 0; i < rows.size(); ++i) {
        const double p = std::exp(logits[i] - mx) / z;
        for (int64_t d = 0; d < Dh; ++d) acc[(t * H + h) * Dh + d] += p * kv[rows[i] * Dh + d];
      }
    }
  return std::vector<float>(acc.begin(), acc.end());
}

TEST_P(CpuAttention, SparseAttentionWithSink) {
  const int64_t T = 3, H = 4, Dh = 16, N = 10, S = 6;
  std::vector<float> q = random_normal(T * H * Dh, 401), kv = random_normal(N * Dh, 402),
                     sink = random_normal(H, 403), out(T * H * Dh);
  // Row 0: duplicates and skips; row 1: all keys; row 2: no valid key.
  std::vector<int32_t> idx = {0, 3, -1, 3, 9, -1, 0, 1, 2, 3, 4, 5, -1, -1, -1, -1, -1, -1};
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  for (bool with_sink : {true, false}) {
    poison(out);
    TensorView sv = with_sink ? f32_view(sink, {H}) : TensorView{};
    be->sparse_attention(f32_view(q, {T, H, Dh}), f32_view(kv, {N, Dh}), i32_view(idx, {T, S}), sv, scale,
                         f32_view(out, {T, H, Dh}));
    const std::vector<float> ref = ref_attention(q, kv, idx, with_sink ? &sink : nullptr, T, H, Dh, S, scale);
    EXPECT_LE(max_rel_diff(out, ref), kTightRel) << "sink " << with_sink;
    for (int64_t i = 2 * H * Dh; i < T * H * Dh; ++i) EXPECT_EQ(out[i], 0.0f);
  }
}

TEST_P(CpuAttention, SparseAttentionRejectsBadIndex) {
  std::vector<float> q(4, 1.0f), kv(8, 1.0f), out(4);
  std::vector<int32_t> idx = {0, 2};
  EXPECT_THROW(be->sparse_attention(f32_view(q, {1, 1, 4}), f32_view(kv, {2, 4}), i32_view(idx, {1, 2}),
                                    TensorView{}, 1.0f, f32_view(out, {1, 1, 4})),
               Error);
}

TEST_P(CpuAttention, CompressPoolSkipsNegInfSlots) {
  const int64_t N = 3, S = 8, d = 5;
  std::vector<float> kv = random_normal(N * S * d, 411), score = random_normal(N * S * d, 412), out(N * d);
  for (int64_t s = 0; s < S / 2; ++s)  // entry 0: first half absent (no previous window)
    for (int64_t c = 0; c < d; ++c) {
      score[(0 * S + s) * d + c] = kNegInf;
      kv[(0 * S + s) * d + c] = std::numeric_limits<float>::quiet_NaN();
    }
  for (int64_t s = 0; s < S; ++s) score[(2 * S + s) * d + 4] = kNegInf;  // one channel with no slot at all
  poison(out);
  be->compress_pool(f32_view(kv, {N, S, d}), f32_view(score, {N, S, d}), f32_view(out, {N, d}));
  std::vector<float> ref(N * d, 0.0f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < d; ++c) {
      double z = 0, acc = 0;
      for (int64_t s = 0; s < S; ++s) {
        const float sc = score[(n * S + s) * d + c];
        if (sc == kNegInf) continue;
        z += std::exp(double(sc));
        acc += std::exp(double(sc)) * kv[(n * S + s) * d + c];
      }
      if (z > 0) ref[n * d + c] = static_cast<float>(acc / z);
    }
  EXPECT_LE(max_rel_diff(out, ref), kTightRel);
  EXPECT_EQ(out[2 * d + 4], 0.0f);
}

TEST_P(CpuAttention, IndexerScores) {
  const int64_t T = 3, Hi = 4, Di = 8, N = 7;
  std::vector<float> q = random_normal(T * Hi * Di, 421), keys = random_normal(N * Di, 422),
                     w = random_normal(T * Hi, 423), scores(T * N);
  const std::vector<int64_t> n_valid = {0, 3, 7};
  poison(scores);
  be->indexer_scores(f32_view(q, {T, Hi, Di}), f32_view(keys, {N, Di}), f32_view(w, {T, Hi}), n_valid,
                     f32_view(scores, {T, N}));
  std::vector<float> ref(T * N, kNegInf);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < n_valid[t]; ++j) {
      double acc = 0;
      for (int64_t h = 0; h < Hi; ++h) {
        double dot = 0;
        for (int64_t i = 0; i < Di; ++i) dot += double(q[(t * Hi + h) * Di + i]) * keys[j * Di + i];
        acc += (dot > 0 ? dot : 0.0) * w[t * Hi + h];
      }
      ref[t * N + j] = static_cast<float>(acc);
    }
  for (int64_t i = 0; i < T * N; ++i) {
    if (ref[i] == kNegInf) {
      EXPECT_EQ(scores[i], kNegInf) << i;
    } else {
      EXPECT_NEAR(scores[i], ref[i], 1e-6 * (1 + std::fabs(ref[i]))) << i;
    }
  }
}

TEST_P(CpuAttention, TopkTiesAndNegInf) {
  std::vector<float> v = {1, 3, 3, kNegInf, 2, 3,  //
                          kNegInf, 5, kNegInf, kNegInf, kNegInf, kNegInf};
  std::vector<int32_t> out(8, 77);
  be->topk(f32_view(v, {2, 6}), 4, i32_view(out, {2, 4}));
  EXPECT_EQ(out, (std::vector<int32_t>{1, 2, 5, 4, 1, -1, -1, -1}));
}

TEST_P(CpuAttention, TopkMatchesStableSort) {
  const int64_t T = 4, N = 50, k = 9;
  std::vector<float> v = random_normal(T * N, 431);
  for (int64_t i = 0; i < T * N; i += 7) v[i] = std::round(v[i]);  // plenty of exact ties
  for (int64_t i = 0; i < T * N; i += 5) v[i] = kNegInf;
  std::vector<int32_t> out(T * k, 77);
  be->topk(f32_view(v, {T, N}), k, i32_view(out, {T, k}));
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> ord(N);
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int32_t a, int32_t b) { return v[t * N + a] > v[t * N + b]; });
    for (int64_t s = 0; s < k; ++s) EXPECT_EQ(out[t * k + s], ord[s]) << "t=" << t << " s=" << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuAttention, ::testing::Values(1, 2));

}  // namespace
}  // namespace clawmine::test
