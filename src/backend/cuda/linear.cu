// linear and grouped_linear (ops/backend.h): validate the weight (backend/cpu/weight_decode's
// checks, plus device placement), turn it into a WeightDesc, apply the linear policy's
// activation transform when it has one (linear_act_quant.cu), then dispatch by tile size and
// format: up to kGemvMaxRows rows (F32 activations: 32) go to the weight-streaming GEMV, larger
// ones to cuBLAS (dense BF16 x BF16; from kDequantMinRows rows also FP8-E8M0/MXFP4/NVFP4 x BF16
// through an exact BF16 copy of the weight, linear_dequant.cu), the bf16 MMA kernel (bf16
// activations, bf16-exact formats) or the float32 FMA kernel. W8A8/W4A4 activations are F32 after
// their transform, so they keep the kernels. grouped_linear is the same call with G problems (z): group z uses
// weight rows [z*Lo, (z+1)*Lo), activations x[:, z, :] and writes out[:, z, :].
#include <cublas_v2.h>

#include <string>

#include "backend/cpu/weight_decode.h"
#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/linear_dequant.cuh"
#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {

using model::deepseek_v4::WeightFormat;

namespace {

// Activation rows up to which projections stream weights (GEMV tiles of up to 16 rows, each tile
// reading the weight once: decode, batched decode, the prefill of short prompts), with BF16
// activations (the path measured; F32 ones, also after W8A8 / W4A4's transform, to 32). Measured on
// an H100 (PERFORMANCE.md, eighteenth session: first tokens of 48- and 64-token prompts 46-48 ms
// with the GEMV to 64 rows, 50.5 with the BF16 copy and cuBLAS from 33, ~100 with the MMA kernel).
constexpr int64_t kGemvMaxRows = 64;
constexpr int64_t kGemvMaxRowsF32 = 32;
static_assert(kDequantMinRows == kGemvMaxRows + 1, "rows past the GEMV go to the BF16 copy and cuBLAS");

void expect_weight_view(const LinearWeight& w, const TensorView& v, const char* what, const char* op) {
  if (v.empty()) return;
  if (v.device != Device::kCuda)
    throw Error(str_cat("cuda ", op, ": weight ", w.name, " ", what,
                        " is in host memory (place the model on the CUDA backend first: Model::place)"));
}

void check_act(const TensorView& v, const char* op, const char* arg) {
  if (v.dtype != DType::kF32 && v.dtype != DType::kBF16)
    throw Error(str_cat("cuda ", op, ": ", arg, " has dtype ", dtype_name(v.dtype), ", expected F32 or BF16"));
}

// Dense BF16 weights x BF16 activations, uniform problems: cuBLAS, f32 accumulation, straight
// from the stored weight (problem z strides by w_row_z weight rows).
void cublas_bf16(CudaBackend& be, const GemmArgs& a) {
  cublas_bf16_gemm(be, a, a.desc0.w, a.desc0.row_bytes / 2, nullptr);
}

}  // namespace

const char* wfmt_name(WFmt f) {
  switch (f) {
    case WFmt::kF32: return "dense F32";
    case WFmt::kBF16: return "dense BF16";
    case WFmt::kF16: return "dense F16";
    case WFmt::kFp8E8M0: return "fp8-block (E8M0 scales)";
    case WFmt::kFp8F32: return "fp8-block (F32 scales)";
    case WFmt::kMxfp4: return "mxfp4";
    case WFmt::kNvfp4: return "nvfp4";
  }
  return "?";
}

int gemv_tile_rows(int64_t rows) {
  int t = 1;
  while (t < rows && t < kGemvMaxTileRows) t *= 2;
  return t;
}

int wfmt_chunk(WFmt f) {
  switch (f) {
    case WFmt::kF32: return 4;
    case WFmt::kBF16:
    case WFmt::kF16: return 8;
    case WFmt::kFp8E8M0:
    case WFmt::kFp8F32: return 16;
    case WFmt::kMxfp4:
    case WFmt::kNvfp4: return 32;
  }
  return 0;
}

