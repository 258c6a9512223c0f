// attention_index (window / HCA / CSA lists, chunks at p0 > 0), sparse_attention over two key
// pools, indexer_scores and topk against naive references and hand cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <ostream>
#include <string>

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
  // The same keys as one pool, and as [kv rows 0..5; entries rows 6..9].
  std::vector<float> pool(kv.begin(), kv.begin() + 6 * Dh), entries(kv.begin() + 6 * Dh, kv.end());
  for (bool with_sink : {true, false}) {
    const TensorView sv = with_sink ? f32_view(sink, {H}) : TensorView{};
    const std::vector<float> ref = ref_attention(q, kv, idx, with_sink ? &sink : nullptr, T, H, Dh, S, scale);
    poison(out);
    be->sparse_attention(f32_view(q, {T, H, Dh}), f32_view(kv, {N, Dh}), TensorView{}, i32_view(idx, {T, S}), sv,
                         scale, f32_view(out, {T, H, Dh}));
    EXPECT_LE(max_rel_diff(out, ref), kTightRel) << "sink " << with_sink;
    for (int64_t i = 2 * H * Dh; i < T * H * Dh; ++i) EXPECT_EQ(out[i], 0.0f);
    const std::vector<float> one_pool = out;
    poison(out);
    be->sparse_attention(f32_view(q, {T, H, Dh}), f32_view(pool, {6, Dh}), f32_view(entries, {4, Dh}),
                         i32_view(idx, {T, S}), sv, scale, f32_view(out, {T, H, Dh}));
    EXPECT_TRUE(same_bits(out, one_pool)) << "two pools, sink " << with_sink;
  }
}

TEST_P(CpuAttention, SparseAttentionRejectsBadIndex) {
  std::vector<float> q(4, 1.0f), kv(8, 1.0f), ent(4, 1.0f), out(4);
  std::vector<int32_t> idx = {0, 2}, idx3 = {0, 3};
  EXPECT_THROW(be->sparse_attention(f32_view(q, {1, 1, 4}), f32_view(kv, {2, 4}), TensorView{}, i32_view(idx, {1, 2}),
                                    TensorView{}, 1.0f, f32_view(out, {1, 1, 4})),
               Error);
  // Row 2 exists once the entries pool is there; row 3 does not.
  be->sparse_attention(f32_view(q, {1, 1, 4}), f32_view(kv, {2, 4}), f32_view(ent, {1, 4}), i32_view(idx, {1, 2}),
                       TensorView{}, 1.0f, f32_view(out, {1, 1, 4}));
  EXPECT_THROW(be->sparse_attention(f32_view(q, {1, 1, 4}), f32_view(kv, {2, 4}), f32_view(ent, {1, 4}),
                                    i32_view(idx3, {1, 2}), TensorView{}, 1.0f, f32_view(out, {1, 1, 4})),
               Error);
}

// attention_index against the definition read through positions: window slot s of query t is
// the key at position max(0, p-W+1) + s (pool row r holds position p0 - n_prev + r); compressed
// slots list entry_base + j for the entries the query may see.
struct IndexCase {
  const char* name;
  int64_t p0, T, n_prev, W, n_entries, rate, k;  // k > 0: CSA with a selection
};

void PrintTo(const IndexCase& c, std::ostream* os) { *os << c.name; }

class CpuAttentionIndex : public ::testing::TestWithParam<IndexCase> {};

