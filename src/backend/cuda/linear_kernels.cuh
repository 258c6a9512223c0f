// The projection kernels behind linear, grouped_linear, swiglu_mlp and moe_experts, and what
// they share: the launch arguments (GemmArgs), the activation transforms of the linear policy
// on device (W8A8, W4A4), and the launchers. One GemmArgs describes a batch of problems
//   out[i, z*out_z + r] = sum_k W_(p,z)[r, k] * x[row(i), z*x_z + k]      r < n_rows, k < K
// over row tiles (p, row0, nrows): uniform tiles of `rows` (linear: p = 0; grouped_linear: z =
// group) or a device tile table (moe_experts: p = expert, rows sorted by expert). Kernels:
//   gemv   (linear_gemv.cu)  decode-sized tiles (<= 16 rows): weight streaming, 16-byte loads
//   gemm   (linear_gemm.cu)  64-row tiles: bf16 mma.sync for bf16 x and bf16-exact formats,
//                            float32 FMA otherwise (the --act-dtype f32 path)
// All accumulate in float32 and are deterministic (no atomics; the streaming GEMV's split-k
// sums go through shared memory and a thread-block cluster's shared memory in fixed order).
#pragma once

#include <cuda_runtime.h>

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "backend/cuda/op_errors.cuh"
#include "backend/cuda/weight_formats.cuh"
#include "ops/backend.h"

