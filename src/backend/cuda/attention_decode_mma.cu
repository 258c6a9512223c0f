// sparse_attention for decode-sized chunks on tensor cores (BF16/F16, head dims 64..512), any
// number of key slots: two launches, a split kernel and a merge (optionally with the inverse RoPE
// of the output, sparse_attention_rope).
//
// 1. attention_decode_mma_kernel, grid (splits, head tiles of 16, T), 4 warps. Block (z, m, t)
//    takes query t, heads [16m, +16) (the M dimension; rows past H are zero queries, dropped) and
//    slots [z*split_len, +split_len) in tiles of 16 gathered key rows (K = V). Warp w owns head
//    dims [w*Dh/4, +Dh/4) in both products, so a warp gathers (cp.async, two stages) and reads
//    only its own quarter of each key row:
//      scores: S[16 x 16] partial = Q[16 x Dh/4] . K^T over the quarter (Q's A fragments loaded
//              once into registers); the four partials meet in shared memory and every warp adds
//              them in warp order (one barrier per tile), so all four hold the same scores;
//      softmax: online per head row in the fragments (quad shuffles), identical in every warp;
//      O[16 x Dh/4] = O * corr + P . V with P rounded to the 16-bit type in the A fragment (the
//              prefill kernel's precision) and V by ldmatrix.trans from the warp's quarter.
//    Tiles whose 16 slots are all -1 (or out of range) are skipped: they would add nothing. The
//    split's partial (m, l, O) goes to scratch (attention_kernels.cuh: l = NaN after an index
//    outside [-1, rows), m = -inf without a valid key).
// 2. attention_decode_merge_kernel, grid (H, T), 128 threads (4 dims each), launched as a
//    programmatic dependent launch: the splits in split order with the sink, exactly the merge of
//    attention_decode.cu (same formula, same fmaf order), then the rounding to the output type
//    and, when rope_dim > 0, the inverse RoPE on the rounded values (bit-identical to
//    sparse_attention followed by rope).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "backend/cuda/attention_kernels.cuh"
#include "backend/cuda/attention_tuning.h"
#include "backend/cuda/mma_sync.cuh"
#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/device.h"
#include "backend/cuda/rowprep.cuh"

namespace clawmine::backend::cuda::attn {
namespace {

constexpr int kDmWarps = 4;
constexpr int kDmThreads = kDmWarps * 32;
constexpr int kDmKeys = 16;                // keys per tile
constexpr int kDmMaxSplits = 64;           // the merge's lanes hold the split weights (2 per lane)
constexpr int kDmBlocksPerSm = 4;          // splits aim at this many blocks per multiprocessor
// set_attn_decode_max_splits: < 0 until the environment is read, 0 no cap.
std::atomic<int> g_dm_max_splits{-1};
int dm_max_splits_from_env() { return static_cast<int>(env_count("CLAWMINE_ATTN_DECODE_SPLITS", 1, kDmMaxSplits)); }

template <int DH>
struct DmSmem {
  static constexpr int kRow = DH + 8;  // elements per staged key row (16 bytes of padding: ldmatrix conflict-free)
  static constexpr size_t k = 0;                                                  // [2][16][kRow] T
  static constexpr size_t x = k + size_t{2} * kDmKeys * kRow * 2;                // [2][4][2][32] float4
  static constexpr size_t bytes = x + size_t{2} * kDmWarps * 2 * 32 * 16;
  static_assert(x % 16 == 0, "16-byte alignment");
};

template <typename T, int DH>
__global__ void __launch_bounds__(kDmThreads)
    attention_decode_mma_kernel(const AttnArgs<T> a, float* __restrict__ part_acc, float2* __restrict__ part_ml,
                                int64_t split_len) {
  pdl_wait();
  pdl_trigger();
  using L = DmSmem<DH>;
  constexpr int kRow = L::kRow, DQ = DH / kDmWarps;  // DQ: this warp's head dims
  constexpr int KS = DQ / 16;                        // k steps of the scores over the quarter
  constexpr int NT = DQ / 8;                         // n tiles of O over the quarter
  constexpr int CPK = DQ / 8;                        // 16-byte chunks of a key row's quarter
  constexpr int PER = kDmKeys * CPK / 32;            // chunks per lane and tile
  static_assert(KS >= 1 && PER >= 1 && kDmKeys * CPK % 32 == 0, "head dims 64..512");
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem + L::k);
  float4* sX = reinterpret_cast<float4*>(smem + L::x);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int split = blockIdx.x, splits = gridDim.x;
  const int64_t h0 = static_cast<int64_t>(blockIdx.y) * 16, t = blockIdx.z;
  const int64_t s_begin = split * split_len;
  const int64_t s_end = s_begin + split_len < a.S ? s_begin + split_len : a.S;
  const int n_tiles = s_end > s_begin ? static_cast<int>((s_end - s_begin + kDmKeys - 1) / kDmKeys) : 0;
  const int32_t* row_idx = a.idx + t * a.S;
  const int d0 = warp * DQ;

