// qdq: the official inference code's quantize-dequantize round trips (spec §3.0, quant/qdq.h),
// in place, bit-exact with quant/qdq.cpp for F32 rows (per-block code in rowprep.cuh, shared with
// the fused norm_rope_qdq):
//   kFp8Nope: blocks of 64 over the first n_nope dims; s = 2^ceil(log2(max(amax, 1e-4) / 448)),
//     x = e4m3(x / s) * s (nearest, ties to even, saturated to 448);
//   kHadamardFp4: the Sylvester-ordered Walsh-Hadamard transform (the CPU's butterflies, stage by
//     stage, then * 1/sqrt(n)), then blocks of 32 with
//     s = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)), x = e2m1(x / s) * s.
// amax is over finite values; NaN/Inf elements are left as they are. The results are minifloat
// values times powers of two, so BF16 rows store them exactly too. Every float operation is an
// explicitly rounded intrinsic (never contracted into an FMA).
// Parallel layout (every block scale is a max, so any grouping gives the CPU's bits):
//   kFp8Nope: 8 consecutive elements per thread, so each aligned group of 8 lanes holds one block
//     of 64 (its amax: 3 shuffles); a row of n_nope takes ceil(n_nope / 64) such groups, and rows
//     follow each other across warps and blocks (one row of 448 at decode: 56 threads, one pass).
//   kHadamardFp4, rows of 32 * E (E = 1..16) elements: one warp per row, E consecutive elements
//     per lane in registers; the butterflies of stride < E stay in the lane, the others pair lanes
//     through shuffles (lane bit s/E set: a - b with a the partner's value), then each block of 32
//     is an aligned group of 32 / E lanes. Other widths: one warp per row through shared memory.
#include <algorithm>
#include <cfloat>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/rowprep.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kHadamardMax = 8192;  // row width held in 32 KiB of shared memory

using rowprep::pow2_ceil_scale;
using rowprep::qdq_e2m1;

// FP8 on blocks of 64 over the first n_nope elements of each row. Thread g of the flattened grid
// takes row g / tpr, elements [8 * (g % tpr), +8) (tpr = ceil(n_nope / 64) * 8 threads per row).
// kPacked: the 8 elements are one Packed<T, 8> (width and n_nope multiples of 8, aligned rows).
template <typename T, bool kPacked>
__global__ void __launch_bounds__(kThreads) qdq_fp8_nope_kernel(T* x, int64_t rows, int64_t width, int64_t n_nope,
                                                                int tpr) {
  pdl_wait();
  pdl_trigger();
  const int64_t g = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  const int64_t row = g / tpr, c0 = (g % tpr) * 8;
  const bool active = row < rows && c0 < n_nope;  // every lane stays for the shuffles
  T* p = x + (active ? row * width + c0 : 0);
  rowwise::Packed<T, 8> raw;  // kPacked: the stored elements (untouched ones keep their bits)
  float v[8];
  bool fin[8];
  if constexpr (kPacked) {
    if (active) raw = *reinterpret_cast<const rowwise::Packed<T, 8>*>(p);
#pragma unroll
    for (int q = 0; q < 8; ++q) v[q] = active ? to_f32(raw.v[q]) : 0.0f;
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q) v[q] = active && c0 + q < n_nope ? to_f32(p[q]) : 0.0f;
  }
  bool in[8];
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    in[q] = active && c0 + q < n_nope;
    fin[q] = in[q] && isfinite(v[q]);
  }
  rowprep::fp8_block_of_8_lanes(v, in);  // every lane stays for the shuffles
  if (!active) return;
  if constexpr (kPacked) {
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (fin[q]) raw.v[q] = from_f32<T>(v[q]);
    *reinterpret_cast<rowwise::Packed<T, 8>*>(p) = raw;
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (fin[q]) p[q] = from_f32<T>(v[q]);
  }
}

// One warp per row of 32 * E elements, E consecutive ones per lane (Packed<T, E> loads): the
// Walsh-Hadamard butterflies in the CPU's stage order, scaled, then FP4 on blocks of 32.
template <typename T, int E>
__global__ void __launch_bounds__(kThreads) qdq_hadamard_fp4_warp_kernel(T* x, int64_t rows) {
  pdl_wait();
  pdl_trigger();
  constexpr int kWidth = 32 * E;
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps
  T* p = x + row * kWidth + lane * E;
  float h[E];
  rowwise::load_packed<E>(p, h);
  rowprep::hadamard_fp4_lanes<E>(h);
  rowwise::store_packed<E>(p, h);
}

