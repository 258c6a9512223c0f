// Attention-side ops: the per-query key index lists (spec §3.3 B/D), sparse attention with a
// per-head sink over [window pool; compressed entries] (§3.3 F), lightning-indexer scores
// (§3.3 E) and a deterministic top-k. Dot products and softmax sums in double; softmaxes
// subtract their maximum.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/op_checks.h"
#include "core/error.h"

namespace clawmine::backend::cpu {

void CpuBackend::attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                                 int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) {
  const int32_t* pos = i32_arg(positions, "attention_index", "positions");
  const int64_t T = positions.numel();
  int32_t* out = i32_arg(idx, "attention_index", "idx");
  expect_rank(idx, 2, "attention_index", "idx");
  if (idx.dim(0) != T) expect_shape(idx, {T, idx.dim(1)}, "attention_index", "idx");
  const int64_t S = idx.dim(1);
  if (window < 1 || window > S)
    throw Error(str_cat("cpu attention_index: window ", window, " must be in [1, S = ", S, "]"));
  const bool csa = !selected.empty();
  const int32_t* sel = nullptr;
  int64_t k = 0;
  if (csa) {
    sel = i32_arg(selected, "attention_index", "selected");
    expect_rank(selected, 2, "attention_index", "selected");
    k = selected.dim(1);
    if (selected.dim(0) != T) expect_shape(selected, {T, k}, "attention_index", "selected");
    if (k > S - window)
      throw Error(str_cat("cpu attention_index: ", k, " selected entries do not fit the ", S - window,
                          " compressed slots"));
  } else if (n_entries > 0 && rate < 1) {
    throw Error(str_cat("cpu attention_index: rate ", rate, " must be >= 1"));
  }
  if (T == 0) return;
  const int64_t p0 = pos[0];
  // Row n_prev + kp - p0 of the oldest key the first query sees must exist; a pool may hold more
  // rows than positions before p0 (a one-token step's pool always holds window-1), never listed.
  if (p0 < 0 || n_prev < std::min(p0, window - 1) || n_prev > std::max(p0, window - 1))
    throw Error(str_cat("cpu attention_index: n_prev ", n_prev, " rows before position ", p0, " with window ", window,
                        " (need min(p0, window-1) <= n_prev <= max(p0, window-1))"));
  for (int64_t t = 0; t < T; ++t) {
    if (pos[t] != p0 + t)
      throw Error(str_cat("cpu attention_index: positions are not consecutive (positions[", t, "] = ", pos[t],
                          ", expected ", p0 + t, ")"));
    if (!csa && n_entries > 0 && std::min(n_entries, (pos[t] + 1) / rate) > S - window)
      throw Error(str_cat("cpu attention_index: ", std::min(n_entries, (pos[t] + 1) / rate),
                          " compressed entries do not fit the ", S - window, " compressed slots"));
  }
  for (int64_t t = 0; t < T; ++t) {
    int32_t* row = out + t * S;
    std::fill(row, row + S, -1);
    const int64_t p = pos[t];
    int64_t s = 0;
    for (int64_t kp = std::max<int64_t>(0, p - window + 1); kp <= p; ++kp) row[s++] = static_cast<int32_t>(n_prev + kp - p0);
    s = window;
    if (csa) {
      for (int64_t i = 0; i < k; ++i)
        if (sel[t * k + i] >= 0) row[s++] = static_cast<int32_t>(entry_base + sel[t * k + i]);
    } else if (n_entries > 0) {
      const int64_t available = std::min(n_entries, (p + 1) / rate);
      for (int64_t j = 0; j < available; ++j) row[s++] = static_cast<int32_t>(entry_base + j);
    }
  }
}

void CpuBackend::sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries,
                                  const TensorView& idx, const TensorView& sink, float scale, const TensorView& out) {
  const float* pq = f32_arg(q, "sparse_attention", "q");
  const float* pkv = f32_arg(kv, "sparse_attention", "kv");
  float* po = f32_arg(out, "sparse_attention", "out");
  expect_rank(q, 3, "sparse_attention", "q");
  const int64_t T = q.dim(0), H = q.dim(1), Dh = q.dim(2);
  expect_rank(kv, 2, "sparse_attention", "kv");
  if (kv.dim(1) != Dh) expect_shape(kv, {kv.dim(0), Dh}, "sparse_attention", "kv");
  const int64_t Nw = kv.dim(0);
  const float* pe = nullptr;
  int64_t Ne = 0;
  if (!entries.empty()) {
    pe = f32_arg(entries, "sparse_attention", "entries");
    expect_rank(entries, 2, "sparse_attention", "entries");
    if (entries.dim(1) != Dh) expect_shape(entries, {entries.dim(0), Dh}, "sparse_attention", "entries");
    Ne = entries.dim(0);
  }
  const int64_t N = Nw + Ne;
  const int32_t* pidx = i32_arg(idx, "sparse_attention", "idx");
  expect_rank(idx, 2, "sparse_attention", "idx");
  if (idx.dim(0) != T) expect_shape(idx, {T, idx.dim(1)}, "sparse_attention", "idx");
  const int64_t S = idx.dim(1);
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
  // Row r of the virtual key matrix [kv; entries].
  auto key = [&](int32_t r) { return r < Nw ? pkv + r * Dh : pe + (r - Nw) * Dh; };
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
        logit[s] = dot_f64(qv, key(row[s]), Dh) * scale;
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
        const float* kr = key(row[s]);
        for (int64_t d = 0; d < Dh; ++d) acc[d] += p * kr[d];
      }
      for (int64_t d = 0; d < Dh; ++d) o[d] = static_cast<float>(acc[d] / denom);
    }
  });
}

