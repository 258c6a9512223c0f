// The one-token FP8 GEMV on wgmma (sm_90a): y[r] = sum_k W[r, k] x[k] for E4M3 weights with
// 128 x 128 block scales (E8M0 or F32) and BF16 activations, at decode's one token
// (docs/PERFORMANCE.md, twenty-fifth session: tools/gemv_probe's FP8 wo_b and wq_b at 71-72% of
// copy against 54-58% on the streaming kernel's mma.sync chain).
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
// griddepcontrol.wait, so back-to-back launches (with PDL too) never share it; launches on two
// streams at once would (a decode step launches these on its main stream only).
//
// PDL: the first kNS k blocks' weights and scales are loaded before griddepcontrol.wait (no tile
// table: weights_before_wait), the activations after it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <atomic>
#include <mutex>
#include <vector>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/device.h"
#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kNS = 4;  // k blocks of weights held in registers (kNS - 1 in flight)

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

__device__ __forceinline__ uint32_t word_of8(const uint4& a, const uint4& b, int i) {
  const uint4& q = i < 4 ? a : b;
  switch (i & 3) {
    case 0: return q.x;
    case 1: return q.y;
    case 2: return q.z;
    default: return q.w;
  }
}
__device__ __forceinline__ uint32_t e4m3x2_bits(float a, float b) {
  return static_cast<uint32_t>(__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3));
}
__device__ __forceinline__ float2 e4m3x2_floats(uint32_t v) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(v), __NV_E4M3);
  return __half22float2(*reinterpret_cast<const __half2*>(&h));
}

// Stages the activations of k blocks [kb0, kb0 + kNkb) of x as B tiles: [kNkb][4 steps][2 k
// halves][8 columns][16 bytes], then fac[kNkb][4] = 2^-p per chunk (NaN when the chunk has a
// non-finite element). Thread e = (k block, chunk, step) converts 8 consecutive elements.
template <int kNkb>
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
    if (m > 0.0f) frexpf(m, &ex);  // m = f 2^ex, f in [0.5, 1)
    const int p = (m > 0.0f && !bad) ? 8 - ex : 0;
    const int p1 = p > 100 ? 100 : p;  // 2^p in two exact steps (p <= 157 for bf16 subnormals)
    const float f1 = ldexpf(1.0f, p1), f2 = ldexpf(1.0f, p - p1);
    uint32_t hw[2] = {0u, 0u}, lw[2] = {0u, 0u};
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const float y0 = bad ? 0.0f : v[4 * h + 2 * q] * f1 * f2, y1 = bad ? 0.0f : v[4 * h + 2 * q + 1] * f1 * f2;
        const uint32_t hi = e4m3x2_bits(y0, y1);
        const float2 hb = e4m3x2_floats(hi);
        const uint32_t lo = e4m3x2_bits(y0 - hb.x, y1 - hb.y);
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

