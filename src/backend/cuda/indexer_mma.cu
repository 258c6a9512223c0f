// Lightning-indexer scores on tensor cores (indexer_mma.cuh; spec §3.3 E):
//   scores[t, j] = sum_h relu(q[t,h] . keys[j]) * (weights[t,h] * weight_scale)
// for j < min(N, (positions[t]+1)/rate), else -inf. BF16 q/keys, mma.sync m16n8k16, F32 accumulators.
//
// Per token t the scores are S = Q_t K^T (M = 64 heads as 4 m16 tiles, N = keys, K = Di = 128)
// followed by a weighted relu reduction over M. A block owns kTokens consecutive tokens (one
// warp each) and a range of key tiles (all of them, or one split when there are few tokens):
//  - each warp holds its token's whole Q_t [64 x 128] as A fragments in registers (128 words),
//    loaded once with 16-byte global loads;
//  - key tiles of kTileKeys rows stream through shared memory with cp.async, two stages deep
//    (tile i+1 loads while tile i is computed), and every warp of the block reads each one;
//  - per 16 keys a warp runs 64 mma (4 m tiles x 2 n8 tiles x 8 k steps), then reduces
//    relu(S[h, j]) * w[h] over its 64 heads: 8 heads per thread in registers (m tile ascending,
//    row g before g + 8), then 3 butterfly levels over the lanes that hold the other heads
//    (lane bits 4, 3, 2; the first two also hand off half of the values, so 4 shuffles give the
//    16 sums). A fixed order: the same inputs give the same bits.
// k permutation: a thread's A and B fragments of k step 2p + s take physical dims
// 32p + 8c + 4s + {0,1} (logical 2c, 2c+1) and 32p + 8c + 4s + {2,3} (logical 2c+8, 2c+9),
// c = lane % 4. A dot product sums over all k in any order, so permuting k the same way in A
// and B changes nothing, and each thread reads its dims 32p + 8c .. +7 as one 16-byte load
// (q from global, keys from shared) that feeds two k steps.
// Shared key rows are 256 bytes with the 16-byte chunks of odd rows XOR-swizzled by 4: the 8
// lanes of one 16-byte-load phase (rows g, g+1, chunks 4p..4p+3) hit 8 different bank groups.
// Causal skipping: a block stops at the tile holding its last valid key (max over its tokens);
// a warp skips the arithmetic of any 16 keys past its own token's limit. Blocks are issued
// latest tokens first (the most keys when positions grow with t), so the short ones fill the tail.
#include "backend/cuda/indexer_mma.cuh"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/mma_sync.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kHeads = 64;                            // M per token: 4 m16 tiles
constexpr int kDim = 128;                             // K: 4 blocks of 32 dims, 2 k steps each
constexpr int kTokens = 4;                            // tokens per block, one warp each
constexpr int kThreads = kTokens * 32;
constexpr int kTileKeys = 64;                         // keys per shared-memory stage
constexpr int kGroupKeys = 16;                        // keys per warp step (2 n8 tiles)
constexpr int kRowBytes = kDim * 2;                   // one BF16 key row
constexpr int kRowChunks = kRowBytes / 16;            // 16-byte chunks per row
constexpr int kStageBytes = kTileKeys * kRowBytes;    // 16 KiB
constexpr int kStages = 2;
constexpr int64_t kTargetBlocks = 512;                // split keys until about this many blocks
static_assert(kStages * kStageBytes <= 48 * 1024, "static shared memory");

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// c += a . b; A 16x16 (row), B 16x8 (col), BF16, F32 accumulators. Fragments of lane (g, c) =
// (lane / 4, lane % 4): a = {A[g][2c..], A[g+8][2c..], A[g][2c+8..], A[g+8][2c+8..]},
// b = {B[2c..][g], B[2c+8..][g]}, acc = {C[g][2c], C[g][2c+1], C[g+8][2c], C[g+8][2c+1]}.
__device__ __forceinline__ void mma_bf16(float (&acc)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Word i (compile-time after unrolling) of a 16-byte vector.
__device__ __forceinline__ uint32_t word(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

__device__ __forceinline__ float relu_keep_nan(float x) { return x < 0.0f ? 0.0f : x; }

__device__ __forceinline__ int64_t causal_limit(const int32_t* positions, int64_t t, int64_t rate, int64_t N) {
  const int64_t v = (static_cast<int64_t>(positions[t]) + 1) / rate;
  return v < 0 ? 0 : v > N ? N : v;
}

// grid (ceil(T / kTokens), key splits), kThreads threads. Block (x, y) owns tokens
// (gridDim.x - 1 - x) * kTokens + warp and key tiles [y * tiles_per_split, +tiles_per_split).
template <typename TW>
__global__ void __launch_bounds__(kThreads, 2)
    indexer_scores_mma_kernel(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ keys,
                              const TW* __restrict__ w, float weight_scale, const int32_t* __restrict__ positions,
                              int64_t rate, int64_t T, int64_t N, int64_t tiles_per_split,
                              float* __restrict__ scores) {
  pdl_wait();
  pdl_trigger();
  __shared__ __align__(128) unsigned char sk[kStages * kStageBytes];
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane >> 2, c = lane & 3;
  const int64_t t0 = (static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x) * kTokens;
  const int64_t t = t0 + warp;

  // Causal limits: every thread computes all of the block's (the same values), so the tile
  // count below is block-uniform.
  int64_t block_valid = 0, my_valid = 0;
#pragma unroll
  for (int i = 0; i < kTokens; ++i) {
    const int64_t v = t0 + i < T ? causal_limit(positions, t0 + i, rate, N) : 0;
    block_valid = v > block_valid ? v : block_valid;
    if (i == warp) my_valid = v;
  }
  const int64_t n_tiles = (N + kTileKeys - 1) / kTileKeys;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t tile_range_end = tile_begin + tiles_per_split < n_tiles ? tile_begin + tiles_per_split : n_tiles;
  const int64_t valid_tiles = (block_valid + kTileKeys - 1) / kTileKeys;
  const int64_t tile_end = valid_tiles < tile_range_end ? valid_tiles : tile_range_end;  // may be <= tile_begin

  const uint32_t sbase = smem_addr(sk);
  auto load_tile = [&](int64_t tile, int stage) {
    const int64_t j0 = tile * kTileKeys;
#pragma unroll
    for (int e = static_cast<int>(threadIdx.x); e < kTileKeys * kRowChunks; e += kThreads) {
      const int row = e / kRowChunks, ch = e % kRowChunks;  // a warp: two whole rows (coalesced)
      const bool ok = j0 + row < N;
      const __nv_bfloat16* src = keys + (ok ? j0 + row : 0) * kDim + ch * 8;
      cp_async16(sbase + stage * kStageBytes + row * kRowBytes + ((ch ^ ((row & 1) << 2)) << 4), src, ok);
    }
    cp_async_commit();
  };
  if (tile_begin < tile_end) load_tile(tile_begin, 0);

  // This warp's token: Q_t as A fragments (qlo: head 16 m + g, qhi: head 16 m + g + 8; dims
  // 32p + 8c .. +7) and the scaled head weights of the same rows.
  uint4 qlo[4][4], qhi[4][4];
  float wlo[4], whi[4];
  if (my_valid > tile_begin * kTileKeys && tile_begin < tile_end) {  // it has live keys here
    const __nv_bfloat16* qt = q + t * (kHeads * kDim) + c * 8;
#pragma unroll
    for (int m = 0; m < 4; ++m) {
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        qlo[m][p] = __ldg(reinterpret_cast<const uint4*>(qt + (16 * m + g) * kDim + 32 * p));
        qhi[m][p] = __ldg(reinterpret_cast<const uint4*>(qt + (16 * m + g + 8) * kDim + 32 * p));
      }
      wlo[m] = to_f32(w[t * kHeads + 16 * m + g]) * weight_scale;
      whi[m] = to_f32(w[t * kHeads + 16 * m + g + 8]) * weight_scale;
    }
  } else {
#pragma unroll
    for (int m = 0; m < 4; ++m) {
#pragma unroll
      for (int p = 0; p < 4; ++p) qlo[m][p] = qhi[m][p] = make_uint4(0, 0, 0, 0);
      wlo[m] = whi[m] = 0.0f;
    }
  }

  float* out = scores + (t < T ? t : 0) * N;
  // The key this lane stores after the reduction: lane bit 4 picks the n8 tile, bit 3 the column
  // of the pair, c the pair; lanes with bit 2 set hold the same sums and store nothing.
  const int my_key = 8 * (lane >> 4) + 2 * c + ((lane >> 3) & 1);
  const bool storer = (lane & 4) == 0 && t < T;
  const int swz = (g & 1) << 2;  // rows g and 8 + g of a group have the parity of g

  for (int64_t i = tile_begin; i < tile_end; ++i) {
    cp_async_wait_all();
    __syncthreads();  // tile i landed for all threads; everyone is done with tile i - 1
    if (i + 1 < tile_end) load_tile(i + 1, static_cast<int>(i + 1 - tile_begin) & 1);
    const unsigned char* st = sk + (static_cast<int>(i - tile_begin) & 1) * kStageBytes;
#pragma unroll 1
    for (int grp = 0; grp < kTileKeys / kGroupKeys; ++grp) {
      const int64_t j0 = i * kTileKeys + grp * kGroupKeys;
      const int64_t j = j0 + my_key;
      float val = -INFINITY;
      if (j0 < my_valid) {  // warp-uniform
        float acc[4][2][4];
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
          for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[m][n][r] = 0.0f;
        const unsigned char* rows = st + (grp * kGroupKeys + g) * kRowBytes;
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          uint4 b[2];
#pragma unroll
          for (int n = 0; n < 2; ++n)
            b[n] = *reinterpret_cast<const uint4*>(rows + n * 8 * kRowBytes + (((4 * p + c) ^ swz) << 4));
#pragma unroll
          for (int s = 0; s < 2; ++s)
#pragma unroll
            for (int m = 0; m < 4; ++m)
#pragma unroll
              for (int n = 0; n < 2; ++n)
                mma_bf16(acc[m][n], word(qlo[m][p], 2 * s), word(qhi[m][p], 2 * s), word(qlo[m][p], 2 * s + 1),
                         word(qhi[m][p], 2 * s + 1), word(b[n], 2 * s), word(b[n], 2 * s + 1));
        }
        // Per thread: keys 8n + 2c + e, heads 16m + g and 16m + g + 8.
        float v[2][2];
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float sum = 0.0f;
#pragma unroll
            for (int m = 0; m < 4; ++m) {
              sum = fmaf(relu_keep_nan(acc[m][n][e]), wlo[m], sum);
              sum = fmaf(relu_keep_nan(acc[m][n][2 + e]), whi[m], sum);
            }
            v[n][e] = sum;
          }
        // Over g: lane bit 4 (keep n8 tile lane>>4 &1), bit 3 (keep column lane>>3 &1), bit 2.
        const bool b4 = (lane & 16) != 0, b3 = (lane & 8) != 0;
        float k0 = b4 ? v[1][0] : v[0][0], k1 = b4 ? v[1][1] : v[0][1];
        const float s0 = b4 ? v[0][0] : v[1][0], s1 = b4 ? v[0][1] : v[1][1];
        k0 += __shfl_xor_sync(0xffffffffu, s0, 16);
        k1 += __shfl_xor_sync(0xffffffffu, s1, 16);
        float kk = b3 ? k1 : k0;
        kk += __shfl_xor_sync(0xffffffffu, b3 ? k0 : k1, 8);
        kk += __shfl_xor_sync(0xffffffffu, kk, 4);
        if (j < my_valid) val = kk;
      }
      if (storer && j < N) out[j] = val;
    }
  }
  // Keys of this block's range past its last live tile: -inf.
  if (t < T) {
    const int64_t from = (tile_end > tile_begin ? tile_end : tile_begin) * kTileKeys;
    const int64_t to = tile_range_end * kTileKeys < N ? tile_range_end * kTileKeys : N;
    for (int64_t j = from + lane; j < to; j += 32) out[j] = -INFINITY;
  }
}

}  // namespace

