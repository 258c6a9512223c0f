// Attention ops on the GPU (spec §3.3 B/D/F): the per-query key index lists and sparse attention
// with a per-head sink over gathered rows of [kv; entries].
//
// sparse_attention picks a kernel by dtype and shape:
//   * BF16/F16 with a head dim of 64, 128, 256 or 512 (V4: 512): tensor cores (attention_mma.cu),
//     64 heads per block, so a block reads each gathered key row once for all heads (MQA);
//   * otherwise (F32, odd head dims): the FMA kernel below, exact F32 arithmetic.
//   * T <= 4 with 16-byte vector rows: the decode kernel (attention_decode.cu), one launch that
//     fills the device and merges its splits itself (and fuses sparse_attention_rope's rope).
// The first two run split-S ("flash-decoding") when (tokens x head groups) would leave most of the
// multiprocessors idle (decode): the key slots are cut into ranges, one block each, whose partial
// softmax states go to scratch and are merged by merge_splits_kernel in a fixed order (the
// formula is in attention_kernels.cuh). No atomics anywhere: the output is deterministic.
//
// FMA kernel: one block per (token t, group of kAttnHeads heads, key range). The group's queries
// live in registers; the block's warps split the range's key slots (warp w takes s = w,
// w + kAttnWarps, ...), and each warp streams one gathered key row at a time (16-byte vector
// loads when the row allows, lane-interleaved so each load instruction is coalesced), scores it
// against every head of the group and keeps an online softmax (running max m, sum l,
// accumulator) per head. The warps' partial states are merged exactly at the end:
//   M = max(sink, m_w), out = sum_w e^(m_w - M) acc_w / (sum_w e^(m_w - M) l_w + e^(sink - M)),
// in a fixed warp order (deterministic); for a split, without the sink, into the partials.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/attention_kernels.cuh"
#include "backend/cuda/backend_impl.cuh"

