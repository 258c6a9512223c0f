// Deterministic per-row top-k on the GPU (ops/backend.h topk): the indices of the k largest
// values, largest first, ties to the lower index; -inf and NaN are never picked (their slots get
// -1). Every path orders by the same 64-bit item (order_key(v) << 32 | ~index): pickable items are
// distinct, and a larger item is a larger value, or an equal value at a lower index. The result is
// a function of the input alone (counts may be summed by atomics, but no atomic decides an order),
// so it equals the CPU reference exactly. Three kernels, chosen by shape alone:
//
//  - topk_rank_kernel (T * N^2 <= kRankBudget, e.g. decode over <= 2048 values): an element's slot
//    is its rank, the number of row items above its own, counted against the whole row staged in
//    shared memory by G threads per element; blocks split the elements. No selection, no sort.
//  - topk_wide_kernel (T <= kWideMaxT rows of more values): B blocks per row. Each histograms its
//    chunk on the keys' top 12 bits, writes its items grouped by bin (descending) and its bin
//    prefix counts to scratch, and adds its counts to the row's histogram (integer atomics). The
//    last block of the row to finish (atomic ticket; it resets the histogram and ticket) finds
//    the bin holding the k-th item, gathers every block's items at or above it (at most kWideCap
//    into shared memory, else read in place), refines by 10-bit radix passes over the remaining
//    item bits until the picks are exactly determined, and sorts them.
//  - topk_select_kernel (the rest, prefill): one block per row, the row's 32-bit order keys (-0
//    folded onto +0, so they tie as the CPU's == says) held in registers (N <= kSelMaxN; larger
//    rows are streamed again for each step). A row with at most k pickable values takes all of
//    them; otherwise a radix select (11/11/10-bit MSB-first shared-memory histograms, the
//    threshold bin found by a block scan) stops as soon as the keys above its prefix are exactly
//    the picks, or after 32 bits takes the lowest-index keys equal to the k-th largest (ranked by
//    warp ballots in index order). The picks (at most k) go into shared memory as 64-bit items in
//    any order and a bitonic sort, whose stages of stride <= 32 run in registers and shuffles,
//    puts them in item order. No global atomics, no scratch.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/backend_impl.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int64_t kTopkMaxK = 4096;  // sort buffer: next_pow2(k) * 8 bytes <= 32 KiB

__device__ __forceinline__ bool pickable(float v) { return !isnan(v) && v != -INFINITY; }

// Monotone map float -> uint32 (a < b  <=>  key(a) < key(b)), with -0 mapped like +0. Every
// pickable value (>= -FLT_MAX) has a key >= 0x00800000, so 0 is below all of them.
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The item that orders a pickable value at index i: larger value first, then lower index. 0 (no
// pickable item) marks an empty slot.
__device__ __forceinline__ unsigned long long make_item(uint32_t key, int64_t i) {
  return (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}
__device__ __forceinline__ int32_t item_index(unsigned long long item) {
  return item == 0ull ? -1 : static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(item & 0xffffffffull));
}

// Sorts s[0, P) descending (P a power of two; every thread of the block calls it). A stage whose
// pairs lie within aligned groups of 64 items (stride <= 32) is done by one warp per group: the
// thread handling pair i (lanes of a warp hold 32 consecutive i) touches items of group i / 32
// only, so two such stages in a row need only __syncwarp; other stages sync the block.
template <int kThreads>
__device__ void bitonic_sort_desc(unsigned long long* s, int P) {
  static_assert(kThreads % 32 == 0, "bitonic_sort_desc: whole warps");
  const int tid = threadIdx.x;
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < P / 2; i += kThreads) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool descending = (lo & size) == 0;
        const unsigned long long a = s[lo], b = s[hi];
        if (descending ? a < b : a > b) {
          s[lo] = b;
          s[hi] = a;
        }
      }
      const int next = stride > 1 ? stride >> 1 : size;  // the next stage's stride
      if (stride <= 32 && next <= 32)
        __syncwarp();
      else
        __syncthreads();
    }
  }
  __syncthreads();
}

