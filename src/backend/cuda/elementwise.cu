// Lookup and elementwise ops: embed (table rows by token id), hc_expand (one row copied into
// every hyper-connection stream), iota (I32 positions) and add. Each output element is one
// conversion of its input (add: one float32 addition), so F32 results are bit-exact with the CPU
// backend. Rows whose length and base allow it move in 16-byte packs of 8 (or 4) elements.
// rms_norm and rope live in norm_rope.cu, qdq in qdq.cu.
#include <algorithm>
#include <climits>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/op_errors.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the device, never more than n needs.
unsigned stride_blocks(int64_t n, int sm_count) {
  const unsigned cap = static_cast<unsigned>(std::max(1, sm_count) * 16);
  return std::max(1u, std::min(blocks_for(n, kThreads), cap));
}

// One block per token t: out[t, :] = table[ids[t], :] converted to To. An id outside [0, V)
// records kOpErrorEmbedId and writes zeros for the row (never reads outside the table).
template <typename Tt, typename To, bool kPacked>
__global__ void embed_kernel(const Tt* __restrict__ table, const int32_t* __restrict__ ids, To* __restrict__ out,
                             int64_t V, int64_t D, OpErrorRecord* err) {
  pdl_wait();
  pdl_trigger();
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  To* o = out + t * D;
  if (id < 0 || id >= V) {
    if (threadIdx.x == 0) report_op_error(err, kOpErrorEmbedId, id, t, V);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = from_f32<To>(0.0f);
    return;
  }
  const Tt* row = table + static_cast<int64_t>(id) * D;
  if constexpr (kPacked) {
    for (int64_t c = threadIdx.x; c < D / 8; c += blockDim.x) {
      float v[8];
      rowwise::load_packed<8>(row + c * 8, v);
      rowwise::store_packed<8>(o + c * 8, v);
    }
  } else {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = from_f32<To>(to_f32(row[d]));
  }
}

// X[t, j, :] = e[t, :] for j < hc, over packs of N elements of a row (N = 4: one float4 of X).
template <typename Te, int N>
__global__ void hc_expand_kernel(const Te* __restrict__ e, float* __restrict__ X, int64_t T, int64_t hc, int64_t D) {
  pdl_wait();
  pdl_trigger();
  const int64_t per_row = D / N, n = T * per_row;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = p / per_row, d = (p % per_row) * N;
    float v[N];
    if constexpr (N == 1) {
      v[0] = to_f32(e[t * D + d]);
    } else {
      rowwise::load_packed<N>(e + t * D + d, v);
    }
    for (int64_t j = 0; j < hc; ++j) {
      float* x = X + (t * hc + j) * D + d;
      if constexpr (N == 1) {
        x[0] = v[0];
      } else {
        rowwise::store_packed<N>(x, v);
      }
    }
  }
}

__global__ void iota_kernel(int32_t* __restrict__ out, int64_t n, int64_t start, int64_t step) {
  pdl_wait();
  pdl_trigger();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<int32_t>(start + i * step);
}

// out = a + b, one dtype, in packs of N (N = 1: element by element). out may alias a or b:
// each element is read and written by the same thread.
template <typename T, int N>
__global__ void add_kernel(const T* a, const T* b, T* out, int64_t n_packs) {
  pdl_wait();
  pdl_trigger();
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n_packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (N == 1) {
      out[p] = from_f32<T>(__fadd_rn(to_f32(a[p]), to_f32(b[p])));
    } else {
      float va[N], vb[N];
      rowwise::load_packed<N>(a + p * N, va);
      rowwise::load_packed<N>(b + p * N, vb);
#pragma unroll
      for (int i = 0; i < N; ++i) va[i] = __fadd_rn(va[i], vb[i]);
      rowwise::store_packed<N>(out + p * N, va);
    }
  }
}

// The same with three independent float dtypes (rare: mixed F32 / activation operands).
template <typename To>
__global__ void add_mixed_kernel(const void* a, rowwise::FloatCode ca, const void* b, rowwise::FloatCode cb, To* out,
                                 int64_t n) {
  pdl_wait();
  pdl_trigger();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_f32<To>(__fadd_rn(rowwise::load_float(a, ca, i), rowwise::load_float(b, cb, i)));
}