namespace clawmine::backend::cuda {

class CudaBackend;

// ---- Activation transforms (quant/act_quant.h, backend/cpu/act_policy.h) -------------------
enum ActPathDev : int32_t { kActNone = 0, kActFp8 = 1, kActNvfp4 = 2 };
enum ActScaleDev : int32_t { kActScaleStatic = 0, kActScaleDynamic = 1, kActScaleAuto = 2 };

struct ActPolicyDev {
  int32_t w4a4 = 0;      // NVFP4 weights: quantize activations (Nvfp4Path::kW4A4)
  int32_t w8a8 = 0;      // FP8-block and MXFP4 weights: quantize activations (Fp8Path::kW8A8)
  int32_t act_scale = kActScaleAuto;
  int32_t saturate = 1;
};
ActPolicyDev act_policy_dev(const ops::LinearPolicy& p);

// The transform a weight format gets under a policy (resolve_act_transform of the CPU backend).
__host__ __device__ inline int32_t act_path(const ActPolicyDev& p, int32_t fmt) {
  const WFmt f = static_cast<WFmt>(fmt);
  if ((f == WFmt::kFp8E8M0 || f == WFmt::kFp8F32 || f == WFmt::kMxfp4) && p.w8a8) return kActFp8;
  if (f == WFmt::kNvfp4 && p.w4a4) return kActNvfp4;
  return kActNone;
}

// Transformed activations, always F32: out[z, i, :] = transform_(W_(p,z))(x[row(i), z*x_z ...]).
// The weight of row i is descs[row_expert[i]*desc_stride + desc_offset + z] (table) or desc0.
struct ActQuantArgs {
  const WeightDesc* descs = nullptr;
  int32_t desc_stride = 0, desc_offset = 0;
  WeightDesc desc0{};
  const int32_t* row_expert = nullptr;  // [rows] (table mode)
  const void* x = nullptr;              // F32 or BF16
  int32_t x_bf16 = 0;
  int64_t ldx = 0, x_z = 0;
  const int32_t* x_rows = nullptr;      // optional row map: input row of output row i
  float* out = nullptr;                 // [n_z, rows, n]
  int64_t rows = 0, n = 0;
  int32_t n_z = 1;
  ActPolicyDev pol;
  OpErrorRecord* err = nullptr;  // --act-scale static with an unusable input_scale is recorded here
};
void launch_act_quant(const ActQuantArgs& a, cudaStream_t stream);

// ---- Projections ---------------------------------------------------------------------------
struct GemmArgs {
  // Weights of problem (p, z): descs[p*desc_stride + desc_offset + z] (table), else desc0 with
  // its rows offset by z*w_row_z (grouped_linear: group z is rows [z*Lo, (z+1)*Lo)). A table
  // must be written by an upload, never by a kernel: GEMVs read it before griddepcontrol.wait
  // when there is no tile table (weights_before_wait). With a table, desc0 may hold one problem's
  // weight for the host-side GEMV policy to size the launch (swiglu_mlp); kernels ignore it.
  const WeightDesc* descs = nullptr;
  int32_t desc_stride = 0, desc_offset = 0;
  WeightDesc desc0{};
  int64_t w_row_z = 0;
  int64_t n_rows = 0;  // output features per problem
  int64_t K = 0;       // inner dimension
  // Activation row i of problem z: x + (x_rows ? x_rows[i] : i)*ldx + z*x_z (elements).
  const void* x = nullptr;
  int64_t ldx = 0, x_z = 0;
  const int32_t* x_rows = nullptr;
  // Output row i, feature r of problem z: out + i*ldo + z*out_z + r (elements), F32 or BF16.
  void* out = nullptr;
  int64_t ldo = 0, out_z = 0;
  int32_t out_bf16 = 0;
  // Row tiles: table {p, row0, nrows, -} with *n_tiles valid entries, or one row each in row
  // order with problem row_problem[i] (tile i = row i of `rows`: a router's expert ids in slot
  // order; an id outside [0, n_problems) skips its row), or uniform over `rows`. The first two are
  // written by kernels of the step (moe_plan, moe_route): "tile tables", read after the wait.
  const int4* tiles = nullptr;
  const int32_t* n_tiles = nullptr;
  const int32_t* row_problem = nullptr;
  int32_t n_problems = 0;
  int64_t rows = 0;
  int32_t tile_rows = 0;
  int32_t n_z = 1;
  int32_t fmt = 0;  // the format this launch serves (table mode skips other formats)
  // Gate/up pairs (swiglu_mlp, moe_experts at decode sizes): problems z = 0 (gate) and z = 1
  // (up) read the same x (x_z = 0); one block computes m-tile m of both and stores
  // h = swiglu_value(gate, up, swiglu_limit), each rounded to the output dtype first as a stored
  // gate/up would be, at z = 0 only. The streaming GEMV alone (gemv_swiglu_pairs says when).
  int32_t swiglu_pairs = 0;
  float swiglu_limit = 0.0f;
  // The tile table may be read before griddepcontrol.wait (weights_before_wait): set by
  // moe_experts on its down projections, whose table (moe_plan's tiles or moe_route's ids) was
  // written before the kernel ahead of them in the stream, and that kernel (a tile-table GEMV,
  // the swiglu or the activation transform) triggers its dependents only after its own wait: so
  // once any block of this launch runs, the table's writer has completed. The table is read
  // through L2 (tile_of).
  int32_t tiles_early = 0;
};

// h = silu(min(g, L)) * clamp(u, -L, L), in double like the CPU; NaN propagates (std::min/clamp
// comparisons, not fminf).
__device__ __forceinline__ float swiglu_value(float gate, float up, float limit) {
  const double L = limit;
  double g = gate, u = up;
  g = L < g ? L : g;
  u = u < -L ? -L : (L < u ? L : u);
  return static_cast<float>(g / (1.0 + exp(-g)) * u);
}

// ---- Device helpers shared by the projection kernels ---------------------------------------
struct Tile {
  int32_t p;       // problem (expert) index
  int64_t row0;    // first activation/output row
  int32_t nrows;   // rows in this tile (>= 1)
};
// Tile `tile` of the launch; false when it is past the end (table mode: *n_tiles) or its row's
// problem id is not one (row_problem). kRows: 0 any mode (a runtime branch), 1 a table or uniform
// tiles, 2 row_problem only (the streaming GEMV instantiates these two apart: at its register cap
// the third branch alone made the FP8 kernel spill).
template <int kRows = 0>
__device__ __forceinline__ bool tile_of(const GemmArgs& a, int64_t tile, Tile& t) {
  if (kRows == 2 || (kRows == 0 && a.row_problem)) {
    if (tile >= a.rows) return false;
    t.p = __ldcg(a.row_problem + tile);
    t.row0 = tile;
    t.nrows = 1;
    return static_cast<uint32_t>(t.p) < static_cast<uint32_t>(a.n_problems);
  }
  if (a.tiles) {
    if (tile >= __ldcg(a.n_tiles)) return false;
    const int4 e = __ldcg(a.tiles + tile);
    t.p = e.x;
    t.row0 = e.y;
    t.nrows = e.z;
    return t.nrows > 0;
  }
  t.p = 0;
  t.row0 = tile * a.tile_rows;
  const int64_t left = a.rows - t.row0;
  t.nrows = static_cast<int32_t>(left < a.tile_rows ? left : a.tile_rows);
  return t.nrows > 0;
}
__device__ __forceinline__ WeightDesc desc_of(const GemmArgs& a, int32_t p, int32_t z) {
  return a.descs ? a.descs[static_cast<int64_t>(p) * a.desc_stride + a.desc_offset + z] : a.desc0;
}
// Whether a launch may load weights before griddepcontrol.wait (pdl_wait, common.cuh): without
// a tile table the tiles follow from the arguments, the weight from desc0 or from a descriptor
// table, and weights, their scales and descriptor tables (MoeTable, moe.cu) are written only by
// uploads before the decode step, never by a kernel of it (copies are fully serialized). So
// these launches (linear, grouped_linear, swiglu_mlp's fused w1/w3) issue their first weight
// loads before the wait: with PDL their blocks start while the previous kernel finishes and the
// first DRAM round trip overlaps it. Activations, x_rows and outputs stay after the wait.
// Tile-table launches (moe_experts) take the expert of each tile from what moe_plan (tiles) or
// moe_route (row_problem) wrote: nothing before the wait, unless GemmArgs::tiles_early says that
// writer has completed by the time any block runs (then the table and the weights before it;
// tile_of reads the table through L2). Every block still executes the wait before it exits (a grid
// then completes only after the one before it, so the chain stays transitive). A launch that
// waits first triggers its dependents after the wait (pdl_begin, common.cuh), which
// is what makes a later launch's tiles_early hold.
__host__ __device__ __forceinline__ bool has_tile_table(const GemmArgs& a) {
  return a.tiles != nullptr || a.row_problem != nullptr;
}
__device__ __forceinline__ bool weights_before_wait(const GemmArgs& a) { return !has_tile_table(a) || a.tiles_early; }
// First weight row of problem z (uniform mode: grouped_linear's group offset).
__device__ __forceinline__ int64_t weight_row_base(const GemmArgs& a, int32_t z) {
  return a.descs ? 0 : z * a.w_row_z;
}
template <typename XT>
__device__ __forceinline__ const XT* x_row(const GemmArgs& a, int64_t i, int32_t z) {
  const int64_t r = a.x_rows ? a.x_rows[i] : i;
  return static_cast<const XT*>(a.x) + r * a.ldx + z * a.x_z;
}
__device__ __forceinline__ void store_out(const GemmArgs& a, int64_t i, int32_t z, int64_t r, float v) {
  const int64_t at = i * a.ldo + z * a.out_z + r;
  if (a.out_bf16) {
    static_cast<__nv_bfloat16*>(a.out)[at] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(a.out)[at] = v;
  }
}
// P consecutive activations (P = 4 or 8) as floats; p aligned to P elements (16-byte rows).
template <typename XT, int P>
__device__ __forceinline__ void load_x(const XT* p, float* v) {
  if constexpr (std::is_same_v<XT, float>) {
#pragma unroll
    for (int j = 0; j < P / 4; ++j) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(p) + j);
      v[4 * j] = f.x;
      v[4 * j + 1] = f.y;
      v[4 * j + 2] = f.z;
      v[4 * j + 3] = f.w;
    }
  } else {
    static_assert(std::is_same_v<XT, __nv_bfloat16>, "activations are F32 or BF16");
    uint32_t u[P / 2];
    if constexpr (P == 8) {
      const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
      u[0] = q.x, u[1] = q.y, u[2] = q.z, u[3] = q.w;
    } else {
      const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
      u[0] = q.x, u[1] = q.y;
    }
#pragma unroll
    for (int j = 0; j < P / 2; ++j) {
      v[2 * j] = __uint_as_float(u[j] << 16);
      v[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
    }
  }
}
// D = A * B + D; A 16x16 (row), B 16x8 (col), bf16 inputs, f32 accumulators. Fragments of lane
// (g, t) = (lane/4, lane%4): a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]},
// b = {B[2t..][g], B[2t+8..][g]}, c = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Calls f(std::integral_constant<WFmt, F>{}) for a runtime format.
template <typename Fn>
void dispatch_wfmt(WFmt f, Fn&& fn) {
  switch (f) {
    case WFmt::kF32: fn(std::integral_constant<WFmt, WFmt::kF32>{}); return;
    case WFmt::kBF16: fn(std::integral_constant<WFmt, WFmt::kBF16>{}); return;
    case WFmt::kF16: fn(std::integral_constant<WFmt, WFmt::kF16>{}); return;
    case WFmt::kFp8E8M0: fn(std::integral_constant<WFmt, WFmt::kFp8E8M0>{}); return;
    case WFmt::kFp8F32: fn(std::integral_constant<WFmt, WFmt::kFp8F32>{}); return;
    case WFmt::kMxfp4: fn(std::integral_constant<WFmt, WFmt::kMxfp4>{}); return;
    case WFmt::kNvfp4: fn(std::integral_constant<WFmt, WFmt::kNvfp4>{}); return;
  }
  throw Error("cuda linear: unknown weight format");
}

