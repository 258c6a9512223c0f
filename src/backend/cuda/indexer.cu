// Lightning-indexer scores on the GPU (spec §3.3 E; ops/backend.h indexer_scores):
//   scores[t, j] = sum_h relu(q[t,h] . keys[j]) * (weights[t,h] * weight_scale)
// for j < min(N, (positions[t]+1)/rate), else -inf; float32 accumulation. Every path computes a
// score the same way, so its bits do not depend on the path: each dot product is one fmaf chain
// over d = 0 .. Di-1 starting at 0, and the heads are summed by one fmaf chain in head order (the
// prefill kernel's zero-padded heads add exact zeros: finite keys give the same bits).
//
// Two kernels:
//  - decode and small T (T <= kTileMaxT, Hi <= 64): indexer_tile_kernel, grid (key tiles, T).
//    A block scores a tile of 16 * KPT keys for one token and all 64 (padded) heads: q[t] and
//    the key tile are staged once in shared memory as f32, transposed ([Di][heads], [Di][keys]);
//    thread (key slot, head group) accumulates KPT keys x 4 heads per d (register tile), the
//    relu'd dot products go to shared memory, and one thread per key runs the head chain.
//    KPT (1, 4 or 8) keeps the grid at least one block per SM where the keys allow.
//  - prefill (larger T): indexer_scores_kernel. A block owns kIdxKeys keys (one per thread) and
//    up to kIdxTokens tokens; the key tile is staged once, transposed ([Di][keys], padded
//    against bank conflicts); for each token the block stages q[t] transposed ([Di][heads],
//    zero-padded to a multiple of kIdxHeadGroup) and each thread accumulates kIdxHeadGroup head
//    dot products at a time, reading q with broadcast 16-byte loads. Tiles beyond a token's
//    causal limit skip the arithmetic.
//  - prefill with BF16 q/keys at T >= kMmaMinT: the tensor-core kernel of indexer_mma.cu where
//    it takes the shape (64 heads x 128 dims); its head sum has another fixed order, so these
//    scores differ from the FMA kernels' in the last bits (within the tests' BF16 budget).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/indexer_mma.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kIdxKeys = 128;      // keys per block, one per thread
constexpr int kIdxTokens = 8;      // tokens per block sharing one key tile
constexpr int kIdxHeadGroup = 16;  // head accumulators per thread per pass
constexpr int kKeyStride = kIdxKeys + 1;

// The dynamic shared memory a kernel has been allowed so far (CudaBackend::op_state).
struct SmemOptIn {
  int64_t bytes = 0;
};

struct IndexerSmem {
  int64_t key_floats, q_offset, q_stride, w_offset, bytes;
};
// Layout: keys [Di][kKeyStride] | q [Di][Hp + 4] (16-byte aligned) | weights [Hp].
IndexerSmem indexer_smem(int64_t Di, int64_t Hp) {
  IndexerSmem s;
  s.key_floats = Di * kKeyStride;
  s.q_offset = (s.key_floats + 3) / 4 * 4;
  s.q_stride = Hp + 4;
  s.w_offset = s.q_offset + Di * s.q_stride;
  s.bytes = (s.w_offset + Hp) * static_cast<int64_t>(sizeof(float));
  return s;
}

