// Prefill-sized projections through cuBLAS (issue 9): the quantized weight is decoded exactly to
// a BF16 scratch copy by one elementwise kernel, then multiplied by cuBLAS (BF16 operands, f32
// accumulation). The formats served are those whose decoded values are exact in bf16 (the
// formats of the bf16 MMA kernel): FP8 E4M3 x E8M0 block scale, MXFP4 (E2M1 x E8M0), NVFP4
// (E2M1 x E4M3) without its F32 global scale weight_scale_2, which is applied as cuBLAS's alpha
// (read from device memory: f32 accumulator * g, rounded once to the output, as gemm_mma's
// epilogue does). The copy costs one read of the packed weight and a 2-byte write per element,
// small next to a GEMM over >= kDequantMinRows rows.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/linear_kernels.cuh"
#include "backend/cuda/moe_tuning.h"  // set_moe_prefill_grouped (the kernel bench) and the other moe prefill hooks

namespace clawmine::backend::cuda {

// Activation rows from which a uniform projection (linear, grouped_linear, swiglu_mlp) with BF16
// activations and a dequantizable weight goes through the BF16 copy and cuBLAS: every row count
// past the GEMV's (linear.cu's kGemvMaxRows). The copy adds about 4 bytes of traffic per weight
// element; the 64x128-tile MMA kernel it replaces fills a few row tiles at small T. Measured on an
// H100 (PERFORMANCE.md, eighteenth session, first token of the V4-Flash geometry): 96-token
// prompts 52.5 ms through the copy against ~100 ms through the MMA kernel (the earlier estimate,
// 128 rows, had left 65-127 on it).
inline constexpr int64_t kDequantMinRows = 65;

// Formats dequant_bf16 serves (exact in bf16): FP8 with E8M0 scales, MXFP4, NVFP4.
bool dequant_supported(WFmt f);

// W_i decoded to BF16 [rows, k] row-major at out + i * out_stride (elements), for items
// i < n_items: weight descs[items[i]] (device table and index list) or desc0 (n_items = 1).
// Every weight must have 16-byte aligned rows with k a multiple of its format's chunk
// (weight_rows_aligned); out 16-byte aligned. Items of a format other than fmt are skipped
// (one launch per format present, as the grouped GEMM kernels do). NVFP4's g is NOT applied.
struct DequantArgs {
  const WeightDesc* descs = nullptr;
  const int32_t* items = nullptr;
  WeightDesc desc0{};
  __nv_bfloat16* out = nullptr;
  int64_t out_stride = 0;
  int32_t n_items = 1;
  int64_t max_elems = 0;  // largest rows * k among the items (sizes the grid)
  int32_t fmt = 0;
};
void launch_dequant_bf16(const DequantArgs& a, int sm_count, cudaStream_t stream);

void cublas_check(cublasStatus_t st, const char* what);  // Error naming the call and the status

// Uniform-mode GemmArgs (no descs/tiles/x_rows; BF16 x) with BF16 weights w: problem z uses rows
// [z*w_row_z, ...) of w, ldw elements per row. alpha_dev: a device F32 scalar multiplying the
// product (NVFP4's weight_scale_2), or null for 1.
void cublas_bf16_gemm(CudaBackend& be, const GemmArgs& a, const void* w, int64_t ldw, const float* alpha_dev);

// The whole prefill path for a uniform-mode projection: false (nothing done) when it does not
// apply (format, alignment, rows, BF16 x, or too little free scratch for the copy).
bool gemm_via_bf16_copy(CudaBackend& be, const GemmArgs& a, bool x_bf16, bool w_vec);

}  // namespace clawmine::backend::cuda
