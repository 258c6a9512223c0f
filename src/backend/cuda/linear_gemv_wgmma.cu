// The one-token GEMV on wgmma (sm_90a): y[r] = sum_k W[r, k] x[k] for E4M3 weights with
// 128 x 128 block scales (E8M0 or F32) or FP4 weights (MXFP4, NVFP4), and BF16 activations, at
// decode's one token: dense FP8 projections (wq_b, wo_a, wo_b), the shared expert's gate/up and the
// routed experts' FP4 down projections by default, dense FP4 and the other expert launches on
// request (docs/PERFORMANCE.md, twenty-fifth session:
// tools/gemv_probe's FP8 wq_b at 81.6% of copy against 55% on the streaming kernel's mma.sync
// chain; decode b=1 6.27 -> 6.03 ms/token; twenty-sixth session, the shared expert's gate/up too:
// 6.01-6.03 -> 5.93; twenty-seventh, the routed experts' FP4 down projections: 5.93-5.96 -> 5.79-5.82).
//
// Why wgmma: mma.sync makes each warp wait for its products and decode every weight into bf16
// fragments (~120-245 instructions per KB); wgmma takes the stored E4M3 bytes as its A operand
// straight from the registers they were loaded into, runs asynchronously, and leaves the warp free
// to issue the next loads.
//
// Layout. A block is one warpgroup (128 threads) on 64 output rows and kNkb k blocks of 128; warp
// w holds rows 16w + g and 16w + g + 8 (g = lane / 4) and, per k block, lane t = lane % 4 loads
// bytes [32t, 32t + 32) of both rows ("chunk t"): four 16-byte loads, kept as they are. Step s
// of a k block (one m64n8k32 wgmma) takes words 2s and 2s + 1 of each row's 32 bytes, the
// mma.m16n8k32 A order (a0 row g, a1 row g + 8: k 4t..4t+3; a2, a3: k 16 + 4t..), so its
// logical k j = 4t + c and 16 + 4t + c are physical k 32t + 8s + c and 32t + 8s + 4 + c.
// Activations: each chunk of 32 k times a power of two 2^p that puts its largest magnitude in
// [128, 256), split into hi = e4m3(x 2^p) and lo = e4m3(x 2^p - hi) (every bf16 element within
// 2^-9 of the chunk's largest exactly), staged in "chunk columns": B column 2t (hi) and 2t + 1
// (lo) hold chunk t's values and zeros elsewhere, so the lane that holds D columns 2t, 2t + 1
// (lane t) owns chunk t's sums and multiplies them by the block scale and 2^-p in f32. A
// non-finite activation makes its chunk's factor NaN. Each k block's four wgmma accumulate in the
// tensor core (128 products: FP8 wgmma sums with ~14-bit precision, so partial sums go to f32
// every k block, as DeepGEMM does) in one of two accumulator sets (commit_group / wait_group 1):
// the tensor cores work while the lane drains the block before and issues the loads kNS - 1
// blocks ahead. Split k: KC blocks (consecutive in x) take consecutive k ranges of a tile; each
// writes its 64 sums to a workspace, and the last to arrive at the tile's counter adds them in
// split order (fixed order: the same bits every call). Every workspace access comes after
// griddepcontrol.wait, so back-to-back launches (with PDL too) never share it, and each stream
// has its own (split_workspace), so launches on two streams at once do not either.
//
// PDL: the first kNS k blocks' weights and scales are loaded before griddepcontrol.wait (no tile
// table: weights_before_wait), the activations after it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {
namespace {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CLAWMINE_WGMMA_DEVICE 1
#endif

__device__ __forceinline__ uint64_t smem_desc(const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  uint64_t d = (a & 0x3ffffu) >> 4;
  d |= static_cast<uint64_t>(128 >> 4) << 16;  // leading (k) byte offset: the two 16-byte k halves
  d |= static_cast<uint64_t>(128 >> 4) << 32;  // stride (n) byte offset: unused at n = 8
  return d;
}
__device__ __forceinline__ void wg_fence() {
#ifdef CLAWMINE_WGMMA_DEVICE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#ifdef CLAWMINE_WGMMA_DEVICE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#ifdef CLAWMINE_WGMMA_DEVICE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Registers an asynchronous wgmma reads or writes stay live, and unread, up to here.
__device__ __forceinline__ void keep(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void keep(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// d (64 x 8 f32; lane: rows 16w + g and + 8, columns 2t, 2t + 1) = A (64 x 32 E4M3) * B (+ d if acc).
__device__ __forceinline__ void wgmma_e4m3(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                           uint64_t bdesc, int acc) {
#ifdef CLAWMINE_WGMMA_DEVICE
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(bdesc), "r"(acc));
#else
  __trap();  // launch_gemv_wgmma never launches a build without sm_90a
#endif
}

__device__ __forceinline__ uint32_t e4m3x2_bits(float a, float b) {
  return static_cast<uint32_t>(__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3));
}
// Weights as wgmma A fragments, per format. A k block is 128 k (FP8: 128 bytes of a row, FP4:
// 64); lane t of a quad owns chunk t (32 k) of its rows g and g + 8 in each.
//  FP8 (E8M0 or F32 scales per 128 x 128): four 16-byte loads per k block, the bytes themselves
//   are the fragments (step s: words 2s, 2s + 1 of each row's 32 bytes: chunk element 8s + 4h + c
//   at half h, byte c); the block scale multiplies both rows' sums.
//  MXFP4 (E8M0 per 32): two 16-byte loads (one per row: word s = chunk elements 8s..8s+7); an
//   e2m1 nibble becomes the E4M3 byte of e2m1 * 2^-6 (sign to bit 7, exponent and mantissa bits
//   to bits 4:2; 0.5 lands on a subnormal) with shifts and masks, low nibbles (even k) as half 0
//   and high nibbles as half 1: chunk element 8s + 2c + h at half h, byte c; each row's own
//   E8M0 scale times 2^6 multiplies its sums.
//  NVFP4 (E4M3 per 16, then the tensor's global scale): as MXFP4, but a chunk holds two scale
//   groups: steps 0, 1 (elements 0..15) accumulate into one set, steps 2, 3 into another, and each
//   set's sums take their group's E4M3 scale times 2^6 and the global scale.
template <WFmt F>
struct WgFmt {
  static constexpr bool kNv = F == WFmt::kNvfp4;
  static constexpr bool kFp4 = wfmt_fp4(F);
  static constexpr int kLoads = kFp4 ? 2 : 4;  // 16-byte loads per lane and k block
  static constexpr int kKbBytes = kFp4 ? 64 : 128;
  // k blocks of weights in registers (kNS - 1 in flight), unless the launch asks for fewer
  // (wgmma_stages).
  static constexpr int kNS = kFp4 ? 8 : 4;
  // Index (0..7) among a staging thread's 8 consecutive chunk elements 8s..8s+7 of half h, byte c.
  static __device__ __forceinline__ int elem(int h, int c) { return kFp4 ? 2 * c + h : 4 * h + c; }
};
__device__ __forceinline__ uint32_t e2m1_lo_e4m3(uint32_t v) {  // low nibbles of the 4 bytes
  return ((v & 0x07070707u) << 2) | ((v & 0x08080808u) << 4);
}
__device__ __forceinline__ uint32_t e2m1_hi_e4m3(uint32_t v) {  // high nibbles
  return ((v >> 2) & 0x1c1c1c1cu) | (v & 0x80808080u);
}

// Stages the activations of k blocks [kb0, kb0 + kNkb) of x as B tiles: [kNkb][4 steps][2 k
// halves][8 columns][16 bytes], then fac[kNkb][4] = 2^-p per chunk (NaN when the chunk has a
// non-finite element). Thread e = (k block, chunk, step) converts chunk elements 8s..8s+7.
template <WFmt F, int kNkb>
__device__ __forceinline__ void stage_x(const __nv_bfloat16* x, int kb0, uint8_t* sm, float* fac) {
  for (int i = threadIdx.x; i < kNkb * 64; i += 128) reinterpret_cast<uint4*>(sm)[i] = make_uint4(0u, 0u, 0u, 0u);
  __syncthreads();
  static_assert((kNkb * 16) % 32 == 0, "whole warps per staging pass");
  for (int e = threadIdx.x; e < kNkb * 16; e += 128) {
    const int kb = e >> 4, c = (e >> 2) & 3, s = e & 3;
    const uint4 xv = *reinterpret_cast<const uint4*>(x + (kb0 + kb) * 128 + 32 * c + 8 * s);
    const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
    float v[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = __uint_as_float(xw[i] << 16);
      v[2 * i + 1] = __uint_as_float(xw[i] & 0xffff0000u);
    }
    float m = 0.0f;
    bool bad = false;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      m = fmaxf(m, fabsf(v[i]));
      bad = bad || !isfinite(v[i]);
    }
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    bad = ((__ballot_sync(0xffffffffu, bad) >> ((threadIdx.x & 31) & ~3)) & 0xfu) != 0u;  // the chunk's 4 lanes
    int ex = 0;
    if (m > 0.0f && !bad) frexpf(m, &ex);  // m = f 2^ex, f in [0.5, 1)
    const int p = (m > 0.0f && !bad) ? 8 - ex : 0;
    const int p1 = p > 100 ? 100 : p;  // 2^p in two exact steps (p <= 157 for bf16 subnormals)
    const float f1 = ldexpf(1.0f, p1), f2 = ldexpf(1.0f, p - p1);
    uint32_t hw[2] = {0u, 0u}, lw[2] = {0u, 0u};
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int i0 = WgFmt<F>::elem(h, 2 * q), i1 = WgFmt<F>::elem(h, 2 * q + 1);
        const float y0 = bad ? 0.0f : v[i0] * f1 * f2, y1 = bad ? 0.0f : v[i1] * f1 * f2;
        const uint32_t hi = e4m3x2_bits(y0, y1);
        float h0, h1;
        e4m3x2_values(hi, h0, h1);
        const uint32_t lo = e4m3x2_bits(y0 - h0, y1 - h1);
        hw[h] |= hi << (16 * q);
        lw[h] |= lo << (16 * q);
      }
    uint8_t* tile = sm + (kb * 4 + s) * 256;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      *reinterpret_cast<uint32_t*>(tile + h * 128 + (2 * c) * 16 + 4 * c) = hw[h];
      *reinterpret_cast<uint32_t*>(tile + h * 128 + (2 * c + 1) * 16 + 4 * c) = lw[h];
    }
    if (s == 0) fac[kb * 4 + c] = bad ? __int_as_float(0x7fc00000) : ldexpf(1.0f, -p);
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // generic stores -> wgmma reads
  __syncthreads();
}