  // Q's A fragments over the quarter: rows g, g + 8 (heads h0 + ...), dims ks*16 + 2c (+1, +8, +9).
  uint32_t qf[KS][4];
  {
    const bool ok0 = h0 + g < a.H, ok1 = h0 + g + 8 < a.H;
    const T* q0 = a.q + ((t * a.H + h0 + g) * DH + d0 + 2 * c);
    const T* q1 = q0 + 8 * DH;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      qf[ks][0] = ok0 ? *reinterpret_cast<const uint32_t*>(q0 + ks * 16) : 0u;
      qf[ks][1] = ok1 ? *reinterpret_cast<const uint32_t*>(q1 + ks * 16) : 0u;
      qf[ks][2] = ok0 ? *reinterpret_cast<const uint32_t*>(q0 + ks * 16 + 8) : 0u;
      qf[ks][3] = ok1 ? *reinterpret_cast<const uint32_t*>(q1 + ks * 16 + 8) : 0u;
    }
  }

  // Slot indices: lane j < 16 holds slot j of a tile (-1 past the split).
  auto tile_idx = [&](int i) {
    const int64_t s = s_begin + static_cast<int64_t>(i) * kDmKeys + lane;
    return i < n_tiles && lane < kDmKeys && s < s_end ? row_idx[s] : -1;
  };
  int bad = 0;
  // Gathers this warp's quarter of tile i's rows into stage st (invalid rows: zeros, no read);
  // returns the tile's mask of valid slots (the same in every warp).
  auto gather = [&](int32_t r_lane, int st) {
    bad |= (r_lane < -1 || r_lane >= a.n_rows) ? 1 : 0;
    const unsigned mask = __ballot_sync(0xffffffffu, r_lane >= 0 && r_lane < a.n_rows) & 0xffffu;
    if (mask != 0u) {
      T* dst = sK + st * (kDmKeys * kRow);
#pragma unroll
      for (int j = 0; j < PER; ++j) {
        const int i = lane + 32 * j, key = i / CPK, col = d0 + (i % CPK) * 8;
        const int32_t r = __shfl_sync(0xffffffffu, r_lane, key);
        const bool ok = r >= 0 && r < a.n_rows;
        const T* src = !ok ? a.kv
                           : r < a.n_kv ? a.kv + (static_cast<int64_t>(r) * DH + col)
                                        : a.entries + ((static_cast<int64_t>(r) - a.n_kv) * DH + col);
        cp_async16(smem_addr(dst + key * kRow + col), src, ok);
      }
    }
    cp_async_commit();
    return mask;
  };

  float o[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[j][e] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};  // rows g, g + 8