namespace clawmine::backend::cuda {
namespace {

// ---- attention_index -------------------------------------------------------------------------

constexpr int kIndexThreads = 256;

// One block per query t: window slots, then compressed slots (HCA range, or CSA compaction of
// selected[t, :] >= 0 in order), -1 elsewhere. selected == nullptr: HCA (or no compressor).
__global__ void __launch_bounds__(kIndexThreads)
    attention_index_kernel(const int32_t* __restrict__ positions, int64_t n_prev, int64_t window, int64_t entry_base,
                           int64_t n_entries, int64_t rate, const int32_t* __restrict__ selected, int64_t k,
                           int64_t S, int32_t* __restrict__ idx) {
  pdl_wait();
  pdl_trigger();
  using Scan = cub::BlockScan<int, kIndexThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  const int64_t t = blockIdx.x;
  const int64_t p = positions[t], p0 = positions[0];
  int32_t* row = idx + t * S;

  const int64_t lo = p - window + 1 > 0 ? p - window + 1 : 0;
  for (int64_t s = threadIdx.x; s < window; s += blockDim.x) {
    const int64_t kp = lo + s;
    row[s] = kp <= p ? static_cast<int32_t>(n_prev + kp - p0) : -1;
  }
  if (selected == nullptr) {
    int64_t avail = 0;
    if (n_entries > 0 && rate > 0) avail = (p + 1) / rate < n_entries ? (p + 1) / rate : n_entries;
    for (int64_t s = window + threadIdx.x; s < S; s += blockDim.x) {
      const int64_t j = s - window;
      row[s] = j < avail ? static_cast<int32_t>(entry_base + j) : -1;
    }
    return;
  }
  // CSA: pad with -1, then (after the barrier orders the writes) the kept selections in order.
  for (int64_t s = window + threadIdx.x; s < S; s += blockDim.x) row[s] = -1;
  __syncthreads();
  const int32_t* sel = selected + t * k;
  int64_t carry = 0;  // kept selections before this chunk (same value in every thread)
  for (int64_t base = 0; base < k; base += kIndexThreads) {
    const int64_t i = base + threadIdx.x;
    const int32_t v = i < k ? sel[i] : -1;
    const int keep = v >= 0 ? 1 : 0;
    int rank = 0, total = 0;
    Scan(scan_tmp).ExclusiveSum(keep, rank, total);
    const int64_t slot = window + carry + rank;
    if (keep && slot < S) row[slot] = static_cast<int32_t>(entry_base + v);
    carry += total;
    __syncthreads();  // scan_tmp is reused by the next chunk
  }
}

// ---- sparse_attention: FMA kernel ------------------------------------------------------------

using attn::AttnArgs;
using attn::Partials;

constexpr int kAttnWarps = 8;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kAttnHeads = 4;       // heads per block (queries and accumulators in registers)
constexpr int kMaxLaneElems = 16;   // per lane and head: head dims up to 32 * 16 = 512

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// VEC consecutive elements as floats: one 16-byte load when VEC * sizeof(T) == 16.
template <typename T, int VEC>
__device__ __forceinline__ void load_as_f32(const T* p, float (&out)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_f32(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_f32(p[i]);
  }
}

// Lane `lane` owns elements [(c * 32 + lane) * VEC, +VEC) of a row for c < NV (Dh % VEC == 0).
// The grid is (T, ceil(H / kAttnHeads), splits); block z takes slots [z split_len, +split_len).
// Dynamic shared memory: kAttnHeads * Dh floats. part_acc == nullptr: the final output (one
// split), else the split's partial state (attention_kernels.cuh).
template <typename T, int VEC, int NV>
__global__ void __launch_bounds__(kAttnThreads)
    sparse_attention_kernel(const AttnArgs<T> a, float* __restrict__ part_acc, float2* __restrict__ part_ml,
                            int64_t split_len) {
  pdl_wait();
  pdl_trigger();
  static_assert(VEC * NV <= kMaxLaneElems, "too many elements per lane");
  extern __shared__ float merged[];  // [kAttnHeads][Dh]
  __shared__ float warp_m[kAttnWarps][kAttnHeads], warp_l[kAttnWarps][kAttnHeads];
  __shared__ float head_m[kAttnHeads], head_l[kAttnHeads];
  __shared__ int warp_keys[kAttnWarps], warp_bad[kAttnWarps];

  const int64_t H = a.H, Dh = a.Dh, S = a.S;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t = blockIdx.x;
  const int64_t h0 = static_cast<int64_t>(blockIdx.y) * kAttnHeads;
  const int split = static_cast<int>(blockIdx.z), splits = static_cast<int>(gridDim.z);
  const int64_t s_begin = split * split_len, s_end = s_begin + split_len < S ? s_begin + split_len : S;
  const int nh = H - h0 < kAttnHeads ? static_cast<int>(H - h0) : kAttnHeads;
  const bool final_out = part_acc == nullptr;
  const float neg_inf = -INFINITY;

  float qr[kAttnHeads][NV][VEC], acc[kAttnHeads][NV][VEC], m[kAttnHeads], l[kAttnHeads];
#pragma unroll
  for (int hh = 0; hh < kAttnHeads; ++hh) {
    m[hh] = neg_inf;
    l[hh] = 0.0f;
#pragma unroll
    for (int c = 0; c < NV; ++c) {
      const int64_t d = (static_cast<int64_t>(c) * 32 + lane) * VEC;
#pragma unroll
      for (int i = 0; i < VEC; ++i) qr[hh][c][i] = acc[hh][c][i] = 0.0f;
      if (hh < nh && d < Dh) load_as_f32<T, VEC>(a.q + ((t * H + h0 + hh) * Dh + d), qr[hh][c]);
    }
  }

  int n_keys = 0, bad = 0;
  const int32_t* row_idx = a.idx + t * S;
  for (int64_t s = s_begin + warp; s < s_end; s += kAttnWarps) {
    const int32_t r = row_idx[s];  // the same for the whole warp
    if (r == -1) continue;
    if (r < -1 || r >= a.n_rows) {
      bad = 1;
      continue;
    }
    const T* key =
        r < a.n_kv ? a.kv + static_cast<int64_t>(r) * Dh : a.entries + (static_cast<int64_t>(r) - a.n_kv) * Dh;
    float k[NV][VEC];
#pragma unroll
    for (int c = 0; c < NV; ++c) {
      const int64_t d = (static_cast<int64_t>(c) * 32 + lane) * VEC;
      if (d < Dh) {
        load_as_f32<T, VEC>(key + d, k[c]);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) k[c][i] = 0.0f;
      }
    }
    ++n_keys;
#pragma unroll
    for (int hh = 0; hh < kAttnHeads; ++hh) {
      if (hh >= nh) break;
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < NV; ++c)
#pragma unroll
        for (int i = 0; i < VEC; ++i) dot = fmaf(qr[hh][c][i], k[c][i], dot);
      const float logit = warp_sum(dot) * a.scale;  // identical in every lane
      const float m_new = fmaxf(m[hh], logit);
      const float corr = m[hh] == neg_inf ? 0.0f : expf(m[hh] - m_new);
      const float pr = expf(logit - m_new);
      l[hh] = l[hh] * corr + pr;
#pragma unroll
      for (int c = 0; c < NV; ++c)
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[hh][c][i] = fmaf(acc[hh][c][i], corr, pr * k[c][i]);
      m[hh] = m_new;
    }
  }

