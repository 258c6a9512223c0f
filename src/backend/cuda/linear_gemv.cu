// Decode-sized projections (tiles of <= 16 activation rows): weight-streaming GEMV, three kernels
// over the same WeightDecoder<F> per format (launch_gemv picks one):
//
// gemv_stream (bf16 activations, tiles of <= 16 tokens, CLAWMINE_GEMV=stream): the decode kernel,
//   built for bytes in flight and a short fixed cost. Tiles of 9-16 tokens run two n tiles (kN = 2:
//   each decoded A fragment feeds two HMMAs; no clusters; up to 16 warps share a block's staged
//   16 tokens, in up to 200 KB of shared memory). The same fragments as gemv_mma (below): a
//   warp owns an m-tile of 16 rows, lane (g, t) decodes chunk t of rows g and g+8 of each 64-byte
//   k block straight into mma.sync A fragments. The k blocks of a row are split into S*KC
//   contiguous segments (a power of two, doubled while every segment keeps >= 1 k block and the
//   grid stays under min(24, what the registers allow) warps per SM: small weights spread over
//   every SM, large ones loop); warp s of an m-tile in cluster rank c takes segment c*S + s. A
//   block holds mt m-tiles (W = S*mt warps; mt > 1 for tiles of >= 2 tokens whose m-tiles get
//   fewer than 4 warps, e.g. a batched step's experts), which share its staged activations.
//   Per lane, loads come in groups of U = 2 k blocks (2U x 16 bytes + their scale bits; U = 1 for
//   FP4's one-token experts: stream_group) into two register buffers: group i+2 is issued as soon
//   as group i is decoded, so a group is always in flight behind the math. Activations of the
//   block's k range are staged once in shared memory in decoder order (no x loads in the loop);
//   each k block's 4-8 HMMAs start from zero (short chains), FP8's block scale multiplies that sum. MXFP4 k blocks whose E8M0 scales are
//   all <= 2 (warp vote) decode each pair with one bf16 multiply. Sums: warps in order through
//   shared memory, then (KC = 2 or 4) the blocks of a thread-block cluster in rank order through
//   rank 0's shared memory (DSMEM): deterministic, no scratch, no atomics.
//   grid (16-row m-tiles / mt * KC, tiles, n_z), block 32W (W <= 16).
//
// gemv_mma (bf16 activations; BF16, FP8, MXFP4, NVFP4 weights): tensor cores do the products so
//   the cost per weight byte is the decode alone. A warp owns R m-tiles of 16 output rows; lane
//   (g, t) = (lane/4, lane%4) loads, for each 64-byte k block of a row (4 chunks of 16 bytes),
//   chunk t of rows g and g+8 and decodes it straight into mma.sync m16n8k16 A fragments: inside
//   an mma the order of k is free, so thread t's logical k slots {2t, 2t+1, 2t+8, 2t+9} of step
//   s hold elements 4s..4s+3 of its own chunk (decoder order), and the B fragment (token g, the
//   same chunk of x, permuted the same way by WeightDecoder::x_step) is loaded by the same lane.
//   A token tile of NT <= 8 rows is one n tile (tokens past the tile are zero columns), 16 is
//   two. Each thread keeps U*R*2 16-byte weight loads in flight (bypassing L1); x comes through
//   L1. The W warps of a block split k (warp w takes k blocks [(i*W + w)*U, +U) in iteration i)
//   and are summed in fixed order through shared memory: deterministic, no atomics. FP8's block
//   scale multiplies each k block's f32 partial sum; NVFP4's 2^8 * g multiplies the result.
//   grid (ceil(n_rows / 16R), tiles, n_z), block 32W.
//
// gemv_fma (float32 activations -- --act-dtype f32 and the W8A8/W4A4 transforms -- and dense
//   F32/F16 weights): block = 256 threads split into row groups of S threads (S = 32..256,
//   chosen so each thread gets about kUnroll 16-byte chunks of a row); a group owns R consecutive
//   output rows and its threads stride over the rows' 16-byte chunks. Per iteration a thread
//   issues kUnroll x R independent 16-byte loads (weights bypass L1), decodes them in registers
//   (exact unscaled values through WeightDecoder<F>::raw) and multiplies every value with the
//   tile's NT activation rows; block scales multiply the partial sum of each 8-element piece. x
//   rows are read through L1. Sums: float32 per thread, warp shuffle, then the S/32 warps of a
//   group in fixed order through shared memory: deterministic, no atomics.
//   grid (ceil(n_rows / (groups*R)), tiles, n_z), block 256.
//
// Both sum in float32 and differ from the CPU's exactly decoded weights only in rounding order.
//
// PDL (common.cuh): gemv_kernel and gemv_stream issue their first weight loads (gemv_kernel: the
// first iteration; gemv_stream: both register groups, optionally an L2 prefetch of the rest of
// the segment) before griddepcontrol.wait when the launch has no tile table (weights_before_wait,
// linear_kernels.cuh); activations after it. Launched as programmatic dependent launches with
// every kernel's (the default) or alone (CLAWMINE_PDL=0), their blocks start while the
// kernel before finishes and the first DRAM round trip overlaps it. Same loads, same math: the
// results are those of plain launches, bit for bit.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;  // chunks per row in flight per thread and iteration

// PDL for the GEMV kernels that load weights before the wait (gemv_kernel, gemv_stream): with
// every launch's (pdl_enabled(), the default), or alone (CLAWMINE_PDL=0; then CLAWMINE_GEMV_PDL=0
// turns it off too, set_gemv_pdl for tests): then only these launches may start while the kernel
// before them finishes. On the H100 (docs/PERFORMANCE.md) decode took 10.77 ms/token with it
// against 11.91 without, in the same call; PDL on every kernel: 11.89.
std::atomic<int> g_gemv_pdl{-1};  // -1 until CLAWMINE_GEMV_PDL is read
}  // namespace
bool gemv_pdl() {
  if (pdl_enabled()) return true;
  return env_setting(g_gemv_pdl, [] { return env_switch("CLAWMINE_GEMV_PDL", true) ? 1 : 0; }) == 1;
}
namespace {
template <int NT>
constexpr int gemv_rows() {
  return NT >= 8 ? 2 : 4;  // R: output rows per group (R * NT accumulators per thread)
}

// Dense weights with bf16 activations at <= 2 tokens (the BF16 head: ~32k blocks, many waves)
// take gemv_kernel3, capped at 80 registers (3 blocks per multiprocessor, as before the early
// loads, which cost 98 registers at 2 tokens uncapped; no spills at 80).
template <WFmt F, typename XT, int NT>
constexpr bool gemv_three_blocks() {
  return (F == WFmt::kF32 || F == WFmt::kBF16 || F == WFmt::kF16) && std::is_same_v<XT, __nv_bfloat16> && NT <= 2;
}

template <WFmt F, typename XT, int NT>
__device__ __forceinline__ void gemv_body(const GemmArgs& a, const int S) {
  // Launches without a tile table (or with tiles_early) issue their first iteration's weight
  // loads before griddepcontrol.wait (weights_before_wait); other tile-table launches wait first
  // (moe_plan's tiles) and only then let the next launch start.
  const bool early = weights_before_wait(a);
  pdl_begin(early);
  using D = WeightDecoder<F>;
  constexpr int R = gemv_rows<NT>(), E = D::kChunk, P = D::kPiece, Q = E / P;
  static_assert(E % P == 0 && (P == 4 || P == 8), "decoder pieces of 4 or 8 elements");
  __shared__ const XT* xrow[NT];
  __shared__ float red[kThreads / 32][R * NT];

  Tile tile;
  if (!tile_of(a, blockIdx.y, tile)) {  // uniform over the block
    if (early) pdl_wait();  // every block waits before it exits (weights_before_wait)
    return;
  }
  const int z = blockIdx.z;
  const WeightDesc d = desc_of(a, tile.p, z);
  if (a.descs && d.fmt != static_cast<int32_t>(F)) {  // another launch serves this format
    if (early) pdl_wait();
    return;
  }

  const int groups = kThreads / S, gi = threadIdx.x / S, li = threadIdx.x % S;
  const int64_t rblock = static_cast<int64_t>(blockIdx.x) * groups * R;
  const int64_t r0 = rblock + static_cast<int64_t>(gi) * R;
  int64_t wr[R];  // weight rows; rows past n_rows repeat the last one (computed, never stored)
#pragma unroll
  for (int i = 0; i < R; ++i) wr[i] = weight_row_base(a, z) + min(r0 + i, a.n_rows - 1);

  // Per iteration a thread loads chunks c0 + u*S (u < kUnroll) of its R rows; past K: zeros.
  const int64_t n_chunks = a.K / E;
  uint4 raw[kUnroll][R];
  typename D::Scales sc[kUnroll][R];
  auto load = [&](int64_t c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + static_cast<int64_t>(u) * S;
#pragma unroll
      for (int i = 0; i < R; ++i) {
        if (c < n_chunks) {
          raw[u][i] = ld_stream16(d.w + wr[i] * d.row_bytes + c * 16);
          sc[u][i] = D::load_scales(d, wr[i], c);
        } else {
          raw[u][i] = make_uint4(0u, 0u, 0u, 0u);
          sc[u][i] = typename D::Scales{};
        }
      }
    }
  };
  load(li);  // the first iteration (launches without a tile table: before the wait)
  const float g = global_scale<F>(d);
  if (early) pdl_wait();  // activations (and x_rows) are written by the kernels before this one

