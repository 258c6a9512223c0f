// Deterministic per-row top-k on the GPU (ops/backend.h topk): the indices of the k largest
// values, largest first, ties to the lower index; -inf and NaN are never picked (their slots get
// -1). The result is a function of the input alone (no atomics decide an order), so it equals
// the CPU reference exactly.
//
// One block per row:
//   1. radix select on order-preserving 32-bit keys (-0 folded onto +0, so they tie as the CPU's
//      == says): four 8-bit MSB-first histogram passes over the pickable values find the k-th
//      largest key K and how many of the picks equal it (`need`);
//   2. one pass in index order with block-wide prefix sums places every key > K and the first
//      `need` keys == K (the lowest indices) into shared memory as (key << 32 | ~index);
//   3. a bitonic sort of those (at most k, padded to a power of two with 0) puts them in
//      descending order, which is key descending, then index ascending.
// If the row has at most k pickable values, all of them are taken and the rest is -1.
#include <cub/block/block_scan.cuh>

#include <cmath>
#include <cstdint>

#include "backend/cuda/backend_impl.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kTopkThreads = 1024;
constexpr int64_t kTopkMaxK = 4096;  // sort buffer: next_pow2(k) * 8 bytes <= 32 KiB

__device__ __forceinline__ bool pickable(float v) { return !isnan(v) && v != -INFINITY; }

// Monotone map float -> uint32 (a < b  <=>  key(a) < key(b)), with -0 mapped like +0. Every
// pickable value (>= -FLT_MAX) has a key >= 0x00800000, so 0 is below all of them.
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Dynamic shared memory: sorted[P] (P = next power of two >= k).
__global__ void __launch_bounds__(kTopkThreads)
    topk_kernel(const float* __restrict__ values, int64_t N, int64_t k, int64_t P, int32_t* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  using Scan = cub::BlockScan<int, kTopkThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining, s_take_all;
  extern __shared__ unsigned long long sorted[];
  const int tid = threadIdx.x;
  const float* row = values + static_cast<int64_t>(blockIdx.x) * N;

  // 1. Radix select: after the passes, K = prefix and `remaining` picks equal K.
  uint32_t prefix = 0, mask = 0;
  int remaining = static_cast<int>(k);
  bool take_all = false;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kTopkThreads) hist[i] = 0;
    __syncthreads();
    for (int64_t i = tid; i < N; i += kTopkThreads) {
      const float v = row[i];
      if (!pickable(v)) continue;
      const uint32_t key = order_key(v);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1);
    }
    __syncthreads();
    if (tid == 0) {
      int total = 0;
      if (shift == 24)
        for (int b = 0; b < 256; ++b) total += hist[b];
      s_take_all = shift == 24 && total <= remaining;
      // The bin holding the remaining-th largest: counts above it stay below `remaining`.
      int above = 0, b = 255;
      for (; b > 0; --b) {
        if (above + hist[b] >= remaining) break;
        above += hist[b];
      }
      s_prefix = prefix | (static_cast<uint32_t>(b) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    if (s_take_all) {
      take_all = true;
      break;
    }
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 0xffu << shift;
    // The next pass rewrites hist only after its own barrier; s_* are rewritten after two more.
  }
  const uint32_t K = take_all ? 0u : prefix;  // every pickable key is > 0
  const int need = take_all ? 0 : remaining;  // picks equal to K, lowest indices first
  const int n_greater = take_all ? static_cast<int>(k) : static_cast<int>(k) - need;  // upper bound when take_all

  // 2. Place the picks in index order (deterministic): keys > K at [0, n_greater), the first
  //    `need` keys == K after them.
  for (int64_t i = tid; i < P; i += kTopkThreads) sorted[i] = 0ull;
  __syncthreads();
  int greater_base = 0, equal_base = 0;
  for (int64_t base = 0; base < N; base += kTopkThreads) {
    const int64_t i = base + tid;
    const float v = i < N ? row[i] : NAN;
    const bool ok = pickable(v);
    const uint32_t key = ok ? order_key(v) : 0u;
    const int gt = ok && key > K, eq = ok && !take_all && key == K;
    int rank = 0, total = 0;
    Scan(scan_tmp).ExclusiveSum(gt | (eq << 16), rank, total);  // <= 1024 per field per chunk
    const unsigned long long item =
        (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
    const int g_pos = greater_base + (rank & 0xffff);
    const int e_rank = equal_base + (rank >> 16);
    if (gt && g_pos < n_greater) sorted[g_pos] = item;
    if (eq && e_rank < need) sorted[n_greater + e_rank] = item;
    greater_base += total & 0xffff;
    equal_base += total >> 16;
    __syncthreads();  // scan_tmp is reused
  }

  // 3. Bitonic sort, descending, of P items (all distinct except the 0 padding).
  for (int64_t size = 2; size <= P; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t i = tid; i < P / 2; i += kTopkThreads) {
        const int64_t lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool descending = (lo & size) == 0;
        const unsigned long long a = sorted[lo], b = sorted[hi];
        if (descending ? a < b : a > b) {
          sorted[lo] = b;
          sorted[hi] = a;
        }
      }
      __syncthreads();
    }
  }
  int32_t* dst = out + static_cast<int64_t>(blockIdx.x) * k;
  for (int64_t s = tid; s < k; s += kTopkThreads) {
    const unsigned long long item = sorted[s];
    dst[s] = item == 0ull ? -1 : static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(item & 0xffffffffull));
  }
}

}  // namespace

void CudaBackend::topk(const TensorView& values, int64_t k, const TensorView& out) {
  expect_device(values, "topk", "values");
  CLAWMINE_CHECK(values.dtype == DType::kF32 && values.rank() == 2, "cuda topk: values must be F32 [T, N], got ",
                 dtype_name(values.dtype), " ", shape_str(values.shape));
  const int64_t T = values.dim(0), N = values.dim(1);
  CLAWMINE_CHECK(k >= 0 && k <= kTopkMaxK, "cuda topk: k = ", k, " outside [0, ", kTopkMaxK, "]");
  CLAWMINE_CHECK(N < (int64_t{1} << 31), "cuda topk: rows of ", N, " values exceed int32 indices");
  CLAWMINE_CHECK(out.dtype == DType::kI32 && out.numel() == T * k, "cuda topk: out must be I32 [", T, ", ", k,
                 "], got ", dtype_name(out.dtype), " ", shape_str(out.shape));
  if (T == 0 || k == 0) return;
  expect_device(out, "topk", "out");
  int64_t P = 1;
  while (P < k) P <<= 1;
  launch_kernel(topk_kernel, static_cast<unsigned>(T), kTopkThreads,
                static_cast<size_t>(P) * sizeof(unsigned long long), stream_, values.as<float>(), N, k, P,
                out.as<int32_t>());
  CLAWMINE_CUDA_LAUNCHED("topk");
}

}  // namespace clawmine::backend::cuda
