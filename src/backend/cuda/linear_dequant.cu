// Prefill projections through an exact BF16 copy of the weight and cuBLAS (linear_dequant.cuh).
//   dequant_bf16_kernel  one thread per 8-element piece of a format chunk (16 stored bytes: 16 FP8
//                        or 32 FP4 elements), decoded with WeightDecoder<F>::piece<false> (exact,
//                        without NVFP4's g) and stored as 16 bytes of bf16, a warp's stores
//                        contiguous; grid (blocks, items), grid-stride over pieces.
//   cublas_bf16_gemm     cublasGemmStridedBatchedEx, column-major view as cublas_bf16: C (n_rows x
//                        rows, ldc = ldo) = op_T(W: K x n_rows, ldw) * X (K x rows, ldb = ldx).
#include <cuda_bf16.h>

#include <algorithm>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/linear_dequant.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kDequantThreads = 256;

__device__ __forceinline__ uint32_t bf16x2_rn(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // exact here: the values fit bf16
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Thread i of the grid-stride walk takes piece i % kPieces of chunk i / kPieces (8 elements: a
// 16-byte store), so a warp's stores cover 512 contiguous bytes and every 32-byte sector is
// written whole by one instruction (the copy is 4x the bytes read for FP4); the kPieces threads of
// a chunk load the same 16 bytes (one transaction). kUnroll pieces per thread have their loads in
// flight before the first is decoded.
template <WFmt F>
__global__ void __launch_bounds__(kDequantThreads) dequant_bf16_kernel(const DequantArgs a) {
  pdl_wait();
  pdl_trigger();
  using D = WeightDecoder<F>;
  static_assert(D::kBf16Exact && D::kPiece == 8, "bf16-exact formats decoded 8 elements at a time");
  constexpr int E = D::kChunk, P = D::kPiece, kPieces = E / P, kUnroll = 4;
  const int item = blockIdx.y;
  const WeightDesc d = a.descs ? a.descs[a.items[item]] : a.desc0;
  if (d.fmt != static_cast<int32_t>(F)) return;
  const int64_t cpr = d.k / E, n = d.rows * cpr * kPieces;  // pieces of this weight
  uint4* out = reinterpret_cast<uint4*>(a.out + item * a.out_stride);  // piece i at out[i] (rows are contiguous)
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i0 < n; i0 += kUnroll * stride) {
    uint4 raw[kUnroll];
    typename D::Scales sc[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * stride;
      if (i < n) {
        const int64_t c = i / kPieces, r = c / cpr, kc = c - r * cpr;
        raw[u] = ld_stream16(d.w + r * d.row_bytes + kc * 16);
        sc[u] = D::load_scales(d, r, kc);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * stride;
      if (i < n) {
        float w[P];
        D::template piece<false>(raw[u], static_cast<int>(i % kPieces), sc[u], 1.0f, w);
        out[i] = make_uint4(bf16x2_rn(w[0], w[1]), bf16x2_rn(w[2], w[3]), bf16x2_rn(w[4], w[5]), bf16x2_rn(w[6], w[7]));
      }
    }
  }
}

// Sets a cuBLAS pointer mode for one call and restores the previous one (also on error).
class PointerMode {
 public:
  PointerMode(cublasHandle_t h, cublasPointerMode_t mode) : h_(h) {
    cublas_check(cublasGetPointerMode(h_, &old_), "cublasGetPointerMode");
    cublas_check(cublasSetPointerMode(h_, mode), "cublasSetPointerMode");
  }
  ~PointerMode() { cublasSetPointerMode(h_, old_); }
  PointerMode(const PointerMode&) = delete;
  PointerMode& operator=(const PointerMode&) = delete;

 private:
  cublasHandle_t h_;
  cublasPointerMode_t old_ = CUBLAS_POINTER_MODE_HOST;
};

}  // namespace

bool dequant_supported(WFmt f) { return f == WFmt::kFp8E8M0 || f == WFmt::kMxfp4 || f == WFmt::kNvfp4; }

void cublas_check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(str_cat("cuda linear: ", what, " failed: ", cublasGetStatusString(st)));
}