  if (threadIdx.x < NT) {
    const int t = min(static_cast<int>(threadIdx.x), tile.nrows - 1);  // rows past the tile repeat its last
    xrow[threadIdx.x] = x_row<XT>(a, tile.row0 + t, z);
  }
  __syncthreads();

  float acc[R][NT];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[i][t] = 0.0f;

  for (int64_t c0 = li; c0 < n_chunks; c0 += static_cast<int64_t>(S) * kUnroll) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + static_cast<int64_t>(u) * S;
      if (c >= n_chunks) break;
#pragma unroll
      for (int q = 0; q < Q; ++q) {
        // Unscaled weights of the piece; the block scale multiplies the piece's partial sum.
        float w[R][P], ps[R];
#pragma unroll
        for (int i = 0; i < R; ++i) {
          D::raw(raw[u][i], q, w[i]);
          ps[i] = D::piece_scale(sc[u][i], q, g);
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          float xv[P];
          load_x<XT, P>(xrow[t] + c * E + q * P, xv);
#pragma unroll
          for (int i = 0; i < R; ++i) {
            if constexpr (D::kScaled) {
              float part = w[i][0] * xv[0];
#pragma unroll
              for (int e = 1; e < P; ++e) part = fmaf(w[i][e], xv[e], part);
              if constexpr (D::kRawUnit != 1.0f) part *= D::kRawUnit;
              acc[i][t] = fmaf(part, ps[i], acc[i][t]);
            } else {
#pragma unroll
              for (int e = 0; e < P; ++e) acc[i][t] = fmaf(w[i][e], xv[e], acc[i][t]);
            }
          }
        }
      }
    }
    // The next iteration's loads, unconditionally (zeros past K, no access): raw is redefined
    // here, so its registers are free once decoded, as when the loads opened each iteration.
    load(c0 + static_cast<int64_t>(S) * kUnroll);
  }

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float v = warp_sum(acc[i][t]);
      if (lane == 0) red[warp][i * NT + t] = v;
    }
  __syncthreads();
  const int warps_per_group = S / 32;
  for (int o = threadIdx.x; o < groups * R * NT; o += kThreads) {
    const int grp = o / (R * NT), j = o % (R * NT);
    float s = 0.0f;
    for (int w = 0; w < warps_per_group; ++w) s += red[grp * warps_per_group + w][j];
    const int i = j / NT, t = j % NT;
    const int64_t r = rblock + static_cast<int64_t>(grp) * R + i;
    if (r < a.n_rows && t < tile.nrows) store_out(a, tile.row0 + t, z, r, s);
  }
}
template <WFmt F, typename XT, int NT>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemmArgs a, const int S) {
  gemv_body<F, XT, NT>(a, S);
}
template <WFmt F, typename XT, int NT>
__global__ void __launch_bounds__(kThreads, 3) gemv_kernel3(const GemmArgs a, const int S) {
  gemv_body<F, XT, NT>(a, S);
}

// ---- tensor-core GEMV ---------------------------------------------------------------------
constexpr int kMmaMaxWarps = 8;
constexpr int kStages = 4;  // staged loads: k groups in flight per warp (3) plus the one in use
// U k blocks of 64 bytes per row and iteration ("k group"): staged loads copy 128-byte row
// segments; direct loads keep R*U*2 = 8 16-byte loads in flight per thread.
template <int R, bool kStaged>
constexpr int mma_unroll() {
  return kStaged ? 2 : 4 / R;
}
// Warps per block at most: the staged ring (kStages x 16R rows x 128 bytes per warp) stays
// within 128 KB of shared memory.
template <int R, bool kStaged>
constexpr int mma_max_warps() {
  return kStaged ? std::min(kMmaMaxWarps, (128 << 10) / (kStages * 16 * R * 128)) : kMmaMaxWarps;
}
// Blocks of kMmaMaxWarps warps that must fit a multiprocessor by registers: 3 (at most 85
// registers, 24 warps) where the accumulators are few (one m-tile, one n tile), else 2 (128).
template <int NTL, int R>
constexpr int mma_min_blocks() {
  return NTL == 1 && R == 1 ? 3 : 2;
}
// Staged ring slot of 16-byte column c (0..7) of stage row r: the two rows a quarter warp reads
// with one LDS.128 (g = 2p, 2p+1) land in different halves of the 32 banks.
__device__ __forceinline__ int stage_slot(int r, int c) { return c ^ (((r & 1) << 2) | ((r >> 1) & 3)); }

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

