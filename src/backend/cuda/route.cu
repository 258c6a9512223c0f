// moe_route (spec §3.4).
//   a[e] = sqrt(softplus(logits[t, e])), computed in double and rounded to float exactly as the
//   CPU backend computes it (so the selection and the weights match it bit for bit);
//   hash layers: selection = tid2eid[ids[t], :];
//   routed: the K best of key[e] = a[e] + bias[e] (float32 add), ordered by key descending then
//   expert id ascending: the CPU's partial_sort order, ties to the lower id;
//   weight[k] = a[sel[k]] / (sum_k a[sel[k]] + 1e-20) * routed_scaling in double, summed in k order.
// Two kernels compute this, with the same results (and moe_router_kernel's last block runs the
// second one's body after the router GEMV, below):
//   moe_route_kernel       one warp per token (prefill, many experts): K rounds of a warp
//                          arg-max over the keys in shared memory, an entry taken in an earlier
//                          round skipped;
//   moe_route_block_kernel one block per token, one thread per expert (decode: T <= 32, E <=
//                          256): the E scores in parallel, then thread e's rank is the number of
//                          keys ranking above it (a strict total order without NaN keys, so the
//                          ranks < K are exactly the K rounds' picks); a NaN key falls back to
//                          warp 0 running the K rounds on the same keys.
// A hash row whose token id or table entry is out of range records an op error (op_errors.h)
// and gets idx 0 and weight 0 in every slot, so later ops never index out of bounds.
#include <algorithm>
#include <atomic>
#include <type_traits>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/device.h"
#include "backend/cuda/linear_kernels.cuh"
#include "backend/cuda/moe_tuning.h"
#include "backend/cuda/op_errors.cuh"
#include "backend/cuda/rowwise.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int64_t kMaxRoutedExperts = 2048;  // 64 keys per lane (a 64-bit taken mask), 8 KiB per warp
constexpr int kMaxTopK = 32;                 // one lane per selected expert
constexpr int64_t kBlockMaxTokens = 32;      // decode sizes take moe_route_block_kernel ...
constexpr int kBlockMaxExperts = 256;        // ... up to this many experts (one thread each)

// torch's softplus (beta 1, threshold 20), then sqrt, in double; rounded to float once.
__device__ __forceinline__ float route_score(float logit) {
  const double x = logit;
  const double sp = x > 20.0 ? x : log1p(exp(x));
  return __double2float_rn(__dsqrt_rn(sp));
}

// (v, e) ranks above (bv, be): a larger key, or an equal key and a lower expert id; be < 0 is empty.
__device__ __forceinline__ bool ranks_above(float v, int e, float bv, int be) {
  return e >= 0 && (be < 0 || v > bv || (v == bv && e < be));
}

