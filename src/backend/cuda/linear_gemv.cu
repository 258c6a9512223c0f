// Decode-sized projections (tiles of <= 16 activation rows): weight-streaming GEMV.
// Block = 256 threads split into row groups of S threads (S = 32..256, chosen so each thread
// gets about kUnroll 16-byte chunks of a row); a group owns R consecutive output rows and its
// threads stride over the rows' 16-byte chunks. Per iteration a thread issues kUnroll x R
// independent 16-byte loads (weights bypass L1), decodes them in registers (exact unscaled
// values through WeightDecoder<F>::raw) and multiplies every value with the tile's NT
// activation rows, so the weight is read once for the whole tile; block scales multiply the
// partial sum of each 8-element piece (so the sum's rounding order differs from the CPU's
// exactly decoded weights only at float accumulation level). x rows are read through L1 (the same chunk of x
// serves all R rows). Sums: float32 per thread, warp shuffle, then the S/32 warps of a group
// in fixed order through shared memory: deterministic, no atomics.
//   grid (ceil(n_rows / (groups*R)), tiles, n_z), block 256.
#include <cuda_bf16.h>

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

// Fallback for rows that are not 16-byte aligned (odd shapes): one warp per output row,
// element by element, every activation row of the tile in turn.
template <WFmt F, typename XT>
__global__ void __launch_bounds__(kThreads) gemv_scalar_kernel(const GemmArgs a) {
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
  gemv_kernel<F, XT, NT><<<grid, kThreads, 0, stream>>>(a, S);
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

}  // namespace

void launch_gemv(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream) {
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

void launch_gemv_scalar(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream) {
  if (grid_tiles <= 0 || a.n_rows <= 0) return;
  const int64_t blocks = (a.n_rows + kThreads / 32 - 1) / (kThreads / 32);
  CLAWMINE_CHECK(blocks <= 0x7fffffff && grid_tiles <= 65535 && a.n_z <= 65535, "gemv_scalar: grid too large");
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(grid_tiles), static_cast<unsigned>(a.n_z));
  dispatch_wfmt(static_cast<WFmt>(a.fmt), [&](auto f) {
    constexpr WFmt F = decltype(f)::value;
    if (x_bf16) {
      gemv_scalar_kernel<F, __nv_bfloat16><<<grid, kThreads, 0, stream>>>(a);
    } else {
      gemv_scalar_kernel<F, float><<<grid, kThreads, 0, stream>>>(a);
    }
  });
  CLAWMINE_CUDA_LAUNCHED("gemv_scalar");
}

}  // namespace clawmine::backend::cuda
