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
//  - topk_kernel (the rest, prefill): one block per row:
//   1. radix select on order-preserving 32-bit keys (-0 folded onto +0, so they tie as the CPU's
//      == says): four 8-bit MSB-first histogram passes over the pickable values find the k-th
//      largest key K and how many of the picks equal it (`need`);
//   2. one pass in index order with block-wide prefix sums places every key > K and the first
//      `need` keys == K (the lowest indices) into shared memory as (key << 32 | ~index);
//   3. a bitonic sort of those (at most k, padded to a power of two with 0) puts them in
//      descending order, which is key descending, then index ascending.
//   If the row has at most k pickable values, all of them are taken and the rest is -1.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/backend_impl.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kTopkThreads = 1024;
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

// Dynamic shared memory: sorted[P] (P = next power of two >= k).
__global__ void __launch_bounds__(kTopkThreads)
    topk_kernel(const float* __restrict__ values, int64_t N, int64_t k, int64_t P, int32_t* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  using Scan = cub::BlockScan<int, kTopkThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining, s_take_all;
  extern __shared__ unsigned long long sorted[];
  const int tid = threadIdx.x;
  const float* row = values + static_cast<int64_t>(blockIdx.x) * N;

  // 1. Radix select: after the passes, K = prefix and `remaining` picks equal K.
  uint32_t prefix = 0, mask = 0;
  int remaining = static_cast<int>(k);
  bool take_all = false;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kTopkThreads) hist[i] = 0;
    __syncthreads();
    for (int64_t i = tid; i < N; i += kTopkThreads) {
      const float v = row[i];
      if (!pickable(v)) continue;
      const uint32_t key = order_key(v);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1);
    }
    __syncthreads();
    if (tid == 0) {
      int total = 0;
      if (shift == 24)
        for (int b = 0; b < 256; ++b) total += hist[b];
      s_take_all = shift == 24 && total <= remaining;
      // The bin holding the remaining-th largest: counts above it stay below `remaining`.
      int above = 0, b = 255;
      for (; b > 0; --b) {
        if (above + hist[b] >= remaining) break;
        above += hist[b];
      }
      s_prefix = prefix | (static_cast<uint32_t>(b) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    if (s_take_all) {
      take_all = true;
      break;
    }
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 0xffu << shift;
    // The next pass rewrites hist only after its own barrier; s_* are rewritten after two more.
  }
  const uint32_t K = take_all ? 0u : prefix;  // every pickable key is > 0
  const int need = take_all ? 0 : remaining;  // picks equal to K, lowest indices first
  const int n_greater = take_all ? static_cast<int>(k) : static_cast<int>(k) - need;  // upper bound when take_all

  // 2. Place the picks in index order (deterministic): keys > K at [0, n_greater), the first
  //    `need` keys == K after them.
  for (int64_t i = tid; i < P; i += kTopkThreads) sorted[i] = 0ull;
  __syncthreads();
  int greater_base = 0, equal_base = 0;
  for (int64_t base = 0; base < N; base += kTopkThreads) {
    const int64_t i = base + tid;
    const float v = i < N ? row[i] : NAN;
    const bool ok = pickable(v);
    const uint32_t key = ok ? order_key(v) : 0u;
    const int gt = ok && key > K, eq = ok && !take_all && key == K;
    int rank = 0, total = 0;
    Scan(scan_tmp).ExclusiveSum(gt | (eq << 16), rank, total);  // <= 1024 per field per chunk
    const unsigned long long item =
        (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
    const int g_pos = greater_base + (rank & 0xffff);
    const int e_rank = equal_base + (rank >> 16);
    if (gt && g_pos < n_greater) sorted[g_pos] = item;
    if (eq && e_rank < need) sorted[n_greater + e_rank] = item;
    greater_base += total & 0xffff;
    equal_base += total >> 16;
    __syncthreads();  // scan_tmp is reused
  }

  // 3. Bitonic sort, descending, of P items (all distinct except the 0 padding).
  bitonic_sort_desc<kTopkThreads>(sorted, static_cast<int>(P));
  int32_t* dst = out + static_cast<int64_t>(blockIdx.x) * k;
  for (int64_t s = tid; s < k; s += kTopkThreads) {
    const unsigned long long item = sorted[s];
    dst[s] = item_index(item);
  }
}

// The bin holding the remaining-th largest of the items counted in h[0, nbins): scanning from the
// top bin down, the b with above(b) < remaining <= above(b) + h[b], above(b) = the count in bins
// above b. Every thread of the block calls it (nbins <= 8 * kThreads); the one thread that finds b
// writes *bin and *above (none does when the bins hold fewer than `remaining`). Returns the total.
// The caller syncs before reading *bin or reusing tmp.
template <int kThreads>
__device__ uint32_t find_bin(const uint32_t* h, int nbins, uint32_t remaining,
                             typename cub::BlockScan<uint32_t, kThreads>::TempStorage& tmp, int* bin,
                             uint32_t* above) {
  const int per = (nbins + kThreads - 1) / kThreads, first = static_cast<int>(threadIdx.x) * per;
  uint32_t c[8], sum = 0;
#pragma unroll
  for (int u = 0; u < 8; ++u) {
    const int r = first + u;  // r-th bin from the top
    c[u] = u < per && r < nbins ? h[nbins - 1 - r] : 0u;
    sum += c[u];
  }
  uint32_t base = 0, total = 0;
  cub::BlockScan<uint32_t, kThreads>(tmp).ExclusiveSum(sum, base, total);
#pragma unroll
  for (int u = 0; u < 8; ++u) {
    if (base < remaining && base + c[u] >= remaining) {
      *bin = nbins - 1 - (first + u);
      *above = base;
    }
    base += c[u];
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
  pdl_trigger();
  pdl_wait();
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
  pdl_trigger();
  pdl_wait();
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
    auto* st = op_state<WideTopkState>(reinterpret_cast<const void*>(&topk_wide_kernel));
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

  launch_kernel(topk_kernel, static_cast<unsigned>(T), kTopkThreads,
                static_cast<size_t>(P) * sizeof(unsigned long long), stream_, v, N, k, P, o);
  CLAWMINE_CUDA_LAUNCHED("topk");
}

}  // namespace clawmine::backend::cuda