// The bin holding the remaining-th largest of the items counted in h[0, nbins): scanning from the
// top bin down, the b with above(b) < remaining <= above(b) + h[b], above(b) = the count in bins
// above b. Every thread of the block calls it (nbins <= 8 * kThreads); the one thread that finds b
// writes *bin, *above and (if given) *in_bin = h[b] (none does when the bins hold fewer than
// `remaining`). Returns the total. The caller syncs before reading *bin or reusing tmp.
// kReread: each thread keeps only the sum of its bins and the one thread whose bins hold b reads
// them again (fewer registers; the select kernel), else the counts stay in registers.
template <int kThreads, bool kReread = false>
__device__ uint32_t find_bin(const uint32_t* h, int nbins, uint32_t remaining,
                             typename cub::BlockScan<uint32_t, kThreads>::TempStorage& tmp, int* bin,
                             uint32_t* above, uint32_t* in_bin = nullptr) {
  const int per = (nbins + kThreads - 1) / kThreads, first = static_cast<int>(threadIdx.x) * per;
  uint32_t c[kReread ? 1 : 8], sum = 0;
#pragma unroll
  for (int u = 0; u < 8; ++u) {
    const int r = first + u;  // r-th bin from the top
    const uint32_t x = u < per && r < nbins ? h[nbins - 1 - r] : 0u;
    if constexpr (!kReread) c[u] = x;
    sum += x;
  }
  uint32_t base = 0, total = 0;
  cub::BlockScan<uint32_t, kThreads>(tmp).ExclusiveSum(sum, base, total);
  if constexpr (kReread) {
    if (base < remaining && base + sum >= remaining) {  // b is one of this thread's bins
      for (int u = 0; u < per; ++u) {
        const int r = first + u;
        const uint32_t x = r < nbins ? h[nbins - 1 - r] : 0u;
        if (base + x >= remaining) {  // base < remaining on entry to every step
          *bin = nbins - 1 - r;
          *above = base;
          if (in_bin != nullptr) *in_bin = x;
          break;
        }
        base += x;
      }
    }
  } else {
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      if (base < remaining && base + c[u] >= remaining) {
        *bin = nbins - 1 - (first + u);
        *above = base;
        if (in_bin != nullptr) *in_bin = c[u];
      }
      base += c[u];
    }
  }
  return total;
}

// ---- small rows: topk_rank_kernel --------------------------------------------------------------

constexpr int kRankThreads = 256;
constexpr int64_t kRankBudget = int64_t{1} << 22;  // T * N^2 comparisons; N <= 2048 at T = 1

// grid (ceil(N / (kRankThreads / G)), T); G threads (a power of two <= 32, lanes of one warp) per
// element; dynamic shared memory: the row's keys [N] (0 = not pickable). Element i's slot is
//   rank(i) = #{j : key_j > key_i} + #{j < i : key_j == key_i}
// (the items above it); it is written when pickable and rank < k. Slots from the row's pickable
// count on get -1, spread over the row's blocks.
__global__ void __launch_bounds__(kRankThreads)
    topk_rank_kernel(const float* __restrict__ values, int N, int k, int G, int32_t* __restrict__ out) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ uint32_t skey[];
  __shared__ int s_pick;
  const int tid = threadIdx.x;
  const int64_t t = blockIdx.y;
  const float* row = values + t * N;
  if (tid == 0) s_pick = 0;
  __syncthreads();
  int pick = 0;
  for (int i = tid; i < N; i += kRankThreads) {
    const float v = row[i];
    const bool ok = pickable(v);
    skey[i] = ok ? order_key(v) : 0u;
    pick += ok;
  }
  for (int o = 16; o > 0; o >>= 1) pick += __shfl_down_sync(0xffffffffu, pick, o);
  if (tid % 32 == 0) atomicAdd(&s_pick, pick);  // an integer count: order does not matter
  __syncthreads();
  const int npick = s_pick;

  const int g = tid % G, i = blockIdx.x * (kRankThreads / G) + tid / G;
  const uint32_t ki = i < N ? skey[i] : 0u;
  int rank = 0;
  if (ki != 0u)
    for (int j = g; j < N; j += G) {
      const uint32_t kj = skey[j];
      rank += (kj > ki) | ((kj == ki) & (j < i));
    }
  for (int o = G / 2; o > 0; o >>= 1) rank += __shfl_down_sync(0xffffffffu, rank, o, G);
  int32_t* dst = out + t * k;
  if (g == 0 && ki != 0u && rank < k) dst[rank] = i;
  for (int s = blockIdx.x * kRankThreads + tid; s < k; s += gridDim.x * kRankThreads)
    if (s >= npick) dst[s] = -1;
}

// ---- few rows of many values: topk_wide_kernel -------------------------------------------------

constexpr int kWideThreads = 512;
constexpr int kWideBins = 4096;  // first level: the keys' top 12 bits (item bits 63..52)
constexpr int kWideBinShift = 20;
constexpr int kWideBinsPerThread = kWideBins / kWideThreads;
constexpr int kWideCap = 4096;  // candidates the last block gathers into shared memory
constexpr int64_t kWideMaxT = 16;
constexpr int64_t kWideMaxItems = int64_t{1} << 22;  // T * N: the items scratch (8 bytes each)
constexpr int64_t kWideChunk = 1024;                 // values per block, when the grid allows

