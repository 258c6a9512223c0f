// Prefill-sized projections (64-row activation tiles): a weight tile is decoded exactly into
// shared memory next to an activation tile, then multiplied; W is never materialized beyond
// one tile. Two kernels, one template each over the weight format:
//   gemm_mma  bf16 activations with formats whose decoded values are exact in bf16 (dense BF16,
//             FP8 with E8M0 scales, MXFP4, NVFP4 without its global scale, applied in the
//             epilogue): mma.sync m16n8k16 bf16 -> f32. Block tile 64 rows x 128 features x 32 k,
//             8 warps of 32 x 32. Shared rows padded to 40 bf16 (80 bytes), so the fragment loads
//             (8 rows x 4 words per access) hit 32 distinct banks.
//   gemm_fma  everything else (float32 activations: --act-dtype f32 and the W8A8/W4A4
//             emulations; F32/F16 dense and F32-scaled FP8 weights): float32 FMA, block tile 64 x
//             64 x 32, 4 x 4 outputs per thread, tiles stored k-major so each k step reads one
//             float4 of x (broadcast) and one of W per thread.
//   grid (tiles, ceil(n_rows / BN), n_z), block 256. Rows, features and k are bounds-checked;
//   misaligned rows take element-wise tile loads (WeightDecoder<F>::one).
#include <cuda_bf16.h>

#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBK = 32;
static_assert(kGemmTileRows == 64, "both GEMM kernels use 64-row tiles");
// Formats whose decoded values are exact in BF16: the bf16 mma kernel serves them.
constexpr bool mma_format(WFmt f) {
  return f == WFmt::kBF16 || f == WFmt::kFp8E8M0 || f == WFmt::kMxfp4 || f == WFmt::kNvfp4;
}

// Decodes the weight tile rows [n0, n0 + BN) x k [k0, k0 + BK) of a problem (weight rows
// wbase + r; rows past n_rows and k past K read as 0) for both kernels: with 16-byte aligned
// rows (w_vec), one piece of P consecutive k values at a time, put(rr, kk, w[P]); else one value
// at a time, put1(rr, kk, v) (WeightDecoder<F>::one). kGlobal folds NVFP4's g into the values
// (gemm_fma); without it g is left to the caller's epilogue (gemm_mma).
template <WFmt F, int BN, int BK, bool kGlobal, typename Put, typename Put1>
__device__ __forceinline__ void decode_weight_tile(const GemmArgs& a, const WeightDesc& d, int64_t wbase, int64_t n0,
                                                   int64_t k0, float g, int w_vec, Put&& put, Put1&& put1) {
  using D = WeightDecoder<F>;
  constexpr int E = D::kChunk, P = D::kPiece, CPR = BK / E;
  static_assert(BK % E == 0, "a tile row holds whole chunks");
  if (w_vec) {
    for (int c = threadIdx.x; c < BN * CPR; c += kThreads) {
      const int rr = c / CPR, cc = c % CPR;
      const int64_t r = n0 + rr, kc = k0 + static_cast<int64_t>(cc) * E;
      if (r < a.n_rows && kc < a.K) {
        const int64_t wr = wbase + r;
        const uint4 raw = ld_stream16(d.w + wr * d.row_bytes + (kc / E) * 16);
        const typename D::Scales sc = D::load_scales(d, wr, kc / E);
#pragma unroll
        for (int q = 0; q < E / P; ++q) {
          float w[P];
          D::template piece<kGlobal>(raw, q, sc, g, w);
          put(rr, cc * E + q * P, w);
        }
      } else {
        const float zero[P] = {};
#pragma unroll
        for (int q = 0; q < E / P; ++q) put(rr, cc * E + q * P, zero);
      }
    }
  } else {
    for (int i = threadIdx.x; i < BN * BK; i += kThreads) {
      const int rr = i / BK, kk = i % BK;
      const int64_t r = n0 + rr, k = k0 + kk;
      put1(rr, kk, (r < a.n_rows && k < a.K) ? D::one(d, wbase + r, k, kGlobal ? g : 1.0f) : 0.0f);
    }
  }
}

