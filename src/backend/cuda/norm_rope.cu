// rms_norm and rope (their per-row code is in rowprep.cuh, shared with the fused norm_rope_qdq).
// rms_norm: tpr threads per row (32, 64, 128 or 256: about two packs of 8 elements per thread,
//   kThreads / tpr rows per block), so a short row at T = 1 still spreads over a warp or more.
//   Packed rows of up to 4 * tpr packs are read once: each thread loads its packs of x (and of
//   the weight) into registers before the reduction, so every load is in flight at once; the
//   packs per thread (1, 2 or 4) are a template argument (rowprep.cuh), so rows of 512..4096
//   take ~40 registers, not ~100 (8192 x 64 rows of 512 at prefill need the occupancy).
//   Other rows (unpacked, or longer) loop over the row twice. The sum of squares is accumulated
//   in float32 per thread and reduced in a fixed order (warp shuffles, then the row's warps in
//   order through shared memory: one barrier), then every element is x * (1 / sqrt(mean + eps))
//   * weight. out may alias x: each element is read and written by the same thread, and every
//   read of the row precedes the reduction.
// rope: one thread per kP consecutive pairs of one vector (kP = 4 when the rope dims can be read
//   as 16/32-byte packs, else 1); a block covers a slice of one token's vectors or, when a token
//   has fewer than kThreads such items, several tokens. The thread issues its load of x first,
//   then the block computes each (cos, sin) of its tokens once into shared memory. The angle is
//   the float32 product inv_freq[i] * float(position) (transformers-parity #14); its cos/sin are
//   taken in double and rounded to float, and the rotation is done in double and rounded once,
//   exactly as the CPU backend does, so F32 results match it bit for bit up to the last-ulp
//   accuracy of the double sin/cos (at any position: the double reduction of large angles is
//   exact enough).
#include <algorithm>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/rowprep.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Row `row` = blockIdx.x * (kThreads / tpr) + threadIdx.x / tpr. kP > 0: packed rows of at most
// kP * tpr packs, held in registers (rowprep::RowPacks; kP is a template argument so a row of
// one or two packs per thread costs no registers for four: the many-row prefill shapes keep
// their occupancy); kP = 0: packed (Packed<., 8>) or element loops over the row, twice.
// wpacked: the weight may be read in packs of 8 too.
template <typename Tx, typename To, int kP>
__global__ void __launch_bounds__(kThreads, kP == 4 ? 1 : 5)
    rms_norm_kernel(const Tx* x, const void* weight, rowwise::FloatCode wcode, To* out, int64_t rows, int64_t n,
                    float eps, int tpr, bool packed, bool wpacked) {
  pdl_wait();
  pdl_trigger();
  __shared__ float red[kWarps];
  const int64_t row = blockIdx.x * static_cast<int64_t>(kThreads / tpr) + threadIdx.x / tpr;
  const int r = threadIdx.x % tpr;  // this thread's rank in its row
  const bool valid = row < rows;
  if (tpr == 32 && !valid) return;  // warp groups: whole warps leave (no block barrier follows)
  const int64_t base = valid ? row * n : 0;
  const Tx* xr = x + base;
  To* orow = out + base;

  if constexpr (kP > 0) {
    const int64_t packs = n / 8;
    rowprep::RowPacks<kP> v;
    v.load(xr, r, tpr, packs, valid);
    rowprep::rms_norm_packs(v, weight, wcode, wpacked, n, eps, r, tpr, valid, red);
    v.store(orow, r, tpr, packs, valid);
  } else {
    float ss = 0.0f;
    if (valid) {
      if (packed) {
        for (int64_t c = r; c < n / 8; c += tpr) {
          float v[8];
          rowwise::load_packed<8>(xr + c * 8, v);
#pragma unroll
          for (int i = 0; i < 8; ++i) ss = fmaf(v[i], v[i], ss);
        }
      } else {
        for (int64_t i = r; i < n; i += tpr) {
          const float v = to_f32(xr[i]);
          ss = fmaf(v, v, ss);
        }
      }
    }
    ss = rowprep::row_group_sum(ss, tpr, red);
    if (!valid) return;
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);

    if (packed) {
      for (int64_t c = r; c < n / 8; c += tpr) {
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
      for (int64_t i = r; i < n; i += tpr) {
        float v = to_f32(xr[i]) * inv;
        if (weight) v *= rowwise::load_float(weight, wcode, i);
        orow[i] = from_f32<To>(v);
      }
    }
  }
}

