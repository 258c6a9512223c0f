// moe_experts and swiglu_mlp (ops/backend.h, spec §3.4). moe_experts runs every selected expert
// in a fixed number of launches, whatever E and the routing:
//   plan      one block: counts tokens per expert and sorts the (token, slot) occurrences by
//             expert (stable: ascending t*K + k inside an expert), building the row tiles of
//             the grouped projections (moe_plan_kernel; up to 32 occurrences, a decode step,
//             one warp with one lane per occurrence: moe_plan_warp_kernel, the same outputs);
//             one token (batch-1 decode) needs none: its K rows stay in slot order as one-row
//             tiles whose expert the GEMVs read from idx (GemmArgs::row_problem);
//   w1, w3    one grouped projection (z = 0: w1, z = 1: w3) over (expert, row tile), reading the
//             expert's weights through a device table of WeightDescs (cached per experts vector);
//   swiglu    h = silu(min(g, limit)) * clamp(u, -limit, limit); at decode sizes the w1/w3
//             launch stores h itself (gate/up pairs, GemmArgs::swiglu_pairs) where it can;
//   w2        the grouped projection again;
//   combine   out[t] = sum over the token's slots in ascending expert id of weight * y: per-row
//             partial results, then a fixed-order sum (no float atomics: deterministic); grid
//             (T, hidden slices of 1024), 8 elements per thread.
// The linear policy applies per expert weight (W8A8 for FP8/MXFP4 experts, W4A4 for NVFP4
// experts with each expert's own input_scale): the transform runs on the expert-sorted rows.
// A duplicated expert id counts once per occurrence. Intermediates use the activation dtype.
// Prefill (many rows per expert, BF16, W16 policy, not capturing): the projections go through
// exact BF16 copies of the experts' weights and cuBLAS instead (moe_prefill below); the plan and
// the combine are shared.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/linear_dequant.cuh"
#include "backend/cuda/linear_kernels.cuh"
#include "backend/cuda/op_errors.cuh"
#include "backend/cuda/op_errors.h"
#include "core/log.h"

namespace clawmine::backend::cuda {
namespace {

constexpr int kPlanThreads = 256, kPlanWarps = kPlanThreads / 32;
constexpr int kMaxExperts = 1024;  // plan kernel shared memory: (kPlanWarps + 2) * E ints
constexpr int kMaxTopK = 64;
// Tokens up to which swiglu_mlp runs gate and up as one paired GEMV, and moe_experts GEMV tiles with
// F32 activations or an activation transform.
constexpr int64_t kGemvMaxTokens = 32;
// Tokens up to which moe_experts runs expert-sorted GEMV tiles of up to 16 rows (each tile reads
// its expert's weights once) instead of 64-row GEMM tiles or the BF16 copies, with BF16
// activations and no activation transform (the path measured). Measured on an H100
// (PERFORMANCE.md, eighteenth session, V4-Flash geometry, 64 experts top-6): first tokens of
// 128-token prompts 52 ms against 110 with GEMM tiles from 33 tokens, 512: 108 against 143,
// 1024: 188 against 198 through the copies (which run from 64 rows per expert on average, here
// from 683 tokens, once past this limit); 1536: 237 through the copies against 270.
constexpr int64_t kMoeGemvMaxTokens = 1024;
int64_t g_moe_gemv_max = 0;  // set_moe_gemv_max_tokens: <= 0 the environment's, else kMoeGemvMaxTokens
int64_t moe_gemv_max_tokens() {
  static const int64_t env = env_count("CLAWMINE_MOE_GEMV_MAX_TOKENS", 1, int64_t{1} << 20);
  return g_moe_gemv_max > 0 ? g_moe_gemv_max : env > 0 ? env : kMoeGemvMaxTokens;
}
int g_moe_tile_cap = 0;  // set_moe_gemv_tile_rows: <= 0 the environment's, else kGemvMaxTileRows
bool tile_cap_ok(int64_t rows) { return rows >= 1 && rows <= kGemvMaxTileRows && (rows & (rows - 1)) == 0; }
int moe_gemv_tile_cap() {
  static const int env = [] {
    const int64_t r = env_count("CLAWMINE_MOE_GEMV_TILE_ROWS", 1, kGemvMaxTileRows);
    if (r != 0 && !tile_cap_ok(r))
      throw Error(str_cat("CLAWMINE_MOE_GEMV_TILE_ROWS=", r, ": expected a power of two up to ", kGemvMaxTileRows));
    return static_cast<int>(r);
  }();
  return g_moe_tile_cap > 0 ? g_moe_tile_cap : env > 0 ? env : kGemvMaxTileRows;
}
// op_errors.cuh codes 1-3 are taken; the message for this one is described in the report to the
// owner of op_errors.cu: v = {expert id, token, slot, expert count}.
constexpr unsigned long long kOpErrorMoeExpert = 4;

// ---- the per-experts-vector descriptor table ---------------------------------------------------
struct MoeTable {
  std::vector<const void*> key;  // fingerprint: every view pointer and trust flag of every expert
  int64_t D = 0, I = 0;
  std::vector<WeightDesc> host;  // [E][3]: w1, w3, w2
  TensorView dev;                // device copy (long-lived, released on rebuild)
  uint32_t fmt13 = 0, fmt2 = 0;  // formats present among w1/w3 and among w2 (bit = WFmt)
  bool vec13 = true, vec2 = true;
  std::string nvfp4_without_input_scale;  // first NVFP4 projection lacking input_scale (for static)
};

void fingerprint(const ExpertWeights* experts, int64_t E, std::vector<const void*>& key) {
  key.clear();
  key.reserve(static_cast<size_t>(E) * 24);
  auto value = [](uint64_t v) { return reinterpret_cast<const void*>(static_cast<uintptr_t>(v)); };
  for (int64_t e = 0; e < E; ++e)
    for (const LinearWeight* w : {&experts[e].w1, &experts[e].w3, &experts[e].w2}) {
      // Addresses alone are not enough: freed device memory is reused by the arena.
      key.push_back(value(static_cast<uint64_t>(w->format) | static_cast<uint64_t>(w->weight.dtype) << 8 |
                          static_cast<uint64_t>(w->scale.dtype) << 16));
      key.push_back(value(static_cast<uint64_t>(w->out_features)));
      key.push_back(value(static_cast<uint64_t>(w->in_features)));
      key.push_back(w->weight.data);
      key.push_back(w->scale.data);
      key.push_back(w->weight_scale_2.data);
      key.push_back(w->input_scale.data);
      key.push_back(reinterpret_cast<const void*>(static_cast<uintptr_t>(w->input_scale_trusted) + 1));
    }
}

void check_expert(const ExpertWeights& w, int64_t D, const char* op) {
  for (const LinearWeight* lw : {&w.w1, &w.w3, &w.w2})
    if (!lw->present()) throw Error(str_cat("cuda ", op, ": expert weight ", lw->name, " is missing"));
  if (w.w1.in_features != D || w.w3.in_features != D || w.w3.out_features != w.w1.out_features ||
      w.w2.in_features != w.w1.out_features || w.w2.out_features != D)
    throw Error(str_cat("cuda ", op, ": expert ", w.w1.name, "/", w.w3.name, "/", w.w2.name, " shapes [",
                        w.w1.out_features, ", ", w.w1.in_features, "], [", w.w3.out_features, ", ", w.w3.in_features,
                        "], [", w.w2.out_features, ", ", w.w2.in_features, "] do not fit hidden size ", D));
}

// The table of experts[0, E) (moe_experts: the routed experts; swiglu_mlp: its one expert),
// cached in the backend's op state under the array's address and rebuilt when the fingerprint
// changes. `op` names the caller in errors.
const MoeTable& moe_table(CudaBackend& be, const ExpertWeights* experts, int64_t E, int64_t D, const char* op) {
  MoeTable* tab = be.op_state<MoeTable>(experts);
  std::vector<const void*> key;
  fingerprint(experts, E, key);
  if (tab->D == D && tab->key == key) return *tab;

  MoeTable t;
  t.key = std::move(key);
  t.D = D;
  t.I = experts[0].w1.out_features;
  t.host.resize(static_cast<size_t>(E * 3));
  t.fmt13 = t.fmt2 = 0;
  for (int64_t e = 0; e < E; ++e) {
    const ExpertWeights& ew = experts[e];
    check_expert(ew, D, op);
    if (ew.w1.out_features != t.I)
      throw Error(str_cat("cuda ", op, ": expert ", ew.w1.name, " has width ", ew.w1.out_features, ", expert ",
                          experts[0].w1.name, " has ", t.I, " (the grouped kernels need one width)"));
    const LinearWeight* ws[3] = {&ew.w1, &ew.w3, &ew.w2};
    for (int j = 0; j < 3; ++j) {
      const WeightDesc d = make_weight_desc(*ws[j], op);
      t.host[e * 3 + j] = d;
      (j < 2 ? t.fmt13 : t.fmt2) |= 1u << d.fmt;
      (j < 2 ? t.vec13 : t.vec2) &= weight_rows_aligned(d);
      if (static_cast<WFmt>(d.fmt) == WFmt::kNvfp4 && d.input_scale == nullptr && t.nvfp4_without_input_scale.empty())
        t.nvfp4_without_input_scale = ws[j]->name;
    }
  }
  const int64_t bytes = E * 3 * static_cast<int64_t>(sizeof(WeightDesc));
  if (!tab->dev.empty() && tab->dev.numel() == bytes) {
    t.dev = tab->dev;
  } else {
    if (!tab->dev.empty()) be.release(tab->dev);
    tab->dev = {};
    t.dev = be.allocate(DType::kU8, {bytes});
  }
  be.upload(t.host.data(), t.dev);
  *tab = std::move(t);
  return *tab;
}

// ---- plan ------------------------------------------------------------------------------------
// One block. Occurrence f = t*K + k (N = T*K of them) is split into kPlanWarps contiguous
// segments; counts per (segment, expert) give every occurrence its sorted row
//   pos = offset[e] + (occurrences of e in earlier segments) + (earlier ones in its segment),
// so rows of an expert are contiguous and in ascending f. Outputs: row_token/row_expert per
// sorted row (rows past the valid occurrences: token 0, expert -1), pos_of per occurrence
// (-1: invalid id, recorded as an op error), the tiles {expert, first row, rows} of at most
// tile_rows rows, experts ascending, and (when counts is not null) the rows of each expert.
__global__ void __launch_bounds__(kPlanThreads)
    moe_plan_kernel(const int32_t* __restrict__ idx, int64_t N, int K, int E, int tile_rows, int max_tiles,
                    int32_t* __restrict__ row_token, int32_t* __restrict__ row_expert, int32_t* __restrict__ pos_of,
                    int4* __restrict__ tiles, int32_t* __restrict__ n_tiles, int32_t* __restrict__ counts,
                    OpErrorRecord* err) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ int32_t sm[];
  int32_t* seg = sm;                       // [kPlanWarps][E]: counts, then running bases
  int32_t* total = sm + kPlanWarps * E;    // [E]
  int32_t* offset = total + E;             // [E]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t seg_len = (N + kPlanWarps - 1) / kPlanWarps;
  const int64_t f_begin = min(N, warp * seg_len), f_end = min(N, (warp + 1) * seg_len);

