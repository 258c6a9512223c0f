// Device code and host helpers of the hyper-connection ops, shared by hyper_connection.cu (hc_pre,
// hc_post, hc_head) and hc_post_pre.cu (the fused site), so the fused op runs the same
// arithmetic as the composition (see hyper_connection.cu's header comment for the kernels).
// Everything is in an anonymous namespace: each translation unit gets its own copy.
#pragma once

#include <algorithm>
#include <type_traits>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/rowprep.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMinSplit = 1024;  // prefill path: elements of the flattened row per block, at least
constexpr int kFusedMaxT = 64;       // tokens that take the fused kernels (hc_fused: one counter each)

template <typename F>
void hc_dispatch(int64_t hc, const char* op, F&& f) {
  switch (hc) {
    case 4:
      f(std::integral_constant<int, 4>{});
      return;
    default:
      throw Error(str_cat("cuda ", op, ": hc_mult ", hc, " is not instantiated (hyper_connection.cu has 4)"));
  }
}

// partial[(t * S + s) * (kMix + 1) + m]: over elements [s * chunk, min(n, (s+1) * chunk)) of
// token t's flattened streams xf = X[t] (n = hc*D): m < kMix: xf . fn[m]; m = kMix: xf . xf.
// packed: n and chunk are multiples of 4 and X, fn are 16-byte (F32) / 8-byte aligned.
template <int kMix, typename Tf>
__global__ void __launch_bounds__(kThreads)
    hc_mix_partial_kernel(const float* __restrict__ X, const Tf* __restrict__ fn, int64_t n, int64_t chunk,
                          float* __restrict__ partial, bool packed) {
  pdl_wait();
  pdl_trigger();
  __shared__ float red[kWarps][kMix + 1];
  const int64_t t = blockIdx.x;
  const int s = blockIdx.y, S = gridDim.y;
  const int64_t begin = s * chunk, end = min(n, begin + chunk);
  const float* xt = X + t * n;
  float acc[kMix + 1];
#pragma unroll
  for (int m = 0; m <= kMix; ++m) acc[m] = 0.0f;
  if (packed) {
    for (int64_t i = begin + 4 * static_cast<int64_t>(threadIdx.x); i < end; i += 4 * kThreads) {
      float xv[4];
      rowwise::load_packed<4>(xt + i, xv);
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[kMix] = fmaf(xv[q], xv[q], acc[kMix]);
#pragma unroll
      for (int m = 0; m < kMix; ++m) {
        float fv[4];
        rowwise::load_packed<4>(fn + m * n + i, fv);
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[m] = fmaf(xv[q], fv[q], acc[m]);
      }
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const float xv = xt[i];
      acc[kMix] = fmaf(xv, xv, acc[kMix]);
#pragma unroll
      for (int m = 0; m < kMix; ++m) acc[m] = fmaf(xv, to_f32(fn[m * n + i]), acc[m]);
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m <= kMix; ++m) {
    const float v = rowwise::warp_sum(acc[m]);
    if (lane == 0) red[warp][m] = v;
  }
  __syncthreads();
  if (threadIdx.x <= kMix) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; ++w) v += red[w][threadIdx.x];
    partial[(t * S + s) * (kMix + 1) + threadIdx.x] = v;
  }
}