// Dynamic shared memory: hist [kWideBins] u32 | cand [kWideCap] u64 | sorted [P] u64.
int64_t wide_smem_bytes(int64_t P) { return int64_t{kWideBins} * 4 + (kWideCap + P) * 8; }

// grid (B, T), kWideThreads threads. Block b of row t takes values [b*C, min(N, (b+1)*C)).
// Scratch: items [T][B][C] (each block's items by bin, descending), prefix [T][B][kWideBins]
// (items of the block in bins >= bin); zero between calls: row_hist [kWideMaxT][kWideBins],
// tickets [kWideMaxT] (the last block resets both).
__global__ void __launch_bounds__(kWideThreads)
    topk_wide_kernel(const float* __restrict__ values, int64_t N, int64_t C, int k, int P,
                     unsigned long long* __restrict__ items, uint32_t* __restrict__ prefix, uint32_t* ghist,
                     uint32_t* tickets, int32_t* __restrict__ out) {
  pdl_wait();
  pdl_trigger();
  using Scan = cub::BlockScan<uint32_t, kWideThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ uint32_t s_off[kWideThreads], s_n[kWideThreads];
  __shared__ int s_last, s_bin;
  __shared__ uint32_t s_above, s_cursor;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem_raw);
  unsigned long long* cand = reinterpret_cast<unsigned long long*>(smem_raw + kWideBins * sizeof(uint32_t));
  unsigned long long* sorted = cand + kWideCap;
  const int tid = threadIdx.x, b = blockIdx.x, B = gridDim.x;
  const int64_t t = blockIdx.y;
  const float* row = values + t * N;
  const int64_t c0 = b * C, c1 = c0 + C < N ? c0 + C : N;
  uint32_t* row_hist = ghist + t * kWideBins;

  // 1. The chunk's histogram on the top 12 key bits.
  for (int i = tid; i < kWideBins; i += kWideThreads) hist[i] = 0u;
  __syncthreads();
  for (int64_t i = c0 + tid; i < c1; i += kWideThreads) {
    const float v = row[i];
    if (pickable(v)) atomicAdd(&hist[order_key(v) >> kWideBinShift], 1u);
  }
  __syncthreads();
  // 2. Thread tid owns the bins kWideBins-1 - (8 tid + u) (from the top): the segment's prefix
  //    counts, the row histogram, and hist[bin] turned into the bin's next free slot.
  {
    uint32_t c[kWideBinsPerThread], sum = 0;
#pragma unroll
    for (int u = 0; u < kWideBinsPerThread; ++u) {
      c[u] = hist[kWideBins - 1 - (kWideBinsPerThread * tid + u)];
      sum += c[u];
    }
    uint32_t run = 0;
    Scan(scan_tmp).ExclusiveSum(sum, run);
    uint32_t* seg_prefix = prefix + (t * B + b) * kWideBins;
#pragma unroll
    for (int u = 0; u < kWideBinsPerThread; ++u) {
      const int bin = kWideBins - 1 - (kWideBinsPerThread * tid + u);
      hist[bin] = run;
      run += c[u];
      seg_prefix[bin] = run;
      if (c[u] != 0u) atomicAdd(&row_hist[bin], c[u]);
    }
  }
  __syncthreads();
  unsigned long long* seg = items + (t * B + b) * C;
  for (int64_t i = c0 + tid; i < c1; i += kWideThreads) {
    const float v = row[i];
    if (!pickable(v)) continue;
    const uint32_t key = order_key(v);
    seg[atomicAdd(&hist[key >> kWideBinShift], 1u)] = make_item(key, i);  // order within a bin: any
  }
  // 3. The last block of the row to finish goes on (its writes and the others' are visible).
  __threadfence();
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(&tickets[t], 1u) == static_cast<uint32_t>(B - 1);
  __syncthreads();
  if (!s_last) return;
  __threadfence();

  // 4. The row's histogram (zeroed again for the next call) and the bin of the k-th item.
  for (int i = tid; i < kWideBins; i += kWideThreads) {
    hist[i] = __ldcg(&row_hist[i]);
    row_hist[i] = 0u;
  }
  if (tid == 0) {
    tickets[t] = 0u;
    s_bin = 0;
    s_above = 0u;
  }
  __syncthreads();
  const uint32_t total = find_bin<kWideThreads>(hist, kWideBins, static_cast<uint32_t>(k), scan_tmp, &s_bin, &s_above);
  __syncthreads();
  const bool take_all = total <= static_cast<uint32_t>(k);
  const int bstar = take_all ? 0 : s_bin;
  const uint32_t above = take_all ? 0u : s_above;

  // 5. The candidates: each block's items in bins >= bstar (the head of its segment).
  const uint32_t n = tid < B ? __ldcg(&prefix[(t * B + tid) * kWideBins + bstar]) : 0u;
  uint32_t off = 0, S = 0;
  Scan(scan_tmp).ExclusiveSum(n, off, S);
  if (tid < B) {
    s_off[tid] = off;
    s_n[tid] = n;
  }
  __syncthreads();
  const unsigned long long* row_items = items + t * B * C;
  const bool in_smem = S <= static_cast<uint32_t>(kWideCap);
  const int warp = tid / 32, lane = tid % 32;
  constexpr int kWarps = kWideThreads / 32;
  if (in_smem) {
    for (int sg = warp; sg < B; sg += kWarps)
      for (uint32_t x = lane; x < s_n[sg]; x += 32) cand[s_off[sg] + x] = __ldcg(&row_items[sg * C + x]);
    __syncthreads();
  }
  auto for_each_candidate = [&](auto&& f) {
    if (in_smem) {
      for (uint32_t i = tid; i < S; i += kWideThreads) f(cand[i]);
    } else {  // more than kWideCap (heavy ties): read in place
      for (int sg = warp; sg < B; sg += kWarps)
        for (uint32_t x = lane; x < s_n[sg]; x += 32) f(__ldcg(&row_items[sg * C + x]));
    }
  };

  // 6. The picks are the items whose bits under `mask` exceed `pfx`, and `remaining` of those
  //    equal to it: 10-bit passes narrow the bits until all items equal to pfx are picks.
  unsigned long long pfx = static_cast<unsigned long long>(bstar) << 52, mask = 0xfffull << 52;
  uint32_t remaining = static_cast<uint32_t>(k) - above;
  bool done = take_all || S == static_cast<uint32_t>(k);
  int shift = 52;
  while (!done) {
    const int width = shift >= 10 ? 10 : shift;
    shift -= width;
    const uint32_t nb = 1u << width;
    for (uint32_t i = tid; i < nb; i += kWideThreads) hist[i] = 0u;
    __syncthreads();
    for_each_candidate([&](unsigned long long item) {
      if ((item & mask) == pfx) atomicAdd(&hist[(item >> shift) & (nb - 1)], 1u);
    });
    __syncthreads();
    find_bin<kWideThreads>(hist, static_cast<int>(nb), remaining, scan_tmp, &s_bin, &s_above);
    __syncthreads();
    const int bin = s_bin;
    remaining -= s_above;
    pfx |= static_cast<unsigned long long>(bin) << shift;
    mask |= static_cast<unsigned long long>(nb - 1) << shift;
    done = hist[bin] == remaining || shift == 0;
    __syncthreads();  // hist, s_bin and scan_tmp are rewritten by the next pass
  }

  // 7. The picks (min(k, total) items) in any order, then sorted.
  for (int i = tid; i < P; i += kWideThreads) sorted[i] = 0ull;
  if (tid == 0) s_cursor = 0u;
  __syncthreads();
  for_each_candidate([&](unsigned long long item) {
    if ((item & mask) >= pfx) {
      const uint32_t pos = atomicAdd(&s_cursor, 1u);
      if (pos < static_cast<uint32_t>(P)) sorted[pos] = item;
    }
  });
  __syncthreads();
  bitonic_sort_desc<kWideThreads>(sorted, P);
  int32_t* dst = out + t * k;
  for (int s = tid; s < k; s += kWideThreads) dst[s] = item_index(sorted[s]);
}

