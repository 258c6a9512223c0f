// Attention-side ops: sparse attention with a per-head sink (spec §3.3 F), compressor pooling
// (§3.3 C), lightning-indexer scores (§3.3 E) and a deterministic top-k. Dot products and
// softmax sums in double; softmaxes subtract their maximum.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/op_checks.h"
#include "core/error.h"

namespace clawmine::backend::cpu {

void CpuBackend::sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& idx,
                                  const TensorView& sink, float scale, const TensorView& out) {
  const float* pq = f32_arg(q, "sparse_attention", "q");
  const float* pkv = f32_arg(kv, "sparse_attention", "kv");
  float* po = f32_arg(out, "sparse_attention", "out");
  expect_rank(q, 3, "sparse_attention", "q");
  const int64_t T = q.dim(0), H = q.dim(1), Dh = q.dim(2);
  expect_rank(kv, 2, "sparse_attention", "kv");
  if (kv.dim(1) != Dh) expect_shape(kv, {kv.dim(0), Dh}, "sparse_attention", "kv");
  const int64_t N = kv.dim(0);
  if (idx.dtype != DType::kI32) throw Error("cpu sparse_attention: idx must be I32");
  expect_rank(idx, 2, "sparse_attention", "idx");
  if (idx.dim(0) != T) expect_shape(idx, {T, idx.dim(1)}, "sparse_attention", "idx");
  const int64_t S = idx.dim(1);
  const int32_t* pidx = idx.as<int32_t>();
  const float* psink = nullptr;
  if (!sink.empty()) {
    psink = f32_arg(sink, "sparse_attention", "sink");
    expect_numel(sink, H, "sparse_attention", "sink");
  }
  expect_numel(out, T * H * Dh, "sparse_attention", "out");
  for (int64_t i = 0; i < T * S; ++i) {
    if (pidx[i] < -1 || pidx[i] >= N)
      throw Error(str_cat("cpu sparse_attention: key index ", pidx[i], " at [", i / S, ", ", i % S,
                          "] is outside [-1, ", N, ")"));
  }
  pool_.parallel_for(0, T * H, [&](int64_t b, int64_t e) {
    std::vector<double> logit(static_cast<size_t>(S)), acc(static_cast<size_t>(Dh));
    for (int64_t th = b; th < e; ++th) {
      const int64_t t = th / H, h = th % H;
      const float* qv = pq + th * Dh;
      const int32_t* row = pidx + t * S;
      double M = psink ? static_cast<double>(psink[h]) : -std::numeric_limits<double>::infinity();
      bool any = false;
      for (int64_t s = 0; s < S; ++s) {
        if (row[s] < 0) continue;
        logit[s] = dot_f64(qv, pkv + row[s] * Dh, Dh) * scale;
        M = std::max(M, logit[s]);
        any = true;
      }
      float* o = po + th * Dh;
      if (!any) {
        std::fill(o, o + Dh, 0.0f);
        continue;
      }
      double denom = psink ? std::exp(psink[h] - M) : 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t s = 0; s < S; ++s) {
        if (row[s] < 0) continue;
        const double p = std::exp(logit[s] - M);
        denom += p;
        const float* kr = pkv + row[s] * Dh;
        for (int64_t d = 0; d < Dh; ++d) acc[d] += p * kr[d];
      }
      for (int64_t d = 0; d < Dh; ++d) o[d] = static_cast<float>(acc[d] / denom);
    }
  });
}