// Prefill mix over token tiles (hc_mix_tile): block (tile, split) takes kTileTokens tokens and
// the elements [s * chunk, +chunk) of their flattened rows. Warp w holds 32 tokens; lane
// (slot = lane / 4, k group g = lane % 4) holds the 4 tokens slot + 8 i of the warp and, per
// step of 16 elements, elements 4 g .. 4 g + 3: one 16-byte load of X per token (X is read once,
// straight into registers, the next step's loads in flight during this step's FMAs and an L2
// prefetch kPrefetchSteps steps ahead), and every row of fn from shared memory (chunks of
// kTileKC elements staged by cp.async, double-buffered; the 8 lanes of a k group read the same
// 16 bytes, one broadcast wavefront), 4 * kMix * 4 + 16 FMAs per step: fn is reused by 32 tokens
// per load and the kernel is bound by X's bandwidth, not by L2 traffic of fn (the per-token
// kernel read all of fn, 1.5 MB, once per token). Each lane's sums run over its k group in
// order, then lanes g = 0..3 are added (xor 1, then 2: every lane gets the same bits) and the
// block writes partial[t, s, 0..kMix] like hc_mix_partial; hc_finish sums the splits.
constexpr int kTileWarps = 8;
constexpr int kTileTokens = 32 * kTileWarps;  // tokens per block
constexpr int kTileKC = 256;                  // elements per fn chunk in shared memory
constexpr int kStepK = 16;                    // elements per warp step (4 k groups x 4)
constexpr int kPrefetchSteps = 8;             // L2 prefetch distance of X (2 cache lines ahead)
constexpr int64_t kTileMinT = 128;            // fewer tokens fill too little of a tile

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const auto dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// n % kTileKC == 0, chunk % kTileKC == 0, T * n < 2^31, X and fn 16-byte aligned.
template <int kMix, typename Tf>
__global__ void __launch_bounds__(32 * kTileWarps, 1)
    hc_mix_tile_kernel(const float* __restrict__ X, const Tf* __restrict__ fn, int T, int n, int chunk,
                       float* __restrict__ partial) {
  pdl_wait();
  pdl_trigger();
  constexpr int kRows = kMix + 1, kVec = 16 / static_cast<int>(sizeof(Tf));
  constexpr int kCopies = kMix * kTileKC / kVec;  // 16-byte copies per chunk
  __shared__ __align__(16) Tf fs[2][kMix][kTileKC];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slot = lane >> 2, g = lane & 3;
  const int s = blockIdx.y, S = gridDim.y;
  const int k_begin = s * chunk, k_end = min(n, k_begin + chunk);
  const int t0 = blockIdx.x * kTileTokens + warp * 32 + slot;  // tokens t0 + 8 i
  int off[4];  // element offsets of this lane's tokens (past T: the last token, never stored)
#pragma unroll
  for (int i = 0; i < 4; ++i) off[i] = min(t0 + 8 * i, T - 1) * n + 4 * g;

  auto stage = [&](int c) {  // chunk c of fn into fs[c & 1]
    const int k0 = k_begin + c * kTileKC;
    for (int q = threadIdx.x; q < kCopies; q += 32 * kTileWarps) {
      const int m = q / (kTileKC / kVec), e = q % (kTileKC / kVec) * kVec;
      cp_async16(&fs[c & 1][m][e], fn + static_cast<int64_t>(m) * n + k0 + e);
    }
    cp_async_commit();
  };
  const int chunks = (k_end - k_begin) / kTileKC;
  stage(0);
  float acc[4][kMix], sq[4], xc[4][4], xn[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    sq[i] = 0.0f;
#pragma unroll
    for (int m = 0; m < kMix; ++m) acc[i][m] = 0.0f;
    rowwise::load_packed<4>(X + off[i] + k_begin, xc[i]);
#pragma unroll
    for (int q = 0; q < 4; ++q) xn[i][q] = 0.0f;
  }
  for (int c = 0; c < chunks; ++c) {
    cp_async_wait_all();
    __syncthreads();  // chunk c is in fs[c & 1]; every warp is done with chunk c - 1 (the other buffer)
    if (c + 1 < chunks) stage(c + 1);
    const Tf(*f)[kTileKC] = fs[c & 1];
#pragma unroll 1
    for (int st = 0; st < kTileKC / kStepK; ++st) {
      const int k = k_begin + c * kTileKC + st * kStepK;
      if (k + kStepK < k_end) {
#pragma unroll
        for (int i = 0; i < 4; ++i) rowwise::load_packed<4>(X + off[i] + k + kStepK, xn[i]);
      }
      if (k + kPrefetchSteps * kStepK < k_end) {
#pragma unroll
        for (int i = 0; i < 4; ++i) prefetch_l2(X + off[i] + k + kPrefetchSteps * kStepK);
      }
      const int e = st * kStepK + 4 * g;
#pragma unroll
      for (int m = 0; m < kMix; ++m) {
        float fv[4];
        rowwise::load_packed<4>(&f[m][e], fv);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[i][m] = fmaf(xc[i][q], fv[q], acc[i][m]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          sq[i] = fmaf(xc[i][q], xc[i][q], sq[i]);
          xc[i][q] = xn[i][q];
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
#pragma unroll
      for (int m = 0; m < kMix; ++m) acc[i][m] += __shfl_xor_sync(0xffffffffu, acc[i][m], o);
      sq[i] += __shfl_xor_sync(0xffffffffu, sq[i], o);
    }
    const int t = t0 + 8 * i;
    if (t < T) {  // lane g stores the rows m = g mod 4
      float* pt = partial + (static_cast<int64_t>(t) * S + s) * kRows;
#pragma unroll
      for (int m = 0; m < kMix; ++m)
        if (m % 4 == g) pt[m] = acc[i][m];
      if (kMix % 4 == g) pt[kMix] = sq[i];
    }
  }
}

// Whether the token-tile mix takes T tokens of flattened rows of n elements (X and fn its data):
// whole fn chunks, 16-byte aligned rows, 32-bit element offsets.
inline bool tile_mix_fits(int64_t T, int64_t n, const void* X, const void* fn) {
  return T >= kTileMinT && n % kTileKC == 0 && T * n <= INT32_MAX && reinterpret_cast<uintptr_t>(X) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(fn) % 16 == 0;
}
// The tile mix's elements per split: splits so that the blocks about fill the device once (one
// block per SM). The partial sums' order, and so the bits, follow from it.
inline int64_t tile_mix_chunk(const CudaBackend& be, int64_t T, int64_t n) {
  const int64_t tiles = (T + kTileTokens - 1) / kTileTokens;
  const int64_t want = std::clamp<int64_t>(std::max(1, be.sm_count()) / tiles, 1, n / kTileKC);
  return (n / want + kTileKC - 1) / kTileKC * kTileKC;
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// 1 / x to within 1 ulp (one MUFU op, no slow path): the Sinkhorn divisions. x is a sum of
// positive terms plus hc_eps, never zero, subnormal or infinite for finite logits.
__device__ __forceinline__ float fast_rcp(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

struct HcScalars {
  const void* base;
  rowwise::FloatCode base_code;
  const void* scale;
  rowwise::FloatCode scale_code;
  float rms_eps, hc_eps;
  int sinkhorn_iters;
};
// The scalars of one hc site from its weights and parameters (op names the errors).
inline HcScalars hc_scalars(const HyperConnectionWeights& w, const HcParams& p, const char* op) {
  return {w.base.data,
          rowwise::float_code(w.base.dtype, op, "base"),
          w.scale.data,
          rowwise::float_code(w.scale.dtype, op, "scale"),
          p.rms_eps,
          p.hc_eps,
          static_cast<int>(p.sinkhorn_iters)};
}

template <int HC, bool kHead>
constexpr int mix_count() {
  return kHead ? HC : (2 + HC) * HC;
}

// The gate weights of mix row `lane` (lanes < kMix; others get zeros): base[lane] and its scale
// (scale[0] for the pre rows, [1] for post, [2] for comb).
template <int HC, bool kHead>
__device__ __forceinline__ float2 load_gate_weight(const HcScalars& p, int lane) {
  if (lane >= mix_count<HC, kHead>()) return make_float2(0.0f, 0.0f);
  const int which = lane < HC ? 0 : lane < 2 * HC ? 1 : 2;
  return make_float2(rowwise::load_float(p.base, p.base_code, lane), rowwise::load_float(p.scale, p.scale_code, which));
}

// Sum of v[0..N) in pairwise order ((v0 + v1) + (v2 + v3)) ...; N a power of two.
template <int N>
__device__ __forceinline__ float pairwise_sum(const float (&v)[N]) {
  float s[N];
#pragma unroll
  for (int i = 0; i < N; ++i) s[i] = v[i];
#pragma unroll
  for (int w = 1; w < N; w *= 2) {
#pragma unroll
    for (int i = 0; i < N; i += 2 * w) s[i] = __fadd_rn(s[i], s[i + w]);
  }
  return s[0];
}

// One thread, the hc x hc matrix in registers: c holds the comb logits on entry and the
// Sinkhorn-normalized comb on return (contract in ops/backend.h). Each normalization is a
// pairwise sum, + eps, one approximate reciprocal and HC multiplications: the four rows (columns)
// are independent, so a half-iteration's latency is about 2 adds + rcp + 1 mul (~35 cycles).
template <int HC>
__device__ __forceinline__ void sinkhorn_in_registers(float (&c)[HC][HC], float eps, int iters) {
#pragma unroll
  for (int j = 0; j < HC; ++j) {
    float mx = c[j][0];
#pragma unroll
    for (int k = 1; k < HC; ++k) mx = fmaxf(mx, c[j][k]);
#pragma unroll
    for (int k = 0; k < HC; ++k) c[j][k] = expf(c[j][k] - mx);
    const float inv = fast_rcp(pairwise_sum(c[j]));
#pragma unroll
    for (int k = 0; k < HC; ++k) c[j][k] = __fadd_rn(__fmul_rn(c[j][k], inv), eps);
  }
  auto normalize_rows = [&] {
    float inv[HC];
#pragma unroll
    for (int j = 0; j < HC; ++j) inv[j] = fast_rcp(__fadd_rn(pairwise_sum(c[j]), eps));
#pragma unroll
    for (int j = 0; j < HC; ++j) {
#pragma unroll
      for (int k = 0; k < HC; ++k) c[j][k] = __fmul_rn(c[j][k], inv[j]);
    }
  };
  auto normalize_columns = [&] {
    float inv[HC];
#pragma unroll
    for (int k = 0; k < HC; ++k) {
      float col[HC];
#pragma unroll
      for (int j = 0; j < HC; ++j) col[j] = c[j][k];
      inv[k] = fast_rcp(__fadd_rn(pairwise_sum(col), eps));
    }
#pragma unroll
    for (int j = 0; j < HC; ++j) {
#pragma unroll
      for (int k = 0; k < HC; ++k) c[j][k] = __fmul_rn(c[j][k], inv[k]);
    }
  };
  normalize_columns();
  for (int it = 1; it < iters; ++it) {
    normalize_rows();
    normalize_columns();
  }
}

// One warp, after the mix totals: lane l < kMix + 1 holds tot (mix total l; l = kMix: the sum of
// squares of the token's hc*D elements) and gw (base, scale) of row l. Every lane returns the pre
// gates in w; with `rest` (one warp per token, hc_pre) lanes HC..2HC-1 also write post[t] and
// lane 0 computes comb[t] (the logits gathered from lanes 2HC.. by shuffles). The warp is
// converged on entry. Every warp that calls this with the same totals gets the same w bits.
template <int HC, bool kHead>
__device__ __forceinline__ void hc_gates(float tot, float2 gw, int64_t D, const HcScalars& p, int64_t t, bool rest,
                                         float (&w)[HC], float* __restrict__ post, float* __restrict__ comb) {
  constexpr int kMix = mix_count<HC, kHead>();
  const int lane = threadIdx.x & 31;
  const float sum_sq = __shfl_sync(0xffffffffu, tot, kMix);
  const float r = 1.0f / sqrtf(sum_sq / static_cast<float>(HC * D) + p.rms_eps);
  const float a = tot * r * gw.y + gw.x;  // pre/post gate argument or comb logit of row `lane`
  const float pre = sigmoidf(a) + p.hc_eps;
#pragma unroll
  for (int j = 0; j < HC; ++j) w[j] = __shfl_sync(0xffffffffu, pre, j);
  if constexpr (!kHead) {
    if (!rest) return;  // warp-uniform
    if (lane >= HC && lane < 2 * HC) post[t * HC + lane - HC] = 2.0f * sigmoidf(a);
    float c[HC][HC];
#pragma unroll
    for (int j = 0; j < HC; ++j) {
#pragma unroll
      for (int k = 0; k < HC; ++k) c[j][k] = __shfl_sync(0xffffffffu, a, 2 * HC + j * HC + k);
    }
    if (lane == 0) {
      sinkhorn_in_registers<HC>(c, p.hc_eps, p.sinkhorn_iters);
      float* out = comb + t * HC * HC;
#pragma unroll
      for (int j = 0; j < HC; ++j) {
#pragma unroll
        for (int k = 0; k < HC; ++k) out[j * HC + k] = c[j][k];
      }
    }
  }
}

// The collapse out[d] = sum_j w[j] X[j, d] of one token (xt = X[t], o = out[t]) by the threads
// [kFirst, kThreads) of the block, kPacks packs of 4 d per thread per round, each round's loads
// issued together (load() may run early: before the gates are known).
template <int HC, int kFirst, int kPacks>
struct HcCollapse {
  static constexpr int kCount = kThreads - kFirst;
  float xv[kPacks][HC][4];

  __device__ __forceinline__ void load(const float* __restrict__ xt, int64_t D, int64_t base) {
    const int c = static_cast<int>(threadIdx.x) - kFirst;
    if (c < 0) return;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t dp = base + c + static_cast<int64_t>(kCount) * i;
      if (4 * dp < D) {
#pragma unroll
        for (int j = 0; j < HC; ++j) rowwise::load_packed<4>(xt + j * D + 4 * dp, xv[i][j]);
      }
    }
  }
  // o[4 dp ..] = the collapse, stored as Ts; rounded to Tr first (Tr = Ts: no extra rounding), so
  // a float buffer can hold the values an x_in of dtype Tr would.
  template <typename Ts, typename Tr = Ts>
  __device__ __forceinline__ void store(const float (&w)[HC], int64_t D, int64_t base, Ts* __restrict__ o) const {
    const int c = static_cast<int>(threadIdx.x) - kFirst;
    if (c < 0) return;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t dp = base + c + static_cast<int64_t>(kCount) * i;
      if (4 * dp < D) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < HC; ++j) {
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[q] = fmaf(w[j], xv[i][j][q], acc[q]);
        }
        if constexpr (!std::is_same_v<Ts, Tr>) {
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[q] = to_f32(from_f32<Tr>(acc[q]));
        }
        rowwise::store_packed<4>(o + 4 * dp, acc);
      }
    }
  }
  // packed: D % 4 == 0 and xt, o 4-element aligned. `pre` holds the first round (base 0) already.
  template <typename To>
  __device__ __forceinline__ void run(const float* __restrict__ xt, const float (&w)[HC], int64_t D,
                                      To* __restrict__ o, bool packed) {
    if (packed) {
      const int64_t round = static_cast<int64_t>(kCount) * kPacks;
      for (int64_t base = 0; base < D / 4; base += round) {
        if (base > 0) load(xt, D, base);
        store(w, D, base, o);
      }
    } else {
      const int c = static_cast<int>(threadIdx.x) - kFirst;
      if (c < 0) return;
      for (int64_t d = c; d < D; d += kCount) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < HC; ++j) acc = fmaf(w[j], xt[j * D + d], acc);
        o[d] = from_f32<To>(acc);
      }
    }
  }
};