// ---- prefill rows: topk_select_kernel ----------------------------------------------------------

constexpr int kSelBins = 2048;          // digits of the radix select: key bits 31..21, 20..10 (11 bits), 9..0
constexpr int64_t kSelMaxN = 8 * 1024;  // rows up to this many values keep their keys in registers

// One bitonic stage of sort_desc_regs: a warp's aligned group of 64 items, two consecutive per
// lane (v.x at position p0 = 64 g + 2 lane, v.y at p0 + 1), stride < 64. Pair (p, p + stride)
// puts the larger first where p & size == 0 (descending runs), else the smaller.
__device__ __forceinline__ void bitonic_stage_regs(ulonglong2& v, int p0, int lane, int size, int stride) {
  const bool desc = (p0 & size) == 0;
  if (stride == 1) {  // both items in this lane
    if (desc ? v.x < v.y : v.x > v.y) {
      const unsigned long long x = v.x;
      v.x = v.y;
      v.y = x;
    }
    return;
  }
  const int m = stride >> 1;  // position bit `stride` is lane bit m
  const unsigned long long ox = __shfl_xor_sync(0xffffffffu, v.x, m);
  const unsigned long long oy = __shfl_xor_sync(0xffffffffu, v.y, m);
  const bool keep_max = ((lane & m) == 0) == desc;  // lower position of a descending pair, or upper of an ascending one
  v.x = keep_max ? (ox > v.x ? ox : v.x) : (ox < v.x ? ox : v.x);
  v.y = keep_max ? (oy > v.y ? oy : v.y) : (oy < v.y ? oy : v.y);
}