  // Merge the warps' online-softmax states: head maxima and denominators first (the sink only
  // for the final output; a split's partial leaves it to the merge).
  if (lane == 0) {
#pragma unroll
    for (int hh = 0; hh < kAttnHeads; ++hh) {
      warp_m[warp][hh] = m[hh];
      warp_l[warp][hh] = l[hh];
    }
    warp_keys[warp] = n_keys;
    warp_bad[warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x < kAttnHeads && static_cast<int>(threadIdx.x) < nh) {
    const int hh = threadIdx.x;
    const bool with_sink = final_out && a.sink != nullptr;
    const float sk = with_sink ? a.sink[h0 + hh] : neg_inf;
    float M = sk;
    for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, warp_m[w][hh]);
    float L = with_sink ? expf(sk - M) : 0.0f;
    for (int w = 0; w < kAttnWarps; ++w)
      L += warp_l[w][hh] * (warp_m[w][hh] == neg_inf ? 0.0f : expf(warp_m[w][hh] - M));
    head_m[hh] = M;
    head_l[hh] = L;
  }
  __syncthreads();
  // Accumulators: warp 0 writes, the others add in warp order (a fixed summation order).
  for (int w = 0; w < kAttnWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int hh = 0; hh < kAttnHeads; ++hh) {
        if (hh >= nh) break;
        const float f = m[hh] == neg_inf ? 0.0f : expf(m[hh] - head_m[hh]);
#pragma unroll
        for (int c = 0; c < NV; ++c) {
          const int64_t d = (static_cast<int64_t>(c) * 32 + lane) * VEC;
          if (d >= Dh) continue;
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            float* dst = merged + hh * Dh + d + i;
            *dst = (w == 0 ? 0.0f : *dst) + acc[hh][c][i] * f;
          }
        }
      }
    }
    __syncthreads();
  }
  int total_keys = 0, any_bad = 0;
  for (int w = 0; w < kAttnWarps; ++w) {
    total_keys += warp_keys[w];
    any_bad |= warp_bad[w];
  }
  const int dh = static_cast<int>(Dh);  // <= 512
  if (!final_out) {
    const int64_t base = (t * splits + split) * H + h0;
    if (static_cast<int>(threadIdx.x) < nh) {
      const int hh = threadIdx.x;
      part_ml[base + hh] = make_float2(total_keys == 0 ? neg_inf : head_m[hh], any_bad ? NAN : head_l[hh]);
    }
    for (int e = threadIdx.x; e < nh * dh; e += blockDim.x) part_acc[base * Dh + e] = total_keys == 0 ? 0.0f : merged[e];
    return;
  }
  // No valid key: 0. An index outside [-1, rows) cannot throw from a kernel: the query's output
  // becomes NaN, which the numerics guard and the tests catch.
  for (int e = threadIdx.x; e < nh * dh; e += blockDim.x) {
    const int hh = e / dh;
    const float v = any_bad ? NAN : total_keys == 0 ? 0.0f : merged[e] / head_l[hh];
    a.out[(t * H + h0) * Dh + e] = from_f32<T>(v);
  }
}

