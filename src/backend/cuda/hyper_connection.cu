// Manifold-constrained hyper-connections (spec §3.2): hc_pre, hc_post, hc_head.
// hc_pre / hc_head at decode (T <= kFusedMaxT tokens): ONE kernel, hc_fused, grid (token, split of
//   the flattened hc*D row into chunks of 128 * k elements, about 2 blocks per SM): warp w of a
//   block owns the mix rows m = w, w + 8, ... (m = kMix: the sum of squares); each lane streams 4
//   elements of X and of its fn rows per sweep, a warp sum gives the block's partial of each row.
//   The last block of a token to finish (a per-token counter, atomicAdd after __threadfence; it
//   resets the counter to 0) sums the partials in a fixed order (split s into group s % 8, the 8
//   groups in order), then warp 0 computes the gates, warps 1-7 collapse the streams while one
//   thread runs the Sinkhorn normalization of comb.
// hc_pre / hc_head at prefill: two kernels.
//   1. hc_mix_partial: grid (token, split). Each block accumulates, over its part of the row, the
//      sum of squares and the n_mix dot products with the rows of fn (X and fn streamed once,
//      16-byte packs, float32 accumulators in registers), reduces them in a fixed order and writes
//      n_mix + 1 partial sums. Prefill (T >= 2 blocks per SM) uses one block per token.
//   2. hc_finish: one block per token sums the partials (split order fixed), then warp 0 does
//      r = 1/sqrt(mean + rms_eps) and the sigmoid gates; the other warps collapse the streams,
//      x_in[d] = sum_j pre[j] X[j, d], while one thread normalizes comb.
// Gates and comb (both paths, device functions below): pre/post one lane each; comb in one thread
// with the hc x hc matrix in registers: softmax along rows, then the Sinkhorn normalizations, each
// a sum in pairwise order and a multiplication by the correctly rounded reciprocal of (sum + eps).
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
constexpr int64_t kMinSplit = 1024;  // prefill path: elements of the flattened row per block, at least
constexpr int kFusedMaxT = 64;       // tokens that take the fused kernel (one counter each)
constexpr int64_t kFusedUnit = 128;  // fused path: elements of one warp sweep (32 lanes x 4)

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

struct HcScalars {
  const void* base;
  rowwise::FloatCode base_code;
  const void* scale;
  rowwise::FloatCode scale_code;
  float rms_eps, hc_eps;
  int sinkhorn_iters;
};

template <int HC, bool kHead>
constexpr int mix_count() {
  return kHead ? HC : (2 + HC) * HC;
}

// The gate weights warp 0 needs, loaded before the mix totals exist so that their latency
// overlaps the reduction. Lane l < HC: pre gate l; HC <= l < 2 HC: post gate l - HC (hc_pre);
// lane 0 also holds comb's scale and base (hc_pre).
template <int HC>
struct HcGateWeights {
  float base = 0.0f, scale = 0.0f;
  float comb_scale = 0.0f;
  float comb_base[HC * HC] = {};
};

template <int HC, bool kHead>
__device__ __forceinline__ HcGateWeights<HC> load_gate_weights(const HcScalars& p, int lane) {
  HcGateWeights<HC> g;
  if (lane < (kHead ? HC : 2 * HC)) {
    g.base = rowwise::load_float(p.base, p.base_code, lane);
    g.scale = rowwise::load_float(p.scale, p.scale_code, lane < HC ? 0 : 1);
  }
  if constexpr (!kHead) {
    if (lane == 0) {
      g.comb_scale = rowwise::load_float(p.scale, p.scale_code, 2);
#pragma unroll
      for (int m = 0; m < HC * HC; ++m) g.comb_base[m] = rowwise::load_float(p.base, p.base_code, 2 * HC + m);
    }
  }
  return g;
}

// r = 1 / sqrt(mean of squares + rms_eps) from the totals (tot[kMix] = sum of squares of hc*D).
template <int HC, bool kHead>
__device__ __forceinline__ float hc_rms_factor(const float* tot, int64_t D, float rms_eps) {
  return 1.0f / sqrtf(tot[mix_count<HC, kHead>()] / static_cast<float>(HC * D) + rms_eps);
}

