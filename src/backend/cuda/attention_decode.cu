// sparse_attention for decode-sized chunks (T <= kDecodeMaxT), optionally fused with the inverse
// RoPE of the output (sparse_attention_rope): one launch instead of split attention + merge +
// rope, and a grid that fills the machine. BF16/F16 at head dims 64..512 go to the tensor-core
// decode kernel (attention_decode_mma.cu, ~3x faster on the H100); this F32-FMA kernel serves F32
// activations, other head dims, and CLAWMINE_ATTN_DECODE_MMA=0.
//
// Grid (splits, head groups of kDecHeads, T). Block (z, g, t) takes query t, heads
// [g*kDecHeads, +kDecHeads) and key slots [z*split_len, +split_len). Its kDecWarps warps split the
// range's slots (warp w: slots w, w + kDecWarps, ... in increasing order, two gathered rows in
// flight at a time); each warp scores one key row against its heads (the group's queries in
// registers, lane-interleaved 16-byte loads, F32 fmaf dot, warp shuffle sum) and keeps an online
// softmax per head (running max m, sum l, accumulator acc; exactly the FMA kernel's arithmetic in
// attention.cu). The warps' states are merged in warp order into the block's partial
//   m = max_s l_s,  l = sum_s e^(l_s - m),  acc[d] = sum_s e^(l_s - m) key[r_s][d]
// (attention_kernels.cuh: m = -inf without a valid key, l = NaN after an index outside
// [-1, rows)), written to scratch. The block then counts itself on the (t, g) counter; the LAST
// block of (t, g) to count (atomic ticket after a __threadfence; it resets the counter to 0, so
// the counters are zero between launches and the kernel is graph-safe) merges the splits in
// split order (fixed, whichever block is last: deterministic):
//   M = max(sink, m_i), w_i = e^(m_i - M) / (sum_i e^(m_i - M) l_i + e^(sink - M)),
//   out[d] = sum_i w_i acc_i[d]   (fmaf chain in split order),
// 0 for a query without a valid key, NaN after a bad index; rounds it to the output dtype and,
// when rope_dim > 0, applies the inverse RoPE at positions[t] on the trailing rope_dim dims with
// rowprep's rope_cos_sin / rotate_pair on the rounded values: bit-identical to
// sparse_attention (this kernel, rope_dim = 0) followed by the rope op.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/attention_kernels.cuh"
#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/rowprep.cuh"