template <WFmt F, int NTL, int R, bool kStaged>
__global__ void __launch_bounds__(mma_max_warps<R, kStaged>() * 32, mma_min_blocks<NTL, R>())
    gemv_mma_kernel(const GemmArgs a) {
  pdl_wait();
  pdl_trigger();
  using D = WeightDecoder<F>;
  static_assert(D::kMma, "format without a tensor-core GEMV decoder");
  constexpr int E = D::kChunk, STEPS = E / 4, XW = E / 2, U = mma_unroll<R, kStaged>(), ROWS = 16 * R;
  constexpr int NACC = R * NTL * 4, CPG = 4 * U;  // accumulators per thread, chunks per row and k group
  // Dynamic shared memory: [staged: W][kStages][ROWS][8] uint4 ring, then [W][NACC][32] floats.
  extern __shared__ uint4 smem[];

  Tile tile;
  if (!tile_of(a, blockIdx.y, tile)) return;  // uniform over the block
  const int z = blockIdx.z;
  const WeightDesc d = desc_of(a, tile.p, z);
  if (a.descs && d.fmt != static_cast<int32_t>(F)) return;  // another launch serves this format

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * ROWS;
  const int64_t wbase = weight_row_base(a, z);
  // Weight row of stage row r (m-tile r/16, fragment row r%16); rows past n_rows repeat the last.
  auto weight_row = [&](int r) { return wbase + min(m0 + r, a.n_rows - 1); };
  int64_t wrow[R][2];  // this lane's fragment rows g and g+8 of each m-tile
#pragma unroll
  for (int mi = 0; mi < R; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) wrow[mi][h] = weight_row(mi * 16 + h * 8 + g);
  // B columns of this lane: tokens g and g+8; tokens past the tile are zero columns.
  const __nv_bfloat16* xp[NTL];
#pragma unroll
  for (int ni = 0; ni < NTL; ++ni) {
    const int tok = ni * 8 + g;
    xp[ni] = tok < tile.nrows ? x_row<__nv_bfloat16>(a, tile.row0 + tok, z) : nullptr;
  }

  float acc[R][NTL][4];
#pragma unroll
  for (int mi = 0; mi < R; ++mi)
#pragma unroll
    for (int ni = 0; ni < NTL; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

  const int64_t n_chunks = a.K / E, n_kb = (n_chunks + 3) / 4, n_grp = (n_kb + U - 1) / U;
  const int64_t n_it = n_grp > warp ? (n_grp - warp + W - 1) / W : 0;  // k groups warp, warp+W, ...

  // One k group: raw[u][mi][h] = chunk 4*(grp*U + u) + t of fragment row (mi, h).
  auto compute = [&](const uint4 (&raw)[U][R][2], int64_t grp) {
    const int64_t c0 = grp * CPG;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t kb = grp * U + u, c = c0 + 4 * u + t;
      if (kb >= n_kb) break;  // uniform over the warp
      const bool ok = c < n_chunks;
      typename D::MmaScales sc[R][2];
      float bs[R][2];  // FP8 block scales (the k block's first chunk is always in range)
#pragma unroll
      for (int mi = 0; mi < R; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          sc[mi][h] = ok ? D::mma_scales(d, wrow[mi][h], c) : typename D::MmaScales{};
          if constexpr (D::kMmaBlockScale) bs[mi][h] = D::scale_at(d, wrow[mi][h], kb * 4 * E);
        }
      uint32_t xw[NTL][XW];
#pragma unroll
      for (int ni = 0; ni < NTL; ++ni) {
        if (xp[ni] != nullptr && ok) {
          const uint4* p = reinterpret_cast<const uint4*>(xp[ni] + c * E);
#pragma unroll
          for (int i = 0; i < XW / 4; ++i) {
            const uint4 v = __ldg(p + i);
            xw[ni][4 * i] = v.x, xw[ni][4 * i + 1] = v.y, xw[ni][4 * i + 2] = v.z, xw[ni][4 * i + 3] = v.w;
          }
        } else {
#pragma unroll
          for (int i = 0; i < XW; ++i) xw[ni][i] = 0u;
        }
      }
      float part[R][NTL][4];  // FP8: this k block's sums, before its block scale
#pragma unroll
      for (int mi = 0; mi < R; ++mi)
#pragma unroll
        for (int ni = 0; ni < NTL; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) part[mi][ni][e] = 0.0f;
#pragma unroll
      for (int s = 0; s < STEPS; ++s) {
        uint32_t b[NTL][2];
#pragma unroll
        for (int ni = 0; ni < NTL; ++ni) D::x_step(xw[ni], s, b[ni][0], b[ni][1]);
#pragma unroll
        for (int mi = 0; mi < R; ++mi) {
          uint32_t af[4];
          D::mma_step(raw[u][mi][0], sc[mi][0], s, af[0], af[2]);
          D::mma_step(raw[u][mi][1], sc[mi][1], s, af[1], af[3]);
#pragma unroll
          for (int ni = 0; ni < NTL; ++ni) mma_bf16_16816(D::kMmaBlockScale ? part[mi][ni] : acc[mi][ni], af, b[ni]);
        }
      }
      if constexpr (D::kMmaBlockScale) {
#pragma unroll
        for (int mi = 0; mi < R; ++mi)
#pragma unroll
          for (int ni = 0; ni < NTL; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = fmaf(part[mi][ni][e], bs[mi][e >> 1], acc[mi][ni][e]);
      }
    }
  };

  if constexpr (kStaged) {
    // Each warp streams its rows through a private ring of kStages k groups with cp.async (L2
    // only): one instruction copies 4 rows x 128 contiguous bytes; chunks past K are zero-filled.
    uint4* ring = smem + static_cast<size_t>(warp) * kStages * ROWS * CPG;
    const uint8_t* src[ROWS / 4];
#pragma unroll
    for (int i = 0; i < ROWS / 4; ++i) src[i] = d.w + weight_row(i * 4 + lane / 8) * d.row_bytes;
    const int col = lane % CPG;
    auto issue = [&](int64_t it) {
      const int64_t c = (it * W + warp) * CPG + col;
      const int bytes = c < n_chunks ? 16 : 0;
      uint4* st = ring + static_cast<int>(it % kStages) * ROWS * CPG;
#pragma unroll
      for (int i = 0; i < ROWS / 4; ++i) {
        const int r = i * 4 + lane / 8;
        cp_async16(st + r * CPG + stage_slot(r, col), bytes ? src[i] + c * 16 : src[i], bytes);
      }
    };
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < n_it) issue(s);
      cp_async_commit();
    }
    for (int64_t it = 0; it < n_it; ++it) {
      cp_async_wait<kStages - 2>();  // this lane's copies of group `it` have landed
      __syncwarp();                  // ... and every lane's; the stage read at it-1 is free again
      if (it + kStages - 1 < n_it) issue(it + kStages - 1);
      cp_async_commit();
      const uint4* st = ring + static_cast<int>(it % kStages) * ROWS * CPG;
      uint4 raw[U][R][2];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int mi = 0; mi < R; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int r = mi * 16 + h * 8 + g;
            raw[u][mi][h] = st[r * CPG + stage_slot(r, 4 * u + t)];
          }
      compute(raw, it * W + warp);
    }
    cp_async_wait<0>();
  } else {
    const uint8_t* wp[R][2];
#pragma unroll
    for (int mi = 0; mi < R; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) wp[mi][h] = d.w + wrow[mi][h] * d.row_bytes;
    for (int64_t it = 0; it < n_it; ++it) {
      const int64_t grp = it * W + warp;
      uint4 raw[U][R][2];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = grp * CPG + 4 * u + t;
#pragma unroll
        for (int mi = 0; mi < R; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            raw[u][mi][h] = c < n_chunks ? ld_stream16(wp[mi][h] + c * 16) : make_uint4(0u, 0u, 0u, 0u);
      }
      compute(raw, grp);
    }
  }

  float* red = reinterpret_cast<float*>(smem + (kStaged ? static_cast<size_t>(W) * kStages * ROWS * CPG : 0));
  float* mine = red + static_cast<size_t>(warp) * NACC * 32;
#pragma unroll
  for (int mi = 0; mi < R; ++mi)
#pragma unroll
    for (int ni = 0; ni < NTL; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) mine[((mi * NTL + ni) * 4 + e) * 32 + lane] = acc[mi][ni][e];
  __syncthreads();
  const float out_scale = D::kMmaOutUnit * global_scale<F>(d);
  for (int o = threadIdx.x; o < NACC * 32; o += blockDim.x) {
    const int j = o / 32, ln = o % 32;
    float v = 0.0f;
    for (int w = 0; w < W; ++w) v += red[(w * NACC + j) * 32 + ln];
    const int e = j % 4, ni = (j / 4) % NTL, mi = j / (4 * NTL);
    const int64_t r = m0 + mi * 16 + (ln >> 2) + (e >= 2 ? 8 : 0);
    const int tok = ni * 8 + 2 * (ln & 3) + (e & 1);
    if (r < a.n_rows && tok < tile.nrows) store_out(a, tile.row0 + tok, z, r, v * out_scale);
  }
}

// Fallback for rows that are not 16-byte aligned (odd shapes): one warp per output row,
// element by element, every activation row of the tile in turn.
template <WFmt F, typename XT>
__global__ void __launch_bounds__(kThreads) gemv_scalar_kernel(const GemmArgs a) {
  pdl_wait();
  pdl_trigger();
  using D = WeightDecoder<F>;
  Tile tile;
  if (!tile_of(a, blockIdx.y, tile)) return;
  const int z = blockIdx.z;
  const WeightDesc d = desc_of(a, tile.p, z);
  if (a.descs && d.fmt != static_cast<int32_t>(F)) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + warp;
  if (r >= a.n_rows) return;
  const int64_t wr = weight_row_base(a, z) + r;
  const float g = global_scale<F>(d);
  for (int t = 0; t < tile.nrows; ++t) {
    const XT* x = x_row<XT>(a, tile.row0 + t, z);
    float acc = 0.0f;
    for (int64_t k = lane; k < a.K; k += 32) acc = fmaf(D::one(d, wr, k, g), to_f32(x[k]), acc);
    acc = warp_sum(acc);
    if (lane == 0) store_out(a, tile.row0 + t, z, r, acc);
  }
}

template <WFmt F, typename XT, int NT>
void launch_gemv_nt(const GemmArgs& a, int grid_tiles, cudaStream_t stream) {
  constexpr int E = WeightDecoder<F>::kChunk;
  const int64_t n_chunks = a.K / E;
  int S = 32;
  while (S < kThreads && static_cast<int64_t>(S) * kUnroll < n_chunks) S *= 2;
  const int64_t rows_per_block = static_cast<int64_t>(kThreads / S) * gemv_rows<NT>();
  const int64_t blocks = (a.n_rows + rows_per_block - 1) / rows_per_block;
  CLAWMINE_CHECK(blocks <= 0x7fffffff && grid_tiles <= 65535 && a.n_z <= 65535, "gemv: grid too large");
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(grid_tiles), static_cast<unsigned>(a.n_z));
  if constexpr (gemv_three_blocks<F, XT, NT>()) {
    launch_kernel_pdl(gemv_pdl(), gemv_kernel3<F, XT, NT>, grid, kThreads, 0, stream, a, S);
  } else {
    launch_kernel_pdl(gemv_pdl(), gemv_kernel<F, XT, NT>, grid, kThreads, 0, stream, a, S);
  }
  CLAWMINE_CUDA_LAUNCHED("gemv");
}

template <WFmt F, typename XT>
void launch_gemv_typed(const GemmArgs& a, int grid_tiles, cudaStream_t stream) {
  switch (a.tile_rows) {
    case 1: launch_gemv_nt<F, XT, 1>(a, grid_tiles, stream); return;
    case 2: launch_gemv_nt<F, XT, 2>(a, grid_tiles, stream); return;
    case 4: launch_gemv_nt<F, XT, 4>(a, grid_tiles, stream); return;
    case 8: launch_gemv_nt<F, XT, 8>(a, grid_tiles, stream); return;
    case 16: launch_gemv_nt<F, XT, 16>(a, grid_tiles, stream); return;
  }
  throw Error(str_cat("cuda gemv: tile of ", a.tile_rows, " rows (expected 1, 2, 4, 8 or 16)"));
}