// grid (ceil(N / kIdxKeys), ceil(T / kIdxTokens)), kIdxKeys threads.
template <typename TQ, typename TW>
__global__ void __launch_bounds__(kIdxKeys)
    indexer_scores_kernel(const TQ* __restrict__ q, const TQ* __restrict__ keys, const TW* __restrict__ w,
                          float weight_scale, const int32_t* __restrict__ positions, int64_t rate, int64_t T,
                          int64_t Hi, int64_t Di, int64_t N, int64_t Hp, int64_t q_offset, int64_t q_stride,
                          int64_t w_offset, float* __restrict__ scores) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ __align__(16) float smem[];
  float* sk = smem;
  float* sq = smem + q_offset;
  float* sw = smem + w_offset;
  const int tid = threadIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kIdxKeys;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kIdxTokens;
  const int64_t t_end = t0 + kIdxTokens < T ? t0 + kIdxTokens : T;

  const int di = static_cast<int>(Di);  // Hp * Di and kIdxKeys * Di fit an int (host check)
  for (int e = tid; e < kIdxKeys * di; e += kIdxKeys) {  // coalesced reads of key rows
    const int jj = e / di, d = e % di;
    sk[d * kKeyStride + jj] = j0 + jj < N ? to_f32(keys[(j0 + jj) * Di + d]) : 0.0f;
  }
  for (int64_t t = t0; t < t_end; ++t) {
    int64_t valid = (static_cast<int64_t>(positions[t]) + 1) / rate;
    valid = valid < 0 ? 0 : valid > N ? N : valid;
    const bool live = j0 < valid;  // the same in the whole block
    __syncthreads();               // the key tile is written; the previous token's q is no longer read
    if (live) {
      for (int e = tid; e < static_cast<int>(Hp) * di; e += kIdxKeys) {
        const int h = e / di, d = e % di;
        sq[d * q_stride + h] = h < Hi ? to_f32(q[(t * Hi + h) * Di + d]) : 0.0f;
      }
      for (int64_t h = tid; h < Hp; h += kIdxKeys) sw[h] = h < Hi ? to_f32(w[t * Hi + h]) * weight_scale : 0.0f;
    }
    __syncthreads();
    const int64_t j = j0 + tid;
    float total = 0.0f;
    if (live) {
      for (int64_t hg = 0; hg < Hp; hg += kIdxHeadGroup) {
        float acc[kIdxHeadGroup];
#pragma unroll
        for (int u = 0; u < kIdxHeadGroup; ++u) acc[u] = 0.0f;
        for (int64_t d = 0; d < Di; ++d) {
          const float kd = sk[d * kKeyStride + tid];
          const float4* qv = reinterpret_cast<const float4*>(sq + d * q_stride + hg);
#pragma unroll
          for (int u = 0; u < kIdxHeadGroup / 4; ++u) {
            const float4 x = qv[u];
            acc[4 * u + 0] = fmaf(x.x, kd, acc[4 * u + 0]);
            acc[4 * u + 1] = fmaf(x.y, kd, acc[4 * u + 1]);
            acc[4 * u + 2] = fmaf(x.z, kd, acc[4 * u + 2]);
            acc[4 * u + 3] = fmaf(x.w, kd, acc[4 * u + 3]);
          }
        }
#pragma unroll
        for (int u = 0; u < kIdxHeadGroup; ++u) {
          const float r = acc[u] < 0.0f ? 0.0f : acc[u];  // relu that keeps NaN
          total = fmaf(r, sw[hg + u], total);
        }
      }
    }
    if (j < N) scores[t * N + j] = j < valid ? total : -INFINITY;
  }
}

// ---- decode and small T: indexer_tile_kernel ---------------------------------------------------

constexpr int64_t kTileMaxT = 16;  // larger T: the prefill kernel above
constexpr int64_t kMmaMinT = 64;   // BF16 q/keys at T >= this: the tensor-core kernel (indexer_mma.cu)
constexpr int kTileThreads = 256;
constexpr int kTileHeads = 64;                            // heads per block (Hi <= 64, zero-padded)
constexpr int kTileHpt = 4;                               // heads per thread
constexpr int kTileGroups = kTileHeads / kTileHpt;        // 16 head groups
constexpr int kTileSlots = kTileThreads / kTileGroups;    // 16 key slots; a tile is kTileSlots * KPT keys
constexpr int kTileQStride = kTileHeads + 4;              // sq row: 16-byte aligned, broadcast reads
constexpr int kTileRStride = kTileHeads + 1;              // sr row: the head chain reads it conflict-free

// Shared memory (floats): sq [Di][kTileQStride] | region [Di][Kt + 4] keys, later [Kt][kTileRStride]
// relu'd dot products | sw [kTileHeads]. Offsets are multiples of 4 floats (16 bytes).
struct TileSmem {
  int64_t region_offset, w_offset, bytes;
};
TileSmem tile_smem(int64_t Di, int64_t Kt) {
  TileSmem s;
  s.region_offset = Di * kTileQStride;
  const int64_t region = std::max(Di * (Kt + 4), Kt * kTileRStride);
  s.w_offset = s.region_offset + (region + 3) / 4 * 4;
  s.bytes = (s.w_offset + kTileHeads) * static_cast<int64_t>(sizeof(float));
  return s;
}

// 16 bytes of T as floats (float4; 8 BF16/F16 values).
template <typename T>
struct Vec16 {
  static constexpr int kN = 16 / static_cast<int>(sizeof(T));
  __device__ __forceinline__ static void load(const T* p, float (&out)[kN]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kN; ++i) out[i] = to_f32(e[i]);
  }
};