// ---- float32 FMA ------------------------------------------------------------------------------
template <WFmt F, typename XT>
__global__ void __launch_bounds__(kThreads) gemm_fma_kernel(const GemmArgs a, const int w_vec, const int x_vec) {
  pdl_wait();
  pdl_trigger();
  using D = WeightDecoder<F>;
  constexpr int BM = 64, BN = 64, BK = kBK, P = D::kPiece;
  __shared__ __align__(16) float Xs[BK][BM + 4];
  __shared__ __align__(16) float Ws[BK][BN + 4];

  Tile tile;
  if (!tile_of(a, blockIdx.x, tile)) return;
  const int z = blockIdx.z;
  const WeightDesc d = desc_of(a, tile.p, z);
  if (a.descs && d.fmt != static_cast<int32_t>(F)) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t wbase = weight_row_base(a, z);
  const float g = global_scale<F>(d);
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int lr = tid / 4, lk = (tid % 4) * 8;  // activation loader: row lr, k lk..lk+7
  const bool lrow_ok = lr < tile.nrows;
  const XT* xp = lrow_ok ? x_row<XT>(a, tile.row0 + lr, z) : nullptr;

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (int64_t k0 = 0; k0 < a.K; k0 += BK) {
    {
      float v[8];
      if (!lrow_ok) {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = 0.0f;
      } else if (x_vec && k0 + lk + 8 <= a.K) {
        load_x<XT, 8>(xp + k0 + lk, v);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = k0 + lk + e < a.K ? to_f32(xp[k0 + lk + e]) : 0.0f;
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) Xs[lk + e][lr] = v[e];
    }
    decode_weight_tile<F, BN, BK, true>(
        a, d, wbase, n0, k0, g, w_vec,
        [&](int rr, int kk, const float* w) {
#pragma unroll
          for (int e = 0; e < P; ++e) Ws[kk + e][rr] = w[e];
        },
        [&](int rr, int kk, float v) { Ws[kk][rr] = v; });
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < BK; ++kk) {
      const float4 xv = *reinterpret_cast<const float4*>(&Xs[kk][ty * 4]);
      const float4 wv = *reinterpret_cast<const float4*>(&Ws[kk][tx * 4]);
      const float xs[4] = {xv.x, xv.y, xv.z, xv.w}, ws[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xs[i], ws[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = ty * 4 + i;
    if (m >= tile.nrows) break;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = n0 + tx * 4 + j;
      if (r < a.n_rows) store_out(a, tile.row0 + m, z, r, acc[i][j]);
    }
  }
}

// ---- bf16 tensor cores ------------------------------------------------------------------------
__device__ __forceinline__ uint32_t lds32(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <WFmt F>
__global__ void __launch_bounds__(kThreads) gemm_mma_kernel(const GemmArgs a, const int w_vec, const int x_vec) {
  pdl_wait();
  pdl_trigger();
  using D = WeightDecoder<F>;
  static_assert(D::kBf16Exact, "the MMA path needs weights exact in bf16");
  constexpr int BM = 64, BN = 128, BK = kBK, LD = BK + 8;
  static_assert(D::kPiece == 8, "pieces of 8 fill one 16-byte shared store");
  __shared__ __align__(16) __nv_bfloat16 Xs[BM][LD];
  __shared__ __align__(16) __nv_bfloat16 Ws[BN][LD];

  Tile tile;
  if (!tile_of(a, blockIdx.x, tile)) return;
  const int z = blockIdx.z;
  const WeightDesc d = desc_of(a, tile.p, z);
  if (a.descs && d.fmt != static_cast<int32_t>(F)) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t wbase = weight_row_base(a, z);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / 4, wn = warp % 4;  // warp tile: rows wm*32.., features wn*32..
  const int gq = lane / 4, tq = lane % 4;  // mma fragment coordinates
  const int lr = tid / 4, lk = (tid % 4) * 8;
  const bool lrow_ok = lr < tile.nrows;
  const __nv_bfloat16* xp = lrow_ok ? x_row<__nv_bfloat16>(a, tile.row0 + lr, z) : nullptr;

  float acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

  for (int64_t k0 = 0; k0 < a.K; k0 += BK) {
    {
      uint4 xv = make_uint4(0u, 0u, 0u, 0u);
      if (lrow_ok) {
        if (x_vec && k0 + lk + 8 <= a.K) {
          xv = __ldg(reinterpret_cast<const uint4*>(xp + k0 + lk));
        } else {
          uint16_t h[8];
#pragma unroll
          for (int e = 0; e < 8; ++e)
            h[e] = k0 + lk + e < a.K ? __bfloat16_as_ushort(xp[k0 + lk + e]) : static_cast<uint16_t>(0);
          xv = make_uint4(h[0] | (uint32_t{h[1]} << 16), h[2] | (uint32_t{h[3]} << 16), h[4] | (uint32_t{h[5]} << 16),
                          h[6] | (uint32_t{h[7]} << 16));
        }
      }
      *reinterpret_cast<uint4*>(&Xs[lr][lk]) = xv;
    }
    decode_weight_tile<F, BN, BK, false>(
        a, d, wbase, n0, k0, 1.0f, w_vec,
        [&](int rr, int kk, const float* w) {
          *reinterpret_cast<uint4*>(&Ws[rr][kk]) = make_uint4(pack_bf16x2(w[0], w[1]), pack_bf16x2(w[2], w[3]),
                                                              pack_bf16x2(w[4], w[5]), pack_bf16x2(w[6], w[7]));
        },
        [&](int rr, int kk, float v) { Ws[rr][kk] = __float2bfloat16_rn(v); });
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      uint32_t af[2][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int m = wm * 32 + mi * 16 + gq;
        af[mi][0] = lds32(&Xs[m][ks + 2 * tq]);
        af[mi][1] = lds32(&Xs[m + 8][ks + 2 * tq]);
        af[mi][2] = lds32(&Xs[m][ks + 2 * tq + 8]);
        af[mi][3] = lds32(&Xs[m + 8][ks + 2 * tq + 8]);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int n = wn * 32 + ni * 8 + gq;
        bf[ni][0] = lds32(&Ws[n][ks + 2 * tq]);
        bf[ni][1] = lds32(&Ws[n][ks + 2 * tq + 8]);
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_bf16_16816(acc[mi][ni], af[mi], bf[ni]);
    }
    __syncthreads();
  }
  // Accumulator e of (mi, ni): row wm*32 + mi*16 + gq (+8 for e >= 2), feature wn*32 + ni*8 + 2tq (+1 for odd e).
  const float g = global_scale<F>(d);
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = wm * 32 + mi * 16 + gq + (e >= 2 ? 8 : 0);
        const int64_t r = n0 + wn * 32 + ni * 8 + 2 * tq + (e & 1);
        if (m < tile.nrows && r < a.n_rows) store_out(a, tile.row0 + m, z, r, acc[mi][ni][e] * g);
      }
}

dim3 gemm_grid(const GemmArgs& a, int grid_tiles, int bn) {
  const int64_t row_blocks = (a.n_rows + bn - 1) / bn;
  CLAWMINE_CHECK(row_blocks <= 65535 && a.n_z <= 65535 && grid_tiles <= 0x7fffffff, "gemm: grid too large (",
                 row_blocks, " row blocks, ", a.n_z, " problems)");
  return dim3(static_cast<unsigned>(grid_tiles), static_cast<unsigned>(row_blocks), static_cast<unsigned>(a.n_z));
}

}  // namespace

