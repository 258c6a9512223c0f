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

// The barrier of a block's row groups: __syncthreads() (bar_threads 0), or named barrier 1 over
// the block's first bar_threads threads (a multiple of 32), which alone reach it: the block's
// other warps go on meanwhile (the decode hc site's comb warp).
__device__ __forceinline__ void rows_barrier(int bar_threads) {
  if (bar_threads == 0) {
    __syncthreads();
  } else {
    asm volatile("bar.sync 1, %0;" ::"r"(bar_threads) : "memory");
  }
}

// Sum of v over the tpr consecutive threads of this thread's row group (tpr a power of two in
// [32, 256], the same for the whole block): warp shuffles, then for tpr > 32 the row's warps in
// order through `red` (one float per warp of the block) after one barrier that every thread of
// the block (or of its first bar_threads: rows_barrier) reaches.
__device__ __forceinline__ float row_group_sum(float v, int tpr, float* red, int bar_threads = 0) {
  v = rowwise::warp_sum(v);
  if (tpr <= 32) return v;
  const int warp = threadIdx.x >> 5, per = tpr >> 5, first = warp / per * per;
  if ((threadIdx.x & 31) == 0) red[warp] = v;
  rows_barrier(bar_threads);
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
// The weight packs are loaded before the reduction so their latency overlaps it. bar_threads:
// row_group_sum's.
template <int kP>
__device__ __forceinline__ void rms_norm_packs(RowPacks<kP>& x, const void* weight, rowwise::FloatCode wcode,
                                               bool wpacked, int64_t n, float eps, int r, int tpr, bool valid,
                                               float* red, int bar_threads = 0) {
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
  ss = row_group_sum(ss, tpr, red, bar_threads);
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

// ---- rope ----

// (a, b) -> (a c - b s, a s + b c) in double, each rounded once to float.
__device__ __forceinline__ void rotate_pair(float& a, float& b, float c, float s) {
  // Both products are exact in double; each result is rounded to double once, then to float.
  const double da = a, db = b, dc = c, ds = s;
  const double ra = __dsub_rn(__dmul_rn(da, dc), __dmul_rn(db, ds));
  const double rb = __dadd_rn(__dmul_rn(da, ds), __dmul_rn(db, dc));
  a = __double2float_rn(ra);
  b = __double2float_rn(rb);
}

// cos and sin of the angle inv_freq * float(position) (a float32 product, like torch), taken in
// double and rounded to float.
__device__ __forceinline__ void rope_cos_sin(float inv_freq, int32_t position, float& c, float& s) {
  const float angle = __fmul_rn(inv_freq, static_cast<float>(position));
  double sd, cd;
  sincos(static_cast<double>(angle), &sd, &cd);
  c = __double2float_rn(cd);
  s = __double2float_rn(sd);
}

// ---- qdq ----

// quant::round_minifloat for finite x: |x| clamped to max_value on a grid of mantissa_bits
// explicit bits with minimum normal exponent min_exp, ties to even. floor(log2(a)) is read from
// the exponent bits (the CPU's float log2 can round up just below a power of two, which gives
// the same grid point there).
__device__ __forceinline__ float round_minifloat(float x, int mantissa_bits, int min_exp, float max_value) {
  const float a = fminf(fabsf(x), max_value);
  int e = min_exp;
  if (a >= ldexpf(1.0f, min_exp)) e = static_cast<int>((__float_as_uint(a) >> 23) & 0xffu) - 127;
  const float step = ldexpf(1.0f, e - mantissa_bits);
  const float q = fminf(__fmul_rn(rintf(__fdiv_rn(a, step)), step), max_value);
  return copysignf(q, x);
}

// quant::pow2_ceil_scale: 2^ceil(log2f(amax / max_value)). log2f of a power of two is exact; of
// any other normal r it is the double log2 rounded to float, as glibc's log2f computes it (which
// decides whether r just above 2^k gives k or k + 1).
__device__ __forceinline__ float pow2_ceil_scale(float amax, float max_value) {
  const float r = __fdiv_rn(amax, max_value);
  const uint32_t bits = __float_as_uint(r);
  int e;
  if ((bits & 0x7fffffu) == 0 && r >= FLT_MIN) {
    e = static_cast<int>(bits >> 23) - 127;
  } else {
    e = static_cast<int>(ceilf(__double2float_rn(log2(static_cast<double>(r)))));
  }
  return ldexpf(1.0f, e);
}

__device__ __forceinline__ float qdq_e4m3(float v, float s) {
  return __fmul_rn(round_minifloat(__fdiv_rn(v, s), 3, -6, 448.0f), s);
}
__device__ __forceinline__ float qdq_e2m1(float v, float s) {
  return __fmul_rn(round_minifloat(__fdiv_rn(v, s), 1, 0, 6.0f), s);
}

// FP8 of one block of 64 held by an aligned group of 8 lanes, 8 elements each: the elements with
// in[q] (inside the row's nope dims) and finite take x = e4m3(x / s) * s with
// s = 2^ceil(log2(max(amax, 1e-4) / 448)); the others are left as they are. Every lane of the
// warp calls it (3 shuffles); a lane outside any block passes no `in` element.
__device__ __forceinline__ void fp8_block_of_8_lanes(float (&v)[8], const bool (&in)[8]) {
  bool fin[8];
  float m = 0.0f;
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    fin[q] = in[q] && isfinite(v[q]);
    if (fin[q]) m = fmaxf(m, fabsf(v[q]));
  }
#pragma unroll
  for (int o = 1; o < 8; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const float s = pow2_ceil_scale(fmaxf(1e-4f, m), 448.0f);
#pragma unroll
  for (int q = 0; q < 8; ++q)
    if (fin[q]) v[q] = qdq_e4m3(v[q], s);
}

// Hadamard FP4 of a row of 32 * E elements held by one warp, E consecutive elements per lane:
// the Walsh-Hadamard butterflies in the CPU's stage order (stage s pairs (j, j + s) with j's bit
// s clear: (a, b) -> (a + b, a - b); strides < E inside the lane, the others through shuffles),
// * 1/sqrt(32 E), then FP4 on blocks of 32 (aligned groups of 32 / E lanes) with
// s = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)); non-finite elements stay.
template <int E>
__device__ __forceinline__ void hadamard_fp4_lanes(float (&h)[E]) {
  constexpr int kWidth = 32 * E;
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int s = 1; s < E; s *= 2) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if ((e & s) == 0) {
        const float a = h[e], b = h[e + s];
        h[e] = __fadd_rn(a, b);
        h[e + s] = __fsub_rn(a, b);
      }
    }
  }
#pragma unroll
  for (int s = E; s < kWidth; s *= 2) {
    const int o = s / E;
    const bool upper = (lane & o) != 0;  // this lane holds the b of each pair, its partner the a
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float other = __shfl_xor_sync(0xffffffffu, h[e], o);
      h[e] = upper ? __fsub_rn(other, h[e]) : __fadd_rn(h[e], other);
    }
  }
  const float scale = __fdiv_rn(1.0f, __fsqrt_rn(static_cast<float>(kWidth)));
  float m = 0.0f;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    h[e] = __fmul_rn(h[e], scale);
    if (isfinite(h[e])) m = fmaxf(m, fabsf(h[e]));
  }
#pragma unroll
  for (int o = 1; o < 32 / E; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const float s = pow2_ceil_scale(fmaxf(6.0f * FLT_MIN, m), 6.0f);  // amax floor 6 * 2^-126
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (isfinite(h[e])) h[e] = qdq_e2m1(h[e], s);
}

}  // namespace clawmine::backend::cuda::rowprep
