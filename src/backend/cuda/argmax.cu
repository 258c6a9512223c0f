// argmax_rows (ops/backend.h): the greedy token of each row where the logits are, so a decode
// step sends 4 bytes to the host instead of the vocabulary's logits (on the H100 the download
// and a host argmax of a 129280-entry row took ~0.5 ms per token: docs/PERFORMANCE.md, twelfth
// session).
// One block of kThreads per row. Thread i reads the row's 16-byte words i, i + kThreads, ...
// (kBatch at a time, all in flight; single floats where the row is not 16-byte aligned or N % 4
// != 0) and keeps its largest finite value with the lowest index, and its lowest non-finite
// index. The block reduces both with the same order (larger value, then lower index; non-finite
// indices by minimum) through warp shuffles and one shared-memory step, so the result is a
// function of the row alone and equals the CPU's exactly.
#include <climits>

#include "backend/cuda/backend_impl.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kBatch = 8;  // words in flight per thread

struct Pick {
  float v;
  int32_t i;    // -1: no finite value seen
  int32_t bad;  // lowest non-finite index seen, INT_MAX: none
};

__device__ __forceinline__ void take(Pick& p, float v, int32_t i) {
  if (!isfinite(v)) {
    p.bad = min(p.bad, i);
  } else if (p.i < 0 || v > p.v || (v == p.v && i < p.i)) {
    p.v = v;
    p.i = i;
  }
}

__device__ __forceinline__ void merge(Pick& p, const Pick& o) {
  p.bad = min(p.bad, o.bad);
  if (o.i >= 0 && (p.i < 0 || o.v > p.v || (o.v == p.v && o.i < p.i))) {
    p.v = o.v;
    p.i = o.i;
  }
}

// Lane 0 ends with the merge of the warp's 32 picks.
__device__ __forceinline__ void warp_merge(Pick& p) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Pick o;
    o.v = __shfl_down_sync(0xffffffffu, p.v, off);
    o.i = __shfl_down_sync(0xffffffffu, p.i, off);
    o.bad = __shfl_down_sync(0xffffffffu, p.bad, off);
    merge(p, o);
  }
}

__global__ void __launch_bounds__(kThreads) argmax_rows_kernel(const float* __restrict__ values, int64_t n,
                                                                bool vec, int32_t* __restrict__ out) {
  pdl_wait();
  pdl_trigger();
  const float* row = values + blockIdx.x * n;
  Pick p{0.0f, -1, INT_MAX};
  if (vec) {
    const float4* w = reinterpret_cast<const float4*>(row);
    const int64_t nw = n / 4;
    for (int64_t base = threadIdx.x; base < nw; base += static_cast<int64_t>(kBatch) * kThreads) {
      float4 v[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t j = base + static_cast<int64_t>(b) * kThreads;
        v[b] = j < nw ? w[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t j = base + static_cast<int64_t>(b) * kThreads;
        if (j >= nw) break;
        const int32_t i = static_cast<int32_t>(4 * j);
        take(p, v[b].x, i);
        take(p, v[b].y, i + 1);
        take(p, v[b].z, i + 2);
        take(p, v[b].w, i + 3);
      }
    }
  } else {
    for (int64_t j = threadIdx.x; j < n; j += kThreads) take(p, row[j], static_cast<int32_t>(j));
  }
  warp_merge(p);
  __shared__ Pick warps[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warps[warp] = p;
  __syncthreads();
  if (warp != 0) return;
  p = lane < kThreads / 32 ? warps[lane] : Pick{0.0f, -1, INT_MAX};
  warp_merge(p);
  if (lane == 0) out[blockIdx.x] = p.bad != INT_MAX ? -1 - p.bad : p.i;
}

}  // namespace

void CudaBackend::argmax_rows(const TensorView& values, const TensorView& out) {
  expect_device(values, "argmax_rows", "values");
  CLAWMINE_CHECK(values.dtype == DType::kF32 && values.rank() == 2, "cuda argmax_rows: values must be F32 [R, N], got ",
                 dtype_name(values.dtype), " ", shape_str(values.shape));
  const int64_t R = values.dim(0), N = values.dim(1);
  CLAWMINE_CHECK(N >= 1 && N < (int64_t{1} << 31), "cuda argmax_rows: rows of ", N,
                 " values (expected 1 .. 2^31 - 1)");
  CLAWMINE_CHECK(R <= INT32_MAX, "cuda argmax_rows: ", R, " rows exceed the grid");
  CLAWMINE_CHECK(out.dtype == DType::kI32 && out.numel() == R, "cuda argmax_rows: out must be I32 [", R, "], got ",
                 dtype_name(out.dtype), " ", shape_str(out.shape));
  if (R == 0) return;
  expect_device(out, "argmax_rows", "out");
  const bool vec = N % 4 == 0 && reinterpret_cast<uintptr_t>(values.data) % 16 == 0;
  launch_kernel(argmax_rows_kernel, static_cast<unsigned>(R), kThreads, 0, stream_, values.as<const float>(), N, vec,
                out.as<int32_t>());
  CLAWMINE_CUDA_LAUNCHED("argmax_rows");
}

}  // namespace clawmine::backend::cuda