  for (int i = tid; i < kPlanWarps * E; i += kPlanThreads) seg[i] = 0;
  for (int64_t i = tid; i < N; i += kPlanThreads) {  // rows past the valid ones (invalid ids) stay unused
    row_token[i] = 0;
    row_expert[i] = -1;
  }
  __syncthreads();
  for (int64_t f = f_begin + lane; f < f_end; f += 32) {
    const int e = idx[f];
    if (e >= 0 && e < E) atomicAdd(&seg[warp * E + e], 1);  // integer counts: order-free
  }
  __syncthreads();
  for (int e = tid; e < E; e += kPlanThreads) {
    int s = 0;
    for (int w = 0; w < kPlanWarps; ++w) s += seg[w * E + e];
    total[e] = s;
    if (counts) counts[e] = s;
  }
  __syncthreads();
  if (tid == 0) {
    int run = 0, nt = 0;
    for (int e = 0; e < E; ++e) {
      offset[e] = run;
      for (int r = 0; r < total[e]; r += tile_rows) {
        if (nt < max_tiles) tiles[nt] = make_int4(e, run + r, min(tile_rows, total[e] - r), 0);
        ++nt;
      }
      run += total[e];
    }
    *n_tiles = min(nt, max_tiles);  // nt <= max_tiles by the host's bound
  }
  __syncthreads();
  for (int e = tid; e < E; e += kPlanThreads) {
    int run = offset[e];
    for (int w = 0; w < kPlanWarps; ++w) {
      const int c = seg[w * E + e];
      seg[w * E + e] = run;
      run += c;
    }
  }
  __syncthreads();
  for (int64_t f0 = f_begin; f0 < f_end; f0 += 32) {
    const int64_t f = f0 + lane;
    const bool in = f < f_end;
    const int e = in ? idx[f] : -1;
    const bool ok = in && e >= 0 && e < E;
    const unsigned peers = __match_any_sync(0xffffffffu, ok ? e : -1);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (ok) {
      const int pos = seg[warp * E + e] + rank;
      row_token[pos] = static_cast<int32_t>(f / K);
      row_expert[pos] = e;
      pos_of[f] = pos;
    } else if (in) {
      pos_of[f] = -1;
      report_op_error(err, kOpErrorMoeExpert, e, f / K, f % K, E);
    }
    __syncwarp();
    if (ok && rank == 0) seg[warp * E + e] += __popc(peers);
    __syncwarp();
  }
}

// The plan for many occurrences (prefill): the same outputs as moe_plan_kernel from two
// launches over chunks of `chunk` occurrences (a multiple of 32; chunk c = [c*chunk, ...)):
//   moe_plan_count_kernel    block c writes its chunk's per-expert counts chunk_counts[c][E];
//   moe_plan_scatter_kernel  block c sums the counts of all chunks (total[e]) and of chunks
//                            before c (pre[e]), scans total over experts (offset[e]), and places
//                            its chunk exactly as the one-block kernel places a warp's segment:
//                            pos = offset[e] + pre[e] + (occurrences of e in earlier warp
//                            segments of the chunk) + (earlier ones in its 32-occurrence step).
// Rows of an expert are so in ascending f, as in moe_plan_kernel (bit-identical outputs). Block
// 0 also writes counts, the tiles and n_tiles; every block fills the rows past the valid ones
// (token 0, expert -1) among its chunk's row indices. Integer counts only: order-free.
constexpr int kPlanMinChunk = 1024, kPlanMaxChunks = 256;
constexpr int64_t kPlanMultiMinN = 4096;  // the one-block kernel below this many occurrences

__global__ void __launch_bounds__(kPlanThreads)
    moe_plan_count_kernel(const int32_t* __restrict__ idx, int64_t N, int E, int64_t chunk,
                          int32_t* __restrict__ chunk_counts) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ int32_t sm[];  // [E]
  for (int e = threadIdx.x; e < E; e += kPlanThreads) sm[e] = 0;
  __syncthreads();
  const int64_t f0 = blockIdx.x * chunk, f1 = min(N, f0 + chunk);
  for (int64_t f = f0 + threadIdx.x; f < f1; f += kPlanThreads) {
    const int e = idx[f];
    if (e >= 0 && e < E) atomicAdd(&sm[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kPlanThreads) chunk_counts[static_cast<int64_t>(blockIdx.x) * E + e] = sm[e];
}

__global__ void __launch_bounds__(kPlanThreads)
    moe_plan_scatter_kernel(const int32_t* __restrict__ idx, int64_t N, int K, int E, int64_t chunk,
                            const int32_t* __restrict__ chunk_counts, int tile_rows, int max_tiles,
                            int32_t* __restrict__ row_token, int32_t* __restrict__ row_expert,
                            int32_t* __restrict__ pos_of, int4* __restrict__ tiles, int32_t* __restrict__ n_tiles,
                            int32_t* __restrict__ counts, OpErrorRecord* err) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ int32_t sm[];
  int32_t* seg = sm;                     // [kPlanWarps][E]: counts, then running bases
  int32_t* total = sm + kPlanWarps * E;  // [E]
  int32_t* pre = total + E;              // [E]: occurrences of e in earlier chunks
  int32_t* offset = pre + E;             // [E]: valid occurrences of lower experts
  int32_t* tile0 = total;                // [E]: tiles of lower experts (replaces total after the scan)
  int32_t* scalars = offset + E;         // [2]: valid occurrences, tiles
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c = blockIdx.x, n_chunks = gridDim.x;
  const int64_t c0 = c * chunk, c1 = min(N, c0 + chunk);
  const int64_t seg_len = (c1 - c0 + kPlanWarps - 1) / kPlanWarps;
  const int64_t f_begin = min(c1, c0 + warp * seg_len), f_end = min(c1, c0 + (warp + 1) * seg_len);

  for (int i = tid; i < kPlanWarps * E; i += kPlanThreads) seg[i] = 0;
  for (int e = tid; e < E; e += kPlanThreads) {
    int before = 0, after = 0;
#pragma unroll 8
    for (int b = 0; b < c; ++b) before += chunk_counts[static_cast<int64_t>(b) * E + e];
#pragma unroll 8
    for (int b = c; b < n_chunks; ++b) after += chunk_counts[static_cast<int64_t>(b) * E + e];
    pre[e] = before;
    total[e] = before + after;
  }
  __syncthreads();
  for (int64_t f = f_begin + lane; f < f_end; f += 32) {
    const int e = idx[f];
    if (e >= 0 && e < E) atomicAdd(&seg[warp * E + e], 1);
  }
  if (tid == 0) {
    int run = 0, nt = 0;
    for (int e = 0; e < E; ++e) {
      const int n = total[e];
      offset[e] = run;
      tile0[e] = nt;
      nt += (n + tile_rows - 1) / tile_rows;
      run += n;
    }
    scalars[0] = run;
    scalars[1] = nt;
  }
  __syncthreads();
  for (int e = tid; e < E; e += kPlanThreads) {
    int run = offset[e] + pre[e];
    for (int w = 0; w < kPlanWarps; ++w) {
      const int n = seg[w * E + e];
      seg[w * E + e] = run;
      run += n;
    }
    if (c == 0) {
      const int n = (e + 1 < E ? offset[e + 1] : scalars[0]) - offset[e];
      if (counts) counts[e] = n;
      for (int r = 0, nt = tile0[e]; r < n; r += tile_rows, ++nt)
        if (nt < max_tiles) tiles[nt] = make_int4(e, offset[e] + r, min(tile_rows, n - r), 0);
    }
  }
  if (c == 0 && tid == 0) *n_tiles = min(scalars[1], max_tiles);  // scalars[1] <= max_tiles by the host's bound
  __syncthreads();
  for (int64_t i = max(c0, static_cast<int64_t>(scalars[0])) + tid; i < c1; i += kPlanThreads) {
    row_token[i] = 0;  // rows past the valid ones (invalid ids) stay unused
    row_expert[i] = -1;
  }
  for (int64_t f0 = f_begin; f0 < f_end; f0 += 32) {
    const int64_t f = f0 + lane;
    const bool in = f < f_end;
    const int e = in ? idx[f] : -1;
    const bool ok = in && e >= 0 && e < E;
    const unsigned peers = __match_any_sync(0xffffffffu, ok ? e : -1);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (ok) {
      const int pos = seg[warp * E + e] + rank;
      row_token[pos] = static_cast<int32_t>(f / K);
      row_expert[pos] = e;
      pos_of[f] = pos;
    } else if (in) {
      pos_of[f] = -1;
      report_op_error(err, kOpErrorMoeExpert, e, f / K, f % K, E);
    }
    __syncwarp();
    if (ok && rank == 0) seg[warp * E + e] += __popc(peers);
    __syncwarp();
  }
}

// The plan for N <= 32 occurrences (every decode step): one warp, lane f = occurrence f. Its
// sorted row is pos = (valid occurrences of lower experts) + (earlier occurrences of its own
// expert); the lowest lane of an expert ("leader", pos = the expert's first row) writes the
// expert's tiles at tile index (tiles of lower experts). Outputs equal moe_plan_kernel's.
__global__ void __launch_bounds__(32)
    moe_plan_warp_kernel(const int32_t* __restrict__ idx, int N, int K, int E, int tile_rows, int max_tiles,
                         int32_t* __restrict__ row_token, int32_t* __restrict__ row_expert,
                         int32_t* __restrict__ pos_of, int4* __restrict__ tiles, int32_t* __restrict__ n_tiles,
                         int32_t* __restrict__ counts, OpErrorRecord* err) {
  pdl_wait();
  pdl_trigger();
  const int lane = threadIdx.x;
  const bool in = lane < N;
  const int e = in ? idx[lane] : -1;
  const bool ok = in && e >= 0 && e < E;
  const int key = ok ? e : 0x7fffffff;  // invalid ids and idle lanes sort after every expert
  const unsigned peers = __match_any_sync(0xffffffffu, key);
  const unsigned below_me = (1u << lane) - 1u;
  const bool leader = ok && (peers & below_me) == 0;
  const int cnt = __popc(peers);
  const int my_tiles = leader ? (cnt + tile_rows - 1) / tile_rows : 0;
  int lower = 0, tile0 = 0;  // valid occurrences and tiles of lower experts
  for (int j = 0; j < N; ++j) {
    const int kj = __shfl_sync(0xffffffffu, key, j), tj = __shfl_sync(0xffffffffu, my_tiles, j);
    if (kj < key) {
      ++lower;
      tile0 += tj;
    }
  }
  const int n_valid = __popc(__ballot_sync(0xffffffffu, ok));
  int total_tiles = my_tiles;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total_tiles += __shfl_xor_sync(0xffffffffu, total_tiles, o);
  if (counts) {
    for (int i = lane; i < E; i += 32) counts[i] = 0;
    __syncwarp();
    if (leader) counts[e] = cnt;
  }
  if (ok) {
    const int pos = lower + __popc(peers & below_me);
    row_token[pos] = lane / K;
    row_expert[pos] = e;
    pos_of[lane] = pos;
  } else if (in) {
    pos_of[lane] = -1;
    report_op_error(err, kOpErrorMoeExpert, e, lane / K, lane % K, E);
  }
  if (in && lane >= n_valid) {  // rows past the valid ones stay unused
    row_token[lane] = 0;
    row_expert[lane] = -1;
  }
  if (leader)
    for (int r = 0, nt = tile0; r < cnt; r += tile_rows, ++nt)
      if (nt < max_tiles) tiles[nt] = make_int4(e, lower + r, min(tile_rows, cnt - r), 0);
  if (lane == 0) *n_tiles = min(total_tiles, max_tiles);
}

// The plan of N = T*K occurrences (see the kernels): one warp for N <= 32, one block up to
// kPlanMultiMinN, else the two multi-block launches (chunk_counts in scratch). variant (tests):
// 0 that choice, 1 the one-block kernel, 2 the multi-block launches (N > 32 for both).
void launch_moe_plan(CudaBackend& be, const int32_t* idx, int64_t N, int64_t K, int64_t E, int tile_rows,
                     int64_t max_tiles, const TensorView& row_token, const TensorView& row_expert,
                     const TensorView& pos_of, const TensorView& tiles, const TensorView& n_tiles, int32_t* counts,
                     int variant) {
  const cudaStream_t s = be.stream();
  if (N <= 32 && variant == 0) {
    launch_kernel(moe_plan_warp_kernel, 1, 32, 0, s, idx, static_cast<int>(N), static_cast<int>(K),
                  static_cast<int>(E), tile_rows, static_cast<int>(max_tiles), row_token.as<int32_t>(),
                  row_expert.as<int32_t>(), pos_of.as<int32_t>(), tiles.as<int4>(), n_tiles.as<int32_t>(), counts,
                  op_error_record(be));
  } else if (variant == 1 || (variant == 0 && N < kPlanMultiMinN)) {
    const size_t plan_smem = static_cast<size_t>(kPlanWarps + 2) * E * sizeof(int32_t);
    launch_kernel(moe_plan_kernel, 1, kPlanThreads, plan_smem, s, idx, N, static_cast<int>(K), static_cast<int>(E),
                  tile_rows, static_cast<int>(max_tiles), row_token.as<int32_t>(), row_expert.as<int32_t>(),
                  pos_of.as<int32_t>(), tiles.as<int4>(), n_tiles.as<int32_t>(), counts, op_error_record(be));
  } else {
    // At most kPlanMaxChunks chunks of a multiple of 32 occurrences, at least kPlanMinChunk.
    const int64_t per = (N + kPlanMaxChunks - 1) / kPlanMaxChunks;
    const int64_t chunk = std::max<int64_t>(kPlanMinChunk, (per + 31) / 32 * 32);
    const int64_t n_chunks = (N + chunk - 1) / chunk;
    const TensorView chunk_counts = be.scratch(DType::kI32, {n_chunks * E});
    launch_kernel(moe_plan_count_kernel, static_cast<unsigned>(n_chunks), kPlanThreads, E * sizeof(int32_t), s, idx,
                  N, static_cast<int>(E), chunk, chunk_counts.as<int32_t>());
    CLAWMINE_CUDA_LAUNCHED("moe_plan_count");
    // seg [kPlanWarps][E], total/tile0, pre, offset [E], 2 scalars: 45064 bytes at E = 1024.
    const size_t smem = (static_cast<size_t>(kPlanWarps + 3) * E + 2) * sizeof(int32_t);
    launch_kernel(moe_plan_scatter_kernel, static_cast<unsigned>(n_chunks), kPlanThreads, smem, s, idx, N,
                  static_cast<int>(K), static_cast<int>(E), chunk, chunk_counts.as<const int32_t>(), tile_rows,
                  static_cast<int>(max_tiles), row_token.as<int32_t>(), row_expert.as<int32_t>(),
                  pos_of.as<int32_t>(), tiles.as<int4>(), n_tiles.as<int32_t>(), counts, op_error_record(be));
  }
  CLAWMINE_CUDA_LAUNCHED("moe_plan");
}

// ---- swiglu and combine ------------------------------------------------------------------------
// swiglu_value (linear_kernels.cuh): h = silu(min(g, L)) * clamp(u, -L, L), in double like the CPU.

template <typename T>
__global__ void swiglu_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ h, int64_t n,
                              float limit) {
  pdl_wait();
  pdl_trigger();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    h[i] = from_f32<T>(swiglu_value(to_f32(gate[i]), to_f32(up[i]), limit));
}

