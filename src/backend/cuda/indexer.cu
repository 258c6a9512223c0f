// Lightning-indexer scores on the GPU (spec §3.3 E; ops/backend.h indexer_scores):
//   scores[t, j] = sum_h relu(q[t,h] . keys[j]) * (weights[t,h] * weight_scale)
// for j < min(N, (positions[t]+1)/rate), else -inf; float32 accumulation, heads summed in order.
//
// Tiled: a block owns kIdxKeys keys (one per thread) and up to kIdxTokens tokens. The key tile
// is staged once in shared memory, transposed ([Di][keys], padded against bank conflicts); for
// each token the block stages q[t] transposed ([Di][heads], zero-padded to a multiple of
// kIdxHeadGroup) and each thread accumulates kIdxHeadGroup head dot products at a time, reading
// q with broadcast 16-byte loads. Tiles beyond a token's causal limit skip the arithmetic.
// (Tensor cores are the next step for prefill; the tile layout stays.)
#include <cmath>
#include <cstdint>

#include "backend/cuda/backend_impl.cuh"

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
  pdl_trigger();
  pdl_wait();
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
  const IndexerSmem sm = indexer_smem(Di, Hp);
  CLAWMINE_CHECK(Hp * Di < (int64_t{1} << 24), "cuda indexer_scores: q has shape ", shape_str(q.shape));
  const int64_t token_blocks = (T + kIdxTokens - 1) / kIdxTokens;
  CLAWMINE_CHECK(token_blocks <= 65535, "cuda indexer_scores: ", T, " tokens exceed one launch");
  const dim3 grid(blocks_for(N, kIdxKeys), static_cast<unsigned>(token_blocks));

  dispatch_float(q.dtype, op, "q", [&](auto q_tag) {
    using TQ = decltype(q_tag);
    dispatch_float(weights.dtype, op, "weights", [&](auto w_tag) {
      using TW = decltype(w_tag);
      auto* kernel = indexer_scores_kernel<TQ, TW>;
      // More than 48 KiB of dynamic shared memory must be opted into, per kernel and device: done
      // once per backend and size (the first, eager steps), never inside a captured graph.
      auto* opt_in = op_state<SmemOptIn>(reinterpret_cast<const void*>(kernel));
      if (opt_in->bytes < sm.bytes) {
        int max_smem = 0;
        CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, options_.device));
        CLAWMINE_CHECK(sm.bytes <= max_smem, "cuda indexer_scores: ", Hi, " heads x ", Di, " dims need ", sm.bytes,
                       " bytes of shared memory, the device allows ", max_smem);
        CLAWMINE_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(sm.bytes)));
        opt_in->bytes = sm.bytes;
      }
      launch_kernel(kernel, grid, kIdxKeys, static_cast<size_t>(sm.bytes), stream_, q.as<TQ>(), keys.as<TQ>(),
                    weights.as<TW>(), weight_scale, positions.as<int32_t>(), rate, T, Hi, Di, N, Hp, sm.q_offset,
                    sm.q_stride, sm.w_offset, scores.as<float>());
      CLAWMINE_CUDA_LAUNCHED("indexer_scores");
    });
  });
}

}  // namespace clawmine::backend::cuda