// Block (bx, by): tokens [bx * tpb, +tpb), items [by * ipb, +ipb) of each; thread i takes token
// i / ipb and item i % ipb. Item = (vector v, pairs [kP * j, kP * j + kP)) with half / kP items
// per vector. cs[lt][0..half) = cos, cs[lt][half..2 half) = ±sin of local token lt.
template <typename T, int kP>
__global__ void __launch_bounds__(kThreads)
    rope_kernel(T* x, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq, int64_t T_,
                int64_t n_vec, int64_t dim, int64_t half, int64_t items, int ipb, int tpb, bool inverse) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ float cs[];
  const int64_t t0 = blockIdx.x * static_cast<int64_t>(tpb);
  const int lt = threadIdx.x / ipb;
  const int64_t t = t0 + lt, item = blockIdx.y * static_cast<int64_t>(ipb) + threadIdx.x % ipb;
  const bool active = lt < tpb && t < T_ && item < items;
  const int64_t per_vec = half / kP;
  const int64_t i0 = active ? (item % per_vec) * kP : 0;
  T* q = active ? x + (t * n_vec + item / per_vec) * dim + (dim - 2 * half) + 2 * i0 : x;
  float v[2 * kP];
  if (active) {  // in flight while the block takes its sines and cosines
    if constexpr (kP == 1) {
      v[0] = to_f32(q[0]);
      v[1] = to_f32(q[1]);
    } else {
      rowwise::load_packed<2 * kP>(q, v);
    }
  }
  for (int64_t j = threadIdx.x; j < tpb * half; j += blockDim.x) {
    const int64_t l = j / half, i = j % half;
    if (t0 + l >= T_) break;  // j grows with l
    float c, sf;
    rowprep::rope_cos_sin(inv_freq[i], positions[t0 + l], c, sf);
    cs[l * 2 * half + i] = c;
    cs[l * 2 * half + half + i] = inverse ? -sf : sf;
  }
  __syncthreads();
  if (!active) return;
  const float* c = cs + lt * 2 * half + i0;
#pragma unroll
  for (int k = 0; k < kP; ++k) rowprep::rotate_pair(v[2 * k], v[2 * k + 1], c[k], c[half + k]);
  if constexpr (kP == 1) {
    q[0] = from_f32<T>(v[0]);
    q[1] = from_f32<T>(v[1]);
  } else {
    rowwise::store_packed<2 * kP>(q, v);
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
      const bool wpacked =
          w != nullptr && reinterpret_cast<uintptr_t>(w) % (8 * rowwise::float_code_bytes(wcode)) == 0;
      const int tpr = rowprep::rms_threads_per_row(n);
      const int kp = packed ? rowprep::rms_regs_packs(n, tpr) : 0;
      const int64_t rows_per_block = kThreads / tpr, blocks = (rows + rows_per_block - 1) / rows_per_block;
      CLAWMINE_CHECK(blocks <= INT32_MAX, "cuda rms_norm: ", rows, " rows exceed the grid");
      auto kernel = kp == 1   ? rms_norm_kernel<Tx, To, 1>
                    : kp == 2 ? rms_norm_kernel<Tx, To, 2>
                    : kp == 4 ? rms_norm_kernel<Tx, To, 4>
                              : rms_norm_kernel<Tx, To, 0>;
      launch_kernel(kernel, static_cast<unsigned>(blocks), kThreads, 0, stream_, x.as<const Tx>(), w, wcode,
                    out.as<To>(), rows, n, eps, tpr, packed, wpacked);
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
  dispatch_float(x.dtype, "rope", "x", [&](auto tv) {
    using T_ = decltype(tv);
    // Four pairs (one Packed<., 8>) per thread where the rope dims of every vector are aligned packs.
    const bool packed =
        half % 4 == 0 && (dim - rope_dim) % 8 == 0 && rowwise::packable<T_, 8>(x.data, dim);
    const int kp = packed ? 4 : 1;
    const int64_t items = n_vec * (half / kp);  // per token
    // Items per block along y, and tokens per block: several tokens share a block when one has
    // fewer than kThreads items, as long as their sines and cosines take one pass of the block.
    const int ipb = static_cast<int>(std::min<int64_t>(items, kThreads));
    int64_t tpb = ipb < kThreads ? std::min<int64_t>(kThreads / ipb, std::max<int64_t>(1, kThreads / half)) : 1;
    tpb = std::min(tpb, T);
    const int64_t gx = (T + tpb - 1) / tpb, gy = (items + ipb - 1) / ipb;
    CLAWMINE_CHECK(gx <= INT32_MAX && gy <= 65535, "cuda rope: x ", shape_str(x.shape), " with rope_dim ", rope_dim,
                   " exceeds the grid");
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
    const size_t smem = static_cast<size_t>(tpb * 2 * half) * sizeof(float);
    if (packed) {
      launch_kernel(rope_kernel<T_, 4>, grid, kThreads, smem, stream_, x.as<T_>(), positions.as<const int32_t>(),
                    inv_freq.as<const float>(), T, n_vec, dim, half, items, ipb, static_cast<int>(tpb), inverse);
    } else {
      launch_kernel(rope_kernel<T_, 1>, grid, kThreads, smem, stream_, x.as<T_>(), positions.as<const int32_t>(),
                    inv_freq.as<const float>(), T, n_vec, dim, half, items, ipb, static_cast<int>(tpb), inverse);
    }
    CLAWMINE_CUDA_LAUNCHED("rope");
  });
}

}  // namespace clawmine::backend::cuda
