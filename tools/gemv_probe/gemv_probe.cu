// bench_gemv_probe: the decode GEMV (backend/cuda/linear_gemv.cu) at V4-Flash decode shapes, per
// weight format and token count, against the copy bandwidth measured in the same run.
//
// For each format (BF16, FP8 with E8M0 / F32 block scales, MXFP4, NVFP4), case and T it times
//   fma     launch_gemv_fma: the float32-FMA kernel (the GEMV before the tensor-core ones)
//   mma     launch_gemv with CLAWMINE_GEMV=mma (the tensor-core kernel of run 3, cp.async ring;
//           dense BF16 at T <= 2 takes the FMA kernel)
//   stream  launch_gemv with CLAWMINE_GEMV=stream (the streaming decode kernel; tiles of > 8
//           tokens or too much staged x fall back to mma)
//   cublas  cublasGemmEx / strided batched on BF16 weights of the same shape (the issue's
//           baseline; not for the MoE cases)
// as CUDA graphs of back-to-back launches over enough weight copies that nothing stays in L2
// (median over replays), and prints GB/s of weight + scale bytes and the ratio to the copy
// bandwidth of the same run (the best of a 1 GiB cudaMemcpy in a graph / eager and a 16-byte copy
// kernel, read + written bytes), plus the floor of one empty kernel launch in a graph. Cases:
// linear shapes of one decode step (wq_a, wkv, shared-expert w1 and w2, wo_b, grouped wo_a
// 8 x 1024 x 4096, wq_b, indexer wq_b, the head) and the routed experts as moe_experts launches
// them (6 one-row tiles per token, each tile a distinct expert of a pool of 64; at T = 1 without a
// plan, as a decode step runs them: the slots' expert ids as row_problem, gate/up reading the one
// token's row, down the slots' rows of h; at T > 1 a tile table with x_rows):
// moe13 = w1 + w3 (grid z = 2), moe2 = w2. Every case checks mma and stream against fma on the
// same random inputs (rel_l2 of f32 outputs, NaN-poisoned first) and stream run twice for equal
// bits. A "read floor" line per case times read_kernel over the same number of bytes (fresh
// buffers in turn, 4 loads in flight per thread): what any kernel that only reads them costs at
// that size, launch ramp included, so the stream kernel's gap splits into the size's own cost
// (read floor vs copy) and the kernel's (stream vs read floor). A "pattern" line times the
// streaming kernel's loads alone (pattern_kernel: its grid, warps, addresses and load groups,
// xor-folded instead of decoded) with 2 groups in flight as the kernel has, with 4, and with 2 over
// a segment-major layout (each warp's bytes contiguous): of the kernel's gap to the read floor, how
// much its access pattern costs, how much more bytes in flight would give, and how much a weight
// layout would.
//
// Where the one-token wgmma GEMV (linear_gemv_wgmma.cu) takes a case (dense FP8, and with it on
// here the expert launches and dense MXFP4 too), a "wgmma" line (and CSV column wgmma_us) times it,
// checked against fma (rel_l2 < 1e-3: its FP8 products sum in the tensor core) and for equal bits twice;
// the "stream" column is the streaming kernel with wgmma off.
//
// Programmatic dependent launch (common.cuh, device.h): a second line per case times decode-like
// chains, GEMV -> a 1-block kernel -> GEMV ... (the small kernel reads the GEMV's output and
// rewrites its input in place, as rms_norm does between projections), captured with PDL off
// ("off"), on for every launch ("all": set_pdl_enabled_for_tests, CLAWMINE_PDL=1) and on for the
// GEMV launches alone ("gemv": set_gemv_pdl, CLAWMINE_GEMV_PDL=1): the FMA kernel, the streaming
// kernel, the streaming kernel with its L2 prefetch (set_gemv_stream_l2_prefetch), and the small
// kernel alone. Per launch pair, microseconds; "saved" = off - all / off - gemv. With PDL, GEMV
// launches without a tile table issue their first weight loads before griddepcontrol.wait, so
// their first DRAM round trip overlaps the kernel before (the MoE cases, tile tables, only gain
// the launch overlap). Checked: each PDL chain (graph: small kernel, then the GEMV with F32
// output) gives the bits of the plain launch, for fma and stream.
//
//   bench_gemv_probe [--tokens 1,2,4] [--shapes wq_a,...,moe2,head] [--formats bf16,fp8,fp8f32,mxfp4,nvfp4]
//                    [--reps 15] [--csv FILE] [--pdl 1|0 (the chain timings; default 1)]
//                    [--stream-mt N (m-tiles per streaming block; 0 = the plan's choice)]
//                    [--beside 1 (after the cases: the routed gate/up beside the shared expert's, run_beside)]
// MoE cases at 6T > 64 (T >= 11, up to 64) model a batched step instead: 6T selections spread
// over the pool's 64 experts, rows sorted by expert in tiles of gemv_tile_rows(ceil(6T / 64)) rows.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/linear_kernels.cuh"
#include "common/probe_timing.cuh"

namespace cuda = clawmine::backend::cuda;
using cuda::WFmt;

namespace {

#define CK(expr)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (expr);                                                                  \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(2);                                                                           \
    }                                                                                         \
  } while (0)
#define CKB(expr)                                                                   \
  do {                                                                              \
    cublasStatus_t s_ = (expr);                                                     \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                              \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #expr, int(s_)); \
      std::exit(2);                                                                 \
    }                                                                               \
  } while (0)

__device__ __forceinline__ uint32_t hash32(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<uint32_t>(x >> 16);
}

// Random bytes by kind: 0 any byte, 1 E4M3 without NaN codes, 2 E8M0 in [2^-12, 2^-4],
// 3 positive finite E4M3 in [2^-6, 2^6), 4 F32 in [1e-3, 1e-2), 5 BF16 in [-1/16, 1/16].
__global__ void fill_kernel(uint8_t* p, int64_t n, int kind, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t h = hash32(i, seed);
    switch (kind) {
      case 0: p[i] = static_cast<uint8_t>(h); break;
      case 1: p[i] = ((h & 0x7fu) == 0x7fu) ? static_cast<uint8_t>(h ^ 1u) : static_cast<uint8_t>(h); break;
      case 2: p[i] = static_cast<uint8_t>(115 + h % 9); break;
      case 3: p[i] = static_cast<uint8_t>(0x08 + ((h % 12) << 3) + (h >> 8) % 8); break;
      case 4:
        if (i % 4 == 0) {
          const float v = 1e-3f + 9e-3f * static_cast<float>(h % 65536) / 65536.0f;
          std::memcpy(p + i, &v, 4);
        }
        break;
      case 5:
        if (i % 2 == 0) {
          const float v = (static_cast<float>(h % 65536) / 32768.0f - 1.0f) / 16.0f;
          const __nv_bfloat16 b = __float2bfloat16_rn(v);
          std::memcpy(p + i, &b, 2);
        }
        break;
    }
  }
}
__global__ void fill_f32(float* p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = v;
}