// One block per source row: dst[keys[i] / divisor, :] = src[i, :] (converted); a key outside dst
// is recorded as a data error and its row is skipped.
template <typename S, typename D>
__global__ void scatter_rows_kernel(const S* __restrict__ src, const int32_t* __restrict__ keys, int64_t divisor,
                                    D* __restrict__ dst, int64_t w, int64_t n_dst, OpErrorRecord* err) {
  pdl_wait();
  pdl_trigger();
  const int64_t i = blockIdx.x, key = keys[i], r = key / divisor;
  if (key < 0 || r >= n_dst) {
    if (threadIdx.x == 0) report_op_error(err, kOpErrorScatterRow, key, divisor, i, n_dst);
    return;
  }
  for (int64_t c = threadIdx.x; c < w; c += blockDim.x) dst[r * w + c] = from_f32<D>(to_f32(src[i * w + c]));
}

}  // namespace

void CudaBackend::embed(const TensorView& table, const TensorView& ids, const TensorView& out) {
  expect_device(table, "embed", "table");
  expect_device(ids, "embed", "ids");
  expect_device(out, "embed", "out");
  CLAWMINE_CHECK(table.rank() == 2, "cuda embed: table must be [V, D], got ", shape_str(table.shape));
  CLAWMINE_CHECK(ids.dtype == DType::kI32 && ids.rank() == 1, "cuda embed: ids must be [T] I32, got ",
                 dtype_name(ids.dtype), " ", shape_str(ids.shape));
  const int64_t V = table.dim(0), D = table.dim(1), T = ids.dim(0);
  CLAWMINE_CHECK(out.numel() == T * D, "cuda embed: out ", shape_str(out.shape), " does not hold [", T, ", ", D, "]");
  if (T == 0 || D == 0) return;
  OpErrorRecord* err = op_error_record(*this);
  dispatch_float(table.dtype, "embed", "table", [&](auto tt) {
    using Tt = decltype(tt);
    dispatch_float(out.dtype, "embed", "out", [&](auto to) {
      using To = decltype(to);
      const bool packed = rowwise::packable<Tt, 8>(table.data, D) && rowwise::packable<To, 8>(out.data, D);
      auto* kernel = packed ? embed_kernel<Tt, To, true> : embed_kernel<Tt, To, false>;
      launch_kernel(kernel, static_cast<unsigned>(T), kThreads, 0, stream_, table.as<const Tt>(),
                    ids.as<const int32_t>(), out.as<To>(), V, D, err);
      CLAWMINE_CUDA_LAUNCHED("embed");
    });
  });
}

void CudaBackend::hc_expand(const TensorView& e, const TensorView& X) {
  expect_device(e, "hc_expand", "e");
  expect_device(X, "hc_expand", "X");
  CLAWMINE_CHECK(X.dtype == DType::kF32 && X.rank() == 3, "cuda hc_expand: X must be [T, hc, D] F32, got ",
                 dtype_name(X.dtype), " ", shape_str(X.shape));
  const int64_t T = X.dim(0), hc = X.dim(1), D = X.dim(2);
  CLAWMINE_CHECK(e.numel() == T * D, "cuda hc_expand: e ", shape_str(e.shape), " does not hold [", T, ", ", D,
                 "] for X ", shape_str(X.shape));
  if (T * hc * D == 0) return;
  dispatch_float(e.dtype, "hc_expand", "e", [&](auto te) {
    using Te = decltype(te);
    if (rowwise::packable<Te, 4>(e.data, D) && rowwise::packable<float, 4>(X.data, D)) {
      launch_kernel(hc_expand_kernel<Te, 4>, stride_blocks(T * D / 4, sm_count_), kThreads, 0, stream_,
                    e.as<const Te>(), X.f32(), T, hc, D);
    } else {
      launch_kernel(hc_expand_kernel<Te, 1>, stride_blocks(T * D, sm_count_), kThreads, 0, stream_, e.as<const Te>(),
                    X.f32(), T, hc, D);
    }
    CLAWMINE_CUDA_LAUNCHED("hc_expand");
  });
}