namespace clawmine::backend::cuda::attn {
namespace {

constexpr int kDecWarps = 8;
constexpr int kDecThreads = kDecWarps * 32;
constexpr int kDecHeads = 4;             // heads per block (queries and accumulators in registers)
constexpr int kDecMaxLaneElems = 16;     // per lane and head: head dims up to 32 * 16 = 512
constexpr int kDecMaxSplits = 64;        // the last block's weights live in shared memory
constexpr int64_t kDecMinSplitLen = 2 * kDecWarps;  // at least one pair of rows per warp
constexpr int kDecMaxCounters = kDecodeMaxT * 256;  // (t, head group) tickets: H <= 1024

struct DecodeArgs {
  const int32_t* positions;  // [T] (rope only)
  const float* inv_freq;     // [rope_dim / 2] (rope only)
  int64_t rope_dim;          // 0: no rope
  float* part_acc;           // [T, splits, H, Dh]
  float2* part_ml;           // [T, splits, H]
  unsigned* counters;        // [T * groups], zero between launches
  int splits;
  int64_t split_len;
};

template <typename T, int VEC>
__device__ __forceinline__ void dec_load(const T* p, float (&out)[VEC]) {
  static_assert(VEC * sizeof(T) == 16, "16-byte loads");
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = to_f32(e[i]);
}

// Lane `lane` owns elements [(c * 32 + lane) * VEC, +VEC) of a row for c < NV.
template <typename T, int VEC, int NV>
struct KeyRow {
  float k[NV][VEC];
  __device__ __forceinline__ void load(const T* row, int64_t Dh, int lane) {
#pragma unroll
    for (int c = 0; c < NV; ++c) {
      const int64_t d = (static_cast<int64_t>(c) * 32 + lane) * VEC;
      if (d < Dh) {
        dec_load<T, VEC>(row + d, k[c]);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) k[c][i] = 0.0f;
      }
    }
  }
};

template <typename T, int VEC, int NV>
__global__ void __launch_bounds__(kDecThreads, 1)
    attention_decode_kernel(const AttnArgs<T> a, const DecodeArgs x) {
  pdl_wait();
  pdl_trigger();
  static_assert(VEC * NV <= kDecMaxLaneElems, "too many elements per lane");
  extern __shared__ float merged[];  // [kDecHeads][Dh]
  __shared__ float warp_m[kDecWarps][kDecHeads], warp_l[kDecWarps][kDecHeads];
  __shared__ float head_m[kDecHeads], head_l[kDecHeads];
  __shared__ int warp_keys[kDecWarps], warp_bad[kDecWarps];
  __shared__ float wgt[kDecHeads][kDecMaxSplits];
  __shared__ float flag_s[kDecHeads];
  __shared__ bool last;

  const int64_t H = a.H, Dh = a.Dh, S = a.S;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int split = static_cast<int>(blockIdx.x), splits = x.splits;
  const int64_t g = blockIdx.y, t = blockIdx.z, groups = gridDim.y;
  const int64_t h0 = g * kDecHeads;
  const int64_t s_begin = split * x.split_len, s_end = s_begin + x.split_len < S ? s_begin + x.split_len : S;
  const int nh = H - h0 < kDecHeads ? static_cast<int>(H - h0) : kDecHeads;
  const float neg_inf = -INFINITY;

  float qr[kDecHeads][NV][VEC], acc[kDecHeads][NV][VEC], m[kDecHeads], l[kDecHeads];
#pragma unroll
  for (int hh = 0; hh < kDecHeads; ++hh) {
    m[hh] = neg_inf;
    l[hh] = 0.0f;
#pragma unroll
    for (int c = 0; c < NV; ++c) {
      const int64_t d = (static_cast<int64_t>(c) * 32 + lane) * VEC;
#pragma unroll
      for (int i = 0; i < VEC; ++i) qr[hh][c][i] = acc[hh][c][i] = 0.0f;
      if (hh < nh && d < Dh) dec_load<T, VEC>(a.q + ((t * H + h0 + hh) * Dh + d), qr[hh][c]);
    }
  }

  int n_keys = 0, bad = 0;
  const int32_t* row_idx = a.idx + t * S;
  // One valid row into the warp's online softmax states.
  auto consume = [&](const KeyRow<T, VEC, NV>& kr) {
    ++n_keys;
#pragma unroll
    for (int hh = 0; hh < kDecHeads; ++hh) {
      if (hh >= nh) break;
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < NV; ++c)
#pragma unroll
        for (int i = 0; i < VEC; ++i) dot = fmaf(qr[hh][c][i], kr.k[c][i], dot);
      const float logit = rowwise::warp_sum(dot) * a.scale;  // identical in every lane
      const float m_new = fmaxf(m[hh], logit);
      const float corr = m[hh] == neg_inf ? 0.0f : expf(m[hh] - m_new);
      const float pr = expf(logit - m_new);
      l[hh] = l[hh] * corr + pr;
#pragma unroll
      for (int c = 0; c < NV; ++c)
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[hh][c][i] = fmaf(acc[hh][c][i], corr, pr * kr.k[c][i]);
      m[hh] = m_new;
    }
  };
  auto row_ptr = [&](int32_t r) {
    return r < a.n_kv ? a.kv + static_cast<int64_t>(r) * Dh : a.entries + (static_cast<int64_t>(r) - a.n_kv) * Dh;
  };
  // Slots s and s + kDecWarps are gathered together (both loads in flight), consumed in order.
  for (int64_t s = s_begin + warp; s < s_end; s += 2 * kDecWarps) {
    const int64_t s1 = s + kDecWarps;
    const int32_t r0 = row_idx[s], r1 = s1 < s_end ? row_idx[s1] : -1;  // the same for the whole warp
    const bool ok0 = r0 >= 0 && r0 < a.n_rows, ok1 = r1 >= 0 && r1 < a.n_rows;
    bad |= (r0 < -1 || r0 >= a.n_rows) || (r1 < -1 || r1 >= a.n_rows);
    KeyRow<T, VEC, NV> k0, k1;
    if (ok0) k0.load(row_ptr(r0), Dh, lane);
    if (ok1) k1.load(row_ptr(r1), Dh, lane);
    if (ok0) consume(k0);
    if (ok1) consume(k1);
  }