// Warp 0 runs the comb in hc_pre, so the collapse takes warps 1..7 there (5 packs each: D = 4096
// in one round) and all 8 warps in hc_head (4 packs each).
template <int HC, bool kHead>
using HcCollapseOf = HcCollapse<HC, kHead ? 0 : 32, kHead ? 4 : 5>;

// Prefill path, pass 2: one block per token sums its S partials (split order), then as hc_gates.
template <int HC, bool kHead, typename To>
__global__ void __launch_bounds__(kThreads)
    hc_finish_kernel(const float* __restrict__ X, const float* __restrict__ partial, int S, int64_t D, HcScalars p,
                     To* __restrict__ out, float* __restrict__ post, float* __restrict__ comb, bool packed) {
  pdl_wait();
  pdl_trigger();
  constexpr int kMix = mix_count<HC, kHead>(), kRows = kMix + 1;
  static_assert((HC & (HC - 1)) == 0 && kRows <= 32, "one lane per mix total, HC a power of two");
  __shared__ float tot[32];
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float* xt = X + t * HC * D;
  HcCollapseOf<HC, kHead> coll;
  if (packed) coll.load(xt, D, 0);
  const float2 gw = load_gate_weight<HC, kHead>(p, lane);
  if (threadIdx.x < 32) {
    float v = 0.0f;
    if (lane < kRows) {
      for (int s = 0; s < S; ++s) v += partial[(t * S + s) * kRows + lane];
    }
    tot[lane] = v;
  }
  __syncthreads();
  float w[HC];
  hc_gates<HC, kHead>(tot[lane], gw, D, p, t, warp == 0, w, post, comb);
  coll.run(xt, w, D, out + t * D, packed);
}