// Grid (64-row tiles * KC, tiles, n_z): split rank = blockIdx.x % KC takes k blocks
// [rank * kNkb, +kNkb) of 64-row tile blockIdx.x / KC, of problem z, for tile blockIdx.y of the
// launch (tile_of: dense launches have one, of row 0; expert launches one-row tiles, row i =
// tile.row0, its expert tile.p from row_problem or the plan's table, read after the wait). Gate/up
// pairs (z = 0, 1 into one h = swiglu(gate, up)) finish in the block that sums the last split of
// either. The whole k loop is unrolled (kNkb % kNS == 0): with a run-time trip count ptxas
// serializes the wgmma (C7514), as it cannot tell the two accumulator sets apart across the back
// edge.
template <WFmt F, int kNkb, int KC, int kStages>
__device__ __forceinline__ void gemv_wgmma_body(const GemmArgs& a, float* part, unsigned* cnt) {
  using W = WgFmt<F>;
  using D = WeightDecoder<F>;
  constexpr int kNS = kStages > 0 ? kStages : W::kNS;
  static_assert(kNkb % kNS == 0, "whole rounds of stages");
  const bool early = weights_before_wait(a);  // dense, or tiles_early: weights before the wait
  pdl_begin(early);
  extern __shared__ __align__(128) uint8_t sm[];  // B tiles [kNkb KB], then fac [kNkb][4]
  float* fac = reinterpret_cast<float*>(sm + kNkb * 1024);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = lane & 3;
  const int z = static_cast<int>(blockIdx.z);
  const int rank = KC > 1 ? static_cast<int>(blockIdx.x % KC) : 0;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.x / KC) * 64;
  const int64_t lr0 = tile0 + warp * 16 + (lane >> 2), lr1 = lr0 + 8;  // rows of this problem
  const int kb0 = rank * kNkb;
  Tile tile{0, 0, 1};
  WeightDesc d{};
  const uint8_t *wp0 = nullptr, *wp1 = nullptr, *sr0 = nullptr, *sr1 = nullptr;
  uint4 buf[kNS][W::kLoads];
  uint32_t sb[kNS][2];
  auto load = [&](int st, int i) {
#pragma unroll
    for (int j = 0; j < W::kLoads / 2; ++j) {
      buf[st][j] = ld_stream16(wp0 + i * W::kKbBytes + 16 * j);
      buf[st][W::kLoads / 2 + j] = ld_stream16(wp1 + i * W::kKbBytes + 16 * j);
    }
    if constexpr (W::kFp4) {
      sb[st][0] = D::scale_bits(sr0, static_cast<int64_t>(kb0 + i) * 4 + t);
      sb[st][1] = D::scale_bits(sr1, static_cast<int64_t>(kb0 + i) * 4 + t);
    } else {
      sb[st][0] = D::scale_bits(sr0, static_cast<int64_t>(kb0 + i) * 8);  // chunks of 16: block kb0 + i
    }
  };
  auto start = [&] {
    d = desc_of(a, tile.p, z);
    const int64_t wbase = weight_row_base(a, z);
    wp0 = d.w + (wbase + lr0) * d.row_bytes + kb0 * W::kKbBytes + (W::kKbBytes / 4) * t;
    wp1 = d.w + (wbase + lr1) * d.row_bytes + kb0 * W::kKbBytes + (W::kKbBytes / 4) * t;
    if constexpr (W::kFp4) {
      sr0 = D::scale_row(d, wbase + lr0);
      sr1 = D::scale_row(d, wbase + lr1);
    } else {
      sr0 = D::scale_row(d, wbase + tile0);  // 64 rows inside one 128-row scale block
    }
#pragma unroll
    for (int st = 0; st < kNS; ++st) load(st, st);
  };
  if (early && !has_tile_table(a)) {
    // A descriptor table without tiles (swiglu_mlp's w1 / w3): a z of another format is another
    // launch's. Every block waits before it exits (weights_before_wait, linear_kernels.cuh).
    if (a.descs != nullptr && desc_of(a, 0, z).fmt != a.fmt) {
      pdl_wait();
      return;
    }
    start();
  } else {
    // Uniform over the block and its tile's splits; every block waits before it exits.
    if (!tile_of(a, blockIdx.y, tile) || desc_of(a, tile.p, z).fmt != a.fmt) {
      if (early) pdl_wait();
      return;
    }
    start();
  }
  if (early) pdl_wait();
  stage_x<F, kNkb>(x_row<__nv_bfloat16>(a, tile.row0, z), kb0, sm, fac);

  float acc0 = 0.0f, acc1 = 0.0f;
  float dd[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  float dn[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};  // NVFP4: steps 2, 3 (the chunk's second group)
  const float g64 = W::kNv ? global_scale<F>(d) * 64.0f : 64.0f;
  uint32_t cv[2][16];  // FP4: the E4M3 fragments of the block in flight (per accumulator set)
  auto drain = [&](int par, int st, int j) {
    const float fx = fac[j * 4 + t];
    float f0, f1;
    if constexpr (W::kNv) {
      const float gx = g64 * fx;
      acc0 = fmaf(dn[par][0] + dn[par][1], decode_e4m3(static_cast<uint8_t>(sb[st][0] >> 8)) * gx, acc0);
      acc1 = fmaf(dn[par][2] + dn[par][3], decode_e4m3(static_cast<uint8_t>(sb[st][1] >> 8)) * gx, acc1);
      f0 = decode_e4m3(static_cast<uint8_t>(sb[st][0])) * gx;
      f1 = decode_e4m3(static_cast<uint8_t>(sb[st][1])) * gx;
    } else if constexpr (W::kFp4) {
      f0 = decode_e8m0(static_cast<uint8_t>(sb[st][0])) * g64 * fx;
      f1 = decode_e8m0(static_cast<uint8_t>(sb[st][1])) * g64 * fx;
    } else {
      f0 = f1 = D::block_scale_of(sb[st][0]) * fx;
    }
    acc0 = fmaf(dd[par][0] + dd[par][1], f0, acc0);
    acc1 = fmaf(dd[par][2] + dd[par][3], f1, acc1);
  };
#pragma unroll
  for (int i0 = 0; i0 < kNkb; i0 += kNS) {
#pragma unroll
    for (int st = 0; st < kNS; ++st) {
      const int i = i0 + st, par = st & 1;
      if constexpr (W::kFp4) {
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const uint32_t v0 = word_of(buf[st][0], s), v1 = word_of(buf[st][1], s);
          cv[par][4 * s] = e2m1_lo_e4m3(v0);
          cv[par][4 * s + 1] = e2m1_lo_e4m3(v1);
          cv[par][4 * s + 2] = e2m1_hi_e4m3(v0);
          cv[par][4 * s + 3] = e2m1_hi_e4m3(v1);
        }
      }
      wg_fence();
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        uint32_t a0, a1, a2, a3;
        if constexpr (W::kFp4) {
          a0 = cv[par][4 * s], a1 = cv[par][4 * s + 1], a2 = cv[par][4 * s + 2], a3 = cv[par][4 * s + 3];
        } else {
          // Row g's 32 bytes in buf[st][0..1], row g + 8's in buf[st][2..3]: words 2s and 2s + 1.
          const uint4 &r0 = buf[st][s / 2], &r1 = buf[st][2 + s / 2];
          a0 = word_of(r0, 2 * (s % 2)), a1 = word_of(r1, 2 * (s % 2));
          a2 = word_of(r0, 2 * (s % 2) + 1), a3 = word_of(r1, 2 * (s % 2) + 1);
        }
        if (W::kNv && s >= 2) {
          wgmma_e4m3(dn[par], a0, a1, a2, a3, smem_desc(sm + (i * 4 + s) * 256), s > 2);
        } else {
          wgmma_e4m3(dd[par], a0, a1, a2, a3, smem_desc(sm + (i * 4 + s) * 256), W::kNv ? s > 0 && s < 2 : s > 0);
        }
      }
      wg_commit();
      wg_wait<1>();  // block i - 1's products are done: its registers and accumulators are free
      const int pst = (st + kNS - 1) % kNS;
#pragma unroll
      for (int r = 0; r < 4; ++r) keep(dd[par ^ 1][r]);
      if constexpr (W::kNv) {
#pragma unroll
        for (int r = 0; r < 4; ++r) keep(dn[par ^ 1][r]);
      }
      if constexpr (W::kFp4) {
#pragma unroll
        for (int r = 0; r < 16; ++r) keep(cv[par ^ 1][r]);
      } else {
#pragma unroll
        for (int r = 0; r < 4; ++r)
          keep(buf[pst][r].x), keep(buf[pst][r].y), keep(buf[pst][r].z), keep(buf[pst][r].w);
      }
      if (i >= 1) {
        drain(par ^ 1, pst, i - 1);
        if (i - 1 + kNS < kNkb) load(pst, i - 1 + kNS);
      }
    }
  }
  wg_wait<0>();  // the last block: stage kNS - 1, accumulator set (kNS - 1) & 1