// Shape of a tensor-core GEMV launch: R m-tiles per warp and W warps per block splitting k (a
// power of two, at most one per k group): the largest W whose grid still fits the device in one
// wave (resident warps from the occupancy calculator), else W = 1.
int g_mma_staged = 1;  // set_gemv_mma_config (tools/gemv_probe)
int g_mma_rows = 0;
}  // namespace
namespace {
// An attribute of the current device, read once per attribute.
template <cudaDeviceAttr kAttr>
int device_attribute_once() {
  static const int v = [] {
    int dev = 0, x = 0;
    CLAWMINE_CUDA_CHECK(cudaGetDevice(&dev));
    CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&x, kAttr, dev));
    return x;
  }();
  return v;
}
}  // namespace
int multiprocessors() { return device_attribute_once<cudaDevAttrMultiProcessorCount>(); }
int device_cc_major() { return device_attribute_once<cudaDevAttrComputeCapabilityMajor>(); }
namespace {

template <WFmt F, int NTL, int R, bool kStaged>
size_t mma_smem(int W) {
  constexpr size_t kRingPerWarp = kStaged ? size_t{kStages} * 16 * R * 4 * mma_unroll<R, kStaged>() * 16 : 0;
  return W * kRingPerWarp + static_cast<size_t>(W) * R * NTL * 4 * 32 * sizeof(float);
}
// Resident warps per multiprocessor with blocks of W warps (W = 1, 2, 4, 8), computed once.
template <WFmt F, int NTL, int R, bool kStaged>
int64_t mma_resident_warps(int W) {
  static int64_t cache[4] = {0, 0, 0, 0};
  static const bool attr = [] {  // allow more than 48 KB of dynamic shared memory
    CLAWMINE_CUDA_CHECK(cudaFuncSetAttribute(gemv_mma_kernel<F, NTL, R, kStaged>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, 160 << 10));
    return true;
  }();
  (void)attr;
  const int i = W >= 8 ? 3 : W >= 4 ? 2 : W >= 2 ? 1 : 0;
  if (cache[i] == 0) {
    int nb = 0;
    CLAWMINE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, gemv_mma_kernel<F, NTL, R, kStaged>, W * 32,
                                                                      mma_smem<F, NTL, R, kStaged>(W)));
    cache[i] = std::max(1, nb) * static_cast<int64_t>(W);
  }
  return cache[i];
}

template <WFmt F, int NTL, int R, bool kStaged>
void launch_gemv_mma_cfg(const GemmArgs& a, int grid_tiles, cudaStream_t stream) {
  constexpr int E = WeightDecoder<F>::kChunk, U = mma_unroll<R, kStaged>();
  const int64_t n_grp = ((a.K / E + 3) / 4 + U - 1) / U;
  const int64_t row_blocks = (a.n_rows + 16 * R - 1) / (16 * R);
  const int64_t blocks = row_blocks * grid_tiles * a.n_z;
  int W = 1;
  for (int w = mma_max_warps<R, kStaged>(); w > 1; w /= 2) {
    if (w <= n_grp && blocks * w <= multiprocessors() * mma_resident_warps<F, NTL, R, kStaged>(w)) {
      W = w;
      break;
    }
  }
  CLAWMINE_CHECK(row_blocks <= 0x7fffffff && grid_tiles <= 65535 && a.n_z <= 65535, "gemv_mma: grid too large");
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(grid_tiles), static_cast<unsigned>(a.n_z));
  (void)mma_resident_warps<F, NTL, R, kStaged>(1);  // sets the shared-memory attribute
  launch_kernel(gemv_mma_kernel<F, NTL, R, kStaged>, grid, W * 32, mma_smem<F, NTL, R, kStaged>(W), stream, a);
  CLAWMINE_CUDA_LAUNCHED("gemv_mma");
}

template <WFmt F>
void launch_gemv_mma_typed(const GemmArgs& a, int grid_tiles, cudaStream_t stream) {
  if (a.tile_rows < 1 || a.tile_rows > kGemvMaxTileRows)
    throw Error(str_cat("cuda gemv: tile of ", a.tile_rows, " rows (expected 1..", kGemvMaxTileRows, ")"));
  const bool two_tiles = a.tile_rows > 8;  // a second n tile of 8 tokens
  // R = 2 (x fragments shared by two m-tiles) once there are m-tiles for > 256 blocks.
  const bool two_rows = g_mma_rows ? g_mma_rows == 2 : (a.n_rows + 15) / 16 >= 512;
  auto go = [&](auto ntl, auto r) {
    constexpr int NTL = decltype(ntl)::value, R = decltype(r)::value;
    if (g_mma_staged) {
      launch_gemv_mma_cfg<F, NTL, R, true>(a, grid_tiles, stream);
    } else {
      launch_gemv_mma_cfg<F, NTL, R, false>(a, grid_tiles, stream);
    }
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  if (two_tiles) {
    two_rows ? go(Two{}, Two{}) : go(Two{}, One{});
  } else {
    two_rows ? go(One{}, Two{}) : go(One{}, One{});
  }
}


// ---- streaming GEMV (decode) -----------------------------------------------------------------
// Built for bytes in flight and a short fixed cost at T <= 16 (see the file comment).
constexpr int kStreamMaxWarps = 16;      // W: warps per block, each on its own k segment
// U: k blocks (64 bytes of a row) per load group, 2 for every format. FP8 had 4 at 128 registers
// until the fifteenth session: 2 at 96 is as fast alone (tools/gemv_probe, H100, T = 1: wo_b 15.4 ->
// 15.2 us, wq_b 15.6 -> 15.3-15.5, wq_a 4.5 -> 4.2) and leaves a quarter of the register file to the
// side branches' kernels while wq_b's blocks are resident: decode b=1 7.41-7.45 -> 7.22-7.29 ms.
// FP4 at 4 (128 registers) was slower: MXFP4 wo_b 10.5 -> 12.6 us, moe13 30.4 -> 37.9.
constexpr int kStreamGroup = 2;
// FP4's one-token expert launches (row_problem tiles, kRows = 2) load groups of 1 k block: half the
// bytes in flight per warp, 72-78 registers instead of ~95. Twenty-second session (H100,
// tools/gemv_probe, T = 1): MXFP4 gate+up 29.2 -> 28.6 us, down 17.0 -> 16.0; NVFP4 30.4 -> 29.6 and
// 17.6 -> 17.2; decode b=1 6.71 -> 6.61 ms/token (three interleaved rounds). Not FP8's experts
// (45.2 -> 49.6 us) nor any dense projection (FP8 wo_b ~15.3 -> 19.3, MXFP4 10.7 -> 13.1).
template <WFmt F, int kRows>
constexpr int stream_group() {
  return kRows == 2 && (F == WFmt::kMxfp4 || F == WFmt::kNvfp4) ? 1 : kStreamGroup;
}
constexpr int kStreamMaxSplit = 64;      // k segments per m-tile: W * KC
constexpr int kStreamWarpsPerSm = 24;    // the split stops once the grid has this many warps per SM
// Tile tables (MoE experts at decode) split further, into more warps than are resident at once.
// tools/gemv_probe, H100, MXFP4 moe13 / moe2 at T = 1: 39.1 / 21.3 us at the earlier 20 warps per
// SM (the FP4 register limit), 30.5 / 17.1 at 48, 30.6 / 17.1 at 64, 32.7 / 22.1 at 96; T = 2:
// 65.0 / 34.1 -> 54.5 / 28.7 at 48 (docs/PERFORMANCE.md, fifth session).
constexpr int kStreamTileWarpsPerSm = 48;
constexpr int kStreamMaxTileRows = 16;   // one n tile of 8 tokens, two from 9 tokens (kN = 2)
constexpr size_t kStreamMaxSmem = 96 << 10;
// Two n tiles stage 16 tokens: 128 KB of activations at K = 4096 (the experts' gate/up).
constexpr size_t kStreamMaxSmem2 = 200 << 10;
constexpr size_t stream_max_smem(int n_tiles) { return n_tiles > 1 ? kStreamMaxSmem2 : kStreamMaxSmem; }
// Register cap: 80 (24 resident warps per SM) where ptxas needs no spills at that (BF16); FP4's
// and FP8's decode keep more live (FP4 at 80 spilled 44-56 bytes): 96, 20 warps per SM.
// Two n tiles (tiles of 9-16 tokens) keep 8 more accumulators and partial sums live: 128.
template <WFmt F, int kN = 1>
constexpr int stream_max_regs() {
  if (kN > 1) return 128;
  return F == WFmt::kMxfp4 || F == WFmt::kNvfp4 || F == WFmt::kFp8E8M0 || F == WFmt::kFp8F32 ? 96 : 80;
}

struct StreamShape {
  int32_t seg = 0;          // k blocks per warp segment
  int32_t n_kb = 0;         // k blocks per row: ceil(K / E / 4)
  int32_t xstride = 0;      // 32-bit words per staged token row: block chunks * E/2 + 4 (bank offset)
  int32_t l2_prefetch = 0;  // set_gemv_stream_l2_prefetch: prefetch the segment past the registers
  int32_t mt = 1;           // m-tiles per block (their warps share the staged activations)
};
bool g_stream_l2_prefetch = false;  // set_gemv_stream_l2_prefetch (tools/gemv_probe, tests)

// Bulk prefetch of [p, p + bytes) into L2 (sm_90; p and bytes multiples of 16): no registers, no
// completion to wait for; a hint that only moves the bytes' first DRAM read earlier.
__device__ __forceinline__ void l2_prefetch_bulk(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes));
#endif
}

