// Decode-sized projections (tiles of <= 16 activation rows): weight-streaming GEMV, two kernels
// over the same WeightDecoder<F> per format (launch_gemv picks one):
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
#include <cuda_bf16.h>

#include <algorithm>

#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;  // chunks per row in flight per thread and iteration
template <int NT>
constexpr int gemv_rows() {
  return NT >= 8 ? 2 : 4;  // R: output rows per group (R * NT accumulators per thread)
}

template <WFmt F, typename XT, int NT>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemmArgs a, const int S) {
  pdl_trigger();
  pdl_wait();
  using D = WeightDecoder<F>;
  constexpr int R = gemv_rows<NT>(), E = D::kChunk, P = D::kPiece, Q = E / P;
  static_assert(E % P == 0 && (P == 4 || P == 8), "decoder pieces of 4 or 8 elements");
  __shared__ const XT* xrow[NT];
  __shared__ float red[kThreads / 32][R * NT];

  Tile tile;
  if (!tile_of(a, blockIdx.y, tile)) return;  // uniform over the block
  const int z = blockIdx.z;
  const WeightDesc d = desc_of(a, tile.p, z);
  if (a.descs && d.fmt != static_cast<int32_t>(F)) return;  // another launch serves this format

  const int groups = kThreads / S, gi = threadIdx.x / S, li = threadIdx.x % S;
  const int64_t rblock = static_cast<int64_t>(blockIdx.x) * groups * R;
  const int64_t r0 = rblock + static_cast<int64_t>(gi) * R;
  int64_t wr[R];  // weight rows; rows past n_rows repeat the last one (computed, never stored)
#pragma unroll
  for (int i = 0; i < R; ++i) wr[i] = weight_row_base(a, z) + min(r0 + i, a.n_rows - 1);
  if (threadIdx.x < NT) {
    const int t = min(static_cast<int>(threadIdx.x), tile.nrows - 1);  // rows past the tile repeat its last
    xrow[threadIdx.x] = x_row<XT>(a, tile.row0 + t, z);
  }
  __syncthreads();

  const float g = global_scale<F>(d);
  float acc[R][NT];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[i][t] = 0.0f;

  const int64_t n_chunks = a.K / E;
  for (int64_t c0 = li; c0 < n_chunks; c0 += static_cast<int64_t>(S) * kUnroll) {
    uint4 raw[kUnroll][R];
    typename D::Scales sc[kUnroll][R];
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
  pdl_trigger();
  pdl_wait();
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
  pdl_trigger();
  pdl_wait();
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
  launch_kernel(gemv_kernel<F, XT, NT>, grid, kThreads, 0, stream, a, S);
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
int multiprocessors() {
  static const int n = [] {
    int dev = 0, sms = 0;
    CLAWMINE_CUDA_CHECK(cudaGetDevice(&dev));
    CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
  }();
  return n;
}

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

bool gemv_mma_supported(WFmt f) {
  return f == WFmt::kBF16 || f == WFmt::kFp8E8M0 || f == WFmt::kFp8F32 || f == WFmt::kMxfp4 || f == WFmt::kNvfp4;
}

void launch_gemv(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream) {
  if (grid_tiles <= 0 || a.n_rows <= 0) return;
  const WFmt f = static_cast<WFmt>(a.fmt);
  // Dense BF16 at one or two tokens decodes nothing: the FMA kernel's row-contiguous loads stream
  // it faster (tools/gemv_probe: 3.17 vs 2.74 TB/s on the 129280 x 4096 head, H100).
  if (!x_bf16 || !gemv_mma_supported(f) || (f == WFmt::kBF16 && a.tile_rows <= 2)) {
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