  int32_t r_next = tile_idx(1);
  unsigned mask_cur = gather(tile_idx(0), 0);
  const uint32_t b_off = static_cast<uint32_t>(((((lane >> 4) << 3) + (lane & 7)) * kRow + ((lane >> 3) & 1) * 8 + d0) * 2);
  const uint32_t v_off =
      static_cast<uint32_t>((((lane & 7) + ((lane >> 3) & 1) * 8) * kRow + d0 + (lane >> 4) * 8) * 2);
  int u = 0;  // tiles computed
  for (int i = 0; i < n_tiles; ++i) {
    const int st = i & 1;
    // Tile i + 1 streams in while tile i is computed (stage st ^ 1 was last read by tile i - 1,
    // by this warp only).
    const unsigned mask_next = gather(r_next, st ^ 1);
    r_next = tile_idx(i + 2);
    if (mask_cur == 0u) {  // uniform over the block: nothing to add
      mask_cur = mask_next;
      continue;
    }
    cp_async_wait<1>();
    __syncwarp();
    const uint32_t kt = smem_addr(sK + st * (kDmKeys * kRow));

    // Partial scores over the quarter: keys 0..7 (s[0]) and 8..15 (s[1]).
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t bf[4];
      ldsm_x4(bf, kt + b_off + ks * 32);
      mma16816<T>(s[0], qf[ks], bf[0], bf[1]);
      mma16816<T>(s[1], qf[ks], bf[2], bf[3]);
    }
    // Two score buffers, alternating over the tiles computed (u), not over the tiles: with a skipped
    // tile in between, tile i + 2 would rewrite tile i's buffer with no barrier since its reads.
    float4* xb = sX + (u++ & 1) * (kDmWarps * 2 * 32);
    xb[(warp * 2 + 0) * 32 + lane] = make_float4(s[0][0], s[0][1], s[0][2], s[0][3]);
    xb[(warp * 2 + 1) * 32 + lane] = make_float4(s[1][0], s[1][1], s[1][2], s[1][3]);
    __syncthreads();
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const float4 v0 = xb[(0 * 2 + n) * 32 + lane], v1 = xb[(1 * 2 + n) * 32 + lane];
      const float4 v2 = xb[(2 * 2 + n) * 32 + lane], v3 = xb[(3 * 2 + n) * 32 + lane];
      s[n][0] = ((v0.x + v1.x) + v2.x) + v3.x;
      s[n][1] = ((v0.y + v1.y) + v2.y) + v3.y;
      s[n][2] = ((v0.z + v1.z) + v2.z) + v3.z;
      s[n][3] = ((v0.w + v1.w) + v2.w) + v3.w;
    }

    // Online softmax of rows g (e = 0, 1) and g + 8 (e = 2, 3); key of (n, e): n*8 + 2c + e%2.
    float p[2][4], corr[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
          const int key = n * 8 + 2 * c + (e & 1);
          s[n][e] = (mask_cur >> key) & 1u ? s[n][e] * a.scale : -INFINITY;
          mx = fmaxf(mx, s[n][e]);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[hr], mx);
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
          p[n][e] = s[n][e] == -INFINITY ? 0.0f : expf(s[n][e] - m_new);
          sum += p[n][e];
        }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      corr[hr] = m_run[hr] == -INFINITY ? 0.0f : expf(m_run[hr] - m_new);
      l_run[hr] = l_run[hr] * corr[hr] + sum;
      m_run[hr] = m_new;
    }

    // O = O * corr + P . V over the quarter; P's A fragment from the score fragments.
    const uint32_t pf[4] = {pack2<T>(p[0][0], p[0][1]), pack2<T>(p[0][2], p[0][3]), pack2<T>(p[1][0], p[1][1]),
                            pack2<T>(p[1][2], p[1][3])};
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      o[j][0] *= corr[0];
      o[j][1] *= corr[0];
      o[j][2] *= corr[1];
      o[j][3] *= corr[1];
    }
#pragma unroll
    for (int jp = 0; jp < NT / 2; ++jp) {
      uint32_t bf[4];
      ldsm_x4_trans(bf, kt + v_off + jp * 32);
      mma16816<T>(o[2 * jp], pf, bf[0], bf[1]);
      mma16816<T>(o[2 * jp + 1], pf, bf[2], bf[3]);
    }
    mask_cur = mask_next;
  }
  cp_async_wait<0>();

  // The split's partial: (m, l) per head from warp 0's quad leaders, O from every warp's quarter.
  const bool any_bad = __any_sync(0xffffffffu, bad != 0);  // every warp read the same slots
  const int64_t base = (t * splits + split) * a.H;
  if (warp == 0 && c == 0) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int64_t h = h0 + g + 8 * hr;
      if (h < a.H) part_ml[base + h] = make_float2(m_run[hr], any_bad ? NAN : l_run[hr]);
    }
  }
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t h = h0 + g + 8 * hr;
    if (h >= a.H) continue;
    float* dst = part_acc + (base + h) * DH + d0 + 2 * c;
#pragma unroll
    for (int j = 0; j < NT; ++j) *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[j][2 * hr], o[j][2 * hr + 1]);
  }
}

