// rms_norm and rope.
// rms_norm: one warp per row for rows up to 1024 elements, else one block per row; the sum of
//   squares is accumulated in float32 per thread and reduced in a fixed order, then every
//   element is x * (1 / sqrt(mean + eps)) * weight. out may alias x: each element is read and
//   written by the same thread, and every read of the row precedes the reduction.
// rope: one block per (token, run of vectors). The angle is the float32 product
//   inv_freq[i] * float(position) (transformers-parity #14); its cos/sin are taken in double and
//   rounded to float, and the rotation is done in double and rounded once, exactly as the CPU
//   backend does, so F32 results match it bit for bit up to the last-ulp accuracy of the
//   double sin/cos (at any position: the double reduction of large angles is exact enough).
#include <algorithm>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kWarpRowMax = 1024;  // rows up to this length get one warp each

// kTpr threads per row: 32 (warp per row, kThreads / 32 rows per block) or kThreads (block per row).
// packed: x and out rows are read/written in Packed<., 8> (the weight is read element by element).
template <typename Tx, typename To, int kTpr>
__global__ void rms_norm_kernel(const Tx* x, const void* weight, rowwise::FloatCode wcode, To* out, int64_t rows,
                                int64_t n, float eps, bool packed) {
  pdl_trigger();
  pdl_wait();
  __shared__ float red[32];
  const int64_t row = kTpr == 32 ? blockIdx.x * static_cast<int64_t>(kThreads / 32) + (threadIdx.x >> 5)
                                 : static_cast<int64_t>(blockIdx.x);
  const int r = kTpr == 32 ? (threadIdx.x & 31) : threadIdx.x;  // this thread's rank in its row
  if (row >= rows) return;  // warp mode: whole warps leave (no block barrier follows)
  const Tx* xr = x + row * n;
  To* orow = out + row * n;

  float ss = 0.0f;
  if (packed) {
    for (int64_t c = r; c < n / 8; c += kTpr) {
      float v[8];
      rowwise::load_packed<8>(xr + c * 8, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) ss = fmaf(v[i], v[i], ss);
    }
  } else {
    for (int64_t i = r; i < n; i += kTpr) {
      const float v = to_f32(xr[i]);
      ss = fmaf(v, v, ss);
    }
  }
  ss = kTpr == 32 ? rowwise::warp_sum(ss) : rowwise::block_sum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);

  if (packed) {
    for (int64_t c = r; c < n / 8; c += kTpr) {
      float v[8];
      rowwise::load_packed<8>(xr + c * 8, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        v[i] *= inv;
        if (weight) v[i] *= rowwise::load_float(weight, wcode, c * 8 + i);
      }
      rowwise::store_packed<8>(orow + c * 8, v);
    }
  } else {
    for (int64_t i = r; i < n; i += kTpr) {
      float v = to_f32(xr[i]) * inv;
      if (weight) v *= rowwise::load_float(weight, wcode, i);
      orow[i] = from_f32<To>(v);
    }
  }
}

// Block (t, y): vectors [y * vec_per_block, ...) of token t. cs = [cos(half) | ±sin(half)].
template <typename T>
__global__ void rope_kernel(T* x, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                            int64_t n_vec, int64_t dim, int64_t half, int64_t vec_per_block, bool inverse) {
  pdl_trigger();
  pdl_wait();
  extern __shared__ float cs[];
  const int64_t t = blockIdx.x;
  const float pos = static_cast<float>(positions[t]);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = __fmul_rn(inv_freq[i], pos);  // float32 product, like torch
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    cs[i] = __double2float_rn(c);
    const float sf = __double2float_rn(s);
    cs[half + i] = inverse ? -sf : sf;
  }
  __syncthreads();
  const int64_t v0 = blockIdx.y * vec_per_block, v1 = min(n_vec, v0 + vec_per_block);
  const int64_t pairs = (v1 - v0) * half;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t v = v0 + p / half, i = p % half;
    T* q = x + (t * n_vec + v) * dim + (dim - 2 * half) + 2 * i;
    const double a = to_f32(q[0]), b = to_f32(q[1]), c = cs[i], s = cs[half + i];
    // Both products are exact in double; each result is rounded to double once, then to float.
    const double ra = __dsub_rn(__dmul_rn(a, c), __dmul_rn(b, s));
    const double rb = __dadd_rn(__dmul_rn(a, s), __dmul_rn(b, c));
    q[0] = from_f32<T>(__double2float_rn(ra));
    q[1] = from_f32<T>(__double2float_rn(rb));
  }
}

}  // namespace