bool mma_supported(WFmt f) { return mma_format(f); }

void launch_gemm_fma(const GemmArgs& a, bool x_bf16, bool w_vec, bool x_vec, int grid_tiles, cudaStream_t stream) {
  if (grid_tiles <= 0 || a.n_rows <= 0) return;
  const dim3 grid = gemm_grid(a, grid_tiles, 64);
  dispatch_wfmt(static_cast<WFmt>(a.fmt), [&](auto f) {
    constexpr WFmt F = decltype(f)::value;
    if (x_bf16) {
      launch_kernel(gemm_fma_kernel<F, __nv_bfloat16>, grid, kThreads, 0, stream, a, w_vec, x_vec);
    } else {
      launch_kernel(gemm_fma_kernel<F, float>, grid, kThreads, 0, stream, a, w_vec, x_vec);
    }
  });
  CLAWMINE_CUDA_LAUNCHED("gemm_fma");
}

void launch_gemm_mma(const GemmArgs& a, bool w_vec, bool x_vec, int grid_tiles, cudaStream_t stream) {
  if (grid_tiles <= 0 || a.n_rows <= 0) return;
  const dim3 grid = gemm_grid(a, grid_tiles, 128);
  const WFmt f = static_cast<WFmt>(a.fmt);
  if (!mma_supported(f)) throw Error(str_cat("cuda gemm_mma: format ", wfmt_name(f), " is not bf16-exact"));
  dispatch_wfmt(f, [&](auto fc) {
    constexpr WFmt F = decltype(fc)::value;
    if constexpr (mma_format(F)) launch_kernel(gemm_mma_kernel<F>, grid, kThreads, 0, stream, a, w_vec, x_vec);
  });
  CLAWMINE_CUDA_LAUNCHED("gemm_mma");
}

}  // namespace clawmine::backend::cuda