// Fills run on the legacy default stream and are waited for: the timed stream is non-blocking.
void fill(void* p, int64_t bytes, int kind, uint32_t seed) {
  fill_kernel<<<1024, 256>>>(static_cast<uint8_t*>(p), bytes, kind, seed);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
}
void fill_value(float* p, int64_t n, float v) {
  fill_f32<<<1024, 256>>>(p, n, v);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
}
__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}
__global__ void empty_kernel() {}
// The read floor of a GEMV's bytes: every 16-byte word of [p, p + n) loaded once (4 in flight
// per thread, L1 bypassed), xor-folded; `sink` is written only when the fold hits a value the
// fills never make, so the loads stay live.
__global__ void read_kernel(const uint4* __restrict__ p, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (; i + 3 * step < n; i += 4 * step) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = __ldcs(p + i + u * step);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += step) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// The streaming GEMV's loads alone ("pattern" line): its grid and warps as gemv_stream_body places
// them (gemv_stream_shape; cluster ranks as plain blocks), each lane loading what the kernel's lane
// loads -- rows g and g+8, chunk t of each 64-byte k block of its warp's segment, and the scale
// bits of those chunks -- in load groups of 2 k blocks, kInFlight groups in flight (group i +
// kInFlight issued as group i is folded, as the kernel issues i + 2 after decoding i), xor-folded
// instead of decoded: no activations, no MMA, no sums. kContig: the same bytes per warp, but as if
// the warp's 16 rows x segment were one run of memory (a segment-major weight layout): a group's
// four loads per lane are 512 contiguous bytes per warp instruction instead of 64 bytes in each
// of 8 rows. Splits the streaming kernel's gap to the read floor into what its access pattern
// costs and what its math and staging cost.
template <WFmt F, int kInFlight, bool kContig>
__global__ void pattern_kernel(const cuda::GemmArgs a, const cuda::GemvStreamShape sh, uint32_t* sink) {
  using D = cuda::WeightDecoder<F>;
  constexpr int U = 2;
  cuda::Tile tile;
  if (!cuda::tile_of(a, blockIdx.y, tile)) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3, S = W / sh.mt, m = warp / S;
  const int z = static_cast<int>(blockIdx.z);  // the probe launches no gate/up pairs
  const cuda::WeightDesc d = cuda::desc_of(a, tile.p, z);
  const int64_t mtile = static_cast<int64_t>(blockIdx.x / sh.kc) * sh.mt + m;
  const int64_t m0 = mtile * 16, wbase = cuda::weight_row_base(a, z);
  const int segi = static_cast<int>(blockIdx.x % sh.kc) * S + warp % S;
  const int kb0 = segi * sh.seg, kb1 = min(kb0 + sh.seg, sh.n_kb);
  const int n_chunks = static_cast<int>(a.K / D::kChunk);
  const int kbl = min(kb1, (n_chunks - t + 3) / 4);  // as the kernel: chunk 4*kb + t inside the row
  const int ng = kb1 > kb0 ? (kb1 - kb0 + U - 1) / U : 0;
  // kContig reads whole 16-row runs: only where the m-tile has 16 rows and k blocks fill the rows.
  const bool contig_ok = m0 + 16 <= a.n_rows && n_chunks % 4 == 0;
  const int64_t wr0 = wbase + min(m0 + g, a.n_rows - 1), wr1 = wbase + min(m0 + 8 + g, a.n_rows - 1);
  const uint8_t* sr0 = D::scale_row(d, wr0);
  const uint8_t* sr1 = D::scale_row(d, wr1);
  // kContig: the warp's run starts where its m-tile's rows and segment would start in a
  // segment-major copy of the same matrix (the same bytes in total, each once).
  const uint8_t* run = d.w + (wbase + m0) * d.row_bytes + static_cast<int64_t>(kb0) * 64 * 16;
  uint4 w[kInFlight][U][2];
  uint32_t sc[kInFlight][U][2];
  auto load = [&](int k, int grp) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kb = kb0 + grp * U + u;
      const bool ok = grp < ng && kb < kbl && (!kContig || contig_ok);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint8_t* p = kContig ? run + ((static_cast<int64_t>(grp * U + u) * 2 + h) * 32 + lane) * 16
                                   : d.w + (h ? wr1 : wr0) * d.row_bytes + (static_cast<int64_t>(kb) * 4 + t) * 16;
        w[k][u][h] = ok ? cuda::ld_stream16(p) : make_uint4(0u, 0u, 0u, 0u);
        sc[k][u][h] = ok ? D::scale_bits(h ? sr1 : sr0, D::kMmaBlockScale ? kb * 4 : kb * 4 + t) : 0u;
      }
    }
  };
  uint32_t acc = 0;
#pragma unroll
  for (int k = 0; k < kInFlight; ++k) load(k, k);
  for (int i = 0; i < ng; i += kInFlight) {
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int h = 0; h < 2; ++h) acc ^= w[k][u][h].x ^ w[k][u][h].y ^ w[k][u][h].z ^ w[k][u][h].w ^ sc[k][u][h];
      if (i + k + kInFlight < ng) load(k, i + k + kInFlight);
    }
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// Between two GEMVs of a decode step sits a small kernel (rms_norm at T = 1: one block): it reads
// the GEMV's output y (n_y elements, F32 or BF16) and rewrites the next GEMV's input x (its first
// n_x BF16 elements, values unchanged: a sum of squares that is never the magic value decides
// between the old value and zero), so with PDL the next GEMV's x reads must wait for it.
__global__ void __launch_bounds__(256) small_step_kernel(const void* y, int y_bf16, int64_t n_y, __nv_bfloat16* x,
                                                         int64_t n_x) {
  cuda::pdl_trigger();
  cuda::pdl_wait();
  __shared__ float red[8];
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n_y; i += blockDim.x) {
    const float v = y_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(y)[i]) : static_cast<const float*>(y)[i];
    s = fmaf(v, v, s);
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < 8; ++w) total += red[w];
  for (int64_t i = threadIdx.x; i < n_x; i += blockDim.x) {
    const __nv_bfloat16 v = x[i];
    x[i] = total == 12345.678f ? __float2bfloat16(0.0f) : v;
  }
}
void launch_small_step(const void* y, bool y_bf16, int64_t n_y, void* x, int64_t n_x, cudaStream_t st) {
  cuda::launch_kernel(small_step_kernel, dim3(1), dim3(256), 0, st, y, y_bf16 ? 1 : 0, std::min<int64_t>(n_y, 4096),
                      static_cast<__nv_bfloat16*>(x), std::min<int64_t>(n_x, 4096));
  CK(cudaGetLastError());
}

struct Case {
  const char* name;
  int64_t rows, k;  // per problem: out_features, in_features
  int n_z;          // problems along grid z (grouped_linear groups; moe13: w1 and w3)
  int moe;          // 0 linear; 1 moe13 (w1/w3 of the tile's expert); 2 moe2 (w2)
};
const Case kCases[] = {{"wq_a", 1024, 4096, 1, 0},     {"wkv", 512, 4096, 1, 0},    {"w1", 2048, 4096, 1, 0},
                       {"w2", 4096, 2048, 1, 0},       {"wo_b", 4096, 8192, 1, 0},  {"wo_a", 1024, 4096, 8, 0},
                       {"wq_b", 32768, 1024, 1, 0},    {"idx_wq_b", 8192, 1024, 1, 0}, {"moe13", 2048, 4096, 2, 1},
                       {"moe2", 4096, 2048, 1, 2},     {"head", 129280, 4096, 1, 0}};