// out[t, d] = sum_j w_j * y[row_j, d] over the token's K slots sorted by (expert id, slot): the
// CPU's ascending-expert float32 accumulation (product rounded, then added). A token with an
// invalid expert id gets NaN. y's row of slot f is pos_of[f] (moe_plan's sorted rows; -1: an
// invalid id), or f itself without pos_of (the decode rows in slot order: then the ids are
// checked against E here, and an invalid one is reported as moe_plan reports it). Block (t, s)
// writes elements [s*1024, (s+1)*1024) of token t, 8 per thread (16-byte loads when vec:
// D % 8 == 0 and y, out 16-byte aligned); every block sorts the token's slots itself: thread
// k < K ranks slot k among the K (a stable sort). slots_early: the ids, weights and rows are read
// and sorted before griddepcontrol.wait (set_moe_combine_early): their writers (moe_route,
// moe_plan) ran before the gate/up launch, which waits first and triggers only after its wait, so
// once this launch runs they have completed (the argument of GemmArgs::tiles_early); then only
// y's loads wait for the down projection.
constexpr int kCombineThreads = 128, kCombineVec = 8, kCombineSlice = kCombineThreads * kCombineVec;
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* v) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t u[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = __uint_as_float(u[i] << 16);
      v[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
  }
}
template <typename T>
__device__ __forceinline__ void store8(T* p, const float* v) {
  if constexpr (std::is_same_v<T, float>) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint32_t u[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);  // .x = low half
      u[i] = *reinterpret_cast<const uint32_t*>(&h);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(u[0], u[1], u[2], u[3]);
  }
}

template <typename YT, typename OT>
__global__ void __launch_bounds__(kCombineThreads)
    moe_combine_kernel(const YT* __restrict__ y, const int32_t* __restrict__ pos_of, const int32_t* __restrict__ idx,
                       const float* __restrict__ weight, int K, int E, int64_t D, int vec, int slots_early,
                       OT* __restrict__ out, OpErrorRecord* err) {
  if (!slots_early) {
    pdl_wait();
    pdl_trigger();
  }
  __shared__ int32_t ids[kMaxTopK], row[kMaxTopK];
  __shared__ float wt[kMaxTopK];
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.x;
  int my_id = 0, my_row = 0;
  float my_w = 0.0f;
  if (tid < K) {
    my_id = idx[t * K + tid];
    my_w = weight[t * K + tid];
    if (pos_of) {
      my_row = pos_of[t * K + tid];
    } else if (my_id >= 0 && my_id < E) {
      my_row = static_cast<int>(t) * K + tid;
    } else {
      my_row = -1;
      if (blockIdx.y == 0) report_op_error(err, kOpErrorMoeExpert, my_id, t, tid, E);
    }
    ids[tid] = my_id;
  }
  __syncthreads();
  if (tid < K) {
    int rank = 0;  // slots before slot tid in (id, slot) order
    for (int j = 0; j < K; ++j) rank += ids[j] < my_id || (ids[j] == my_id && j < tid);
    row[rank] = my_row;
    wt[rank] = my_w;
  }
  const bool bad = __syncthreads_or(tid < K && my_row < 0);
  if (slots_early) {
    pdl_wait();  // y: the down projection's output
    pdl_trigger();
  }
  const int64_t d0 = static_cast<int64_t>(blockIdx.y) * kCombineSlice + static_cast<int64_t>(tid) * kCombineVec;
  if (d0 >= D) return;
  OT* o = out + t * D + d0;
  if (bad) {
    for (int64_t d = d0; d < D && d < d0 + kCombineVec; ++d) out[t * D + d] = from_f32<OT>(__int_as_float(0x7fc00000));
    return;
  }
  if (vec) {  // D % 8 == 0: the 8 elements are in range
    float acc[kCombineVec];
#pragma unroll
    for (int i = 0; i < kCombineVec; ++i) acc[i] = 0.0f;
    int j = 0;
    for (; j + 2 <= K; j += 2) {  // two rows' loads in flight
      float v0[kCombineVec], v1[kCombineVec];
      load8(y + static_cast<int64_t>(row[j]) * D + d0, v0);
      load8(y + static_cast<int64_t>(row[j + 1]) * D + d0, v1);
      const float w0 = wt[j], w1 = wt[j + 1];
#pragma unroll
      for (int i = 0; i < kCombineVec; ++i) acc[i] = __fadd_rn(__fadd_rn(acc[i], __fmul_rn(v0[i], w0)), __fmul_rn(v1[i], w1));
    }
    if (j < K) {
      float v0[kCombineVec];
      load8(y + static_cast<int64_t>(row[j]) * D + d0, v0);
      const float w0 = wt[j];
#pragma unroll
      for (int i = 0; i < kCombineVec; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(v0[i], w0));
    }
    store8(o, acc);
    return;
  }
  for (int64_t d = d0; d < D && d < d0 + kCombineVec; ++d) {
    float a = 0.0f;
    for (int j = 0; j < K; ++j) a = __fadd_rn(a, __fmul_rn(to_f32(y[static_cast<int64_t>(row[j]) * D + d]), wt[j]));
    out[t * D + d] = from_f32<OT>(a);
  }
}

