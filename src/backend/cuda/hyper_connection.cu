// Manifold-constrained hyper-connections (spec §3.2): hc_pre, hc_post, hc_head.
// hc_pre / hc_head run in two kernels:
//   1. hc_mix_partial: grid (token, split of the flattened hc*D row). Each block accumulates, over
//      its part of the row, the sum of squares and the n_mix dot products with the rows of fn
//      (X and fn streamed once, 16-byte packs, float32 accumulators in registers), reduces them in
//      a fixed order and writes n_mix + 1 partial sums. Decode (few tokens) splits each row over
//      several blocks so that fn streams from many SMs; prefill uses one block per token.
//   2. hc_finish: one block per token sums the partials (split order fixed), then one warp does
//      r = 1/sqrt(mean + rms_eps), the sigmoid gates, and (hc_pre) the hc x hc comb: one lane per
//      entry, softmax along rows and the Sinkhorn normalizations with shuffles inside row / column
//      lane groups; finally all threads collapse the streams: x_in[d] = sum_j pre[j] X[j, d].
// hc_post: one thread per (token, 4 consecutive d): every output stream k from post, comb^T and
// the hc input streams. All maths in float32 (the CPU works in double; budgets in the tests).
// hc_mult = 4 is instantiated (V4-Flash and V4-Pro); another value is one case in hc_dispatch.
#include <algorithm>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMinSplit = 1024;  // elements of the flattened row per block, at least

template <typename F>
void hc_dispatch(int64_t hc, const char* op, F&& f) {
  switch (hc) {
    case 4:
      f(std::integral_constant<int, 4>{});
      return;
    default:
      throw Error(str_cat("cuda ", op, ": hc_mult ", hc, " is not instantiated (hyper_connection.cu has 4)"));
  }
}