constexpr int kTopK = 6, kExpertPool = 64;

struct Format {
  const char* name;
  WFmt fmt;
};
const Format kFormats[] = {{"bf16", WFmt::kBF16},
                           {"fp8", WFmt::kFp8E8M0},
                           {"fp8f32", WFmt::kFp8F32},
                           {"mxfp4", WFmt::kMxfp4},
                           {"nvfp4", WFmt::kNvfp4}};

// One weight in device memory.
struct Weight {
  void* w = nullptr;
  void* s = nullptr;
  float* s2 = nullptr;
  cuda::WeightDesc d;
  int64_t bytes = 0;  // weight + scale bytes
};

Weight make_weight(WFmt f, int64_t rows, int64_t k, uint32_t seed) {
  Weight w;
  cuda::WeightDesc& d = w.d;
  d.rows = rows;
  d.k = k;
  d.fmt = static_cast<int32_t>(f);
  int64_t wbytes = 0, sbytes = 0;
  int wkind = 0, skind = 0;
  switch (f) {
    case WFmt::kBF16: d.row_bytes = 2 * k, wkind = 5; break;
    case WFmt::kFp8E8M0:
    case WFmt::kFp8F32:
      d.row_bytes = k, wkind = 1;
      d.scale_ld = (k + 127) / 128;
      sbytes = ((rows + 127) / 128) * d.scale_ld * (f == WFmt::kFp8F32 ? 4 : 1);
      skind = f == WFmt::kFp8F32 ? 4 : 2;
      break;
    case WFmt::kMxfp4: d.row_bytes = k / 2, d.scale_ld = k / 32, sbytes = rows * d.scale_ld, skind = 2; break;
    case WFmt::kNvfp4: d.row_bytes = k / 2, d.scale_ld = k / 16, sbytes = rows * d.scale_ld, skind = 3; break;
    default: std::fprintf(stderr, "format not probed\n"), std::exit(2);
  }
  wbytes = rows * d.row_bytes;
  CK(cudaMalloc(&w.w, static_cast<size_t>(wbytes)));
  fill(w.w, wbytes, wkind, seed);
  d.w = static_cast<const uint8_t*>(w.w);
  if (sbytes > 0) {
    CK(cudaMalloc(&w.s, static_cast<size_t>(sbytes)));
    fill(w.s, sbytes, skind, seed + 1);
    d.scale = static_cast<const uint8_t*>(w.s);
  }
  if (f == WFmt::kNvfp4) {
    CK(cudaMalloc(&w.s2, 4));
    fill_value(w.s2, 1, 1.0f / 1024);
    d.scale2 = w.s2;
  }
  w.bytes = wbytes + sbytes;
  return w;
}
void free_weight(Weight& w) {
  CK(cudaFree(w.w));
  if (w.s) CK(cudaFree(w.s));
  if (w.s2) CK(cudaFree(w.s2));
}

// The weights of one case: linear cases hold `copies` weights of [n_z * rows, k] (launch i uses
// copy i % copies); MoE cases hold kExpertPool experts of three projections each (w1, w3:
// [rows, k]; w2 likewise for moe2) as one descriptor table, and one tile table per launch.
struct CaseData {
  std::vector<Weight> ws;
  int64_t launch_bytes = 0;  // weight + scale bytes one launch reads
  // MoE
  cuda::WeightDesc* descs = nullptr;             // [kExpertPool * 3]
  std::vector<int4*> tiles;                      // T > 1, per launch: the tile table
  int32_t* n_tiles = nullptr;                    // T > 1: its entries
  int32_t* x_rows = nullptr;                     // T > 1, moe13: row j reads token j / 6
  std::vector<int32_t*> row_problem;             // T = 1, per launch: [6] expert ids (direct tiles)
  int launches = 8;
  int tile_rows = 1, grid_tiles = 1;             // rows per tile, tiles (MoE: the table's)
};

// GemmArgs of launch i of a case at T tokens (x, out: F32 or BF16 out; x BF16).
cuda::GemmArgs case_args(const Case& c, const CaseData& cd, int i, const void* x, void* out, int64_t T, bool out_bf16) {
  cuda::GemmArgs a;
  a.n_rows = c.rows;
  a.K = c.k;
  a.x = x;
  a.out = out;
  a.out_bf16 = out_bf16 ? 1 : 0;
  a.n_z = c.n_z;
  if (c.moe == 0) {
    a.desc0 = cd.ws[i % cd.ws.size()].d;
    a.w_row_z = c.rows;
    a.ldx = c.n_z * c.k;
    a.x_z = c.k;
    a.ldo = c.n_z * c.rows;
    a.out_z = c.rows;
    a.rows = T;
    a.tile_rows = cuda::gemv_tile_rows(T);
    a.fmt = a.desc0.fmt;
    return a;
  }
  const int64_t N = kTopK * T;
  a.descs = cd.descs;
  a.desc_stride = 3;
  a.desc_offset = c.moe == 1 ? 0 : 2;
  if (!cd.row_problem.empty()) {  // one token, as moe_experts runs it: slots as one-row tiles, no plan
    a.row_problem = cd.row_problem[i % cd.row_problem.size()];
    a.n_problems = kExpertPool;
    a.rows = N;
    a.tile_rows = 1;
    a.ldx = c.moe == 1 ? 0 : c.k;  // gate/up: every slot reads the token's row
    a.ldo = c.rows;
    a.out_z = N * c.rows;
    a.fmt = cd.ws[0].d.fmt;
    return a;
  }
  a.tiles = cd.tiles[i % cd.tiles.size()];
  a.n_tiles = cd.n_tiles;
  a.tile_rows = cd.tile_rows;
  a.ldx = c.k;
  a.x_rows = c.moe == 1 ? cd.x_rows : nullptr;  // moe2: h [N, I] in row order
  a.ldo = c.rows;
  a.out_z = N * c.rows;
  a.fmt = cd.ws[0].d.fmt;
  return a;
}
int64_t x_elems(const Case& c, int64_t T) { return c.moe == 2 ? kTopK * T * c.k : T * c.n_z * c.k; }
int64_t out_elems(const Case& c, int64_t T) { return (c.moe ? kTopK * T : T) * c.n_z * c.rows; }