// Grid (64-row tiles * KC, 1, n_z); split rank = blockIdx.x % KC takes k blocks
// [rank * kNkb, +kNkb). The whole k loop is unrolled (kNkb % kNS == 0): with a run-time trip count
// ptxas serializes the wgmma (C7514), as it cannot tell the two accumulator sets apart across
// the back edge.
template <WFmt F, int kNkb, int KC>
__device__ __forceinline__ void gemv_wgmma_body(const GemmArgs& a, float* part, unsigned* cnt) {
  static_assert(kNkb % kNS == 0, "whole rounds of stages");
  using D = WeightDecoder<F>;
  pdl_trigger();
  extern __shared__ __align__(128) uint8_t sm[];  // B tiles [kNkb KB], then fac [kNkb][4]
  float* fac = reinterpret_cast<float*>(sm + kNkb * 1024);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = lane & 3;
  const int z = static_cast<int>(blockIdx.z);
  const int rank = KC > 1 ? static_cast<int>(blockIdx.x % KC) : 0;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.x / KC) * 64;
  const WeightDesc d = a.desc0;
  const int64_t wbase = weight_row_base(a, z);
  const int64_t lr0 = tile0 + warp * 16 + (lane >> 2), lr1 = lr0 + 8;  // rows of this problem
  const int kb0 = rank * kNkb;
  const uint8_t* wp0 = d.w + (wbase + lr0) * d.row_bytes + kb0 * 128 + 32 * t;
  const uint8_t* wp1 = d.w + (wbase + lr1) * d.row_bytes + kb0 * 128 + 32 * t;
  const uint8_t* srow = D::scale_row(d, wbase + tile0);  // 64 rows inside one 128-row scale block
  uint4 buf[kNS][4];
  uint32_t sb[kNS];
  auto load = [&](int st, int i) {
    buf[st][0] = ld_stream16(wp0 + i * 128);
    buf[st][1] = ld_stream16(wp0 + i * 128 + 16);
    buf[st][2] = ld_stream16(wp1 + i * 128);
    buf[st][3] = ld_stream16(wp1 + i * 128 + 16);
    sb[st] = D::scale_bits(srow, static_cast<int64_t>(kb0 + i) * 8);  // chunk of 16: block (kb0 + i)
  };
