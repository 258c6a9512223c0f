// The KV compressor of a chunk on the GPU (spec §3.3 C; ops/backend.h compress_chunk). Positions
// p0 .. p0+T-1, p0 read from positions[0] on the device (so a decode step replays unchanged);
// window j covers positions [j*m, (j+1)*m); a row at position q lives in the carried state
// (state.pending row q - (p0 - p0 % m) = q % m) when q < p0, else in the chunk (row q - p0, its
// gate plus ape[q % m]). Entry n (window j = p0/m + n), channel d: gather the slots, per-channel
// softmax over them (max first, then the weighted sum in slot order), pooled[n, d]. CSA slots
// [0, m) are the previous window's first halves: state.overlap for n = 0, chunk/pending rows of
// window j - 1 otherwise, absent (weight 0) for j = 0; slots [m, 2m) this window's second halves.
// Slots at positions after the chunk's last are absent (an incomplete window's entry so far).
// Then the state: pending rows = the chunk's incomplete tail (gate with ape), overlap (CSA) =
// first halves of the last window completed.
//
// Pooling reads channel d's columns only (d, and hd + d for CSA) and the state update of a
// column reads and writes that column only, so channels are independent. Two paths:
//  - decode and small T (T <= kFusedMaxT): compress_decode_kernel, one launch; a block owns 8
//    channels: it stages every entry's slots in shared memory (all threads), takes the maxima and
//    exp weights in parallel, sums in slot order (one thread per channel), then updates the state
//    of its columns once every read of the old state is done (a barrier).
//  - larger T: two kernels in stream order:
//    1. compress_pool_kernel: one thread per (entry, channel).
//    2. compress_state_kernel: one thread per state element; it runs after kernel 1 has read the
//       old state; within it, the thread that reads old pending[i][col] for the overlap is the one
//       that then overwrites pending[i][col].
// Both paths compute every value with the same operations in the same order (bit-identical).
#include <cmath>
#include <cstdint>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/op_errors.cuh"
#include "backend/cuda/rowprep.cuh"
#include "backend/cuda/rowwise.cuh"

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
  int64_t p0, m, W;        // p0: set by each kernel from the device positions

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
// Slots at positions after `last` (the chunk's last position) are absent.
template <typename TK>
__device__ __forceinline__ bool pool_slot(const CompressorRows<TK>& rows, const TK* overlap_kv,
                                          const float* overlap_gate, bool overlap, int64_t hd, int64_t n, int64_t j,
                                          int64_t s, int64_t d, int64_t last, float& g, float& v) {
  const int64_t m = rows.m;
  if (!overlap) {
    if (j * m + s > last) return false;
    rows.at(j * m + s, s, d, g, v);
    return true;
  }
  if (s >= m) {  // this window's second halves
    if (j * m + (s - m) > last) return false;
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

// grid (n_out, ceil(hd / kPoolThreads)); one thread per (entry, channel). n_out must be the
// number of windows the chunk touches (checked here: the host cannot read p0).
template <typename TK, typename TO>
__global__ void __launch_bounds__(kPoolThreads)
    compress_pool_kernel(CompressorRows<TK> rows, const int32_t* __restrict__ positions, int64_t T,
                         const TK* __restrict__ overlap_kv, const float* __restrict__ overlap_gate, bool overlap,
                         int64_t hd, int64_t n_out, TO* __restrict__ pooled, int32_t* __restrict__ entry_positions,
                         OpErrorRecord* err) {
  pdl_wait();
  pdl_trigger();
  rows.p0 = positions[0];
  const int64_t m = rows.m, last = rows.p0 + T - 1, j0 = rows.p0 / m;
  if (last / m - j0 + 1 != n_out) {  // the caller's row count does not fit these positions
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
      report_op_error(err, kOpErrorCompressRows, rows.p0, T, m, n_out);
    return;
  }
  const int64_t n = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t j = j0 + n;
  if (d == 0) entry_positions[n] = static_cast<int32_t>(j * m);
  if (d >= hd) return;
  const int64_t slots = overlap ? 2 * m : m;
  const float neg_inf = -INFINITY;
  float M = neg_inf, g, v;
  for (int64_t s = 0; s < slots; ++s)
    if (pool_slot(rows, overlap_kv, overlap_gate, overlap, hd, n, j, s, d, last, g, v)) M = fmaxf(M, g);
  float num = 0.0f, den = 0.0f;
  if (M != neg_inf) {  // a channel whose slots are all -inf has no weight: 0
    for (int64_t s = 0; s < slots; ++s) {
      if (!pool_slot(rows, overlap_kv, overlap_gate, overlap, hd, n, j, s, d, last, g, v) || g == neg_inf) continue;
      const float e = expf(g - M);
      den += e;
      num = fmaf(e, v, num);
    }
  }
  pooled[n * hd + d] = from_f32<TO>(den > 0.0f ? num / den : 0.0f);
}

// State element (row i, column col) after the chunk (rows.p0 set): the first halves of the last
// window completed go to the overlap (CSA), the chunk's incomplete tail rows to pending. A row
// before p0 is old pending row i, read here before this same call overwrites pending[i][col].
template <typename TK>
__device__ __forceinline__ void update_state(const CompressorRows<TK>& rows, int64_t T, bool overlap, int64_t hd,
                                             int64_t i, int64_t col, TK* pending_kv, float* pending_gate,
                                             TK* overlap_kv, float* overlap_gate) {
  const int64_t m = rows.m, W = rows.W, p0 = rows.p0;
  const int64_t pe = p0 + T, tail_start = pe - pe % m;
  const int64_t n_new = pe / m - p0 / m;
  float g, v;
  if (overlap && n_new > 0 && col < hd) {  // the last completed window starts at tail_start - m
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

// One thread per (state row i, column col) of the [m, W] pending state.
template <typename TK>
__global__ void __launch_bounds__(kStateThreads)
    compress_state_kernel(CompressorRows<TK> rows, const int32_t* __restrict__ positions, int64_t T, bool overlap,
                          int64_t hd, TK* pending_kv, float* pending_gate, TK* overlap_kv, float* overlap_gate) {
  pdl_wait();
  pdl_trigger();
  // No __restrict__: pending_* alias rows.pending_* (read, then written, by the same thread).
  rows.p0 = positions[0];
  const int64_t m = rows.m, W = rows.W;
  const int e = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);  // m * W < 2^31 (host check)
  if (e >= m * W) return;
  const int64_t i = e / static_cast<int>(W), col = e % static_cast<int>(W);
  update_state(rows, T, overlap, hd, i, col, pending_kv, pending_gate, overlap_kv, overlap_gate);
}

// ---- decode and small T: compress_decode_kernel -------------------------------------------------

constexpr int64_t kFusedMaxT = 16;  // larger chunks: the pool + state kernels
constexpr int kFusedThreads = 256;
constexpr int kFusedChannels = kFusedThreads / 32;  // one warp per channel for the maxima
constexpr int64_t kFusedMaxSmem = 48 * 1024;

// Shared memory: gate, kv, exp weight [slots][kFusedChannels] f32 each.
int64_t fused_smem_bytes(int64_t slots) { return 3 * slots * kFusedChannels * static_cast<int64_t>(sizeof(float)); }

// grid ceil(hd / kFusedChannels), kFusedThreads threads: block x owns channels
// [8x, 8x + 8) of every entry and their state columns (c and hd + c for CSA). The arithmetic of a
// pooled value is compress_pool_kernel's: M = max over present slots (any order: fmaxf drops NaN,
// and the sign of a zero M does not change g - M), e = expf(g - M), den += e and
// num = fmaf(e, v, num) in slot order, skipping absent and -inf slots.
// The body of compress_decode_kernel (also the first phase of compress_store_kernel): returns
// whether n_out fits the positions (else the error is recorded and nothing is pooled).
// fused_smem: fused_smem_bytes(slots).
template <typename TK, typename TO>
__device__ __forceinline__ bool compress_decode_body(CompressorRows<TK> rows, const int32_t* __restrict__ positions,
                                                     int64_t T, TK* overlap_kv, float* overlap_gate, bool overlap,
                                                     int64_t hd, int64_t n_out, TO* __restrict__ pooled,
                                                     int32_t* __restrict__ entry_positions, OpErrorRecord* err,
                                                     TK* pending_kv, float* pending_gate, float* fused_smem) {
  // No __restrict__ on the state: pending_* alias rows.pending_* and the overlap is read by the
  // pooling before it is rewritten (after a barrier).
  constexpr int C = kFusedChannels;
  const int64_t m = rows.m, slots = overlap ? 2 * m : m;
  float* sg = fused_smem;
  float* sv = sg + slots * C;
  float* se = sv + slots * C;
  rows.p0 = positions[0];
  const int64_t last = rows.p0 + T - 1, j0 = rows.p0 / m;
  const bool rows_ok = last / m - j0 + 1 == n_out;
  if (!rows_ok && blockIdx.x == 0 && threadIdx.x == 0) report_op_error(err, kOpErrorCompressRows, rows.p0, T, m, n_out);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t d0 = static_cast<int64_t>(blockIdx.x) * C;
  const int nc = hd - d0 < C ? static_cast<int>(hd - d0) : C;
  const int n_items = static_cast<int>(slots) * C;  // small (host check on the shared memory)
  constexpr float neg_inf = -INFINITY;
  constexpr float kSkip = -1.0f;  // an exp weight is >= 0 or NaN

  for (int64_t n = 0; rows_ok && n < n_out; ++n) {
    const int64_t j = j0 + n;
    if (blockIdx.x == 0 && tid == 0) entry_positions[n] = static_cast<int32_t>(j * m);
    for (int e = tid; e < n_items; e += kFusedThreads) {  // slot s = e / C, channel c = e % C
      const int c = e % C;
      float g = neg_inf, v = 0.0f;
      if (c >= nc || !pool_slot(rows, overlap_kv, overlap_gate, overlap, hd, n, j, e / C, d0 + c, last, g, v))
        g = neg_inf;  // absent: no weight, like a -inf gate
      sg[e] = g;
      sv[e] = v;
    }
    __syncthreads();
    {  // warp c: channel c's maximum, then its exp weights
      const int c = warp;
      float M = neg_inf;
      for (int64_t s = lane; s < slots; s += 32) M = fmaxf(M, sg[s * C + c]);
      for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
      for (int64_t s = lane; s < slots; s += 32) {
        const float g = sg[s * C + c];
        se[s * C + c] = M == neg_inf || g == neg_inf ? kSkip : expf(g - M);
      }
    }
    __syncthreads();
    if (tid < nc) {
      float num = 0.0f, den = 0.0f;
      for (int64_t s = 0; s < slots; ++s) {
        const float e = se[s * C + tid];
        if (e == kSkip) continue;
        den += e;
        num = fmaf(e, sv[s * C + tid], num);
      }
      pooled[n * hd + d0 + tid] = from_f32<TO>(den > 0.0f ? num / den : 0.0f);
    }
    __syncthreads();  // the next entry rewrites sg, sv, se
  }

  // The state of this block's columns: every read of the old state above is done (barrier).
  __syncthreads();
  const int ncols = overlap ? 2 * nc : nc;
  for (int e = tid; e < static_cast<int>(m) * ncols; e += kFusedThreads) {
    const int i = e / ncols, cc = e % ncols;
    const int64_t col = cc < nc ? d0 + cc : hd + d0 + (cc - nc);
    update_state(rows, T, overlap, hd, i, col, pending_kv, pending_gate, overlap_kv, overlap_gate);
  }
  return rows_ok;
}

template <typename TK, typename TO>
__global__ void __launch_bounds__(kFusedThreads, 1)
    compress_decode_kernel(CompressorRows<TK> rows, const int32_t* __restrict__ positions, int64_t T, TK* overlap_kv,
                           float* overlap_gate, bool overlap, int64_t hd, int64_t n_out, TO* __restrict__ pooled,
                           int32_t* __restrict__ entry_positions, OpErrorRecord* err, TK* pending_kv,
                           float* pending_gate) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ float fused_smem[];
  compress_decode_body(rows, positions, T, overlap_kv, overlap_gate, overlap, hd, n_out, pooled, entry_positions, err,
                       pending_kv, pending_gate, fused_smem);
}


// ---- compress_store at decode sizes: compress_store_kernel ------------------------------------
// Phase 1 is compress_decode_body (the pooled rows, state, entry_positions). Every block then
// counts itself done on a device counter (after a fence that publishes its pooled columns); the
// last block resets the counter and runs norm_rope_qdq_kernel's per-row code (rowprep.cuh) on the
// n_out pooled rows -- same thread layout (tpr threads per row, kP packs of 8 per thread), same
// operations in the same order, x = F32 so its roundings to the dtype are identities -- and
// writes each row back to pooled and, converted like scatter_rows, to entry row j = j*m / m.
// The cos/sin of every entry position are taken by every block before the pooling (the last
// block is not known in advance) so their latency overlaps it.
enum class StoreQ { kNone, kFp8, kHadamard };

struct StoreArgs {
  unsigned int* counter;  // 0 between launches (the last block resets it)
  const void* weight;     // norm weight or null
  rowwise::FloatCode wcode;
  bool wpacked;
  bool norm;
  float eps;
  const float* inv_freq;
  int half;  // rope_dim / 2; 0: no rope
  int64_t n_nope;
  int tpr;
  void* entries;  // [n_entries, hd] of TD
  int64_t n_entries;
};

// Register cap: a decode step launches this kernel early (PDL) on a side branch, where its 64
// blocks wait and then run a few dependent memory round trips while wq_b streams; uncapped they
// held 101-116 registers x 256 threads each, ~43% of a multiprocessor's register file, that
// wq_b's warps could not use. At <= 64 (4 blocks per multiprocessor) kP <= 2 spills at most 20
// bytes, in the last block's row code only; kP = 4 (137 registers uncapped) spilled ~900 bytes at
// 64 and keeps its registers. Decode b=1 6.89 -> 6.85 ms/token (docs/PERFORMANCE.md, seventeenth
// session).
template <typename TD, int kP, StoreQ kQ, int E>
__global__ void __launch_bounds__(kFusedThreads, kP == 4 ? 1 : 4)
    compress_store_kernel(CompressorRows<float> rows, const int32_t* __restrict__ positions, int64_t T,
                          float* overlap_kv, float* overlap_gate, bool overlap, int64_t hd, int64_t n_out,
                          float* pooled, int32_t* __restrict__ entry_positions, OpErrorRecord* err,
                          float* pending_kv, float* pending_gate, StoreArgs s) {
  pdl_wait();
  pdl_trigger();
  constexpr bool kHad = kQ == StoreQ::kHadamard;
  constexpr int kWarps = kFusedThreads / 32;
  extern __shared__ float fused_smem[];
  __shared__ float red[kWarps];
  __shared__ float hbuf[kHad ? kWarps : 1][kHad ? 32 * E : 1];
  __shared__ unsigned int is_last;
  const int tid = threadIdx.x;
  const int64_t m = rows.m, slots = overlap ? 2 * m : m;
  float* cs = fused_smem + 3 * slots * kFusedChannels;  // entry l: cos [0, half), sin [half, 2 half)
  const int64_t j0 = positions[0] / m;
  for (int e = tid; e < static_cast<int>(n_out) * s.half; e += kFusedThreads) {
    const int l = e / s.half, i = e % s.half;
    float c, sn;
    rowprep::rope_cos_sin(s.inv_freq[i], static_cast<int32_t>((j0 + l) * m), c, sn);
    cs[l * 2 * s.half + i] = c;
    cs[l * 2 * s.half + s.half + i] = sn;
  }
  // (the pooling's first barrier orders these writes before their reads)
  const bool rows_ok = compress_decode_body(rows, positions, T, overlap_kv, overlap_gate, overlap, hd, n_out, pooled,
                                            entry_positions, err, pending_kv, pending_gate, fused_smem);
  __threadfence();  // this block's pooled columns, visible to the last block
  __syncthreads();
  if (tid == 0) {
    const unsigned int done = atomicAdd(s.counter, 1u);
    is_last = done == gridDim.x - 1;
    if (is_last) atomicExch(s.counter, 0u);
  }
  __syncthreads();
  if (!is_last || !rows_ok) return;
  __threadfence();

  const int tpr = s.tpr, vpb = kFusedThreads / tpr, r = tid % tpr;
  const int64_t packs = hd / 8;
  for (int64_t row0 = 0; row0 < n_out; row0 += vpb) {  // block-uniform
    const int64_t row = row0 + tid / tpr;
    const bool valid = row < n_out;
    float* xr = pooled + (valid ? row * hd : 0);
    rowprep::RowPacks<kP> v;
#pragma unroll
    for (int k = 0; k < kP; ++k) {  // written by other blocks of this grid: through L2
      const int64_t p = r + static_cast<int64_t>(k) * tpr;
      if (valid && p < packs) {
        const float4 a = __ldcg(reinterpret_cast<const float4*>(xr + 8 * p));
        const float4 b = __ldcg(reinterpret_cast<const float4*>(xr + 8 * p) + 1);
        v.v[k][0] = a.x, v.v[k][1] = a.y, v.v[k][2] = a.z, v.v[k][3] = a.w;
        v.v[k][4] = b.x, v.v[k][5] = b.y, v.v[k][6] = b.z, v.v[k][7] = b.w;
      }
    }
    if (s.norm) {
      rowprep::rms_norm_packs(v, s.weight, s.wcode, s.wpacked, hd, s.eps, r, tpr, valid, red);
      v.template round_to<float>();
    }
    if (s.half > 0) {
      if (valid) {
        const float* c = cs + row * 2 * s.half;
        const int64_t rope0 = hd - 2 * static_cast<int64_t>(s.half);  // a multiple of 8
#pragma unroll
        for (int k = 0; k < kP; ++k) {
          const int64_t p = r + static_cast<int64_t>(k) * tpr;
          if (p < packs && 8 * p >= rope0) {
            const int i0 = static_cast<int>((8 * p - rope0) / 2);
#pragma unroll
            for (int q = 0; q < 4; ++q)
              rowprep::rotate_pair(v.v[k][2 * q], v.v[k][2 * q + 1], c[i0 + q], c[s.half + i0 + q]);
          }
        }
      }
      v.template round_to<float>();
    }
    if constexpr (kQ == StoreQ::kFp8) {
#pragma unroll
      for (int k = 0; k < kP; ++k) {  // every lane: the shuffles of the block of 64
        const int64_t p = r + static_cast<int64_t>(k) * tpr;
        bool in[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) in[q] = valid && p < packs && 8 * p + q < s.n_nope;
        rowprep::fp8_block_of_8_lanes(v.v[k], in);
      }
    } else if constexpr (kHad) {
      if (valid) {  // tpr = 32: warp-uniform
        float* hb = hbuf[tid >> 5];
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
    if (valid) {  // scatter_rows: key j*m, divisor m
      const int64_t j = j0 + row;
      if (j >= s.n_entries) {
        if (r == 0) report_op_error(err, kOpErrorScatterRow, j * m, m, row, s.n_entries);
      } else {
        v.store(static_cast<TD*>(s.entries) + j * hd, r, tpr, packs, true);
      }
    }
    __syncthreads();  // red and hbuf are reused by the next rows
  }
}

template <typename TD, StoreQ kQ>
auto store_kernel_packs(int kp) {
  return kp == 1 ? compress_store_kernel<TD, 1, kQ, 0> : kp == 2 ? compress_store_kernel<TD, 2, kQ, 0>
                                                                 : compress_store_kernel<TD, 4, kQ, 0>;
}
template <typename TD>
auto store_kernel_hadamard(int64_t dim) {
  return dim == 32    ? compress_store_kernel<TD, 1, StoreQ::kHadamard, 1>
         : dim == 64  ? compress_store_kernel<TD, 1, StoreQ::kHadamard, 2>
         : dim == 128 ? compress_store_kernel<TD, 1, StoreQ::kHadamard, 4>
         : dim == 256 ? compress_store_kernel<TD, 1, StoreQ::kHadamard, 8>
                      : compress_store_kernel<TD, 2, StoreQ::kHadamard, 16>;  // 512
}

struct StoreCounter {
  unsigned int* dev = nullptr;
};
const int kStoreCounterKey = 0;

void expect_f32(const TensorView& v, const char* arg) {
  CLAWMINE_CHECK(v.dtype == DType::kF32, "cuda compress_chunk: ", arg, " must be F32, got ", dtype_name(v.dtype));
}
void expect_shape2(const TensorView& v, int64_t rows, int64_t cols, const char* arg) {
  CLAWMINE_CHECK(v.rank() == 2 && v.dim(0) == rows && v.dim(1) == cols, "cuda compress_chunk: ", arg, " must be [",
                 rows, ", ", cols, "], got ", shape_str(v.shape));
}

}  // namespace

void CudaBackend::compress_chunk(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                                 const TensorView& positions, int64_t rate, bool overlap,
                                 const CompressorStateView& state, const TensorView& pooled,
                                 const TensorView& entry_positions) {
  const char* op = "compress_chunk";
  expect_device(kv, op, "kv");
  expect_device(gate, op, "gate");
  expect_device(ape, op, "ape");
  expect_device(positions, op, "positions");
  expect_device(state.pending_kv, op, "state.pending_kv");
  expect_device(state.pending_gate, op, "state.pending_gate");
  CLAWMINE_CHECK(rate >= 1, "cuda compress_chunk: rate ", rate, " must be >= 1");
  CLAWMINE_CHECK(kv.rank() == 2, "cuda compress_chunk: kv must be [T, c*hd], got ", shape_str(kv.shape));
  const int64_t T = kv.dim(0), W = kv.dim(1), m = rate, c = overlap ? 2 : 1;
  CLAWMINE_CHECK(T >= 1, "cuda compress_chunk: the chunk is empty");
  CLAWMINE_CHECK(positions.dtype == DType::kI32 && positions.rank() == 1 && positions.dim(0) == T,
                 "cuda compress_chunk: positions must be I32 [", T, "], got ", dtype_name(positions.dtype), " ",
                 shape_str(positions.shape));
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
  // The chunk touches (p0+T-1)/m - p0/m + 1 windows: ceil(T/m) or one more; the kernel checks
  // the exact count against the device positions.
  expect_device(pooled, op, "pooled");
  expect_device(entry_positions, op, "entry_positions");
  CLAWMINE_CHECK(pooled.rank() == 2 && pooled.dim(1) == hd && pooled.dim(0) >= 1,
                 "cuda compress_chunk: pooled must be [n_out, ", hd, "], got ", shape_str(pooled.shape));
  const int64_t n_out = pooled.dim(0);
  CLAWMINE_CHECK(n_out <= (T - 1) / m + 2, "cuda compress_chunk: pooled has ", n_out, " rows; a chunk of ", T,
                 " tokens touches at most ", (T - 1) / m + 2, " windows of rate ", m);
  CLAWMINE_CHECK(entry_positions.dtype == DType::kI32 && entry_positions.numel() == n_out,
                 "cuda compress_chunk: entry_positions must be I32 [", n_out, "], got ",
                 dtype_name(entry_positions.dtype), " ", shape_str(entry_positions.shape));
  if (T == 0 || hd == 0) return;
  CLAWMINE_CHECK(m * W < (int64_t{1} << 31), "cuda compress_chunk: state of ", m, " x ", W, " is too large");

  dispatch_float(kv.dtype, op, "kv", [&](auto kv_tag) {
    using TK = decltype(kv_tag);
    const CompressorRows<TK> rows{kv.as<TK>(),      gate.as<float>(), ape.as<float>(), state.pending_kv.as<TK>(),
                                  state.pending_gate.as<float>(), 0, m, W};
    TK* ov_kv = overlap ? state.overlap_kv.as<TK>() : nullptr;
    float* ov_gate = overlap ? state.overlap_gate.as<float>() : nullptr;
    OpErrorRecord* err = op_error_record(*this);
    const int64_t slots = overlap ? 2 * m : m;
    if (T <= kFusedMaxT && fused_smem_bytes(slots) <= kFusedMaxSmem) {
      dispatch_float(pooled.dtype, op, "pooled", [&](auto out_tag) {
        using TO = decltype(out_tag);
        launch_kernel(compress_decode_kernel<TK, TO>, blocks_for(hd, kFusedChannels), kFusedThreads,
                      static_cast<size_t>(fused_smem_bytes(slots)), stream_, rows, positions.as<int32_t>(), T, ov_kv,
                      ov_gate, overlap, hd, n_out, pooled.as<TO>(), entry_positions.as<int32_t>(), err,
                      state.pending_kv.as<TK>(), state.pending_gate.as<float>());
        CLAWMINE_CUDA_LAUNCHED("compress_chunk (decode)");
      });
      return;
    }
    dispatch_float(pooled.dtype, op, "pooled", [&](auto out_tag) {
      using TO = decltype(out_tag);
      const dim3 grid(static_cast<unsigned>(n_out), blocks_for(hd, kPoolThreads));
      launch_kernel(compress_pool_kernel<TK, TO>, grid, kPoolThreads, 0, stream_, rows, positions.as<int32_t>(), T,
                    ov_kv, ov_gate, overlap, hd, n_out, pooled.as<TO>(), entry_positions.as<int32_t>(), err);
      CLAWMINE_CUDA_LAUNCHED("compress_chunk (pool)");
    });
    launch_kernel(compress_state_kernel<TK>, blocks_for(m * W, kStateThreads), kStateThreads, 0, stream_, rows,
                  positions.as<int32_t>(), T, overlap, hd, state.pending_kv.as<TK>(), state.pending_gate.as<float>(),
                  ov_kv, ov_gate);
    CLAWMINE_CUDA_LAUNCHED("compress_chunk (state)");
  });
}

}  // namespace clawmine::backend::cuda

namespace clawmine::backend::cuda {

// One launch (compress_store_kernel) where it gives the composition's results bit for bit: a
// decode-sized chunk (compress_chunk's one-launch path) of F32 kv and pooled, F32/BF16 entries,
// and a preparation norm_rope_qdq runs as its one kernel (the same shape conditions); anything
// else is the composition (compress_store_unfused), which also reports argument errors.
void CudaBackend::compress_store(const TensorView& kv, const TensorView& gate, const TensorView& ape,
                                 const TensorView& positions, int64_t rate, bool overlap,
                                 const CompressorStateView& state, const VecPrep& prep, const TensorView& inv_freq,
                                 const TensorView& pooled, const TensorView& entry_positions,
                                 const TensorView& entries) {
  auto unfused = [&] {
    compress_store_unfused(kv, gate, ape, positions, rate, overlap, state, prep, inv_freq, pooled, entry_positions,
                           entries);
  };
  if (kv.rank() != 2 || pooled.rank() != 2 || entries.rank() != 2 || rate < 1) return unfused();
  const int64_t T = kv.dim(0), hd = pooled.dim(1), n_out = pooled.dim(0), m = rate;
  const int64_t slots = overlap ? 2 * m : m;
  const bool rope = prep.rope_dim > 0;
  const bool fp8 = prep.qdq == Qdq::kFp8Nope && prep.n_nope > 0, had = prep.qdq == Qdq::kHadamardFp4;
  const int64_t half = rope ? prep.rope_dim / 2 : 0;
  const int64_t smem = fused_smem_bytes(slots) + n_out * 2 * half * static_cast<int64_t>(sizeof(float));
  // compress_chunk's decode path with F32 kv and pooled.
  // Static shared memory besides: the Hadamard row buffers (8 warps x hd floats) and < 1 KB.
  const int64_t static_smem = (had ? 8 * hd * static_cast<int64_t>(sizeof(float)) : 0) + 1024;
  bool ok = T >= 1 && T <= kFusedMaxT && smem + static_smem <= kFusedMaxSmem && kv.dtype == DType::kF32 &&
            pooled.dtype == DType::kF32 && kv.dim(1) == (overlap ? 2 : 1) * hd && n_out >= 1 &&
            n_out <= (T - 1) / m + 2 && (entries.dtype == DType::kF32 || entries.dtype == DType::kBF16) &&
            entries.dim(1) == hd && entries.device == Device::kCuda && entries.data != nullptr;
  // norm_rope_qdq's one-kernel conditions on the pooled rows (x F32 [n_out, 1, hd]).
  const int tpr = rowprep::rms_threads_per_row(hd);
  const int kp = rowprep::rms_regs_packs(hd, tpr);
  ok = ok && hd > 0 && hd % 8 == 0 && hd <= 8192 && kp > 0 && rowwise::packable<float, 8>(pooled.data, hd);
  if (rope) ok = ok && prep.rope_dim % 8 == 0 && prep.rope_dim <= hd && prep.rope_dim <= 512;
  if (prep.qdq == Qdq::kFp8Nope) ok = ok && prep.n_nope >= 0 && prep.n_nope <= hd;
  if (had) ok = ok && hd >= 32 && hd <= 512 && (hd & (hd - 1)) == 0;
  if (prep.norm && prep.norm_weight != nullptr) ok = ok && prep.norm_weight->numel() == hd;
  ok = ok && (entries.dtype == DType::kF32 ? rowwise::packable<float, 8>(entries.data, hd)
                                           : rowwise::packable<__nv_bfloat16, 8>(entries.data, hd));
  if (!ok) return unfused();

  // Checks the composition's compress_chunk would make (it reports them).
  const char* op = "compress_store";
  expect_device(kv, op, "kv");
  expect_device(gate, op, "gate");
  expect_device(ape, op, "ape");
  expect_device(positions, op, "positions");
  expect_device(pooled, op, "pooled");
  expect_device(entry_positions, op, "entry_positions");
  expect_device(state.pending_kv, op, "state.pending_kv");
  expect_device(state.pending_gate, op, "state.pending_gate");
  const int64_t W = kv.dim(1);
  CLAWMINE_CHECK(positions.dtype == DType::kI32 && positions.rank() == 1 && positions.dim(0) == T,
                 "cuda compress_store: positions must be I32 [", T, "], got ", dtype_name(positions.dtype), " ",
                 shape_str(positions.shape));
  expect_shape2(gate, T, W, "gate");
  expect_shape2(ape, m, W, "ape");
  expect_shape2(state.pending_kv, m, W, "state.pending_kv");
  expect_shape2(state.pending_gate, m, W, "state.pending_gate");
  expect_f32(gate, "gate");
  expect_f32(ape, "ape");
  expect_f32(state.pending_gate, "state.pending_gate");
  expect_f32(state.pending_kv, "state.pending_kv");
  if (overlap) {
    expect_device(state.overlap_kv, op, "state.overlap_kv");
    expect_device(state.overlap_gate, op, "state.overlap_gate");
    expect_shape2(state.overlap_kv, m, hd, "state.overlap_kv");
    expect_shape2(state.overlap_gate, m, hd, "state.overlap_gate");
    expect_f32(state.overlap_gate, "state.overlap_gate");
    expect_f32(state.overlap_kv, "state.overlap_kv");
  }
  CLAWMINE_CHECK(entry_positions.dtype == DType::kI32 && entry_positions.numel() == n_out,
                 "cuda compress_store: entry_positions must be I32 [", n_out, "], got ",
                 dtype_name(entry_positions.dtype), " ", shape_str(entry_positions.shape));
  CLAWMINE_CHECK(m * W < (int64_t{1} << 31), "cuda compress_store: state of ", m, " x ", W, " is too large");

  StoreArgs a{};
  {
    auto* ctr = branch_op_state<StoreCounter>(&kStoreCounterKey);
    if (ctr->dev == nullptr) {  // never released: the arena goes with the backend
      const TensorView v = allocate(DType::kI32, {1});
      CLAWMINE_CUDA_CHECK(cudaMemsetAsync(v.data, 0, sizeof(unsigned int), stream_));
      ctr->dev = static_cast<unsigned int*>(v.data);
    }
    a.counter = ctr->dev;
  }
  a.norm = prep.norm;
  a.eps = prep.eps;
  if (prep.norm && prep.norm_weight != nullptr) {
    expect_device(*prep.norm_weight, op, "norm_weight");
    a.weight = prep.norm_weight->data;
    a.wcode = rowwise::float_code(prep.norm_weight->dtype, op, "norm_weight");
    a.wpacked = reinterpret_cast<uintptr_t>(a.weight) % (8 * rowwise::float_code_bytes(a.wcode)) == 0;
  }
  if (rope) {
    expect_device(inv_freq, op, "inv_freq");
    CLAWMINE_CHECK(inv_freq.dtype == DType::kF32 && inv_freq.numel() == half, "cuda compress_store: inv_freq must be [",
                   half, "] F32 (rope_dim/2), got ", dtype_name(inv_freq.dtype), " ", shape_str(inv_freq.shape));
    a.inv_freq = inv_freq.as<const float>();
    a.half = static_cast<int>(half);
  }
  a.n_nope = prep.n_nope;
  a.tpr = tpr;
  a.entries = entries.data;
  a.n_entries = entries.dim(0);

  const CompressorRows<float> rows{kv.as<float>(), gate.as<float>(), ape.as<float>(), state.pending_kv.as<float>(),
                                   state.pending_gate.as<float>(), 0, m, W};
  float* ov_kv = overlap ? state.overlap_kv.as<float>() : nullptr;
  float* ov_gate = overlap ? state.overlap_gate.as<float>() : nullptr;
  OpErrorRecord* err = op_error_record(*this);
  auto launch = [&](auto dtag) {
    using TD = decltype(dtag);
    auto kernel = had ? store_kernel_hadamard<TD>(hd)
                  : fp8 ? store_kernel_packs<TD, StoreQ::kFp8>(kp)
                        : store_kernel_packs<TD, StoreQ::kNone>(kp);
    launch_kernel(kernel, blocks_for(hd, kFusedChannels), kFusedThreads, static_cast<size_t>(smem), stream_, rows,
                  positions.as<int32_t>(), T, ov_kv, ov_gate, overlap, hd, n_out, pooled.as<float>(),
                  entry_positions.as<int32_t>(), err, state.pending_kv.as<float>(), state.pending_gate.as<float>(), a);
    CLAWMINE_CUDA_LAUNCHED("compress_store");
  };
  if (entries.dtype == DType::kF32) {
    launch(float{});
  } else {
    launch(__nv_bfloat16{});
  }
}

}  // namespace clawmine::backend::cuda