// Block (h, t), thread d4 < Dh / 4: dims [4*d4, +4) of head h. Each thread issues its loads of
// the first 8 splits' partials and takes the inverse RoPE's cos/sin before the split weights are
// known (the loads and the double-precision sincos overlap warp 0's weights); warp 0 computes the
// split weights (lane j: splits j and j + 32, fixed shuffle trees) into shared memory.
template <typename T>
__global__ void __launch_bounds__(128)
    attention_decode_merge_kernel(const float* __restrict__ part_acc, const float2* __restrict__ part_ml, int splits,
                                  const float* __restrict__ sink, int64_t H, int64_t Dh, const int32_t* positions,
                                  const float* inv_freq, int64_t rope_dim, T* __restrict__ out) {
  __shared__ float wgt[kDmMaxSplits];
  __shared__ float flag_s;
  const int64_t h = blockIdx.x, t = blockIdx.y;
  const int64_t d = static_cast<int64_t>(threadIdx.x) * 4;
  const bool live = d < Dh;
  // The inverse RoPE's frequencies (constants: read before the wait) for this thread's two pairs.
  const int64_t rope_first = Dh - rope_dim;  // even
  float freq[2] = {0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < 4; j += 2) {
    if (live && rope_dim > 0 && d + j >= rope_first) freq[j / 2] = inv_freq[(d + j - rope_first) / 2];
  }
  pdl_wait();
  pdl_trigger();
  const int64_t stride = H * Dh;
  const float* src = part_acc + (t * splits * H + h) * Dh + d;  // split i: + i * stride
  float4 pv[8];
  auto load8 = [&](int i0) {
#pragma unroll
    for (int u = 0; u < 8; ++u)
      pv[u] = live && i0 + u < splits ? __ldcg(reinterpret_cast<const float4*>(src + (i0 + u) * stride))
                                      : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  };
  load8(0);
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float2 v[2];
    float M = sink != nullptr ? sink[h] : -INFINITY;
    bool b = false, any_key = false;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int i = k * 32 + lane;
      v[k] = i < splits ? __ldcg(part_ml + (t * splits + i) * H + h) : make_float2(-INFINITY, 0.0f);
      b |= isnan(v[k].y);
      any_key |= v[k].x != -INFINITY;
      M = fmaxf(M, v[k].x);
    }
    M = rowwise::warp_max(M);
    b = __any_sync(0xffffffffu, b);
    any_key = __any_sync(0xffffffffu, any_key);
    float e[2], L = 0.0f;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      e[k] = v[k].x == -INFINITY ? 0.0f : expf(v[k].x - M);
      L += v[k].y * e[k];
    }
    L = rowwise::warp_sum(L);
    if (sink != nullptr) L += expf(sink[h] - M);
#pragma unroll
    for (int k = 0; k < 2; ++k) wgt[k * 32 + lane] = any_key && !b ? e[k] / L : 0.0f;
    if (lane == 0) flag_s = b ? NAN : any_key ? 1.0f : 0.0f;
  }
  float cs[2] = {1.0f, 1.0f}, sn[2] = {0.0f, 0.0f};
  if (live && rope_dim > 0 && d + 2 >= rope_first) {  // the rope op's cos/sin at this position
    const int32_t pos = positions[t];
#pragma unroll
    for (int j = 0; j < 4; j += 2) {
      if (d + j >= rope_first) rowprep::rope_cos_sin(freq[j / 2], pos, cs[j / 2], sn[j / 2]);
    }
  }
  __syncthreads();
  if (!live) return;

  float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i0 = 0; i0 < splits; i0 += 8) {  // fmaf over the splits in order, 8 loads in flight
    if (i0 > 0) load8(i0);
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      if (i0 + u >= splits) break;
      const float wi = wgt[i0 + u];
      o[0] = fmaf(wi, pv[u].x, o[0]);
      o[1] = fmaf(wi, pv[u].y, o[1]);
      o[2] = fmaf(wi, pv[u].z, o[2]);
      o[3] = fmaf(wi, pv[u].w, o[3]);
    }
  }
  const float flag = flag_s;
#pragma unroll
  for (int j = 0; j < 4; ++j) o[j] = to_f32(from_f32<T>(isnan(flag) ? NAN : flag == 0.0f ? 0.0f : o[j]));
  if (rope_dim > 0) {  // the rope op's arithmetic on the stored values (rope_first is even)
#pragma unroll
    for (int j = 0; j < 4; j += 2) {
      if (d + j < rope_first) continue;
      rowprep::rotate_pair(o[j], o[j + 1], cs[j / 2], -sn[j / 2]);
    }
  }
  T* dst = out + (t * H + h) * Dh + d;
#pragma unroll
  for (int j = 0; j < 4; ++j) dst[j] = from_f32<T>(o[j]);
}