void launch_swiglu(const TensorView& gate, const TensorView& up, const TensorView& h, float limit, cudaStream_t s) {
  const int64_t n = h.numel();
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  if (h.dtype == DType::kBF16) {
    launch_kernel(swiglu_kernel<__nv_bfloat16>, blocks, 256, 0, s, gate.as<const __nv_bfloat16>(),
                  up.as<const __nv_bfloat16>(), h.as<__nv_bfloat16>(), n, limit);
  } else {
    launch_kernel(swiglu_kernel<float>, blocks, 256, 0, s, gate.as<const float>(), up.as<const float>(), h.as<float>(),
                  n, limit);
  }
  CLAWMINE_CUDA_LAUNCHED("swiglu");
}

bool any_quantized(uint32_t fmt_mask, const ActPolicyDev& pol) {
  for (int f = 0; f < kNumWFmt; ++f)
    if ((fmt_mask & (1u << f)) && act_path(pol, f) != kActNone) return true;
  return false;
}

void check_act_dtype(const TensorView& v, const char* op, const char* arg) {
  if (v.dtype != DType::kF32 && v.dtype != DType::kBF16)
    throw Error(str_cat("cuda ", op, ": ", arg, " has dtype ", dtype_name(v.dtype), ", expected F32 or BF16"));
}

// ---- prefill: BF16 expert copies and cuBLAS -------------------------------------------------
// From kMoeCopyMinAvgRows rows per expert on average (T*K >= that * E), BF16 activations, the
// W16 policy, formats with an exact BF16 copy (or dense BF16) and no stream capture, the expert
// projections run as cuBLAS GEMMs over the plan's expert-sorted rows: the per-expert row counts
// are downloaded (one small copy and a stream sync per layer), x is gathered into sorted order,
// and per chunk of active experts w1/w3 are decoded to BF16 (linear_dequant.cu), multiplied (one
// grouped cuBLAS call for the chunk's gate/up problems, or one cublasGemmEx each), swiglu'd,
// then w2 likewise. Rounding points are the kernels' (gate, up, h and y in BF16; NVFP4's
// weight_scale_2 as alpha on the f32 accumulator), and the combine is the same deterministic
// kernel. Per expert: 3*I*D elements decoded (~4.5 bytes of traffic each) against 6*I*D flops
// per row saved at ~6x the MMA kernel's rate: break-even near 35 rows per expert on an H100; 64
// leaves a margin for the sync and the smaller GEMMs.
//
// Chunks and overlap. The copies live in two buffers of `cap` experts (together within
// kMoeCopyBudget); chunk c (sizes ramping cap/4, cap/2, cap, cap, ...: the first decode, which
// nothing hides, stays short) is decoded into buffer c % 2. With the overlap on, the backend's
// stream decodes chunk c+1 while a second stream of the highest priority runs chunk c's GEMMs,
// swiglu and w2 (events: "chunk decoded" gates the GEMMs, "buffer consumed" gates the decode
// two chunks later). The decode is bandwidth-bound and short-blocked; the GEMM stream's priority
// makes the block scheduler give SMs to the GEMMs first, so the decode fills the SMs the GEMMs
// leave idle (grids that do not fill the machine, wave tails, launch gaps). With the overlap off
// the same launches run on the backend's stream in the same order: same chunks, same GEMM calls,
// the same bits.
//
// Gate and up. g13 is [rows, 2I]: each row's gate, then its up. An expert whose w1 and w3 both
// have BF16 copies (adjacent in the buffer: a stacked [2I, D] matrix) and the same alpha runs
// one GEMM of 2I output rows; otherwise two GEMMs of I rows write the two halves (ldc = 2I).
constexpr int64_t kMoeCopyMinAvgRows = 64;
constexpr int64_t kMoeCopyBudget = int64_t{1} << 30;  // bytes of BF16 expert copies (both buffers)
bool g_moe_grouped_gemm = true;  // set_moe_prefill_grouped (tuning hook)
int g_moe_overlap = -1, g_moe_fuse13 = -1;  // set_moe_prefill_overlap / _fuse_gate_up: < 0 env
int64_t g_moe_copy_budget = 0;              // set_moe_prefill_copy_budget: <= 0 kMoeCopyBudget
int g_moe_plan = 0;                         // set_moe_plan_variant: launch_moe_plan's variant
bool g_moe_direct = true;                   // set_moe_decode_direct
bool g_swiglu_pairs = true;                 // set_swiglu_pairs
std::atomic<int> g_tiles_early{-1};         // set_moe_tiles_early: < 0 until the environment is read
int tiles_early_from_env() { return env_switch("CLAWMINE_MOE_TILES_EARLY", true) ? 1 : 0; }
std::atomic<int> g_combine_early{-1};       // set_moe_combine_early: < 0 until the environment is read
int combine_early_from_env() { return env_switch("CLAWMINE_MOE_COMBINE_EARLY", true) ? 1 : 0; }
// The grouped call only while experts average fewer rows than this: on an H100 (kernel bench,
// 2026-11-26) it beat one cublasGemmEx per expert at T=2048 (192 rows per expert: 5.42 vs 5.79
// ms per layer) and lost at T=8192 (768 rows: 11.6 vs 8.35 ms). Decided once per layer.
constexpr int64_t kMoeGroupedMaxAvgRows = 384;

bool moe_overlap_on() {
  static const bool env = env_switch("CLAWMINE_MOE_OVERLAP", true);
  return g_moe_overlap < 0 ? env : g_moe_overlap > 0;
}
bool moe_fuse13_on() {
  static const bool env = env_switch("CLAWMINE_MOE_FUSE13", true);
  return g_moe_fuse13 < 0 ? env : g_moe_fuse13 > 0;
}

// The overlap's stream and events, created on the first overlapped prefill (never inside a
// capture: prefill_eligible refuses capturing streams) and kept in the backend's op state.
struct MoeOverlapState {
  cudaStream_t gemm = nullptr;  // highest priority, non-blocking
  cudaEvent_t fork = nullptr, join = nullptr;
  cudaEvent_t decoded[2] = {nullptr, nullptr}, consumed[2] = {nullptr, nullptr};  // per copy buffer
  MoeOverlapState() = default;
  MoeOverlapState(const MoeOverlapState&) = delete;
  MoeOverlapState& operator=(const MoeOverlapState&) = delete;
  ~MoeOverlapState() {  // pending work finishes first (the driver defers the release)
    for (cudaEvent_t e : {fork, join, decoded[0], decoded[1], consumed[0], consumed[1]})
      if (e) cudaEventDestroy(e);
    if (gemm) cudaStreamDestroy(gemm);
  }
};

MoeOverlapState& moe_overlap_state(CudaBackend& be) {
  static const char key = 0;
  MoeOverlapState* st = be.op_state<MoeOverlapState>(&key);
  if (st->gemm) return *st;
  for (cudaEvent_t* e : {&st->fork, &st->join, &st->decoded[0], &st->decoded[1], &st->consumed[0], &st->consumed[1]})
    if (!*e) CLAWMINE_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  int least = 0, greatest = 0;
  CLAWMINE_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  CLAWMINE_CUDA_CHECK(cudaStreamCreateWithPriority(&st->gemm, cudaStreamNonBlocking, greatest));
  return *st;
}

// h[r, c] = swiglu(g[r, c], g[r, I + c]) for rows r < rows of g [rows, 2I] and h [rows, I],
// element for element swiglu_kernel's value; 8 columns (16 bytes) per vector (I % 8 == 0, g and
// h 16-byte aligned: the prefill's scratch). Block (x, y): vectors [x*64, x*64 + 64) of a row
// (threadIdx.x) for kSwigluRowsPerBlock rows from y * kSwigluRowsPerBlock (grid-stride in y),
// kSwigluRowsPerThread rows per thread: their 2 * kSwigluRowsPerThread 16-byte loads are issued
// before the (FP64) maths. No 64-bit division; a warp's loads cover 512 contiguous bytes.
constexpr int kSwigluVecs = 64, kSwigluRowsPerThread = 2, kSwigluThreadRows = 4;
constexpr int kSwigluRowsPerBlock = kSwigluThreadRows * kSwigluRowsPerThread;
__global__ void __launch_bounds__(kSwigluVecs* kSwigluThreadRows)
    moe_swiglu_rows_kernel(const __nv_bfloat16* __restrict__ g, __nv_bfloat16* __restrict__ h, int64_t rows,
                           int64_t I, float limit) {
  pdl_wait();
  pdl_trigger();
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * kSwigluVecs + threadIdx.x) * 8;
  if (c >= I) return;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kSwigluRowsPerBlock + threadIdx.y * kSwigluRowsPerThread;
       r0 < rows; r0 += static_cast<int64_t>(gridDim.y) * kSwigluRowsPerBlock) {
    uint4 gq[kSwigluRowsPerThread], uq[kSwigluRowsPerThread];
#pragma unroll
    for (int j = 0; j < kSwigluRowsPerThread; ++j)
      if (r0 + j < rows) {
        const __nv_bfloat16* src = g + (r0 + j) * 2 * I + c;
        gq[j] = __ldg(reinterpret_cast<const uint4*>(src));
        uq[j] = __ldg(reinterpret_cast<const uint4*>(src + I));
      }
#pragma unroll
    for (int j = 0; j < kSwigluRowsPerThread; ++j)
      if (r0 + j < rows) {
        const __nv_bfloat16* gb = reinterpret_cast<const __nv_bfloat16*>(&gq[j]);
        const __nv_bfloat16* ub = reinterpret_cast<const __nv_bfloat16*>(&uq[j]);
        uint4 hq;
        __nv_bfloat16* hb = reinterpret_cast<__nv_bfloat16*>(&hq);
#pragma unroll
        for (int i = 0; i < 8; ++i)
          hb[i] = from_f32<__nv_bfloat16>(swiglu_value(to_f32(gb[i]), to_f32(ub[i]), limit));
        *reinterpret_cast<uint4*>(h + (r0 + j) * I + c) = hq;
      }
  }
}