void CudaBackend::rms_norm(const TensorView& x, const TensorView* weight, float eps, const TensorView& out) {
  expect_device(x, "rms_norm", "x");
  expect_device(out, "rms_norm", "out");
  CLAWMINE_CHECK(x.rank() >= 1, "cuda rms_norm: x must have at least one dimension");
  const int64_t n = x.dim(-1), rows = n ? x.numel() / n : 0;
  CLAWMINE_CHECK(out.numel() == x.numel(), "cuda rms_norm: out ", shape_str(out.shape), " and x ", shape_str(x.shape),
                 " differ in element count");
  const void* w = nullptr;
  rowwise::FloatCode wcode = rowwise::FloatCode::kF32;
  if (weight != nullptr) {
    expect_device(*weight, "rms_norm", "weight");
    CLAWMINE_CHECK(weight->numel() == n, "cuda rms_norm: weight ", shape_str(weight->shape), " does not have ", n,
                   " elements");
    wcode = rowwise::float_code(weight->dtype, "rms_norm", "weight");
    w = weight->data;
  }
  if (rows == 0 || n == 0) return;
  dispatch_float(x.dtype, "rms_norm", "x", [&](auto tx) {
    using Tx = decltype(tx);
    dispatch_float(out.dtype, "rms_norm", "out", [&](auto to) {
      using To = decltype(to);
      const bool packed = rowwise::packable<Tx, 8>(x.data, n) && rowwise::packable<To, 8>(out.data, n);
      if (n <= kWarpRowMax) {
        const int64_t blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
        launch_kernel(rms_norm_kernel<Tx, To, 32>, static_cast<unsigned>(blocks), kThreads, 0, stream_,
                      x.as<const Tx>(), w, wcode, out.as<To>(), rows, n, eps, packed);
      } else {
        launch_kernel(rms_norm_kernel<Tx, To, kThreads>, static_cast<unsigned>(rows), kThreads, 0, stream_,
                      x.as<const Tx>(), w, wcode, out.as<To>(), rows, n, eps, packed);
      }
      CLAWMINE_CUDA_LAUNCHED("rms_norm");
    });
  });
}

void CudaBackend::rope(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
                       bool inverse) {
  expect_device(x, "rope", "x");
  expect_device(positions, "rope", "positions");
  expect_device(inv_freq, "rope", "inv_freq");
  CLAWMINE_CHECK(x.rank() == 3, "cuda rope: x must be [T, n_vec, dim], got ", shape_str(x.shape));
  const int64_t T = x.dim(0), n_vec = x.dim(1), dim = x.dim(2), half = rope_dim / 2;
  CLAWMINE_CHECK(rope_dim > 0 && rope_dim % 2 == 0 && rope_dim <= dim, "cuda rope: rope_dim ", rope_dim,
                 " must be even, positive and at most dim ", dim);
  CLAWMINE_CHECK(half <= 4096, "cuda rope: rope_dim ", rope_dim, " exceeds the supported 8192");
  CLAWMINE_CHECK(positions.dtype == DType::kI32 && positions.numel() == T, "cuda rope: positions must be [", T,
                 "] I32, got ", dtype_name(positions.dtype), " ", shape_str(positions.shape));
  CLAWMINE_CHECK(inv_freq.dtype == DType::kF32 && inv_freq.numel() == half, "cuda rope: inv_freq must be [", half,
                 "] F32 (rope_dim/2), got ", dtype_name(inv_freq.dtype), " ", shape_str(inv_freq.shape));
  if (T == 0 || n_vec == 0) return;
  // About 2048 pairs per block; at most 65535 blocks along y.
  int64_t vec_per_block = std::max<int64_t>(1, 2048 / half);
  vec_per_block = std::max(vec_per_block, (n_vec + 65534) / 65535);
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>((n_vec + vec_per_block - 1) / vec_per_block));
  const size_t smem = static_cast<size_t>(2 * half) * sizeof(float);
  dispatch_float(x.dtype, "rope", "x", [&](auto tv) {
    using T_ = decltype(tv);
    launch_kernel(rope_kernel<T_>, grid, kThreads, smem, stream_, x.as<T_>(), positions.as<const int32_t>(),
                  inv_freq.as<const float>(), n_vec, dim, half, vec_per_block, inverse);
    CLAWMINE_CUDA_LAUNCHED("rope");
  });
}

}  // namespace clawmine::backend::cuda
