// The timing harness, the two ceilings and the device helpers of clawmine-kernel-bench: random
// fills, a BF16 decode of any linear weight, cuBLAS BF16 (the side-by-side baseline and the
// reference of the checks), and a device-side relative error. Everything runs on the
// CudaBackend's stream, so the ops under test and the harness are ordered.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/device.h"
#include "bench/cuda/bench.h"

namespace clawmine::bench {

using backend::cuda::CudaBackend;
using backend::cuda::decode_e2m1;
using backend::cuda::decode_e4m3;
using backend::cuda::decode_e8m0;
using model::deepseek_v4::WeightFormat;

namespace {

CudaBackend& cuda_of(ops::Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  CLAWMINE_CHECK(c != nullptr, "kernel bench: backend ", be.name(), " is not the CUDA backend");
  return *c;
}

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Error(str_cat("kernel bench: ", what, " failed: ", cublasGetStatusString(s)));
}

// One cuBLAS handle of our own (the backend's is private), on the backend's stream, with a
// fixed workspace so that graph capture never sees an allocation.
struct Cublas {
  cublasHandle_t h = nullptr;
  ops::Backend* be = nullptr;
  TensorView workspace;
};
Cublas g_cublas;

cublasHandle_t cublas_for(ops::Backend& be) {
  if (g_cublas.h == nullptr) {
    check_cublas(cublasCreate(&g_cublas.h), "cublasCreate");
    g_cublas.be = &be;
    g_cublas.workspace = be.allocate(DType::kU8, {int64_t{32} << 20});
    check_cublas(cublasSetWorkspace(g_cublas.h, g_cublas.workspace.data, g_cublas.workspace.nbytes()),
                 "cublasSetWorkspace");
  }
  CLAWMINE_CHECK(g_cublas.be == &be, "kernel bench: one backend per run");
  check_cublas(cublasSetStream(g_cublas.h, cuda_of(be).stream()), "cublasSetStream");
  return g_cublas.h;
}

struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  Events() {
    CLAWMINE_CUDA_CHECK(cudaEventCreate(&a));
    CLAWMINE_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~Events() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  float ms() const {
    float t = 0;
    CLAWMINE_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    return t;
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// ---- random fills -------------------------------------------------------------------------
__device__ __forceinline__ uint64_t mix64(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// Uniform in [-1, 1), never exactly 0.
__device__ __forceinline__ float unit(uint64_t h) {
  const float u = static_cast<float>(h >> 40) * (1.0f / 8388608.0f) - 1.0f;  // 24 bits
  return u == 0.0f ? 0.5f : u;
}

template <typename T>
__global__ void fill_float_kernel(T* p, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = backend::cuda::from_f32<T>(unit(mix64(seed ^ mix64(static_cast<uint64_t>(i)))) * scale);
}

__global__ void fill_bytes_kernel(uint8_t* p, int64_t n, uint64_t seed, int kind) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const uint64_t h = mix64(seed ^ mix64(static_cast<uint64_t>(i)));
    uint8_t b;
    switch (kind) {
      case 1:  // E4M3 weight: exponent field 4..12 (2^-3 .. 2^5 x 1.875), random sign
        b = static_cast<uint8_t>(0x20 + (h % 0x48)) | static_cast<uint8_t>(((h >> 20) & 1) << 7);
        break;
      case 2: b = static_cast<uint8_t>(118 + h % 5); break;      // E8M0 scale
      case 3: b = static_cast<uint8_t>(0x28 + h % 0x19); break;  // E4M3 positive scale 0.25 .. 2
      default: b = static_cast<uint8_t>(h >> 24); break;         // any byte
    }
    p[i] = b;
  }
}

unsigned grid_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 132 * 16)); }

// ---- BF16 decode of a linear weight ---------------------------------------------------------
struct DecodeArgs {
  const uint8_t* w = nullptr;
  const uint8_t* scale = nullptr;
  const float* scale2 = nullptr;
  int64_t rows = 0, k = 0, scale_ld = 0;
  int fmt = 0;  // 0 dense BF16, 1 FP8 E8M0 scales, 2 FP8 F32 scales, 3 MXFP4, 4 NVFP4
};