#pragma unroll
  for (int r = 0; r < 4; ++r) keep(dd[(kNS - 1) & 1][r]);
  if constexpr (W::kNv) {
#pragma unroll
    for (int r = 0; r < 4; ++r) keep(dn[(kNS - 1) & 1][r]);
  }
  // Its A fragments too: the wgmma reads them until here, so no instruction before (the drain of
  // block kNkb - 2) may reuse their registers.
  if constexpr (W::kFp4) {
#pragma unroll
    for (int r = 0; r < 16; ++r) keep(cv[(kNS - 1) & 1][r]);
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r)
      keep(buf[kNS - 1][r].x), keep(buf[kNS - 1][r].y), keep(buf[kNS - 1][r].z), keep(buf[kNS - 1][r].w);
  }
  drain((kNS - 1) & 1, kNS - 1, kNkb - 1);
  // Chunks 0..3 of each row: lanes t = 0..3 of the quad, in lane order.
  acc0 += __shfl_xor_sync(0xffffffffu, acc0, 1);
  acc0 += __shfl_xor_sync(0xffffffffu, acc0, 2);
  acc1 += __shfl_xor_sync(0xffffffffu, acc1, 1);
  acc1 += __shfl_xor_sync(0xffffffffu, acc1, 2);
  const int o0 = warp * 16 + (lane >> 2);  // this block's entries o0 and o0 + 8 of 64
  const bool pairs = a.swiglu_pairs != 0;
  if (KC == 1 && !pairs) {
    if (t == 0 && tile0 + o0 < a.n_rows) store_out(a, tile.row0, z, lr0, acc0);
    if (t == 0 && tile0 + o0 + 8 < a.n_rows) store_out(a, tile.row0, z, lr1, acc1);
    return;
  }
  // Partial sums to the workspace; the block that arrives last at the unit's counter (a tile of
  // one problem, or of both gate and up) sums them in split order (fixed order) and sets the
  // counter back to zero for the next launch.
  const int64_t tiles_per = a.n_rows / 64, tile_i = blockIdx.x / KC;
  const int nzr = pairs ? 2 : 1, zr = pairs ? z : 0;
  const int64_t unit = (pairs ? static_cast<int64_t>(blockIdx.y) : static_cast<int64_t>(blockIdx.y) * gridDim.z + z) *
                           tiles_per + tile_i;
  float* mine = part + ((unit * nzr + zr) * KC + rank) * 64;
  if (t == 0) {
    mine[o0] = acc0;
    mine[o0 + 8] = acc1;
  }
  __threadfence();
  __syncthreads();
  __shared__ unsigned last;
  if (threadIdx.x == 0) last = atomicAdd(cnt + unit, 1u) == static_cast<unsigned>(KC * nzr - 1) ? 1u : 0u;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int o = threadIdx.x;
  if (o < 64 && tile0 + o < a.n_rows) {
    float sum[2] = {0.0f, 0.0f};
    for (int zz = 0; zz < nzr; ++zz)
#pragma unroll
      for (int c = 0; c < KC; ++c) sum[zz] += __ldcg(part + ((unit * nzr + zz) * KC + c) * 64 + o);
    if (pairs) {
      float gv = sum[0], uv = sum[1];
      if (a.out_bf16) {  // as stored by an unpaired launch, then read back
        gv = __bfloat162float(__float2bfloat16_rn(gv));
        uv = __bfloat162float(__float2bfloat16_rn(uv));
      }
      store_out(a, tile.row0, 0, tile0 + o, swiglu_value(gv, uv, a.swiglu_limit));
    } else {
      store_out(a, tile.row0, z, tile0 + o, sum[0]);
    }
  }
  if (threadIdx.x == 0) cnt[unit] = 0u;
}

