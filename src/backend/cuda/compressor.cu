// The KV compressor of a chunk on the GPU (spec §3.3 C; ops/backend.h compress_chunk). Positions
// p0 .. p0+T-1; window j covers positions [j*m, (j+1)*m); a row at position q lives in the
// carried state (state.pending row q - (p0 - p0 % m) = q % m) when q < p0, else in the chunk
// (row q - p0, its gate plus ape[q % m]). Two kernels in stream order:
//   1. compress_pool_kernel: entry n (window j = p0/m + n), channel d: gather the slots, per-channel
//      softmax over them (max first, then the weighted sum), pooled[n, d]. CSA slots [0, m) are
//      the previous window's first halves: state.overlap for n = 0, chunk/pending rows of window
//      j - 1 otherwise, absent (weight 0) for j = 0; slots [m, 2m) this window's second halves.
//   2. compress_state_kernel: pending rows = the chunk's incomplete tail (gate with ape), overlap
//      (CSA) = first halves of the last window completed. It runs after kernel 1 has read the
//      old state; within it, the thread that reads old pending[i][col] for the overlap is the one
//      that then overwrites pending[i][col].
#include <cmath>
#include <cstdint>

#include "backend/cuda/backend_impl.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kPoolThreads = 128;
constexpr int kStateThreads = 256;

// The carried state and the chunk, as one source of rows by position.
template <typename TK>
struct CompressorRows {
  const TK* kv;            // [T, W] chunk projections
  const float* gate;       // [T, W] chunk gate logits (ape not yet added)
  const float* ape;        // [m, W]
  const TK* pending_kv;    // [m, W] rows of the window containing p0, before p0
  const float* pending_gate;
  int64_t p0, m, W;

  // kv and gate (position bias included) at position q (r = q % m, known to every caller), column col.
  __device__ __forceinline__ void at(int64_t q, int64_t r, int64_t col, float& g, float& v) const {
    if (q < p0) {
      g = pending_gate[r * W + col];
      v = to_f32(pending_kv[r * W + col]);
    } else {
      const int64_t t = q - p0;
      g = gate[t * W + col] + ape[r * W + col];
      v = to_f32(kv[t * W + col]);
    }
  }
};

// Slot s of entry n, channel d (d < hd): its gate and kv; false when the slot is absent.
template <typename TK>
__device__ __forceinline__ bool pool_slot(const CompressorRows<TK>& rows, const TK* overlap_kv,
                                          const float* overlap_gate, bool overlap, int64_t hd, int64_t n, int64_t j,
                                          int64_t s, int64_t d, float& g, float& v) {
  const int64_t m = rows.m;
  if (!overlap) {
    rows.at(j * m + s, s, d, g, v);
    return true;
  }
  if (s >= m) {  // this window's second halves
    rows.at(j * m + (s - m), s - m, hd + d, g, v);
    return true;
  }
  if (j == 0) return false;  // no previous window
  if (n == 0) {              // the previous window completed before this chunk
    g = overlap_gate[s * hd + d];
    v = to_f32(overlap_kv[s * hd + d]);
    return true;
  }
  rows.at((j - 1) * m + s, s, d, g, v);  // first halves of the previous window of this chunk
  return true;
}

// grid (n_new, ceil(hd / kPoolThreads)); one thread per (entry, channel).
template <typename TK, typename TO>
__global__ void __launch_bounds__(kPoolThreads)
    compress_pool_kernel(CompressorRows<TK> rows, const TK* __restrict__ overlap_kv,
                         const float* __restrict__ overlap_gate, bool overlap, int64_t hd, TO* __restrict__ pooled) {
  const int64_t n = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= hd) return;
  const int64_t j = rows.p0 / rows.m + n;
  const int64_t slots = overlap ? 2 * rows.m : rows.m;
  const float neg_inf = -INFINITY;
  float M = neg_inf, g, v;
  for (int64_t s = 0; s < slots; ++s)
    if (pool_slot(rows, overlap_kv, overlap_gate, overlap, hd, n, j, s, d, g, v)) M = fmaxf(M, g);
  float num = 0.0f, den = 0.0f;
  if (M != neg_inf) {  // a channel whose slots are all -inf has no weight: 0
    for (int64_t s = 0; s < slots; ++s) {
      if (!pool_slot(rows, overlap_kv, overlap_gate, overlap, hd, n, j, s, d, g, v) || g == neg_inf) continue;
      const float e = expf(g - M);
      den += e;
      num = fmaf(e, v, num);
    }
  }
  pooled[n * hd + d] = from_f32<TO>(den > 0.0f ? num / den : 0.0f);
}

// One thread per (state row i, column col) of the [m, W] pending state.
template <typename TK>
__global__ void __launch_bounds__(kStateThreads)
    compress_state_kernel(CompressorRows<TK> rows, int64_t T, bool overlap, int64_t hd, TK* pending_kv,
                          float* pending_gate, TK* overlap_kv, float* overlap_gate) {
  // No __restrict__: pending_* alias rows.pending_* (read, then written, by the same thread).
  const int64_t m = rows.m, W = rows.W, p0 = rows.p0;
  const int e = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);  // m * W < 2^31 (host check)
  if (e >= m * W) return;
  const int64_t i = e / static_cast<int>(W), col = e % static_cast<int>(W);
  const int64_t pe = p0 + T, tail_start = pe - pe % m;
  const int64_t n_new = pe / m - p0 / m;
  float g, v;
  if (overlap && n_new > 0 && col < hd) {
    // First halves of the last completed window (starts at tail_start - m); a row before p0 is
    // old pending row i, read here before this same thread overwrites it below.
    rows.at(tail_start - m + i, i, col, g, v);
    overlap_gate[i * hd + col] = g;
    overlap_kv[i * hd + col] = from_f32<TK>(v);
  }
  const int64_t q = tail_start + i;
  if (i < pe % m && q >= p0) {  // a chunk row of the incomplete tail window
    rows.at(q, i, col, g, v);
    pending_gate[i * W + col] = g;
    pending_kv[i * W + col] = from_f32<TK>(v);
  }
}