__global__ void dequant_bf16_kernel(DecodeArgs a, __nv_bfloat16* out) {
  const int64_t n = a.rows * a.k;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / a.k, c = i % a.k;
    float v = 0;
    switch (a.fmt) {
      case 0: v = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(a.w)[i]); break;
      case 1: v = decode_e4m3(a.w[i]) * decode_e8m0(a.scale[(r / 128) * a.scale_ld + c / 128]); break;
      case 2: v = decode_e4m3(a.w[i]) * reinterpret_cast<const float*>(a.scale)[(r / 128) * a.scale_ld + c / 128]; break;
      case 3:
      case 4: {
        const uint8_t byte = a.w[r * (a.k / 2) + c / 2];
        const float e = decode_e2m1((c & 1) ? byte >> 4 : byte & 15u);
        v = a.fmt == 3 ? e * decode_e8m0(a.scale[r * a.scale_ld + c / 32])
                       : e * decode_e4m3(a.scale[r * a.scale_ld + c / 16]) * *a.scale2;
        break;
      }
    }
    out[i] = __float2bfloat16_rn(v);
  }
}

// acc[0] += sum (got-ref)^2, acc[1] += sum ref^2, acc[2] += non-finite elements of got
template <typename A, typename B>
__global__ void diff_kernel(const A* got, const B* ref, int64_t n, double* acc) {
  double d2 = 0, r2 = 0, bad = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float g = backend::cuda::to_f32(got[i]);
    const float r = ref ? backend::cuda::to_f32(ref[i]) : 0.0f;
    if (!isfinite(g)) {
      bad += 1;
      continue;
    }
    d2 += static_cast<double>(g - r) * (g - r);
    r2 += static_cast<double>(r) * r;
  }
  for (int o = 16; o > 0; o >>= 1) {
    d2 += __shfl_down_sync(0xffffffffu, d2, o);
    r2 += __shfl_down_sync(0xffffffffu, r2, o);
    bad += __shfl_down_sync(0xffffffffu, bad, o);
  }
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(acc + 0, d2);
    atomicAdd(acc + 1, r2);
    atomicAdd(acc + 2, bad);
  }
}

// {sum d^2, sum r^2, non-finite count} of got against ref (ref empty: against zeros).
std::vector<double> diff_stats(ops::Backend& be, const TensorView& got, const TensorView& ref) {
  CudaBackend& cb = cuda_of(be);
  CLAWMINE_CHECK(ref.empty() || ref.numel() == got.numel(), "kernel bench: rel_l2 of ", shape_str(got.shape),
                 " against ", shape_str(ref.shape));
  ops::ScratchFrame frame(be);
  const TensorView acc = be.scratch(DType::kI64, {3});  // three doubles
  CLAWMINE_CUDA_CHECK(cudaMemsetAsync(acc.data, 0, 3 * sizeof(double), cb.stream()));
  const int64_t n = got.numel();
  auto launch = [&](auto g, auto r) {
    using G = decltype(g);
    using R = decltype(r);
    diff_kernel<G, R><<<grid_for(n), 256, 0, cb.stream()>>>(static_cast<const G*>(got.data),
                                                            static_cast<const R*>(ref.data), n,
                                                            static_cast<double*>(acc.data));
    CLAWMINE_CUDA_LAUNCHED("diff_kernel");
  };
  const DType rt = ref.empty() ? got.dtype : ref.dtype;
  backend::cuda::dispatch_float(got.dtype, "rel_l2", "got", [&](auto g) {
    backend::cuda::dispatch_float(rt, "rel_l2", "ref", [&](auto r) { launch(g, r); });
  });
  std::vector<double> host(3);
  be.download(acc, host.data());
  return host;
}

}  // namespace

bool Options::wants(const std::string& group) const {
  return groups.empty() || std::find(groups.begin(), groups.end(), group) != groups.end();
}

DeviceInfo device_info(ops::Backend& be, int device) {
  DeviceInfo d;
  d.name = backend::cuda::device_summary(device);
  d.sm_count = cuda_of(be).sm_count();
  int v = 0;
  CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrL2CacheSize, device));
  d.l2_bytes = v;
  CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrClockRate, device));
  d.clock_mhz = v / 1000;
  CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMemoryClockRate, device));
  d.mem_clock_mhz = v / 1000;
  size_t free_b = 0, total_b = 0;
  CLAWMINE_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  d.memory_bytes = static_cast<int64_t>(total_b);
  return d;
}