#pragma unroll
  for (int st = 0; st < kNS; ++st) load(st, st);
  pdl_wait();
  stage_x<kNkb>(static_cast<const __nv_bfloat16*>(a.x) + z * a.x_z, kb0, sm, fac);

  float acc0 = 0.0f, acc1 = 0.0f;
  float dd[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  auto drain = [&](int par, int st, int j) {
    const float fj = D::block_scale_of(sb[st]) * fac[j * 4 + t];
    acc0 = fmaf(dd[par][0] + dd[par][1], fj, acc0);
    acc1 = fmaf(dd[par][2] + dd[par][3], fj, acc1);
  };
#pragma unroll
  for (int i0 = 0; i0 < kNkb; i0 += kNS) {
#pragma unroll
    for (int st = 0; st < kNS; ++st) {
      const int i = i0 + st, par = st & 1;
      wg_fence();
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint4 *q0 = &buf[st][0], *q1 = &buf[st][2];
        wgmma_e4m3(dd[par], word_of8(q0[0], q0[1], 2 * s), word_of8(q1[0], q1[1], 2 * s),
                   word_of8(q0[0], q0[1], 2 * s + 1), word_of8(q1[0], q1[1], 2 * s + 1),
                   smem_desc(sm + (i * 4 + s) * 256), s > 0);
      }
      wg_commit();
      wg_wait<1>();  // block i - 1's products are done: its registers and accumulators are free
      const int pst = (st + kNS - 1) % kNS;
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        keep(dd[par ^ 1][r]);
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
  drain((kNS - 1) & 1, kNS - 1, kNkb - 1);
  // Chunks 0..3 of each row: lanes t = 0..3 of the quad, in lane order.
  acc0 += __shfl_xor_sync(0xffffffffu, acc0, 1);
  acc0 += __shfl_xor_sync(0xffffffffu, acc0, 2);
  acc1 += __shfl_xor_sync(0xffffffffu, acc1, 1);
  acc1 += __shfl_xor_sync(0xffffffffu, acc1, 2);
  const int o0 = warp * 16 + (lane >> 2);  // this block's entries o0 and o0 + 8 of 64
  const bool live0 = tile0 + o0 < a.n_rows, live1 = tile0 + o0 + 8 < a.n_rows;
  if constexpr (KC == 1) {
    if (t == 0 && live0) store_out(a, 0, z, lr0, acc0);
    if (t == 0 && live1) store_out(a, 0, z, lr1, acc1);
  } else {
    // Partial sums to the workspace; the block that arrives last at the tile's counter sums them
    // in rank order (fixed order) and sets the counter back to zero for the next launch.
    const int64_t tg = static_cast<int64_t>(z) * (a.n_rows / 64) + blockIdx.x / KC;
    if (t == 0) {
      part[(tg * KC + rank) * 64 + o0] = acc0;
      part[(tg * KC + rank) * 64 + o0 + 8] = acc1;
    }
    __threadfence();
    __syncthreads();
    __shared__ unsigned last;
    if (threadIdx.x == 0) last = atomicAdd(cnt + tg, 1u) == KC - 1 ? 1u : 0u;
    __syncthreads();
    if (last) {
      __threadfence();
      if (threadIdx.x < 64 && tile0 + threadIdx.x < a.n_rows) {
        float s = 0.0f;
#pragma unroll
        for (int c = 0; c < KC; ++c) s += __ldcg(part + (tg * KC + c) * 64 + threadIdx.x);
        store_out(a, 0, z, tile0 + threadIdx.x, s);
      }
      if (threadIdx.x == 0) cnt[tg] = 0u;
    }
  }
}

template <WFmt F, int kNkb, int KC>
__global__ void __launch_bounds__(128) gemv_wgmma_kernel(const GemmArgs a, float* part, unsigned* cnt) {
  gemv_wgmma_body<F, kNkb, KC>(a, part, cnt);
}
// The split-k workspace of the ticket sums, per device: partial sums of up to kWsSlots
// (64-row tile, split) pairs and one counter per tile, zero between launches. Allocated on first
// use (the first decode steps run eagerly, before any graph capture).
constexpr int64_t kWsSlots = 1024;
struct SplitWorkspace {
  float* part = nullptr;
  unsigned* cnt = nullptr;
};
SplitWorkspace split_workspace() {
  static std::mutex mu;
  static std::vector<SplitWorkspace> per_device;
  int dev = 0;
  CLAWMINE_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (per_device.size() <= static_cast<size_t>(dev)) per_device.resize(static_cast<size_t>(dev) + 1);
  SplitWorkspace& w = per_device[static_cast<size_t>(dev)];
  if (w.part == nullptr) {
    CLAWMINE_CUDA_CHECK(cudaMalloc(&w.part, kWsSlots * 64 * sizeof(float)));
    CLAWMINE_CUDA_CHECK(cudaMalloc(&w.cnt, kWsSlots * sizeof(unsigned)));
    CLAWMINE_CUDA_CHECK(cudaMemset(w.cnt, 0, kWsSlots * sizeof(unsigned)));
  }
  return w;
}

// Blocks a launch aims for (tools/gemv_probe, H200: 512 blocks of one warpgroup at ~118 registers,
// ~4 per SM): the split doubles while the grid has fewer.
constexpr int64_t kWgmmaTargetBlocks = 512;

template <WFmt F, int kNkb, int KC>
void launch_cfg(const GemmArgs& a, dim3 grid, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(kNkb) * 1024 + kNkb * 16;
  const SplitWorkspace ws = KC > 1 ? split_workspace() : SplitWorkspace{};
  launch_kernel_pdl(gemv_pdl(), gemv_wgmma_kernel<F, kNkb, KC>, grid, dim3(128), smem, stream, a, ws.part, ws.cnt);
  CLAWMINE_CUDA_LAUNCHED("gemv_wgmma");
}

std::atomic<int> g_wgmma{-1};  // -1 until CLAWMINE_GEMV_WGMMA is read

int device_cc_major() {
  static const int major = [] {
    int dev = 0, v = 0;
    CLAWMINE_CUDA_CHECK(cudaGetDevice(&dev));
    CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev));
    return v;
  }();
  return major;
}

// Only weights of >= 16 MiB (tools/gemv_probe, H200, FP8 at one token: wo_b and wq_b, 33.5 MB,
// 13.6 / 14.5 -> 10.9 / 11.1 us; at 8 MB, the shared expert's w1 / w2 and the indexer's wq_b, no
// faster: 5.0 / 4.8 / 4.4 against 4.8 / 4.8 / 4.8).
constexpr int64_t kWgmmaMinBytes = int64_t{16} << 20;

}  // namespace