// kStages: k blocks of weights in registers, 0 for the format's kNS.
template <WFmt F, int kNkb, int KC, int kStages>
__global__ void __launch_bounds__(128) gemv_wgmma_kernel(const GemmArgs a, float* part, unsigned* cnt) {
  gemv_wgmma_body<F, kNkb, KC, kStages>(a, part, cnt);
}
// The split-k workspace of the ticket sums, per stream (launches on one stream are ordered; the
// kernel touches it only after griddepcontrol.wait, so even PDL neighbours never share it, and
// launches on different streams, such as the shared expert's branch beside the routed experts,
// get different ones): partial sums of up to kWsSlots 64-row (unit, problem, split) entries and one
// counter per unit, zero between launches. Allocated on a stream's first use (inside a capture
// too: the allocation in relaxed capture mode, the counters zeroed by a memset on the stream, a
// graph node then); freed by release_gemv_workspace when the backend destroys the stream.
constexpr int64_t kWsSlots = 4096;
struct SplitWorkspace {
  float* part = nullptr;
  unsigned* cnt = nullptr;
};
struct StreamWorkspace {
  cudaStream_t stream;
  SplitWorkspace ws;
};
std::mutex g_ws_mu;
std::vector<StreamWorkspace> g_ws;  // one per stream that launched a split or paired wgmma GEMV