// Sorts s[0, P) descending; P a power of two >= 64, s 16-byte aligned. Every thread of the block
// calls it after a barrier; it ends with one. The bitonic network of bitonic_sort_desc, but the
// stages of stride <= 32 run in registers (one warp per aligned group of 64 items, see
// bitonic_stage_regs: stride 1 inside a lane, 2..32 by shuffles), so shared memory carries only
// the stages of stride >= 64 (6 of the 45 stages at P = 512) and one load/store per group between.
template <int kThreads>
__device__ void sort_desc_regs(unsigned long long* s, int P) {
  constexpr int kWarps = kThreads / 32;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  ulonglong2* s2 = reinterpret_cast<ulonglong2*>(s);
  const int groups = P / 64;
  for (int g = warp; g < groups; g += kWarps) {  // sizes 2..64: every stage inside the group
    ulonglong2 v = s2[g * 32 + lane];
    const int p0 = g * 64 + 2 * lane;
#pragma unroll
    for (int size = 2; size <= 64; size <<= 1)
#pragma unroll
      for (int stride = size / 2; stride > 0; stride >>= 1) bitonic_stage_regs(v, p0, lane, size, stride);
    s2[g * 32 + lane] = v;
  }
  __syncthreads();
  for (int size = 128; size <= P; size <<= 1) {
    for (int stride = size / 2; stride >= 64; stride >>= 1) {
      for (int i = tid; i < P / 2; i += kThreads) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool descending = (lo & size) == 0;
        const unsigned long long a = s[lo], b = s[hi];
        if (descending ? a < b : a > b) {
          s[lo] = b;
          s[hi] = a;
        }
      }
      __syncthreads();
    }
    for (int g = warp; g < groups; g += kWarps) {
      ulonglong2 v = s2[g * 32 + lane];
      const int p0 = g * 64 + 2 * lane;
#pragma unroll
      for (int stride = 32; stride > 0; stride >>= 1) bitonic_stage_regs(v, p0, lane, size, stride);
      s2[g * 32 + lane] = v;
    }
    __syncthreads();
  }
}

// In-place exclusive prefix sum of a[0, n) by one whole warp, starting at *carry; *carry becomes
// the running total (written by lane 31; the caller syncs before reading it).
__device__ void warp_exclusive_scan(uint32_t* a, int n, uint32_t& carry) {
  const int lane = threadIdx.x % 32, per = (n + 31) / 32, first = lane * per;
  uint32_t sum = 0;
  for (int u = 0; u < per && first + u < n; ++u) sum += a[first + u];
  uint32_t incl = sum;
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  const uint32_t c0 = carry;
  __syncwarp();
  uint32_t run = c0 + incl - sum;
  for (int u = 0; u < per && first + u < n; ++u) {
    const uint32_t x = a[first + u];
    a[first + u] = run;
    run += x;
  }
  if (lane == 31) carry = c0 + incl;
}

// Bytes of dynamic shared memory: two histograms, later reused as the sort buffer of P items
// (P = max(64, next power of two >= min(k, N))).
int64_t select_smem_bytes(int64_t k, int64_t N) {
  int64_t P = 64;
  while (P < std::min(k, N)) P <<= 1;
  return std::max<int64_t>(2 * kSelBins * sizeof(uint32_t), P * 8);
}

// Resident blocks per SM the register budget allows: 1536 threads (40 registers) where the keys
// take <= 8 registers, else 1024 (64 registers); no spills either way (ptxas -v).
constexpr int select_min_blocks(int threads, int e, bool resident) {
  return (resident && e > 8 ? 1024 : 1536) / threads;
}

