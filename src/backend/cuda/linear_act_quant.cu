// Activation transforms of the linear policy on device, bit-identical to quant/act_quant.cpp
// (which the CPU backend applies): W8A8 rounds each 128-block of a row to E4M3 under the
// power-of-two scale 2^ceil(log2(max(amax, 1e-4)/448)); W4A4 rounds each 16-block to E2M1
// under an E4M3 block scale and a global multiplier g (static 1/input_scale, or dynamic
// 2688/amax of the row). Amax is over finite values; non-finite inputs pass through. Every
// product and quotient is an explicit round-to-nearest intrinsic so nvcc cannot contract or
// reorder it: the transformed activations equal the CPU's exactly, so quantized linears agree
// within float accumulation-order error. One block per (row, z); output always F32.
#include <cuda_bf16.h>

#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kFp8Block = 128;   // quant::kFp8ActBlock
constexpr int kNvfp4Block = 16;  // quant::kNvfp4ActBlock
constexpr float kE4m3Max = 448.0f;
constexpr float kAmaxToScale = 2688.0f;  // quant::kNvfp4AmaxToScale

// quant/qdq.cpp round_minifloat: |x| to `mbits` mantissa bits, minimum normal exponent min_exp,
// saturated at max_value, ties to even. floor(log2(a)) is taken exactly from the float's
// exponent; the CPU's log2f may round up just below a power of two, which rounds to the same
// value (checked exhaustively over all 2^32 floats on the host).
__device__ __forceinline__ float round_minifloat(float x, int mbits, int min_exp, float max_value) {
  if (isnan(x)) return x;
  const float a = fminf(fabsf(x), max_value);
  int e = min_exp;
  if (a > 0.0f) {
    int ex;
    frexpf(a, &ex);
    e = max(ex - 1, min_exp);
  }
  const float step = ldexpf(1.0f, e - mbits);
  const float q = fminf(__fmul_rn(rintf(__fdiv_rn(a, step)), step), max_value);
  return copysignf(q, x);
}
__device__ __forceinline__ float round_e4m3(float x) { return round_minifloat(x, 3, -6, kE4m3Max); }
__device__ __forceinline__ float round_e2m1(float x) { return round_minifloat(x, 1, 0, 6.0f); }

// 2^ceil(log2f(amax / max_value)) as the CPU computes it: glibc's log2f and the correctly
// rounded float of a double log2 agree on floor/ceil next to every power of two (host check).
__device__ __forceinline__ float pow2_ceil_scale(float amax, float max_value) {
  const float v = __fdiv_rn(amax, max_value);
  const int e = static_cast<int>(ceilf(static_cast<float>(log2(static_cast<double>(v)))));
  return ldexpf(1.0f, e);
}

// quant::nvfp4_block_scale.
__device__ __forceinline__ float nvfp4_block_scale(float g, float amax16, bool saturate) {
  const float v = __fdiv_rn(__fmul_rn(g, amax16), 6.0f);
  if (isnan(v)) return v;
  if (!saturate && fabsf(v) > 464.0f) return __int_as_float(0x7fc00000);
  return round_e4m3(v);
}

