// The KV compressor of a chunk (spec §3.3 C; transformers-parity #17-#21): gate logits get the
// position bias ape[p mod m], every row is written to the carried state at row p mod m, and
// each window that completes inside the chunk is gathered into its slots (HCA: its m rows; CSA:
// the previous window's first halves, then this window's second halves) and pooled by a
// per-channel softmax over the slots, in double. Windows complete in position order, so any
// chunking of a sequence gives the same entries and the same state.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/op_checks.h"
#include "core/error.h"

namespace clawmine::backend::cpu {

void CpuBackend::compress_pool(const float* kv, const float* score, int64_t N, int64_t S, int64_t d, float* out) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  // A channel whose slots are all -inf has no weight anywhere: its output is 0.
  pool_.parallel_for(0, N, [&](int64_t nb, int64_t ne) {
    for (int64_t n = nb; n < ne; ++n) {
      for (int64_t c = 0; c < d; ++c) {
        double M = kNegInf;
        for (int64_t s = 0; s < S; ++s) M = std::max(M, static_cast<double>(score[(n * S + s) * d + c]));
        double num = 0, den = 0;
        if (M != kNegInf) {
          for (int64_t s = 0; s < S; ++s) {
            const float sc = score[(n * S + s) * d + c];
            if (sc == -std::numeric_limits<float>::infinity()) continue;
            const double p = std::exp(sc - M);
            den += p;
            num += p * kv[(n * S + s) * d + c];
          }
        }
        out[n * d + c] = den > 0 ? static_cast<float>(num / den) : 0.0f;
      }
    }
  });
}

void CpuBackend::compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape, int64_t p0,
                                int64_t rate, bool overlap, const CompressorStateView& state,
                                const TensorView& pooled) {
  const char* op = "compress_chunk";
  const float* pkv = f32_arg(kv, op, "kv");
  const float* pg = f32_arg(gate, op, "gate");
  const float* pa = f32_arg(ape, op, "ape");
  expect_rank(kv, 2, op, "kv");
  const int64_t T = kv.dim(0), width = kv.dim(1), m = rate, c = overlap ? 2 : 1;
  if (m < 1) throw Error(str_cat("cpu compress_chunk: rate ", m, " must be >= 1"));
  if (p0 < 0) throw Error(str_cat("cpu compress_chunk: p0 ", p0, " is negative"));
  if (width % c != 0)
    throw Error(str_cat("cpu compress_chunk: kv has shape ", shape_str(kv.shape), ", width not divisible by ", c));
  const int64_t hd = width / c;
  expect_shape(gate, {T, width}, op, "gate");
  expect_shape(ape, {m, width}, op, "ape");
  float* st_kv = f32_arg(state.pending_kv, op, "state.pending_kv");
  float* st_gate = f32_arg(state.pending_gate, op, "state.pending_gate");
  expect_shape(state.pending_kv, {m, width}, op, "state.pending_kv");
  expect_shape(state.pending_gate, {m, width}, op, "state.pending_gate");
  float* ov_kv = nullptr;
  float* ov_gate = nullptr;
  if (overlap) {
    ov_kv = f32_arg(state.overlap_kv, op, "state.overlap_kv");
    ov_gate = f32_arg(state.overlap_gate, op, "state.overlap_gate");
    expect_shape(state.overlap_kv, {m, hd}, op, "state.overlap_kv");
    expect_shape(state.overlap_gate, {m, hd}, op, "state.overlap_gate");
  }
  const int64_t n_new = (p0 + T) / m - p0 / m;
  float* po = nullptr;
  if (n_new > 0) {
    po = f32_arg(pooled, op, "pooled");
    expect_numel(pooled, n_new * hd, op, "pooled");
    if (pooled.dim(-1) != hd) expect_shape(pooled, {n_new, hd}, op, "pooled");
  }

  // Slots of the windows this chunk completes: [n_new, slots, hd].
  const int64_t slots = overlap ? 2 * m : m;
  std::vector<float> slot_kv(static_cast<size_t>(n_new * slots * hd)), slot_gate(slot_kv.size());
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t p = p0 + t, r = p % m;
    float* sk = st_kv + r * width;
    float* sg = st_gate + r * width;
    std::copy(pkv + t * width, pkv + (t + 1) * width, sk);
    for (int64_t d = 0; d < width; ++d) sg[d] = pg[t * width + d] + pa[r * width + d];  // float32, like torch
    if ((p + 1) % m != 0) continue;
    // Window j = p / m is complete: its m rows are state rows 0..m-1.
    float* dk = slot_kv.data() + n * slots * hd;
    float* dg = slot_gate.data() + n * slots * hd;
    if (!overlap) {
      std::copy(st_kv, st_kv + m * hd, dk);
      std::copy(st_gate, st_gate + m * hd, dg);
    } else {
      // Slots [0, m): the previous window's first halves (absent for the first window).
      if (p / m > 0) {
        std::copy(ov_kv, ov_kv + m * hd, dk);
        std::copy(ov_gate, ov_gate + m * hd, dg);
      } else {
        std::fill(dk, dk + m * hd, 0.0f);
        std::fill(dg, dg + m * hd, -std::numeric_limits<float>::infinity());
      }
      // Slots [m, 2m): this window's second halves; its first halves become the next overlap.
      for (int64_t i = 0; i < m; ++i) {
        const float* kr = st_kv + i * width;
        const float* gr = st_gate + i * width;
        std::copy(kr + hd, kr + 2 * hd, dk + (m + i) * hd);
        std::copy(gr + hd, gr + 2 * hd, dg + (m + i) * hd);
        std::copy(kr, kr + hd, ov_kv + i * hd);
        std::copy(gr, gr + hd, ov_gate + i * hd);
      }
    }
    ++n;
  }
  if (n_new > 0) compress_pool(slot_kv.data(), slot_gate.data(), n_new, slots, hd, po);
}

}  // namespace clawmine::backend::cpu
