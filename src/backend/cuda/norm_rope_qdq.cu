// norm_rope_qdq (ops/backend.h): rms_norm -> rope -> qdq on each vector of x [T, n_vec, dim], in
// place, as ONE kernel launch, bit-identical to the three CUDA ops in sequence. The per-row code
// is rowprep.cuh's, the same the standalone kernels run:
//   - the vector is held as rms_norm holds a row (tpr = rms_threads_per_row(dim) threads, kP packs
//     of 8 per thread in registers, kThreads / tpr vectors per block), normalized with the same
//     reduction, then rounded to x's dtype (rms_norm stores it);
//   - rope rotates the pairs of the trailing rope_dim elements in place (each pack of 8 is 4
//     pairs; (dim - rope_dim) % 8 == 0), (cos, sin) computed once per token of the block into
//     shared memory as the rope kernel does, then rounded to the dtype;
//   - qdq FP8: a block of 64 is 8 consecutive packs, i.e. 8 aligned lanes of one pack slot, as in
//     the qdq kernel; Hadamard FP4 (rows of 32..512, one warp per row): the row goes through
//     shared memory into the E = dim / 32 elements per lane layout of the register Hadamard and
//     back.
// Shapes outside the fast path (unaligned or odd widths, F16, rope_dim > 512, other Hadamard
// widths) run the composition (norm_rope_qdq_unfused), which also reports argument errors.
#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/rowprep.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxVecs = kThreads / 32;  // vectors per block at most (tpr >= 32)
constexpr int kMaxRopeDim = 512;
constexpr int64_t kMaxDim = 8192;  // 4 packs of 8 per thread of 256

enum class QKind { kNone, kFp8, kHadamard };

struct PrepArgs {
  int64_t rows, n_vec, dim;
  int tpr;
  bool norm;
  const void* weight;
  rowwise::FloatCode wcode;
  bool wpacked;
  float eps;
  const int32_t* positions;
  const float* inv_freq;
  int half;  // rope_dim / 2; 0: no rope
  int64_t n_nope;
};