void set_gemv_wgmma(int on) { g_wgmma.store(on < 0 ? -1 : on ? 1 : 0, std::memory_order_relaxed); }

bool gemv_wgmma_applies(const GemmArgs& a, bool x_bf16, int grid_tiles) {
#ifndef CLAWMINE_CUDA_SM90A
  return false;
#else
  int on = g_wgmma.load(std::memory_order_relaxed);
  if (on < 0) {
    int expected = -1;
    g_wgmma.compare_exchange_strong(expected, env_switch("CLAWMINE_GEMV_WGMMA", true) ? 1 : 0,
                                    std::memory_order_relaxed);
    on = g_wgmma.load(std::memory_order_relaxed);
  }
  const WFmt f = static_cast<WFmt>(a.fmt);
  const int64_t n_kb = a.K / 128;
  return on == 1 && x_bf16 && a.desc0.row_bytes * a.n_rows * a.n_z >= kWgmmaMinBytes && (f == WFmt::kFp8E8M0 || f == WFmt::kFp8F32) && grid_tiles == 1 && a.rows == 1 &&
         !has_tile_table(a) && a.descs == nullptr && a.x_rows == nullptr && !a.swiglu_pairs && a.K % 512 == 0 &&
         n_kb <= 8 * 16 && a.n_rows % 64 == 0 && a.w_row_z % 64 == 0 && a.x_z % 8 == 0 &&
         reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && a.desc0.row_bytes % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.desc0.w) % 16 == 0 && a.n_z <= 65535 && device_cc_major() == 9;
#endif
}

bool launch_gemv_wgmma(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream) {
  if (!gemv_wgmma_applies(a, x_bf16, grid_tiles)) return false;
  // k blocks per warpgroup: 8 where that leaves a power-of-two split of <= 8 (K = 1024 .. 8192),
  // else 4 or 16; the split doubles (halving nothing else) while the grid is under target.
  const int64_t n_kb = a.K / 128, tiles = a.n_rows / 64 * a.n_z;
  int nkb = n_kb % 8 == 0 ? 8 : 4;
  if (n_kb / nkb > 8) nkb = 16;
  int kc = static_cast<int>(n_kb / nkb);
  if (n_kb % nkb != 0 || kc > 8 || (kc & (kc - 1)) != 0) return false;
  // Fewer k blocks per warpgroup (more of the split) while the grid is small.
  while (nkb == 8 && kc < 8 && tiles * kc < kWgmmaTargetBlocks && n_kb % (kc * 2 * 4) == 0) {
    nkb = 4;
    kc *= 2;
  }
  if (kc > 1 && tiles * kc > kWsSlots) return false;
  const dim3 grid(static_cast<unsigned>(tiles / a.n_z * kc), 1u, static_cast<unsigned>(a.n_z));
  const WFmt f = static_cast<WFmt>(a.fmt);
  auto go = [&](auto fc) {
    constexpr WFmt F = decltype(fc)::value;
    auto by_kc = [&](auto nk) {
      constexpr int NK = decltype(nk)::value;
      switch (kc) {
        case 1: launch_cfg<F, NK, 1>(a, grid, stream); break;
        case 2: launch_cfg<F, NK, 2>(a, grid, stream); break;
        case 4: launch_cfg<F, NK, 4>(a, grid, stream); break;
        default: launch_cfg<F, NK, 8>(a, grid, stream); break;
      }
    };
    if (nkb == 4) by_kc(std::integral_constant<int, 4>{});
    else if (nkb == 8) by_kc(std::integral_constant<int, 8>{});
    else by_kc(std::integral_constant<int, 16>{});
  };
  if (f == WFmt::kFp8E8M0) go(std::integral_constant<WFmt, WFmt::kFp8E8M0>{});
  else go(std::integral_constant<WFmt, WFmt::kFp8F32>{});
  return true;
}

}  // namespace clawmine::backend::cuda
