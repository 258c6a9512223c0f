// The KV compressor of a chunk (spec §3.3 C; transformers-parity #17-#21): gate logits get the
// position bias ape[p mod m], every row is written to the carried state at row p mod m, and
// each window that completes inside the chunk is gathered into its slots (HCA: its m rows; CSA:
// the previous window's first halves, then this window's second halves) and pooled by a
// per-channel softmax over the slots, in double; a window still incomplete at the chunk's end
// pools the slots it has so far. Windows complete in position order, so any chunking of a
// sequence gives the same complete entries and the same state.
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

void CpuBackend::compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                                const TensorView& positions, int64_t rate, bool overlap,
                                const CompressorStateView& state, const TensorView& pooled,
                                const TensorView& entry_positions) {
  const char* op = "compress_chunk";
  const float* pkv = f32_arg(kv, op, "kv");
  const float* pg = f32_arg(gate, op, "gate");
  const float* pa = f32_arg(ape, op, "ape");
  expect_rank(kv, 2, op, "kv");
  const int64_t T = kv.dim(0), width = kv.dim(1), m = rate, c = overlap ? 2 : 1;
  if (m < 1) throw Error(str_cat("cpu compress_chunk: rate ", m, " must be >= 1"));
  if (T < 1) throw Error("cpu compress_chunk: the chunk is empty");
  const int32_t* pos = i32_arg(positions, op, "positions");
  expect_shape(positions, {T}, op, "positions");
  const int64_t p0 = pos[0];
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
  // One row per window the chunk touches; the last may be incomplete.
  const int64_t last = p0 + T - 1, j0 = p0 / m, n_out = last / m - j0 + 1;
  float* po = f32_arg(pooled, op, "pooled");
  expect_numel(pooled, n_out * hd, op, "pooled");
  if (pooled.dim(-1) != hd) expect_shape(pooled, {n_out, hd}, op, "pooled");
  int32_t* pe = i32_arg(entry_positions, op, "entry_positions");
  expect_shape(entry_positions, {n_out}, op, "entry_positions");

  // Slots of the touched windows: [n_out, slots, hd]; absent slots have gate -inf (weight 0).
  const int64_t slots = overlap ? 2 * m : m;
  constexpr float kAbsent = -std::numeric_limits<float>::infinity();
  std::vector<float> slot_kv(static_cast<size_t>(n_out * slots * hd), 0.0f), slot_gate(slot_kv.size(), kAbsent);
  // Gathers the window of position p (its rows 0 .. p % m are state rows by now) into entry n.
  auto gather = [&](int64_t n, int64_t p) {
    const int64_t rows = p % m + 1;
    float* dk = slot_kv.data() + n * slots * hd;
    float* dg = slot_gate.data() + n * slots * hd;
    if (!overlap) {
      std::copy(st_kv, st_kv + rows * hd, dk);
      std::copy(st_gate, st_gate + rows * hd, dg);
      return;
    }
    // Slots [0, m): the previous window's first halves (absent for the first window).
    if (p / m > 0) {
      std::copy(ov_kv, ov_kv + m * hd, dk);
      std::copy(ov_gate, ov_gate + m * hd, dg);
    }
    // Slots [m, m + rows): this window's second halves so far.
    for (int64_t i = 0; i < rows; ++i) {
      std::copy(st_kv + i * width + hd, st_kv + (i + 1) * width, dk + (m + i) * hd);
      std::copy(st_gate + i * width + hd, st_gate + (i + 1) * width, dg + (m + i) * hd);
    }
  };
  for (int64_t t = 0; t < T; ++t) {
    const int64_t p = p0 + t, r = p % m;
    if (pos[t] != p) throw Error(str_cat("cpu compress_chunk: positions are not consecutive at ", t));
    float* sk = st_kv + r * width;
    float* sg = st_gate + r * width;
    std::copy(pkv + t * width, pkv + (t + 1) * width, sk);
    for (int64_t d = 0; d < width; ++d) sg[d] = pg[t * width + d] + pa[r * width + d];  // float32, like torch
    const bool complete = (p + 1) % m == 0;
    if (!complete && p != last) continue;
    gather(p / m - j0, p);
    // Window complete: its first halves become the next window's overlap slots.
    if (complete && overlap)
      for (int64_t i = 0; i < m; ++i) {
        std::copy(st_kv + i * width, st_kv + i * width + hd, ov_kv + i * hd);
        std::copy(st_gate + i * width, st_gate + i * width + hd, ov_gate + i * hd);
      }
  }
  for (int64_t n = 0; n < n_out; ++n) pe[n] = static_cast<int32_t>((j0 + n) * m);
  compress_pool(slot_kv.data(), slot_gate.data(), n_out, slots, hd, po);
}

}  // namespace clawmine::backend::cpu