// dst[c * dst_stride + r] = r < rows_valid ? src[r * cols + c] : 0 for r < rows, c < cols (a
// transposed f32 copy). vec: cols is a multiple of Vec16<T>::kN and src 16-byte aligned. Consecutive
// threads take consecutive rows, so the shared-memory stores do not conflict.
template <typename T>
__device__ __forceinline__ void stage_transposed(const T* __restrict__ src, int rows, int rows_valid, int cols,
                                                 bool vec, float* dst, int dst_stride) {
  const int tid = threadIdx.x;
  if (vec) {
    constexpr int V = Vec16<T>::kN;
    const int chunks = cols / V;
    for (int e = tid; e < rows * chunks; e += kTileThreads) {
      const int r = e % rows, c = (e / rows) * V;
      float x[V];
      if (r < rows_valid) {
        Vec16<T>::load(src + static_cast<int64_t>(r) * cols + c, x);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) x[i] = 0.0f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) dst[(c + i) * dst_stride + r] = x[i];
    }
  } else {
    for (int e = tid; e < rows * cols; e += kTileThreads) {
      const int r = e % rows, c = e / rows;
      dst[c * dst_stride + r] = r < rows_valid ? to_f32(src[static_cast<int64_t>(r) * cols + c]) : 0.0f;
    }
  }
}

// Tile key of thread slot ks's i-th key: ks for KPT = 1; else runs of 4 (one 16-byte load each),
// the slots' runs side by side, so a warp's 16 slots read 256 contiguous bytes per load.
template <int KPT>
__device__ __forceinline__ int tile_key(int ks, int i) {
  return KPT == 1 ? ks : (i / 4) * (kTileSlots * 4) + ks * 4 + i % 4;
}

// grid (ceil(N / (kTileSlots * KPT)), T), kTileThreads threads. Thread (ks = tid % 16, hg = tid / 16)
// owns tile keys tile_key<KPT>(ks, i), i < KPT, and heads 4hg .. 4hg+3.
template <typename TQ, typename TW, int KPT>
__global__ void __launch_bounds__(kTileThreads)
    indexer_tile_kernel(const TQ* __restrict__ q, const TQ* __restrict__ keys, const TW* __restrict__ w,
                        float weight_scale, const int32_t* __restrict__ positions, int64_t rate, int64_t Hi,
                        int64_t Di, int64_t N, int64_t region_offset, int64_t w_offset, bool q_vec, bool k_vec,
                        float* __restrict__ scores) {
  static_assert(KPT == 1 || KPT == 4 || KPT == 8, "indexer_tile_kernel: KPT is 1, 4 or 8");
  pdl_wait();
  pdl_trigger();
  constexpr int Kt = kTileSlots * KPT, KStride = Kt + 4;
  extern __shared__ __align__(16) float smem[];
  float* sq = smem;
  float* sk = smem + region_offset;
  float* sr = sk;  // after the dot products
  float* sw = smem + w_offset;
  const int tid = threadIdx.x;
  const int64_t t = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * Kt;
  int64_t valid = (static_cast<int64_t>(positions[t]) + 1) / rate;
  valid = valid < 0 ? 0 : valid > N ? N : valid;
  float* row = scores + t * N;
  if (j0 >= valid) {  // the whole tile is masked (uniform in the block)
    if (tid < Kt && j0 + tid < N) row[j0 + tid] = -INFINITY;
    return;
  }
  const int di = static_cast<int>(Di), hi = static_cast<int>(Hi);  // small (host checks)
  const int tile_keys = N - j0 < Kt ? static_cast<int>(N - j0) : Kt;
  stage_transposed(q + t * Hi * Di, kTileHeads, hi, di, q_vec, sq, kTileQStride);
  stage_transposed(keys + j0 * Di, Kt, tile_keys, di, k_vec, sk, KStride);
  if (tid < kTileHeads) sw[tid] = tid < hi ? to_f32(w[t * Hi + tid]) * weight_scale : 0.0f;
  __syncthreads();

  const int ks = tid % kTileSlots, hg = tid / kTileSlots;
  float acc[KPT][kTileHpt];
#pragma unroll
  for (int i = 0; i < KPT; ++i)
#pragma unroll
    for (int u = 0; u < kTileHpt; ++u) acc[i][u] = 0.0f;
  const float* qp = sq + hg * kTileHpt;
  const float* kp = sk + tile_key<KPT>(ks, 0);
#pragma unroll 4
  for (int d = 0; d < di; ++d) {
    const float4 qv = *reinterpret_cast<const float4*>(qp + d * kTileQStride);
    float kv[KPT];
    if constexpr (KPT == 1) {
      kv[0] = kp[d * KStride];
    } else {
#pragma unroll
      for (int r = 0; r < KPT / 4; ++r) {
        const float4 k4 = *reinterpret_cast<const float4*>(kp + d * KStride + r * kTileSlots * 4);
        kv[4 * r + 0] = k4.x, kv[4 * r + 1] = k4.y, kv[4 * r + 2] = k4.z, kv[4 * r + 3] = k4.w;
      }
    }
#pragma unroll
    for (int i = 0; i < KPT; ++i) {  // fmaf(q, k, acc) in d order: the prefill kernel's chain
      acc[i][0] = fmaf(qv.x, kv[i], acc[i][0]);
      acc[i][1] = fmaf(qv.y, kv[i], acc[i][1]);
      acc[i][2] = fmaf(qv.z, kv[i], acc[i][2]);
      acc[i][3] = fmaf(qv.w, kv[i], acc[i][3]);
    }
  }
  __syncthreads();  // every thread is done with the key tile: sr reuses it
#pragma unroll
  for (int i = 0; i < KPT; ++i)
#pragma unroll
    for (int u = 0; u < kTileHpt; ++u) {
      const float a = acc[i][u];
      sr[tile_key<KPT>(ks, i) * kTileRStride + hg * kTileHpt + u] = a < 0.0f ? 0.0f : a;  // relu that keeps NaN
    }
  __syncthreads();
  if (tid < Kt) {
    const int64_t j = j0 + tid;
    if (j < N) {
      float total = 0.0f;
      const float* r = sr + tid * kTileRStride;
      for (int h = 0; h < hi; ++h) total = fmaf(r[h], sw[h], total);  // heads in order
      row[j] = j < valid ? total : -INFINITY;
    }
  }
}