template <typename T, int VEC, int NV>
void launch_sparse_attention(cudaStream_t stream, const AttnArgs<T>& a, const Partials& part) {
  const dim3 grid(static_cast<unsigned>(a.T), static_cast<unsigned>((a.H + kAttnHeads - 1) / kAttnHeads),
                  static_cast<unsigned>(part.splits));
  const size_t smem = static_cast<size_t>(kAttnHeads) * a.Dh * sizeof(float);  // <= 8 KiB for Dh <= 512
  const int64_t split_len = part.splits > 1 ? part.split_len : a.S;
  launch_kernel(sparse_attention_kernel<T, VEC, NV>, grid, kAttnThreads, smem, stream, a, part.acc, part.ml, split_len);
  CLAWMINE_CUDA_LAUNCHED("sparse_attention");
}

// ---- sparse_attention: merge of the splits ---------------------------------------------------

constexpr int kMergeThreads = 128;
constexpr int kMaxMergeSplits = 256;

// One block per (t, h): the splits' states combined with the sink (attention_kernels.cuh). Warp 0
// reads the (m, l) pairs in parallel (lane j: splits j, j + 32, ...) and reduces them with fixed
// shuffle trees; the weights e^(m_i - M) / L go to shared memory, and every thread then sums its
// head dims over the splits in split order. Deterministic.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    merge_splits_kernel(const float* __restrict__ part_acc, const float2* __restrict__ part_ml, int splits,
                        const float* __restrict__ sink, int64_t H, int64_t Dh, T* __restrict__ out) {
  pdl_wait();
  pdl_trigger();
  constexpr int kPerLane = kMaxMergeSplits / 32;
  __shared__ float w[kMaxMergeSplits];
  __shared__ float flag_s;  // NaN: a bad index; 0: no valid key; 1: otherwise
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const float2* ml = part_ml + t * splits * H + h;  // split i at ml[i * H]
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const float neg_inf = -INFINITY;
    float2 v[kPerLane];
    float M = sink ? sink[h] : neg_inf;
    bool bad = false, any_key = false;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = k * 32 + lane;
      v[k] = i < splits ? ml[static_cast<int64_t>(i) * H] : make_float2(neg_inf, 0.0f);
      bad |= isnan(v[k].y);
      any_key |= v[k].x != neg_inf;
      M = fmaxf(M, v[k].x);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    bad = __any_sync(0xffffffffu, bad);
    any_key = __any_sync(0xffffffffu, any_key);
    float e[kPerLane], L = 0.0f;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      e[k] = v[k].x == neg_inf ? 0.0f : expf(v[k].x - M);
      L += v[k].y * e[k];
    }
    L = warp_sum(L);
    if (sink) L += expf(sink[h] - M);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = k * 32 + lane;
      if (i < splits) w[i] = any_key && !bad ? e[k] / L : 0.0f;
    }
    if (lane == 0) flag_s = bad ? NAN : any_key ? 1.0f : 0.0f;
  }
  __syncthreads();
  const float flag = flag_s;
  const float* acc = part_acc + (t * splits * H + h) * Dh;  // split i at acc[i * H * Dh]
  const int64_t stride = H * Dh;
  for (int64_t d = threadIdx.x; d < Dh; d += blockDim.x) {
    float v = 0.0f;
#pragma unroll 8
    for (int i = 0; i < splits; ++i) v = fmaf(w[i], acc[i * stride + d], v);
    out[(t * H + h) * Dh + d] = from_f32<T>(isnan(flag) ? NAN : flag == 0.0f ? 0.0f : v);
  }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Splits of S for a grid of `blocks` (t, head group) blocks where `per_sm` blocks fit on a
// multiprocessor: enough to fill the device once, each at least `min_len` slots long (a multiple
// of `granule`). {1, S}: no split.
std::pair<int, int64_t> choose_splits(int64_t blocks, int64_t S, int sm_count, int per_sm, int64_t min_len,
                                      int64_t granule) {
  const int64_t slots = std::max<int64_t>(1, sm_count) * per_sm;
  if (blocks * 2 > slots || S <= min_len) return {1, S};
  const int64_t want = std::min<int64_t>(slots / blocks, kMaxMergeSplits);
  int64_t len = std::max(min_len, (S + want - 1) / want);
  len = (len + granule - 1) / granule * granule;
  const int64_t splits = (S + len - 1) / len;
  if (splits <= 1) return {1, S};
  return {static_cast<int>(splits), len};
}

}  // namespace

