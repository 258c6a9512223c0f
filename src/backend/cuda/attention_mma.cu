// sparse_attention on tensor cores (BF16/F16 activations): mma.sync m16n8k16, F32 accumulators.
//
// A block takes one query t, a group of 64 heads (the M dimension of both products; rows past H
// are zero queries whose outputs are dropped) and a range of key slots (all of S, or one split),
// walked in tiles of 32 gathered key rows. Per tile, with K = V = the tile's rows:
//   1. scores  S[64 x 32] = Q[64 x Dh] . K^T: warp w = (m tile w % 4, quarter w / 4 of Dh); the
//      four quarter sums land in shared memory and are added in a fixed order (deterministic);
//   2. softmax: 8 threads per head row scale, mask (-1 / out of range -> -inf), and update the
//      row's running max m and sum l (F32, kept in those threads' registers); P = e^(s - m_new)
//      as BF16/F16 into shared memory, the rescale factor e^(m_old - m_new) beside it;
//   3. O[64 x Dh] = O * rescale + P . V: each warp owns a slab of O (its heads x its head dims)
//      in registers for the whole key range.
// Before the tiles, the block scans its slots once (one slot per lane, a ballot per tile): tiles
// with no valid slot (the model's -1 padding: window slots before the sequence start, compressed
// slots of entries not complete yet) go off the list and cost nothing; such a tile would add
// exactly nothing (p = 0, rescale 1), so results are bit-identical with or without the skip.
// The scan also finds indices outside [-1, rows) (NaN outputs). Ranges of more than kListTiles
// tiles walk every tile.
// The listed tiles are gathered with cp.async (16-byte chunks; invalid slots zero-filled, so V
// never holds garbage) into three buffers, their row indices read from global one tile earlier
// into registers. Step w of the loop: barrier (tile w ready), start tile w + 1, phase 1 of tile
// w then phase 3 of tile w - 1 (no barrier between: warps drift from one into the other),
// barrier, phase 2 of tile w; two barriers per tile, the per-tile arithmetic unchanged (same
// bits). Q is staged once. Shared rows are padded by 16 bytes, so every ldmatrix is
// conflict-free.
// The end: out = O * e^(m - M) / (l e^(m - M) + e^(sink - M)), M = max(m, sink); 0 with no
// valid key, NaN after a bad index; or, for a split, the partial (m, l, O) (attention_kernels.cuh).
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/attention_kernels.cuh"
#include "backend/cuda/mma_sync.cuh"
#include "backend/cuda/backend_impl.cuh"