// Decode path (T <= kFusedMaxT): grid (T, S), block (t, s) takes elements [s * kFusedChunk, +kFusedChunk)
// of token t's flattened streams xf = X[t] (n = hc*D). Lane l holds packs l and l + 32 of the
// chunk (X and fn rows loaded together, all in flight at once); warp w the rows w, w + 8, ...
// (row kMix: xf . xf); a warp sum gives the block's partial of each row, which lane 0 stores.
// The last block of the token to count (per-token counter: store, __threadfence, barrier, one
// atomicAdd; it resets the counter to 0) then:
//   - issues its collapse loads of X[t] (D = 4096: one round of registers) at once,
//   - sums the S partials of each row (lane = row, warp w the splits w, w + 8, ..., 8 loads per
//     thread per round, then the 8 warps' sums in warp order through shared memory),
//   - in every warp: the totals, r, the pre gates (identical bits in every warp), then warp 0
//     writes post and runs the Sinkhorn (hc_pre) while the other warps collapse the streams.
// packed_mix: n % 4 == 0 and X, fn 4-element aligned; packed_out: as HcCollapse::run's packed.
// counters[t] is 0 on entry and is left 0.
constexpr int kFusedPacks = 64;                     // packs of 4 elements per mix block: 2 per lane
constexpr int64_t kFusedChunk = 4 * kFusedPacks;    // elements of the flattened row per mix block
constexpr int kPartialLoads = 8;                    // partials per thread per round of the final sum

template <typename T>
__device__ __forceinline__ void load4_or_zero(const T* __restrict__ p, int64_t i, int64_t n, bool packed,
                                              float (&v)[4]) {
  if (packed) {
    if (i < n) {
      rowwise::load_packed<4>(p + i, v);
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) v[q] = 0.0f;
    }
  } else {
#pragma unroll
    for (int q = 0; q < 4; ++q) v[q] = i + q < n ? to_f32(p[i + q]) : 0.0f;
  }
}

template <int HC, bool kHead, typename Tf, typename To>
__global__ void __launch_bounds__(kThreads)
    hc_fused_kernel(const float* __restrict__ X, const Tf* __restrict__ fn, int64_t D, float* __restrict__ partial,
                    unsigned* __restrict__ counters, HcScalars p, To* __restrict__ out, float* __restrict__ post,
                    float* __restrict__ comb, bool packed_mix, bool packed_out) {
  pdl_wait();
  pdl_trigger();
  constexpr int kMix = mix_count<HC, kHead>(), kRows = kMix + 1, kPerWarp = (kRows + kWarps - 1) / kWarps;
  static_assert((HC & (HC - 1)) == 0 && kRows <= 32, "one lane per mix total, HC a power of two");
  __shared__ float red[kWarps][32];
  __shared__ bool last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = HC * D, t = blockIdx.x;
  const int s = blockIdx.y, S = gridDim.y;
  const float* xt = X + t * n;

  if (warp < kRows) {  // warp-uniform: hc_head has 5 rows, so warps 5..7 have none
    float xv[2][4], fv[kPerWarp][2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = s * kFusedChunk + 4 * (lane + 32 * h);
      load4_or_zero(xt, i, n, packed_mix, xv[h]);
#pragma unroll
      for (int k = 0; k < kPerWarp; ++k) {
        const int m = warp + kWarps * k;
        if (m < kMix) load4_or_zero(fn + m * n, i, n, packed_mix, fv[k][h]);
      }
    }
#pragma unroll
    for (int k = 0; k < kPerWarp; ++k) {
      const int m = warp + kWarps * k;  // warp-uniform
      if (m > kMix) break;
      float acc = 0.0f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int q = 0; q < 4; ++q) acc = fmaf(xv[h][q], m < kMix ? fv[k][h][q] : xv[h][q], acc);
      }
      acc = rowwise::warp_sum(acc);
      if (lane == 0) partial[(t * S + s) * kRows + m] = acc;
    }
    if (lane == 0) __threadfence();  // this warp's partials are visible device-wide before the count
  }
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&counters[t], 1u) == static_cast<unsigned>(S - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();

  HcCollapseOf<HC, kHead> coll;
  if (packed_out) coll.load(xt, D, 0);  // in flight during the partial sums
  const float2 gw = load_gate_weight<HC, kHead>(p, lane);
  float v = 0.0f;
  if (lane < kRows) {
    for (int s0 = 0; s0 < S; s0 += kWarps * kPartialLoads) {
      float pv[kPartialLoads];
#pragma unroll
      for (int i = 0; i < kPartialLoads; ++i) {
        const int ss = s0 + warp + kWarps * i;
        pv[i] = ss < S ? __ldcg(partial + (t * S + ss) * kRows + lane) : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kPartialLoads; ++i) v += pv[i];
    }
  }
  red[warp][lane] = v;
  __syncthreads();
  if (threadIdx.x == 0) counters[t] = 0;  // every block of this token has counted: ready for the next launch
  float tot = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) tot += red[w][lane];
  float w[HC];
  hc_gates<HC, kHead>(tot, gw, D, p, t, warp == 0, w, post, comb);
  coll.run(xt, w, D, out + t * D, packed_out);
}

// o[q] = pk * y[q] + sum_j ck[j] * x[j][q] (pk = post[t, k], ck[j] = comb[t, j, k]): N elements of
// output stream k, the sum in order j = 0 .. HC-1 (the fused site computes X_out with it too).
template <int HC, int N>
__device__ __forceinline__ void hc_post_out(float pk, const float (&ck)[HC], const float (&yv)[N],
                                            const float (&xv)[HC][N], float (&o)[N]) {
#pragma unroll
  for (int q = 0; q < N; ++q) {
    float acc = pk * yv[q];
#pragma unroll
    for (int j = 0; j < HC; ++j) acc = fmaf(ck[j], xv[j][q], acc);
    o[q] = acc;
  }
}

// X_out[t, k, d] = post[t, k] * y[t, d] + sum_j comb[t, j, k] * X[t, j, d], N consecutive d per
// thread; block b covers token b / dblocks, packs [(b % dblocks) * blockDim.x, ...).
template <int HC, typename Ty, int N>
__global__ void __launch_bounds__(kThreads)
    hc_post_kernel(const Ty* __restrict__ y, const float* __restrict__ X, const float* __restrict__ post,
                   const float* __restrict__ comb, float* __restrict__ X_out, int64_t D, int64_t dblocks) {
  pdl_wait();
  pdl_trigger();
  const int64_t t = blockIdx.x / dblocks;
  const int64_t d = ((blockIdx.x % dblocks) * blockDim.x + threadIdx.x) * N;
  if (d >= D) return;
  float yv[N], xv[HC][N];
  if constexpr (N == 1) {
    yv[0] = to_f32(y[t * D + d]);
  } else {
    rowwise::load_packed<N>(y + t * D + d, yv);
  }
#pragma unroll
  for (int j = 0; j < HC; ++j) {
    if constexpr (N == 1) {
      xv[j][0] = X[(t * HC + j) * D + d];
    } else {
      rowwise::load_packed<N>(X + (t * HC + j) * D + d, xv[j]);
    }
  }
  const float* C = comb + t * HC * HC;
#pragma unroll
  for (int k = 0; k < HC; ++k) {
    float ck[HC];
#pragma unroll
    for (int j = 0; j < HC; ++j) ck[j] = C[j * HC + k];
    float o[N];
    hc_post_out<HC, N>(post[t * HC + k], ck, yv, xv, o);
    if constexpr (N == 1) {
      X_out[(t * HC + k) * D + d] = o[0];
    } else {
      rowwise::store_packed<N>(X_out + (t * HC + k) * D + d, o);
    }
  }
}