void CudaBackend::iota(const TensorView& out, int64_t start, int64_t step) {
  expect_device(out, "iota", "out");
  CLAWMINE_CHECK(out.dtype == DType::kI32, "cuda iota: out must be I32, got ", dtype_name(out.dtype));
  const int64_t n = out.numel();
  if (n == 0) return;
  // Every value start + i*step must be an int32 (checked without int64 overflow).
  const bool fits = start >= INT32_MIN && start <= INT32_MAX && step >= INT32_MIN && step <= INT32_MAX &&
                    n <= INT32_MAX && start + (n - 1) * step >= INT32_MIN && start + (n - 1) * step <= INT32_MAX;
  CLAWMINE_CHECK(fits, "cuda iota: ", n, " values from ", start, " in steps of ", step, " do not fit I32");
  launch_kernel(iota_kernel, stride_blocks(n, sm_count_), kThreads, 0, stream_, out.as<int32_t>(), n, start, step);
  CLAWMINE_CUDA_LAUNCHED("iota");
}

void CudaBackend::scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) {
  expect_device(src, "scatter_rows", "src");
  expect_device(keys, "scatter_rows", "keys");
  expect_device(dst, "scatter_rows", "dst");
  CLAWMINE_CHECK(src.rank() == 2 && dst.rank() == 2 && src.dim(1) == dst.dim(1) && keys.dtype == DType::kI32 &&
                     keys.rank() == 1 && keys.dim(0) == src.dim(0),
                 "cuda scatter_rows: src ", shape_str(src.shape), ", keys ", dtype_name(keys.dtype), " ",
                 shape_str(keys.shape), " and dst ", shape_str(dst.shape), " must be [n, w], I32 [n] and [N, w]");
  CLAWMINE_CHECK(divisor >= 1, "cuda scatter_rows: divisor ", divisor, " must be >= 1");
  const int64_t n = src.dim(0), w = src.dim(1);
  if (n == 0 || w == 0) return;
  OpErrorRecord* err = op_error_record(*this);
  dispatch_float(src.dtype, "scatter_rows", "src", [&](auto s) {
    using S = decltype(s);
    dispatch_float(dst.dtype, "scatter_rows", "dst", [&](auto d) {
      using D = decltype(d);
      launch_kernel(scatter_rows_kernel<S, D>, static_cast<unsigned>(n), kThreads, 0, stream_, src.as<const S>(),
                    keys.as<const int32_t>(), divisor, dst.as<D>(), w, dst.dim(0), err);
      CLAWMINE_CUDA_LAUNCHED("scatter_rows");
    });
  });
}

void CudaBackend::add(const TensorView& a, const TensorView& b, const TensorView& out) {
  expect_device(a, "add", "a");
  expect_device(b, "add", "b");
  expect_device(out, "add", "out");
  const int64_t n = a.numel();
  CLAWMINE_CHECK(b.numel() == n && out.numel() == n, "cuda add: a ", shape_str(a.shape), ", b ", shape_str(b.shape),
                 " and out ", shape_str(out.shape), " differ in element count");
  if (n == 0) return;
  if (a.dtype == b.dtype && a.dtype == out.dtype) {
    dispatch_float(out.dtype, "add", "out", [&](auto tv) {
      using T = decltype(tv);
      if (rowwise::packable<T, 8>(a.data, n) && rowwise::packable<T, 8>(b.data, n) &&
          rowwise::packable<T, 8>(out.data, n)) {
        launch_kernel(add_kernel<T, 8>, stride_blocks(n / 8, sm_count_), kThreads, 0, stream_, a.as<const T>(),
                      b.as<const T>(), out.as<T>(), n / 8);
      } else {
        launch_kernel(add_kernel<T, 1>, stride_blocks(n, sm_count_), kThreads, 0, stream_, a.as<const T>(),
                      b.as<const T>(), out.as<T>(), n);
      }
      CLAWMINE_CUDA_LAUNCHED("add");
    });
    return;
  }
  const rowwise::FloatCode ca = rowwise::float_code(a.dtype, "add", "a"), cb = rowwise::float_code(b.dtype, "add", "b");
  dispatch_float(out.dtype, "add", "out", [&](auto tv) {
    using T = decltype(tv);
    launch_kernel(add_mixed_kernel<T>, stride_blocks(n, sm_count_), kThreads, 0, stream_, a.data, ca, b.data, cb,
                  out.as<T>(), n);
    CLAWMINE_CUDA_LAUNCHED("add");
  });
}

}  // namespace clawmine::backend::cuda