void expect_f32(const TensorView& v, const char* arg) {
  CLAWMINE_CHECK(v.dtype == DType::kF32, "cuda compress_chunk: ", arg, " must be F32, got ", dtype_name(v.dtype));
}
void expect_shape2(const TensorView& v, int64_t rows, int64_t cols, const char* arg) {
  CLAWMINE_CHECK(v.rank() == 2 && v.dim(0) == rows && v.dim(1) == cols, "cuda compress_chunk: ", arg, " must be [",
                 rows, ", ", cols, "], got ", shape_str(v.shape));
}

}  // namespace

void CudaBackend::compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape, int64_t p0,
                                 int64_t rate, bool overlap, const CompressorStateView& state,
                                 const TensorView& pooled) {
  const char* op = "compress_chunk";
  expect_device(kv, op, "kv");
  expect_device(gate, op, "gate");
  expect_device(ape, op, "ape");
  expect_device(state.pending_kv, op, "state.pending_kv");
  expect_device(state.pending_gate, op, "state.pending_gate");
  CLAWMINE_CHECK(rate >= 1, "cuda compress_chunk: rate ", rate, " must be >= 1");
  CLAWMINE_CHECK(p0 >= 0, "cuda compress_chunk: p0 ", p0, " is negative");
  CLAWMINE_CHECK(kv.rank() == 2, "cuda compress_chunk: kv must be [T, c*hd], got ", shape_str(kv.shape));
  const int64_t T = kv.dim(0), W = kv.dim(1), m = rate, c = overlap ? 2 : 1;
  CLAWMINE_CHECK(W % c == 0, "cuda compress_chunk: kv width ", W, " is not divisible by ", c);
  const int64_t hd = W / c;
  expect_shape2(gate, T, W, "gate");
  expect_shape2(ape, m, W, "ape");
  expect_shape2(state.pending_kv, m, W, "state.pending_kv");
  expect_shape2(state.pending_gate, m, W, "state.pending_gate");
  expect_f32(gate, "gate");
  expect_f32(ape, "ape");
  expect_f32(state.pending_gate, "state.pending_gate");
  CLAWMINE_CHECK(state.pending_kv.dtype == kv.dtype, "cuda compress_chunk: state.pending_kv has dtype ",
                 dtype_name(state.pending_kv.dtype), ", kv has ", dtype_name(kv.dtype));
  if (overlap) {
    expect_device(state.overlap_kv, op, "state.overlap_kv");
    expect_device(state.overlap_gate, op, "state.overlap_gate");
    expect_shape2(state.overlap_kv, m, hd, "state.overlap_kv");
    expect_shape2(state.overlap_gate, m, hd, "state.overlap_gate");
    expect_f32(state.overlap_gate, "state.overlap_gate");
    CLAWMINE_CHECK(state.overlap_kv.dtype == kv.dtype, "cuda compress_chunk: state.overlap_kv has dtype ",
                   dtype_name(state.overlap_kv.dtype), ", kv has ", dtype_name(kv.dtype));
  }
  const int64_t n_new = (p0 + T) / m - p0 / m;
  if (n_new > 0) {
    expect_device(pooled, op, "pooled");
    CLAWMINE_CHECK(pooled.numel() == n_new * hd && pooled.dim(-1) == hd, "cuda compress_chunk: pooled must be [",
                   n_new, ", ", hd, "], got ", shape_str(pooled.shape));
  }
  if (T == 0 || hd == 0) return;
  CLAWMINE_CHECK(m * W < (int64_t{1} << 31), "cuda compress_chunk: state of ", m, " x ", W, " is too large");

  dispatch_float(kv.dtype, op, "kv", [&](auto kv_tag) {
    using TK = decltype(kv_tag);
    const CompressorRows<TK> rows{kv.as<TK>(),      gate.as<float>(), ape.as<float>(), state.pending_kv.as<TK>(),
                                  state.pending_gate.as<float>(), p0, m, W};
    TK* ov_kv = overlap ? state.overlap_kv.as<TK>() : nullptr;
    float* ov_gate = overlap ? state.overlap_gate.as<float>() : nullptr;
    if (n_new > 0) {
      dispatch_float(pooled.dtype, op, "pooled", [&](auto out_tag) {
        using TO = decltype(out_tag);
        const dim3 grid(static_cast<unsigned>(n_new), blocks_for(hd, kPoolThreads));
        compress_pool_kernel<TK, TO><<<grid, kPoolThreads, 0, stream_>>>(rows, ov_kv, ov_gate, overlap, hd,
                                                                          pooled.as<TO>());
        CLAWMINE_CUDA_LAUNCHED("compress_chunk (pool)");
      });
    }
    // Stream order: the state is updated only after the pooling kernel has read it.
    compress_state_kernel<TK><<<blocks_for(m * W, kStateThreads), kStateThreads, 0, stream_>>>(
        rows, T, overlap, hd, state.pending_kv.as<TK>(), state.pending_gate.as<float>(), ov_kv, ov_gate);
    CLAWMINE_CUDA_LAUNCHED("compress_chunk (state)");
  });
}

}  // namespace clawmine::backend::cuda