// ---- Prefill hc_post_pre: hc_post and the mix partials of its output in one pass ----
//
// hc_post_mix_tile: X_out = hc_post(y, X, post, comb) as hc_post_kernel (hc_post_out, so X_out is
// bit-identical to it) and, from the values still in registers, the mix partials of X_out as
// hc_mix_tile_kernel writes them (partial[t, s, m] = X_out[t] flat . fn[m] over split s,
// partial[t, s, kMix] = the sum of squares there), so X_out is written once and never re-read for
// the mix (hc_finish_norm_kernel sums the splits in order and re-reads X_out for the collapse).
// Block (tile, split s) takes kPmTokens tokens and the hidden dims [s * chunk, +chunk) of ALL HC
// streams (a split over d, not over the flattened row: X_out[t, k, d] needs X[t, 0..HC-1, d], so
// every X element is read by one block). Warp w holds 8 * kPmTL tokens; lane (slot = lane / 4,
// g = lane % 4) the tokens slot + 8 i (i < kPmTL) and, per step of 16 d, d = 4 g .. 4 g + 3 of
// every stream: per token one 16-byte load of each input stream and 4 (or 8) bytes of y, the
// next step's loads in flight during this step's FMAs and an L2 prefetch kPmPrefetch steps ahead;
// post[t] and comb[t] stay in registers. fn comes from shared memory in chunks of kPmDC d of
// every stream and row (cp.async, double-buffered, 48 KB for F32 fn); the 8 lanes of a k group
// read the same 16 bytes (a broadcast). Sum order of a lane: per step, rows m, streams k, then
// the 4 d; then lanes g = 0..3 (xor 1, then 2). Deterministic; not the order of hc_pre's mix, so
// the site's gates differ from the composition's in the last bits (tests: CPU budgets).
// Needs: D % kPmDC == 0, chunk % kPmDC == 0, T * HC * D < 2^31, X, X_out, fn 16-byte
// aligned, y 4-element aligned.
constexpr int kPmWarps = 8;
constexpr int kPmTL = 2;                          // tokens per lane
constexpr int kPmTokens = 8 * kPmTL * kPmWarps;   // tokens per block (8 slots per warp)
constexpr int kPmDC = 64;                         // d per fn chunk in shared memory (all streams)
constexpr int kPmStepD = 16;                      // d per warp step (4 k groups x 4)
constexpr int kPmPrefetch = 4;                    // L2 prefetch distance of X in steps (256 B per stream)