// grid T, kThreads threads; one block per row. kResident (N <= kThreads * kE): thread tid holds
// the keys of elements j * kThreads + tid (j < kE) in registers for the whole kernel, so the row
// is read once; else (any N) every step streams the row again in chunks of kThreads * kE values
// (the same layout per chunk; repeated reads mostly hit L2).
//   - n = the row's pickable count (resident: counted first; streaming: pass 0's total). n <= k:
//     the picks are all of them.
//   - else a radix select over the keys (11, 11, 10 bits, MSB first; shared-memory histograms, the
//     bin of the remaining-th largest found by a block scan) narrows a prefix until the keys in
//     its bin are exactly the remaining picks (usually after two passes), or, after all 32 bits,
//     `remaining` of the keys equal to the k-th largest K are to be taken: the lowest indices,
//     ranked in index order by warp ballots and a scan over the (chunk, j, warp) counts.
//   The picks go into shared memory in any order (warp-aggregated cursor) as 64-bit items, padded
//   with 0 to P = max(64, next power of two), and sort_desc_regs orders them.
template <int kThreads, int kE, bool kResident>
__global__ void __launch_bounds__(kThreads, select_min_blocks(kThreads, kE, kResident))
    topk_select_kernel(const float* __restrict__ values, int N, int k, int32_t* __restrict__ out) {
  pdl_wait();
  pdl_trigger();
  constexpr int kWarps = kThreads / 32, kChunk = kThreads * kE;
  static_assert(kSelBins <= 8 * kThreads, "find_bin: at most 8 bins per thread");
  using Scan = cub::BlockScan<uint32_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ uint32_t s_wcount[kWarps], s_tie[kE * kWarps];
  __shared__ uint32_t s_cursor, s_above, s_in_bin, s_total, s_carry;
  __shared__ int s_bin;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem_raw);                        // [2][kSelBins]: pass p uses p & 1
  unsigned long long* sorted = reinterpret_cast<unsigned long long*>(smem_raw);  // after the last histogram read
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t t = blockIdx.x;
  const float* row = values + t * N;
  const uint32_t uk = static_cast<uint32_t>(k);
  int32_t* dst = out + t * k;

  // The keys of chunk c (elements c * kChunk + j * kThreads + tid); 0: not pickable (every
  // pickable key is >= 0x00800000).
  auto load_chunk = [&](int c, uint32_t (&key)[kE]) {
#pragma unroll
    for (int j = 0; j < kE; ++j) {
      const int i = c * kChunk + j * kThreads + tid;
      const float v = i < N ? row[i] : NAN;
      key[j] = pickable(v) ? order_key(v) : 0u;
    }
  };
  const int chunks = kResident ? 1 : (N + kChunk - 1) / kChunk;
  uint32_t key[kE];
  if constexpr (kResident) load_chunk(0, key);
  // f(key, j, c) for every element (j, tid) of every chunk c.
  auto for_each = [&](auto&& f) {
    for (int c = 0; c < chunks; ++c) {
      if constexpr (!kResident) load_chunk(c, key);
#pragma unroll
      for (int j = 0; j < kE; ++j) f(key[j], j, c);
    }
  };

  if (tid == 0) s_cursor = 0u;
  for (int i = tid; i < 2 * kSelBins / 4; i += kThreads) reinterpret_cast<uint4*>(hist)[i] = make_uint4(0u, 0u, 0u, 0u);
  uint32_t count = 0;
  if constexpr (kResident) {
    uint32_t mine = 0;
#pragma unroll
    for (int j = 0; j < kE; ++j) mine += key[j] != 0u;
    mine = __reduce_add_sync(0xffffffffu, mine);
    if (lane == 0) s_wcount[warp] = mine;
    __syncthreads();
#pragma unroll
    for (int w = 0; w < kWarps; ++w) count += s_wcount[w];
  } else {
    __syncthreads();
  }

  // Pass 0 of the radix select (streaming: also the count).
  uint32_t pfx = 0, mask = 0, remaining = uk, in_bin = 0;
  auto radix_pass = [&](int pass) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
    const int nb = pass == 2 ? 1024 : kSelBins;
    uint32_t* h = hist + (pass & 1) * kSelBins;
    if (pass == 2) {  // hist[0] was last read by pass 0's find_bin, before two barriers
      for (int i = tid; i < nb; i += kThreads) h[i] = 0u;
      __syncthreads();
    }
    for_each([&](uint32_t x, int, int) {
      if (x != 0u && (x & mask) == pfx) atomicAdd(&h[(x >> shift) & (nb - 1)], 1u);
    });
    __syncthreads();
    const uint32_t total = find_bin<kThreads, true>(h, nb, remaining, scan_tmp, &s_bin, &s_above, &s_in_bin);
    if (tid == 0) s_total = total;
    __syncthreads();
    pfx |= static_cast<uint32_t>(s_bin) << shift;
    mask |= static_cast<uint32_t>(nb - 1) << shift;
    remaining -= s_above;
    in_bin = s_in_bin;
  };
  if (kResident ? count > uk : true) {
    radix_pass(0);  // finds no bin when the total is below k (then unused)
    if constexpr (!kResident) count = s_total;
  }
  if (count == 0u) {
    for (int s = tid; s < k; s += kThreads) dst[s] = -1;
    return;
  }

  // Every key x with pick(x) into sorted[] at a slot from the block's cursor (order: any).
  auto place = [&](auto&& pick) {
    for (int c = 0; c < chunks; ++c) {
      if constexpr (!kResident) load_chunk(c, key);
      uint32_t n = 0;
#pragma unroll
      for (int j = 0; j < kE; ++j) n += pick(key[j]) ? 1u : 0u;
      uint32_t incl = n;
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      uint32_t base = 0;
      if (lane == 31 && incl != 0u) base = atomicAdd(&s_cursor, incl);
      uint32_t pos = __shfl_sync(0xffffffffu, base, 31) + incl - n;
#pragma unroll
      for (int j = 0; j < kE; ++j)
        if (pick(key[j])) sorted[pos++] = make_item(key[j], c * kChunk + j * kThreads + tid);
    }
  };

  if (count <= uk) {
    place([](uint32_t x) { return x != 0u; });
  } else {
    // The picks: the keys whose bits under `mask` exceed pfx, and `remaining` of the in_bin keys
    // equal to it.
    for (int pass = 1; pass < 3 && in_bin != remaining; ++pass) radix_pass(pass);  // block-uniform
    // No thread reads the histograms any more: sorted[] may overwrite them.
    const bool ties = in_bin != remaining;      // then mask covers all 32 bits and pfx = K
    const uint32_t lo = ties ? pfx + 1u : pfx;  // pfx <= 0xff800000 (+inf's key): no overflow
    place([&](uint32_t x) { return (x & mask) >= lo; });  // k - remaining keys (k when !ties)
    if (ties) {
      // Element (c, j, warp, lane) has index c * kChunk + j * kThreads + 32 warp + lane: in index
      // order by (c, j, warp), then lane. s_carry: the keys equal to K in the chunks before.
      const uint32_t below = (1u << lane) - 1u;
      if (tid == 0) s_carry = 0u;
      for (int c = 0; c < chunks; ++c) {
        if constexpr (!kResident) load_chunk(c, key);
#pragma unroll
        for (int j = 0; j < kE; ++j) {
          const uint32_t bal = __ballot_sync(0xffffffffu, key[j] == pfx);
          if (lane == 0) s_tie[j * kWarps + warp] = __popc(bal);
        }
        __syncthreads();
        if (warp == 0) warp_exclusive_scan(s_tie, kE * kWarps, s_carry);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < kE; ++j) {
          const uint32_t bal = __ballot_sync(0xffffffffu, key[j] == pfx);  // again: fewer live registers
          const uint32_t r = s_tie[j * kWarps + warp] + __popc(bal & below);
          if (key[j] == pfx && r < remaining)
            sorted[uk - remaining + r] = make_item(pfx, c * kChunk + j * kThreads + tid);
        }
        __syncthreads();  // s_tie is rewritten by the next chunk
      }
    }
  }

  const int n = static_cast<int>(count < uk ? count : uk);
  int P = 64;
  while (P < n) P <<= 1;
  for (int i = n + tid; i < P; i += kThreads) sorted[i] = 0ull;
  __syncthreads();
  sort_desc_regs<kThreads>(sorted, P);
  for (int s = tid; s < k; s += kThreads) dst[s] = s < P ? item_index(sorted[s]) : -1;
}

