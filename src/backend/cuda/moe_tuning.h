// Tuning and test hooks of moe_experts (moe.cu): its prefill path (BF16 expert copies and cuBLAS),
// its plan, and the decode-size shortcuts (no plan for one token, gate/up pairs).
// Plain C++ header (the kernel bench and the GPU tests include it). Not thread-safe: set them
// while no moe_experts call runs; every setter's default argument restores the default.
#pragma once

#include <cstdint>
#include <vector>

namespace clawmine::ops {
class Backend;
}  // namespace clawmine::ops

namespace clawmine::backend::cuda {

// Each projection of a chunk of experts as one cublasGemmGroupedBatchedEx (true, the default,
// used while the active experts average fewer than 384 rows) or one cublasGemmEx per expert.
void set_moe_prefill_grouped(bool grouped);

// Overlap of the experts' BF16 decode with the GEMMs (the decode of chunk i+1 on the backend's
// stream while a second, high-priority stream runs the GEMMs of chunk i). mode < 0: the
// environment's choice, CLAWMINE_MOE_OVERLAP (read once; "0" turns it off, default on); 0 off;
// > 0 on. Either way the chunks, the GEMM calls and so the results are the same.
void set_moe_prefill_overlap(int mode = -1);

// One GEMM over the stacked [w1; w3] copy of an expert (when w1 and w3 both have BF16 copies and
// the same NVFP4 weight_scale_2) instead of one per projection. mode < 0: CLAWMINE_MOE_FUSE13
// (read once; "0" turns it off, default on); 0 off; > 0 on. The results may differ in the last
// bit from the unfused GEMMs (cuBLAS may pick another kernel for the wider product).
void set_moe_prefill_fuse_gate_up(int mode = -1);

// Bytes of scratch for the BF16 expert copies (both buffers together); <= 0: the default (1 GiB).
// Tests force several chunks with a small budget.
void set_moe_prefill_copy_budget(int64_t bytes = 0);

// moe_experts' plan (expert-sorted rows, row tiles; one warp for N <= 32 occurrences, one block
// below 4096, else the multi-block launches): variant 0 that choice, 1 the one-block kernel,
// 2 the multi-block launches (both for N > 32). The outputs are the same whichever runs.
void set_moe_plan_variant(int variant = 0);

// One token at decode sizes without a plan (the default, true): its K rows stay in slot order,
// one-row GEMV tiles take their expert from the router's ids (GemmArgs::row_problem) and the
// combine checks the ids. false: moe_plan's expert-sorted rows and tiles, as for every other T.
// Both give the same bits (each row's GEMV and the combine's order do not depend on row order).
void set_moe_decode_direct(bool direct = true);

// The gate/up GEMV launch of moe_experts and swiglu_mlp storing h = swiglu(gate, up) itself where
// the streaming GEMV can pair them (gemm_swiglu_pairs: decode sizes; the default, true), instead
// of gate and up followed by the swiglu launch (false). Both give the same bits.
void set_swiglu_pairs(bool on = true);

// moe_experts' down projections at GEMV sizes reading their tile table and first weights before
// griddepcontrol.wait (GemmArgs::tiles_early), so their first loads overlap the gate/up launch's
// tail. mode < 0: the environment's CLAWMINE_MOE_TILES_EARLY (read once; "0" turns it off,
// default on); 0 off; > 0 on. The same bits either way.
void set_moe_tiles_early(int mode = -1);

// moe_experts' combine at GEMV sizes reading the ids, weights and plan rows and sorting its slots
// before griddepcontrol.wait, so that only its loads of the down projections' output follow the
// wait (H200, V4-Flash decode b=1: 5.17-5.23 against 5.23-5.27 ms per step). mode < 0: the
// environment's CLAWMINE_MOE_COMBINE_EARLY (read once; "0" turns it off, default on); 0 off; > 0
// on. The same bits either way.
void set_moe_combine_early(int mode = -1);

// The MoE router's GEMV and its route as one launch at decode sizes (CudaBackend::moe_router,
// route.cu: the last block routes) instead of linear and moe_route. mode < 0: the environment's
// CLAWMINE_MOE_ROUTER_FUSED (read once; "1" turns it on, default off: on an H200 the route ended
// 1.5 us later per layer than the GEMV and route launches, 5.35-5.40 against 5.27-5.28 ms per
// V4-Flash decode step, docs/PERFORMANCE.md, thirty-ninth session); 0 off; > 0 on. The selection and weights are moe_route's for the logits the
// launch computes; the logits are the router linear's within its tolerance (another summation
// order), so a near-tie may select differently from the unfused path.
void set_moe_router_fused(int mode = -1);
// How many fused router launches this process has made (tests: that the fused path ran).
int64_t moe_router_fused_launches();

// Tokens up to which moe_experts runs the experts as GEMV tiles (expert-sorted rows in tiles of at
// most 16, the weights streamed by the GEMV kernels: decode, batched decode, the prefill of short
// prompts) instead of 64-row GEMM tiles or, from 64 rows per expert on average, the BF16 copies and
// cuBLAS; with BF16 activations and no activation transform (otherwise 32 tokens). n <= 0: the environment's CLAWMINE_MOE_GEMV_MAX_TOKENS (read once; a positive integer),
// else 1024 (moe.cu: measured). The kernel bench's mid-size cases compare the paths; the results
// agree within the kernels' tolerances (another summation order), not bit for bit.
void set_moe_gemv_max_tokens(int64_t n = 0);

// The largest GEMV tile of moe_experts (rows of one expert per tile: the power of two at or above
// their average, at most this): 16 by default (tiles of 9 to 16 rows run the streaming GEMV's two
// n tiles); 8 gives more tiles per expert, each reading the expert's weights again (slower at 128
// and 512 tokens: PERFORMANCE.md, eighteenth session).
// rows <= 0: CLAWMINE_MOE_GEMV_TILE_ROWS (read once; 1, 2, 4, 8 or 16), else 16.
void set_moe_gemv_tile_rows(int rows = 0);

// The plan alone (tests): idx [N = T*K] (N > 32), outputs downloaded; unwritten entries keep
// the poison 0x5a5a5a5a. tiles: max_tiles * 4 ints {expert, first row, rows, 0}.
struct MoePlanForTest {
  std::vector<int32_t> row_token, row_expert, pos_of, tiles, counts;
  int32_t n_tiles = 0;
  bool op_error = false;  // an invalid expert id was reported
};
MoePlanForTest moe_plan_for_test(ops::Backend& backend, const std::vector<int32_t>& idx, int64_t K, int64_t E,
                                 int tile_rows, int variant);

}  // namespace clawmine::backend::cuda