// alpha[i] = weight_scale_2 of descriptor i for NVFP4, else 1.
__global__ void moe_alpha_kernel(const WeightDesc* __restrict__ descs, int n, float* __restrict__ alpha) {
  pdl_wait();
  pdl_trigger();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) alpha[i] = descs[i].fmt == static_cast<int32_t>(WFmt::kNvfp4) ? __ldg(descs[i].scale2) : 1.0f;
}

// xs[i, :] = x[row_token[i], :] for the first `rows` sorted rows; 8 elements (16 bytes) per step
// when vec (D % 8 == 0 and x 16-byte aligned).
__global__ void moe_gather_kernel(const __nv_bfloat16* __restrict__ x, const int32_t* __restrict__ row_token,
                                  int64_t rows, int64_t D, int vec, __nv_bfloat16* __restrict__ xs) {
  pdl_wait();
  pdl_trigger();
  const int64_t per_row = vec ? D / 8 : D, n = rows * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = i - r * per_row, src = row_token[r];
    if (vec) {
      reinterpret_cast<uint4*>(xs + r * D)[c] = __ldg(reinterpret_cast<const uint4*>(x + src * D) + c);
    } else {
      xs[r * D + c] = x[src * D + c];
    }
  }
}

constexpr uint32_t kCopyFormats = (1u << int(WFmt::kBF16)) | (1u << int(WFmt::kFp8E8M0)) |
                                  (1u << int(WFmt::kMxfp4)) | (1u << int(WFmt::kNvfp4));

size_t scratch_free(CudaBackend& be) {
  const size_t top = be.scratch_mark(), region = be.usage().scratch_bytes;
  return top < region ? region - top : 0;
}

// Decided before the plan: nothing host-synchronous may run inside a stream capture (CUDA graphs
// of decode steps, the kernel bench's captures), so a capturing stream keeps the kernels.
bool prefill_eligible(CudaBackend& be, const MoeTable& tab, DType act, bool quant, bool gemv, int64_t N, int64_t E,
                      int64_t D, int64_t I) {
  if (act != DType::kBF16 || quant || gemv || N < kMoeCopyMinAvgRows * E) return false;
  if (((tab.fmt13 | tab.fmt2) & ~kCopyFormats) || !tab.vec13 || !tab.vec2 || D % 8 != 0 || I % 8 != 0) return false;
  if (be.capturing()) return false;
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  CLAWMINE_CUDA_CHECK(cudaStreamIsCapturing(be.stream(), &st));
  if (st != cudaStreamCaptureStatusNone) return false;
  // y, xs [N, D], g13 [N, 2I], h [N, I] in BF16, one expert's copies, tables and alignment.
  // Plus the plan's buffers (about 28 bytes per occurrence).
  const double need = 2.0 * (2.0 * N * D + 3.0 * N * I + 3.0 * I * D) + 64.0 * (N + E) + (1 << 20);
  return need <= static_cast<double>(scratch_free(be));
}

// GEMMs C = op_T(A) * B (column-major; A stored k x m, B k x n, C m x n with ldc), BF16 in/out,
// f32 compute, host alpha.
struct Problems {
  std::vector<int> m, n, k, lda, ldb, ldc;
  std::vector<float> alpha;
  std::vector<const void*> A, B;
  std::vector<void*> C;
  void add(int m_, int n_, int k_, float alpha_, const void* a, const void* b, void* c, int ldc_) {
    m.push_back(m_), n.push_back(n_), k.push_back(k_), lda.push_back(k_), ldb.push_back(k_), ldc.push_back(ldc_);
    alpha.push_back(alpha_), A.push_back(a), B.push_back(b), C.push_back(c);
  }
  size_t size() const { return m.size(); }
};

// Problems [first, first + count) on `stream`: one cublasGemmGroupedBatchedEx (groups of one
// problem; the pointer arrays in device memory at dev[0..2] + first) when `grouped` (and this
// cuBLAS serves it), else one cublasGemmEx each.
void run_problems(CudaBackend& be, const Problems& p, size_t first, size_t count, void* const* dev[3], bool grouped,
                  cudaStream_t stream) {
  if (count == 0) return;
  cublasHandle_t h = be.cublas();
  cublas_check(cublasSetStream(h, stream), "cublasSetStream");
  cublas_check(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
  if (grouped && g_moe_grouped_gemm) {
    CLAWMINE_CHECK(count <= 0x7fffffff, "moe prefill: too many GEMMs (", count, ")");
    const std::vector<cublasOperation_t> ta(count, CUBLAS_OP_T), tb(count, CUBLAS_OP_N);
    const std::vector<float> beta(count, 0.0f);
    const std::vector<int> ones(count, 1);
    const cublasStatus_t st = cublasGemmGroupedBatchedEx(
        h, ta.data(), tb.data(), p.m.data() + first, p.n.data() + first, p.k.data() + first, p.alpha.data() + first,
        reinterpret_cast<const void* const*>(dev[0] + first), CUDA_R_16BF, p.lda.data() + first,
        reinterpret_cast<const void* const*>(dev[1] + first), CUDA_R_16BF, p.ldb.data() + first, beta.data(),
        dev[2] + first, CUDA_R_16BF, p.ldc.data() + first, static_cast<int>(count), ones.data(), CUBLAS_COMPUTE_32F);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) {
      cublas_check(st, "cublasGemmGroupedBatchedEx (moe prefill)");
      return;
    }
    // This cuBLAS does not serve the combination: one GEMM per expert from now on.
    log_warn("cuda", "cublasGemmGroupedBatchedEx (BF16, f32 compute) is not supported by this cuBLAS; "
                     "MoE prefill issues one cublasGemmEx per expert instead");
    g_moe_grouped_gemm = false;
  }
  const float beta = 0.0f;
  for (size_t i = first; i < first + count; ++i)
    cublas_check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, p.m[i], p.n[i], p.k[i], &p.alpha[i], p.A[i], CUDA_R_16BF,
                              p.lda[i], p.B[i], CUDA_R_16BF, p.ldb[i], &beta, p.C[i], CUDA_R_16BF, p.ldc[i],
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx (moe prefill)");
}

// The fork of the GEMM stream off the backend's stream and its join back (also when an error
// unwinds: then, if the join cannot be enqueued, the GEMM stream is waited for, so the scratch
// released after us is never still in use). cuBLAS gets the backend's stream back either way.
class GemmStreamScope {
 public:
  GemmStreamScope(CudaBackend& be, MoeOverlapState* st) : be_(be), st_(st) {
    if (!st_) return;
    CLAWMINE_CUDA_CHECK(cudaEventRecord(st_->fork, be_.stream()));
    CLAWMINE_CUDA_CHECK(cudaStreamWaitEvent(st_->gemm, st_->fork, 0));
  }
  ~GemmStreamScope() {
    if (!done_) {
      if (st_ && (cudaEventRecord(st_->join, st_->gemm) != cudaSuccess ||
                  cudaStreamWaitEvent(be_.stream(), st_->join, 0) != cudaSuccess))
        cudaStreamSynchronize(st_->gemm);
      cublasSetStream(be_.cublas(), be_.stream());
    }
  }
  GemmStreamScope(const GemmStreamScope&) = delete;
  GemmStreamScope& operator=(const GemmStreamScope&) = delete;
  cudaStream_t gemm_stream() const { return st_ ? st_->gemm : be_.stream(); }
  void join() {
    if (st_) {
      CLAWMINE_CUDA_CHECK(cudaEventRecord(st_->join, st_->gemm));
      CLAWMINE_CUDA_CHECK(cudaStreamWaitEvent(be_.stream(), st_->join, 0));
    }
    done_ = true;
    cublas_check(cublasSetStream(be_.cublas(), be_.stream()), "cublasSetStream");
  }

 private:
  CudaBackend& be_;
  MoeOverlapState* st_;
  bool done_ = false;
};

// Chunk boundaries over the M active experts (chunk c: [bounds[c], bounds[c+1])), from the copy
// buffers' layout only (so the overlap switch never changes them): two buffers of cap experts,
// sizes ramping max(1, cap/4), doubling up to cap; one buffer: equal chunks of at most cap.
std::vector<int64_t> chunk_bounds(int64_t M, int64_t cap, int n_buf) {
  std::vector<int64_t> b{0};
  if (n_buf == 1) {
    const int64_t n_chunks = (M + cap - 1) / cap, size = (M + n_chunks - 1) / n_chunks;
    while (b.back() < M) b.push_back(std::min(M, b.back() + size));
    return b;
  }
  for (int64_t size = std::max<int64_t>(1, cap / 4); b.back() < M; size = std::min(cap, 2 * size))
    b.push_back(std::min(M, b.back() + size));
  return b;
}