void CudaBackend::attention_index(const TensorView& positions, int64_t n_prev, int64_t window, int64_t entry_base,
                                  int64_t n_entries, int64_t rate, const TensorView& selected, const TensorView& idx) {
  expect_device(positions, "attention_index", "positions");
  expect_device(idx, "attention_index", "idx");
  CLAWMINE_CHECK(positions.dtype == DType::kI32 && positions.rank() == 1, "cuda attention_index: positions must be I32 [T], got ",
                 dtype_name(positions.dtype), " ", shape_str(positions.shape));
  const int64_t T = positions.dim(0);
  CLAWMINE_CHECK(idx.dtype == DType::kI32 && idx.rank() == 2 && idx.dim(0) == T,
                 "cuda attention_index: idx must be I32 [", T, ", S], got ", dtype_name(idx.dtype), " ",
                 shape_str(idx.shape));
  const int64_t S = idx.dim(1);
  CLAWMINE_CHECK(window >= 1 && window <= S, "cuda attention_index: window ", window, " must be in [1, S = ", S, "]");
  CLAWMINE_CHECK(n_prev >= 0 && entry_base >= 0 && n_entries >= 0, "cuda attention_index: n_prev ", n_prev,
                 ", entry_base ", entry_base, ", n_entries ", n_entries, " must be >= 0");
  const bool csa = !selected.empty();  // CSA even with k = 0 (then no compressed keys)
  int64_t k = 0;
  if (csa) {
    expect_device(selected, "attention_index", "selected");
    CLAWMINE_CHECK(selected.dtype == DType::kI32 && selected.rank() == 2 && selected.dim(0) == T,
                   "cuda attention_index: selected must be I32 [", T, ", k], got ", dtype_name(selected.dtype), " ",
                   shape_str(selected.shape));
    k = selected.dim(1);
    CLAWMINE_CHECK(k <= S - window, "cuda attention_index: ", k, " selected entries do not fit the ", S - window,
                   " compressed slots");
  } else {
    CLAWMINE_CHECK(n_entries == 0 || rate > 0, "cuda attention_index: rate ", rate, " with ", n_entries, " entries");
  }
  if (T == 0 || S == 0) return;
  launch_kernel(attention_index_kernel, static_cast<unsigned>(T), kIndexThreads, 0, stream_, positions.as<int32_t>(),
                n_prev, window, entry_base, n_entries, rate, csa ? selected.as<int32_t>() : nullptr, k, S,
                idx.as<int32_t>());
  CLAWMINE_CUDA_LAUNCHED("attention_index");
}

void CudaBackend::sparse_attention(const TensorView& q, const TensorView& kv, const TensorView& entries,
                                   const TensorView& idx, const TensorView& sink, float scale, const TensorView& out) {
  sparse_attention_impl(q, kv, entries, idx, sink, scale, nullptr, out);
}

