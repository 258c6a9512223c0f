// Device helpers shared by the elementwise, norm/rope, qdq, hyper-connection and routing kernels:
// packed (16-byte) loads and stores converting to and from float32, warp and block sums, a
// float load whose dtype is a run-time code (small weight tensors), and the host-side checks
// that decide whether a tensor may take the packed path. Callers qualify them (rowwise::), so
// names like warp_sum never collide with other files' helpers.
#pragma once

#include <cstdint>

#include "backend/cuda/common.cuh"

namespace clawmine::backend::cuda::rowwise {

// N elements of T stored together, aligned to their size (N * sizeof(T) a power of two), so
// one load or store of a Packed is one or two 16-byte memory instructions.
template <typename T, int N>
struct alignas(sizeof(T) * N) Packed {
  T v[N];
};

// out[i] = float(p[i]) for i < N; p aligned to N * sizeof(T).
template <int N, typename T>
__device__ __forceinline__ void load_packed(const T* p, float (&out)[N]) {
  const Packed<T, N> raw = *reinterpret_cast<const Packed<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_f32(raw.v[i]);
}
// p[i] = T(v[i]) (round to nearest even) for i < N; p aligned to N * sizeof(T).
template <int N, typename T>
__device__ __forceinline__ void store_packed(T* p, const float (&v)[N]) {
  Packed<T, N> raw;
#pragma unroll
  for (int i = 0; i < N; ++i) raw.v[i] = from_f32<T>(v[i]);
  *reinterpret_cast<Packed<T, N>*>(p) = raw;
}

// A float dtype as a kernel argument, for small tensors (norm weights, hc base/scale) whose
// dtype does not deserve its own template instantiation.
enum class FloatCode : int { kF32 = 0, kBF16 = 1, kF16 = 2 };
inline FloatCode float_code(DType t, const char* op, const char* arg) {
  switch (t) {
    case DType::kF32:
      return FloatCode::kF32;
    case DType::kBF16:
      return FloatCode::kBF16;
    case DType::kF16:
      return FloatCode::kF16;
    default:
      throw Error(std::string("cuda ") + op + ": " + arg + " has dtype " + std::string(dtype_name(t)) +
                  ", expected F32, BF16 or F16");
  }
}
__device__ __forceinline__ float load_float(const void* p, FloatCode code, int64_t i) {
  switch (code) {
    case FloatCode::kBF16:
      return to_f32(static_cast<const __nv_bfloat16*>(p)[i]);
    case FloatCode::kF16:
      return to_f32(static_cast<const __half*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

// out[j] = float(p[i + j]) for j < N, one packed load; p + i aligned to N elements of its dtype.
template <int N>
__device__ __forceinline__ void load_float_packed(const void* p, FloatCode code, int64_t i, float (&out)[N]) {
  switch (code) {
    case FloatCode::kBF16:
      load_packed<N>(static_cast<const __nv_bfloat16*>(p) + i, out);
      return;
    case FloatCode::kF16:
      load_packed<N>(static_cast<const __half*>(p) + i, out);
      return;
    default:
      load_packed<N>(static_cast<const float*>(p) + i, out);
  }
}
inline size_t float_code_bytes(FloatCode code) { return code == FloatCode::kF32 ? 4 : 2; }

// Whether rows of `row_elems` elements starting at `p` may be read as Packed<T, N>: the base is
// aligned to the pack size and every row start stays aligned.
template <typename T, int N>
bool packable(const void* p, int64_t row_elems) {
  return row_elems % N == 0 && reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) == 0;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block of every thread's v (blockDim.x a multiple of 32, at most 1024); every
// thread gets the total. `shared` holds 32 floats; the call starts and ends with a barrier, so
// it may be called repeatedly with the same buffer. The order of additions is fixed.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // earlier readers of `shared` are done
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = lane < warps ? shared[lane] : 0.0f;
  return warp_sum(total);
}

}  // namespace clawmine::backend::cuda::rowwise