// The prefill path after the plan (prefill_eligible held): fills y [N, D] (BF16) at the sorted
// rows of valid occurrences. info: the plan's per-expert counts [E] followed by room for 3E
// floats (alphas).
void moe_prefill(CudaBackend& be, const MoeTable& tab, const TensorView& x, const TensorView& row_token,
                 const TensorView& info, int64_t E, int64_t D, int64_t I, float limit, const TensorView& y) {
  const cudaStream_t s = be.stream();
  const auto* descs = static_cast<const WeightDesc*>(tab.dev.data);
  float* alpha_dev = reinterpret_cast<float*>(info.as<int32_t>() + E);
  launch_kernel(moe_alpha_kernel, blocks_for(3 * E, 256), 256, 0, s, descs, static_cast<int>(3 * E), alpha_dev);
  CLAWMINE_CUDA_LAUNCHED("moe_alpha");
  std::vector<int32_t> host(static_cast<size_t>(4 * E));
  // The only host sync of the path (a plain copy: a data error the plan recorded, an invalid
  // expert id, stays for the next check_op_errors, as on the kernel path).
  CLAWMINE_CUDA_CHECK(cudaMemcpyAsync(host.data(), info.data, host.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, s));
  CLAWMINE_CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<float> alpha(static_cast<size_t>(3 * E));
  for (int64_t i = 0; i < 3 * E; ++i) alpha[i] = bits_to_f32(static_cast<uint32_t>(host[E + i]));

  struct Active {
    int64_t e, off, n;
  };
  std::vector<Active> act;
  int64_t rows = 0;
  for (int64_t e = 0; e < E; ++e) {  // the plan's offsets: experts ascending, valid rows first
    if (host[e] > 0) act.push_back({e, rows, host[e]});
    rows += host[e];
  }
  if (act.empty()) return;  // every id invalid: the combine writes NaN without reading y
  const int64_t M = static_cast<int64_t>(act.size()), ID = I * D;
  const bool grouped = rows < kMoeGroupedMaxAvgRows * M;

  ops::ScratchFrame frame(be);
  const TensorView xs = be.scratch(DType::kBF16, {rows, D});
  const TensorView g13 = be.scratch(DType::kBF16, {rows, 2 * I});  // per row: gate, then up
  const TensorView h = be.scratch(DType::kBF16, {rows, I});
  const TensorView items = be.scratch(DType::kI32, {3 * M});
  const TensorView ptrs = be.scratch(DType::kI64, {9 * M});  // A, B, C of <= 2M gate/up problems, then of M w2
  {
    const bool vec = reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
    const int64_t n = rows * (vec ? D / 8 : D);
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(blocks_for(n, 256), 8 * int64_t{be.sm_count()}));
    launch_kernel(moe_gather_kernel, std::max(1u, blocks), 256, 0, s, x.as<const __nv_bfloat16>(),
                  row_token.as<const int32_t>(), rows, D, vec ? 1 : 0, xs.as<__nv_bfloat16>());
    CLAWMINE_CUDA_LAUNCHED("moe_gather");
  }
  // The copy buffers (none when every expert is BF16: one chunk straight from the weights).
  const uint32_t copy_fmts = (tab.fmt13 | tab.fmt2) & ~(1u << int(WFmt::kBF16));
  const int64_t per_expert = 3 * ID * 2;
  int n_buf = 1;
  int64_t cap = M;
  TensorView copies;
  if (copy_fmts) {
    const int64_t budget = g_moe_copy_budget > 0 ? g_moe_copy_budget : kMoeCopyBudget;
    const int64_t room = std::min<int64_t>(budget, static_cast<int64_t>(scratch_free(be)) - (1 << 16));
    n_buf = M > 1 && room >= 2 * per_expert ? 2 : 1;
    cap = std::clamp<int64_t>(room / (n_buf * per_expert), 1, M);
    copies = be.scratch(DType::kBF16, {n_buf * cap, 3, ID});
  }
  const std::vector<int64_t> bounds = copy_fmts ? chunk_bounds(M, cap, n_buf) : std::vector<int64_t>{0, M};
  const size_t n_chunks = bounds.size() - 1;

  auto* xs_p = xs.as<__nv_bfloat16>();
  auto* g_p = g13.as<__nv_bfloat16>();
  auto* h_p = h.as<__nv_bfloat16>();
  auto* y_p = y.as<__nv_bfloat16>();
  auto* c_p = copies.empty() ? nullptr : copies.as<__nv_bfloat16>();
  const bool fuse = moe_fuse13_on();
  std::vector<int32_t> item_host(static_cast<size_t>(3 * M));
  std::vector<size_t> first13(static_cast<size_t>(M + 1));  // active expert i's gate/up problems start here
  Problems p13, p2;
  const int iI = static_cast<int>(I), iD = static_cast<int>(D);
  for (size_t c = 0; c < n_chunks; ++c)
    for (int64_t i = bounds[c]; i < bounds[c + 1]; ++i) {
      const Active& a = act[i];
      const int64_t slot = static_cast<int64_t>(c % n_buf) * cap + (i - bounds[c]);  // in the copy buffers
      const __nv_bfloat16* copy = c_p ? c_p + slot * 3 * ID : nullptr;
      auto is_copy = [&](int j) { return static_cast<WFmt>(tab.host[a.e * 3 + j].fmt) != WFmt::kBF16; };
      auto weight = [&](int j) -> const void* {
        item_host[3 * i + j] = static_cast<int32_t>(a.e * 3 + j);
        return is_copy(j) ? static_cast<const void*>(copy + j * ID) : tab.host[a.e * 3 + j].w;
      };
      const int n = static_cast<int>(a.n);
      const float a1 = alpha[a.e * 3 + 0], a3 = alpha[a.e * 3 + 1], a2 = alpha[a.e * 3 + 2];
      const void *w1 = weight(0), *w3 = weight(1), *w2 = weight(2);
      first13[i] = p13.size();
      __nv_bfloat16* g_rows = g_p + a.off * 2 * I;
      if (fuse && is_copy(0) && is_copy(1) && host[E + a.e * 3] == host[E + a.e * 3 + 1]) {
        p13.add(2 * iI, n, iD, a1, w1, xs_p + a.off * D, g_rows, 2 * iI);  // [w1; w3] stacked in the copy
      } else {
        p13.add(iI, n, iD, a1, w1, xs_p + a.off * D, g_rows, 2 * iI);
        p13.add(iI, n, iD, a3, w3, xs_p + a.off * D, g_rows + I, 2 * iI);
      }
      p2.add(iD, n, iI, a2, w2, h_p + a.off * I, y_p + a.off * D, iD);
    }
  first13[M] = p13.size();
  const size_t n13 = p13.size();
  std::vector<int64_t> ptr_host(3 * (n13 + static_cast<size_t>(M)));
  for (size_t i = 0; i < n13; ++i) {
    ptr_host[i] = reinterpret_cast<int64_t>(p13.A[i]);
    ptr_host[n13 + i] = reinterpret_cast<int64_t>(p13.B[i]);
    ptr_host[2 * n13 + i] = reinterpret_cast<int64_t>(p13.C[i]);
  }
  for (size_t i = 0; i < static_cast<size_t>(M); ++i) {
    ptr_host[3 * n13 + i] = reinterpret_cast<int64_t>(p2.A[i]);
    ptr_host[3 * n13 + M + i] = reinterpret_cast<int64_t>(p2.B[i]);
    ptr_host[3 * n13 + 2 * M + i] = reinterpret_cast<int64_t>(p2.C[i]);
  }
  be.upload(item_host.data(), items);
  be.upload(ptr_host.data(), ptrs.slice0(0, static_cast<int64_t>(ptr_host.size())));
  auto* pd = reinterpret_cast<void**>(ptrs.data);
  void* const* dev13[3] = {pd, pd + n13, pd + 2 * n13};
  void* const* dev2[3] = {pd + 3 * n13, pd + 3 * n13 + M, pd + 3 * n13 + 2 * M};

  auto decode = [&](size_t c) {  // chunk c's copies into buffer c % n_buf, on the backend's stream
    const int64_t i0 = bounds[c], i1 = bounds[c + 1];
    for (int f = 0; f < kNumWFmt; ++f) {
      if (!(copy_fmts & (1u << f))) continue;
      DequantArgs q;
      q.descs = descs;
      q.items = items.as<const int32_t>() + 3 * i0;
      q.out = c_p + static_cast<int64_t>(c % n_buf) * cap * 3 * ID;
      q.out_stride = ID;
      q.n_items = static_cast<int32_t>(3 * (i1 - i0));
      q.max_elems = ID;
      q.fmt = f;
      launch_dequant_bf16(q, be.sm_count(), s);
    }
  };
  auto multiply = [&](size_t c, cudaStream_t gs) {  // chunk c's GEMMs, swiglu and w2 on gs
    const int64_t i0 = bounds[c], i1 = bounds[c + 1];
    run_problems(be, p13, first13[i0], first13[i1] - first13[i0], dev13, grouped, gs);
    const int64_t r0 = act[i0].off, r1 = act[i1 - 1].off + act[i1 - 1].n;
    const int64_t col_blocks = (I / 8 + kSwigluVecs - 1) / kSwigluVecs;
    const int64_t row_blocks = std::min<int64_t>((r1 - r0 + kSwigluRowsPerBlock - 1) / kSwigluRowsPerBlock, 65535);
    CLAWMINE_CHECK(col_blocks <= 0x7fffffff, "moe_experts: swiglu grid too large (I ", I, ")");
    launch_kernel(moe_swiglu_rows_kernel,
                  dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(std::max<int64_t>(1, row_blocks))),
                  dim3(kSwigluVecs, kSwigluThreadRows), 0, gs,
                  static_cast<const __nv_bfloat16*>(g_p + r0 * 2 * I), h_p + r0 * I, r1 - r0, I, limit);
    CLAWMINE_CUDA_LAUNCHED("moe_swiglu_rows");
    run_problems(be, p2, static_cast<size_t>(i0), static_cast<size_t>(i1 - i0), dev2, grouped, gs);
  };

  // Chunk c's GEMMs are issued after the decodes of chunks up to c + n_buf - 1 (the buffer a
  // decode overwrites was last read by a chunk whose GEMMs are issued, and waited for, before).
  const bool overlap = copy_fmts && n_buf == 2 && n_chunks > 1 && moe_overlap_on();
  MoeOverlapState* st = overlap ? &moe_overlap_state(be) : nullptr;
  GemmStreamScope scope(be, st);
  const cudaStream_t gs = scope.gemm_stream();
  size_t issued = 0;  // chunks whose decode is issued
  for (size_t c = 0; c < n_chunks; ++c) {
    for (; copy_fmts && issued < std::min(n_chunks, c + n_buf); ++issued) {
      const size_t b = issued % n_buf;
      if (st && issued >= static_cast<size_t>(n_buf)) CLAWMINE_CUDA_CHECK(cudaStreamWaitEvent(s, st->consumed[b], 0));
      decode(issued);
      if (st) CLAWMINE_CUDA_CHECK(cudaEventRecord(st->decoded[b], s));
    }
    if (st) CLAWMINE_CUDA_CHECK(cudaStreamWaitEvent(gs, st->decoded[c % n_buf], 0));
    multiply(c, gs);
    if (st) CLAWMINE_CUDA_CHECK(cudaEventRecord(st->consumed[c % n_buf], gs));
  }
  scope.join();
}

}  // namespace