SplitWorkspace split_workspace(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_ws_mu);
  for (const StreamWorkspace& e : g_ws)
    if (e.stream == stream) return e.ws;
  SplitWorkspace w;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  CLAWMINE_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  const cudaError_t e1 = cudaMalloc(&w.part, kWsSlots * 64 * sizeof(float));
  const cudaError_t e2 = e1 == cudaSuccess ? cudaMalloc(&w.cnt, kWsSlots * sizeof(unsigned)) : e1;
  CLAWMINE_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  const cudaError_t e3 = e2 == cudaSuccess ? cudaMemsetAsync(w.cnt, 0, kWsSlots * sizeof(unsigned), stream) : e2;
  if (e3 != cudaSuccess) {
    if (w.part) cudaFree(w.part);
    if (w.cnt) cudaFree(w.cnt);
    CLAWMINE_CUDA_CHECK(e3);
  }
  g_ws.push_back({stream, w});
  return w;
}

// Which launches take the wgmma GEMV (set_gemv_wgmma): 0 none, 1 dense FP8 and the shared expert's
// gate/up, 2 also the routed experts' FP4 down projections (the default), 3 every expert launch
// and dense FP4. -1 until the environment is read.
std::atomic<int> g_wgmma{-1};

// Only weights of >= 16 MiB (tools/gemv_probe, H200, FP8 at one token: wo_b and wq_b, 33.5 MB,
// 13.6 / 14.5 -> 10.9 / 11.1 us; at 8 MB, the shared expert's w1 / w2 and the indexer's wq_b, no
// faster: 5.0 / 4.8 / 4.4 against 4.8 / 4.8 / 4.8). The shared expert's w1 and w3 in one paired
// launch make 16 MiB: in the decode step (its side branch beside the routed experts) 6.01-6.03 ->
// 5.93 ms/token (twenty-sixth session).
constexpr int64_t kWgmmaMinBytes = int64_t{16} << 20;