// Block b: vectors [b * vpb, +vpb) of the flattened [T * n_vec] (vpb = kThreads / tpr); thread i
// takes vector i / tpr as rank i % tpr. kQ = kHadamard: E = dim / 32 (tpr = 32).
template <typename T, int kP, QKind kQ, int E>
__global__ void __launch_bounds__(kThreads, kP == 4 ? 1 : kP == 2 ? 4 : 5) norm_rope_qdq_kernel(T* x, PrepArgs a) {
  pdl_wait();
  pdl_trigger();
  constexpr bool kHad = kQ == QKind::kHadamard;
  __shared__ float red[kWarps];
  __shared__ float cs[kMaxVecs][kMaxRopeDim];  // local token l: cos [0, half), sin [half, 2 half)
  __shared__ float hbuf[kHad ? kWarps : 1][kHad ? 32 * E : 1];
  const int tpr = a.tpr, vpb = kThreads / tpr;
  const int64_t row0 = blockIdx.x * static_cast<int64_t>(vpb), row = row0 + threadIdx.x / tpr;
  const int r = threadIdx.x % tpr;
  const bool valid = row < a.rows;
  const int64_t packs = a.dim / 8;
  T* xr = x + (valid ? row * a.dim : 0);
  rowprep::RowPacks<kP> v;
  v.load(xr, r, tpr, packs, valid);  // in flight while the block takes its sines and cosines

  const int64_t t_first = row0 / a.n_vec;
  if (a.half > 0) {
    const int64_t last_row = min(row0 + vpb, a.rows) - 1;
    const int ntok = static_cast<int>(last_row / a.n_vec - t_first + 1);
    for (int j = threadIdx.x; j < ntok * a.half; j += kThreads) {
      const int l = j / a.half, i = j % a.half;
      float c, s;
      rowprep::rope_cos_sin(a.inv_freq[i], a.positions[t_first + l], c, s);
      cs[l][i] = c;
      cs[l][a.half + i] = s;
    }
    __syncthreads();
  }
  if (a.norm) {  // block-uniform: every thread reaches the group sum's barrier
    rowprep::rms_norm_packs(v, a.weight, a.wcode, a.wpacked, a.dim, a.eps, r, tpr, valid, red);
    v.template round_to<T>();
  }
  if (a.half > 0) {
    if (valid) {
      const float* c = cs[row / a.n_vec - t_first];
      const int64_t rope0 = a.dim - 2 * static_cast<int64_t>(a.half);  // a multiple of 8
#pragma unroll
      for (int k = 0; k < kP; ++k) {
        const int64_t p = r + static_cast<int64_t>(k) * tpr;
        if (p < packs && 8 * p >= rope0) {
          const int i0 = static_cast<int>((8 * p - rope0) / 2);
#pragma unroll
          for (int q = 0; q < 4; ++q) rowprep::rotate_pair(v.v[k][2 * q], v.v[k][2 * q + 1], c[i0 + q], c[a.half + i0 + q]);
        }
      }
    }
    v.template round_to<T>();
  }
  if constexpr (kQ == QKind::kFp8) {
#pragma unroll
    for (int k = 0; k < kP; ++k) {  // every lane: the shuffles of the block of 64
      const int64_t p = r + static_cast<int64_t>(k) * tpr;
      bool in[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) in[q] = valid && p < packs && 8 * p + q < a.n_nope;
      rowprep::fp8_block_of_8_lanes(v.v[k], in);
    }
  } else if constexpr (kHad) {
    if (valid) {  // tpr = 32: warp-uniform
      float* hb = hbuf[threadIdx.x >> 5];
#pragma unroll
      for (int k = 0; k < kP; ++k) {
        const int64_t p = r + static_cast<int64_t>(k) * tpr;
        if (p < packs) {
#pragma unroll
          for (int i = 0; i < 8; ++i) hb[8 * p + i] = v.v[k][i];
        }
      }
      __syncwarp();
      float h[E];
#pragma unroll
      for (int e = 0; e < E; ++e) h[e] = hb[r * E + e];
      rowprep::hadamard_fp4_lanes<E>(h);
      __syncwarp();
#pragma unroll
      for (int e = 0; e < E; ++e) hb[r * E + e] = h[e];
      __syncwarp();
#pragma unroll
      for (int k = 0; k < kP; ++k) {
        const int64_t p = r + static_cast<int64_t>(k) * tpr;
        if (p < packs) {
#pragma unroll
          for (int i = 0; i < 8; ++i) v.v[k][i] = hb[8 * p + i];
        }
      }
    }
  }
  v.store(xr, r, tpr, packs, valid);
}

template <typename T, QKind kQ>
void launch_prep(cudaStream_t stream, unsigned blocks, int kp, T* x, const PrepArgs& a) {
  switch (kp) {
    case 1: launch_kernel(norm_rope_qdq_kernel<T, 1, kQ, 0>, blocks, kThreads, 0, stream, x, a); break;
    case 2: launch_kernel(norm_rope_qdq_kernel<T, 2, kQ, 0>, blocks, kThreads, 0, stream, x, a); break;
    default: launch_kernel(norm_rope_qdq_kernel<T, 4, kQ, 0>, blocks, kThreads, 0, stream, x, a); break;
  }
}

template <typename T>
void launch_prep_hadamard(cudaStream_t stream, unsigned blocks, int64_t dim, T* x, const PrepArgs& a) {
  constexpr QKind kH = QKind::kHadamard;
  switch (dim) {  // (E, packs per thread) of rows of 32 E with 32 threads per row
    case 32: launch_kernel(norm_rope_qdq_kernel<T, 1, kH, 1>, blocks, kThreads, 0, stream, x, a); break;
    case 64: launch_kernel(norm_rope_qdq_kernel<T, 1, kH, 2>, blocks, kThreads, 0, stream, x, a); break;
    case 128: launch_kernel(norm_rope_qdq_kernel<T, 1, kH, 4>, blocks, kThreads, 0, stream, x, a); break;
    case 256: launch_kernel(norm_rope_qdq_kernel<T, 1, kH, 8>, blocks, kThreads, 0, stream, x, a); break;
    default: launch_kernel(norm_rope_qdq_kernel<T, 2, kH, 16>, blocks, kThreads, 0, stream, x, a); break;  // 512
  }
}

}  // namespace