template <int kThreads, int kE, bool kResident>
void launch_select(const float* v, int64_t T, int64_t N, int64_t k, int32_t* o, cudaStream_t stream) {
  static_assert(kE * (kThreads / 32) <= 1024, "s_tie");
  const int64_t smem = select_smem_bytes(k, N);
  CLAWMINE_CHECK(smem <= 40 * 1024, "cuda topk: select kernel needs ", smem, " bytes of shared memory");
  launch_kernel(topk_select_kernel<kThreads, kE, kResident>, static_cast<unsigned>(T), kThreads,
                static_cast<size_t>(smem), stream, v, static_cast<int>(N), static_cast<int>(k), o);
}

// Zeroed once per backend: the wide kernel's row histograms and tickets (each call leaves them 0).
struct WideTopkState {
  TensorView hist, tickets;
};

}  // namespace

void CudaBackend::topk(const TensorView& values, int64_t k, const TensorView& out) {
  expect_device(values, "topk", "values");
  CLAWMINE_CHECK(values.dtype == DType::kF32 && values.rank() == 2, "cuda topk: values must be F32 [T, N], got ",
                 dtype_name(values.dtype), " ", shape_str(values.shape));
  const int64_t T = values.dim(0), N = values.dim(1);
  CLAWMINE_CHECK(k >= 0 && k <= kTopkMaxK, "cuda topk: k = ", k, " outside [0, ", kTopkMaxK, "]");
  CLAWMINE_CHECK(N < (int64_t{1} << 31), "cuda topk: rows of ", N, " values exceed int32 indices");
  CLAWMINE_CHECK(out.dtype == DType::kI32 && out.numel() == T * k, "cuda topk: out must be I32 [", T, ", ", k,
                 "], got ", dtype_name(out.dtype), " ", shape_str(out.shape));
  if (T == 0 || k == 0) return;
  expect_device(out, "topk", "out");
  int64_t P = 1;
  while (P < k) P <<= 1;
  const float* v = values.as<float>();
  int32_t* o = out.as<int32_t>();

  if (N >= 1 && N <= 2048 && T * N * N <= kRankBudget) {
    // G threads per element: the fewest that still give two blocks per SM.
    int G = 1;
    while (G < 32 && static_cast<int64_t>(blocks_for(N, kRankThreads / G)) * T < 2 * sm_count_) G <<= 1;
    const dim3 grid(blocks_for(N, kRankThreads / G), static_cast<unsigned>(T));
    launch_kernel(topk_rank_kernel, grid, kRankThreads, static_cast<size_t>(N) * sizeof(uint32_t), stream_, v,
                  static_cast<int>(N), static_cast<int>(k), G, o);
    CLAWMINE_CUDA_LAUNCHED("topk (rank)");
    return;
  }

  if (N >= 1 && T <= kWideMaxT && T * N <= kWideMaxItems) {
    // Chunks of kWideChunk values, at most two blocks per SM over all rows.
    const int64_t max_blocks = std::max<int64_t>(1, std::min<int64_t>(kWideThreads, 2 * sm_count_ / T));
    int64_t B = std::min<int64_t>((N + kWideChunk - 1) / kWideChunk, max_blocks);
    const int64_t C = (N + B - 1) / B;
    B = (N + C - 1) / C;
    auto* st = branch_op_state<WideTopkState>(reinterpret_cast<const void*>(&topk_wide_kernel));
    if (st->hist.empty()) {  // once per backend (the first, eager steps)
      st->hist = allocate(DType::kI32, {kWideMaxT, kWideBins});
      st->tickets = allocate(DType::kI32, {kWideMaxT});
      CLAWMINE_CUDA_CHECK(cudaMemsetAsync(st->hist.data, 0, st->hist.nbytes(), stream_));
      CLAWMINE_CUDA_CHECK(cudaMemsetAsync(st->tickets.data, 0, st->tickets.nbytes(), stream_));
    }
    const int64_t smem = wide_smem_bytes(P);
    auto* opt_in = op_state<int64_t>(reinterpret_cast<const void*>(&wide_smem_bytes));
    if (*opt_in < smem) {
      int max_smem = 0;
      CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, options_.device));
      CLAWMINE_CHECK(smem + 8 * 1024 <= max_smem, "cuda topk: k = ", k, " needs ", smem,
                     " bytes of shared memory, the device allows ", max_smem);
      CLAWMINE_CUDA_CHECK(
          cudaFuncSetAttribute(topk_wide_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      *opt_in = smem;
    }
    ops::ScratchFrame frame(*this);  // the scratch is free again once this op's kernel has run (stream order)
    const TensorView items = scratch(DType::kI64, {T, B, C});
    const TensorView prefix = scratch(DType::kI32, {T, B, kWideBins});
    launch_kernel(topk_wide_kernel, dim3(static_cast<unsigned>(B), static_cast<unsigned>(T)), kWideThreads,
                  static_cast<size_t>(smem), stream_, v, N, C, static_cast<int>(k), static_cast<int>(P),
                  static_cast<unsigned long long*>(items.data), static_cast<uint32_t*>(prefix.data),
                  static_cast<uint32_t*>(st->hist.data), static_cast<uint32_t*>(st->tickets.data), o);
    CLAWMINE_CUDA_LAUNCHED("topk (wide)");
    return;
  }

  // Every other shape (prefill): one block per row, keys in registers up to kSelMaxN values.
  if (N <= 512)
    launch_select<256, 2, true>(v, T, N, k, o, stream_);
  else if (N <= 1024)
    launch_select<256, 4, true>(v, T, N, k, o, stream_);
  else if (N <= 2048)
    launch_select<256, 8, true>(v, T, N, k, o, stream_);
  else if (N <= 4096)
    launch_select<256, 16, true>(v, T, N, k, o, stream_);
  else if (N <= kSelMaxN)
    launch_select<512, 16, true>(v, T, N, k, o, stream_);
  else
    launch_select<512, 8, false>(v, T, N, k, o, stream_);
  CLAWMINE_CUDA_LAUNCHED("topk (select)");
}

}  // namespace clawmine::backend::cuda