__device__ __forceinline__ float finite_abs(float v) { return isfinite(v) ? fabsf(v) : 0.0f; }

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename XT>
__global__ void __launch_bounds__(kThreads) act_quant_kernel(ActQuantArgs a) {
  pdl_wait();
  pdl_trigger();
  const int64_t i = blockIdx.x;
  const int z = blockIdx.y;
  const XT* in = static_cast<const XT*>(a.x) + (a.x_rows ? a.x_rows[i] : i) * a.ldx + z * a.x_z;
  float* out = a.out + (static_cast<int64_t>(z) * a.rows + i) * a.n;
  const int64_t n = a.n;
  const WeightDesc* dp = &a.desc0;
  if (a.descs) {
    const int32_t e = a.row_expert[i];
    if (e < 0) {  // a row left unused by an invalid expert id (moe_experts reports it)
      for (int64_t k = threadIdx.x; k < n; k += kThreads) out[k] = 0.0f;
      return;
    }
    dp = a.descs + static_cast<int64_t>(e) * a.desc_stride + a.desc_offset + z;
  }
  const int32_t fmt = dp->fmt;
  const float* in_scale = dp->input_scale;
  const bool trusted = dp->input_scale_trusted != 0;
  const int32_t path = act_path(a.pol, fmt);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  if (path == kActNone) {
    for (int64_t k = threadIdx.x; k < n; k += kThreads) out[k] = to_f32(in[k]);
    return;
  }
  if (path == kActFp8) {
    // One warp per 128-block: s = 2^ceil(log2(max(amax, 1e-4) / 448)), x = e4m3(x / s) * s.
    for (int64_t b = warp * kFp8Block; b < n; b += (kThreads / 32) * kFp8Block) {
      float v[kFp8Block / 32];
      float amax = 0.0f;
#pragma unroll
      for (int j = 0; j < kFp8Block / 32; ++j) {
        const int64_t k = b + lane + 32 * j;
        v[j] = k < n ? to_f32(in[k]) : 0.0f;
        amax = fmaxf(amax, finite_abs(v[j]));
      }
      amax = fmaxf(warp_max(amax), 1e-4f);
      const float s = pow2_ceil_scale(amax, kE4m3Max);
#pragma unroll
      for (int j = 0; j < kFp8Block / 32; ++j) {
        const int64_t k = b + lane + 32 * j;
        if (k < n) out[k] = isfinite(v[j]) ? __fmul_rn(round_e4m3(__fdiv_rn(v[j], s)), s) : v[j];
      }
    }
    return;
  }

  // W4A4: the global multiplier g, then per 16-block SF = e4m3(g * amax16 / 6),
  // x = e2m1(x * g / SF) * SF / g (SF == 0: zeros; NaN SF, only without saturation: NaN block).
  __shared__ float red[kThreads / 32];
  const bool has_scale = in_scale != nullptr;
  const float s = has_scale ? __ldg(in_scale) : 0.0f;
  const bool valid = has_scale && isfinite(s) && s > 0.0f && isfinite(__fdiv_rn(1.0f, s));
  const bool use_static = a.pol.act_scale == kActScaleStatic || (a.pol.act_scale == kActScaleAuto && valid && trusted);
  float g;
  if (use_static) {
    // --act-scale static with a non-finite or non-positive input_scale: the CPU backend
    // throws; here the row becomes NaN so the non-finite guard names this linear.
    g = valid ? __fdiv_rn(1.0f, s) : __int_as_float(0x7fc00000);
    if (!valid && a.err && threadIdx.x == 0) report_op_error(a.err, kOpErrorActStaticScale, __float_as_int(s), 0, 0);
  } else {
    float amax = 0.0f;
    for (int64_t k = threadIdx.x; k < n; k += kThreads) amax = fmaxf(amax, finite_abs(to_f32(in[k])));
    amax = warp_max(amax);
    if (lane == 0) red[warp] = amax;
    __syncthreads();
    amax = 0.0f;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) amax = fmaxf(amax, red[w]);
    g = amax > 0.0f ? __fdiv_rn(kAmaxToScale, amax) : 0.0f;
  }
  const bool saturate = a.pol.saturate != 0;
  for (int64_t b = static_cast<int64_t>(threadIdx.x) * kNvfp4Block; b < n; b += kThreads * kNvfp4Block) {
    const int64_t e = min(n, b + kNvfp4Block);
    float v[kNvfp4Block];
    float amax16 = 0.0f;
#pragma unroll
    for (int j = 0; j < kNvfp4Block; ++j) {
      v[j] = b + j < e ? to_f32(in[b + j]) : 0.0f;
      amax16 = fmaxf(amax16, finite_abs(v[j]));
    }
    // isnan(g) only on the invalid static path above; the block then is NaN.
    const float sf = isnan(g) ? g : (g > 0.0f ? nvfp4_block_scale(g, amax16, saturate) : 0.0f);
#pragma unroll
    for (int j = 0; j < kNvfp4Block; ++j) {
      if (b + j >= e) break;
      float r = v[j];
      if (isnan(sf)) {
        r = __int_as_float(0x7fc00000);
      } else if (isfinite(r)) {
        r = sf == 0.0f ? 0.0f : __fdiv_rn(__fmul_rn(round_e2m1(__fdiv_rn(__fmul_rn(r, g), sf)), sf), g);
      }
      out[b + j] = r;
    }
  }
}

}  // namespace

ActPolicyDev act_policy_dev(const ops::LinearPolicy& p) {
  ActPolicyDev d;
  d.w4a4 = p.nvfp4 == ops::Nvfp4Path::kW4A4;
  d.w8a8 = p.fp8 == ops::Fp8Path::kW8A8;
  d.act_scale = p.act_scale == ops::ActScale::kStatic    ? kActScaleStatic
                : p.act_scale == ops::ActScale::kDynamic ? kActScaleDynamic
                                                         : kActScaleAuto;
  d.saturate = p.saturate;
  return d;
}

void launch_act_quant(const ActQuantArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.n == 0) return;
  CLAWMINE_CHECK(a.rows <= 0x7fffffff && a.n_z >= 1 && a.n_z <= 65535, "act_quant: bad launch shape rows=", a.rows,
                 " n_z=", a.n_z);
  const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(a.n_z));
  if (a.x_bf16) {
    launch_kernel(act_quant_kernel<__nv_bfloat16>, grid, kThreads, 0, stream, a);
  } else {
    launch_kernel(act_quant_kernel<float>, grid, kThreads, 0, stream, a);
  }
  CLAWMINE_CUDA_LAUNCHED("act_quant");
}

}  // namespace clawmine::backend::cuda