WeightDesc make_weight_desc(const LinearWeight& w, const char* op) {
  cpu::validate_linear_weight(w);  // dtypes and shapes only; reads no data
  expect_weight_view(w, w.weight, "weight", op);
  expect_weight_view(w, w.scale, "scale", op);
  expect_weight_view(w, w.weight_scale_2, "weight_scale_2", op);
  expect_weight_view(w, w.input_scale, "input_scale", op);
  WeightDesc d;
  d.w = static_cast<const uint8_t*>(w.weight.data);
  d.scale = static_cast<const uint8_t*>(w.scale.data);
  d.rows = w.out_features;
  d.k = w.in_features;
  d.input_scale_trusted = w.input_scale_trusted ? 1 : 0;
  switch (w.format) {
    case WeightFormat::kDense:
      d.fmt = static_cast<int32_t>(w.weight.dtype == DType::kF32    ? WFmt::kF32
                                   : w.weight.dtype == DType::kBF16 ? WFmt::kBF16
                                                                    : WFmt::kF16);
      d.row_bytes = w.in_features * static_cast<int64_t>(dtype_size(w.weight.dtype));
      break;
    case WeightFormat::kFp8Block:
      d.fmt = static_cast<int32_t>(w.scale.dtype == DType::kF32 ? WFmt::kFp8F32 : WFmt::kFp8E8M0);
      d.row_bytes = w.in_features;
      d.scale_ld = w.scale.dim(1);
      break;
    case WeightFormat::kMxfp4:
      d.fmt = static_cast<int32_t>(WFmt::kMxfp4);
      d.row_bytes = w.in_features / 2;
      d.scale_ld = w.in_features / cpu::kMxfp4GroupSize;
      break;
    case WeightFormat::kNvfp4:
      d.fmt = static_cast<int32_t>(WFmt::kNvfp4);
      d.row_bytes = w.in_features / 2;
      d.scale_ld = w.in_features / cpu::kNvfp4GroupSize;
      d.scale2 = static_cast<const float*>(w.weight_scale_2.data);
      if (!w.input_scale.empty() && w.input_scale.numel() >= 1) {
        if (w.input_scale.dtype != DType::kF32)
          throw Error(str_cat("cuda ", op, ": weight ", w.name, " input_scale has dtype ",
                              dtype_name(w.input_scale.dtype), ", expected F32"));
        d.input_scale = static_cast<const float*>(w.input_scale.data);
      }
      break;
  }
  return d;
}

bool weight_rows_aligned(const WeightDesc& d) {
  return reinterpret_cast<uintptr_t>(d.w) % 16 == 0 && d.row_bytes % 16 == 0 &&
         d.k % wfmt_chunk(static_cast<WFmt>(d.fmt)) == 0;
}

void check_static_scale(const ops::LinearPolicy& p, const LinearWeight& w, const WeightDesc& d) {
  if (static_cast<WFmt>(d.fmt) == WFmt::kNvfp4 && p.nvfp4 == ops::Nvfp4Path::kW4A4 &&
      p.act_scale == ops::ActScale::kStatic && d.input_scale == nullptr)
    throw Error(str_cat("linear ", w.name, ": --act-scale static needs the checkpoint's input_scale, which ", w.name,
                        " does not have (use --act-scale dynamic or auto)"));
}

namespace {
bool x_vectors(const GemmCall& c) {
  const int64_t xsz = c.x_dtype == DType::kBF16 ? 2 : 4;
  return reinterpret_cast<uintptr_t>(c.a.x) % 16 == 0 && (c.a.ldx * xsz) % 16 == 0 && (c.a.x_z * xsz) % 16 == 0;
}
}  // namespace

bool gemm_swiglu_pairs(const GemmCall& c) {
  if (c.x_dtype != DType::kBF16 || c.a.tile_rows > kGemvMaxTileRows || !c.w_vec || !x_vectors(c) ||
      c.fmt_mask == 0 || (c.fmt_mask & (c.fmt_mask - 1)) != 0)
    return false;
  GemmArgs a = c.a;
  a.fmt = 0;
  while (!(c.fmt_mask & (1u << a.fmt))) ++a.fmt;  // the one format
  if (a.K % wfmt_chunk(static_cast<WFmt>(a.fmt)) != 0) return false;
  return gemv_swiglu_pairs(a, true, c.grid_tiles);
}

void run_gemm(CudaBackend& be, const GemmCall& c) {
  const bool x_bf16 = c.x_dtype == DType::kBF16;
  const bool x_vec = x_vectors(c);
  const bool gemv = c.a.tile_rows <= kGemvMaxTileRows;
  for (int f = 0; f < kNumWFmt; ++f) {
    if (!(c.fmt_mask & (1u << f))) continue;
    GemmArgs a = c.a;
    a.fmt = f;
    const WFmt F = static_cast<WFmt>(f);
    const bool w_vec = c.w_vec && a.K % wfmt_chunk(F) == 0;
    if (gemv) {
      if (w_vec && x_vec) {
        launch_gemv(a, x_bf16, c.grid_tiles, be.stream());
      } else {
        launch_gemv_scalar(a, x_bf16, c.grid_tiles, be.stream());
      }
    } else if (F == WFmt::kBF16 && x_bf16 && !a.descs && !has_tile_table(a) && !a.x_rows) {
      cublas_bf16(be, a);
    } else if (gemm_via_bf16_copy(be, a, x_bf16, w_vec)) {
      // prefill rows, BF16 x, FP8-E8M0/MXFP4/NVFP4: exact BF16 copy of W, then cuBLAS
    } else if (x_bf16 && mma_supported(F)) {
      launch_gemm_mma(a, w_vec, x_vec, c.grid_tiles, be.stream());
    } else {
      launch_gemm_fma(a, x_bf16, w_vec, x_vec, c.grid_tiles, be.stream());
    }
  }
}