bool launch_indexer_scores_mma(const __nv_bfloat16* q, const __nv_bfloat16* keys, const void* weights,
                               bool weights_bf16, float weight_scale, const int32_t* positions, int64_t rate,
                               int64_t T, int64_t Hi, int64_t Di, int64_t N, float* scores, cudaStream_t stream) {
  if (Hi != kHeads || Di != kDim || rate < 1 || T < 0 || N < 0) return false;
  if (T == 0 || N == 0) return true;
  if (reinterpret_cast<uintptr_t>(q) % 16 != 0 || reinterpret_cast<uintptr_t>(keys) % 16 != 0) return false;
  const int64_t token_blocks = (T + kTokens - 1) / kTokens;
  if (token_blocks > 0x7fffffff) return false;
  // Few tokens: split the key tiles over blocks (grid by shape only), each split reading its
  // tokens' Q once more; at prefill sizes (T >= 4 * kTargetBlocks) one split.
  const int64_t n_tiles = (N + kTileKeys - 1) / kTileKeys;
  int64_t splits = (kTargetBlocks + token_blocks - 1) / token_blocks;
  splits = splits < 1 ? 1 : splits > n_tiles ? n_tiles : splits;
  const int64_t tiles_per_split = (n_tiles + splits - 1) / splits;
  splits = (n_tiles + tiles_per_split - 1) / tiles_per_split;
  const dim3 grid(static_cast<unsigned>(token_blocks), static_cast<unsigned>(splits));
  if (weights_bf16) {
    launch_kernel(indexer_scores_mma_kernel<__nv_bfloat16>, grid, kThreads, 0, stream, q, keys,
                  static_cast<const __nv_bfloat16*>(weights), weight_scale, positions, rate, T, N, tiles_per_split,
                  scores);
  } else {
    launch_kernel(indexer_scores_mma_kernel<float>, grid, kThreads, 0, stream, q, keys,
                  static_cast<const float*>(weights), weight_scale, positions, rate, T, N, tiles_per_split, scores);
  }
  CLAWMINE_CUDA_LAUNCHED("indexer_scores_mma");
  return true;
}

}  // namespace clawmine::backend::cuda