Timing time_op(ops::Backend& be, int rotation, const std::function<void(int)>& op, double target_ms,
               bool allow_graph) {
  CudaBackend& cb = cuda_of(be);
  const cudaStream_t s = cb.stream();
  rotation = std::max(rotation, 1);
  Timing t;
  // Warm-up: every slot once, eagerly; then an eager estimate over the rotation.
  for (int i = 0; i < rotation; ++i) op(i);
  be.synchronize();
  Events ev;
  int est_calls = rotation;
  while (true) {
    CLAWMINE_CUDA_CHECK(cudaEventRecord(ev.a, s));
    for (int i = 0; i < est_calls; ++i) op(i % rotation);
    CLAWMINE_CUDA_CHECK(cudaEventRecord(ev.b, s));
    be.synchronize();
    if (ev.ms() > 0.2 || est_calls >= 64 * rotation) break;
    est_calls *= 4;
  }
  const double est_us = std::max(1e-3, ev.ms() * 1e3 / est_calls);
  // Calls per launch: a launch of at least ~0.5 ms, a whole number of rotations, at most 2048 calls.
  int K = static_cast<int>(std::ceil(500.0 / est_us));
  K = std::clamp(K, 1, 2048);
  K = std::max(rotation, (K + rotation - 1) / rotation * rotation);
  const int launches = std::clamp(static_cast<int>(target_ms * 1e3 / (K * est_us)), 5, 100);
  t.calls_per_launch = K;
  t.launches = launches;

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool captured = allow_graph;
  if (allow_graph) {
    CLAWMINE_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
      for (int i = 0; i < K; ++i) op(i % rotation);
    } catch (const std::exception& e) {
      captured = false;
      t.note = e.what();
    }
    const cudaError_t end = cudaStreamEndCapture(s, &graph);
    if (end != cudaSuccess) {
      captured = false;
      if (t.note.empty()) t.note = cudaGetErrorString(end);
    }
    if (captured && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
      captured = false;
      t.note = "cudaGraphInstantiate failed";
    }
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // a failed capture leaves an error that is not sticky: clear it
  }

  std::vector<double> per_call;
  auto one = [&] {
    CLAWMINE_CUDA_CHECK(cudaEventRecord(ev.a, s));
    if (captured) {
      CLAWMINE_CUDA_CHECK(cudaGraphLaunch(exec, s));
    } else {
      for (int i = 0; i < K; ++i) op(i % rotation);
    }
    CLAWMINE_CUDA_CHECK(cudaEventRecord(ev.b, s));
    be.synchronize();
    return ev.ms() * 1e3 / K;
  };
  one();  // the first launch uploads the graph
  for (int l = 0; l < launches; ++l) per_call.push_back(one());
  if (exec) cudaGraphExecDestroy(exec);
  t.graph = captured;
  t.median_us = median(per_call);
  t.min_us = *std::min_element(per_call.begin(), per_call.end());
  t.max_us = *std::max_element(per_call.begin(), per_call.end());
  return t;
}

Ceilings measure_ceilings(ops::Backend& be, double target_ms) {
  CudaBackend& cb = cuda_of(be);
  Ceilings c;
  {  // copy: 1 GiB device to device; bandwidth counts the bytes read and the bytes written
    const int64_t n = int64_t{1} << 30;
    ops::DeviceBuffer src(be, DType::kU8, {n}), dst(be, DType::kU8, {n});
    fill_random(be, src.view(), Fill::kBytes, 11);
    c.copy_bytes = n;
    c.copy = time_op(
        be, 1,
        [&](int) {
          CLAWMINE_CUDA_CHECK(cudaMemcpyAsync(dst.view().data, src.view().data, n, cudaMemcpyDeviceToDevice,
                                              cb.stream()));
        },
        target_ms, /*allow_graph=*/false);
    c.copy_gbps = 2.0 * static_cast<double>(n) / (c.copy.median_us * 1e3);
  }
  {  // cuBLAS BF16 GEMM 8192^3 on random data, f32 accumulation
    const int64_t m = 8192;
    ops::DeviceBuffer a(be, DType::kBF16, {m, m}), b(be, DType::kBF16, {m, m}), o(be, DType::kBF16, {m, m});
    fill_random(be, a.view(), Fill::kFloat, 12, 1.0f);
    fill_random(be, b.view(), Fill::kFloat, 13, 1.0f / 90.0f);
    c.gemm = time_op(be, 1, [&](int) { cublas_bf16(be, a.view(), b.view(), 1, o.view()); }, target_ms);
    c.gemm_tflops = 2.0 * static_cast<double>(m) * m * m / (c.gemm.median_us * 1e6);
  }
  return c;
}