// The gate/up call c (n_z = 2, x and weights set; out, ldo and out_bf16 filled in here) and
// h [rows, I] = swiglu(gate, up): one paired launch where gemm_swiglu_pairs allows, else gate and
// up into scratch and the swiglu launch. The same bits either way.
static void gate_up_swiglu(CudaBackend& be, GemmCall c, int64_t rows, int64_t I, DType mid, float limit,
                           const TensorView& h) {
  c.a.out_bf16 = mid == DType::kBF16;
  c.a.ldo = I;
  if (g_swiglu_pairs && gemm_swiglu_pairs(c)) {
    c.a.swiglu_pairs = 1;
    c.a.swiglu_limit = limit;
    c.a.out = h.data;
    run_gemm(be, c);
    return;
  }
  ops::ScratchFrame frame(be);
  const TensorView g13 = be.scratch(mid, {2, rows, I});
  c.a.out = g13.data;
  c.a.out_z = rows * I;
  run_gemm(be, c);
  launch_swiglu(g13.slice0(0, 1).reshaped({rows, I}), g13.slice0(1, 2).reshaped({rows, I}), h, limit, be.stream());
}

void CudaBackend::moe_experts(const TensorView& x, const std::vector<ExpertWeights>& experts, const TensorView& idx,
                              const TensorView& weight, float swiglu_limit, const TensorView& out) {
  static const char* op = "moe_experts";
  expect_device(x, op, "x");
  expect_device(idx, op, "idx");
  expect_device(weight, op, "weight");
  expect_device(out, op, "out");
  check_act_dtype(x, op, "x");
  check_act_dtype(out, op, "out");
  if (x.rank() != 2) throw Error(str_cat("cuda moe_experts: x has shape ", shape_str(x.shape), ", expected [T, D]"));
  const int64_t T = x.dim(0), D = x.dim(1), E = static_cast<int64_t>(experts.size());
  if (idx.dtype != DType::kI32 || idx.rank() != 2 || idx.dim(0) != T)
    throw Error(str_cat("cuda moe_experts: idx must be I32 [", T, ", K], got ", dtype_name(idx.dtype), " ",
                        shape_str(idx.shape)));
  const int64_t K = idx.dim(1);
  if (weight.dtype != DType::kF32 || weight.numel() != T * K)
    throw Error(str_cat("cuda moe_experts: weight must be F32 [", T, ", ", K, "], got ", dtype_name(weight.dtype), " ",
                        shape_str(weight.shape)));
  if (out.numel() != T * D)
    throw Error(str_cat("cuda moe_experts: out has shape ", shape_str(out.shape), ", expected [", T, ", ", D, "]"));
  if (E < 1 || E > kMaxExperts)
    throw Error(str_cat("cuda moe_experts: ", E, " experts (supported: 1..", kMaxExperts, ")"));
  if (K < 1 || K > kMaxTopK) throw Error(str_cat("cuda moe_experts: top-", K, " (supported: 1..", kMaxTopK, ")"));
  if (T == 0) return;
  const int64_t N = T * K;
  CLAWMINE_CHECK(N < (int64_t{1} << 31), "moe_experts: too many token slots (", N, ")");

  const MoeTable& tab = moe_table(*this, experts.data(), E, D, op);
  const int64_t I = tab.I;
  const ops::LinearPolicy& policy = linear_policy();
  const ActPolicyDev pol = act_policy_dev(policy);
  if (pol.w4a4 && policy.act_scale == ops::ActScale::kStatic && ((tab.fmt13 | tab.fmt2) & (1u << int(WFmt::kNvfp4))) &&
      !tab.nvfp4_without_input_scale.empty())
    throw Error(str_cat("linear ", tab.nvfp4_without_input_scale,
                        ": --act-scale static needs the checkpoint's input_scale, which ",
                        tab.nvfp4_without_input_scale, " does not have (use --act-scale dynamic or auto)"));
  const bool quant13 = any_quantized(tab.fmt13, pol), quant2 = any_quantized(tab.fmt2, pol);

  // Row tiles: GEMV tiles sized for the expected rows per active expert, else 64-row GEMM tiles.
  // sum_e ceil(n_e / tr) <= (N + a (tr - 1)) / tr over the a <= min(E, N) active experts bounds
  // the tile count tightly (N at one-row tiles: a decode step's grid has no idle tiles, which
  // also lets the GEMV give each tile more warps).
  // The limit past decode sizes was measured with BF16 activations and no activation transform;
  // F32 activations and W8A8 / W4A4 keep GEMV tiles to decode sizes (kGemvMaxTokens).
  const bool measured_path = x.dtype == DType::kBF16 && !quant13 && !quant2;
  const bool gemv = T <= (measured_path ? moe_gemv_max_tokens() : kGemvMaxTokens);
  const int tile_rows =
      gemv ? std::min(gemv_tile_rows((N + std::min(E, N) - 1) / std::min(E, N)), moe_gemv_tile_cap()) : kGemmTileRows;
  const int64_t max_tiles = (N + std::min(E, N) * (tile_rows - 1)) / tile_rows;

  const DType act = x.dtype;
  const bool prefill = prefill_eligible(*this, tab, act, quant13 || quant2, gemv, N, E, D, I);
  // One token (batch-1 decode: GEMV tiles, never the prefill path): its K rows in slot order are
  // one-row tiles already (tile_rows is 1 whenever K <= E), so no plan: the GEMVs take each row's
  // expert from idx (row_problem) and read x's one row (ldx 0), and the combine checks the ids.
  // The activation transforms index their weights by plan rows (row_expert), so they keep the plan.
  const bool direct = g_moe_direct && T == 1 && tile_rows == 1 && !quant13 && !quant2;

  ops::ScratchFrame frame(*this);
  const TensorView row_token = scratch(DType::kI32, {N});
  const TensorView row_expert = scratch(DType::kI32, {N});
  const TensorView pos_of = scratch(DType::kI32, {N});
  const TensorView tiles = scratch(DType::kI32, {max_tiles, 4});
  const TensorView n_tiles = scratch(DType::kI32, {1});
  const TensorView info = prefill ? scratch(DType::kI32, {4 * E}) : TensorView{};  // counts, then alphas
  if (!direct)
    launch_moe_plan(*this, idx.as<const int32_t>(), N, K, E, tile_rows, max_tiles, row_token, row_expert, pos_of,
                    tiles, n_tiles, prefill ? info.as<int32_t>() : nullptr, g_moe_plan);

  const int64_t slices = (D + kCombineSlice - 1) / kCombineSlice;
  CLAWMINE_CHECK(T <= 0x7fffffff && slices <= 65535, "moe_experts: combine grid too large (T ", T, ", D ", D, ")");
  // early: the GEMV paths' combine (after the down's GEMV launch), not the prefill's.
  auto combine = [&](const TensorView& y, bool early) {
    const bool vec = D % kCombineVec == 0 && reinterpret_cast<uintptr_t>(y.data) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(out.data) % 16 == 0;
    auto run = [&](auto yt, auto ot) {
      using YT = decltype(yt);
      using OT = decltype(ot);
      launch_kernel(moe_combine_kernel<YT, OT>, dim3(static_cast<unsigned>(T), static_cast<unsigned>(slices)),
                    kCombineThreads, 0, stream(), y.as<const YT>(), direct ? nullptr : pos_of.as<const int32_t>(),
                    idx.as<const int32_t>(), weight.as<const float>(), static_cast<int>(K), static_cast<int>(E), D,
                    vec ? 1 : 0, early ? 1 : 0, out.as<OT>(), direct ? op_error_record(*this) : nullptr);
    };
    if (y.dtype == DType::kBF16) {
      if (out.dtype == DType::kBF16) run(__nv_bfloat16{}, __nv_bfloat16{});
      else run(__nv_bfloat16{}, float{});
    } else {
      if (out.dtype == DType::kBF16) run(float{}, __nv_bfloat16{});
      else run(float{}, float{});
    }
    CLAWMINE_CUDA_LAUNCHED("moe_combine");
  };

  if (prefill) {
    const TensorView y = scratch(DType::kBF16, {N, D});
    moe_prefill(*this, tab, x, row_token, info, E, D, I, swiglu_limit, y);
    combine(y, false);
    return;
  }

  // Intermediates (gate/up, h) use the activation dtype, or F32 when w2's input is quantized next
  // (W8A8 / W4A4 emulation): then h carries no extra bf16 rounding into the quantizer, so its
  // rounding decisions are the CPU's up to float accumulation order.
  const DType mid = quant2 ? DType::kF32 : act;
  const auto* descs = static_cast<const WeightDesc*>(tab.dev.data);
  GemmArgs base;
  base.descs = descs;
  base.desc_stride = 3;
  if (direct) {
    base.row_problem = idx.as<const int32_t>();
    base.n_problems = static_cast<int32_t>(E);
    base.rows = N;
  } else {
    base.tiles = tiles.as<const int4>();
    base.n_tiles = n_tiles.as<const int32_t>();
  }
  base.tile_rows = tile_rows;

  // w1 (z = 0) and w3 (z = 1): G13 [2, N, I], then h = swiglu(G13); or h by the paired launch.
  const TensorView h = scratch(mid, {N, I});
  {
    GemmCall c;
    c.a = base;
    c.a.desc_offset = 0;
    c.a.n_z = 2;
    c.a.n_rows = I;
    c.a.K = D;  // out, ldo and out_bf16: gate_up_swiglu
    c.x_dtype = act;
    c.a.x = x.data;
    c.a.ldx = direct ? 0 : D;  // direct: every row reads the token's row
    c.a.x_rows = direct ? nullptr : row_token.as<const int32_t>();
    if (quant13) {
      const TensorView xq = scratch(DType::kF32, {2, N, D});
      ActQuantArgs q;
      q.descs = descs;
      q.desc_stride = 3;
      q.desc_offset = 0;
      q.row_expert = row_expert.as<const int32_t>();
      q.x = x.data;
      q.x_bf16 = act == DType::kBF16;
      q.ldx = D;
      q.x_rows = row_token.as<const int32_t>();
      q.out = xq.as<float>();
      q.rows = N;
      q.n = D;
      q.n_z = 2;
      q.pol = pol;
      if (pol.w4a4 && pol.act_scale == kActScaleStatic) q.err = op_error_record(*this);
      launch_act_quant(q, stream());
      c.a.x = xq.data;
      c.a.x_z = N * D;
      c.a.x_rows = nullptr;
      c.x_dtype = DType::kF32;
    }
    c.fmt_mask = tab.fmt13;
    c.w_vec = tab.vec13;
    c.grid_tiles = static_cast<int>(max_tiles);
    gate_up_swiglu(*this, c, N, I, mid, swiglu_limit, h);
  }

  // w2: Y [N, D] in sorted row order.
  const TensorView y = scratch(act, {N, D});
  {
    GemmCall c;
    c.a = base;
    c.a.desc_offset = 2;
    c.a.n_z = 1;
    c.a.n_rows = D;
    c.a.K = I;
    c.a.out = y.data;
    c.a.out_bf16 = act == DType::kBF16;
    c.a.ldo = D;
    c.a.x = h.data;
    c.a.ldx = I;
    c.x_dtype = mid;
    // The tile table (moe_route's ids or moe_plan's tiles) was written before the gate/up launch
    // (and the swiglu or activation transform) ahead of this one, which trigger only after their
    // wait: the GEMV may read it, and the first weights, before its own wait (GemmArgs::tiles_early).
    c.a.tiles_early = env_setting(g_tiles_early, tiles_early_from_env);
    if (quant2) {
      const TensorView hq = scratch(DType::kF32, {N, I});
      ActQuantArgs q;
      q.descs = descs;
      q.desc_stride = 3;
      q.desc_offset = 2;
      q.row_expert = row_expert.as<const int32_t>();
      q.x = h.data;
      q.x_bf16 = mid == DType::kBF16;
      q.ldx = I;
      q.out = hq.as<float>();
      q.rows = N;
      q.n = I;
      q.pol = pol;
      if (pol.w4a4 && pol.act_scale == kActScaleStatic) q.err = op_error_record(*this);
      launch_act_quant(q, stream());
      c.a.x = hq.data;
      c.x_dtype = DType::kF32;
    }
    c.fmt_mask = tab.fmt2;
    c.w_vec = tab.vec2;
    c.grid_tiles = static_cast<int>(max_tiles);
    run_gemm(*this, c);
  }

  combine(y, gemv && env_setting(g_combine_early, combine_early_from_env) == 1);
}