// FP8 launches without a k split, and the shared expert's gate/up (a descriptor table without
// tiles, split k at <= 8 k blocks per warpgroup), take 2 stages instead of 4 (set_gemv_wgmma_shallow;
// -1 until the environment is read). At V4-Flash's dims that is wq_b (32768 x 1024: 512 blocks of 8
// k blocks) and the shared gate/up (2 x 2048 x 4096: 512 blocks of 4 k blocks). wq_b runs beside the
// key side's kernels: with 2 stages it holds 80 registers instead of 126, so its one wave takes 6
// blocks per SM of room instead of 4 (all of it: in a tenth of the launches some blocks waited for a
// second wave), and one k block per lane in flight instead of three, so the latency-bound kernels
// beside it wait less behind its loads. H200, decode b=1: 5.50-5.51 -> 5.40 ms/token; in the step
// wq_b ends 3.6 us sooner and a layer's attention half is 2.5 us shorter on average; every FP8
// launch at 2 stages is slower (5.53-5.56: wo_b's span 8.4 -> 11.8 us) (docs/PERFORMANCE.md,
// thirty-third session). The shared gate/up, beside the routed experts' streaming gate/up: 5.39-5.40
// -> 5.34-5.37, the routed gate/up ending 1-1.4 us sooner; wo_a at 2 stages loses 0.09 ms
// (thirty-fourth session).
std::atomic<int> g_wgmma_shallow{-1};
constexpr int kShallowStages = 2;
constexpr int kShallowTableMaxNkb = 8;  // the split instances at 2 stages: 4 and 8 k blocks
int shallow_from_env() { return env_switch("CLAWMINE_GEMV_WGMMA_SHALLOW", true) ? 1 : 0; }
// A launch's shape as far as its instance goes: format, k blocks per warpgroup, split, and whether
// it is a descriptor table without tiles (the shared expert's w1 / w3).
struct WgShape {
  WFmt f;
  int nkb, kc;
  bool table;
};
WgShape wg_shape(const GemmArgs& a, int nkb, int kc) {
  return {static_cast<WFmt>(a.fmt), nkb, kc, a.descs != nullptr && !has_tile_table(a)};
}
// The stages of a launch: 0 for the format's default.
int wgmma_stages(const WgShape& s) {
  const bool fp8 = s.f == WFmt::kFp8E8M0 || s.f == WFmt::kFp8F32;
  const bool shallow = s.kc == 1 || (s.table && s.nkb <= kShallowTableMaxNkb);
  return fp8 && shallow && env_setting(g_wgmma_shallow, shallow_from_env) == 1 ? kShallowStages : 0;
}