// Warp 0: pre[j] (to shared memory) and post[t, j] (hc_pre) from the totals in shared memory.
template <int HC, bool kHead>
__device__ __forceinline__ void hc_gates(const float* tot, int64_t D, const HcGateWeights<HC>& g, const HcScalars& p,
                                         int64_t t, float* pre, float* post) {
  const int lane = threadIdx.x & 31;
  const float r = hc_rms_factor<HC, kHead>(tot, D, p.rms_eps);
  if (lane < HC) pre[lane] = sigmoidf(tot[lane] * r * g.scale + g.base) + p.hc_eps;
  if constexpr (!kHead) {
    if (lane >= HC && lane < 2 * HC) post[t * HC + lane - HC] = 2.0f * sigmoidf(tot[lane] * r * g.scale + g.base);
  }
}

// Sum of v[0..N) in pairwise order ((v0 + v1) + (v2 + v3)) ...; N a power of two.
template <int N>
__device__ __forceinline__ float pairwise_sum(const float (&v)[N]) {
  float s[N];
#pragma unroll
  for (int i = 0; i < N; ++i) s[i] = v[i];
#pragma unroll
  for (int w = 1; w < N; w *= 2) {
#pragma unroll
    for (int i = 0; i < N; i += 2 * w) s[i] = __fadd_rn(s[i], s[i + w]);
  }
  return s[0];
}

// One thread: comb[t] = the Sinkhorn-normalized hc x hc matrix (contract in ops/backend.h) from
// the totals, all of it in registers (no shuffles on the iteration's latency chain).
template <int HC>
__device__ __noinline__ void hc_comb(const float* tot, int64_t D, const HcGateWeights<HC>& g, const HcScalars& p, int64_t t,
                        float* comb) {
  const float r = hc_rms_factor<HC, false>(tot, D, p.rms_eps), eps = p.hc_eps;
  float c[HC][HC];
#pragma unroll
  for (int j = 0; j < HC; ++j) {
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < HC; ++k) {
      c[j][k] = tot[2 * HC + j * HC + k] * r * g.comb_scale + g.comb_base[j * HC + k];
      mx = fmaxf(mx, c[j][k]);
    }
#pragma unroll
    for (int k = 0; k < HC; ++k) c[j][k] = expf(c[j][k] - mx);
    const float inv = __frcp_rn(pairwise_sum(c[j]));
#pragma unroll
    for (int k = 0; k < HC; ++k) c[j][k] = __fadd_rn(__fmul_rn(c[j][k], inv), eps);
  }
  auto normalize_rows = [&] {
#pragma unroll
    for (int j = 0; j < HC; ++j) {
      const float inv = __frcp_rn(__fadd_rn(pairwise_sum(c[j]), eps));
#pragma unroll
      for (int k = 0; k < HC; ++k) c[j][k] = __fmul_rn(c[j][k], inv);
    }
  };
  auto normalize_columns = [&] {
#pragma unroll
    for (int k = 0; k < HC; ++k) {
      float col[HC];
#pragma unroll
      for (int j = 0; j < HC; ++j) col[j] = c[j][k];
      const float inv = __frcp_rn(__fadd_rn(pairwise_sum(col), eps));
#pragma unroll
      for (int j = 0; j < HC; ++j) c[j][k] = __fmul_rn(c[j][k], inv);
    }
  };
  normalize_columns();
  for (int it = 1; it < p.sinkhorn_iters; ++it) {
    normalize_rows();
    normalize_columns();
  }
  float* out = comb + t * HC * HC;
#pragma unroll
  for (int j = 0; j < HC; ++j) {
#pragma unroll
    for (int k = 0; k < HC; ++k) out[j * HC + k] = c[j][k];
  }
}