  // The warps' states -> the block's partial (no sink: the merge adds it).
  if (lane == 0) {
#pragma unroll
    for (int hh = 0; hh < kDecHeads; ++hh) {
      warp_m[warp][hh] = m[hh];
      warp_l[warp][hh] = l[hh];
    }
    warp_keys[warp] = n_keys;
    warp_bad[warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x < kDecHeads && static_cast<int>(threadIdx.x) < nh) {
    const int hh = threadIdx.x;
    float M = neg_inf;
    for (int w = 0; w < kDecWarps; ++w) M = fmaxf(M, warp_m[w][hh]);
    float L = 0.0f;
    for (int w = 0; w < kDecWarps; ++w)
      L += warp_l[w][hh] * (warp_m[w][hh] == neg_inf ? 0.0f : expf(warp_m[w][hh] - M));
    head_m[hh] = M;
    head_l[hh] = L;
  }
  __syncthreads();
  for (int w = 0; w < kDecWarps; ++w) {  // warp 0 writes, the others add in warp order
    if (warp == w) {
#pragma unroll
      for (int hh = 0; hh < kDecHeads; ++hh) {
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
  for (int w = 0; w < kDecWarps; ++w) {
    total_keys += warp_keys[w];
    any_bad |= warp_bad[w];
  }
  const int dh = static_cast<int>(Dh);  // <= 512
  const int64_t base = (t * splits + split) * H + h0;
  if (static_cast<int>(threadIdx.x) < nh) {
    const int hh = threadIdx.x;
    x.part_ml[base + hh] = make_float2(total_keys == 0 ? neg_inf : head_m[hh], any_bad ? NAN : head_l[hh]);
  }
  for (int e = threadIdx.x; e < nh * dh; e += blockDim.x)
    x.part_acc[base * Dh + e] = total_keys == 0 ? 0.0f : merged[e];

  // Ticket: the last block of (t, g) merges. Writes are made visible device-wide first.
  __threadfence();
  __syncthreads();
  unsigned* counter = x.counters + t * groups + g;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == static_cast<unsigned>(splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();

  // Split weights: warp hh takes head hh (lane j: splits j, j + 32), fixed shuffle trees.
  if (warp < nh) {
    const int hh = warp;
    const int64_t h = h0 + hh;
    constexpr int kPerLane = kDecMaxSplits / 32;
    float2 v[kPerLane];
    float M = a.sink != nullptr ? a.sink[h] : neg_inf;
    bool b = false, any_key = false;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = k * 32 + lane;
      v[k] = i < splits ? __ldcg(x.part_ml + (t * splits + i) * H + h) : make_float2(neg_inf, 0.0f);
      b |= isnan(v[k].y);
      any_key |= v[k].x != neg_inf;
      M = fmaxf(M, v[k].x);
    }
    M = rowwise::warp_max(M);
    b = __any_sync(0xffffffffu, b);
    any_key = __any_sync(0xffffffffu, any_key);
    float e[kPerLane], L = 0.0f;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      e[k] = v[k].x == neg_inf ? 0.0f : expf(v[k].x - M);
      L += v[k].y * e[k];
    }
    L = rowwise::warp_sum(L);
    if (a.sink != nullptr) L += expf(a.sink[h] - M);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = k * 32 + lane;
      if (i < splits) wgt[hh][i] = any_key && !b ? e[k] / L : 0.0f;
    }
    if (lane == 0) flag_s[hh] = b ? NAN : any_key ? 1.0f : 0.0f;
  }
  __syncthreads();
  if (threadIdx.x == 0) *counter = 0;  // every block of (t, g) has counted: ready for the next launch

  // Outputs in groups of 4 consecutive dims (Dh % 4 == 0): fmaf over the splits in order, with
  // the loads of 4 splits in flight at a time.
  const int quads = dh / 4;
  const int64_t split_stride = H * Dh;
  const float* acc0 = x.part_acc + (t * splits * H + h0) * Dh;  // split i, head hh: + i*H*Dh + hh*Dh
  const int64_t rope_first = Dh - x.rope_dim;                   // first rotated dim (pairs from here)
  const int32_t pos = x.rope_dim > 0 ? x.positions[t] : 0;
  for (int e = threadIdx.x; e < nh * quads; e += blockDim.x) {
    const int hh = e / quads, d = (e % quads) * 4;
    const float* src = acc0 + hh * Dh + d;
    float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int i = 0;
    for (; i + 4 <= splits; i += 4) {
      float4 pv[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) pv[u] = __ldcg(reinterpret_cast<const float4*>(src + (i + u) * split_stride));
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const float wi = wgt[hh][i + u];
        o[0] = fmaf(wi, pv[u].x, o[0]);
        o[1] = fmaf(wi, pv[u].y, o[1]);
        o[2] = fmaf(wi, pv[u].z, o[2]);
        o[3] = fmaf(wi, pv[u].w, o[3]);
      }
    }
    for (; i < splits; ++i) {
      const float4 pv = __ldcg(reinterpret_cast<const float4*>(src + i * split_stride));
      const float wi = wgt[hh][i];
      o[0] = fmaf(wi, pv.x, o[0]);
      o[1] = fmaf(wi, pv.y, o[1]);
      o[2] = fmaf(wi, pv.z, o[2]);
      o[3] = fmaf(wi, pv.w, o[3]);
    }
    const float flag = flag_s[hh];
#pragma unroll
    for (int j = 0; j < 4; ++j) o[j] = to_f32(from_f32<T>(isnan(flag) ? NAN : flag == 0.0f ? 0.0f : o[j]));
    if (x.rope_dim > 0) {  // the rope op's arithmetic on the stored values (rope_first is even)
#pragma unroll
      for (int j = 0; j < 4; j += 2) {
        if (d + j < rope_first) continue;
        float c, sf;
        rowprep::rope_cos_sin(x.inv_freq[(d + j - rope_first) / 2], pos, c, sf);
        rowprep::rotate_pair(o[j], o[j + 1], c, -sf);
      }
    }
    T* dst = a.out + (t * H + h0 + hh) * Dh + d;
#pragma unroll
    for (int j = 0; j < 4; ++j) dst[j] = from_f32<T>(o[j]);
  }
}

// Per backend: kDecMaxCounters zeros (the kernel leaves them zero).
const char kDecodeCountersKey = 0;  // its address keys the state
unsigned* decode_counters(CudaBackend& be) { return be.zeroed_counters(&kDecodeCountersKey, kDecMaxCounters); }

template <typename T, int VEC, int NV>
void launch_decode(CudaBackend& be, const AttnArgs<T>& a, const DecodeArgs& x, unsigned groups) {
  const dim3 grid(static_cast<unsigned>(x.splits), groups, static_cast<unsigned>(a.T));
  const size_t smem = static_cast<size_t>(kDecHeads) * a.Dh * sizeof(float);  // <= 8 KiB
  launch_kernel(attention_decode_kernel<T, VEC, NV>, grid, kDecThreads, smem, be.stream(), a, x);
  CLAWMINE_CUDA_LAUNCHED("sparse_attention (decode)");
}

}  // namespace

