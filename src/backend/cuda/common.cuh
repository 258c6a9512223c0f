// Shared by every CUDA source of the backend: error checks that throw clawmine::Error, element
// loads/stores for the activation dtypes, and exact decoders of the checkpoint formats
// (E4M3, E2M1, E8M0), all device-side and inlinable.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include "backend/cuda/device.h"
#include "core/error.h"
#include "core/tensor.h"

namespace clawmine::backend::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

// Checks a CUDA runtime call: CLAWMINE_CUDA_CHECK(cudaMemcpyAsync(...)).
#define CLAWMINE_CUDA_CHECK(expr)                                                                   \
  do {                                                                                              \
    cudaError_t clawmine_err_ = (expr);                                                             \
    if (clawmine_err_ != cudaSuccess)                                                               \
      ::clawmine::backend::cuda::throw_cuda_error(clawmine_err_, #expr, __FILE__, __LINE__);        \
  } while (0)
// After every kernel launch: CLAWMINE_CUDA_LAUNCHED("rms_norm").
#define CLAWMINE_CUDA_LAUNCHED(name) CLAWMINE_CUDA_CHECK(cudaPeekAtLastError())

// Programmatic dependent launch (Hopper PDL). Every kernel of the backend is launched through
// launch_kernel (below) with cudaLaunchAttributeProgrammaticStreamSerialization, so its launch,
// block scheduling and prologue may overlap the tail of the kernel before it in the stream; and
// every kernel begins with `pdl_wait(); pdl_trigger();` before any global memory access and any
// early return:
//  - pdl_wait (griddepcontrol.wait) blocks until every prerequisite grid has completed and its
//    memory operations are visible to this grid: the previous kernel's writes are visible and
//    its reads are done. Since every kernel waits before touching memory, the chain is
//    transitive and results are exactly those of plain stream order.
//  - pdl_trigger (griddepcontrol.launch_dependents) lets the NEXT kernel start launching once
//    every block of this one has executed it (or exited). It gives no memory guarantee itself.
//    After the wait, so only the next kernel launches early: a trigger before it let every
//    kernel of a chain of PDL launches start (and hold its blocks resident) at once.
//  - The exceptions load weights or constant tables, which no kernel of a step writes (they are
//    uploaded by copies, which are fully serialized), before the wait, so their first DRAM round
//    trip overlaps the previous kernel: the decode GEMV kernels (linear_gemv.cu,
//    linear_gemv_wgmma.cu), the decode hyper-connection site (hc_site_fused_kernel, hc_device.cuh:
//    its writers' mix weights fn, its finisher's gate and norm weights) and the decode attention
//    merge (attention_decode_mma.cu: the RoPE frequencies). These trigger before their wait. One more exception: the experts' down
//    projections read their tile table (written by moe_route or moe_plan two launches back)
//    before the wait (GemmArgs::tiles_early: the launch between them triggers only after its own
//    wait). Everything else comes after the wait, and every block still waits before it exits
//    (weights_before_wait, linear_kernels.cuh).
// Without the attribute (CLAWMINE_PDL=0, except for launches that set it themselves; a library
// kernel or a copy before), both are no-ops.
// Library work (cuBLAS, cudaMemcpyAsync, cudaMemsetAsync) is not launched with the attribute
// and is fully serialized as before.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// The start of a kernel that reads something before the wait when `early` (the decode GEMVs,
// which then wait later): the next launch may start at once. Otherwise wait first and trigger
// after, as every other kernel does, so that a launch after this one starts only once this one's
// prerequisites have completed (GemmArgs::tiles_early relies on it).
__device__ __forceinline__ void pdl_begin(bool early) {
  if (!early) pdl_wait();
  pdl_trigger();
}

// A triple-chevron launch kernel(grid, block, smem, stream)(args...) as a programmatic dependent launch when
// pdl_enabled() (device.h; on unless env CLAWMINE_PDL=0), a plain launch otherwise. The
// arguments convert to the kernel's parameter types exactly as in a triple-chevron launch
// (cudaLaunchKernelEx's C++ overload coerces them through a call with the kernel's parameter
// types). Launch errors throw; callers keep CLAWMINE_CUDA_LAUNCHED("name") after it.
// launch_kernel_pdl: the same with the attribute chosen by the caller (the decode GEMVs, whose
// PDL can be on alone: linear_gemv.cu, CLAWMINE_GEMV_PDL).
template <typename... K, typename... A>
void launch_kernel_pdl(bool pdl, void (*kernel)(K...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       A&&... args) {
  static_assert(sizeof...(K) == sizeof...(A), "launch_kernel: argument count differs from the kernel's parameters");
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = 1;
  CLAWMINE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<A>(args)...));
}
template <typename... K, typename... A>
void launch_kernel(void (*kernel)(K...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A&&... args) {
  launch_kernel_pdl(pdl_enabled(), kernel, grid, block, smem, stream, std::forward<A>(args)...);
}

// Activation element types: float or __nv_bfloat16 (F16 only where weights/tables use it).
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// OCP E4M3 (e4m3fn): bias 7, no infinities, 0x7f/0xff NaN, max 448. Exact.
__device__ __forceinline__ float decode_e4m3(uint8_t b) {
  const uint32_t sign = (b & 0x80u) << 24, exp = (b >> 3) & 0xfu, man = b & 0x7u;
  if (exp == 0xfu && man == 0x7u) return __int_as_float(0x7fc00000);
  if (exp == 0) {  // subnormal: man * 2^-9
    const float v = static_cast<float>(man) * 0.001953125f;
    return sign ? -v : v;
  }
  return __uint_as_float(sign | ((exp + 120u) << 23) | (man << 20));
}
// E8M0: 2^(b-127); 0xff NaN. b = 0 is 2^-127 (a float32 subnormal).
__device__ __forceinline__ float decode_e8m0(uint8_t b) {
  if (b == 0xffu) return __int_as_float(0x7fc00000);
  if (b == 0) return __uint_as_float(0x00400000u);
  return __uint_as_float(static_cast<uint32_t>(b) << 23);
}
// E2M1 nibble (bit 3 = sign): {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
__device__ __forceinline__ float decode_e2m1(uint32_t nibble) {
  const uint32_t e = (nibble >> 1) & 3u, m = nibble & 1u;
  const float v = e == 0 ? 0.5f * static_cast<float>(m)
                         : __uint_as_float((e + 126u) << 23) * (1.0f + 0.5f * static_cast<float>(m));
  return (nibble & 8u) ? -v : v;
}

// Calls f(T{}) with T the C++ element type of an activation dtype (F32, BF16, F16); any other
// dtype is an error naming the op and the argument.
template <typename F>
void dispatch_float(DType t, const char* op, const char* arg, F&& f) {
  switch (t) {
    case DType::kF32: f(float{}); return;
    case DType::kBF16: f(__nv_bfloat16{}); return;
    case DType::kF16: f(__half{}); return;
    default:
      throw Error(std::string("cuda ") + op + ": " + arg + " has dtype " + std::string(dtype_name(t)) +
                  ", expected F32, BF16 or F16");
  }
}

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace clawmine::backend::cuda