template <int HC, typename Tf, typename Ty>
__global__ void __launch_bounds__(32 * kPmWarps, 1)
    hc_post_mix_tile_kernel(const Ty* __restrict__ y, const float* __restrict__ X, const float* __restrict__ post,
                            const float* __restrict__ comb, float* __restrict__ X_out, const Tf* __restrict__ fn,
                            int T, int D, int chunk, float* __restrict__ partial) {
  pdl_wait();
  pdl_trigger();
  constexpr int kMix = mix_count<HC, false>(), kRows = kMix + 1, kVec = 16 / static_cast<int>(sizeof(Tf));
  constexpr int kRowCopies = HC * kPmDC / kVec;  // 16-byte copies per row m of a chunk
  constexpr int kCopies = kMix * kRowCopies;
  __shared__ __align__(16) Tf fs[2][kMix][HC][kPmDC];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slot = lane >> 2, g = lane & 3;
  const int s = blockIdx.y, S = gridDim.y, n = HC * D;
  const int d_begin = s * chunk, d_end = min(D, d_begin + chunk);
  const int t0 = blockIdx.x * kPmTokens + warp * (8 * kPmTL) + slot;  // tokens t0 + 8 i

  auto stage = [&](int c) {  // chunk c of fn (d from d_begin + c * kPmDC, every stream) into fs[c & 1]
    const int d0 = d_begin + c * kPmDC;
    for (int q = threadIdx.x; q < kCopies; q += 32 * kPmWarps) {
      const int m = q / kRowCopies, r = q % kRowCopies;
      const int k = r / (kPmDC / kVec), e = r % (kPmDC / kVec) * kVec;
      cp_async16(&fs[c & 1][m][k][e], fn + m * n + k * D + d0 + e);
    }
    cp_async_commit();
  };
  const int chunks = (d_end - d_begin) / kPmDC;
  stage(0);

  int xo[kPmTL], yo[kPmTL];  // element offsets of this lane's tokens in X / X_out and y (past T: the last token)
  bool valid[kPmTL];
  float pk[kPmTL][HC], ck[kPmTL][HC][HC];  // post[t, k]; ck[i][k][j] = comb[t, j, k]
#pragma unroll
  for (int i = 0; i < kPmTL; ++i) {
    const int t = min(t0 + 8 * i, T - 1);
    valid[i] = t0 + 8 * i < T;
    xo[i] = t * n + 4 * g;
    yo[i] = t * D + 4 * g;
#pragma unroll
    for (int k = 0; k < HC; ++k) {
      pk[i][k] = post[t * HC + k];
#pragma unroll
      for (int j = 0; j < HC; ++j) ck[i][k][j] = comb[(t * HC + j) * HC + k];
    }
  }
  float acc[kPmTL][kMix], sq[kPmTL], xc[kPmTL][HC][4], yc[kPmTL][4];
  auto load_step = [&](int d) {
#pragma unroll
    for (int i = 0; i < kPmTL; ++i) {
      rowwise::load_packed<4>(y + yo[i] + d, yc[i]);
#pragma unroll
      for (int j = 0; j < HC; ++j) rowwise::load_packed<4>(X + xo[i] + j * D + d, xc[i][j]);
    }
  };
#pragma unroll
  for (int i = 0; i < kPmTL; ++i) {
    sq[i] = 0.0f;
#pragma unroll
    for (int m = 0; m < kMix; ++m) acc[i][m] = 0.0f;
  }
  load_step(d_begin);

  for (int c = 0; c < chunks; ++c) {
    cp_async_wait_all();
    __syncthreads();  // chunk c is in fs[c & 1]; every warp is done with chunk c - 1 (the other buffer)
    if (c + 1 < chunks) stage(c + 1);
    const Tf(*f)[HC][kPmDC] = fs[c & 1];
#pragma unroll 1
    for (int st = 0; st < kPmDC / kPmStepD; ++st) {
      const int d = d_begin + c * kPmDC + st * kPmStepD;
      float o[kPmTL][HC][4];
#pragma unroll
      for (int i = 0; i < kPmTL; ++i) {
#pragma unroll
        for (int k = 0; k < HC; ++k) {
          hc_post_out<HC, 4>(pk[i][k], ck[i][k], yc[i], xc[i], o[i][k]);
          if (valid[i]) rowwise::store_packed<4>(X_out + xo[i] + k * D + d, o[i][k]);
        }
      }
      if (d + kPmStepD < d_end) load_step(d + kPmStepD);
      if (d + kPmPrefetch * kPmStepD < d_end) {
#pragma unroll
        for (int i = 0; i < kPmTL; ++i) {
#pragma unroll
          for (int j = 0; j < HC; ++j) prefetch_l2(X + xo[i] + j * D + d + kPmPrefetch * kPmStepD);
        }
      }
      const int e = st * kPmStepD + 4 * g;
#pragma unroll
      for (int m = 0; m < kMix; ++m) {
#pragma unroll
        for (int k = 0; k < HC; ++k) {
          float fv[4];
          rowwise::load_packed<4>(&f[m][k][e], fv);
#pragma unroll
          for (int i = 0; i < kPmTL; ++i) {
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][m] = fmaf(o[i][k][q], fv[q], acc[i][m]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kPmTL; ++i) {
#pragma unroll
        for (int k = 0; k < HC; ++k) {
#pragma unroll
          for (int q = 0; q < 4; ++q) sq[i] = fmaf(o[i][k][q], o[i][k][q], sq[i]);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kPmTL; ++i) {
#pragma unroll
    for (int sh = 1; sh <= 2; sh <<= 1) {
#pragma unroll
      for (int m = 0; m < kMix; ++m) acc[i][m] += __shfl_xor_sync(0xffffffffu, acc[i][m], sh);
      sq[i] += __shfl_xor_sync(0xffffffffu, sq[i], sh);
    }
    if (valid[i]) {  // lane g stores the rows m = g mod 4
      float* pt = partial + (static_cast<int64_t>(t0 + 8 * i) * S + s) * kRows;
#pragma unroll
      for (int m = 0; m < kMix; ++m)
        if (m % 4 == g) pt[m] = acc[i][m];
      if (kMix % 4 == g) pt[kMix] = sq[i];
    }
  }
}

// Whether hc_post_mix_tile takes the site: T tokens of HC streams of D (pointers as named).
inline bool post_mix_fits(int64_t T, int64_t hc, int64_t D, const void* y, int64_t y_size, const void* X,
                          const void* X_out, const void* fn) {
  auto aligned = [](const void* p, int64_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  return T > kFusedMaxT && D % kPmDC == 0 && T * hc * D <= INT32_MAX && aligned(X, 16) && aligned(X_out, 16) &&
         aligned(fn, 16) && aligned(y, 4 * y_size);
}
// hc_post_mix_tile's d per split: splits so that the blocks about fill the device once (one block
// per SM). The partial sums' order, and so the bits, follow from it.
inline int64_t post_mix_chunk(const CudaBackend& be, int64_t T, int64_t D) {
  const int64_t tiles = (T + kPmTokens - 1) / kPmTokens;
  const int64_t want = std::clamp<int64_t>(std::max(1, be.sm_count()) / tiles, 1, D / kPmDC);
  return (D / want + kPmDC - 1) / kPmDC * kPmDC;
}

// ---- The fused site (hc_post_pre): hc_pre's tail followed by the input norm ----
//
// The norm of x_in as rms_norm_kernel holds a row (rowprep.cuh): tpr = rms_threads_per_row(D)
// threads, thread r the packs of 8 r, r + tpr, ... (at most 4 in registers: D <= 32 tpr), the
// same fmaf chain and group sum; so x_in is bit-identical to hc_pre then rms_norm.
struct HcNorm {
  const void* weight;
  rowwise::FloatCode wcode;
  bool wpacked;  // the weight may be read in packs of 8
  float eps;
  int tpr;
  int smem_bytes = 0;  // > 0: the decode site copies the weight (16-byte aligned, this many bytes,
                       // <= kNormSmemBytes) into shared memory first (hc_post_pre sets it)
};
constexpr int64_t kNormMaxD = 8192;  // x_in rows staged in shared memory (32 KB)
constexpr int kNormSmemBytes = 8192;  // the decode site's copy of the norm weight

// rms_norm of the row x_in[t] staged in xs (shared, D floats) as rms_norm_kernel holds a row
// (HcNorm), stored as To in o; every thread of the block (or its first bar_threads) calls it.
template <typename To>
__device__ __forceinline__ void norm_from_shared(const float* xs, int64_t D, float* red, const HcNorm& nm,
                                                 To* __restrict__ o, int bar_threads) {
  const bool valid = static_cast<int>(threadIdx.x) < nm.tpr;
  const int r = static_cast<int>(threadIdx.x) % nm.tpr;
  const int64_t packs = D / 8;
  rowprep::RowPacks<4> v;
  v.load(xs, r, nm.tpr, packs, valid);
  rowprep::rms_norm_packs(v, nm.weight, nm.wcode, nm.wpacked, D, nm.eps, r, nm.tpr, valid, red, bar_threads);
  v.store(o, r, nm.tpr, packs, valid);
}

// The end of a prefill site for token t once its pre gates w are known (every thread of the block
// calls it; threads [32, 256) hold the first collapse round of xt in coll): the collapse rounded to
// To into xs (shared, D floats), a barrier, then rms_norm of the row from xs, stored as To in o.
template <int HC, typename To>
__device__ __forceinline__ void collapse_and_norm(HcCollapseOf<HC, false>& coll, const float* __restrict__ xt,
                                                  const float (&w)[HC], int64_t D, float* xs, float* red,
                                                  const HcNorm& nm, To* __restrict__ o) {
  using Coll = HcCollapseOf<HC, false>;
  constexpr int64_t kRound = static_cast<int64_t>(Coll::kCount) * 5;  // packs of 4 per round (HcCollapseOf: 5 each)
  for (int64_t base = 0; base < D / 4; base += kRound) {
    if (base > 0) coll.load(xt, D, base);
    coll.template store<float, To>(w, D, base, xs);
  }
  __syncthreads();  // xs holds x_in[t] as To would
  norm_from_shared(xs, D, red, nm, o, 0);
}

// Prefill: hc_finish_kernel (packed rows) with the norm: x_in[t] = norm(collapse), post, comb.
template <int HC, typename To>
__global__ void __launch_bounds__(kThreads)
    hc_finish_norm_kernel(const float* __restrict__ X, const float* __restrict__ partial, int S, int64_t D,
                          HcScalars p, HcNorm nm, To* __restrict__ out, float* __restrict__ post,
                          float* __restrict__ comb) {
  pdl_wait();
  pdl_trigger();
  constexpr int kMix = mix_count<HC, false>(), kRows = kMix + 1;
  static_assert((HC & (HC - 1)) == 0 && kRows <= 32, "one lane per mix total, HC a power of two");
  __shared__ float tot[32];
  __shared__ float nred[kWarps];
  __shared__ __align__(32) float xs[kNormMaxD];
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float* xt = X + t * HC * D;
  HcCollapseOf<HC, false> coll;
  coll.load(xt, D, 0);
  const float2 gw = load_gate_weight<HC, false>(p, lane);
  if (threadIdx.x < 32) {
    float v = 0.0f;
    if (lane < kRows) {
      for (int s = 0; s < S; ++s) v += partial[(t * S + s) * kRows + lane];
    }
    tot[lane] = v;
  }
  __syncthreads();
  float w[HC];
  hc_gates<HC, false>(tot[lane], gw, D, p, t, warp == 0, w, post, comb);
  collapse_and_norm<HC, To>(coll, xt, w, D, xs, nred, nm, out + t * D);
}

// A mix partial with its launch's tag: the value's bits in the low word, the tag in the high word,
// written and read as one 64-bit relaxed access at gpu scope (single-copy atomic), so a reader
// that sees the tag sees the value, with no fence or counter between them.
__device__ __forceinline__ void tagged_store(unsigned long long* p, float v, unsigned tag) {
  const unsigned long long word = (static_cast<unsigned long long>(tag) << 32) | __float_as_uint(v);
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(p), "l"(word) : "memory");
}
__device__ __forceinline__ unsigned long long tagged_load(const unsigned long long* p) {
  unsigned long long word;
  asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(word) : "l"(p) : "memory");
  return word;
}
constexpr int kTagSpinLimit = 1 << 26;  // tens of seconds of polling: a lost partial traps instead of hanging

// y[t, d..d+3] as the site's sub-layer output: y + y_add rounded to Tx as add() stores it.
template <typename Tx>
__device__ __forceinline__ void site_y(const Tx* __restrict__ y, const Tx* __restrict__ y_add, int64_t i,
                                       float (&yv)[4]) {
  rowwise::load_packed<4>(y + i, yv);
  if (y_add != nullptr) {
    float av[4];
    rowwise::load_packed<4>(y_add + i, av);
#pragma unroll
    for (int q = 0; q < 4; ++q) yv[q] = to_f32(from_f32<Tx>(__fadd_rn(yv[q], av[q])));
  }
}

// Decode (T <= kFusedMaxT): hc_post, then hc_fused_kernel's hc_pre on the streams out, then the
// norm, in one kernel. Grid (T, S + 1):
//  - blocks y = 0..S-1 (writers): block (t, s) computes the elements [s * kFusedChunk,
//    +kFusedChunk) of X_out[t] flattened (each lane its packs l and l + 32, from y (plus y_add,
//    site_y), X[t] and the post/comb of hc_post, exactly as hc_post_kernel; every warp computes
//    them, warp 0 stores them), then the mix partials of those elements as hc_fused_kernel does,
//    each stored with this launch's tag (tagged_store) in slots[t, s, row];
//  - block y = S (the finisher) computes X_out[t] whole from the same inputs with the same
//    arithmetic (so the same bits) into registers while the writers run, waits for the S
//    partials of each row by their tags and sums them in hc_fused_kernel's order (lane = row,
//    warp w the splits w, w + 8, ..., then the warps in order), then collapses and normalizes
//    into x_in (warps 0..7, their own barriers) while kCombWarp writes post_out and runs the
//    Sinkhorn into comb_out.
// Against a per-token counter (the last writer to count finishes) this takes three dependent
// round trips to memory off the chain: the writers' fence, the count, and the finisher's read of
// X_out (64 KB into one SM) (docs/PERFORMANCE.md, thirty-second session).
// Tags: epochs[t] holds the tag of token t's last launch (0 at first); every block reads it after
// the wait and uses epochs[t] + 1; the finisher stores that back once it has seen every tag, i.e.
// after every writer has read it. Token t's slots (stride kSiteMaxS, whatever S) only ever hold
// its earlier tags, all smaller.
// Progress: every block triggers its dependents first, and a dependent grid starts only once
// every block of this one has triggered or exited, so no block of a later launch holds a slot a
// writer needs; writers never wait, and the launch keeps the polling finishers to at most half
// the resident blocks (hc_site_fused). Finishers come last in the grid: where the writers take
// several waves (batched decode), they are not held by finishers polling from the first.
// post_in/comb_in may be post_out/comb_out: every writer has read them before its partials carry
// the tag, and the finisher's own reads precede its barrier. Packed rows (D % 8 == 0, aligned)
// only.
constexpr int kCombWarp = kWarps;            // the site's extra warp
constexpr int kSiteThreads = kThreads + 32;  // the site's block: hc_fused_kernel's warps and kCombWarp
constexpr int kFinPacks = 4;                 // the finisher's packs of 4 positions per thread per round
constexpr int64_t kSiteMaxS = 4 * kNormMaxD / kFusedChunk;  // writers per token at most (hc_mult 4): the slots' stride
template <int HC, typename Tf, typename Tx>
__global__ void __launch_bounds__(kSiteThreads)
    hc_site_fused_kernel(const Tx* __restrict__ y, const Tx* __restrict__ y_add, const float* __restrict__ X,
                         const float* post_in, const float* comb_in, float* X_out, const Tf* __restrict__ fn,
                         int64_t D, unsigned long long* __restrict__ slots, unsigned* __restrict__ epochs,
                         HcScalars p, HcNorm nm, Tx* __restrict__ x_in, float* post_out, float* comb_out) {
  pdl_trigger();
  constexpr int kMix = mix_count<HC, false>(), kRows = kMix + 1, kPerWarp = (kRows + kWarps - 1) / kWarps;
  static_assert((HC & (HC - 1)) == 0 && kRows <= 32, "one lane per mix total, HC a power of two");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = HC * D, t = blockIdx.x;
  const int S = static_cast<int>(gridDim.y) - 1;
  const float* xt = X + t * n;

  if (static_cast<int>(blockIdx.y) < S) {
    // A writer. The mix weights fn are not written by any kernel of a step: their loads are
    // issued before griddepcontrol.wait (launched with PDL: hc_site_pdl), so their DRAM round
    // trip overlaps the kernel before; everything else waits.
    const int s = static_cast<int>(blockIdx.y);
    float fv[kPerWarp][2][4];
    const bool mixer = warp < kRows && warp < kWarps;  // warp-uniform: kCombWarp has no mix rows
    if (mixer) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t i = s * kFusedChunk + 4 * (lane + 32 * h);
#pragma unroll
        for (int k = 0; k < kPerWarp; ++k) {
          const int m = warp + kWarps * k;
          if (m < kMix) load4_or_zero(fn + m * n, i, n, true, fv[k][h]);
        }
      }
    }
    pdl_wait();
    if (!mixer) return;
    const unsigned tag = epochs[t] + 1u;
    float* ot = X_out + t * n;
    float xv[2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = s * kFusedChunk + 4 * (lane + 32 * h);
      if (i < n) {  // a pack of 4 lies in one stream (D % 4 == 0)
        const int64_t k = i / D, d = i - k * D;
        float yv[4], xin[HC][4], ck[HC];
        site_y(y, y_add, t * D + d, yv);
#pragma unroll
        for (int j = 0; j < HC; ++j) {
          rowwise::load_packed<4>(xt + j * D + d, xin[j]);
          ck[j] = comb_in[(t * HC + j) * HC + k];
        }
        hc_post_out<HC, 4>(post_in[t * HC + k], ck, yv, xin, xv[h]);
        if (warp == 0) rowwise::store_packed<4>(ot + i, xv[h]);
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) xv[h][q] = 0.0f;
      }
    }
#pragma unroll
    for (int k = 0; k < kPerWarp; ++k) {
      const int m = warp + kWarps * k;  // warp-uniform
      if (m > kMix) break;
      float acc = 0.0f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int q = 0; q < 4; ++q) acc = fmaf(xv[h][q], m < kMix ? fv[k][h][q] : xv[h][q], acc);
      }
      acc = rowwise::warp_sum(acc);
      if (lane == 0) tagged_store(slots + (t * kSiteMaxS + s) * kRows + m, acc, tag);
    }
    return;
  }

  // The finisher. The gate weights and the norm weight (constants of the model) before the wait.
  __shared__ float red[kWarps][32];
  __shared__ float nred[kWarps];
  __shared__ __align__(32) float xs[kNormMaxD];
  __shared__ __align__(32) uint4 nws[kNormSmemBytes / 16];  // the norm weight (D <= 4096 BF16, 2048 F32)
  const float2 gw = load_gate_weight<HC, false>(p, lane);
  HcNorm nl = nm;
  if (nm.smem_bytes > 0) {
    for (int i = threadIdx.x; warp < kWarps && i < nm.smem_bytes / 16; i += kThreads) {
      cp_async16(reinterpret_cast<char*>(nws) + 16 * i, static_cast<const char*>(nm.weight) + 16 * i);
    }
    nl.weight = nws;
  }
  cp_async_commit();
  pdl_wait();
  const unsigned tag = epochs[t] + 1u;

  // X_out[t] at positions 4 dp.. (dp = base + c + kThreads i) of every stream, as the writers
  // compute it (hc_post_out), held where the collapse takes its streams: coll.xv[i][k] = stream k.
  const int c = static_cast<int>(threadIdx.x);
  HcCollapse<HC, 0, kFinPacks> coll;
  auto post_packs = [&](int64_t base) {
#pragma unroll
    for (int i = 0; i < kFinPacks; ++i) {
      const int64_t dp = base + c + static_cast<int64_t>(kThreads) * i;
      if (4 * dp < D) {
        float yv[4], xin[HC][4];
        site_y(y, y_add, t * D + 4 * dp, yv);
#pragma unroll
        for (int j = 0; j < HC; ++j) rowwise::load_packed<4>(xt + j * D + 4 * dp, xin[j]);
#pragma unroll
        for (int k = 0; k < HC; ++k) {
          float ck[HC];
#pragma unroll
          for (int j = 0; j < HC; ++j) ck[j] = comb_in[(t * HC + j) * HC + k];
          hc_post_out<HC, 4>(post_in[t * HC + k], ck, yv, xin, coll.xv[i][k]);
        }
      }
    }
  };
  if (warp < kWarps) post_packs(0);

  // The partials, in hc_fused_kernel's order, each once its tag is there.
  float v = 0.0f;
  if (lane < kRows && warp < kWarps) {
    const unsigned long long* ts = slots + t * kSiteMaxS * kRows + lane;
    for (int s0 = 0; s0 < S; s0 += kWarps * kPartialLoads) {
      unsigned long long pw[kPartialLoads];
      for (int spin = 0;; ++spin) {
        bool ready = true;
#pragma unroll
        for (int i = 0; i < kPartialLoads; ++i) {
          const int ss = s0 + warp + kWarps * i;
          pw[i] = ss < S ? tagged_load(ts + static_cast<int64_t>(ss) * kRows)
                         : static_cast<unsigned long long>(tag) << 32;  // 0.0f, as a missing split adds
          ready = ready && static_cast<unsigned>(pw[i] >> 32) == tag;
        }
        if (ready) break;
        if (spin == kTagSpinLimit) __trap();
      }
#pragma unroll
      for (int i = 0; i < kPartialLoads; ++i) v += __uint_as_float(static_cast<unsigned>(pw[i]));
    }
  }
  if (warp < kWarps) red[warp][lane] = v;
  __syncthreads();
  if (threadIdx.x == 0) epochs[t] = tag;  // every writer has read epochs[t]: its tag is in
  float tot = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) tot += red[w][lane];
  float w[HC];
  hc_gates<HC, false>(tot, gw, D, p, t, warp == kCombWarp, w, post_out, comb_out);
  if (warp == kCombWarp) return;  // post_out and comb_out written
  cp_async_wait_all();  // this thread's copies of the norm weight; the collapse's barrier publishes them

  // The collapse rounded to Tx into xs, round by round.
  for (int64_t base = 0; base < D / 4; base += static_cast<int64_t>(kThreads) * kFinPacks) {
    if (base > 0) post_packs(base);
    coll.template store<float, Tx>(w, D, base, xs);
  }
  rowprep::rows_barrier(kThreads);  // xs holds x_in[t] as Tx would
  norm_from_shared(xs, D, &nred[0], nl, x_in + t * D, kThreads);
}