// Threads [first, kThreads): out[d] = sum_j pre[j] X[j, d] for the token's D elements (xt = X[t]).
// packed: D % 4 == 0 and X, out rows are 4-element aligned.
template <int HC, typename To>
__device__ __forceinline__ void hc_collapse(const float* __restrict__ xt, const float* pre, int64_t D,
                                            To* __restrict__ o, bool packed, int first) {
  if (static_cast<int>(threadIdx.x) < first) return;
  const int tid = threadIdx.x - first, stride = kThreads - first;
  float w[HC];
#pragma unroll
  for (int j = 0; j < HC; ++j) w[j] = pre[j];
  if (packed) {
#pragma unroll 4
    for (int64_t d = 4 * static_cast<int64_t>(tid); d < D; d += 4 * stride) {
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
    for (int64_t d = tid; d < D; d += stride) {
      float acc = 0.0f;
#pragma unroll
      for (int j = 0; j < HC; ++j) acc = fmaf(w[j], xt[j * D + d], acc);
      o[d] = from_f32<To>(acc);
    }
  }
}

// After the totals: gates (warp 0), then the collapse (warps 1-7 for hc_pre, all for hc_head)
// beside comb (thread 0). tot and pre are shared memory; the caller's block is in step.
template <int HC, bool kHead, typename To>
__device__ __forceinline__ void hc_finish_token(const float* tot, float* pre, const HcGateWeights<HC>& g,
                                                const float* __restrict__ X, int64_t D, const HcScalars& p, int64_t t,
                                                To* __restrict__ out, float* __restrict__ post,
                                                float* __restrict__ comb, bool packed) {
  if (threadIdx.x < 32) hc_gates<HC, kHead>(tot, D, g, p, t, pre, post);
  __syncthreads();
  hc_collapse<HC, To>(X + t * HC * D, pre, D, out + t * D, packed, kHead ? 0 : 32);
  if constexpr (!kHead) {
    if (threadIdx.x == 0) hc_comb<HC>(tot, D, g, p, t, comb);
  }
}

// Prefill path, pass 2: one block per token.
template <int HC, bool kHead, typename To>
__global__ void __launch_bounds__(kThreads)
    hc_finish_kernel(const float* __restrict__ X, const float* __restrict__ partial, int S, int64_t D, HcScalars p,
                     To* __restrict__ out, float* __restrict__ post, float* __restrict__ comb, bool packed) {
  pdl_trigger();
  pdl_wait();
  static_assert((HC & (HC - 1)) == 0 && (2 + HC) * HC < 32, "one thread per mix total, HC a power of two");
  constexpr int kMix = mix_count<HC, kHead>();
  __shared__ float tot[kMix + 1];
  __shared__ float pre[HC];
  const int64_t t = blockIdx.x;
  HcGateWeights<HC> g;
  if (threadIdx.x < 32) g = load_gate_weights<HC, kHead>(p, threadIdx.x);
  if (threadIdx.x <= kMix) {
    float v = 0.0f;
    for (int s = 0; s < S; ++s) v += partial[(t * S + s) * (kMix + 1) + threadIdx.x];
    tot[threadIdx.x] = v;
  }
  __syncthreads();
  hc_finish_token<HC, kHead, To>(tot, pre, g, X, D, p, t, out, post, comb, packed);
}

// Decode path: mix partials, then the last block of each token finishes it (see the top).
// packed_mix: n and the chunk are multiples of 4 and X, fn are 4-element aligned; packed_out as
// hc_collapse's packed. counters[t] is 0 on entry and is left 0.
template <int HC, bool kHead, typename Tf, typename To>
__global__ void __launch_bounds__(kThreads)
    hc_fused_kernel(const float* __restrict__ X, const Tf* __restrict__ fn, int64_t D, int64_t chunk,
                    float* __restrict__ partial, unsigned* __restrict__ counters, HcScalars p, To* __restrict__ out,
                    float* __restrict__ post, float* __restrict__ comb, bool packed_mix, bool packed_out) {
  pdl_trigger();
  pdl_wait();
  constexpr int kMix = mix_count<HC, kHead>(), kRows = kMix + 1, kPerWarp = (kRows + kWarps - 1) / kWarps;
  static_assert(kRows <= 32, "one lane per mix row in the final sum");
  __shared__ float red[kWarps][32];
  __shared__ float tot[kRows];
  __shared__ float pre[HC];
  __shared__ bool last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = HC * D, t = blockIdx.x;
  const int s = blockIdx.y, S = gridDim.y;
  const int64_t begin = s * chunk, end = min(n, begin + chunk);
  const float* xt = X + t * n;

  float acc[kPerWarp];
#pragma unroll
  for (int k = 0; k < kPerWarp; ++k) acc[k] = 0.0f;
#pragma unroll 4
  for (int64_t i = begin + 4 * lane; i < end; i += kFusedUnit) {  // sweeps' loads overlap
    float xv[4];
    if (packed_mix) {
      rowwise::load_packed<4>(xt + i, xv);
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) xv[q] = i + q < end ? xt[i + q] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kPerWarp; ++k) {
      const int m = warp + kWarps * k;  // warp-uniform
      if (m < kMix) {
        float fv[4];
        if (packed_mix) {
          rowwise::load_packed<4>(fn + m * n + i, fv);
        } else {
#pragma unroll
          for (int q = 0; q < 4; ++q) fv[q] = i + q < end ? to_f32(fn[m * n + i + q]) : 0.0f;
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[k] = fmaf(xv[q], fv[q], acc[k]);
      } else if (m == kMix) {
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[k] = fmaf(xv[q], xv[q], acc[k]);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kPerWarp; ++k) {
    const int m = warp + kWarps * k;
    const float v = rowwise::warp_sum(acc[k]);
    if (lane == 0 && m < kRows) partial[(t * S + s) * kRows + m] = v;
  }
  __threadfence();  // this block's partials are visible device-wide before its count
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&counters[t], 1u) == static_cast<unsigned>(S - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();

  HcGateWeights<HC> g;
  if (warp == 0) g = load_gate_weights<HC, kHead>(p, lane);
  float v = 0.0f;
  if (lane < kRows) {
#pragma unroll 16
    for (int ss = warp; ss < S; ss += kWarps) v += __ldcg(partial + (t * S + ss) * kRows + lane);
  }
  red[warp][lane] = v;
  __syncthreads();
  if (warp == 0) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += red[w][lane];
    if (lane < kRows) tot[lane] = total;
    if (lane == 0) counters[t] = 0;  // every block of this token has counted: ready for the next launch
  }
  __syncthreads();
  hc_finish_token<HC, kHead, To>(tot, pre, g, X, D, p, t, out, post, comb, packed_out);
}

// X_out[t, k, d] = post[t, k] * y[t, d] + sum_j comb[t, j, k] * X[t, j, d], N consecutive d per
// thread; block b covers token b / dblocks, packs [(b % dblocks) * blockDim.x, ...).
template <int HC, typename Ty, int N>
__global__ void __launch_bounds__(kThreads)
    hc_post_kernel(const Ty* __restrict__ y, const float* __restrict__ X, const float* __restrict__ post,
                   const float* __restrict__ comb, float* __restrict__ X_out, int64_t D, int64_t dblocks) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.x / dblocks;
  const int64_t d = ((blockIdx.x % dblocks) * blockDim.x + threadIdx.x) * N;
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

// The fused path's per-token counters: kFusedMaxT zeros kept per backend (op_state), allocated
// and cleared on first use. A clear issued inside a stream capture is a node of that graph (it
// runs before every replay); `cleared` records whether one ran eagerly, so a capture that was
// discarded leaves the next eager call to clear them again.
struct HcCounters {
  unsigned* data = nullptr;
  bool cleared = false;
};
const char kHcCountersKey = 0;  // its address keys the state

unsigned* hc_counters(CudaBackend& be) {
  auto* st = be.op_state<HcCounters>(&kHcCountersKey);
  if (st->data == nullptr) {
    const TensorView v = be.allocate(DType::kI32, {kFusedMaxT});
    st->data = static_cast<unsigned*>(v.data);  // never released: the arena goes with the backend
  }
  if (!st->cleared) {
    CLAWMINE_CUDA_CHECK(cudaMemsetAsync(st->data, 0, kFusedMaxT * sizeof(unsigned), be.stream()));
    st->cleared = !be.capturing();
  }
  return st->data;
}

// hc_pre (kHead false) or hc_head (true) for HC streams: the fused kernel for T <= kFusedMaxT,
// else the two prefill passes.
template <int HC, bool kHead>
void hc_mix_and_finish(CudaBackend& be, const TensorView& X, const HyperConnectionWeights& w, const HcParams& p,
                       const TensorView& out, float* post, float* comb, const char* op) {
  constexpr int kMix = mix_count<HC, kHead>();
  const int64_t T = X.dim(0), D = X.dim(2), n = HC * D;
  const int64_t target = 2 * std::max(1, be.sm_count());  // blocks: enough to cover the device twice
  const bool fused = T <= kFusedMaxT;
  int64_t S, chunk;
  if (fused) {  // chunks of whole warp sweeps
    const int64_t want = std::max<int64_t>(1, (target + T - 1) / T);
    chunk = std::max(kFusedUnit, ((n + want - 1) / want + kFusedUnit - 1) / kFusedUnit * kFusedUnit);
  } else {  // each split at least kMinSplit elements
    const int64_t want = std::clamp<int64_t>((target + T - 1) / T, 1, std::max<int64_t>(1, n / kMinSplit));
    chunk = ((n + want - 1) / want + 3) / 4 * 4;
  }
  S = (n + chunk - 1) / chunk;
  CLAWMINE_CHECK(S <= 65535 && T <= INT32_MAX, "cuda ", op, ": X ", shape_str(X.shape), " exceeds the grid");
  ops::ScratchFrame frame(be);
  const TensorView partial = be.scratch(DType::kF32, {T, S, kMix + 1});
  const HcScalars scalars{w.base.data,
                          rowwise::float_code(w.base.dtype, op, "base"),
                          w.scale.data,
                          rowwise::float_code(w.scale.dtype, op, "scale"),
                          p.rms_eps,
                          p.hc_eps,
                          static_cast<int>(p.sinkhorn_iters)};
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(S));
  unsigned* counters = fused ? hc_counters(be) : nullptr;
  dispatch_float(w.fn.dtype, op, "fn", [&](auto tf) {
    using Tf = decltype(tf);
    const bool packed_mix = rowwise::packable<float, 4>(X.data, n) && rowwise::packable<Tf, 4>(w.fn.data, n);
    if (!fused) {
      launch_kernel(hc_mix_partial_kernel<kMix, Tf>, grid, kThreads, 0, be.stream(), X.f32(), w.fn.as<const Tf>(), n,
                    chunk, partial.f32(), packed_mix);
      CLAWMINE_CUDA_LAUNCHED("hc mix");
    }
    dispatch_float(out.dtype, op, kHead ? "y" : "x_in", [&](auto to) {
      using To = decltype(to);
      const bool packed_out = rowwise::packable<float, 4>(X.data, D) && rowwise::packable<To, 4>(out.data, D);
      if (fused) {
        launch_kernel(hc_fused_kernel<HC, kHead, Tf, To>, grid, kThreads, 0, be.stream(), X.f32(),
                      w.fn.as<const Tf>(), D, chunk, partial.f32(), counters, scalars, out.as<To>(), post, comb,
                      packed_mix, packed_out);
        CLAWMINE_CUDA_LAUNCHED("hc fused");
      } else {
        launch_kernel(hc_finish_kernel<HC, kHead, To>, static_cast<unsigned>(T), kThreads, 0, be.stream(), X.f32(),
                      partial.f32(), static_cast<int>(S), D, scalars, out.as<To>(), post, comb, packed_out);
        CLAWMINE_CUDA_LAUNCHED("hc finish");
      }
    });
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
      // Blocks of 64 threads when 256-thread blocks would leave most SMs idle (decode).
      const int threads = T * ((D / N + kThreads - 1) / kThreads) < sm_count_ ? 64 : kThreads;
      const int64_t dblocks = (D / N + threads - 1) / threads;
      const auto blocks = static_cast<unsigned>(T * dblocks);
      if (packed) {
        launch_kernel(hc_post_kernel<HC, Ty, 4>, blocks, threads, 0, stream_, y.as<const Ty>(), X.f32(), post.f32(),
                      comb.f32(), X_out.f32(), D, dblocks);
      } else {
        launch_kernel(hc_post_kernel<HC, Ty, 1>, blocks, threads, 0, stream_, y.as<const Ty>(), X.f32(), post.f32(),
                      comb.f32(), X_out.f32(), D, dblocks);
      }
      CLAWMINE_CUDA_LAUNCHED("hc_post");
    });
  });
}

}  // namespace clawmine::backend::cuda