// Decode-sized chunks (T <= attn::kDecodeMaxT, vectorizable head dims) take one launch of the
// decode kernel with the inverse rope fused in; anything else is the composition.
void CudaBackend::sparse_attention_rope(const TensorView& q, const TensorView& kv, const TensorView& entries,
                                        const TensorView& idx, const TensorView& sink, float scale,
                                        const TensorView& positions, const TensorView& inv_freq, int64_t rope_dim,
                                        const TensorView& out) {
  expect_device(positions, "sparse_attention_rope", "positions");
  expect_device(inv_freq, "sparse_attention_rope", "inv_freq");
  CLAWMINE_CHECK(q.rank() == 3, "cuda sparse_attention_rope: q must be [T, H, Dh], got ", shape_str(q.shape));
  const int64_t T = q.dim(0), Dh = q.dim(2);
  CLAWMINE_CHECK(rope_dim > 0 && rope_dim % 2 == 0 && rope_dim <= Dh && (Dh - rope_dim) % 2 == 0,
                 "cuda sparse_attention_rope: rope_dim ", rope_dim, " must be even, in (0, ", Dh, "], with Dh - rope_dim even");
  CLAWMINE_CHECK(positions.dtype == DType::kI32 && positions.numel() == T, "cuda sparse_attention_rope: positions must be [",
                 T, "] I32, got ", dtype_name(positions.dtype), " ", shape_str(positions.shape));
  CLAWMINE_CHECK(inv_freq.dtype == DType::kF32 && inv_freq.numel() == rope_dim / 2,
                 "cuda sparse_attention_rope: inv_freq must be [", rope_dim / 2, "] F32, got ", dtype_name(inv_freq.dtype),
                 " ", shape_str(inv_freq.shape));
  const RopeOut r{positions.as<int32_t>(), inv_freq.as<float>(), rope_dim};
  if (!sparse_attention_impl(q, kv, entries, idx, sink, scale, &r, out)) rope(out, positions, inv_freq, rope_dim, true);
}