struct HcShape {
  int64_t T, hc, D;
};

HcShape check_streams(const CudaBackend& be, const TensorView& X, int64_t hc_mult, const char* op) {
  be.expect_device(X, op, "X");
  CLAWMINE_CHECK(X.dtype == DType::kF32 && X.rank() == 3, "cuda ", op, ": X must be [T, hc, D] F32, got ",
                 dtype_name(X.dtype), " ", shape_str(X.shape));
  CLAWMINE_CHECK(X.dim(1) == hc_mult, "cuda ", op, ": X has shape ", shape_str(X.shape), " but hc_mult is ", hc_mult);
  return {X.dim(0), X.dim(1), X.dim(2)};
}

void check_weights(const CudaBackend& be, const HyperConnectionWeights& w, int64_t n_mix, int64_t n, int64_t n_scale,
                   const char* op) {
  be.expect_device(w.fn, op, "fn");
  be.expect_device(w.base, op, "base");
  be.expect_device(w.scale, op, "scale");
  CLAWMINE_CHECK(w.fn.rank() == 2 && w.fn.dim(0) == n_mix && w.fn.dim(1) == n, "cuda ", op, ": fn must be [", n_mix,
                 ", ", n, "], got ", shape_str(w.fn.shape));
  CLAWMINE_CHECK(w.base.numel() == n_mix, "cuda ", op, ": base must have ", n_mix, " elements, got ",
                 shape_str(w.base.shape));
  CLAWMINE_CHECK(w.scale.numel() >= n_scale, "cuda ", op, ": scale must have ", n_scale, " elements, got ",
                 shape_str(w.scale.shape));
}

// The fused path's per-token counters: kFusedMaxT zeros kept per backend.
const char kHcCountersKey = 0;  // its address keys the state
unsigned* hc_counters(CudaBackend& be) { return be.zeroed_counters(&kHcCountersKey, kFusedMaxT); }

}  // namespace
}  // namespace clawmine::backend::cuda