// A device copy of v (freed by free_case).
template <typename T>
T* to_device(const std::vector<T>& v) {
  T* d = nullptr;
  CK(cudaMalloc(&d, v.size() * sizeof(T)));
  CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

CaseData make_case(const Case& c, WFmt f, int64_t T, uint32_t& seed) {
  CaseData cd;
  if (c.moe == 0) {
    Weight first = make_weight(f, c.n_z * c.rows, c.k, seed++);
    const int copies = static_cast<int>(std::max<int64_t>(2, std::min<int64_t>(96, (192ll << 20) / first.bytes + 1)));
    cd.ws.push_back(first);
    for (int i = 1; i < copies; ++i) cd.ws.push_back(make_weight(f, c.n_z * c.rows, c.k, seed++));
    cd.launch_bytes = first.bytes;
    cd.launches = std::max(copies, 8);
    return cd;
  }
  // Experts: w1, w3 [I, D] and w2 [D, I] with (I, D) from the case (moe13: rows = I, k = D).
  const int64_t I = c.moe == 1 ? c.rows : c.k, D = c.moe == 1 ? c.k : c.rows;
  std::vector<cuda::WeightDesc> host;
  for (int e = 0; e < kExpertPool; ++e)
    for (int j = 0; j < 3; ++j) {
      cd.ws.push_back(j < 2 ? make_weight(f, I, D, seed++) : make_weight(f, D, I, seed++));
      host.push_back(cd.ws.back().d);
    }
  cd.descs = to_device(host);
  const int64_t N = kTopK * T;
  const int64_t matrix_bytes = c.moe == 1 ? cd.ws[0].bytes + cd.ws[1].bytes : cd.ws[2].bytes;
  cd.launches = 16;
  std::vector<int32_t> xr(static_cast<size_t>(N));
  if (T == 1) {
    // Decode, as moe_experts runs one token: its slots' expert ids (slot j, expert (i*N + j) % pool)
    // as one-row tiles, no plan.
    cd.launch_bytes = N * matrix_bytes;
    cd.grid_tiles = static_cast<int>(N);
    for (int i = 0; i < cd.launches; ++i) {
      std::vector<int32_t> ids(static_cast<size_t>(N));
      for (int64_t j = 0; j < N; ++j) ids[j] = static_cast<int32_t>((i * N + j) % kExpertPool);
      cd.row_problem.push_back(to_device(ids));
    }
    return cd;
  }
  if (N <= kExpertPool) {
    // A few tokens: one-row tiles, each a distinct expert (row j, expert (i*N + j) % pool, token j / 6).
    cd.launch_bytes = N * matrix_bytes;
    cd.grid_tiles = static_cast<int>(N);
    for (int i = 0; i < cd.launches; ++i) {
      std::vector<int4> t(static_cast<size_t>(N));
      for (int64_t j = 0; j < N; ++j)
        t[j] = make_int4(static_cast<int>((i * N + j) % kExpertPool), static_cast<int>(j), 1, 0);
      cd.tiles.push_back(to_device(t));
    }
    for (int64_t j = 0; j < N; ++j) xr[j] = static_cast<int32_t>(j / kTopK);
  } else {
    // A batched step (6T > pool: T >= 11): selection j of token j / 6 goes to expert j % pool, rows
    // sorted by expert as moe_plan sorts them, tiles of gemv_tile_rows(ceil(N / pool)) rows, as
    // moe_experts sizes them; every expert of the pool is read once per launch.
    const int64_t per = (N + kExpertPool - 1) / kExpertPool;
    cd.tile_rows = cuda::gemv_tile_rows(per);
    std::vector<int4> t;
    int64_t row = 0;
    for (int e = 0; e < kExpertPool; ++e) {
      const int64_t r0 = row;
      for (int64_t j = e; j < N; j += kExpertPool) xr[row++] = static_cast<int32_t>(j / kTopK);
      for (int64_t r = r0; r < row; r += cd.tile_rows)
        t.push_back(make_int4(e, static_cast<int>(r), static_cast<int>(std::min<int64_t>(cd.tile_rows, row - r)), 0));
    }
    cd.launch_bytes = std::min<int64_t>(N, kExpertPool) * matrix_bytes;
    cd.grid_tiles = static_cast<int>(t.size());
    for (int i = 0; i < cd.launches; ++i) cd.tiles.push_back(to_device(t));
  }
  cd.n_tiles = to_device(std::vector<int32_t>{cd.grid_tiles});
  cd.x_rows = to_device(xr);
  return cd;
}
void free_case(CaseData& cd) {
  for (Weight& w : cd.ws) free_weight(w);
  if (cd.descs) CK(cudaFree(cd.descs));
  for (int4* t : cd.tiles) CK(cudaFree(t));
  for (int32_t* r : cd.row_problem) CK(cudaFree(r));
  if (cd.n_tiles) CK(cudaFree(cd.n_tiles));
  if (cd.x_rows) CK(cudaFree(cd.x_rows));
}

using clawmine::probe::time_graph;

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t q = s.find(',', p);
    v.push_back(s.substr(p, q == std::string::npos ? std::string::npos : q - p));
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return v;
}
bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