void CpuBackend::compress_pool(const TensorView& kv, const TensorView& score, const TensorView& out) {
  const float* pkv = f32_arg(kv, "compress_pool", "kv");
  const float* ps = f32_arg(score, "compress_pool", "score");
  float* po = f32_arg(out, "compress_pool", "out");
  expect_rank(kv, 3, "compress_pool", "kv");
  expect_shape(score, kv.shape, "compress_pool", "score");
  const int64_t N = kv.dim(0), S = kv.dim(1), d = kv.dim(2);
  expect_numel(out, N * d, "compress_pool", "out");
  // A channel whose slots are all -inf has no weight anywhere: its output is 0.
  pool_.parallel_for(0, N, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      for (int64_t c = 0; c < d; ++c) {
        double M = -std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s < S; ++s) M = std::max(M, static_cast<double>(ps[(n * S + s) * d + c]));
        double num = 0, den = 0;
        if (M != -std::numeric_limits<double>::infinity()) {
          for (int64_t s = 0; s < S; ++s) {
            const float sc = ps[(n * S + s) * d + c];
            if (sc == -std::numeric_limits<float>::infinity()) continue;
            const double p = std::exp(sc - M);
            den += p;
            num += p * pkv[(n * S + s) * d + c];
          }
        }
        po[n * d + c] = den > 0 ? static_cast<float>(num / den) : 0.0f;
      }
    }
  });
}

void CpuBackend::indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                                const std::vector<int64_t>& n_valid, const TensorView& scores) {
  const float* pq = f32_arg(q, "indexer_scores", "q");
  const float* pk = f32_arg(keys, "indexer_scores", "keys");
  const float* pw = f32_arg(weights, "indexer_scores", "weights");
  float* ps = f32_arg(scores, "indexer_scores", "scores");
  expect_rank(q, 3, "indexer_scores", "q");
  const int64_t T = q.dim(0), Hi = q.dim(1), Di = q.dim(2);
  expect_rank(keys, 2, "indexer_scores", "keys");
  if (keys.dim(1) != Di) expect_shape(keys, {keys.dim(0), Di}, "indexer_scores", "keys");
  const int64_t N = keys.dim(0);
  expect_numel(weights, T * Hi, "indexer_scores", "weights");
  expect_numel(scores, T * N, "indexer_scores", "scores");
  if (static_cast<int64_t>(n_valid.size()) != T)
    throw Error(str_cat("cpu indexer_scores: n_valid has ", n_valid.size(), " entries for ", T, " tokens"));
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t valid = std::clamp<int64_t>(n_valid[t], 0, N);
      for (int64_t j = 0; j < N; ++j) {
        if (j >= valid) {
          ps[t * N + j] = -std::numeric_limits<float>::infinity();
          continue;
        }
        double acc = 0;
        for (int64_t h = 0; h < Hi; ++h) {
          const double dot = dot_f64(pq + (t * Hi + h) * Di, pk + j * Di, Di);
          acc += std::max(dot, 0.0) * pw[t * Hi + h];
        }
        ps[t * N + j] = static_cast<float>(acc);
      }
    }
  });
}

void CpuBackend::topk(const TensorView& values, int64_t k, const TensorView& out) {
  const float* pv = f32_arg(values, "topk", "values");
  expect_rank(values, 2, "topk", "values");
  const int64_t T = values.dim(0), N = values.dim(1);
  if (out.dtype != DType::kI32) throw Error("cpu topk: out must be I32");
  if (k < 0) throw Error(str_cat("cpu topk: k = ", k, " is negative"));
  expect_numel(out, T * k, "topk", "out");
  int32_t* po = out.as<int32_t>();
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    std::vector<int32_t> cand;
    for (int64_t t = tb; t < te; ++t) {
      const float* row = pv + t * N;
      cand.clear();
      for (int64_t j = 0; j < N; ++j) {
        if (std::isnan(row[j])) throw Error(str_cat("cpu topk: NaN at row ", t, ", column ", j));
        if (row[j] != -std::numeric_limits<float>::infinity()) cand.push_back(static_cast<int32_t>(j));
      }
      const int64_t m = std::min<int64_t>(k, static_cast<int64_t>(cand.size()));
      // Larger value first; equal values: lower index first.
      std::partial_sort(cand.begin(), cand.begin() + m, cand.end(), [&](int32_t a, int32_t b) {
        return row[a] > row[b] || (row[a] == row[b] && a < b);
      });
      for (int64_t s = 0; s < k; ++s) po[t * k + s] = s < m ? cand[s] : -1;
    }
  });
}

}  // namespace clawmine::backend::cpu