__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait_acquire() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// Stores v at `local` (a shared-memory address of this kernel) in the block of cluster rank `rank`.
__device__ __forceinline__ void st_cluster_f32(const float* local, uint32_t rank, float v) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(local));
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(r), "f"(v) : "memory");
}

// One k block of this lane: rows g (w0, scale bits s0) and g+8 (w1, s1), chunk t, against the
// staged activations xv[n] of n tile n (tokens 8n..8n+7; E/2 words in decoder order); part[n] =
// the 16x8 tile's sums, from zero. The weight fragments are decoded once for the kN n tiles.
template <typename D, bool kFast, int kN>
__device__ __forceinline__ void stream_kblock(const uint4& w0, const uint4& w1, uint32_t s0, uint32_t s1,
                                              const uint2* const (&xv)[kN], float (&part)[kN][4]) {
  constexpr int STEPS = D::kChunk / 4;
  typename D::MmaScales sc0, sc1;
  if constexpr (kFast) {
    sc0 = D::mma_scales_fast(s0);
    sc1 = D::mma_scales_fast(s1);
  } else {
    sc0 = D::mma_scales_of(s0);
    sc1 = D::mma_scales_of(s1);
  }
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) part[n][e] = 0.0f;
#pragma unroll
  for (int s = 0; s < STEPS; ++s) {
    uint32_t af[4];
    if constexpr (kFast) {
      D::mma_step_fast(w0, sc0, s, af[0], af[2]);
      D::mma_step_fast(w1, sc1, s, af[1], af[3]);
    } else {
      D::mma_step(w0, sc0, s, af[0], af[2]);
      D::mma_step(w1, sc1, s, af[1], af[3]);
    }
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      const uint2 x2 = xv[n][s];  // shared memory, decoder order: step s's lo and hi words
      const uint32_t b[2] = {x2.x, x2.y};
      mma_bf16_16816(part[n], af, b);
    }
  }
}