using WgmmaKernel = void (*)(GemmArgs, float*, unsigned*);
// The instance of split kc (1, 2, 4 or 8) at ST stages.
template <WFmt F, int NK, int ST>
WgmmaKernel kernel_of_split(int kc) {
  switch (kc) {
    case 1: return gemv_wgmma_kernel<F, NK, 1, ST>;
    case 2: return gemv_wgmma_kernel<F, NK, 2, ST>;
    case 4: return gemv_wgmma_kernel<F, NK, 4, ST>;
    default: return gemv_wgmma_kernel<F, NK, 8, ST>;
  }
}
template <WFmt F, int NK>
WgmmaKernel kernel_of_kc(int kc, bool shallow) {
  if constexpr (!WgFmt<F>::kFp4) {
    if (shallow) {
      if constexpr (NK <= kShallowTableMaxNkb) return kernel_of_split<F, NK, kShallowStages>(kc);
      // wgmma_stages: a split launch at > 8 k blocks is never shallow.
      if (kc == 1) return gemv_wgmma_kernel<F, NK, 1, kShallowStages>;
    }
  }
  return kernel_of_split<F, NK, 0>(kc);
}
// The instance for (format, k blocks per warpgroup, split, stages): nkb 4 (FP8 only), 8, 16 or 32.
template <WFmt F>
WgmmaKernel kernel_of(int nkb, int kc, bool shallow) {
  if constexpr (!WgFmt<F>::kFp4) {
    if (nkb == 4) return kernel_of_kc<F, 4>(kc, shallow);
  }
  if (nkb == 8) return kernel_of_kc<F, 8>(kc, shallow);
  if (nkb == 16) return kernel_of_kc<F, 16>(kc, shallow);
  return kernel_of_kc<F, 32>(kc, shallow);
}
WgmmaKernel wgmma_kernel(const WgShape& s) {
  const bool shallow = wgmma_stages(s) == kShallowStages;
  switch (s.f) {
    case WFmt::kFp8E8M0: return kernel_of<WFmt::kFp8E8M0>(s.nkb, s.kc, shallow);
    case WFmt::kFp8F32: return kernel_of<WFmt::kFp8F32>(s.nkb, s.kc, shallow);
    case WFmt::kNvfp4: return kernel_of<WFmt::kNvfp4>(s.nkb, s.kc, false);
    default: return kernel_of<WFmt::kMxfp4>(s.nkb, s.kc, false);
  }
}
size_t wgmma_smem(int nkb) { return static_cast<size_t>(nkb) * 1024 + static_cast<size_t>(nkb) * 16; }

// Blocks of an instance resident at once on the device (one warpgroup each: 104-124 registers for
// FP8, 4 per SM; 135-149 for FP4's fragments, 3, NVFP4's 8-k-block instances at 128, 4), cached
// per instance.
int64_t resident_blocks(const WgShape& s) {
  static std::mutex mu;
  static std::vector<std::pair<int, int64_t>> cache;  // (key, blocks)
  const int key = wgmma_stages(s) * 100000 + static_cast<int>(s.f) * 1000 + s.nkb * 10 + s.kc;
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& e : cache)
    if (e.first == key) return e.second;
  int per_sm = 0;
  CLAWMINE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, wgmma_kernel(s), 128, wgmma_smem(s.nkb)));
  const int64_t n = static_cast<int64_t>(std::max(1, per_sm)) * multiprocessors();
  cache.emplace_back(key, n);
  return n;
}

// The launch's (k blocks per warpgroup, split), or {0, 0} when it has none: the largest split (of
// 1, 2, 4, 8; 4..32 k blocks per warpgroup, 8..32 for FP4) whose grid still fits one wave of
// resident blocks, else the smallest. tools/gemv_probe, H200, T = 1: MXFP4 experts' gate/up
// (384 tiles) 20.5 us in one wave of 384 blocks against 24.3 in two of 768; their down
// projection 11.7 against 15.5; FP8 wo_b's 64 tiles split 8 ways (512 blocks, one wave).
std::pair<int, int> wgmma_plan(const GemmArgs& a, int grid_tiles) {
  const WFmt f = static_cast<WFmt>(a.fmt);
  const int64_t n_kb = a.K / 128, tiles = a.n_rows / 64 * a.n_z * grid_tiles;
  const int min_nkb = wfmt_fp4(f) ? 8 : 4;
  int best_kc = 0;
  for (int kc = 1; kc <= 8; kc *= 2) {
    if (n_kb % kc != 0) continue;
    const int64_t nkb = n_kb / kc;
    if (nkb > 32 || nkb < min_nkb || (nkb & (nkb - 1)) != 0) continue;  // the instantiated 4, 8, 16, 32
    const bool fits = tiles * kc <= resident_blocks(wg_shape(a, static_cast<int>(nkb), kc));
    if (best_kc == 0 || fits) best_kc = kc;
    if (!fits) break;
  }
  if (best_kc == 0) return {0, 0};
  const int64_t units = tiles / (a.swiglu_pairs ? 2 : 1);
  if ((best_kc > 1 || a.swiglu_pairs) && (units > kWsSlots || tiles * best_kc > kWsSlots)) return {0, 0};
  return {static_cast<int>(n_kb / best_kc), best_kc};
}

}  // namespace