namespace clawmine::backend::cuda::attn {
namespace {

constexpr int kHB = kMmaHeads;  // heads per block
constexpr int kNK = kMmaKeys;   // keys per tile
constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
constexpr int kSRow = kNK + 8;  // floats per row of a partial score tile (float2 stores conflict-free)
constexpr int kPRow = kNK + 8;  // elements per row of P (80-byte rows: ldmatrix conflict-free)
constexpr int kQuarters = 4;    // phase 1 splits Dh in 4 over the warps
// Tiles of one key range the block lists (those with a valid slot); a range of more tiles walks
// every tile (nothing skipped, same results). 2048 tiles = 65536 slots.
constexpr int kListTiles = 2048;
// Key tile buffers: tile w + 1 streams in while phase 1 reads tile w and phase 3 tile w - 1.
constexpr int kStages = 3;
static_assert(kNK == 32, "the tile scan takes one slot per lane");

// Shared memory of one block, in bytes from the start (every part 16-byte aligned).
template <int DH>
struct Smem {
  static constexpr int kRow = DH + 8;  // elements per Q / K row (16 bytes of padding)
  static constexpr size_t q = 0;                                              // [64][kRow]
  static constexpr size_t k = q + size_t{kHB} * kRow * 2;                     // [3][32][kRow]
  static constexpr size_t s = k + size_t{kStages} * kNK * kRow * 2;           // [4][64][kSRow] F32
  static constexpr size_t p = s + size_t{kQuarters} * kHB * kSRow * 4;        // [64][kPRow]
  static constexpr size_t corr = p + size_t{kHB} * kPRow * 2;                 // [64] F32
  static constexpr size_t fin = corr + size_t{kHB} * 4;                       // [64] F32
  static constexpr size_t valid = fin + size_t{kHB} * 4;                      // [3][32] int
  static constexpr size_t list = valid + size_t{kStages} * kNK * 4;           // [kListTiles] uint16
  static constexpr size_t flag = list + size_t{kListTiles} * 2;               // [kListTiles] uint8
  static constexpr size_t count = flag + size_t{kListTiles};                  // int
  static constexpr size_t bytes = count + 16;
  static_assert(kRow * 2 % 16 == 0 && k % 16 == 0 && s % 16 == 0 && p % 16 == 0, "16-byte alignment");
};

static_assert(Smem<512>::bytes <= 227 * 1024, "head dim 512 fits an H100's 227 KiB of shared memory");

// Warps of phase 3: kMG groups of m tiles (kMT tiles of 16 heads each) x kNG groups of head dims
// (kNT tiles of 8 each), kMG * kNG = 16.
template <int DH>
struct PvTiling {
  static constexpr int kNTiles = DH / 8;
  static constexpr int kMG = kNTiles >= kWarps ? 1 : kWarps / kNTiles;
  static constexpr int kMT = (kHB / 16) / kMG;
  static constexpr int kNG = kWarps / kMG;
  static constexpr int kNT = kNTiles / kNG;
  static_assert(kMT >= 1 && kNT >= 1 && kMG * kNG == kWarps && kMT * kMG * 16 == kHB && kNT * kNG * 8 == DH,
                "phase 3 tiling");
};

template <typename T, int DH>
__global__ void __launch_bounds__(kThreads, 1)
    attention_mma_kernel(const AttnArgs<T> a, float* __restrict__ part_acc, float2* __restrict__ part_ml,
                         int64_t split_len) {
  pdl_wait();
  pdl_trigger();
  using L = Smem<DH>;
  using PV = PvTiling<DH>;
  constexpr int kRow = L::kRow;
  constexpr int kChunks = DH / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + L::q);
  T* sK = reinterpret_cast<T*>(smem + L::k);
  float* sS = reinterpret_cast<float*>(smem + L::s);
  T* sP = reinterpret_cast<T*>(smem + L::p);
  float* sCorr = reinterpret_cast<float*>(smem + L::corr);
  float* sFin = reinterpret_cast<float*>(smem + L::fin);
  int* sValid = reinterpret_cast<int*>(smem + L::valid);
  uint16_t* sList = reinterpret_cast<uint16_t*>(smem + L::list);
  uint8_t* sFlag = reinterpret_cast<uint8_t*>(smem + L::flag);
  int* sCount = reinterpret_cast<int*>(smem + L::count);

  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;  // fragment row / column pair of this lane
  const int64_t t = blockIdx.x;
  const int64_t h0 = static_cast<int64_t>(blockIdx.y) * kHB;
  const int split = static_cast<int>(blockIdx.z), splits = static_cast<int>(gridDim.z);
  const int64_t s_begin = split * split_len;
  const int64_t s_end = s_begin + split_len < a.S ? s_begin + split_len : a.S;
  const int64_t n_tiles = s_end > s_begin ? (s_end - s_begin + kNK - 1) / kNK : 0;
  const int32_t* row_idx = a.idx + t * a.S;

  // Q rows of the head group (zeros past H): commit group 0.
  for (int i = tid; i < kHB * kChunks; i += kThreads) {
    const int r = i / kChunks, col = (i % kChunks) * 8;
    const bool ok = h0 + r < a.H;
    const T* src = ok ? a.q + ((t * a.H + h0 + r) * DH + col) : a.q;
    cp_async16(smem_addr(sQ + r * kRow + col), src, ok);
  }
  cp_async_commit();

  // Tile scan (while Q streams in): warp w reads tiles w, w + 16, .. one slot per lane; a tile
  // whose slots are all -1 (or out of range) is skipped: it would add nothing (p = 0 against
  // zero-filled rows, rescale 1), so skipping it leaves every result bit-identical. An index
  // outside [-1, rows) anywhere in the range makes the outputs NaN (`bad`).
  int bad = 0;  // this thread met an index outside [-1, rows)
  const bool use_list = n_tiles <= kListTiles;
  for (int64_t i = warp; i < n_tiles; i += kWarps) {
    const int64_t s = s_begin + i * kNK + lane;
    const int32_t r = s < s_end ? row_idx[s] : -1;
    if (r < -1 || r >= a.n_rows) bad = 1;
    const unsigned any = __ballot_sync(0xffffffffu, r >= 0 && r < a.n_rows);
    if (lane == 0 && use_list) sFlag[i] = any != 0u ? 1 : 0;
  }
  __syncthreads();
  if (use_list && warp == 0) {  // compaction in tile order
    int count = 0;
    for (int base = 0; base < n_tiles; base += 32) {
      const int i = base + lane;
      const bool f = i < n_tiles && sFlag[i] != 0;
      const unsigned m = __ballot_sync(0xffffffffu, f);
      if (f) sList[count + __popc(m & ((1u << lane) - 1u))] = static_cast<uint16_t>(i);
      count += __popc(m);
    }
    if (lane == 0) *sCount = count;
  }
  __syncthreads();
  const int64_t n_work = use_list ? *sCount : n_tiles;  // tiles walked: list positions 0 .. n_work