// partial[(t * S + s) * (kMix + 1) + m]: over elements [s * chunk, min(n, (s+1) * chunk)) of
// token t's flattened streams xf = X[t] (n = hc*D): m < kMix: xf . fn[m]; m = kMix: xf . xf.
// packed: n and chunk are multiples of 4 and X, fn are 16-byte (F32) / 8-byte aligned.
template <int kMix, typename Tf>
__global__ void __launch_bounds__(kThreads)
    hc_mix_partial_kernel(const float* __restrict__ X, const Tf* __restrict__ fn, int64_t n, int64_t chunk,
                          float* __restrict__ partial, bool packed) {
  pdl_trigger();
  pdl_wait();
  __shared__ float red[kWarps][kMix + 1];
  const int64_t t = blockIdx.x;
  const int s = blockIdx.y, S = gridDim.y;
  const int64_t begin = s * chunk, end = min(n, begin + chunk);
  const float* xt = X + t * n;
  float acc[kMix + 1];
#pragma unroll
  for (int m = 0; m <= kMix; ++m) acc[m] = 0.0f;
  if (packed) {
    for (int64_t i = begin + 4 * static_cast<int64_t>(threadIdx.x); i < end; i += 4 * kThreads) {
      float xv[4];
      rowwise::load_packed<4>(xt + i, xv);
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[kMix] = fmaf(xv[q], xv[q], acc[kMix]);
#pragma unroll
      for (int m = 0; m < kMix; ++m) {
        float fv[4];
        rowwise::load_packed<4>(fn + m * n + i, fv);
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[m] = fmaf(xv[q], fv[q], acc[m]);
      }
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const float xv = xt[i];
      acc[kMix] = fmaf(xv, xv, acc[kMix]);
#pragma unroll
      for (int m = 0; m < kMix; ++m) acc[m] = fmaf(xv, to_f32(fn[m * n + i]), acc[m]);
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m <= kMix; ++m) {
    const float v = rowwise::warp_sum(acc[m]);
    if (lane == 0) red[warp][m] = v;
  }
  __syncthreads();
  if (threadIdx.x <= kMix) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; ++w) v += red[w][threadIdx.x];
    partial[(t * S + s) * (kMix + 1) + threadIdx.x] = v;
  }
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// Sums over the lanes of a row group (HC consecutive lanes) or a column group (lanes equal mod HC
// within the first HC*HC): lane l holds C[l / HC][l % HC].
template <int HC>
__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
  for (int o = 1; o < HC; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <int HC>
__device__ __forceinline__ float row_max(float v) {
#pragma unroll
  for (int o = 1; o < HC; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <int HC>
__device__ __forceinline__ float col_sum(float v) {
#pragma unroll
  for (int o = HC; o < HC * HC; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct HcScalars {
  const void* base;
  rowwise::FloatCode base_code;
  const void* scale;
  rowwise::FloatCode scale_code;
  float rms_eps, hc_eps;
  int sinkhorn_iters;
};

// One block per token. kHead: hc_head (kMix = HC: pre only, y = out); else hc_pre
// (kMix = (2 + HC) * HC: pre, post, comb; x_in = out).
template <int HC, bool kHead, typename To>
__global__ void __launch_bounds__(kThreads)
    hc_finish_kernel(const float* __restrict__ X, const float* __restrict__ partial, int S, int64_t D, HcScalars p,
                     To* __restrict__ out, float* __restrict__ post, float* __restrict__ comb, bool packed) {
  pdl_trigger();
  pdl_wait();
  static_assert(HC * HC <= 32 && (HC & (HC - 1)) == 0, "the comb needs HC*HC <= 32 lanes, HC a power of two");
  constexpr int kMix = kHead ? HC : (2 + HC) * HC;
  __shared__ float tot[kMix + 1];
  __shared__ float pre[HC];
  const int64_t t = blockIdx.x;
  if (threadIdx.x <= kMix) {
    float v = 0.0f;
    for (int s = 0; s < S; ++s) v += partial[(t * S + s) * (kMix + 1) + threadIdx.x];
    tot[threadIdx.x] = v;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const float r = 1.0f / sqrtf(tot[kMix] / static_cast<float>(HC * D) + p.rms_eps);
    const float s0 = rowwise::load_float(p.scale, p.scale_code, 0);
    if (lane < HC) pre[lane] = sigmoidf(tot[lane] * r * s0 + rowwise::load_float(p.base, p.base_code, lane)) + p.hc_eps;
    if constexpr (!kHead) {
      const float s1 = rowwise::load_float(p.scale, p.scale_code, 1),
                  s2 = rowwise::load_float(p.scale, p.scale_code, 2);
      if (lane < HC)
        post[t * HC + lane] =
            2.0f * sigmoidf(tot[HC + lane] * r * s1 + rowwise::load_float(p.base, p.base_code, HC + lane));
      // comb: lane l < HC*HC holds C[l / HC][l % HC]; the other lanes carry a dummy logit 0 (their
      // row and column shuffle groups hold inactive lanes only).
      const bool active = lane < HC * HC;
      const float logit =
          active ? tot[2 * HC + lane] * r * s2 + rowwise::load_float(p.base, p.base_code, 2 * HC + lane) : 0.0f;
      const float e = expf(logit - row_max<HC>(logit));
      float c = e / row_sum<HC>(e) + p.hc_eps;
      c = c / (col_sum<HC>(c) + p.hc_eps);
      for (int it = 1; it < p.sinkhorn_iters; ++it) {
        c = c / (row_sum<HC>(c) + p.hc_eps);
        c = c / (col_sum<HC>(c) + p.hc_eps);
      }
      if (active) comb[t * HC * HC + lane] = c;
    }
  }
  __syncthreads();
  float w[HC];
#pragma unroll
  for (int j = 0; j < HC; ++j) w[j] = pre[j];
  const float* xt = X + t * HC * D;
  To* o = out + t * D;
  if (packed) {
    for (int64_t d = 4 * static_cast<int64_t>(threadIdx.x); d < D; d += 4 * kThreads) {
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < HC; ++j) {
        float xv[4];
        rowwise::load_packed<4>(xt + j * D + d, xv);
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[q] = fmaf(w[j], xv[q], acc[q]);
      }
      rowwise::store_packed<4>(o + d, acc);
    }
  } else {
    for (int64_t d = threadIdx.x; d < D; d += kThreads) {
      float acc = 0.0f;
#pragma unroll
      for (int j = 0; j < HC; ++j) acc = fmaf(w[j], xt[j * D + d], acc);
      o[d] = from_f32<To>(acc);
    }
  }
}

// X_out[t, k, d] = post[t, k] * y[t, d] + sum_j comb[t, j, k] * X[t, j, d], N consecutive d per
// thread; block b covers token b / dblocks, packs [(b % dblocks) * kThreads, ...).
template <int HC, typename Ty, int N>
__global__ void __launch_bounds__(kThreads)
    hc_post_kernel(const Ty* __restrict__ y, const float* __restrict__ X, const float* __restrict__ post,
                   const float* __restrict__ comb, float* __restrict__ X_out, int64_t D, int64_t dblocks) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.x / dblocks;
  const int64_t d = ((blockIdx.x % dblocks) * kThreads + threadIdx.x) * N;
  if (d >= D) return;
  float yv[N], xv[HC][N];
  if constexpr (N == 1) {
    yv[0] = to_f32(y[t * D + d]);
  } else {
    rowwise::load_packed<N>(y + t * D + d, yv);
  }
#pragma unroll
  for (int j = 0; j < HC; ++j) {
    if constexpr (N == 1) {
      xv[j][0] = X[(t * HC + j) * D + d];
    } else {
      rowwise::load_packed<N>(X + (t * HC + j) * D + d, xv[j]);
    }
  }
  const float* C = comb + t * HC * HC;
#pragma unroll
  for (int k = 0; k < HC; ++k) {
    const float pk = post[t * HC + k];
    float o[N];
#pragma unroll
    for (int q = 0; q < N; ++q) {
      float acc = pk * yv[q];
#pragma unroll
      for (int j = 0; j < HC; ++j) acc = fmaf(C[j * HC + k], xv[j][q], acc);
      o[q] = acc;
    }
    if constexpr (N == 1) {
      X_out[(t * HC + k) * D + d] = o[0];
    } else {
      rowwise::store_packed<N>(X_out + (t * HC + k) * D + d, o);
    }
  }
}

struct HcShape {
  int64_t T, hc, D;
};

HcShape check_streams(const CudaBackend& be, const TensorView& X, int64_t hc_mult, const char* op) {
  be.expect_device(X, op, "X");
  CLAWMINE_CHECK(X.dtype == DType::kF32 && X.rank() == 3, "cuda ", op, ": X must be [T, hc, D] F32, got ",
                 dtype_name(X.dtype), " ", shape_str(X.shape));
  CLAWMINE_CHECK(X.dim(1) == hc_mult, "cuda ", op, ": X has shape ", shape_str(X.shape), " but hc_mult is ", hc_mult);
  return {X.dim(0), X.dim(1), X.dim(2)};
}

void check_weights(const CudaBackend& be, const HyperConnectionWeights& w, int64_t n_mix, int64_t n, int64_t n_scale,
                   const char* op) {
  be.expect_device(w.fn, op, "fn");
  be.expect_device(w.base, op, "base");
  be.expect_device(w.scale, op, "scale");
  CLAWMINE_CHECK(w.fn.rank() == 2 && w.fn.dim(0) == n_mix && w.fn.dim(1) == n, "cuda ", op, ": fn must be [", n_mix,
                 ", ", n, "], got ", shape_str(w.fn.shape));
  CLAWMINE_CHECK(w.base.numel() == n_mix, "cuda ", op, ": base must have ", n_mix, " elements, got ",
                 shape_str(w.base.shape));
  CLAWMINE_CHECK(w.scale.numel() >= n_scale, "cuda ", op, ": scale must have ", n_scale, " elements, got ",
                 shape_str(w.scale.shape));
}

// Both passes of hc_pre (kHead false) or hc_head (true) for HC streams.
template <int HC, bool kHead>
void hc_mix_and_finish(CudaBackend& be, const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                       const TensorView& out, float* post, float* comb, const char* op) {
  constexpr int kMix = kHead ? HC : (2 + HC) * HC;
  const int64_t T = X.dim(0), D = X.dim(2), n = HC * D;
  // Splits: enough blocks to cover the device twice, each at least kMinSplit elements.
  const int64_t target = 2 * std::max(1, be.sm_count());
  int64_t S = std::clamp<int64_t>((target + T - 1) / T, 1, std::max<int64_t>(1, n / kMinSplit));
  const int64_t chunk = ((n + S - 1) / S + 3) / 4 * 4;
  S = (n + chunk - 1) / chunk;
  ops::ScratchFrame frame(be);
  const TensorView partial = be.scratch(DType::kF32, {T, S, kMix + 1});
  const HcScalars scalars{w.base.data,
                          rowwise::float_code(w.base.dtype, op, "base"),
                          w.scale.data,
                          rowwise::float_code(w.scale.dtype, op, "scale"),
                          p.rms_eps,
                          p.hc_eps,
                          static_cast<int>(p.sinkhorn_iters)};
  dispatch_float(w.fn.dtype, op, "fn", [&](auto tf) {
    using Tf = decltype(tf);
    const bool packed = rowwise::packable<float, 4>(X.data, n) && rowwise::packable<Tf, 4>(w.fn.data, n);
    launch_kernel(hc_mix_partial_kernel<kMix, Tf>, dim3(static_cast<unsigned>(T), static_cast<unsigned>(S)), kThreads,
                  0, be.stream(), X.f32(), w.fn.as<const Tf>(), n, chunk, partial.f32(), packed);
    CLAWMINE_CUDA_LAUNCHED("hc mix");
  });
  dispatch_float(out.dtype, op, kHead ? "y" : "x_in", [&](auto to) {
    using To = decltype(to);
    const bool packed = rowwise::packable<float, 4>(X.data, D) && rowwise::packable<To, 4>(out.data, D);
    launch_kernel(hc_finish_kernel<HC, kHead, To>, static_cast<unsigned>(T), kThreads, 0, be.stream(), X.f32(),
                  partial.f32(), static_cast<int>(S), D, scalars, out.as<To>(), post, comb, packed);
    CLAWMINE_CUDA_LAUNCHED("hc finish");
  });
}

}  // namespace

void CudaBackend::hc_pre(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                         const TensorView& x_in, const TensorView& post, const TensorView& comb) {
  const auto [T, hc, D] = check_streams(*this, X, p.hc_mult, "hc_pre");
  const int64_t n_mix = (2 + hc) * hc;
  CLAWMINE_CHECK(p.sinkhorn_iters >= 1 && p.sinkhorn_iters <= (1 << 20), "cuda hc_pre: sinkhorn_iters ",
                 p.sinkhorn_iters, " must be in [1, 2^20]");
  check_weights(*this, w, n_mix, hc * D, 3, "hc_pre");
  expect_device(x_in, "hc_pre", "x_in");
  expect_device(post, "hc_pre", "post");
  expect_device(comb, "hc_pre", "comb");
  CLAWMINE_CHECK(x_in.numel() == T * D, "cuda hc_pre: x_in ", shape_str(x_in.shape), " does not hold [", T, ", ", D,
                 "]");
  CLAWMINE_CHECK(post.dtype == DType::kF32 && post.numel() == T * hc, "cuda hc_pre: post must be [", T, ", ", hc,
                 "] F32, got ", dtype_name(post.dtype), " ", shape_str(post.shape));
  CLAWMINE_CHECK(comb.dtype == DType::kF32 && comb.numel() == T * hc * hc, "cuda hc_pre: comb must be [", T, ", ", hc,
                 ", ", hc, "] F32, got ", dtype_name(comb.dtype), " ", shape_str(comb.shape));
  if (T == 0) return;
  CLAWMINE_CHECK(D > 0, "cuda hc_pre: X has no hidden dims");
  hc_dispatch(hc, "hc_pre", [&](auto hc_c) {
    hc_mix_and_finish<decltype(hc_c)::value, false>(*this, X, w, p, x_in, post.f32(), comb.f32(), "hc_pre");
  });
}

void CudaBackend::hc_head(const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                          const TensorView& y) {
  const auto [T, hc, D] = check_streams(*this, X, p.hc_mult, "hc_head");
  check_weights(*this, w, hc, hc * D, 1, "hc_head");
  expect_device(y, "hc_head", "y");
  CLAWMINE_CHECK(y.numel() == T * D, "cuda hc_head: y ", shape_str(y.shape), " does not hold [", T, ", ", D, "]");
  if (T == 0) return;
  CLAWMINE_CHECK(D > 0, "cuda hc_head: X has no hidden dims");
  hc_dispatch(hc, "hc_head", [&](auto hc_c) {
    hc_mix_and_finish<decltype(hc_c)::value, true>(*this, X, w, p, y, nullptr, nullptr, "hc_head");
  });
}

void CudaBackend::hc_post(const TensorView& y, const TensorView& X, const TensorView& post, const TensorView& comb,
                          const TensorView& X_out) {
  expect_device(y, "hc_post", "y");
  expect_device(X, "hc_post", "X");
  expect_device(post, "hc_post", "post");
  expect_device(comb, "hc_post", "comb");
  expect_device(X_out, "hc_post", "X_out");
  CLAWMINE_CHECK(X.dtype == DType::kF32 && X.rank() == 3, "cuda hc_post: X must be [T, hc, D] F32, got ",
                 dtype_name(X.dtype), " ", shape_str(X.shape));
  const int64_t T = X.dim(0), hc = X.dim(1), D = X.dim(2);
  CLAWMINE_CHECK(y.numel() == T * D, "cuda hc_post: y ", shape_str(y.shape), " does not hold [", T, ", ", D, "]");
  CLAWMINE_CHECK(post.dtype == DType::kF32 && post.numel() == T * hc, "cuda hc_post: post must be [", T, ", ", hc,
                 "] F32, got ", dtype_name(post.dtype), " ", shape_str(post.shape));
  CLAWMINE_CHECK(comb.dtype == DType::kF32 && comb.numel() == T * hc * hc, "cuda hc_post: comb must be [", T, ", ", hc,
                 ", ", hc, "] F32, got ", dtype_name(comb.dtype), " ", shape_str(comb.shape));
  CLAWMINE_CHECK(X_out.dtype == DType::kF32 && X_out.numel() == T * hc * D, "cuda hc_post: X_out must be [", T, ", ",
                 hc, ", ", D, "] F32, got ", dtype_name(X_out.dtype), " ", shape_str(X_out.shape));
  const auto* xb = static_cast<const char*>(X.data);
  const auto* ob = static_cast<const char*>(X_out.data);
  CLAWMINE_CHECK(ob + X_out.nbytes() <= xb || xb + X.nbytes() <= ob, "cuda hc_post: X_out must not overlap X");
  if (T == 0 || D == 0) return;
  hc_dispatch(hc, "hc_post", [&](auto hc_c) {
    constexpr int HC = decltype(hc_c)::value;
    dispatch_float(y.dtype, "hc_post", "y", [&](auto ty) {
      using Ty = decltype(ty);
      const bool packed = rowwise::packable<Ty, 4>(y.data, D) && rowwise::packable<float, 4>(X.data, D) &&
                          rowwise::packable<float, 4>(X_out.data, D);
      const int N = packed ? 4 : 1;
      const int64_t dblocks = (D / N + kThreads - 1) / kThreads;
      const auto blocks = static_cast<unsigned>(T * dblocks);
      if (packed) {
        launch_kernel(hc_post_kernel<HC, Ty, 4>, blocks, kThreads, 0, stream_, y.as<const Ty>(), X.f32(), post.f32(),
                      comb.f32(), X_out.f32(), D, dblocks);
      } else {
        launch_kernel(hc_post_kernel<HC, Ty, 1>, blocks, kThreads, 0, stream_, y.as<const Ty>(), X.f32(), post.f32(),
                      comb.f32(), X_out.f32(), D, dblocks);
      }
      CLAWMINE_CUDA_LAUNCHED("hc_post");
    });
  });
}

}  // namespace clawmine::backend::cuda