bool CudaBackend::sparse_attention_impl(const TensorView& q, const TensorView& kv, const TensorView& entries,
                                        const TensorView& idx, const TensorView& sink, float scale, const RopeOut* rope_out,
                                        const TensorView& out) {
  expect_device(q, "sparse_attention", "q");
  expect_device(kv, "sparse_attention", "kv");
  expect_device(idx, "sparse_attention", "idx");
  expect_device(out, "sparse_attention", "out");
  CLAWMINE_CHECK(q.rank() == 3, "cuda sparse_attention: q must be [T, H, Dh], got ", shape_str(q.shape));
  const int64_t T = q.dim(0), H = q.dim(1), Dh = q.dim(2);
  CLAWMINE_CHECK(kv.rank() == 2 && kv.dim(1) == Dh, "cuda sparse_attention: kv must be [Nw, ", Dh, "], got ",
                 shape_str(kv.shape));
  const bool has_entries = !entries.empty() && entries.numel() > 0;
  if (has_entries) {
    expect_device(entries, "sparse_attention", "entries");
    CLAWMINE_CHECK(entries.rank() == 2 && entries.dim(1) == Dh, "cuda sparse_attention: entries must be [Ne, ", Dh,
                   "], got ", shape_str(entries.shape));
  }
  CLAWMINE_CHECK(idx.dtype == DType::kI32 && idx.rank() == 2 && idx.dim(0) == T,
                 "cuda sparse_attention: idx must be I32 [", T, ", S], got ", dtype_name(idx.dtype), " ",
                 shape_str(idx.shape));
  const bool has_sink = !sink.empty() && sink.numel() > 0;
  if (has_sink) {
    expect_device(sink, "sparse_attention", "sink");
    CLAWMINE_CHECK(sink.dtype == DType::kF32 && sink.numel() == H, "cuda sparse_attention: sink must be F32 [", H,
                   "], got ", dtype_name(sink.dtype), " ", shape_str(sink.shape));
  }
  CLAWMINE_CHECK(out.shape == q.shape, "cuda sparse_attention: out must be ", shape_str(q.shape), ", got ",
                 shape_str(out.shape));
  CLAWMINE_CHECK(kv.dtype == q.dtype && (!has_entries || entries.dtype == q.dtype) && out.dtype == q.dtype,
                 "cuda sparse_attention: q, kv, entries and out must share one dtype, got ", dtype_name(q.dtype), ", ",
                 dtype_name(kv.dtype), ", ", has_entries ? dtype_name(entries.dtype) : "-", ", ",
                 dtype_name(out.dtype));
  CLAWMINE_CHECK(Dh > 0 && Dh <= 32 * kMaxLaneElems, "cuda sparse_attention: head dim ", Dh, " outside [1, ",
                 32 * kMaxLaneElems, "]");
  const int64_t S = idx.dim(1);
  if (T == 0 || H == 0) return true;
  const int64_t n_kv = kv.dim(0), n_rows = n_kv + (has_entries ? entries.dim(0) : 0);
  bool fused_rope = false;
  dispatch_float(q.dtype, "sparse_attention", "q", [&](auto tag) {
    using T_ = decltype(tag);
    constexpr int kVec = static_cast<int>(16 / sizeof(T_));
    const AttnArgs<T_> a{q.as<T_>(), kv.as<T_>(), n_kv, has_entries ? entries.as<T_>() : nullptr, n_rows,
                         idx.as<int32_t>(), T, S, has_sink ? sink.as<float>() : nullptr, scale, H, Dh, out.as<T_>()};
    // Decode: one launch (splits merged in the kernel, the rope fused when asked).
    if (attn::decode_supports(a)) {
      attn::launch_attention_decode(*this, a, rope_out ? rope_out->positions : nullptr,
                                    rope_out ? rope_out->inv_freq : nullptr, rope_out ? rope_out->rope_dim : 0);
      fused_rope = true;
      return;
    }
    const bool vec_ok = Dh % kVec == 0 && aligned16(a.q) && aligned16(a.kv) && aligned16(a.entries);
    const bool use_mma = sizeof(T_) == 2 && vec_ok && aligned16(a.out) && attn::mma_supports(Dh);

    // Split S when the (token, head group) blocks alone would leave the device mostly idle; the
    // partials live in scratch until the merge (stream order makes the reuse after this op safe).
    const int64_t groups = use_mma ? (H + attn::kMmaHeads - 1) / attn::kMmaHeads : (H + kAttnHeads - 1) / kAttnHeads;
    const auto [splits, split_len] =
        use_mma ? choose_splits(T * groups, S, sm_count_, 1, attn::kMmaKeys, attn::kMmaKeys)
                : choose_splits(T * groups, S, sm_count_, 2, 32, 1);
    ops::ScratchFrame frame(*this);
    Partials part;
    if (splits > 1) {
      part.splits = splits;
      part.split_len = split_len;
      part.acc = scratch(DType::kF32, {T, splits, H, Dh}).f32();
      part.ml = static_cast<float2*>(scratch(DType::kF32, {T, splits, H, 2}).data);
    }

    if constexpr (sizeof(T_) == 2) {
      if (use_mma) attn::launch_attention_mma<T_>(*this, a, part);
    }
    if (!use_mma) {
      auto go = [&](auto vec, auto nv) {
        launch_sparse_attention<T_, decltype(vec)::value, decltype(nv)::value>(stream_, a, part);
      };
      using std::integral_constant;
      const int64_t vsteps = (Dh + 32 * kVec - 1) / (32 * kVec);
      const int64_t steps = (Dh + 31) / 32;  // scalar loads, one element per lane and step
      if (vec_ok && vsteps == 1) {  // 16-byte loads: lanes cover 32 * kVec elements per step
        go(integral_constant<int, kVec>{}, integral_constant<int, 1>{});
      } else if (vec_ok && vsteps == 2) {
        go(integral_constant<int, kVec>{}, integral_constant<int, 2>{});
      } else if (vec_ok && kVec * 4 <= kMaxLaneElems && vsteps <= 4) {
        if constexpr (kVec * 4 <= kMaxLaneElems) go(integral_constant<int, kVec>{}, integral_constant<int, 4>{});
      } else if (steps <= 1) {
        go(integral_constant<int, 1>{}, integral_constant<int, 1>{});
      } else if (steps <= 2) {
        go(integral_constant<int, 1>{}, integral_constant<int, 2>{});
      } else if (steps <= 4) {
        go(integral_constant<int, 1>{}, integral_constant<int, 4>{});
      } else if (steps <= 8) {
        go(integral_constant<int, 1>{}, integral_constant<int, 8>{});
      } else {
        go(integral_constant<int, 1>{}, integral_constant<int, 16>{});
      }
    }
    if (splits > 1) {
      launch_kernel(merge_splits_kernel<T_>, dim3(static_cast<unsigned>(T), static_cast<unsigned>(H)), kMergeThreads, 0,
                    stream_, part.acc, part.ml, splits, a.sink, H, Dh, a.out);
      CLAWMINE_CUDA_LAUNCHED("sparse_attention (merge splits)");
    }
  });
  return fused_rope;
}

}  // namespace clawmine::backend::cuda