inline constexpr int kGemvMaxTileRows = 16;  // tile_rows <= 16: GEMV kernels; else 64-row GEMM tiles
inline constexpr int kGemmTileRows = 64;

// GEMV launch: needs every weight row and x row 16-byte aligned with K a multiple of the format's
// chunk, else the scalar GEMV. launch_gemv takes a tensor-core kernel for bf16 activations and
// formats that have it (gemv_mma_supported), else the float32 FMA kernel; launch_gemv_fma always
// takes the FMA kernel (the float32 path, and the baseline of tools/gemv_probe). Which
// tensor-core kernel (gemv_kernel_in_use): kMma, the weight-streaming kernel of run 3
// (docs/perf-notes/gemv.md; dense BF16 at <= 2 tokens goes to the FMA kernel), or kStream, the
// decode kernel built for bytes in flight (tiles of <= 16 tokens whose activations fit its shared
// memory; others as kMma), or kAuto (the default): per format, size and tokens, the faster of the
// three as measured by tools/gemv_probe. Chosen by CLAWMINE_GEMV=auto|mma|stream, read once.
void launch_gemv(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream);
// Whether launch_gemv takes `a` with swiglu_pairs set: the streaming kernel is its choice for a
// (bf16 x, n_z = 2, x_z = 0) and its plan keeps one m-tile per block and no cluster, so a block of
// twice the warps holds both problems' m-tile with every warp's k range unchanged (the gate and
// up sums then have the bits of the unpaired launch). A launch with swiglu_pairs where this is
// false throws.
bool gemv_swiglu_pairs(const GemmArgs& a, bool x_bf16, int grid_tiles);
void launch_gemv_fma(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream);
bool gemv_mma_supported(WFmt f);
enum class GemvKernel : int32_t { kDefault = 0, kMma = 1, kStream = 2, kAuto = 3 };
GemvKernel gemv_kernel_in_use();  // kAuto, kMma or kStream; throws on an unknown CLAWMINE_GEMV
// Tests and tools/gemv_probe (not thread-safe): launches from now on use kernel k; kDefault goes
// back to CLAWMINE_GEMV. (tests/unit/backend_cuda/linear_test.cpp declares these two itself.)
void set_gemv_kernel(GemvKernel k);
// Tuning hook for tools/gemv_probe (not thread-safe): the tensor-core GEMV streams weights
// through a cp.async shared-memory ring (staged = 1, the default) or straight into registers
// (0); rows = 1 or 2 m-tiles per warp, 0 by the row count (the default).
void set_gemv_mma_config(int staged, int rows);
// Tuning hook for tools/gemv_probe and tests (not thread-safe): streaming launches without a
// tile table whose warps own more k blocks than their two register groups also prefetch the rest
// of their segment into L2 (cp.async.bulk.prefetch, before griddepcontrol.wait). Off by default;
// results unchanged.
void set_gemv_stream_l2_prefetch(bool on);
// Tuning hook for tools/gemv_probe and tests (not thread-safe): m-tiles per streaming block
// (launches without thread-block clusters, rounded down to a power of two that keeps the block
// at <= 16 warps); 0 (the default) = the plan's choice (several only for tiles of >= 2 tokens
// whose m-tiles get few warps). Results unchanged, bit for bit.
void set_gemv_stream_mtiles(int n);
// tools/gemv_probe: how the streaming GEMV would lay out launch a (grid (blocks_x, grid_tiles,
// n_z or 1 for pairs), blocks of `warps` warps: mt m-tiles of S = warps / mt warps each, cluster
// rank c = blockIdx.x % kc; warp w of m-tile m owns k blocks [(c*S + w%S)*seg, +seg) of n_kb);
// false when it would not stream.
struct GemvStreamShape {
  int warps = 0, kc = 1, mt = 1, seg = 0, n_kb = 0;
  int64_t blocks_x = 0;
};
bool gemv_stream_shape(const GemmArgs& a, int grid_tiles, GemvStreamShape& s);
// PDL for the GEMV launches that load weights before griddepcontrol.wait (the FMA and streaming
// kernels): on with every launch's (pdl_enabled(), the default), or for these alone with
// CLAWMINE_PDL=0 (then CLAWMINE_GEMV_PDL=0 turns theirs off too; read once). Tests and
// tools/gemv_probe (not thread-safe): set_gemv_pdl(1) on, 0 off, -1 back to the environment.
void set_gemv_pdl(int on);
bool gemv_pdl();  // whether those launches are programmatic dependent launches now
int multiprocessors();  // of the current device, read once
int device_cc_major();  // the current device's compute capability major, read once
// The one-token GEMV on wgmma (linear_gemv_wgmma.cu; sm_90a builds on a Hopper device):
// launch_gemv takes it before the streaming kernel for dense FP8 launches of one token, >= 16 MiB
// of weights, rows a multiple of 64 and K of 512 (wq_b, wo_a, wo_b; and the shared expert's w1 /
// w3 over swiglu_mlp's descriptor table, paired with SwiGLU or not) and the routed experts' FP4
// (MXFP4, NVFP4) down projections (expert launches of one-row tiles, one problem); with
// CLAWMINE_GEMV_WGMMA_EXPERTS=1 also dense FP4 launches and every expert launch of one-row tiles
// (FP8, MXFP4 or NVFP4, gate/up pairs included), with =0 no expert launch. gemv_wgmma_applies says
// whether it would; launch_gemv_wgmma launches it when it applies (false otherwise).
// CLAWMINE_GEMV_WGMMA=0 turns it off (both read once); set_gemv_wgmma for tests and
// tools/gemv_probe (not thread-safe): 0 off, 1 dense and the shared expert, 2 also the FP4 down
// projections (the default), 3 every expert launch and dense FP4, -1 back to the environment.
bool gemv_wgmma_applies(const GemmArgs& a, bool x_bf16, int grid_tiles);
bool launch_gemv_wgmma(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream);
void set_gemv_wgmma(int on);
// FP8 wgmma launches without a k split (wq_b) and the shared expert's gate/up with 2 register
// stages instead of 4 (default; CLAWMINE_GEMV_WGMMA_SHALLOW=0 turns it off, read once): 1 on, 0
// off, -1 back to the environment.
void set_gemv_wgmma_shallow(int on);
// Frees the split-k workspace of `stream` (if it has one); called before the stream is destroyed,
// once its work is done.
void release_gemv_workspace(cudaStream_t stream) noexcept;
void launch_gemv_scalar(const GemmArgs& a, bool x_bf16, int grid_tiles, cudaStream_t stream);
// GEMM launch: grid (tiles, row blocks, n_z); w_vec/x_vec enable 16-byte tile loads.
void launch_gemm_fma(const GemmArgs& a, bool x_bf16, bool w_vec, bool x_vec, int grid_tiles, cudaStream_t stream);
void launch_gemm_mma(const GemmArgs& a, bool w_vec, bool x_vec, int grid_tiles, cudaStream_t stream);
bool mma_supported(WFmt f);  // decoded values exact in bf16 (dense BF16, FP8-E8M0, MXFP4, NVFP4)
int wfmt_chunk(WFmt f);      // elements per 16 stored bytes
int gemv_tile_rows(int64_t rows);  // GEMV tile for `rows` rows: the power of two >= rows, at most 16