// Block (blockIdx.x / KC, tile blockIdx.y, problem blockIdx.z) = sh.mt consecutive m-tiles of 16
// output rows (mt > 1 only with KC = 1), S = W / mt warps each; cluster rank c of KC, warp
// w = m*S + s of W owns k blocks [(c*S + s)*seg, +seg) of m-tile m. The m-tiles of a block share
// its staged activations. kN n tiles of 8 tokens: tiles of up to 8 * kN rows.
template <WFmt F, int KC, bool kPairs = false, int kRows = 0, int kN = 1>
__device__ __forceinline__ void gemv_stream_body(const GemmArgs& a, const StreamShape& sh) {
  // Launches without a tile table (or with tiles_early) issue both register groups' weight and
  // scale loads (and the optional L2 prefetch) before griddepcontrol.wait (weights_before_wait);
  // other tile-table launches wait first (moe_plan's tiles) and only then let the next launch start.
  const bool early = weights_before_wait(a);
  pdl_begin(early);
  using D = WeightDecoder<F>;
  static_assert(D::kMma, "format without a tensor-core GEMV decoder");
  constexpr int E = D::kChunk, XW = E / 2, U = stream_group<F, kRows>();
  extern __shared__ uint4 smem[];

  Tile tile;
  if (!tile_of<kRows>(a, blockIdx.y, tile)) {  // uniform over the block (and the cluster)
    if (early) pdl_wait();  // every block waits before it exits (weights_before_wait)
    return;
  }
  // Gate/up pairs (KC = 1, mt = 2): the block's two m-tiles are m-tile blockIdx.x of z = 0 and 1.
  constexpr bool pairs = kPairs && KC == 1;
  const int z = pairs ? (threadIdx.x >> 5) / ((blockDim.x >> 5) / sh.mt) : blockIdx.z;
  const WeightDesc d = desc_of(a, tile.p, z);
  if (a.descs && d.fmt != static_cast<int32_t>(F)) {  // another launch serves this format (pairs: both z)
    if (early) pdl_wait();
    return;
  }
  const uint32_t rank = KC > 1 ? cluster_rank() : 0u;
  if constexpr (KC > 1) cluster_arrive_relaxed();  // waited for before the first remote store

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int S = W / sh.mt, wseg = warp % S;  // warps per m-tile; this warp's segment
  const int64_t mblk = static_cast<int64_t>(blockIdx.x / KC) * (pairs ? 1 : sh.mt) * 16;  // the block's first row
  const int64_t m0 = mblk + (pairs ? 0 : static_cast<int64_t>(warp / S) * 16);            // this warp's m-tile
  const int64_t wbase = weight_row_base(a, z);
  // Fragment rows g and g+8 of the m-tile; rows past n_rows repeat the last (never stored).
  const int64_t wr0 = wbase + min(m0 + g, a.n_rows - 1), wr1 = wbase + min(m0 + 8 + g, a.n_rows - 1);
  const int n_chunks = static_cast<int>(a.K / E);  // < 2^26 (stream_plan)
  const int blk_kb0 = static_cast<int>(rank) * S * sh.seg;
  const int blk_kb1 = min(blk_kb0 + S * sh.seg, sh.n_kb);
  const int kb0 = blk_kb0 + wseg * sh.seg;
  const int kb1 = min(kb0 + sh.seg, sh.n_kb);
  const int kbl = min(kb1, (n_chunks - t + 3) / 4);  // k blocks kb < kbl have chunk 4*kb + t < n_chunks
  const int n_grp = kb1 > kb0 ? (kb1 - kb0 + U - 1) / U : 0;
  const uint8_t* wp0 = d.w + wr0 * d.row_bytes + (static_cast<int64_t>(kb0) * 4 + t) * 16;  // chunk 4*kb0 + t
  const uint8_t* wp1 = d.w + wr1 * d.row_bytes + (static_cast<int64_t>(kb0) * 4 + t) * 16;
  const uint8_t* sr0 = D::scale_row(d, wr0);
  const uint8_t* sr1 = D::scale_row(d, wr1);

  // Load group: for k block kb = kb0 + grp*U + u, this lane's chunk 4*kb + t of both rows (16
  // bytes each, L1 bypassed) and the scale bits the decode needs; past the segment or K: zeros.
  struct Buf {
    uint4 w[U][2];
    uint32_t s[U][2];
  };
  auto load = [&](Buf& b, int grp) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = grp * U + u, kb = kb0 + i;
      const bool ok = kb < kbl;
      b.w[u][0] = ok ? ld_stream16(wp0 + i * 64) : make_uint4(0u, 0u, 0u, 0u);
      b.w[u][1] = ok ? ld_stream16(wp1 + i * 64) : make_uint4(0u, 0u, 0u, 0u);
      // FP8: the 128x128 block of the k block (its first chunk, always inside K); FP4: the chunk's.
      const bool s_ok = D::kMmaBlockScale ? kb < kb1 : ok;
      const int sc = D::kMmaBlockScale ? kb * 4 : kb * 4 + t;
      b.s[u][0] = s_ok ? D::scale_bits(sr0, sc) : 0u;
      b.s[u][1] = s_ok ? D::scale_bits(sr1, sc) : 0u;
    }
  };
  Buf b0, b1;
  load(b0, 0);
  load(b1, 1);
  const float out_scale = D::kMmaOutUnit * global_scale<F>(d);
  if (early && sh.l2_prefetch && n_grp > 2 && lane < 16) {
    // The rest of the segment, k blocks [kb0 + 2U, kb1), of fragment row `lane` (rows past
    // n_rows repeat the last): its bytes up to the row's last chunk, one bulk prefetch into L2.
    const int kbp = kb0 + 2 * U, c_end = min(kb1 * 4, n_chunks);
    if (c_end > kbp * 4) {
      const int64_t row = wbase + min(m0 + lane, a.n_rows - 1);
      l2_prefetch_bulk(d.w + row * d.row_bytes + static_cast<int64_t>(kbp) * 64,
                       static_cast<uint32_t>(c_end - kbp * 4) * 16u);
    }
  }
  if (early) pdl_wait();  // activations (and x_rows) are written by the kernels before this one

  // Activations of the block's k range, every token of the tile, in decoder order (x_step), so
  // a lane reads its B fragments as they are; chunks past K are zeros (their weights are too).
  uint32_t* xs = reinterpret_cast<uint32_t*>(smem);
  {
    const int ncb = max(blk_kb1 - blk_kb0, 0) * 4;
    for (int i = threadIdx.x; i < tile.nrows * ncb; i += blockDim.x) {
      const int tok = i / ncb, cc = i % ncb;
      const int c = blk_kb0 * 4 + cc;
      uint32_t nat[XW];
      if (c < n_chunks) {
        const __nv_bfloat16* xr = x_row<__nv_bfloat16>(a, tile.row0 + tok, pairs ? 0 : z);  // pairs: x_z = 0
        const uint4* p = reinterpret_cast<const uint4*>(xr + c * E);
#pragma unroll
        for (int j = 0; j < XW / 4; ++j) {
          const uint4 v = __ldg(p + j);
          nat[4 * j] = v.x, nat[4 * j + 1] = v.y, nat[4 * j + 2] = v.z, nat[4 * j + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int j = 0; j < XW; ++j) nat[j] = 0u;
      }
      // Steps 2j and 2j+1 read natural words 4j..4j+3 only (every decoder) and fill words 4j..4j+3.
      uint4* dst = reinterpret_cast<uint4*>(xs + static_cast<int64_t>(tok) * sh.xstride + cc * XW);
#pragma unroll
      for (int j = 0; j < XW / 4; ++j) {
        uint4 q;
        D::x_step(nat, 2 * j, q.x, q.y);
        D::x_step(nat, 2 * j + 1, q.z, q.w);
        dst[j] = q;
      }
    }
  }
  __syncthreads();

  // Tokens past the tile read the last token's activations: their output columns are never stored.
  const uint32_t* xl[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n)
    xl[n] = xs + static_cast<int64_t>(min(8 * n + g, tile.nrows - 1)) * sh.xstride + ((kb0 - blk_kb0) * 4 + t) * XW;
  float acc[kN][4];
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
  auto compute = [&](const Buf& b, int grp) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kb = kb0 + grp * U + u;
      if (kb >= kb1) break;  // uniform over the warp
      const uint2* xv[kN];
#pragma unroll
      for (int n = 0; n < kN; ++n) xv[n] = reinterpret_cast<const uint2*>(xl[n] + (grp * U + u) * 4 * XW);
      float part[kN][4];
      if constexpr (D::kMmaFastScale) {
        if (__all_sync(0xffffffffu, D::mma_fast_ok(b.s[u][0]) && D::mma_fast_ok(b.s[u][1]))) {
          stream_kblock<D, true, kN>(b.w[u][0], b.w[u][1], b.s[u][0], b.s[u][1], xv, part);
        } else {
          stream_kblock<D, false, kN>(b.w[u][0], b.w[u][1], b.s[u][0], b.s[u][1], xv, part);
        }
      } else {
        stream_kblock<D, false, kN>(b.w[u][0], b.w[u][1], b.s[u][0], b.s[u][1], xv, part);
      }
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if constexpr (D::kMmaBlockScale) {  // c[0..1]: row g, c[2..3]: row g+8
          const float bs0 = D::block_scale_of(b.s[u][0]), bs1 = D::block_scale_of(b.s[u][1]);
          acc[n][0] = fmaf(part[n][0], bs0, acc[n][0]);
          acc[n][1] = fmaf(part[n][1], bs0, acc[n][1]);
          acc[n][2] = fmaf(part[n][2], bs1, acc[n][2]);
          acc[n][3] = fmaf(part[n][3], bs1, acc[n][3]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[n][e] += part[n][e];
        }
      }
    }
  };
  // Two register buffers: group i+2 is loaded as soon as group i is decoded, so one group is in
  // flight while the other is computed.
  for (int i = 0; i < n_grp; i += 2) {
    compute(b0, i);
    if (i + 2 < n_grp) load(b0, i + 2);
    if (i + 1 < n_grp) {
      compute(b1, i + 1);
      if (i + 3 < n_grp) load(b1, i + 3);
    }
  }

  // Each m-tile's warps summed in warp order through shared memory; then (KC > 1) the cluster's
  // block sums in rank order, pushed into rank 0's shared memory: fixed order, deterministic.
  constexpr int kT = 128 * kN;  // entries of one m-tile
  float* red = reinterpret_cast<float*>(xs + static_cast<int64_t>(a.tile_rows) * sh.xstride);  // [W][kN][4][32]
  float* cbuf = red + W * kT;                                                                   // [KC][kT]
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[((warp * kN + n) * 4 + e) * 32 + lane] = acc[n][e];
  __syncthreads();
  // Entry o = m*kT + n*128 + e*32 + lane: m-tile m of the block, row lane/4 (+8 for e >= 2) of it,
  // token 8*n + 2*(lane%4) + e%2.
  auto entry = [&](int o, int64_t& r, int& tok) {
    const int m = o / kT, n = (o >> 7) % kN, e = (o >> 5) & 3, ln = o & 31;
    r = mblk + m * 16 + (ln >> 2) + (e >= 2 ? 8 : 0);
    tok = 8 * n + 2 * (ln & 3) + (e & 1);
    return tok < tile.nrows && r < a.n_rows;
  };
  auto block_sum = [&](int o) {  // the S warps of m-tile o / kT
    const int m = o / kT, j = o % kT;
    float v = 0.0f;
    for (int w = m * S; w < (m + 1) * S; ++w) v += red[w * kT + j];
    return v;
  };
  if constexpr (KC == 1) {
    if constexpr (pairs) {  // entry o of m-tile 0 (gate) and o + 128 (up): the same row and token
      const float gate_scale = D::kMmaOutUnit * global_scale<F>(desc_of(a, tile.p, 0));
      const float up_scale = D::kMmaOutUnit * global_scale<F>(desc_of(a, tile.p, 1));
      for (int o = threadIdx.x; o < kT; o += blockDim.x) {
        int64_t r;
        int tok;
        if (!entry(o, r, tok)) continue;
        float gv = block_sum(o) * gate_scale, uv = block_sum(o + kT) * up_scale;
        if (a.out_bf16) {  // as stored by an unpaired launch, then read back
          gv = __bfloat162float(__float2bfloat16_rn(gv));
          uv = __bfloat162float(__float2bfloat16_rn(uv));
        }
        store_out(a, tile.row0 + tok, 0, r, swiglu_value(gv, uv, a.swiglu_limit));
      }
    } else {
      for (int o = threadIdx.x; o < kT * sh.mt; o += blockDim.x) {  // blocks of 1..16 warps
        int64_t r;
        int tok;
        if (entry(o, r, tok)) store_out(a, tile.row0 + tok, z, r, block_sum(o) * out_scale);
      }
    }
  } else {
    // Clusters only with W = 16 and kN = 1 (stream_plan): thread o < 128 owns entry o.
    static_assert(kN == 1, "clusters of one n tile");
    const int o = threadIdx.x;
    int64_t r = 0;
    int tok = 0;
    const bool live = o < 128 && entry(o, r, tok);
    const float v = live ? block_sum(o) : 0.0f;
    cluster_wait_acquire();  // every block of the cluster has started: rank 0's shared memory exists
    if (live) st_cluster_f32(cbuf + rank * 128 + o, 0u, v);
    cluster_arrive_release();
    cluster_wait_acquire();
    if (rank == 0 && live) {
      float s = 0.0f;
#pragma unroll
      for (int c = 0; c < KC; ++c) s += cbuf[c * 128 + o];
      store_out(a, tile.row0 + tok, z, r, s * out_scale);
    }
  }
}

// Without clusters: one instantiation per (gate/up pairs, row_problem tiles, n tiles), so neither
// the paired epilogue (swiglu in double) nor the third tile mode costs the others registers.
template <WFmt F, bool kPairs, int kRows, int kN = 1>
__global__ void __maxnreg__((stream_max_regs<F, kN>())) gemv_stream_kernel(const GemmArgs a, const StreamShape sh) {
  gemv_stream_body<F, 1, kPairs, kRows, kN>(a, sh);
}
template <WFmt F, int KC>
__global__ void __cluster_dims__(KC, 1, 1) __maxnreg__(stream_max_regs<F>())
    gemv_stream_cluster_kernel(const GemmArgs a, const StreamShape sh) {
  gemv_stream_body<F, KC>(a, sh);
}

