// Lightning-indexer scores on tensor cores (indexer_mma.cu), for prefill-sized T:
//   scores[t, j] = sum_h relu(q[t,h] . keys[j]) * (weights[t,h] * weight_scale)
// for j < min(N, (positions[t]+1)/rate), else -inf (ops/backend.h indexer_scores). BF16 q and
// keys, float32 accumulation (mma.sync m16n8k16); the heads of one (t, j) are summed in one
// fixed order (deterministic, not the FMA kernel's order). Plain C++ header.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace clawmine::backend::cuda {

// Supported: Hi == 64, Di == 128, q and keys 16-byte aligned, rate >= 1. Returns false
// (launching nothing) for anything else, and the caller takes the FMA kernel. T == 0 or N == 0:
// true, nothing to do. Grid and block sizes depend on (T, N) only (graph-capture safe); no
// opt-in shared memory (32 KiB static), no scratch. Launch errors throw clawmine::Error.
// q [T, Hi, Di]; keys [N, Di]; weights [T, Hi] (BF16 when weights_bf16, else F32);
// positions [T] I32; scores [T, N] F32 (every element written).
bool launch_indexer_scores_mma(const __nv_bfloat16* q, const __nv_bfloat16* keys, const void* weights,
                               bool weights_bf16, float weight_scale, const int32_t* positions, int64_t rate,
                               int64_t T, int64_t Hi, int64_t Di, int64_t N, float* scores, cudaStream_t stream);

}  // namespace clawmine::backend::cuda