// One projection call as linear.cu dispatches it: picks GEMV / cuBLAS / MMA / FMA per format
// present (fmt_mask bit f = WFmt f). x_dtype is the dtype of a.x (after any transform).
struct GemmCall {
  GemmArgs a;
  DType x_dtype = DType::kF32;
  uint32_t fmt_mask = 0;
  bool w_vec = true;    // every weight involved has 16-byte aligned rows
  int grid_tiles = 0;   // tiles along the tile grid dimension (table mode: an upper bound)
};
void run_gemm(CudaBackend& be, const GemmCall& c);
// Whether run_gemm can take the gate/up call c (n_z = 2: w1, w3 over the same x) with
// a.swiglu_pairs set: one weight format, aligned rows and bf16 x, and gemv_swiglu_pairs.
bool gemm_swiglu_pairs(const GemmCall& c);

// Host helpers (linear.cu).
WeightDesc make_weight_desc(const ops::LinearWeight& w, const char* op);  // validates; device views
bool weight_rows_aligned(const WeightDesc& d);                            // 16-byte rows
// NVFP4 + W4A4 + --act-scale static needs the checkpoint's input_scale: an Error naming w.
void check_static_scale(const ops::LinearPolicy& p, const ops::LinearWeight& w, const WeightDesc& d);

// Uniform-mode projection of contiguous activations with the linear policy applied:
// x [rows, n_z*K] (x_z = K per problem z), out [rows, n_z*n_rows'] as in GemmArgs. Used by
// linear, grouped_linear and swiglu_mlp.
void project(CudaBackend& be, const ops::LinearWeight& w, const WeightDesc& d, const TensorView& x, int64_t rows,
             int64_t K, int64_t n_rows, int32_t n_z, const TensorView& out);

}  // namespace clawmine::backend::cuda