// Shape of a streaming launch: split = S * KC k segments per m-tile, a power of two, doubled
// while every segment keeps >= 1 k block and the grid stays within kStreamWarpsPerSm warps per
// multiprocessor (register-limited; tile tables: kStreamTileWarpsPerSm); S = min(split, 16) warps
// per m-tile, KC = split / S blocks per cluster. Tiles of >= 2 tokens whose m-tiles get fewer
// than kStreamMtWarps warps (many units, so the split stays small: the routed experts of a
// batched step) put mt m-tiles in one block of W = S * mt warps: the staged activations (tokens x
// the whole k range) are loaded once for mt m-tiles, and shared memory no longer limits the
// resident warps (H100, batch 32, tiles of 4 tokens: docs/PERFORMANCE.md, ninth session).
constexpr int kStreamMtWarps = 4;
int g_stream_mt = 0;  // set_gemv_stream_mtiles: 0 = the plan's choice, else m-tiles per block
struct StreamPlan {
  int W = 1, KC = 1, kN = 1;
  int64_t m_tiles = 0, blocks_x = 0;
  StreamShape sh;
  size_t smem = 0;
};
bool stream_plan(const GemmArgs& a, int grid_tiles, WFmt f, int warps_per_sm, StreamPlan& p) {
  if (a.tile_rows < 1 || a.tile_rows > kStreamMaxTileRows || a.K <= 0) return false;
  const int E = wfmt_chunk(f);
  const int64_t n_kb = (a.K / E + 3) / 4;
  p.m_tiles = (a.n_rows + 15) / 16;
  if (n_kb < 1 || n_kb > (1 << 24) || p.m_tiles * kStreamMaxSplit > 0x7fffffff) return false;  // int math in-kernel
  const int64_t units = p.m_tiles * grid_tiles * a.n_z;
  // Tile-table launches (the routed experts: moe_plan's tiles) wait for the tiles before their
  // first load, so nothing of theirs streams early; they take more, shorter k segments.
  const int per_sm = has_tile_table(a) ? kStreamTileWarpsPerSm : std::min(kStreamWarpsPerSm, warps_per_sm);
  const int64_t target = static_cast<int64_t>(multiprocessors()) * per_sm;
  p.kN = a.tile_rows > 8 ? 2 : 1;
  const int max_split = p.kN > 1 ? kStreamMaxWarps : kStreamMaxSplit;  // two n tiles: no clusters
  int split = 1;
  while (split < max_split && split * 2 <= n_kb && units * split * 2 <= target) split *= 2;
  const int S = std::min(split, kStreamMaxWarps);
  p.KC = split / S;  // > 1 only with S = 16: the kernel's cluster epilogue needs >= 128 threads
  p.sh.mt = 1;
  if (p.KC == 1) {
    if (g_stream_mt > 0) {
      while (p.sh.mt * 2 <= g_stream_mt && S * p.sh.mt * 2 <= kStreamMaxWarps) p.sh.mt *= 2;
    } else if (a.tile_rows >= 2) {
      // Two n tiles: a block's staged 16 tokens are costly in shared memory, so up to 16 warps share them.
      const int mt_warps = p.kN > 1 ? kStreamMaxWarps : kStreamMtWarps;
      while (S * p.sh.mt * 2 <= mt_warps && p.sh.mt * 2 <= p.m_tiles) p.sh.mt *= 2;
    }
  }
  p.W = S * p.sh.mt;
  p.blocks_x = (p.m_tiles + p.sh.mt - 1) / p.sh.mt * p.KC;
  p.sh.n_kb = static_cast<int32_t>(n_kb);
  p.sh.seg = static_cast<int32_t>((n_kb + split - 1) / split);
  p.sh.xstride = S * p.sh.seg * 4 * (E / 2) + 4;
  p.sh.l2_prefetch = g_stream_l2_prefetch ? 1 : 0;
  p.smem = (static_cast<size_t>(a.tile_rows) * p.sh.xstride + static_cast<size_t>(p.W) * 128 * p.kN +
            (p.KC > 1 ? static_cast<size_t>(p.KC) * 128 : 0)) *
           4;
  return p.smem <= stream_max_smem(p.kN);
}

// The paired launch of a gate/up launch a (gemv_swiglu_pairs): a's plan when it has one m-tile
// per block, no cluster and one n tile, with twice the warps per block (z = warp / S) and one
// block per m-tile.
bool stream_pairs_plan(const GemmArgs& a, int grid_tiles, WFmt f, int warps_per_sm, StreamPlan& p) {
  if (a.n_z != 2 || a.x_z != 0 || !stream_plan(a, grid_tiles, f, warps_per_sm, p)) return false;
  if (p.KC != 1 || p.sh.mt != 1 || p.kN != 1 || 2 * p.W > kStreamMaxWarps) return false;
  p.W *= 2;
  p.sh.mt = 2;
  p.smem = (static_cast<size_t>(a.tile_rows) * p.sh.xstride + static_cast<size_t>(p.W) * 128 * p.kN) * 4;
  return p.smem <= stream_max_smem(p.kN);
}

template <typename K>
void allow_stream_smem(K kernel, size_t bytes = kStreamMaxSmem) {
  CLAWMINE_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Resident warps per multiprocessor that the streaming kernel's registers allow (65536 registers,
// allocated per warp in units of 8 per thread), computed once per format and n tiles.
template <WFmt F, int kN = 1>
int stream_warps_per_sm() {
  static const int n = [] {
    cudaFuncAttributes attr{};
    CLAWMINE_CUDA_CHECK(cudaFuncGetAttributes(&attr, gemv_stream_kernel<F, false, 1, kN>));
    const int regs = std::max(8, (attr.numRegs + 7) / 8 * 8);
    return std::max(1, std::min(64, 65536 / (regs * 32)));
  }();
  return n;
}

template <WFmt F, bool kPairs, int kRows, int kN = 1>
void launch_stream_kc1(const GemmArgs& a, dim3 grid, dim3 block, const StreamPlan& p, cudaStream_t stream) {
  static const bool once = (allow_stream_smem(gemv_stream_kernel<F, kPairs, kRows, kN>, stream_max_smem(kN)), true);
  (void)once;
  launch_kernel_pdl(gemv_pdl(), gemv_stream_kernel<F, kPairs, kRows, kN>, grid, block, p.smem, stream, a, p.sh);
}

template <WFmt F>
void launch_gemv_stream_typed(const GemmArgs& a, int grid_tiles, const StreamPlan& p, cudaStream_t stream) {
  CLAWMINE_CHECK(grid_tiles <= 65535 && a.n_z <= 65535, "gemv_stream: grid too large");
  const dim3 grid(static_cast<unsigned>(p.blocks_x), static_cast<unsigned>(grid_tiles),
                  static_cast<unsigned>(a.swiglu_pairs ? 1 : a.n_z));
  const dim3 block(static_cast<unsigned>(p.W * 32));
  switch (p.KC) {
    case 1: {
      const bool direct = a.row_problem != nullptr;
      if (p.kN == 2) {  // tiles of 9-16 rows: neither row_problem's one-row tiles nor gate/up pairs
        CLAWMINE_CHECK(!direct && !a.swiglu_pairs, "gemv_stream: two n tiles with row_problem or pairs");
        launch_stream_kc1<F, false, 1, 2>(a, grid, block, p, stream);
      } else if (a.swiglu_pairs) {
        if (direct) launch_stream_kc1<F, true, 2>(a, grid, block, p, stream);
        else launch_stream_kc1<F, true, 1>(a, grid, block, p, stream);
      } else {
        if (direct) launch_stream_kc1<F, false, 2>(a, grid, block, p, stream);
        else launch_stream_kc1<F, false, 1>(a, grid, block, p, stream);
      }
      break;
    }
    case 2: {
      static const bool once = (allow_stream_smem(gemv_stream_cluster_kernel<F, 2>), true);
      (void)once;
      launch_kernel_pdl(gemv_pdl(), gemv_stream_cluster_kernel<F, 2>, grid, block, p.smem, stream, a, p.sh);
      break;
    }
    case 4: {
      static const bool once = (allow_stream_smem(gemv_stream_cluster_kernel<F, 4>), true);
      (void)once;
      launch_kernel_pdl(gemv_pdl(), gemv_stream_cluster_kernel<F, 4>, grid, block, p.smem, stream, a, p.sh);
      break;
    }
    default: throw Error(str_cat("cuda gemv_stream: cluster of ", p.KC, " blocks (expected 1, 2 or 4)"));
  }
  CLAWMINE_CUDA_LAUNCHED("gemv_stream");
}

}  // namespace

void launch_gemv_fma(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream) {
  if (grid_tiles <= 0 || a.n_rows <= 0) return;
  dispatch_wfmt(static_cast<WFmt>(a.fmt), [&](auto f) {
    constexpr WFmt F = decltype(f)::value;
    if (x_bf16) {
      launch_gemv_typed<F, __nv_bfloat16>(a, grid_tiles, stream);
    } else {
      launch_gemv_typed<F, float>(a, grid_tiles, stream);
    }
  });
}