// The K best of keys[0, E) by one warp: K rounds of a warp arg-max, an entry taken in an earlier
// round skipped (E <= 64 * 32: a 64-bit taken mask per lane). Returns slot `lane`'s expert on
// lanes < K (-1 only if fewer than K entries exist).
__device__ int warp_top_k(const float* keys, int64_t E, int K, int lane) {
  int sel = -1;
  uint64_t taken = 0;  // bit i: entry lane + 32 i was selected
  for (int k = 0; k < K; ++k) {
    float bv = 0.0f;
    int be = -1;
    for (int64_t e = lane, i = 0; e < E; e += 32, ++i) {
      if ((taken >> i) & 1u) continue;
      const float v = keys[e];
      if (ranks_above(v, static_cast<int>(e), bv, be)) {
        bv = v;
        be = static_cast<int>(e);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (ranks_above(ov, oe, bv, be)) {
        bv = ov;
        be = oe;
      }
    }
    be = __shfl_sync(0xffffffffu, be, 0);  // one answer even if a NaN key made the order partial
    if (be >= 0 && be % 32 == lane) taken |= uint64_t{1} << (be / 32);
    if (lane == k) sel = be;
  }
  return sel;
}

// Warp-wide (all 32 lanes): lane k < K holds slot k's expert `sel` and its score `a`; writes
// idx and the normalized weights of token t (weights summed in slot order, in double).
__device__ __forceinline__ void write_route(float a, int sel, bool ok, int64_t t, int K, int lane,
                                            float routed_scaling, int32_t* __restrict__ idx,
                                            float* __restrict__ weight) {
  double sum = 0.0;
  for (int k = 0; k < K; ++k) sum = __dadd_rn(sum, static_cast<double>(__shfl_sync(0xffffffffu, a, k)));
  if (lane < K) {
    const bool good = ok && sel >= 0;
    idx[t * K + lane] = good ? sel : 0;
    weight[t * K + lane] = good ? __double2float_rn(__dmul_rn(__ddiv_rn(static_cast<double>(a), __dadd_rn(sum, 1e-20)),
                                                              static_cast<double>(routed_scaling)))
                                : 0.0f;
  }
}

// Hash routing for one token, by one whole warp: lane k < K gets sel = tid2eid[ids[t], k]. Returns
// false for the whole warp (and records which) when the id or one of its experts is out of range.
template <typename Tid>
__device__ bool hash_selection(const Tid* __restrict__ tid2eid, int64_t V, const int32_t* __restrict__ ids, int64_t t,
                               int64_t E, int K, int lane, OpErrorRecord* err, int& sel) {
  bool ok = true;
  const int32_t id = ids[t];
  if (id < 0 || id >= V) {
    ok = false;
    if (lane == 0) report_op_error(err, kOpErrorRouteId, id, t, V);
  } else if (lane < K) {
    const int64_t e = static_cast<int64_t>(tid2eid[static_cast<int64_t>(id) * K + lane]);
    if (e < 0 || e >= E) {
      report_op_error(err, kOpErrorRouteExpert, id, lane, e, E);
    } else {
      sel = static_cast<int>(e);
    }
  }
  return __all_sync(0xffffffffu, ok && (lane >= K || sel >= 0));
}

// tid2eid null: routed top-K; else hash selection from the table (Tid = int32_t or int64_t).
template <typename Tid>
__global__ void moe_route_kernel(const float* __restrict__ logits, const float* __restrict__ bias,
                                 const Tid* __restrict__ tid2eid, int64_t V, const int32_t* __restrict__ ids, int64_t T,
                                 int64_t E, int K, float routed_scaling, int32_t* __restrict__ idx,
                                 float* __restrict__ weight, OpErrorRecord* err) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ float keys_all[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + warp;
  if (t >= T) return;  // whole warps
  const float* lt = logits + t * E;
  int sel = -1;  // lane k < K: the expert of slot k
  bool ok = true;
  if (tid2eid != nullptr) {
    ok = hash_selection(tid2eid, V, ids, t, E, K, lane, err, sel);
  } else {
    float* keys = keys_all + static_cast<int64_t>(warp) * E;
    for (int64_t e = lane; e < E; e += 32) {
      const float a = route_score(lt[e]);
      keys[e] = bias != nullptr ? __fadd_rn(a, bias[e]) : a;
    }
    __syncwarp();
    sel = warp_top_k(keys, E, K, lane);
  }
  const float a = lane < K && sel >= 0 ? route_score(lt[sel]) : 0.0f;
  write_route(a, sel, ok, t, K, lane, routed_scaling, idx, weight);
}

// Token t's route by one block of at least E threads (E <= kBlockMaxExperts): thread e computes
// a[e] and key[e] into shared memory, then selects by rank (header); warp 0 writes. Every thread
// of the block calls it (its barriers); lt is the token's logits row, read through L2 (in
// moe_router_kernel other blocks of the launch wrote it).
template <typename Tid>
__device__ void route_token_block(const float* lt, const float* __restrict__ bias, const Tid* __restrict__ tid2eid,
                                  int64_t V, const int32_t* __restrict__ ids, int64_t t, int E, int K,
                                  float routed_scaling, int32_t* __restrict__ idx, float* __restrict__ weight,
                                  OpErrorRecord* err) {
  __shared__ float score[kBlockMaxExperts], keys[kBlockMaxExperts];
  __shared__ int32_t picked[kMaxTopK];
  const int tid = threadIdx.x, lane = tid & 31;
  __syncthreads();  // a previous token's readers of score[] and picked[] are done
  int sel = -1;     // warp 0, lane k < K: the expert of slot k
  bool ok = true;
  if (tid2eid != nullptr && tid < 32) {  // the table lookups first: their latency overlaps the scores
    ok = hash_selection(tid2eid, V, ids, t, E, K, lane, err, sel);
  }
  float key = 0.0f;
  if (tid < E) {
    const float a = route_score(__ldcg(lt + tid));
    key = bias != nullptr ? __fadd_rn(a, bias[tid]) : a;
    score[tid] = a;
    keys[tid] = key;
  }
  if (tid2eid == nullptr) {
    // Every thread reaches the barriers (uniform branch: tid2eid is a kernel argument).
    const bool any_nan = __syncthreads_or(tid < E && isnan(key));
    if (!any_nan) {
      if (tid < E) {
        int rank = 0;
#pragma unroll 8
        for (int j = 0; j < E; ++j) rank += ranks_above(keys[j], j, key, tid);
        if (rank < K) picked[rank] = tid;
      }
    } else if (tid < 32) {
      const int s = warp_top_k(keys, E, K, lane);
      if (lane < K) picked[lane] = s;
    }
    __syncthreads();
    if (tid < K) sel = picked[tid];
  } else {
    __syncthreads();  // score[] complete
  }
  if (tid < 32) {
    const float a = lane < K && sel >= 0 ? score[sel] : 0.0f;  // == route_score(lt[sel]), bit for bit
    write_route(a, sel, ok, t, K, lane, routed_scaling, idx, weight);
  }
}

// One block per token, blockDim.x = E rounded up to a warp (E <= kBlockMaxExperts).
template <typename Tid>
__global__ void __launch_bounds__(kBlockMaxExperts)
    moe_route_block_kernel(const float* __restrict__ logits, const float* __restrict__ bias,
                           const Tid* __restrict__ tid2eid, int64_t V, const int32_t* __restrict__ ids, int E, int K,
                           float routed_scaling, int32_t* __restrict__ idx, float* __restrict__ weight,
                           OpErrorRecord* err) {
  pdl_wait();
  pdl_trigger();
  const int64_t t = blockIdx.x;
  route_token_block(logits + t * E, bias, tid2eid, V, ids, t, E, K, routed_scaling, idx, weight, err);
}

// The router GEMV and the route in one launch (decode sizes: T <= kRouterMaxT, E <=
// kBlockMaxExperts): `split` warps of a block share expert e's row, each a contiguous slice of its
// 16-byte weight vectors (kRouterVecs per lane and round, the first round issued before
// griddepcontrol.wait: the gate is an upload), and compute x[t] . slice for every token: the
// activations of kRouterTokens tokens are loaded together, every load issued before the first
// FMA (a load inside the FMA loop waits out one L2 round trip per vector: 64 experts' router
// took ~6 us more per layer than the two launches it replaced). Each warp's sum goes to shared
// memory, and the row's slices are added in slice order into logits[t, e]; the block counts, and
// the last block to count routes every token with route_token_block, the same body as
// moe_route_block_kernel, so idx and weight are what moe_route gives for these logits. The counter
// is 0 on entry and left 0. This saves the route's launch on the decode step's chain (router
// GEMV, then route, then the experts).
constexpr int kRouterThreads = kBlockMaxExperts;  // the last block routes with one thread per expert
constexpr int kRouterWarps = kRouterThreads / 32;
constexpr int kRouterMaxT = 8;
constexpr int kRouterVecs = 8;  // 16-byte weight vectors per lane and round

// Warps per expert row: a power of two up to kRouterWarps, enough for ~64 blocks of E rows.
int router_split(int64_t E) {
  int split = 1;
  while (split < kRouterWarps && E * split < 64 * kRouterWarps) split *= 2;
  return split;
}

template <typename TW, typename TX, typename Tid>
__global__ void __launch_bounds__(kRouterThreads)
    moe_router_kernel(const TX* __restrict__ x, const TW* __restrict__ gate, int D, int T, int E, int split,
                      const float* __restrict__ bias, const Tid* __restrict__ tid2eid, int64_t V,
                      const int32_t* __restrict__ ids, int K, float routed_scaling, float* __restrict__ logits,
                      int32_t* __restrict__ idx, float* __restrict__ weight, unsigned* __restrict__ counter,
                      OpErrorRecord* err) {
  constexpr int kEpv = 16 / static_cast<int>(sizeof(TW));  // weights per 16-byte vector
  constexpr int kRouterTokens = sizeof(TX) == 2 ? 2 : 1;   // tokens whose activations load together
  using XPack = rowwise::Packed<TX, kEpv>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rows = kRouterWarps / split;  // experts per block
  const int e = static_cast<int>(blockIdx.x) * rows + warp / split, part = warp % split;
  const bool has_row = e < E;  // warp-uniform
  const TW* wr = gate + static_cast<int64_t>(has_row ? e : 0) * D;
  const int nvec = D / kEpv, span = (nvec + split - 1) / split;
  const int v0 = part * span, v1 = min(nvec, v0 + span);  // this warp's slice [v0, v1), maybe empty
  constexpr int per_round = 32 * kRouterVecs;
  uint4 wv[kRouterVecs];
  auto load_round = [&](int r) {
#pragma unroll
    for (int j = 0; j < kRouterVecs; ++j) {
      const int v = v0 + r * per_round + 32 * j + lane;
      wv[j] = has_row && v < v1 ? ld_stream16(wr + static_cast<int64_t>(v) * kEpv) : make_uint4(0u, 0u, 0u, 0u);
    }
  };
  load_round(0);  // the gate is an upload: before the wait
  pdl_begin(true);
  pdl_wait();
  float acc[kRouterMaxT];
#pragma unroll
  for (int t = 0; t < kRouterMaxT; ++t) acc[t] = 0.0f;
  const int rounds = v1 > v0 ? (v1 - v0 + per_round - 1) / per_round : 0;
  for (int r = 0; r < rounds; ++r) {
    if (r > 0) load_round(r);
#pragma unroll
    for (int t0 = 0; t0 < kRouterMaxT; t0 += kRouterTokens) {
      if (t0 >= T) break;
      XPack xp[kRouterTokens][kRouterVecs];
#pragma unroll
      for (int g = 0; g < kRouterTokens; ++g) {
#pragma unroll
        for (int j = 0; j < kRouterVecs; ++j) {
          const int v = v0 + r * per_round + 32 * j + lane;
          if (has_row && t0 + g < T && v < v1) {
            xp[g][j] = *reinterpret_cast<const XPack*>(x + static_cast<int64_t>(t0 + g) * D + static_cast<int64_t>(v) * kEpv);
          } else {
#pragma unroll
            for (int i = 0; i < kEpv; ++i) xp[g][j].v[i] = TX{};
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kRouterVecs; ++j) {
        const rowwise::Packed<TW, kEpv> wp = *reinterpret_cast<const rowwise::Packed<TW, kEpv>*>(&wv[j]);
#pragma unroll
        for (int g = 0; g < kRouterTokens; ++g) {
#pragma unroll
          for (int i = 0; i < kEpv; ++i) acc[t0 + g] = fmaf(to_f32(wp.v[i]), to_f32(xp[g][j].v[i]), acc[t0 + g]);
        }
      }
    }
  }
  __shared__ float part_sum[kRouterWarps][kRouterMaxT];
#pragma unroll
  for (int t = 0; t < kRouterMaxT; ++t) {
    if (t >= T) break;
    const float sum = rowwise::warp_sum(acc[t]);
    if (lane == 0) part_sum[warp][t] = sum;
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < rows * T) {
    const int row = static_cast<int>(threadIdx.x) / T, t = static_cast<int>(threadIdx.x) % T;
    const int er = static_cast<int>(blockIdx.x) * rows + row;
    if (er < E) {
      float sum = 0.0f;
      for (int p = 0; p < split; ++p) sum += part_sum[row * split + p][t];
      logits[static_cast<int64_t>(t) * E + er] = sum;
      __threadfence();  // this logit is visible device-wide before the count
    }
  }
  __syncthreads();
  __shared__ bool last;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (threadIdx.x == 0) *counter = 0u;  // every block has counted: ready for the next launch
  for (int t = 0; t < T; ++t)
    route_token_block(logits + static_cast<int64_t>(t) * E, bias, tid2eid, V, ids, t, E, K, routed_scaling, idx,
                      weight, err);
}

std::atomic<int> g_router_fused{-1};  // set_moe_router_fused: < 0 until the environment is read
int router_fused_from_env() { return env_switch("CLAWMINE_MOE_ROUTER_FUSED", false) ? 1 : 0; }
std::atomic<int64_t> g_router_launches{0};
const int kRouterCounterKey = 0;

// moe_route's arguments, checked.
struct RouteCall {
  int64_t T = 0, E = 0, K = 0, V = 0;
  bool hash = false;
  const float* bias = nullptr;
  const int32_t* ids = nullptr;
};
RouteCall check_route(const CudaBackend& be, const TensorView& logits, const TensorView& bias,
                      const TensorView& tid2eid, const TensorView& ids, const TensorView& idx, const TensorView& weight) {
  be.expect_device(logits, "moe_route", "logits");
  be.expect_device(idx, "moe_route", "idx");
  be.expect_device(weight, "moe_route", "weight");
  CLAWMINE_CHECK(logits.dtype == DType::kF32 && logits.rank() == 2, "cuda moe_route: logits must be [T, E] F32, got ",
                 dtype_name(logits.dtype), " ", shape_str(logits.shape));
  RouteCall c;
  c.T = logits.dim(0);
  c.E = logits.dim(1);
  const int64_t T = c.T, E = c.E;
  CLAWMINE_CHECK(idx.dtype == DType::kI32 && idx.rank() == 2 && idx.dim(0) == T, "cuda moe_route: idx must be [", T,
                 ", K] I32, got ", dtype_name(idx.dtype), " ", shape_str(idx.shape));
  c.K = idx.dim(1);
  const int64_t K = c.K;
  CLAWMINE_CHECK(K >= 1 && K <= kMaxTopK, "cuda moe_route: top-", K, " is outside the supported [1, ", kMaxTopK, "]");
  CLAWMINE_CHECK(weight.dtype == DType::kF32 && weight.numel() == T * K, "cuda moe_route: weight must be [", T, ", ", K,
                 "] F32, got ", dtype_name(weight.dtype), " ", shape_str(weight.shape));
  c.hash = !tid2eid.empty();
  if (c.hash) {
    be.expect_device(tid2eid, "moe_route", "tid2eid");
    be.expect_device(ids, "moe_route", "ids");
    CLAWMINE_CHECK(
        (tid2eid.dtype == DType::kI32 || tid2eid.dtype == DType::kI64) && tid2eid.rank() == 2 && tid2eid.dim(1) == K,
        "cuda moe_route: tid2eid must be [V, ", K, "] I32/I64, got ", dtype_name(tid2eid.dtype), " ",
        shape_str(tid2eid.shape));
    c.V = tid2eid.dim(0);
    CLAWMINE_CHECK(ids.dtype == DType::kI32 && ids.numel() == T, "cuda moe_route: hash routing needs ids [", T,
                   "] I32, got ", dtype_name(ids.dtype), " ", shape_str(ids.shape));
    c.ids = ids.as<const int32_t>();
  } else {
    CLAWMINE_CHECK(K <= E, "cuda moe_route: top-", K, " of ", E, " experts");
    CLAWMINE_CHECK(E <= kMaxRoutedExperts, "cuda moe_route: ", E, " experts exceed the supported ", kMaxRoutedExperts);
    if (!bias.empty()) {
      be.expect_device(bias, "moe_route", "bias");
      CLAWMINE_CHECK(bias.dtype == DType::kF32 && bias.numel() == E, "cuda moe_route: bias must be [", E, "] F32, got ",
                     dtype_name(bias.dtype), " ", shape_str(bias.shape));
      c.bias = bias.as<const float>();
    }
  }
  return c;
}

// The element type of a typed pointer the dispatchers below pass (const T* -> T).
template <typename P>
using pointee_t = std::remove_const_t<std::remove_pointer_t<P>>;

// Runs fn with the hash table as a typed pointer (null for routed layers).
template <typename Fn>
void with_table(const TensorView& tid2eid, Fn&& fn) {
  if (!tid2eid.empty() && tid2eid.dtype == DType::kI64) {
    fn(tid2eid.as<const int64_t>());
  } else {
    fn(tid2eid.empty() ? static_cast<const int32_t*>(nullptr) : tid2eid.as<const int32_t>());
  }
}

}  // namespace

void CudaBackend::moe_route(const TensorView& logits, const TensorView& bias, const TensorView& tid2eid,
                            const TensorView& ids, float routed_scaling, const TensorView& idx,
                            const TensorView& weight) {
  const RouteCall c = check_route(*this, logits, bias, tid2eid, ids, idx, weight);
  const int64_t T = c.T, E = c.E, K = c.K;
  if (T == 0) return;
  OpErrorRecord* err = c.hash ? op_error_record(*this) : nullptr;
  if (T <= kBlockMaxTokens && E <= kBlockMaxExperts) {
    const unsigned threads = static_cast<unsigned>(std::max<int64_t>(32, (E + 31) / 32 * 32));
    with_table(tid2eid, [&](auto* table) {
      using Tid = pointee_t<decltype(table)>;
      launch_kernel(moe_route_block_kernel<Tid>, static_cast<unsigned>(T), threads, 0, stream_,
                    logits.as<const float>(), c.bias, table, c.V, c.ids, static_cast<int>(E), static_cast<int>(K),
                    routed_scaling, idx.as<int32_t>(), weight.as<float>(), err);
    });
    CLAWMINE_CUDA_LAUNCHED("moe_route");
    return;
  }
  const auto blocks = static_cast<unsigned>((T + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const size_t smem = c.hash ? 0 : static_cast<size_t>(kWarpsPerBlock * E) * sizeof(float);
  with_table(tid2eid, [&](auto* table) {
    using Tid = pointee_t<decltype(table)>;
    launch_kernel(moe_route_kernel<Tid>, blocks, kWarpsPerBlock * 32, smem, stream_, logits.as<const float>(), c.bias,
                  table, c.V, c.ids, T, E, static_cast<int>(K), routed_scaling, idx.as<int32_t>(), weight.as<float>(),
                  err);
  });
  CLAWMINE_CUDA_LAUNCHED("moe_route");
}

void set_moe_router_fused(int mode) { g_router_fused.store(mode < 0 ? -1 : mode > 0 ? 1 : 0, std::memory_order_relaxed); }
int64_t moe_router_fused_launches() { return g_router_launches.load(std::memory_order_relaxed); }

void CudaBackend::moe_router(const TensorView& x, const LinearWeight& gate, const TensorView& bias,
                             const TensorView& tid2eid, const TensorView& ids, float routed_scaling,
                             const TensorView& logits, const TensorView& idx, const TensorView& weight) {
  const bool on = env_setting(g_router_fused, router_fused_from_env) == 1;
  const int64_t T = x.rank() == 2 ? x.dim(0) : -1, D = gate.in_features, E = gate.out_features;
  const DType wt = gate.weight.dtype;
  const bool dense = gate.format == model::deepseek_v4::WeightFormat::kDense && (wt == DType::kBF16 || wt == DType::kF32);
  const size_t xsz = x.dtype == DType::kBF16 ? 2 : x.dtype == DType::kF32 ? 4 : 0;
  const int64_t epv = dense ? 16 / static_cast<int64_t>(dtype_size(wt)) : 0;  // weights per 16-byte vector
  const bool fits = on && dense && xsz != 0 && T >= 1 && T <= kRouterMaxT && E >= 1 && E <= kBlockMaxExperts &&
                    x.dim(-1) == D && x.numel() == T * D && D <= 0x7fffffff && D % epv == 0 &&
                    logits.dtype == DType::kF32 && logits.rank() == 2 && logits.dim(0) == T && logits.dim(1) == E &&
                    reinterpret_cast<uintptr_t>(x.data) % (static_cast<size_t>(epv) * xsz) == 0 &&
                    reinterpret_cast<uintptr_t>(gate.weight.data) % 16 == 0;
  if (!fits) {  // also every malformed call: linear and moe_route name what is wrong
    Backend::moe_router(x, gate, bias, tid2eid, ids, routed_scaling, logits, idx, weight);
    return;
  }
  expect_device(x, "moe_router", "x");
  expect_device(logits, "moe_router", "logits");
  make_weight_desc(gate, "moe_router");  // validates the gate's views (dtypes, shapes, device)
  const RouteCall c = check_route(*this, logits, bias, tid2eid, ids, idx, weight);
  OpErrorRecord* err = c.hash ? op_error_record(*this) : nullptr;
  unsigned* counter = zeroed_counters(&kRouterCounterKey, 1);
  const int split = router_split(E);
  const int64_t rows = kRouterWarps / split;
  const auto blocks = static_cast<unsigned>((E + rows - 1) / rows);
  with_table(tid2eid, [&](auto* table) {
    using Tid = pointee_t<decltype(table)>;
    auto go = [&](auto* w, auto* xp) {
      using TW = pointee_t<decltype(w)>;
      using TX = pointee_t<decltype(xp)>;
      launch_kernel(moe_router_kernel<TW, TX, Tid>, blocks, kRouterThreads, 0, stream_, xp, w, static_cast<int>(D),
                    static_cast<int>(T), static_cast<int>(E), split, c.bias, table, c.V, c.ids, static_cast<int>(c.K),
                    routed_scaling, logits.as<float>(), idx.as<int32_t>(), weight.as<float>(), counter, err);
    };
    auto with_x = [&](auto* w) {
      if (x.dtype == DType::kBF16) {
        go(w, x.as<const __nv_bfloat16>());
      } else {
        go(w, x.as<const float>());
      }
    };
    if (wt == DType::kBF16) {
      with_x(gate.weight.as<const __nv_bfloat16>());
    } else {
      with_x(gate.weight.as<const float>());
    }
  });
  CLAWMINE_CUDA_LAUNCHED("moe_router");
  g_router_launches.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace clawmine::backend::cuda