// Any power-of-two width up to kHadamardMax. One warp per row (rows_per_block rows per block, each
// with `width` floats of shared memory): Walsh-Hadamard in the CPU's butterfly order, scaled,
// then FP4 on blocks of 32.
template <typename T>
__global__ void qdq_hadamard_fp4_kernel(T* x, int64_t rows, int64_t width, int rows_per_block) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ float buf[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = blockIdx.x * static_cast<int64_t>(rows_per_block) + warp;
  if (warp >= rows_per_block || row >= rows) return;  // whole warps; only __syncwarp below
  float* h = buf + warp * width;
  T* xr = x + row * width;
  for (int64_t i = lane; i < width; i += 32) h[i] = to_f32(xr[i]);
  __syncwarp();
  // Stage s: for every pair (j, j + s) with j's bit s clear: (a, b) -> (a + b, a - b). The pairs
  // of a stage are disjoint, each taken by one lane; __syncwarp orders the stages.
  for (int64_t s = 1; s < width; s *= 2) {
    for (int64_t p = lane; p < width / 2; p += 32) {
      const int64_t j = (p / s) * 2 * s + (p % s);
      const float a = h[j], b = h[j + s];
      h[j] = __fadd_rn(a, b);
      h[j + s] = __fsub_rn(a, b);
    }
    __syncwarp();
  }
  const float scale = __fdiv_rn(1.0f, __fsqrt_rn(static_cast<float>(width)));
  const float amax_floor = 6.0f * FLT_MIN;  // 6 * 2^-126
  for (int64_t b = 0; b < width; b += 32) {
    const int64_t i = b + lane;
    const float v = i < width ? __fmul_rn(h[i], scale) : 0.0f;
    const bool fin = i < width && isfinite(v);
    const float amax = fmaxf(amax_floor, rowwise::warp_max(fin ? fabsf(v) : 0.0f));
    const float s = pow2_ceil_scale(amax, 6.0f);
    if (i < width) xr[i] = from_f32<T>(fin ? qdq_e2m1(v, s) : v);
  }
}

}  // namespace

void CudaBackend::qdq(const TensorView& x, Qdq kind, int64_t n_nope) {
  if (kind == Qdq::kNone) return;
  expect_device(x, "qdq", "x");
  CLAWMINE_CHECK(x.rank() >= 1, "cuda qdq: x must have at least one dimension");
  const int64_t width = x.dim(-1), rows = width ? x.numel() / width : 0;
  if (rows == 0) return;
  dispatch_float(x.dtype, "qdq", "x", [&](auto tv) {
    using T = decltype(tv);
    if (kind == Qdq::kFp8Nope) {
      CLAWMINE_CHECK(n_nope >= 0 && n_nope <= width, "cuda qdq: n_nope ", n_nope, " is outside [0, ", width,
                     "] for rows of ", width);
      if (n_nope == 0) return;
      const int tpr = static_cast<int>((n_nope + 63) / 64 * 8);
      const int64_t blocks = (rows * tpr + kThreads - 1) / kThreads;
      CLAWMINE_CHECK(blocks <= INT32_MAX, "cuda qdq: ", rows, " rows of ", width, " exceed the grid");
      const bool packed = n_nope % 8 == 0 && rowwise::packable<T, 8>(x.data, width);
      launch_kernel(packed ? qdq_fp8_nope_kernel<T, true> : qdq_fp8_nope_kernel<T, false>,
                    static_cast<unsigned>(blocks), kThreads, 0, stream_, x.as<T>(), rows, width, n_nope, tpr);
      CLAWMINE_CUDA_LAUNCHED("qdq fp8");
    } else {
      CLAWMINE_CHECK((width & (width - 1)) == 0, "cuda qdq: the Hadamard rotation needs a power-of-two row, got ",
                     width);
      CLAWMINE_CHECK(width <= kHadamardMax, "cuda qdq: Hadamard rows of ", width, " exceed the supported ",
                     kHadamardMax);
      // Rows of 32..512 whose lane slices (width / 32 elements) are aligned packs: registers.
      if (width >= 32 && width <= 512 && reinterpret_cast<uintptr_t>(x.data) % (sizeof(T) * (width / 32)) == 0) {
        const int64_t blocks = (rows + kWarps - 1) / kWarps;
        CLAWMINE_CHECK(blocks <= INT32_MAX, "cuda qdq: ", rows, " rows exceed the grid");
        void (*kernel)(T*, int64_t) = nullptr;
        switch (width) {
          case 32: kernel = qdq_hadamard_fp4_warp_kernel<T, 1>; break;
          case 64: kernel = qdq_hadamard_fp4_warp_kernel<T, 2>; break;
          case 128: kernel = qdq_hadamard_fp4_warp_kernel<T, 4>; break;
          case 256: kernel = qdq_hadamard_fp4_warp_kernel<T, 8>; break;
          default: kernel = qdq_hadamard_fp4_warp_kernel<T, 16>; break;  // 512
        }
        launch_kernel(kernel, static_cast<unsigned>(blocks), kThreads, 0, stream_, x.as<T>(), rows);
      } else {
        const int rows_per_block = static_cast<int>(std::clamp<int64_t>(kHadamardMax / width, 1, kWarps));
        const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
        const size_t smem = static_cast<size_t>(rows_per_block * width) * sizeof(float);
        launch_kernel(qdq_hadamard_fp4_kernel<T>, static_cast<unsigned>(blocks), rows_per_block * 32, smem, stream_,
                      x.as<T>(), rows, width, rows_per_block);
      }
      CLAWMINE_CUDA_LAUNCHED("qdq hadamard fp4");
    }
  });
}

}  // namespace clawmine::backend::cuda