void set_gemv_mma_config(int staged, int rows) {
  g_mma_staged = staged;
  g_mma_rows = rows;
}

void set_gemv_stream_l2_prefetch(bool on) { g_stream_l2_prefetch = on; }

void set_gemv_stream_mtiles(int n) { g_stream_mt = n < 0 ? 0 : n; }

void set_gemv_pdl(int on) { g_gemv_pdl.store(on < 0 ? -1 : on ? 1 : 0, std::memory_order_relaxed); }

bool gemv_mma_supported(WFmt f) {
  return f == WFmt::kBF16 || f == WFmt::kFp8E8M0 || f == WFmt::kFp8F32 || f == WFmt::kMxfp4 || f == WFmt::kNvfp4;
}

namespace {
std::atomic<int> g_gemv_kernel{-1};  // GemvKernel; -1 until CLAWMINE_GEMV is read
}  // namespace

GemvKernel gemv_kernel_in_use() {
  return static_cast<GemvKernel>(env_setting(g_gemv_kernel, [] {
    const char* env = std::getenv("CLAWMINE_GEMV");
    if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return static_cast<int>(GemvKernel::kAuto);
    if (std::strcmp(env, "mma") == 0) return static_cast<int>(GemvKernel::kMma);
    if (std::strcmp(env, "stream") == 0) return static_cast<int>(GemvKernel::kStream);
    throw Error(str_cat("CLAWMINE_GEMV=", env, ": expected auto, mma or stream"));
  }));
}

void set_gemv_kernel(GemvKernel k) {
  g_gemv_kernel.store(k == GemvKernel::kDefault ? -1 : static_cast<int>(k), std::memory_order_relaxed);
}

namespace {
// The GEMV kernel launch_gemv prefers for a (kStream may still fall back when its plan fails).
enum class GemvPath { kFma, kStream, kMma };
GemvPath gemv_path(const GemmArgs& a, bool x_bf16) {
  const WFmt f = static_cast<WFmt>(a.fmt);
  if (!x_bf16 || !gemv_mma_supported(f)) return GemvPath::kFma;
  GemvKernel kernel = gemv_kernel_in_use();
  if (kernel == GemvKernel::kAuto) {
    // FP8 weights of <= 4 MiB at <= 2 tokens (wq_a, wkv) through the FMA kernel: alone it is the
    // fastest for them (tools/gemv_probe, H100: wq_a 3.1 vs 4.2 stream us, wkv 2.3 vs 5.6).
    // Larger FP8 and every FP4 weight through the streaming kernel (wq_b 17.3 vs 19.9 mma; MXFP4
    // expert gate+up 31.9 vs 36.5); dense BF16 as kMma. The limit was 16 MiB until the fifteenth
    // session: the FMA kernel is also the fastest alone for the indexer queries' wq_b and the
    // shared expert's w2 (8 MiB each), but its 256-thread, 122-register blocks wait for the
    // registers of the kernels beside them in a decode step, where the streaming kernel's one-warp
    // blocks fit in: decode b=1 7.15-7.20 -> 7.10-7.17 ms/token (seven interleaved rounds;
    // docs/PERFORMANCE.md). Launches through a descriptor table size themselves by desc0 when they
    // set it (the shared expert's gate/up, swiglu_mlp: 16 MiB, so one paired streaming launch with
    // SwiGLU in its epilogue; with the shared expert forked after the route, decode b=1 7.09-7.17 ->
    // 6.92-6.93 ms/token, sixteenth session); the routed experts' tile tables stream anyway.
    const bool fp8 = f == WFmt::kFp8E8M0 || f == WFmt::kFp8F32;
    const int64_t bytes = a.desc0.row_bytes * a.n_rows * a.n_z;
    if (fp8 && !has_tile_table(a) && a.tile_rows <= 2 && bytes <= (int64_t{4} << 20)) return GemvPath::kFma;
    // Expert tile tables of several rows per tile (batched decode) stream too, now that several
    // m-tiles share a block's staged activations: MXFP4 experts at 32 tokens (tiles of 4 rows)
    // 239 + 121 us (gate+up, down) against 312 + 160 through kMma (tools/gemv_probe, H100;
    // docs/PERFORMANCE.md, ninth session).
    kernel = f == WFmt::kBF16 ? GemvKernel::kMma : GemvKernel::kStream;
  }
  return kernel == GemvKernel::kStream ? GemvPath::kStream : GemvPath::kMma;
}

// Computes a's streaming plan p (gate/up pairs: the paired plan) and calls then(F tag, p) when it
// holds; false when it does not or the format has no tensor-core decoder (never streams).
template <typename Then>
bool with_stream_plan(const GemmArgs& a, int grid_tiles, Then&& then) {
  bool ok = false;
  dispatch_wfmt(static_cast<WFmt>(a.fmt), [&](auto fc) {
    constexpr WFmt F = decltype(fc)::value;
    if constexpr (WeightDecoder<F>::kMma) {
      StreamPlan p;
      const int wps = a.tile_rows > 8 ? stream_warps_per_sm<F, 2>() : stream_warps_per_sm<F>();
      ok = a.swiglu_pairs ? stream_pairs_plan(a, grid_tiles, F, wps, p) : stream_plan(a, grid_tiles, F, wps, p);
      if (ok) then(fc, p);
    }
  });
  return ok;
}

// Whether a's streaming plan holds; with a stream, also launches it there.
bool stream_planned(const GemmArgs& a, int grid_tiles, const cudaStream_t* stream) {
  return with_stream_plan(a, grid_tiles, [&](auto fc, const StreamPlan& p) {
    if (stream != nullptr) launch_gemv_stream_typed<decltype(fc)::value>(a, grid_tiles, p, *stream);
  });
}
}  // namespace

bool gemv_stream_shape(const GemmArgs& a, int grid_tiles, GemvStreamShape& s) {
  return with_stream_plan(a, grid_tiles, [&](auto, const StreamPlan& p) {
    s = {p.W, p.KC, p.sh.mt, p.sh.seg, p.sh.n_kb, p.blocks_x};
  });
}

bool gemv_swiglu_pairs(const GemmArgs& a, bool x_bf16, int grid_tiles) {
  GemmArgs paired = a;
  paired.swiglu_pairs = 1;
  return grid_tiles > 0 && a.n_rows > 0 && gemv_path(a, x_bf16) == GemvPath::kStream &&
         stream_planned(paired, grid_tiles, nullptr);
}

void launch_gemv(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream) {
  if (grid_tiles <= 0 || a.n_rows <= 0) return;
  const WFmt f = static_cast<WFmt>(a.fmt);
  const GemvPath path = gemv_path(a, x_bf16);
  if (path == GemvPath::kStream && launch_gemv_wgmma(a, x_bf16, grid_tiles, stream)) return;
  if (path == GemvPath::kStream && stream_planned(a, grid_tiles, &stream)) return;
  CLAWMINE_CHECK(!a.swiglu_pairs,
                 "gemv: gate/up pairs without a paired streaming plan (check gemv_swiglu_pairs first)");
  if (path == GemvPath::kFma) {
    launch_gemv_fma(a, x_bf16, grid_tiles, stream);
    return;
  }
  // Dense BF16 at one or two tokens decodes nothing: the FMA kernel's row-contiguous loads stream
  // it faster (tools/gemv_probe: 3.17 vs 2.74 TB/s on the 129280 x 4096 head, H100).
  if (f == WFmt::kBF16 && a.tile_rows <= 2) {
    launch_gemv_fma(a, x_bf16, grid_tiles, stream);
    return;
  }
  dispatch_wfmt(f, [&](auto fc) {
    constexpr WFmt F = decltype(fc)::value;
    if constexpr (WeightDecoder<F>::kMma) launch_gemv_mma_typed<F>(a, grid_tiles, stream);
  });
}

void launch_gemv_scalar(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream) {
  if (grid_tiles <= 0 || a.n_rows <= 0) return;
  const int64_t blocks = (a.n_rows + kThreads / 32 - 1) / (kThreads / 32);
  CLAWMINE_CHECK(blocks <= 0x7fffffff && grid_tiles <= 65535 && a.n_z <= 65535, "gemv_scalar: grid too large");
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(grid_tiles), static_cast<unsigned>(a.n_z));
  dispatch_wfmt(static_cast<WFmt>(a.fmt), [&](auto f) {
    constexpr WFmt F = decltype(f)::value;
    if (x_bf16) {
      launch_kernel(gemv_scalar_kernel<F, __nv_bfloat16>, grid, kThreads, 0, stream, a);
    } else {
      launch_kernel(gemv_scalar_kernel<F, float>, grid, kThreads, 0, stream, a);
    }
  });
  CLAWMINE_CUDA_LAUNCHED("gemv_scalar");
}

}  // namespace clawmine::backend::cuda