void fill_random(ops::Backend& be, const TensorView& v, Fill kind, uint64_t seed, float scale) {
  CudaBackend& cb = cuda_of(be);
  cb.expect_device(v, "fill_random", "v");
  const int64_t n = v.numel();
  if (n == 0) return;
  if (kind == Fill::kFloat) {
    backend::cuda::dispatch_float(v.dtype, "fill_random", "v", [&](auto t) {
      using T = decltype(t);
      fill_float_kernel<T><<<grid_for(n), 256, 0, cb.stream()>>>(static_cast<T*>(v.data), n, seed, scale);
      CLAWMINE_CUDA_LAUNCHED("fill_float_kernel");
    });
    return;
  }
  const int code = kind == Fill::kE4M3Weight ? 1 : kind == Fill::kE8M0Scale ? 2 : kind == Fill::kE4M3Scale ? 3 : 0;
  const int64_t bytes = static_cast<int64_t>(v.nbytes());
  fill_bytes_kernel<<<grid_for(bytes), 256, 0, cb.stream()>>>(static_cast<uint8_t*>(v.data), bytes, seed, code);
  CLAWMINE_CUDA_LAUNCHED("fill_bytes_kernel");
}

void dequantize_bf16(ops::Backend& be, const ops::LinearWeight& w, const TensorView& out) {
  CudaBackend& cb = cuda_of(be);
  CLAWMINE_CHECK(out.dtype == DType::kBF16 && out.numel() == w.out_features * w.in_features,
                 "kernel bench: dequantize_bf16 of ", w.name, " into ", shape_str(out.shape));
  DecodeArgs a;
  a.w = static_cast<const uint8_t*>(w.weight.data);
  a.scale = static_cast<const uint8_t*>(w.scale.data);
  a.scale2 = static_cast<const float*>(w.weight_scale_2.data);
  a.rows = w.out_features;
  a.k = w.in_features;
  switch (w.format) {
    case WeightFormat::kDense:
      CLAWMINE_CHECK(w.weight.dtype == DType::kBF16, "kernel bench: dense weights are BF16 here");
      a.fmt = 0;
      break;
    case WeightFormat::kFp8Block:
      a.fmt = w.scale.dtype == DType::kF32 ? 2 : 1;
      a.scale_ld = w.scale.dim(1);
      break;
    case WeightFormat::kMxfp4:
      a.fmt = 3;
      a.scale_ld = w.in_features / 32;
      break;
    case WeightFormat::kNvfp4:
      a.fmt = 4;
      a.scale_ld = w.in_features / 16;
      break;
  }
  dequant_bf16_kernel<<<grid_for(a.rows * a.k), 256, 0, cb.stream()>>>(a, static_cast<__nv_bfloat16*>(out.data));
  CLAWMINE_CUDA_LAUNCHED("dequant_bf16_kernel");
}

void cublas_bf16(ops::Backend& be, const TensorView& x, const TensorView& w, int64_t groups, const TensorView& out) {
  CLAWMINE_CHECK(x.dtype == DType::kBF16 && w.dtype == DType::kBF16 && out.dtype == DType::kBF16,
                 "kernel bench: cublas_bf16 takes BF16 tensors");
  const int64_t G = groups, Lo = w.dim(0) / G, K = w.dim(1), T = x.numel() / (G * K);
  CLAWMINE_CHECK(w.dim(0) % G == 0 && x.numel() == T * G * K && out.numel() == T * G * Lo,
                 "kernel bench: cublas_bf16 shapes x ", shape_str(x.shape), " w ", shape_str(w.shape), " out ",
                 shape_str(out.shape), " groups ", G);
  cublasHandle_t h = cublas_for(be);
  const float alpha = 1.0f, beta = 0.0f;
  // Column-major: out_z (Lo x T, ld G*Lo) = W_z^T' (K x Lo stored, transposed) * x_z (K x T, ld G*K).
  check_cublas(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(Lo), static_cast<int>(T),
                                          static_cast<int>(K), &alpha, w.data, CUDA_R_16BF, static_cast<int>(K),
                                          static_cast<long long>(Lo * K), x.data, CUDA_R_16BF,
                                          static_cast<int>(G * K), static_cast<long long>(K), &beta, out.data,
                                          CUDA_R_16BF, static_cast<int>(G * Lo), static_cast<long long>(Lo),
                                          static_cast<int>(G), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmStridedBatchedEx");
}

double rel_l2(ops::Backend& be, const TensorView& got, const TensorView& ref) {
  const std::vector<double> s = diff_stats(be, got, ref);
  if (s[2] > 0) return INFINITY;
  return s[1] > 0 ? std::sqrt(s[0] / s[1]) : std::sqrt(s[0]);
}

int64_t count_nonfinite(ops::Backend& be, const TensorView& t) {
  return static_cast<int64_t>(diff_stats(be, t, TensorView{})[2]);
}

void release_harness() {
  if (g_cublas.h) cublasDestroy(g_cublas.h);
  if (g_cublas.be && !g_cublas.workspace.empty()) g_cublas.be->release(g_cublas.workspace);
  g_cublas = Cublas{};
}

}  // namespace clawmine::bench