void project(CudaBackend& be, const LinearWeight& w, const WeightDesc& d, const TensorView& x, int64_t rows,
             int64_t K, int64_t n_rows, int32_t n_z, const TensorView& out) {
  if (rows == 0) return;
  const ops::LinearPolicy& policy = be.linear_policy();
  const ActPolicyDev pol = act_policy_dev(policy);
  ops::ScratchFrame frame(be);
  GemmArgs a;
  a.desc0 = d;
  a.w_row_z = n_rows;
  a.n_rows = n_rows;
  a.K = K;
  a.x = x.data;
  a.ldx = n_z * K;
  a.x_z = K;
  a.out = out.data;
  a.ldo = n_z * n_rows;
  a.out_z = n_rows;
  a.out_bf16 = out.dtype == DType::kBF16;
  a.rows = rows;
  a.n_z = n_z;
  DType x_dtype = x.dtype;
  if (act_path(pol, d.fmt) != kActNone) {
    // W8A8 / W4A4: transformed activations (F32, same layout), then the same projection.
    check_static_scale(policy, w, d);
    const TensorView xq = be.scratch(DType::kF32, {rows * n_z, K});
    ActQuantArgs q;
    q.desc0 = d;
    q.x = x.data;
    q.x_bf16 = x.dtype == DType::kBF16;
    q.ldx = K;
    q.out = static_cast<float*>(xq.data);
    q.rows = rows * n_z;
    q.n = K;
    q.pol = pol;
    if (pol.w4a4 && pol.act_scale == kActScaleStatic) q.err = op_error_record(be);
    launch_act_quant(q, be.stream());
    a.x = xq.data;
    x_dtype = DType::kF32;
  }
  const int64_t gemv_max = x_dtype == DType::kBF16 ? kGemvMaxRows : kGemvMaxRowsF32;
  a.tile_rows = rows <= gemv_max ? gemv_tile_rows(rows) : kGemmTileRows;
  GemmCall c;
  c.a = a;
  c.x_dtype = x_dtype;
  c.fmt_mask = 1u << d.fmt;
  c.w_vec = weight_rows_aligned(d);
  const int64_t tiles = (rows + a.tile_rows - 1) / a.tile_rows;
  CLAWMINE_CHECK(tiles <= 0x7fffffff, "linear ", w.name, ": too many rows (", rows, ")");
  c.grid_tiles = static_cast<int>(tiles);
  run_gemm(be, c);
}

void CudaBackend::linear(const TensorView& x, const LinearWeight& w, const TensorView& out) {
  expect_device(x, "linear", "x");
  expect_device(out, "linear", "out");
  check_act(x, "linear", "x");
  check_act(out, "linear", "out");
  const WeightDesc d = make_weight_desc(w, "linear");
  if (x.rank() < 1 || x.dim(-1) != w.in_features)
    throw Error(str_cat("cuda linear ", w.name, ": x has shape ", shape_str(x.shape), ", expected last dim ",
                        w.in_features));
  const int64_t rows = x.numel() / w.in_features;
  if (out.numel() != rows * w.out_features || out.dim(-1) != w.out_features)
    throw Error(str_cat("cuda linear ", w.name, ": out has shape ", shape_str(out.shape), ", expected [", rows, ", ",
                        w.out_features, "]"));
  project(*this, w, d, x, rows, w.in_features, w.out_features, 1, out);
}

void CudaBackend::grouped_linear(const TensorView& x, const LinearWeight& w, int64_t groups, const TensorView& out) {
  expect_device(x, "grouped_linear", "x");
  expect_device(out, "grouped_linear", "out");
  check_act(x, "grouped_linear", "x");
  check_act(out, "grouped_linear", "out");
  const WeightDesc d = make_weight_desc(w, "grouped_linear");
  if (groups <= 0 || groups > 65535 || w.out_features % groups != 0)
    throw Error(str_cat("cuda grouped_linear ", w.name, ": out_features ", w.out_features, " not divisible into ",
                        groups, " groups"));
  const int64_t G = groups, Lo = w.out_features / G, In = w.in_features;
  if (x.rank() < 1 || x.dim(-1) != In || x.numel() % (G * In) != 0)
    throw Error(str_cat("cuda grouped_linear ", w.name, ": x has shape ", shape_str(x.shape), ", expected [T, ", G,
                        ", ", In, "]"));
  const int64_t T = x.numel() / (G * In);
  if (out.numel() != T * G * Lo)
    throw Error(str_cat("cuda grouped_linear ", w.name, ": out has shape ", shape_str(out.shape), ", expected [", T,
                        ", ", G, ", ", Lo, "]"));
  project(*this, w, d, x, T, In, Lo, static_cast<int32_t>(G), out);
}

}  // namespace clawmine::backend::cuda