double rel_l2(const std::vector<float>& got, const std::vector<float>& ref, bool& all_finite) {
  double num = 0, den = 0;
  all_finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(ref[i])) all_finite = false;
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Median ms per read of `bytes` by read_kernel from n fresh buffers in turn (L2 cold as for the
// GEMVs): what any kernel that only reads them costs at that size.
double read_floor_ms(cudaStream_t st, int n, int reps, int64_t bytes, const cudaDeviceProp& prop, uint32_t& seed) {
  const int64_t words = (bytes + 15) / 16;
  std::vector<void*> bufs(static_cast<size_t>(n));
  for (void*& b : bufs) {
    CK(cudaMalloc(&b, static_cast<size_t>(words * 16)));
    fill(b, words * 16, 0, seed++);
  }
  uint32_t* sink;
  CK(cudaMalloc(&sink, 4));
  const double ms = time_graph(st, n, reps, [&](int i) {
    read_kernel<<<prop.multiProcessorCount * 8, 256, 0, st>>>(static_cast<const uint4*>(bufs[i % n]), words, sink);
    CK(cudaGetLastError());
  });
  for (void* b : bufs) CK(cudaFree(b));
  CK(cudaFree(sink));
  return ms;
}

// --beside 1: the decode step's MoE phase in miniature. The routed experts' gate/up (moe13, MXFP4,
// one token: six one-row slots) on `st` and the shared expert's gate/up (w1 and w3 of 2048 x 4096,
// FP8 E8M0, one launch over grid z = 2: 16 MiB, so on wgmma as in the step) forked onto a second
// stream, as moe() issues them: each alone, both together in one graph (fork and join by events),
// and a plain read of both's bytes. The routed launch on the streaming kernel, then on wgmma.
// Then the step's next launch too: the routed down (moe2, MXFP4, on wgmma as by default) after the
// gate/up on the same stream, every launch programmatic (as the step: the down's blocks resident
// while the gate/up runs, waiting) or plain (the down launched when the gate/up has finished), alone and with
// the shared gate/up forked beside: whether the down's early blocks keep the shared expert's off
// the multiprocessors (docs/PERFORMANCE.md, thirty-second session). Timing only (not checked; the
// main cases check these kernels).
void run_beside(cudaStream_t st, int reps, const cudaDeviceProp& prop, double copy_gbs, uint32_t& seed) {
  const Case routed = kCases[8], shared = {"w13s", 2048, 4096, 2, 0}, down = kCases[9];
  CaseData cr = make_case(routed, WFmt::kMxfp4, 1, seed), cs = make_case(shared, WFmt::kFp8E8M0, 1, seed);
  CaseData cd = make_case(down, WFmt::kMxfp4, 1, seed);
  void *xd, *od;
  CK(cudaMalloc(&xd, static_cast<size_t>(x_elems(down, 1) * 2)));
  CK(cudaMalloc(&od, static_cast<size_t>(out_elems(down, 1) * 2)));
  fill(xd, x_elems(down, 1) * 2, 5, seed++);
  void *xr, *xs, *orr, *os;
  CK(cudaMalloc(&xr, static_cast<size_t>(x_elems(routed, 1) * 2)));
  CK(cudaMalloc(&xs, static_cast<size_t>(x_elems(shared, 1) * 2)));
  CK(cudaMalloc(&orr, static_cast<size_t>(out_elems(routed, 1) * 2)));
  CK(cudaMalloc(&os, static_cast<size_t>(out_elems(shared, 1) * 2)));
  fill(xr, x_elems(routed, 1) * 2, 5, seed++);
  fill(xs, x_elems(shared, 1) * 2, 5, seed++);
  cudaStream_t st2;
  CK(cudaStreamCreateWithFlags(&st2, cudaStreamNonBlocking));
  cudaEvent_t fork, join;
  CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  const int n = 16;
  // launch_gemv picks the kernel as the step does: set_gemv_wgmma(2) (the default) keeps the routed
  // gate/up on the streaming kernel, 3 puts it on wgmma; the shared pair takes wgmma under both.
  auto launch_routed = [&](int i, cudaStream_t s) {
    cuda::launch_gemv(case_args(routed, cr, i % cr.launches, xr, orr, 1, true), true, cr.grid_tiles, s);
  };
  auto launch_shared = [&](int i, cudaStream_t s) {
    cuda::launch_gemv(case_args(shared, cs, i % static_cast<int>(cs.ws.size()), xs, os, 1, true), true, cs.grid_tiles,
                      s);
  };
  auto launch_down = [&](int i, cudaStream_t s) {
    cuda::launch_gemv(case_args(down, cd, i % cd.launches, xd, od, 1, true), true, cd.grid_tiles, s);
  };
  double alone[2], both[2];
  for (int wg = 0; wg < 2; ++wg) {
    cuda::set_gemv_wgmma(wg == 1 ? 3 : 2);
    // Eager first launches: each stream's split-k workspace exists before the captures.
    launch_routed(0, st);
    launch_shared(0, st);
    launch_shared(0, st2);
    CK(cudaStreamSynchronize(st));
    CK(cudaStreamSynchronize(st2));
    alone[wg] = time_graph(st, n, reps, [&](int i) { launch_routed(i, st); });
    both[wg] = time_graph(st, n, reps, [&](int i) {
      CK(cudaEventRecord(fork, st));
      CK(cudaStreamWaitEvent(st2, fork, 0));
      launch_shared(i, st2);
      launch_routed(i, st);
      CK(cudaEventRecord(join, st2));
      CK(cudaStreamWaitEvent(st, join, 0));
    });
  }
  // [routed on wgmma][down's launch programmatic]: gate/up + down, then with the shared forked.
  double chain[2][2], chain_both[2][2];
  const bool pdl0 = cuda::pdl_enabled();
  for (int wg = 0; wg < 2; ++wg) {
    cuda::set_gemv_wgmma(wg == 1 ? 3 : 2);
    launch_down(0, st);
    CK(cudaStreamSynchronize(st));
    for (int pdl = 0; pdl < 2; ++pdl) {
      cuda::set_pdl_enabled_for_tests(pdl == 1);
      cuda::set_gemv_pdl(pdl);
      chain[wg][pdl] = time_graph(st, n, reps, [&](int i) {
        launch_routed(i, st);
        launch_down(i, st);
      });
      chain_both[wg][pdl] = time_graph(st, n, reps, [&](int i) {
        CK(cudaEventRecord(fork, st));
        CK(cudaStreamWaitEvent(st2, fork, 0));
        launch_shared(i, st2);
        launch_routed(i, st);
        launch_down(i, st);
        CK(cudaEventRecord(join, st2));
        CK(cudaStreamWaitEvent(st, join, 0));
      });
    }
  }
  cuda::set_pdl_enabled_for_tests(pdl0);
  cuda::set_gemv_pdl(-1);
  cuda::set_gemv_wgmma(2);
  const double shared_ms = time_graph(st, n, reps, [&](int i) { launch_shared(i, st); });
  cuda::set_gemv_wgmma(0);
  const int64_t b_both = cr.launch_bytes + cs.launch_bytes;
  const double read_r = read_floor_ms(st, n, reps, cr.launch_bytes, prop, seed),
               read_rs = read_floor_ms(st, n, reps, b_both, prop, seed);
  auto pct = [&](int64_t bytes, double ms) {
    return 100.0 * (static_cast<double>(bytes) / (ms * 1e-3) / 1e9) / copy_gbs;
  };
  std::printf("\nbeside (T = 1): routed gate/up MXFP4 %.1f MB on one stream, shared gate/up FP8 %.1f MB forked "
              "beside it; us per launch (%% of copy)\n",
              cr.launch_bytes / 1e6, cs.launch_bytes / 1e6);
  std::printf("  routed alone: stream %.2f (%.1f%%), wgmma %.2f (%.1f%%); read floor %.2f (%.1f%%)\n", alone[0] * 1e3,
              pct(cr.launch_bytes, alone[0]), alone[1] * 1e3, pct(cr.launch_bytes, alone[1]), read_r * 1e3,
              pct(cr.launch_bytes, read_r));
  std::printf("  shared alone: %.2f (%.1f%%)\n", shared_ms * 1e3, pct(cs.launch_bytes, shared_ms));
  std::printf("  both: routed stream %.2f (%.1f%%), routed wgmma %.2f (%.1f%%); read floor of both %.2f (%.1f%%)\n",
              both[0] * 1e3, pct(b_both, both[0]), both[1] * 1e3, pct(b_both, both[1]), read_rs * 1e3,
              pct(b_both, read_rs));
  std::printf("  with the routed down (%.1f MB, wgmma) after the gate/up, launches programmatic / plain: gate/up + down: "
              "routed stream %.2f / %.2f, routed wgmma %.2f / %.2f; with the shared gate/up forked beside: routed stream "
              "%.2f / %.2f, routed wgmma %.2f / %.2f\n",
              cd.launch_bytes / 1e6, chain[0][1] * 1e3, chain[0][0] * 1e3, chain[1][1] * 1e3, chain[1][0] * 1e3,
              chain_both[0][1] * 1e3, chain_both[0][0] * 1e3, chain_both[1][1] * 1e3, chain_both[1][0] * 1e3);
  std::fflush(stdout);
  CK(cudaEventDestroy(fork));
  CK(cudaEventDestroy(join));
  cuda::release_gemv_workspace(st2);
  CK(cudaStreamDestroy(st2));
  CK(cudaFree(xr));
  CK(cudaFree(xs));
  CK(cudaFree(orr));
  CK(cudaFree(os));
  CK(cudaFree(xd));
  CK(cudaFree(od));
  free_case(cr);
  free_case(cs);
  free_case(cd);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> tokens = {"1", "2", "4"}, formats = {"bf16", "fp8", "fp8f32", "mxfp4", "nvfp4"}, shapes;
  for (const Case& c : kCases) shapes.push_back(c.name);
  int reps = 15;
  bool chains = true, beside = false;
  std::string csv;
  if (argc % 2 == 0) {  // a flag without its value
    std::fprintf(stderr, "bench_gemv_probe: %s needs a value\n", argv[argc - 1]);
    return 2;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--tokens") tokens = split(v);
    else if (k == "--shapes") shapes = split(v);
    else if (k == "--formats") formats = split(v);
    else if (k == "--reps") reps = std::max(3, std::atoi(v.c_str()));
    else if (k == "--csv") csv = v;
    else if ((k == "--pdl" || k == "--beside") && v != "0" && v != "1") {
      std::fprintf(stderr, "%s takes 0 or 1, got '%s'\n", k.c_str(), v.c_str());
      return 2;
    } else if (k == "--pdl") chains = v == "1";
    else if (k == "--beside") beside = v == "1";
    else if (k == "--stream-mt") cuda::set_gemv_stream_mtiles(std::atoi(v.c_str()));
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  cuda::set_gemv_wgmma(0);  // "stream" is the streaming kernel; the wgmma line times linear_gemv_wgmma.cu
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cublasHandle_t cub;
  CKB(cublasCreate(&cub));
  CKB(cublasSetStream(cub, st));

  // Copy roofline: 1 GiB device-to-device, read + write bytes; the best of three ways.
  double copy_gbs = 0, memcpy_graph_gbs = 0, memcpy_eager_gbs = 0, copy_kernel_gbs = 0;
  {
    const size_t n = size_t{1} << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    fill(a, static_cast<int64_t>(n), 0, 7);
    for (int warm = 0; warm < 3; ++warm) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    const double g_ms = time_graph(st, 4, reps, [&](int) { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st)); });
    std::vector<double> ms;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int r = 0; r < reps; ++r) {
      CK(cudaEventRecord(e0, st));
      CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st));
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      float m = 0;
      CK(cudaEventElapsedTime(&m, e0, e1));
      ms.push_back(m);
    }
    std::sort(ms.begin(), ms.end());
    const double e_ms = ms[ms.size() / 2];
    const double k_ms = time_graph(st, 4, reps, [&](int) {
      copy_kernel<<<prop.multiProcessorCount * 8, 256, 0, st>>>(static_cast<const uint4*>(a), static_cast<uint4*>(b),
                                                                 static_cast<int64_t>(n / 16));
      CK(cudaGetLastError());
    });
    memcpy_graph_gbs = 2.0 * n / (g_ms * 1e-3) / 1e9;
    memcpy_eager_gbs = 2.0 * n / (e_ms * 1e-3) / 1e9;
    copy_kernel_gbs = 2.0 * n / (k_ms * 1e-3) / 1e9;
    copy_gbs = std::max({memcpy_graph_gbs, memcpy_eager_gbs, copy_kernel_gbs});
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaFree(a));
    CK(cudaFree(b));
  }
  std::printf("copy 1 GiB D2D (read + write): memcpy in a graph %.1f GB/s, eager %.1f GB/s, copy kernel %.1f GB/s\n",
              memcpy_graph_gbs, memcpy_eager_gbs, copy_kernel_gbs);
  const double empty_us = 1e3 * time_graph(st, 64, reps, [&](int) {
                            empty_kernel<<<1, 32, 0, st>>>();
                            CK(cudaGetLastError());
                          });
  std::printf("empty kernel in a graph: %.2f us per launch\n", empty_us);

  FILE* out_csv = csv.empty() ? nullptr : std::fopen(csv.c_str(), "w");
  if (out_csv)
    std::fprintf(out_csv,
                 "format,case,rows,k,n_z,T,bytes,fma_us,mma_us,stream_us,cublas_us,stream_gbs,stream_copy_ratio,"
                 "mma_copy_ratio,rel_l2_mma,rel_l2_stream,stream_same_bits,chain_fma_off_us,chain_fma_pdl_us,"
                 "chain_fma_gemv_pdl_us,chain_stream_off_us,chain_stream_pdl_us,chain_stream_gemv_pdl_us,"
                 "chain_stream_pdl_l2_us,small_off_us,small_pdl_us,pdl_same_bits,wgmma_us\n");
  std::printf("%-6s %-8s %2s %8s %8s %8s %9s %9s %8s %6s %6s %6s %8s %8s\n", "format", "case", "T", "MB", "fma_us",
              "mma_us", "stream_us", "cublas_us", "str_GB/s", "%copy", "x_mma", "x_cub", "l2_mma", "l2_str");
  uint32_t seed = 1;
  bool ok = true;
  for (const Case& c : kCases) {
    if (!has(shapes, c.name)) continue;
    const bool head = std::string(c.name) == "head";
    for (const std::string& ts : tokens) {
      const int64_t T = std::atoll(ts.c_str());
      if (T < 1 || T > (c.moe ? 64 : 16)) continue;  // MoE up to 64 tokens (a batched step)
      // cuBLAS BF16 at the same shape (linear and grouped cases), its own weight copies.
      double cub_ms = 0;
      void* x = nullptr;
      CK(cudaMalloc(&x, static_cast<size_t>(x_elems(c, T) * 2)));
      fill(x, x_elems(c, T) * 2, 5, seed++);  // waits: the checks below run on `st`
      void *o, *o_ref, *o_new;
      CK(cudaMalloc(&o, static_cast<size_t>(out_elems(c, T) * 4)));
      CK(cudaMalloc(&o_ref, static_cast<size_t>(out_elems(c, T) * 4)));
      CK(cudaMalloc(&o_new, static_cast<size_t>(out_elems(c, T) * 4)));
      if (c.moe == 0) {
        CaseData bf = make_case(c, WFmt::kBF16, T, seed);
        const int n = bf.launches, copies = static_cast<int>(bf.ws.size());
        const float alpha = 1.0f, beta = 0.0f;
        // out[t, z, :] = W_z x[t, z, :]: column-major C_z (rows x T, ld n_z*rows) = W_z' (k x rows)^T x_z' (k x T).
        cub_ms = time_graph(st, n, reps, [&](int i) {
          CKB(cublasGemmStridedBatchedEx(
              cub, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(c.rows), static_cast<int>(T), static_cast<int>(c.k),
              &alpha, bf.ws[i % copies].w, CUDA_R_16BF, static_cast<int>(c.k), c.rows * c.k, x, CUDA_R_16BF,
              static_cast<int>(c.n_z * c.k), c.k, &beta, o, CUDA_R_16BF, static_cast<int>(c.n_z * c.rows), c.rows,
              c.n_z, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        });
        free_case(bf);
      }
      for (const Format& fm : kFormats) {
        if (!has(formats, fm.name)) continue;
        if (head && fm.fmt != WFmt::kBF16 && fm.fmt != WFmt::kFp8E8M0) continue;
        CaseData cd = make_case(c, fm.fmt, T, seed);
        const int gt = cd.grid_tiles, n = cd.launches;
        // Checks: mma and stream against fma on launch 0, f32 outputs poisoned with NaN first.
        auto run_f32 = [&](int variant, void* o32) {
          fill_value(static_cast<float*>(o32), out_elems(c, T), NAN);
          const cuda::GemmArgs ga = case_args(c, cd, 0, x, o32, T, false);
          if (variant == 0) {
            cuda::launch_gemv_fma(ga, true, gt, st);
          } else {
            cuda::set_gemv_kernel(variant == 1 ? cuda::GemvKernel::kMma : cuda::GemvKernel::kStream);
            cuda::launch_gemv(ga, true, gt, st);
          }
          CK(cudaStreamSynchronize(st));
          std::vector<float> v(static_cast<size_t>(out_elems(c, T)));
          CK(cudaMemcpy(v.data(), o32, v.size() * 4, cudaMemcpyDeviceToHost));
          return v;
        };
        const std::vector<float> ref = run_f32(0, o_ref), got_m = run_f32(1, o_new), got_s = run_f32(2, o_new),
                                 got_s2 = run_f32(2, o_new);
        bool fin_m = true, fin_s = true;
        const double err_m = rel_l2(got_m, ref, fin_m), err_s = rel_l2(got_s, ref, fin_s);
        const bool same = std::memcmp(got_s.data(), got_s2.data(), got_s.size() * 4) == 0;
        const bool pass = fin_m && fin_s && err_m < 1e-4 && err_s < 1e-4 && same;
        ok = ok && pass;

        // PDL chains (see the file comment): per launch pair [small kernel, GEMV launch i].
        // Variants (kernel, PDL mode, L2 prefetch): PDL mode 0 off, 1 every launch, 2 the GEMV
        // launches alone (set_gemv_pdl). Checked first for each variant with PDL: the graph of
        // [small, GEMV launch 0] with F32 output has the bits of the plain launch (ref / got_s).
        struct ChainVariant {
          int kernel, pdl;  // kernel 0 fma, 1 stream
          bool l2;
        };
        const ChainVariant kChain[] = {{0, 0, false}, {0, 1, false}, {0, 2, false},
                                       {1, 0, false}, {1, 1, false}, {1, 2, false}, {1, 1, true}};
        constexpr int kNumChain = static_cast<int>(sizeof kChain / sizeof kChain[0]);
        const bool pdl0 = cuda::pdl_enabled();
        double chain[kNumChain] = {}, small_ms[2] = {0, 0};
        bool pdl_same = true;
        if (chains) {
          auto set_variant = [&](const ChainVariant& v) {
            cuda::set_pdl_enabled_for_tests(v.pdl == 1);
            cuda::set_gemv_pdl(v.pdl >= 1 ? 1 : 0);
            cuda::set_gemv_stream_l2_prefetch(v.l2);
            cuda::set_gemv_kernel(v.kernel == 0 ? cuda::GemvKernel::kDefault : cuda::GemvKernel::kStream);
          };
          auto reset = [&] {
            cuda::set_pdl_enabled_for_tests(pdl0);
            cuda::set_gemv_pdl(-1);
            cuda::set_gemv_stream_l2_prefetch(false);
            cuda::set_gemv_kernel(cuda::GemvKernel::kDefault);
          };
          auto launch_gemv_i = [&](int kernel, int i, void* out, bool out_bf16) {
            const cuda::GemmArgs ga = case_args(c, cd, i, x, out, T, out_bf16);
            if (kernel == 0) {
              cuda::launch_gemv_fma(ga, true, gt, st);
            } else {
              cuda::launch_gemv(ga, true, gt, st);  // kStream (set_variant)
            }
          };
          for (const ChainVariant& v : kChain) {
            if (v.pdl == 0) continue;
            fill_value(static_cast<float*>(o_new), out_elems(c, T), NAN);
            set_variant(v);
            time_graph(st, 1, 1, [&](int) {
              launch_small_step(o_new, false, out_elems(c, T), x, x_elems(c, T), st);
              launch_gemv_i(v.kernel, 0, o_new, false);
            });
            reset();
            std::vector<float> got(static_cast<size_t>(out_elems(c, T)));
            CK(cudaMemcpy(got.data(), o_new, got.size() * 4, cudaMemcpyDeviceToHost));
            const std::vector<float>& want = v.kernel == 0 ? ref : got_s;
            pdl_same = pdl_same && std::memcmp(got.data(), want.data(), got.size() * 4) == 0;
          }
          for (int j = 0; j < kNumChain; ++j) {
            set_variant(kChain[j]);
            chain[j] = time_graph(st, n, reps, [&](int i) {
              launch_small_step(o, true, out_elems(c, T), x, x_elems(c, T), st);
              launch_gemv_i(kChain[j].kernel, i, o, true);
            });
          }
          for (int pdl = 0; pdl < 2; ++pdl) {
            cuda::set_pdl_enabled_for_tests(pdl == 1);
            small_ms[pdl] = time_graph(st, n, reps, [&](int) {
              launch_small_step(o, true, out_elems(c, T), x, x_elems(c, T), st);
            });
          }
          reset();
          ok = ok && pdl_same;
        }

        const double fma_ms = time_graph(st, n, reps, [&](int i) {
          cuda::launch_gemv_fma(case_args(c, cd, i, x, o, T, true), true, gt, st);
        });
        double ms[2];
        for (int v = 0; v < 2; ++v) {
          cuda::set_gemv_kernel(v == 0 ? cuda::GemvKernel::kMma : cuda::GemvKernel::kStream);
          ms[v] = time_graph(st, n, reps, [&](int i) { cuda::launch_gemv(case_args(c, cd, i, x, o, T, true), true, gt, st); });
        }
        cuda::set_gemv_kernel(cuda::GemvKernel::kDefault);
        const double bytes = static_cast<double>(cd.launch_bytes);
        auto gbs = [&](double m) { return bytes / (m * 1e-3) / 1e9; };
        // The same bytes read by read_kernel from n buffers in turn (L2 cold as for the GEMVs).
        const double read_ms = read_floor_ms(st, n, reps, cd.launch_bytes, prop, seed);
        // The streaming kernel's loads alone (pattern_kernel): as it lays them out with 2 and 4
        // load groups in flight, and with 2 as if each warp's bytes were contiguous.
        double pat_ms[3] = {0, 0, 0};
        cuda::GemvStreamShape shp;
        const cuda::GemmArgs ga0 = case_args(c, cd, 0, x, o, T, true);
        const bool pat = cuda::gemv_stream_shape(ga0, gt, shp);
        if (pat) {
          uint32_t* sink;
          CK(cudaMalloc(&sink, 4));
          cuda::dispatch_wfmt(fm.fmt, [&](auto fc) {
            constexpr WFmt F = decltype(fc)::value;
            if constexpr (cuda::WeightDecoder<F>::kMma) {
              const dim3 grid(static_cast<unsigned>(shp.blocks_x), static_cast<unsigned>(gt),
                              static_cast<unsigned>(ga0.n_z));
              const unsigned threads = static_cast<unsigned>(32 * shp.warps);
              auto time_pattern = [&](auto kernel) {
                return time_graph(st, n, reps, [&](int i) {
                  kernel<<<grid, threads, 0, st>>>(case_args(c, cd, i, x, o, T, true), shp, sink);
                });
              };
              pat_ms[0] = time_pattern(pattern_kernel<F, 2, false>);
              pat_ms[1] = time_pattern(pattern_kernel<F, 4, false>);
              pat_ms[2] = time_pattern(pattern_kernel<F, 2, true>);
              CK(cudaGetLastError());
            }
          });
          CK(cudaFree(sink));
        }
        // The one-token GEMV on wgmma (linear_gemv_wgmma.cu; experts and MXFP4 switched on here)
        // where it applies: checked against fma (its FP8 products sum in the tensor core with
        // ~14-bit precision for 128 k at a time: rel_l2 ~1e-4) and twice for equal bits, then timed.
        // The columns above leave it off.
        double wg_us = 0;  // 0: the wgmma kernel does not take this case
        {
          cuda::set_gemv_wgmma(3);  // every expert launch too
          const cuda::GemmArgs g0 = case_args(c, cd, 0, x, o_new, T, false);
          if (cuda::gemv_wgmma_applies(g0, true, gt)) {
            std::vector<float> r[2];
            for (int k = 0; k < 2; ++k) {
              fill_value(static_cast<float*>(o_new), out_elems(c, T), NAN);
              cuda::launch_gemv_wgmma(g0, true, gt, st);
              CK(cudaStreamSynchronize(st));
              r[k].resize(static_cast<size_t>(out_elems(c, T)));
              CK(cudaMemcpy(r[k].data(), o_new, r[k].size() * 4, cudaMemcpyDeviceToHost));
            }
            bool fin = true;
            const double err = rel_l2(r[0], ref, fin);
            const bool same_wg = std::memcmp(r[0].data(), r[1].data(), r[0].size() * 4) == 0;
            const double wg_ms = time_graph(st, n, reps, [&](int i) {
              cuda::launch_gemv_wgmma(case_args(c, cd, i, x, o, T, true), true, gt, st);
            });
            wg_us = wg_ms * 1e3;
            const bool wg_pass = fin && err < 1e-3 && same_wg;
            ok = ok && wg_pass;
            std::printf("  wgmma: %.2f us (%.0f GB/s, %.1f%% of copy, %.2fx stream), rel_l2 %.1e%s\n", wg_ms * 1e3,
                        gbs(wg_ms), 100.0 * gbs(wg_ms) / copy_gbs, ms[1] / wg_ms, err,
                        wg_pass ? "" : (same_wg ? "  CHECK FAILED" : "  CHECK FAILED (not bit-identical)"));
          }
          cuda::set_gemv_wgmma(0);
        }
        char cub[32] = "-", xcub[32] = "-";
        if (c.moe == 0) {
          std::snprintf(cub, sizeof cub, "%.2f", cub_ms * 1e3);
          std::snprintf(xcub, sizeof xcub, "%.2fx", cub_ms / ms[1]);
        }
        std::printf("%-6s %-8s %2lld %8.2f %8.2f %8.2f %9.2f %9s %8.0f %5.1f%% %5.2fx %6s %8.1e %8.1e%s\n", fm.name,
                    c.name, static_cast<long long>(T), bytes / 1e6, fma_ms * 1e3, ms[0] * 1e3, ms[1] * 1e3, cub,
                    gbs(ms[1]), 100.0 * gbs(ms[1]) / copy_gbs, ms[0] / ms[1], xcub, err_m, err_s,
                    pass ? "" : (same ? "  CHECK FAILED" : "  CHECK FAILED (stream not bit-identical)"));
        std::printf("  read floor: the same bytes by a plain read kernel %.2f us (%.0f GB/s, %.1f%% of copy); stream "
                    "at %.1f%% of it\n",
                    read_ms * 1e3, gbs(read_ms), 100.0 * gbs(read_ms) / copy_gbs, 100.0 * read_ms / ms[1]);
        if (pat)
          std::printf("  pattern: the stream kernel's loads alone (%d warps/block, seg %d of %d k blocks) %.2f us, "
                      "4 groups in flight %.2f, contiguous per warp %.2f\n",
                      shp.warps, shp.seg, shp.n_kb, pat_ms[0] * 1e3, pat_ms[1] * 1e3, pat_ms[2] * 1e3);
        if (chains)
          std::printf("  pdl chain [1-block kernel + gemv] us: fma off %.2f all %.2f gemv %.2f (saved %.2f / %.2f) | "
                      "stream off %.2f all %.2f gemv %.2f (saved %.2f / %.2f) all+L2 %.2f | 1-block alone off %.2f "
                      "all %.2f%s\n",
                      chain[0] * 1e3, chain[1] * 1e3, chain[2] * 1e3, (chain[0] - chain[1]) * 1e3,
                      (chain[0] - chain[2]) * 1e3, chain[3] * 1e3, chain[4] * 1e3, chain[5] * 1e3,
                      (chain[3] - chain[4]) * 1e3, (chain[3] - chain[5]) * 1e3, chain[6] * 1e3, small_ms[0] * 1e3,
                      small_ms[1] * 1e3, pdl_same ? "" : "  CHECK FAILED (PDL chain not bit-identical)");
        std::fflush(stdout);
        if (out_csv)
          std::fprintf(out_csv,
                       "%s,%s,%lld,%lld,%d,%lld,%.0f,%.3f,%.3f,%.3f,%.3f,%.1f,%.4f,%.4f,%.3e,%.3e,%d,%.3f,%.3f,%.3f,"
                       "%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%d,%.3f\n",
                       fm.name, c.name, static_cast<long long>(c.rows), static_cast<long long>(c.k), c.n_z,
                       static_cast<long long>(T), bytes, fma_ms * 1e3, ms[0] * 1e3, ms[1] * 1e3,
                       c.moe ? 0.0 : cub_ms * 1e3, gbs(ms[1]), gbs(ms[1]) / copy_gbs, gbs(ms[0]) / copy_gbs, err_m,
                       err_s, same ? 1 : 0, chain[0] * 1e3, chain[1] * 1e3, chain[2] * 1e3, chain[3] * 1e3,
                       chain[4] * 1e3, chain[5] * 1e3, chain[6] * 1e3, small_ms[0] * 1e3, small_ms[1] * 1e3,
                       pdl_same ? 1 : 0, wg_us);
        free_case(cd);
      }
      CK(cudaFree(x));
      CK(cudaFree(o));
      CK(cudaFree(o_ref));
      CK(cudaFree(o_new));
    }
  }
  if (out_csv) std::fclose(out_csv);
  if (beside) run_beside(st, reps, prop, copy_gbs, seed);
  CKB(cublasDestroy(cub));
  CK(cudaStreamDestroy(st));
  std::printf("copy %.1f GB/s, empty launch %.2f us; checks %s\n", copy_gbs, empty_us, ok ? "passed" : "FAILED");
  return ok ? 0 : 1;
}