template <typename T, int DH>
void launch_dm(CudaBackend& be, const AttnArgs<T>& a, const int32_t* positions, const float* inv_freq,
               int64_t rope_dim) {
  const int64_t head_tiles = (a.H + 15) / 16, base = a.T * head_tiles;
  const int64_t n_tiles = (a.S + kDmKeys - 1) / kDmKeys;
  const int cap = env_setting(g_dm_max_splits, dm_max_splits_from_env);
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>({cap > 0 ? cap : kDmMaxSplits, n_tiles,
                                                               be.sm_count() * kDmBlocksPerSm / base}));
  int64_t len = (n_tiles + want - 1) / want * kDmKeys;
  int64_t splits = std::max<int64_t>(1, (a.S + len - 1) / len);
  while (splits > kDmMaxSplits) {
    len += kDmKeys;
    splits = (a.S + len - 1) / len;
  }
  ops::ScratchFrame frame(be);
  float* part_acc = be.scratch(DType::kF32, Shape{a.T, splits, a.H, a.Dh}).f32();
  auto* part_ml = static_cast<float2*>(be.scratch(DType::kF32, Shape{a.T, splits, a.H, int64_t{2}}).data);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(head_tiles), static_cast<unsigned>(a.T));
  launch_kernel(attention_decode_mma_kernel<T, DH>, grid, kDmThreads, DmSmem<DH>::bytes, be.stream(), a, part_acc,
                part_ml, len);
  CLAWMINE_CUDA_LAUNCHED("sparse_attention (decode, tensor cores)");
  const dim3 mgrid(static_cast<unsigned>(a.H), static_cast<unsigned>(a.T));
  launch_kernel_pdl(true, attention_decode_merge_kernel<T>, mgrid, dim3(128), 0, be.stream(),
                    static_cast<const float*>(part_acc), static_cast<const float2*>(part_ml), static_cast<int>(splits),
                    a.sink, a.H, a.Dh, positions, inv_freq, rope_dim, a.out);
  CLAWMINE_CUDA_LAUNCHED("sparse_attention (decode merge)");
}

}  // namespace

template <typename T>
bool decode_mma_supports(const AttnArgs<T>& a) {
  if constexpr (sizeof(T) != 2) {
    return false;
  } else {
    // CLAWMINE_ATTN_DECODE_MMA=0: the earlier decode paths (the FMA decode kernel up to
    // kDecodeMaxSlots, the prefill tensor-core kernel + merge + rope above), for A/B timings.
    static const bool on = env_switch("CLAWMINE_ATTN_DECODE_MMA", true);
    auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    return on && a.T >= 1 && a.T <= kDecodeMaxT && mma_supports(a.Dh) && a.H <= 65535 && aligned(a.q) && aligned(a.kv) &&
           aligned(a.entries) && aligned(a.out);
  }
}

template <typename T>
void launch_attention_decode_mma(CudaBackend& be, const AttnArgs<T>& a, const int32_t* positions,
                                 const float* inv_freq, int64_t rope_dim) {
  if constexpr (sizeof(T) == 2) {
    switch (a.Dh) {
      case 64: return launch_dm<T, 64>(be, a, positions, inv_freq, rope_dim);
      case 128: return launch_dm<T, 128>(be, a, positions, inv_freq, rope_dim);
      case 256: return launch_dm<T, 256>(be, a, positions, inv_freq, rope_dim);
      case 512: return launch_dm<T, 512>(be, a, positions, inv_freq, rope_dim);
      default: break;
    }
  }
  throw Error(str_cat("cuda sparse_attention: no decode tensor-core kernel for head dim ", a.Dh));
}

template bool decode_mma_supports<float>(const AttnArgs<float>&);
template bool decode_mma_supports<__nv_bfloat16>(const AttnArgs<__nv_bfloat16>&);
template bool decode_mma_supports<__half>(const AttnArgs<__half>&);
template void launch_attention_decode_mma<float>(CudaBackend&, const AttnArgs<float>&, const int32_t*, const float*,
                                                 int64_t);
template void launch_attention_decode_mma<__nv_bfloat16>(CudaBackend&, const AttnArgs<__nv_bfloat16>&,
                                                         const int32_t*, const float*, int64_t);
template void launch_attention_decode_mma<__half>(CudaBackend&, const AttnArgs<__half>&, const int32_t*, const float*,
                                                  int64_t);

}  // namespace clawmine::backend::cuda::attn

namespace clawmine::backend::cuda {
void set_attn_decode_max_splits(int n) {
  attn::g_dm_max_splits.store(n <= 0 ? -1 : std::min(n, attn::kDmMaxSplits), std::memory_order_relaxed);
}
}  // namespace clawmine::backend::cuda