// The dynamic shared memory a kernel may use (opted into once per backend and size: the first,
// eager steps, never inside a captured graph).
template <typename K>
void allow_smem(CudaBackend& be, K* kernel, int64_t bytes, const char* what) {
  auto* opt_in = be.op_state<SmemOptIn>(reinterpret_cast<const void*>(kernel));
  if (opt_in->bytes >= bytes) return;
  int max_smem = 0;
  CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, be.options().device));
  CLAWMINE_CHECK(bytes <= max_smem, "cuda indexer_scores: ", what, " needs ", bytes,
                 " bytes of shared memory, the device allows ", max_smem);
  CLAWMINE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  opt_in->bytes = bytes;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void CudaBackend::indexer_scores(const TensorView& q, const TensorView& keys, const TensorView& weights,
                                 float weight_scale, const TensorView& positions, int64_t rate,
                                 const TensorView& scores) {
  const char* op = "indexer_scores";
  expect_device(q, op, "q");
  expect_device(weights, op, "weights");
  expect_device(positions, op, "positions");
  CLAWMINE_CHECK(q.rank() == 3, "cuda indexer_scores: q must be [T, Hi, Di], got ", shape_str(q.shape));
  const int64_t T = q.dim(0), Hi = q.dim(1), Di = q.dim(2);
  int64_t N = 0;
  if (!keys.empty()) {
    expect_device(keys, op, "keys");
    CLAWMINE_CHECK(keys.rank() == 2 && keys.dim(1) == Di, "cuda indexer_scores: keys must be [N, ", Di, "], got ",
                   shape_str(keys.shape));
    CLAWMINE_CHECK(keys.dtype == q.dtype, "cuda indexer_scores: keys have dtype ", dtype_name(keys.dtype),
                   ", q has ", dtype_name(q.dtype));
    N = keys.dim(0);
  }
  CLAWMINE_CHECK(weights.numel() == T * Hi, "cuda indexer_scores: weights must be [", T, ", ", Hi, "], got ",
                 shape_str(weights.shape));
  CLAWMINE_CHECK(positions.dtype == DType::kI32 && positions.numel() == T, "cuda indexer_scores: positions must be I32 [",
                 T, "], got ", dtype_name(positions.dtype), " ", shape_str(positions.shape));
  CLAWMINE_CHECK(scores.dtype == DType::kF32 && scores.numel() == T * N, "cuda indexer_scores: scores must be F32 [",
                 T, ", ", N, "], got ", dtype_name(scores.dtype), " ", shape_str(scores.shape));
  CLAWMINE_CHECK(rate >= 1, "cuda indexer_scores: rate ", rate, " must be >= 1");
  if (T == 0 || N == 0) return;
  expect_device(scores, op, "scores");
  CLAWMINE_CHECK(Hi > 0 && Di > 0, "cuda indexer_scores: q has shape ", shape_str(q.shape));
  const int64_t Hp = (Hi + kIdxHeadGroup - 1) / kIdxHeadGroup * kIdxHeadGroup;
  CLAWMINE_CHECK(Hp * Di < (int64_t{1} << 24), "cuda indexer_scores: q has shape ", shape_str(q.shape));

  dispatch_float(q.dtype, op, "q", [&](auto q_tag) {
    using TQ = decltype(q_tag);
    dispatch_float(weights.dtype, op, "weights", [&](auto w_tag) {
      using TW = decltype(w_tag);
      if (T <= kTileMaxT && Hi <= kTileHeads) {
        // The most keys per thread (8, 4, 1) that still give every SM a block.
        int kpt = 1;
        for (const int c : {8, 4})
          if (kpt == 1 && static_cast<int64_t>(blocks_for(N, kTileSlots * c)) >= sm_count_) kpt = c;
        const int64_t Kt = kTileSlots * kpt;
        const TileSmem sm = tile_smem(Di, Kt);
        constexpr int V = Vec16<TQ>::kN;
        const bool q_vec = Di % V == 0 && aligned16(q.data), k_vec = Di % V == 0 && aligned16(keys.data);
        auto* kernel = kpt == 8   ? indexer_tile_kernel<TQ, TW, 8>
                       : kpt == 4 ? indexer_tile_kernel<TQ, TW, 4>
                                  : indexer_tile_kernel<TQ, TW, 1>;
        allow_smem(*this, kernel, sm.bytes, "the decode kernel");
        const dim3 grid(blocks_for(N, static_cast<int>(Kt)), static_cast<unsigned>(T));
        launch_kernel(kernel, grid, kTileThreads, static_cast<size_t>(sm.bytes), stream_, q.as<TQ>(), keys.as<TQ>(),
                      weights.as<TW>(), weight_scale, positions.as<int32_t>(), rate, Hi, Di, N, sm.region_offset,
                      sm.w_offset, q_vec, k_vec, scores.as<float>());
        CLAWMINE_CUDA_LAUNCHED("indexer_scores (decode)");
        return;
      }
      if constexpr (std::is_same_v<TQ, __nv_bfloat16>) {
        // Prefill with BF16 q/keys: the tensor-core kernel (indexer_mma.cu) when it takes the shape.
        if (T >= kMmaMinT && launch_indexer_scores_mma(q.as<__nv_bfloat16>(), keys.as<__nv_bfloat16>(), weights.data,
                                                       weights.dtype == DType::kBF16, weight_scale,
                                                       positions.as<int32_t>(), rate, T, Hi, Di, N, scores.as<float>(),
                                                       stream_)) {
          CLAWMINE_CUDA_LAUNCHED("indexer_scores (tensor cores)");
          return;
        }
      }
      const IndexerSmem sm = indexer_smem(Di, Hp);
      const int64_t token_blocks = (T + kIdxTokens - 1) / kIdxTokens;
      CLAWMINE_CHECK(token_blocks <= 65535, "cuda indexer_scores: ", T, " tokens exceed one launch");
      const dim3 grid(blocks_for(N, kIdxKeys), static_cast<unsigned>(token_blocks));
      auto* kernel = indexer_scores_kernel<TQ, TW>;
      allow_smem(*this, kernel, sm.bytes, "the prefill kernel");
      launch_kernel(kernel, grid, kIdxKeys, static_cast<size_t>(sm.bytes), stream_, q.as<TQ>(), keys.as<TQ>(),
                    weights.as<TW>(), weight_scale, positions.as<int32_t>(), rate, T, Hi, Di, N, Hp, sm.q_offset,
                    sm.q_stride, sm.w_offset, scores.as<float>());
      CLAWMINE_CUDA_LAUNCHED("indexer_scores");
    });
  });
}

}  // namespace clawmine::backend::cuda