  // Gathering a tile: thread tid copies chunks i = tid + k kThreads (row i / kChunks). Its rows'
  // indices are read one tile ahead into registers (pre), so the global read's latency hides
  // behind a tile's compute instead of stalling the copy.
  constexpr int kPer = (kNK * kChunks + kThreads - 1) / kThreads;
  int32_t pre[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) pre[k] = -1;
  auto fetch_idx = [&](int64_t w) {
    if (w >= n_work) return;
    const int64_t tile = use_list ? static_cast<int64_t>(sList[w]) : w;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int i = tid + k * kThreads;
      const int64_t s = s_begin + tile * kNK + i / kChunks;
      pre[k] = i < kNK * kChunks && s < s_end ? row_idx[s] : -1;
    }
  };
  // The tile of the last fetch_idx into stage st; sValid marks the loaded rows.
  auto load_tile = [&](int st) {
    T* dst = sK + st * (kNK * kRow);
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int i = tid + k * kThreads;
      if (i >= kNK * kChunks) break;
      const int j = i / kChunks, col = (i % kChunks) * 8;
      const int32_t r = pre[k];
      const bool ok = r >= 0 && r < a.n_rows;
      if (col == 0) sValid[st * kNK + j] = ok ? 1 : 0;
      const T* src = !ok ? a.kv
                         : r < a.n_kv ? a.kv + (static_cast<int64_t>(r) * DH + col)
                                      : a.entries + ((static_cast<int64_t>(r) - a.n_kv) * DH + col);
      cp_async16(smem_addr(dst + j * kRow + col), src, ok);
    }
  };

  // Softmax state of head row tid / 8 (the same in its 8 threads).
  float m_run = -INFINITY, l_run = 0.0f;
  // Phase 3 slab of O: heads (mg * kMT + i) * 16 + {g, g + 8}, dims (ng * kNT + j) * 8 + 2c + {0, 1}.
  const int mg = warp / PV::kNG, ng = warp % PV::kNG;
  float o[PV::kMT][PV::kNT][4];
#pragma unroll
  for (int i = 0; i < PV::kMT; ++i)
