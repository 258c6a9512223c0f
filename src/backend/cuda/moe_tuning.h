// Tuning and test hooks of moe_experts' prefill path (moe.cu: BF16 expert copies and cuBLAS).
// Plain C++ header (the kernel bench and the GPU tests include it). Not thread-safe: set them
// while no moe_experts call runs; every setter's default argument restores the default.
#pragma once

#include <cstdint>

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

}  // namespace clawmine::backend::cuda