void set_moe_prefill_grouped(bool grouped) { g_moe_grouped_gemm = grouped; }
void set_moe_prefill_overlap(int mode) { g_moe_overlap = mode < 0 ? -1 : mode; }
void set_moe_prefill_fuse_gate_up(int mode) { g_moe_fuse13 = mode < 0 ? -1 : mode; }
void set_moe_prefill_copy_budget(int64_t bytes) { g_moe_copy_budget = bytes > 0 ? bytes : 0; }
void set_moe_decode_direct(bool direct) { g_moe_direct = direct; }
void set_moe_gemv_max_tokens(int64_t n) { g_moe_gemv_max = n > 0 ? n : 0; }
void set_moe_gemv_tile_rows(int rows) {
  CLAWMINE_CHECK(rows <= 0 || tile_cap_ok(rows),
                 "set_moe_gemv_tile_rows: ", rows, " rows (expected a power of two up to ", kGemvMaxTileRows, ")");
  g_moe_tile_cap = rows > 0 ? rows : 0;
}
void set_swiglu_pairs(bool on) { g_swiglu_pairs = on; }
void set_moe_tiles_early(int mode) { g_tiles_early.store(mode < 0 ? -1 : mode > 0 ? 1 : 0, std::memory_order_relaxed); }
void set_moe_combine_early(int mode) {
  g_combine_early.store(mode < 0 ? -1 : mode > 0 ? 1 : 0, std::memory_order_relaxed);
}
void set_moe_plan_variant(int variant) { g_moe_plan = variant == 1 || variant == 2 ? variant : 0; }

MoePlanForTest moe_plan_for_test(ops::Backend& backend, const std::vector<int32_t>& idx, int64_t K, int64_t E,
                                 int tile_rows, int variant) {
  auto* be = dynamic_cast<CudaBackend*>(&backend);
  if (be == nullptr) throw Error("moe_plan_for_test: not a CUDA backend");
  const int64_t N = static_cast<int64_t>(idx.size());
  CLAWMINE_CHECK(N > 32 && K > 0 && N % K == 0 && E >= 1 && E <= kMaxExperts && tile_rows > 0,
                 "moe_plan_for_test: bad arguments");
  const int64_t max_tiles = (N + std::min(E, N) * (tile_rows - 1)) / tile_rows;
  ops::ScratchFrame frame(*be);
  const TensorView idx_d = be->scratch(DType::kI32, {N});
  be->upload(idx.data(), idx_d);
  MoePlanForTest r;
  r.row_token.assign(static_cast<size_t>(N), 0x5a5a5a5a);
  r.row_expert = r.pos_of = r.row_token;
  r.tiles.assign(static_cast<size_t>(max_tiles * 4), 0x5a5a5a5a);
  r.counts.assign(static_cast<size_t>(E), 0x5a5a5a5a);
  r.n_tiles = 0x5a5a5a5a;
  const TensorView row_token = be->scratch(DType::kI32, {N}), row_expert = be->scratch(DType::kI32, {N});
  const TensorView pos_of = be->scratch(DType::kI32, {N}), tiles = be->scratch(DType::kI32, {max_tiles, 4});
  const TensorView n_tiles = be->scratch(DType::kI32, {1}), counts = be->scratch(DType::kI32, {E});
  be->upload(r.row_token.data(), row_token);  // poisoned: every output must be written
  be->upload(r.row_expert.data(), row_expert);
  be->upload(r.pos_of.data(), pos_of);
  be->upload(r.tiles.data(), tiles);
  be->upload(r.counts.data(), counts);
  be->upload(&r.n_tiles, n_tiles);
  launch_moe_plan(*be, idx_d.as<const int32_t>(), N, K, E, tile_rows, max_tiles, row_token, row_expert, pos_of, tiles,
                  n_tiles, counts.as<int32_t>(), variant);
  try {
    check_op_errors(*be);
  } catch (const Error&) {
    r.op_error = true;
  }
  be->download(row_token, r.row_token.data());
  be->download(row_expert, r.row_expert.data());
  be->download(pos_of, r.pos_of.data());
  be->download(tiles, r.tiles.data());
  be->download(counts, r.counts.data());
  be->download(n_tiles, &r.n_tiles);
  be->synchronize();
  return r;
}

// Decode sizes (T <= kGemvMaxTokens) with no activation transform on w1/w3: w1 and w3 in one
// GEMV launch (z = 0, 1 over the expert's descriptor table, both reading x), as the routed
// experts do; otherwise (prefill, W8A8/W4A4 on w1/w3) one projection each through `project`.
// The table is cached under the ExpertWeights' address (op state), like the routed experts'.
void CudaBackend::swiglu_mlp(const TensorView& x, const ExpertWeights& w, float swiglu_limit, const TensorView& out) {
  static const char* op = "swiglu_mlp";
  expect_device(x, op, "x");
  expect_device(out, op, "out");
  check_act_dtype(x, op, "x");
  check_act_dtype(out, op, "out");
  if (x.rank() < 1) throw Error("cuda swiglu_mlp: x must have at least one dimension");
  const int64_t D = x.dim(-1), T = D ? x.numel() / D : 0;
  check_expert(w, D, op);
  if (out.numel() != T * D)
    throw Error(str_cat("cuda swiglu_mlp: out has shape ", shape_str(out.shape), ", expected [", T, ", ", D, "]"));
  if (T == 0) return;
  const int64_t I = w.w1.out_features;
  const WeightDesc d1 = make_weight_desc(w.w1, op), d3 = make_weight_desc(w.w3, op), d2 = make_weight_desc(w.w2, op);
  const ActPolicyDev pol = act_policy_dev(linear_policy());
  // Intermediates as in moe_experts: F32 when w2's input is quantized next.
  const DType mid = act_path(pol, d2.fmt) != kActNone ? DType::kF32 : x.dtype;
  ops::ScratchFrame frame(*this);
  const TensorView h = scratch(mid, {T, I});
  // Built (uploaded) on every path, so the first step of any size does it outside a capture.
  const MoeTable& tab = moe_table(*this, &w, 1, D, op);
  if (T <= kGemvMaxTokens && act_path(pol, d1.fmt) == kActNone && act_path(pol, d3.fmt) == kActNone) {
    GemmCall c;
    c.a.descs = static_cast<const WeightDesc*>(tab.dev.data);
    c.a.desc_stride = 3;
    c.a.desc_offset = 0;  // problem 0, z = 0: w1, z = 1: w3
    c.a.desc0 = d1;  // for the GEMV policy's size only (the kernels read the table): paired streaming
    c.a.n_z = 2;
    c.a.n_rows = I;
    c.a.K = D;
    c.a.x = x.data;
    c.a.ldx = D;
    c.a.x_z = 0;
    c.a.rows = T;
    c.a.tile_rows = gemv_tile_rows(T);
    c.x_dtype = x.dtype;
    c.fmt_mask = tab.fmt13;
    c.w_vec = tab.vec13;
    c.grid_tiles = static_cast<int>((T + c.a.tile_rows - 1) / c.a.tile_rows);
    gate_up_swiglu(*this, c, T, I, mid, swiglu_limit, h);
  } else {
    const TensorView g13 = scratch(mid, {2, T, I});  // gate, then up
    const TensorView gate = g13.slice0(0, 1).reshaped({T, I}), up = g13.slice0(1, 2).reshaped({T, I});
    project(*this, w.w1, d1, x, T, D, I, 1, gate);
    project(*this, w.w3, d3, x, T, D, I, 1, up);
    launch_swiglu(gate, up, h, swiglu_limit, stream());
  }
  project(*this, w.w2, d2, h, T, I, D, 1, out);
}

}  // namespace clawmine::backend::cuda