#pragma unroll
    for (int j = 0; j < PV::kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[i][j][e] = 0.0f;

  fetch_idx(0);
  if (n_work > 0) load_tile(0);
  cp_async_commit();  // group 1: tile 0
  fetch_idx(1);
  for (int64_t w = 0; w <= n_work; ++w) {  // w = n_work: only phase 3 of the last tile
    const int st = static_cast<int>(w % kStages), pst = static_cast<int>((w + kStages - 1) % kStages);
    const bool have = w < n_work;
    cp_async_wait<0>();
    // Tile w (and Q) visible to every thread; every warp is past phase 2 of tile w - 1 (sS is
    // free) and past phase 3 of tile w - 2 (its stage (w + 1) % 3 is free for tile w + 1).
    __syncthreads();
    if (w + 1 < n_work) {  // tile w + 1 streams in while tiles w and w - 1 are computed
      load_tile(static_cast<int>((w + 1) % kStages));
      cp_async_commit();
      fetch_idx(w + 2);
    }
    const T* kt = sK + st * (kNK * kRow);   // tile w
    const T* pkt = sK + pst * (kNK * kRow);  // tile w - 1

    // Phases 1 of tile w and 3 of tile w - 1 have no barrier between them: warps drift from one
    // into the other.
    // 1. Partial scores of m tile mi over the Dh quarter kq, all 32 keys (4 n tiles).
    if (have) {
      const int mi = warp & 3, kq = warp >> 2;
      float acc[4][4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
      const uint32_t a_base = smem_addr(sQ + (mi * 16 + (lane & 15)) * kRow + (lane >> 4) * 8);
      const uint32_t b_base = smem_addr(kt + (((lane >> 4) << 3) + (lane & 7)) * kRow + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int ks = 0; ks < DH / 64; ++ks) {
        const int k0 = kq * (DH / 4) + ks * 16;
        uint32_t af[4];
        ldsm_x4(af, a_base + k0 * 2);
#pragma unroll
        for (int np = 0; np < 2; ++np) {  // keys 16 np .. 16 np + 15: two n tiles
          uint32_t bf[4];
          ldsm_x4(bf, b_base + (np * 16 * kRow + k0) * 2);
          mma16816<T>(acc[2 * np], af, bf[0], bf[1]);
          mma16816<T>(acc[2 * np + 1], af, bf[2], bf[3]);
        }
      }
      float* dst = sS + kq * (kHB * kSRow);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        *reinterpret_cast<float2*>(dst + (mi * 16 + g) * kSRow + j * 8 + 2 * c) = make_float2(acc[j][0], acc[j][1]);
        *reinterpret_cast<float2*>(dst + (mi * 16 + g + 8) * kSRow + j * 8 + 2 * c) =
            make_float2(acc[j][2], acc[j][3]);
      }
    }

    // 3. Tile w - 1: O = O * corr + P . V over its 32 keys (two k steps of 16).
    if (w > 0) {
#pragma unroll
      for (int i = 0; i < PV::kMT; ++i) {
        const float c0 = sCorr[(mg * PV::kMT + i) * 16 + g], c1 = sCorr[(mg * PV::kMT + i) * 16 + g + 8];
#pragma unroll
        for (int j = 0; j < PV::kNT; ++j) {
          o[i][j][0] *= c0;
          o[i][j][1] *= c0;
          o[i][j][2] *= c1;
          o[i][j][3] *= c1;
        }
      }
      const int d0 = ng * PV::kNT * 8;
#pragma unroll
      for (int kk = 0; kk < kNK / 16; ++kk) {
        uint32_t pf[PV::kMT][4];
#pragma unroll
        for (int i = 0; i < PV::kMT; ++i)
          ldsm_x4(pf[i], smem_addr(sP + ((mg * PV::kMT + i) * 16 + (lane & 15)) * kPRow + kk * 16 + (lane >> 4) * 8));
        const int vkey = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;  // this lane's V row for ldmatrix
        if constexpr (PV::kNT % 2 == 0) {
#pragma unroll
          for (int jp = 0; jp < PV::kNT / 2; ++jp) {
            uint32_t bf[4];
            ldsm_x4_trans(bf, smem_addr(pkt + vkey * kRow + d0 + jp * 16 + (lane >> 4) * 8));
#pragma unroll
            for (int i = 0; i < PV::kMT; ++i) {
              mma16816<T>(o[i][2 * jp], pf[i], bf[0], bf[1]);
              mma16816<T>(o[i][2 * jp + 1], pf[i], bf[2], bf[3]);
            }
          }
        } else {
#pragma unroll
          for (int j = 0; j < PV::kNT; ++j) {
            uint32_t bf[2];
            ldsm_x2_trans(bf, smem_addr(pkt + vkey * kRow + d0 + j * 8));
#pragma unroll
            for (int i = 0; i < PV::kMT; ++i) mma16816<T>(o[i][j], pf[i], bf[0], bf[1]);
          }
        }
      }
    }
    if (!have) break;
    __syncthreads();  // partial scores of tile w complete; sP / sCorr read by phase 3 of tile w - 1

    // 2. Online softmax: row r, keys c4 .. c4 + 3.
    {
      const int r = tid >> 3, c4 = (tid & 7) * 4;
      float s[4];
      {
        const float4 v0 = *reinterpret_cast<const float4*>(sS + 0 * (kHB * kSRow) + r * kSRow + c4);
        const float4 v1 = *reinterpret_cast<const float4*>(sS + 1 * (kHB * kSRow) + r * kSRow + c4);
        const float4 v2 = *reinterpret_cast<const float4*>(sS + 2 * (kHB * kSRow) + r * kSRow + c4);
        const float4 v3 = *reinterpret_cast<const float4*>(sS + 3 * (kHB * kSRow) + r * kSRow + c4);
        s[0] = ((v0.x + v1.x) + v2.x) + v3.x;
        s[1] = ((v0.y + v1.y) + v2.y) + v3.y;
        s[2] = ((v0.z + v1.z) + v2.z) + v3.z;
        s[3] = ((v0.w + v1.w) + v2.w) + v3.w;
      }
      float mx = -INFINITY;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[e] = sValid[st * kNK + c4 + e] ? s[e] * a.scale : -INFINITY;
        mx = fmaxf(mx, s[e]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      const float m_new = fmaxf(m_run, mx);
      float p[4], sum = 0.0f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        p[e] = s[e] == -INFINITY ? 0.0f : expf(s[e] - m_new);
        sum += p[e];
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      sum += __shfl_xor_sync(0xffffffffu, sum, 4);
      const float corr = m_run == -INFINITY ? 0.0f : expf(m_run - m_new);
      l_run = l_run * corr + sum;
      m_run = m_new;
      *reinterpret_cast<uint2*>(sP + r * kPRow + c4) = make_uint2(pack2<T>(p[0], p[1]), pack2<T>(p[2], p[3]));
      if ((tid & 7) == 0) sCorr[r] = corr;
    }
  }
  cp_async_wait<0>();  // no tile: Q's and tile 0's groups are still outstanding

  const bool any_bad = __syncthreads_or(bad) != 0;
  const bool final_out = part_acc == nullptr;
  if ((tid & 7) == 0) {
    const int r = tid >> 3;
    const int64_t h = h0 + r;
    if (final_out) {
      float f = 0.0f;  // no valid key: 0
      if (any_bad) {
        f = NAN;
      } else if (m_run != -INFINITY && h < a.H) {
        const float sk = a.sink ? a.sink[h] : -INFINITY;
        const float M = fmaxf(m_run, sk);
        const float e = expf(m_run - M);
        f = e / (l_run * e + (a.sink ? expf(sk - M) : 0.0f));
      }
      sFin[r] = f;
    } else if (h < a.H) {
      part_ml[(t * splits + split) * a.H + h] = make_float2(m_run, any_bad ? NAN : l_run);
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < PV::kMT; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = (mg * PV::kMT + i) * 16 + g + half * 8;
      const int64_t h = h0 + r;
      if (h >= a.H) continue;
      const float f = final_out ? sFin[r] : 1.0f;
#pragma unroll
      for (int j = 0; j < PV::kNT; ++j) {
        const int d = (ng * PV::kNT + j) * 8 + 2 * c;
        const float x0 = o[i][j][2 * half] * f, x1 = o[i][j][2 * half + 1] * f;
        if (final_out) {
          *reinterpret_cast<uint32_t*>(a.out + ((t * a.H + h) * DH + d)) = pack2<T>(x0, x1);
        } else {
          *reinterpret_cast<float2*>(part_acc + (((t * splits + split) * a.H + h) * DH + d)) = make_float2(x0, x1);
        }
      }
    }
  }
}

// Opting a kernel into more than 48 KiB of dynamic shared memory, once per backend (the first,
// eager calls; never inside a captured graph).
struct SmemOptIn {
  bool done = false;
};

template <typename T, int DH>
void launch_dh(CudaBackend& be, const AttnArgs<T>& a, const Partials& part) {
  auto* kernel = attention_mma_kernel<T, DH>;
  constexpr size_t kBytes = Smem<DH>::bytes;
  auto* opt_in = be.op_state<SmemOptIn>(reinterpret_cast<const void*>(kernel));
  if (!opt_in->done) {
    int max_smem = 0, dev = 0;
    CLAWMINE_CUDA_CHECK(cudaGetDevice(&dev));
    CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CLAWMINE_CHECK(kBytes <= static_cast<size_t>(max_smem), "cuda sparse_attention: head dim ", DH, " needs ", kBytes,
                   " bytes of shared memory, the device allows ", max_smem);
    CLAWMINE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kBytes)));
    opt_in->done = true;
  }
  const dim3 grid(static_cast<unsigned>(a.T), static_cast<unsigned>((a.H + kHB - 1) / kHB),
                  static_cast<unsigned>(part.splits));
  const int64_t split_len = part.splits > 1 ? part.split_len : a.S;
  launch_kernel(kernel, grid, kThreads, kBytes, be.stream(), a, part.acc, part.ml, split_len);
  CLAWMINE_CUDA_LAUNCHED("sparse_attention (tensor cores)");
}

}  // namespace

bool mma_supports(int64_t Dh) { return Dh == 64 || Dh == 128 || Dh == 256 || Dh == 512; }

template <typename T>
void launch_attention_mma(CudaBackend& be, const AttnArgs<T>& a, const Partials& part) {
  CLAWMINE_CHECK(part.splits == 1 || (part.split_len > 0 && part.split_len % kNK == 0),
                 "cuda sparse_attention: split length ", part.split_len, " is not a multiple of ", kNK);
  switch (a.Dh) {
    case 64: return launch_dh<T, 64>(be, a, part);
    case 128: return launch_dh<T, 128>(be, a, part);
    case 256: return launch_dh<T, 256>(be, a, part);
    case 512: return launch_dh<T, 512>(be, a, part);
    default: throw Error(str_cat("cuda sparse_attention: no tensor-core kernel for head dim ", a.Dh));
  }
}

template void launch_attention_mma<__nv_bfloat16>(CudaBackend&, const AttnArgs<__nv_bfloat16>&, const Partials&);
template void launch_attention_mma<__half>(CudaBackend&, const AttnArgs<__half>&, const Partials&);

}  // namespace clawmine::backend::cuda::attn