template <typename T>
bool decode_supports(const AttnArgs<T>& a) {
  if (decode_mma_supports(a)) return true;
  constexpr int64_t kVec = 16 / sizeof(T);
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return a.T >= 1 && a.T <= kDecodeMaxT && a.S <= kDecodeMaxSlots && a.Dh % kVec == 0 &&
         a.Dh <= 32 * kDecMaxLaneElems &&
         (a.H + kDecHeads - 1) / kDecHeads * a.T <= kDecMaxCounters && aligned(a.q) && aligned(a.kv) &&
         aligned(a.entries);
}

// Splits: one wave of blocks on the device (one block per multiprocessor: 256 threads with the
// registers of 4 heads x 16 elements of queries and accumulators), each range at least
// kDecMinSplitLen slots, at most kDecMaxSplits.
template <typename T>
void launch_attention_decode(CudaBackend& be, const AttnArgs<T>& a, const int32_t* positions, const float* inv_freq,
                             int64_t rope_dim) {
  if (decode_mma_supports(a)) return launch_attention_decode_mma(be, a, positions, inv_freq, rope_dim);
  const int64_t groups = (a.H + kDecHeads - 1) / kDecHeads, base = a.T * groups;
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>(kDecMaxSplits, be.sm_count() / base));
  int64_t len = std::max<int64_t>(kDecMinSplitLen, (a.S + want - 1) / want);
  len = (len + kDecMinSplitLen - 1) / kDecMinSplitLen * kDecMinSplitLen;
  int64_t splits = std::max<int64_t>(1, (a.S + len - 1) / len);
  while (splits > kDecMaxSplits) {  // long S: longer ranges
    len += kDecMinSplitLen;
    splits = (a.S + len - 1) / len;
  }
  ops::ScratchFrame frame(be);
  DecodeArgs x{positions, inv_freq, rope_dim, nullptr, nullptr, decode_counters(be), static_cast<int>(splits), len};
  x.part_acc = be.scratch(DType::kF32, Shape{a.T, splits, a.H, a.Dh}).f32();
  x.part_ml = static_cast<float2*>(be.scratch(DType::kF32, Shape{a.T, splits, a.H, int64_t{2}}).data);
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  const int64_t vsteps = (a.Dh + 32 * kVec - 1) / (32 * kVec);
  const unsigned g = static_cast<unsigned>(groups);
  if (vsteps == 1) {
    launch_decode<T, kVec, 1>(be, a, x, g);
  } else if (vsteps == 2) {
    launch_decode<T, kVec, 2>(be, a, x, g);
  } else {
    if constexpr (kVec * 4 <= kDecMaxLaneElems) launch_decode<T, kVec, 4>(be, a, x, g);
  }
}

template bool decode_supports<float>(const AttnArgs<float>&);
template bool decode_supports<__nv_bfloat16>(const AttnArgs<__nv_bfloat16>&);
template bool decode_supports<__half>(const AttnArgs<__half>&);
template void launch_attention_decode<float>(CudaBackend&, const AttnArgs<float>&, const int32_t*, const float*,
                                             int64_t);
template void launch_attention_decode<__nv_bfloat16>(CudaBackend&, const AttnArgs<__nv_bfloat16>&, const int32_t*,
                                                     const float*, int64_t);
template void launch_attention_decode<__half>(CudaBackend&, const AttnArgs<__half>&, const int32_t*, const float*,
                                              int64_t);

}  // namespace clawmine::backend::cuda::attn