void launch_dequant_bf16(const DequantArgs& a, int sm_count, cudaStream_t stream) {
  const WFmt F = static_cast<WFmt>(a.fmt);
  if (a.n_items <= 0 || a.max_elems <= 0) return;
  CLAWMINE_CHECK(a.n_items <= 65535, "dequant_bf16: ", a.n_items, " weights in one launch (at most 65535)");
  CLAWMINE_CHECK(reinterpret_cast<uintptr_t>(a.out) % 16 == 0 && a.out_stride % 8 == 0,
                 "dequant_bf16: the BF16 copy must be 16-byte aligned");
  const int64_t chunks = a.max_elems / 16;  // at least this many threads' worth for FP8, twice for FP4
  const unsigned bx = static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(blocks_for(chunks, kDequantThreads), int64_t{8} * std::max(1, sm_count))));
  const dim3 grid(bx, static_cast<unsigned>(a.n_items));
  switch (F) {
    case WFmt::kFp8E8M0:
      launch_kernel(dequant_bf16_kernel<WFmt::kFp8E8M0>, grid, kDequantThreads, 0, stream, a);
      break;
    case WFmt::kMxfp4:
      launch_kernel(dequant_bf16_kernel<WFmt::kMxfp4>, grid, kDequantThreads, 0, stream, a);
      break;
    case WFmt::kNvfp4:
      launch_kernel(dequant_bf16_kernel<WFmt::kNvfp4>, grid, kDequantThreads, 0, stream, a);
      break;
    default: throw Error(str_cat("cuda dequant_bf16: format ", wfmt_name(F), " has no exact bf16 copy"));
  }
  CLAWMINE_CUDA_LAUNCHED("dequant_bf16");
}

void cublas_bf16_gemm(CudaBackend& be, const GemmArgs& a, const void* w, int64_t ldw, const float* alpha_dev) {
  constexpr int64_t kIntMax = (int64_t{1} << 31) - 1;
  CLAWMINE_CHECK(a.n_rows <= kIntMax && a.rows <= kIntMax && a.K <= kIntMax && a.ldx <= kIntMax &&
                     a.ldo <= kIntMax && ldw <= kIntMax && a.n_z >= 1,
                 "cuBLAS dimensions exceed int");
  CLAWMINE_CHECK(!a.descs && !has_tile_table(a) && !a.x_rows, "cublas_bf16_gemm: uniform problems only");
  cublasHandle_t h = be.cublas();
  cublas_check(cublasSetStream(h, be.stream()), "cublasSetStream");
  const long long w_z = static_cast<long long>(a.w_row_z * ldw);
  auto gemm = [&](const void* alpha, const void* beta) {
    cublas_check(cublasGemmStridedBatchedEx(
                     h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(a.n_rows), static_cast<int>(a.rows),
                     static_cast<int>(a.K), alpha, w, CUDA_R_16BF, static_cast<int>(ldw), w_z, a.x, CUDA_R_16BF,
                     static_cast<int>(a.ldx), static_cast<long long>(a.x_z), beta, a.out,
                     a.out_bf16 ? CUDA_R_16BF : CUDA_R_32F, static_cast<int>(a.ldo), static_cast<long long>(a.out_z),
                     a.n_z, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmStridedBatchedEx");
  };
  if (!alpha_dev) {
    const float alpha = 1.0f, beta = 0.0f;
    PointerMode mode(h, CUBLAS_POINTER_MODE_HOST);
    gemm(&alpha, &beta);
    return;
  }
  // alpha from device memory (no host sync, graph-capturable); beta = 0 from device memory too.
  ops::ScratchFrame frame(be);
  const TensorView beta = be.scratch(DType::kF32, {1});
  CLAWMINE_CUDA_CHECK(cudaMemsetAsync(beta.data, 0, sizeof(float), be.stream()));
  PointerMode mode(h, CUBLAS_POINTER_MODE_DEVICE);
  gemm(alpha_dev, beta.data);
}

bool gemm_via_bf16_copy(CudaBackend& be, const GemmArgs& a, bool x_bf16, bool w_vec) {
  const WFmt F = static_cast<WFmt>(a.fmt);
  if (!x_bf16 || !w_vec || a.descs || has_tile_table(a) || a.x_rows || a.rows < kDequantMinRows || !dequant_supported(F))
    return false;
  const WeightDesc& d = a.desc0;
  if (d.k != a.K || d.fmt != a.fmt || (a.n_z - 1) * a.w_row_z + a.n_rows > d.rows) return false;
  if (F == WFmt::kNvfp4 && d.scale2 == nullptr) return false;
  const int64_t elems = d.rows * d.k;
  const size_t need = static_cast<size_t>(elems) * 2 + 1024;  // the copy, beta, alignment
  const size_t top = be.scratch_mark(), region = be.usage().scratch_bytes;
  if (top > region || need > region - top) return false;  // too big for scratch: the kernels
  ops::ScratchFrame frame(be);
  const TensorView wb = be.scratch(DType::kBF16, {d.rows, d.k});
  DequantArgs q;
  q.desc0 = d;
  q.out = wb.as<__nv_bfloat16>();
  q.n_items = 1;
  q.max_elems = elems;
  q.fmt = a.fmt;
  launch_dequant_bf16(q, be.sm_count(), be.stream());
  cublas_bf16_gemm(be, a, wb.data, d.k, F == WFmt::kNvfp4 ? d.scale2 : nullptr);
  return true;
}

}  // namespace clawmine::backend::cuda
