// Per-row device code of rms_norm, rope and qdq, shared by their standalone kernels (norm_rope.cu,
// qdq.cu) and the fused norm_rope_qdq kernel (norm_rope_qdq.cu), so the fused op cannot drift
// from the composition of the three: same thread layout of a row, same reduction order, same
// rounding of every float operation.
//
// rms_norm row layout: tpr threads per row (rms_threads_per_row: 32, 64, 128 or 256, about two
// packs of 8 elements per thread); thread r of a row holds packs r, r + tpr, ... (kP of them) in
// registers. Its sum of squares is a fmaf chain over its packs in order, then row_group_sum (warp
// shuffles, then the row's warps in order through shared memory).
// rope: the angle is the float32 product inv_freq[i] * float(position) (transformers-parity #14);
// cos/sin are taken in double and rounded to float, the rotation is done in double and rounded
// once (the CPU backend's arithmetic).
// qdq (quant/qdq.h): FP8 on blocks of 64 held by 8 consecutive lanes (8 elements each); the
// Hadamard FP4 row of 32 * E elements held by one warp, E consecutive elements per lane.
#pragma once

#include <cfloat>
#include <cstdint>

#include "backend/cuda/common.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda::rowprep {

constexpr int kMaxTpr = 256;  // threads per row at most (one block)

// Threads per row for rows of n elements: the smallest of 32, 64, 128, 256 giving each thread at
// most two packs of 8 (256 for longer rows).
inline int rms_threads_per_row(int64_t n) {
  const int64_t packs = (n + 7) / 8;
  int tpr = 32;
  while (tpr < kMaxTpr && packs > 2 * tpr) tpr *= 2;
  return tpr;
}
// Packs of 8 per thread when the row is held in registers (packed rows): 1, 2 or 4, or 0 when
// the row is longer than 4 packs per thread (rms_norm then loops over the row twice).
inline int rms_regs_packs(int64_t n, int tpr) {
  const int64_t per = (n / 8 + tpr - 1) / tpr;
  return per <= 1 ? 1 : per <= 2 ? 2 : per <= 4 ? 4 : 0;
}

// Sum of v over the tpr consecutive threads of this thread's row group (tpr a power of two in
// [32, 256], the same for the whole block): warp shuffles, then for tpr > 32 the row's warps in
// order through `red` (one float per warp of the block) after one barrier that every thread of
// the block reaches.
__device__ __forceinline__ float row_group_sum(float v, int tpr, float* red) {
  v = rowwise::warp_sum(v);
  if (tpr <= 32) return v;
  const int warp = threadIdx.x >> 5, per = tpr >> 5, first = warp / per * per;
  if ((threadIdx.x & 31) == 0) red[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < per; ++w) total += red[first + w];
  return total;
}

// This thread's packs of one row (rank r of tpr): v[k] = pack r + k * tpr when below `packs`.
template <int kP>
struct RowPacks {
  float v[kP][8];

  __device__ __forceinline__ static bool has(int k, int r, int tpr, int64_t packs) {
    return r + static_cast<int64_t>(k) * tpr < packs;
  }
  template <typename T>
  __device__ __forceinline__ void load(const T* row, int r, int tpr, int64_t packs, bool valid) {
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      if (valid && has(k, r, tpr, packs)) rowwise::load_packed<8>(row + (r + static_cast<int64_t>(k) * tpr) * 8, v[k]);
    }
  }
  template <typename T>
  __device__ __forceinline__ void store(T* row, int r, int tpr, int64_t packs, bool valid) const {
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      if (valid && has(k, r, tpr, packs)) rowwise::store_packed<8>(row + (r + static_cast<int64_t>(k) * tpr) * 8, v[k]);
    }
  }
  // v = float(T(v)): the row as its dtype stores it (a step of a composition rounds x to its dtype).
  template <typename T>
  __device__ __forceinline__ void round_to() {
#pragma unroll
    for (int k = 0; k < kP; ++k) {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[k][i] = to_f32(from_f32<T>(v[k][i]));
    }
  }
};

// rms_norm of a row held as RowPacks (packed rows, n = 8 * packs): sum of squares (fmaf chain over
// the packs in order), row_group_sum, then v * (1 / sqrt(mean + eps)) [* weight]. Every thread of
// the block must call it (the group sum may hold a barrier); `valid` false: a row past the end.
// The weight packs are loaded before the reduction so their latency overlaps it.
template <int kP>
__device__ __forceinline__ void rms_norm_packs(RowPacks<kP>& x, const void* weight, rowwise::FloatCode wcode,
                                               bool wpacked, int64_t n, float eps, int r, int tpr, bool valid,
                                               float* red) {
  const int64_t packs = n / 8;
  float w[kP][8];
  if (weight != nullptr) {
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int64_t c = r + static_cast<int64_t>(k) * tpr;
      if (valid && c < packs) {
        if (wpacked) {
          rowwise::load_float_packed<8>(weight, wcode, c * 8, w[k]);
        } else {
#pragma unroll
          for (int i = 0; i < 8; ++i) w[k][i] = rowwise::load_float(weight, wcode, c * 8 + i);
        }
      }
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kP; ++k) {
    if (valid && RowPacks<kP>::has(k, r, tpr, packs)) {
#pragma unroll
      for (int i = 0; i < 8; ++i) ss = fmaf(x.v[k][i], x.v[k][i], ss);
    }
  }
  ss = row_group_sum(ss, tpr, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
#pragma unroll
  for (int k = 0; k < kP; ++k) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      x.v[k][i] *= inv;
      if (weight != nullptr) x.v[k][i] *= w[k][i];
    }
  }
}

}  // namespace clawmine::backend::cuda::rowprep