void CudaBackend::norm_rope_qdq(const TensorView& x, const VecPrep& p, const TensorView& positions,
                                const TensorView& inv_freq) {
  expect_device(x, "norm_rope_qdq", "x");
  CLAWMINE_CHECK(x.rank() == 3, "cuda norm_rope_qdq: x must be [T, n_vec, dim], got ", shape_str(x.shape));
  const int64_t T = x.dim(0), n_vec = x.dim(1), dim = x.dim(2), rows = T * n_vec;
  const bool rope = p.rope_dim > 0;
  const bool fp8 = p.qdq == Qdq::kFp8Nope && p.n_nope > 0, had = p.qdq == Qdq::kHadamardFp4;
  const int tpr = rowprep::rms_threads_per_row(dim);
  const int kp = rowprep::rms_regs_packs(dim, tpr);
  const size_t pack_bytes = x.dtype == DType::kF32 ? 32 : 16;
  bool fast = (x.dtype == DType::kF32 || x.dtype == DType::kBF16) && dim > 0 && dim % 8 == 0 && dim <= kMaxDim &&
              reinterpret_cast<uintptr_t>(x.data) % pack_bytes == 0 && kp > 0;
  if (rope) fast = fast && p.rope_dim % 8 == 0 && p.rope_dim <= dim && p.rope_dim <= kMaxRopeDim;
  if (p.qdq == Qdq::kFp8Nope) fast = fast && p.n_nope >= 0 && p.n_nope <= dim;
  if (had) fast = fast && dim >= 32 && dim <= 512 && (dim & (dim - 1)) == 0;
  if (p.norm && p.norm_weight != nullptr) fast = fast && p.norm_weight->numel() == dim;
  if (!fast || rows == 0) {
    norm_rope_qdq_unfused(x, p, positions, inv_freq);
    return;
  }
  if (!p.norm && !rope && !fp8 && !had) return;
  PrepArgs a{};
  a.rows = rows;
  a.n_vec = n_vec;
  a.dim = dim;
  a.tpr = tpr;
  a.norm = p.norm;
  a.eps = p.eps;
  if (p.norm && p.norm_weight != nullptr) {
    expect_device(*p.norm_weight, "norm_rope_qdq", "norm_weight");
    a.weight = p.norm_weight->data;
    a.wcode = rowwise::float_code(p.norm_weight->dtype, "norm_rope_qdq", "norm_weight");
    a.wpacked = reinterpret_cast<uintptr_t>(a.weight) % (8 * rowwise::float_code_bytes(a.wcode)) == 0;
  }
  if (rope) {
    expect_device(positions, "norm_rope_qdq", "positions");
    expect_device(inv_freq, "norm_rope_qdq", "inv_freq");
    CLAWMINE_CHECK(positions.dtype == DType::kI32 && positions.numel() == T, "cuda norm_rope_qdq: positions must be [",
                   T, "] I32, got ", dtype_name(positions.dtype), " ", shape_str(positions.shape));
    CLAWMINE_CHECK(inv_freq.dtype == DType::kF32 && inv_freq.numel() == p.rope_dim / 2,
                   "cuda norm_rope_qdq: inv_freq must be [", p.rope_dim / 2, "] F32 (rope_dim/2), got ",
                   dtype_name(inv_freq.dtype), " ", shape_str(inv_freq.shape));
    a.positions = positions.as<const int32_t>();
    a.inv_freq = inv_freq.as<const float>();
    a.half = static_cast<int>(p.rope_dim / 2);
  }
  a.n_nope = p.n_nope;
  const int64_t vpb = kThreads / tpr, blocks = (rows + vpb - 1) / vpb;
  CLAWMINE_CHECK(blocks <= INT32_MAX, "cuda norm_rope_qdq: x ", shape_str(x.shape), " exceeds the grid");
  const auto nb = static_cast<unsigned>(blocks);
  auto run = [&](auto tv) {
    using T_ = decltype(tv);
    T_* px = x.as<T_>();
    if (had) {
      launch_prep_hadamard<T_>(stream_, nb, dim, px, a);
    } else if (fp8) {
      launch_prep<T_, QKind::kFp8>(stream_, nb, kp, px, a);
    } else {
      launch_prep<T_, QKind::kNone>(stream_, nb, kp, px, a);
    }
    CLAWMINE_CUDA_LAUNCHED("norm_rope_qdq");
  };
  if (x.dtype == DType::kF32) {
    run(float{});
  } else {
    run(__nv_bfloat16{});
  }
}

}  // namespace clawmine::backend::cuda