void CpuBackend::indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                                float weight_scale, const TensorView& positions, int64_t rate,
                                const TensorView& scores) {
  const float* pq = f32_arg(q, "indexer_scores", "q");
  const float* pw = f32_arg(weights, "indexer_scores", "weights");
  float* ps = f32_arg(scores, "indexer_scores", "scores");
  expect_rank(q, 3, "indexer_scores", "q");
  const int64_t T = q.dim(0), Hi = q.dim(1), Di = q.dim(2);
  const float* pk = nullptr;
  int64_t N = 0;
  if (!keys.empty()) {
    pk = f32_arg(keys, "indexer_scores", "keys");
    expect_rank(keys, 2, "indexer_scores", "keys");
    if (keys.dim(1) != Di) expect_shape(keys, {keys.dim(0), Di}, "indexer_scores", "keys");
    N = keys.dim(0);
  }
  expect_numel(weights, T * Hi, "indexer_scores", "weights");
  expect_numel(scores, T * N, "indexer_scores", "scores");
  const int32_t* pos = i32_arg(positions, "indexer_scores", "positions");
  expect_numel(positions, T, "indexer_scores", "positions");
  if (rate < 1) throw Error(str_cat("cpu indexer_scores: rate ", rate, " must be >= 1"));
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      // Entries whose window is complete at this query's position (causal).
      const int64_t valid = std::clamp<int64_t>((static_cast<int64_t>(pos[t]) + 1) / rate, 0, N);
      for (int64_t j = 0; j < N; ++j) {
        if (j >= valid) {
          ps[t * N + j] = -std::numeric_limits<float>::infinity();
          continue;
        }
        double acc = 0;
        for (int64_t h = 0; h < Hi; ++h) {
          const double dot = dot_f64(pq + (t * Hi + h) * Di, pk + j * Di, Di);
          const float wh = pw[t * Hi + h] * weight_scale;  // the head weight scaled in float32
          acc += std::max(dot, 0.0) * wh;
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
  if (k < 0) throw Error(str_cat("cpu topk: k = ", k, " is negative"));
  int32_t* po = i32_arg(out, "topk", "out");
  expect_numel(out, T * k, "topk", "out");
  pool_.parallel_for(0, T, [&](int64_t tb, int64_t te) {
    std::vector<int32_t> cand;
    for (int64_t t = tb; t < te; ++t) {
      const float* row = pv + t * N;
      cand.clear();
      for (int64_t j = 0; j < N; ++j) {
        // -inf (masked) and NaN are never picked; a NaN score shows up downstream instead.
        if (!std::isnan(row[j]) && row[j] != -std::numeric_limits<float>::infinity())
          cand.push_back(static_cast<int32_t>(j));
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

void CpuBackend::argmax_rows(const TensorView& values, const TensorView& out) {
  const float* pv = f32_arg(values, "argmax_rows", "values");
  expect_rank(values, 2, "argmax_rows", "values");
  const int64_t R = values.dim(0), N = values.dim(1);
  if (N < 1 || N > std::numeric_limits<int32_t>::max())
    throw Error(str_cat("cpu argmax_rows: rows of ", N, " values (expected 1 .. 2^31 - 1)"));
  int32_t* po = i32_arg(out, "argmax_rows", "out");
  expect_numel(out, R, "argmax_rows", "out");
  pool_.parallel_for(0, R, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const float* row = pv + r * N;
      int64_t best = -1, bad = -1;
      for (int64_t j = 0; j < N; ++j) {
        if (!std::isfinite(row[j])) {
          bad = j;
          break;
        }
        if (best < 0 || row[j] > row[best]) best = j;
      }
      po[r] = static_cast<int32_t>(bad >= 0 ? -1 - bad : best);
    }
  });
}

}  // namespace clawmine::backend::cpu