void release_gemv_workspace(cudaStream_t stream) noexcept {
  std::lock_guard<std::mutex> lock(g_ws_mu);
  for (size_t i = 0; i < g_ws.size(); ++i)
    if (g_ws[i].stream == stream) {
      cudaFree(g_ws[i].ws.part);
      cudaFree(g_ws[i].ws.cnt);
      g_ws.erase(g_ws.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
}

void set_gemv_wgmma(int on) { g_wgmma.store(on < 0 ? -1 : on > 3 ? 3 : on, std::memory_order_relaxed); }
void set_gemv_wgmma_shallow(int on) { g_wgmma_shallow.store(on < 0 ? -1 : on > 0 ? 1 : 0, std::memory_order_relaxed); }

namespace {
// The level the environment asks for: CLAWMINE_GEMV_WGMMA=0 none; CLAWMINE_GEMV_WGMMA_EXPERTS=1 every
// expert launch, =0 none of them, unset the routed experts' FP4 down projections.
int wgmma_level_from_env() {
  if (!env_switch("CLAWMINE_GEMV_WGMMA", true)) return 0;
  const char* experts = std::getenv("CLAWMINE_GEMV_WGMMA_EXPERTS");
  if (experts == nullptr || *experts == '\0') return 2;
  return env_switch("CLAWMINE_GEMV_WGMMA_EXPERTS", false) ? 3 : 1;
}

// The launch's plan (k blocks per warpgroup, split) when the wgmma GEMV takes it, else {0, 0}.
std::pair<int, int> applicable_plan(const GemmArgs& a, bool x_bf16, int grid_tiles) {
#ifndef CLAWMINE_CUDA_SM90A
  return {0, 0};
#else
  const int on = env_setting(g_wgmma, wgmma_level_from_env);
  const WFmt f = static_cast<WFmt>(a.fmt);
  const bool fp4 = wfmt_fp4(f);
  if (on < 1 || !x_bf16 || !(f == WFmt::kFp8E8M0 || f == WFmt::kFp8F32 || fp4)) return {0, 0};
  if (a.K % 512 != 0 || a.n_rows % 64 != 0 || a.n_z < 1 || a.n_z > 65535 || grid_tiles < 1 || grid_tiles > 65535)
    return {0, 0};
  const int64_t row_bytes = fp4 ? a.K / 2 : a.K;
  if (row_bytes * a.n_rows * a.n_z * grid_tiles < kWgmmaMinBytes) return {0, 0};
  if (reinterpret_cast<uintptr_t>(a.x) % 16 != 0 || a.ldx % 8 != 0 || a.x_z % 8 != 0) return {0, 0};
  if (a.swiglu_pairs && (a.n_z != 2 || a.x_z != 0)) return {0, 0};
  if (has_tile_table(a)) {
    // Expert launches of one-row tiles (decode: row_problem; a plan's table at <= 10 tokens). Alone
    // they are 1.1-1.3x faster (tools/gemv_probe, H200, MXFP4 gate/up 27.6 -> 20.5 us, down 15.5 ->
    // 11.7; NVFP4 28.1 -> 25.5, 16.3 -> 14.5). In a decode step (docs/PERFORMANCE.md,
    // twenty-seventh session) the MXFP4 down projections alone on wgmma gain (5.91-5.96 -> 5.78-5.81
    // ms/token), the gate/up pairs alone less (5.85-5.88) and both together lose (5.96-6.15); NVFP4
    // down alone 6.03-6.07 -> 5.99-6.02 (every NVFP4 launch on wgmma: 6.69). So by default only the
    // FP4 down projections (one problem per launch), every expert launch at level 3 (FP8 experts
    // are not measured in a step).
    if (on < 2 || a.descs == nullptr || a.tile_rows != 1) return {0, 0};
    if (on < 3 && (a.n_z != 1 || !fp4)) return {0, 0};  // n_z 2: gate/up
  } else if (a.descs != nullptr) {
    // A descriptor table without tiles at one token: the shared expert's w1 / w3 (swiglu_mlp, 16
    // MiB at V4-Flash's dims), paired (SwiGLU by the last split) or not; each z's own weights.
    if ((fp4 && on < 3) || grid_tiles != 1 || a.rows != 1 || a.x_rows != nullptr ||
        a.desc0.row_bytes != row_bytes)
      return {0, 0};
  } else {
    // Dense: one token, rows of a 128-row FP8 scale block in whole 64-row tiles; FP4 (no
    // release-layout projection; NVFP4's are slower on it: wo_b 11.05 against 10.19 us alone) only
    // at level 3.
    if ((fp4 && on < 3) || a.descs != nullptr || grid_tiles != 1 || a.rows != 1 ||
        a.x_rows != nullptr || a.swiglu_pairs || a.w_row_z % 64 != 0 || a.desc0.row_bytes != row_bytes ||
        reinterpret_cast<uintptr_t>(a.desc0.w) % 16 != 0)
      return {0, 0};
  }
  if (device_cc_major() != 9) return {0, 0};
  return wgmma_plan(a, grid_tiles);
#endif
}
}  // namespace

bool gemv_wgmma_applies(const GemmArgs& a, bool x_bf16, int grid_tiles) {
  return applicable_plan(a, x_bf16, grid_tiles).first > 0;
}

bool launch_gemv_wgmma(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream) {
  const std::pair<int, int> plan = applicable_plan(a, x_bf16, grid_tiles);
  const int nkb = plan.first, kc = plan.second;
  if (nkb == 0) return false;
  const dim3 grid(static_cast<unsigned>(a.n_rows / 64 * kc), static_cast<unsigned>(grid_tiles),
                  static_cast<unsigned>(a.n_z));
  const SplitWorkspace ws = (kc > 1 || a.swiglu_pairs) ? split_workspace(stream) : SplitWorkspace{};
  launch_kernel_pdl(gemv_pdl(), wgmma_kernel(wg_shape(a, nkb, kc)), grid, dim3(128), wgmma_smem(nkb),
                    stream, a, ws.part, ws.cnt);
  CLAWMINE_CUDA_LAUNCHED("gemv_wgmma");
  return true;
}

}  // namespace clawmine::backend::cuda