TEST_P(CpuAttentionIndex, MatchesDefinition) {
  const IndexCase& c = GetParam();
  auto be = ops::make_cpu_backend(2);
  const bool csa = c.k > 0, hca = !csa && c.n_entries > 0;
  const int64_t n_comp = csa ? c.k : c.n_entries, S = c.W + n_comp + 2;  // two spare slots stay -1
  const int64_t entry_base = c.n_prev + c.T;
  std::vector<int32_t> pos(c.T), idx(c.T * S, 77), sel;
  for (int64_t t = 0; t < c.T; ++t) pos[t] = static_cast<int32_t>(c.p0 + t);
  if (csa) {
    sel.resize(c.T * c.k);
    for (int64_t i = 0; i < c.T * c.k; ++i) sel[i] = (i % 3 == 1) ? -1 : static_cast<int32_t>((i * 5) % c.n_entries);
  }
  be->attention_index(i32_view(pos, {c.T}), c.n_prev, c.W, entry_base, c.n_entries, c.rate,
                      csa ? i32_view(sel, {c.T, c.k}) : TensorView{}, i32_view(idx, {c.T, S}));
  for (int64_t t = 0; t < c.T; ++t) {
    const int64_t p = c.p0 + t;
    const int32_t* row = idx.data() + t * S;
    int64_t s = 0;
    for (int64_t kp = std::max<int64_t>(0, p - c.W + 1); kp <= p; ++kp, ++s) {
      ASSERT_GE(row[s], 0) << "t=" << t << " s=" << s;
      EXPECT_EQ(c.p0 - c.n_prev + row[s], kp) << "t=" << t << " s=" << s;  // the pool row holds position kp
      EXPECT_LT(row[s], entry_base);
    }
    for (; s < c.W; ++s) EXPECT_EQ(row[s], -1) << "t=" << t << " s=" << s;
    std::vector<int32_t> want;
    if (hca)
      for (int64_t j = 0; j < std::min(c.n_entries, (p + 1) / c.rate); ++j) want.push_back(static_cast<int32_t>(entry_base + j));
    if (csa)
      for (int64_t i = 0; i < c.k; ++i)
        if (sel[t * c.k + i] >= 0) want.push_back(static_cast<int32_t>(entry_base + sel[t * c.k + i]));
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(row[c.W + i], want[i]) << "t=" << t << " i=" << i;
    for (int64_t i = c.W + static_cast<int64_t>(want.size()); i < S; ++i) EXPECT_EQ(row[i], -1) << "t=" << t << " i=" << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CpuAttentionIndex,
    ::testing::Values(IndexCase{"window_from_0", 0, 5, 0, 4, 0, 1, 0},
                      IndexCase{"window_short_history", 2, 3, 2, 8, 0, 1, 0},
                      IndexCase{"window_full_history", 10, 3, 3, 4, 0, 1, 0},
                      IndexCase{"window_decode", 41, 1, 7, 8, 0, 1, 0},
                      // a one-token step's pool holds W-1 rows at every position (rows before
                      // position 0 are never listed)
                      IndexCase{"window_decode_full_pool_at_0", 0, 1, 7, 8, 0, 1, 0},
                      IndexCase{"window_decode_full_pool_at_3", 3, 1, 7, 8, 0, 1, 0},
                      IndexCase{"csa_decode_full_pool_at_5", 5, 1, 7, 8, 1, 4, 2},
                      IndexCase{"hca_from_0", 0, 9, 0, 3, 2, 4, 0},
                      IndexCase{"hca_chunk_p0_5", 5, 6, 2, 3, 2, 4, 0},
                      IndexCase{"hca_decode", 16, 1, 2, 3, 4, 4, 0},
                      IndexCase{"csa_chunk_p0_9", 9, 4, 3, 4, 3, 4, 3},
                      IndexCase{"csa_decode", 33, 1, 3, 4, 8, 4, 5}),
    [](const ::testing::TestParamInfo<IndexCase>& info) { return std::string(info.param.name); });

TEST(CpuAttentionIndexErrors, RejectsMissingHistoryAndGaps) {
  auto be = ops::make_cpu_backend(1);
  std::vector<int32_t> pos = {10, 11}, gap = {10, 12}, idx(2 * 4);
  // p0 = 10 with a window of 4 needs the 3 previous keys.
  EXPECT_THROW(be->attention_index(i32_view(pos, {2}), 2, 4, 5, 0, 1, TensorView{}, i32_view(idx, {2, 4})), Error);
  EXPECT_THROW(be->attention_index(i32_view(gap, {2}), 3, 4, 5, 0, 1, TensorView{}, i32_view(idx, {2, 4})), Error);
  // More previous rows than the window or the positions before p0 can have.
  EXPECT_THROW(be->attention_index(i32_view(pos, {2}), 11, 4, 13, 0, 1, TensorView{}, i32_view(idx, {2, 4})), Error);
  // HCA entries that do not fit the slots after the window.
  EXPECT_THROW(be->attention_index(i32_view(pos, {2}), 3, 4, 5, 3, 4, TensorView{}, i32_view(idx, {2, 4})), Error);
}

TEST_P(CpuAttention, IndexerScores) {
  const int64_t T = 3, Hi = 4, Di = 8, N = 7, rate = 4;
  std::vector<float> q = random_normal(T * Hi * Di, 421), keys = random_normal(N * Di, 422),
                     w = random_normal(T * Hi, 423), scores(T * N);
  std::vector<int32_t> pos = {2, 13, 40};  // entries visible: 0, 3, min(7, 10) = 7
  const float weight_scale = 0.3125f;
  poison(scores);
  be->indexer_scores(f32_view(q, {T, Hi, Di}), f32_view(keys, {N, Di}), f32_view(w, {T, Hi}), weight_scale,
                     i32_view(pos, {T}), rate, f32_view(scores, {T, N}));
  std::vector<float> ref(T * N, kNegInf);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < std::min<int64_t>(N, (pos[t] + 1) / rate); ++j) {
      double acc = 0;
      for (int64_t h = 0; h < Hi; ++h) {
        double dot = 0;
        for (int64_t i = 0; i < Di; ++i) dot += double(q[(t * Hi + h) * Di + i]) * keys[j * Di + i];
        acc += (dot > 0 ? dot : 0.0) * w[t * Hi + h] * weight_scale;
      }
      ref[t * N + j] = static_cast<float>(acc);
    }
  EXPECT_EQ(scores[0], kNegInf);
  EXPECT_NE(scores[2 * N + 6], kNegInf);
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

TEST_P(CpuAttention, TopkNeverPicksNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> v = {nan, 2, kNegInf, 7, nan};
  std::vector<int32_t> out(4, 77);
  be->topk(f32_view(v, {1, 5}), 4, i32_view(out, {1, 4}));
  EXPECT_EQ(out, (std::vector<int32_t>{3, 1, -1, -1}));
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

TEST_P(CpuAttention, ArgmaxRowsTiesSignedZerosAndNonFinite) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> v = {1, 3, 3, -5, 2, 3,           // ties: the first 3
                          -0.0f, 0.0f, -1, -2, -3, -4,  // -0 and +0 tie: the first
                          1, kNegInf, 9, nan, 2, 1,     // a non-finite entry: -1 - its index
                          4, 4, 4, 4, 4, nan};          // a NaN after the maximum still refuses the row
  std::vector<int32_t> out(4, 77);
  be->argmax_rows(f32_view(v, {4, 6}), i32_view(out, {4}));
  EXPECT_EQ(out, (std::vector<int32_t>{1, 0, -2, -6}));
}

TEST_P(CpuAttention, ArgmaxRowsMatchesFirstMaximum) {
  const int64_t R = 5, N = 1001;
  std::vector<float> v = random_normal(R * N, 977);
  for (int64_t i = 0; i < R * N; i += 3) v[i] = std::round(v[i] * 2);  // exact ties at the top
  std::vector<int32_t> out(R, 77);
  be->argmax_rows(f32_view(v, {R, N}), i32_view(out, {R}));
  for (int64_t r = 0; r < R; ++r) {
    const float* row = v.data() + r * N;
    EXPECT_EQ(out[r], std::max_element(row, row + N) - row) << "row " << r;
  }
}

TEST_P(CpuAttention, ArgmaxRowsRejectsBadShapes) {
  std::vector<float> v(6, 1.0f);
  std::vector<int32_t> out(3, 0);
  EXPECT_THROW(be->argmax_rows(f32_view(v, {2, 3}), i32_view(out, {3})), Error);
  EXPECT_THROW(be->argmax_rows(f32_view(v, {6}), i32_view(out, {1})), Error);
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuAttention, ::testing::Values(1, 2));

}  // namespace
}  // namespace clawmine::test
