// bench_gemv_probe: the decode GEMV (backend/cuda/linear_gemv.cu) at V4-Flash shapes, per weight
// format and token count, against the copy bandwidth measured in the same run.
//
// For each format (BF16, FP8 with E8M0 / F32 block scales, MXFP4, NVFP4), shape and T it times
//   fma     launch_gemv_fma: the float32-FMA kernel (the GEMV before the tensor-core one)
//   stg     launch_gemv as linear() runs it (tensor-core kernel, weights through a cp.async ring;
//           dense BF16 at T <= 2 takes the FMA kernel)
//   dir     the tensor-core kernel loading weights straight into registers
//   stg1, dir1  the same with one m-tile per warp whatever the row count
//   cublas  cublasGemmEx on BF16 weights of the same shape (BF16 rows only; the issue's baseline)
// as CUDA graphs of back-to-back launches over enough weight copies that nothing stays in L2
// (median over replays), and prints GB/s of weight + scale bytes for the default kernel and the
// ratio to the copy bandwidth of the same run: the best of a 1 GiB cudaMemcpy (in a graph and
// eager) and a 16-byte-per-thread copy kernel, counting bytes read + written. It also prints the
// floor of one empty kernel launch in a graph. Every case checks both tensor-core variants
// against fma on the same random inputs (rel_l2 of f32 outputs, NaN-poisoned first).
//
//   bench_gemv_probe [--tokens 1,4,16] [--shapes wq_b,wo_b,w1,wq_a,head] [--formats bf16,fp8,fp8f32,mxfp4,nvfp4]
//                    [--reps 15] [--csv FILE]
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/linear_kernels.cuh"

namespace cuda = clawmine::backend::cuda;
using cuda::WFmt;

namespace {

#define CK(expr)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (expr);                                                                  \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(2);                                                                           \
    }                                                                                         \
  } while (0)
#define CKB(expr)                                                                   \
  do {                                                                              \
    cublasStatus_t s_ = (expr);                                                     \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                              \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #expr, int(s_)); \
      std::exit(2);                                                                 \
    }                                                                               \
  } while (0)

__device__ __forceinline__ uint32_t hash32(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<uint32_t>(x >> 16);
}

// Random bytes by kind: 0 any byte, 1 E4M3 without NaN codes, 2 E8M0 in [2^-12, 2^-4],
// 3 positive finite E4M3 in [2^-6, 2^6), 4 F32 in [1e-3, 1e-2), 5 BF16 in [-1/16, 1/16].
__global__ void fill_kernel(uint8_t* p, int64_t n, int kind, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t h = hash32(i, seed);
    switch (kind) {
      case 0: p[i] = static_cast<uint8_t>(h); break;
      case 1: p[i] = ((h & 0x7fu) == 0x7fu) ? static_cast<uint8_t>(h ^ 1u) : static_cast<uint8_t>(h); break;
      case 2: p[i] = static_cast<uint8_t>(115 + h % 9); break;
      case 3: p[i] = static_cast<uint8_t>(0x08 + ((h % 12) << 3) + (h >> 8) % 8); break;
      case 4:
        if (i % 4 == 0) {
          const float v = 1e-3f + 9e-3f * static_cast<float>(h % 65536) / 65536.0f;
          std::memcpy(p + i, &v, 4);
        }
        break;
      case 5:
        if (i % 2 == 0) {
          const float v = (static_cast<float>(h % 65536) / 32768.0f - 1.0f) / 16.0f;
          const __nv_bfloat16 b = __float2bfloat16_rn(v);
          std::memcpy(p + i, &b, 2);
        }
        break;
    }
  }
}
__global__ void fill_f32(float* p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = v;
}

// Fills run on the legacy default stream and are waited for: the timed stream is non-blocking.
void fill(void* p, int64_t bytes, int kind, uint32_t seed) {
  fill_kernel<<<1024, 256>>>(static_cast<uint8_t*>(p), bytes, kind, seed);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
}
void fill_value(float* p, int64_t n, float v) {
  fill_f32<<<1024, 256>>>(p, n, v);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
}
__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}
__global__ void empty_kernel() {}

struct Shape {
  const char* name;
  int64_t rows, k;
};
const Shape kShapes[] = {{"wq_b", 32768, 1024}, {"wo_b", 4096, 8192}, {"w1", 2048, 4096},
                         {"wq_a", 1024, 4096},  {"head", 129280, 4096}};

struct Format {
  const char* name;
  WFmt fmt;
};
const Format kFormats[] = {{"bf16", WFmt::kBF16},
                           {"fp8", WFmt::kFp8E8M0},
                           {"fp8f32", WFmt::kFp8F32},
                           {"mxfp4", WFmt::kMxfp4},
                           {"nvfp4", WFmt::kNvfp4}};

// One weight copy in device memory.
struct Weight {
  void* w = nullptr;
  void* s = nullptr;
  float* s2 = nullptr;
  cuda::WeightDesc d;
  int64_t bytes = 0;  // weight + scale bytes
};

Weight make_weight(WFmt f, int64_t rows, int64_t k, uint32_t seed) {
  Weight w;
  cuda::WeightDesc& d = w.d;
  d.rows = rows;
  d.k = k;
  d.fmt = static_cast<int32_t>(f);
  int64_t wbytes = 0, sbytes = 0;
  int wkind = 0, skind = 0;
  switch (f) {
    case WFmt::kBF16: d.row_bytes = 2 * k, wkind = 5; break;
    case WFmt::kFp8E8M0:
    case WFmt::kFp8F32:
      d.row_bytes = k, wkind = 1;
      d.scale_ld = (k + 127) / 128;
      sbytes = ((rows + 127) / 128) * d.scale_ld * (f == WFmt::kFp8F32 ? 4 : 1);
      skind = f == WFmt::kFp8F32 ? 4 : 2;
      break;
    case WFmt::kMxfp4: d.row_bytes = k / 2, d.scale_ld = k / 32, sbytes = rows * d.scale_ld, skind = 2; break;
    case WFmt::kNvfp4: d.row_bytes = k / 2, d.scale_ld = k / 16, sbytes = rows * d.scale_ld, skind = 3; break;
    default: std::fprintf(stderr, "format not probed\n"), std::exit(2);
  }
  wbytes = rows * d.row_bytes;
  CK(cudaMalloc(&w.w, static_cast<size_t>(wbytes)));
  fill(w.w, wbytes, wkind, seed);
  d.w = static_cast<const uint8_t*>(w.w);
  if (sbytes > 0) {
    CK(cudaMalloc(&w.s, static_cast<size_t>(sbytes)));
    fill(w.s, sbytes, skind, seed + 1);
    d.scale = static_cast<const uint8_t*>(w.s);
  }
  if (f == WFmt::kNvfp4) {
    CK(cudaMalloc(&w.s2, 4));
    fill_value(w.s2, 1, 1.0f / 1024);
    d.scale2 = w.s2;
  }
  w.bytes = wbytes + sbytes;
  return w;
}
void free_weight(Weight& w) {
  CK(cudaFree(w.w));
  if (w.s) CK(cudaFree(w.s));
  if (w.s2) CK(cudaFree(w.s2));
}

cuda::GemmArgs gemv_args(const cuda::WeightDesc& d, const void* x, void* out, int64_t T, bool out_bf16) {
  cuda::GemmArgs a;
  a.desc0 = d;
  a.w_row_z = d.rows;
  a.n_rows = d.rows;
  a.K = d.k;
  a.x = x;
  a.ldx = d.k;
  a.x_z = d.k;
  a.out = out;
  a.ldo = d.rows;
  a.out_z = d.rows;
  a.out_bf16 = out_bf16 ? 1 : 0;
  a.rows = T;
  a.n_z = 1;
  a.tile_rows = cuda::gemv_tile_rows(T);
  a.fmt = d.fmt;
  return a;
}

// Median milliseconds per launch of `launch(i)` (i = 0..n-1) captured as one graph.
template <typename Fn>
double time_graph(cudaStream_t st, int n, int reps, Fn&& launch) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < n; ++i) launch(i);
  CK(cudaStreamEndCapture(st, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, st));
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float m = 0;
    CK(cudaEventElapsedTime(&m, e0, e1));
    ms.push_back(m / n);
  }
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t q = s.find(',', p);
    v.push_back(s.substr(p, q == std::string::npos ? std::string::npos : q - p));
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return v;
}
bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

double rel_l2(const std::vector<float>& got, const std::vector<float>& ref, bool& all_finite) {
  double num = 0, den = 0;
  all_finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(ref[i])) all_finite = false;
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> tokens = {"1", "4", "16"}, shapes = {"wq_b", "wo_b", "w1", "wq_a", "head"},
                           formats = {"bf16", "fp8", "fp8f32", "mxfp4", "nvfp4"};
  int reps = 15;
  std::string csv;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--tokens") tokens = split(v);
    else if (k == "--shapes") shapes = split(v);
    else if (k == "--formats") formats = split(v);
    else if (k == "--reps") reps = std::max(3, std::atoi(v.c_str()));
    else if (k == "--csv") csv = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cublasHandle_t cub;
  CKB(cublasCreate(&cub));
  CKB(cublasSetStream(cub, st));

  // Copy roofline: 1 GiB device-to-device, read + write bytes; the best of three ways.
  double copy_gbs = 0, memcpy_graph_gbs = 0, memcpy_eager_gbs = 0, copy_kernel_gbs = 0;
  {
    const size_t n = size_t{1} << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    fill(a, static_cast<int64_t>(n), 0, 7);
    for (int warm = 0; warm < 3; ++warm) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    const double g_ms = time_graph(st, 4, reps, [&](int) { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st)); });
    std::vector<double> ms;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int r = 0; r < reps; ++r) {
      CK(cudaEventRecord(e0, st));
      CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st));
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      float m = 0;
      CK(cudaEventElapsedTime(&m, e0, e1));
      ms.push_back(m);
    }
    std::sort(ms.begin(), ms.end());
    const double e_ms = ms[ms.size() / 2];
    const double k_ms = time_graph(st, 4, reps, [&](int) {
      copy_kernel<<<prop.multiProcessorCount * 8, 256, 0, st>>>(static_cast<const uint4*>(a), static_cast<uint4*>(b),
                                                                 static_cast<int64_t>(n / 16));
      CK(cudaGetLastError());
    });
    memcpy_graph_gbs = 2.0 * n / (g_ms * 1e-3) / 1e9;
    memcpy_eager_gbs = 2.0 * n / (e_ms * 1e-3) / 1e9;
    copy_kernel_gbs = 2.0 * n / (k_ms * 1e-3) / 1e9;
    copy_gbs = std::max({memcpy_graph_gbs, memcpy_eager_gbs, copy_kernel_gbs});
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaFree(a));
    CK(cudaFree(b));
  }
  std::printf("copy 1 GiB D2D (read + write): memcpy in a graph %.1f GB/s, eager %.1f GB/s, copy kernel %.1f GB/s\n",
              memcpy_graph_gbs, memcpy_eager_gbs, copy_kernel_gbs);
  const double empty_us = 1e3 * time_graph(st, 64, reps, [&](int) {
                            empty_kernel<<<1, 32, 0, st>>>();
                            CK(cudaGetLastError());
                          });
  std::printf("empty kernel in a graph: %.2f us per launch\n", empty_us);

  FILE* out_csv = csv.empty() ? nullptr : std::fopen(csv.c_str(), "w");
  if (out_csv)
    std::fprintf(out_csv,
                 "format,shape,rows,k,T,bytes,fma_us,stg_us,dir_us,stg1_us,dir1_us,cublas_us,fma_gbs,stg_gbs,"
                 "stg_copy_ratio,best_gbs,rel_l2_dir,rel_l2_stg\n");
  std::printf("%-6s %-5s %2s %7s %7s %7s %7s %7s %7s %8s %8s %6s %6s %8s %8s\n", "format", "shape", "T", "MB",
              "fma_us", "stg_us", "dir_us", "stg1_us", "dir1_us", "fma_GB/s", "stg_GB/s", "%copy", "x_fma", "cublas_us",
              "rel_l2");
  uint32_t seed = 1;
  bool ok = true;
  for (const Shape& sh : kShapes) {
    if (!has(shapes, sh.name)) continue;
    for (const Format& fm : kFormats) {
      if (!has(formats, fm.name)) continue;
      if (std::string(sh.name) == "head" && fm.fmt != WFmt::kBF16 && fm.fmt != WFmt::kFp8E8M0) continue;
      // Enough copies that a graph of launches streams >= 192 MB (nothing stays in the 50 MB L2).
      Weight first = make_weight(fm.fmt, sh.rows, sh.k, seed++);
      const int copies = static_cast<int>(std::max<int64_t>(2, std::min<int64_t>(96, (192ll << 20) / first.bytes + 1)));
      std::vector<Weight> ws = {first};
      for (int c = 1; c < copies; ++c) ws.push_back(make_weight(fm.fmt, sh.rows, sh.k, seed++));
      const bool want_cublas = fm.fmt == WFmt::kBF16;
      for (const std::string& ts : tokens) {
        const int64_t T = std::atoll(ts.c_str());
        if (T < 1 || T > 16) continue;
        void *x, *o, *o_ref, *o_new;
        CK(cudaMalloc(&x, static_cast<size_t>(T * sh.k * 2)));
        fill(x, T * sh.k * 2, 5, seed++);  // waits: the check below runs on `st`
        CK(cudaMalloc(&o, static_cast<size_t>(T * sh.rows * 4)));
        CK(cudaMalloc(&o_ref, static_cast<size_t>(T * sh.rows * 4)));
        CK(cudaMalloc(&o_new, static_cast<size_t>(T * sh.rows * 4)));
        // Check: both tensor-core variants against fma on copy 0, f32 outputs poisoned with NaN first.
        auto run_f32 = [&](int variant, void* o32) {
          fill_value(static_cast<float*>(o32), T * sh.rows, NAN);
          const cuda::GemmArgs ga = gemv_args(ws[0].d, x, o32, T, false);
          if (variant == 0) {
            cuda::launch_gemv_fma(ga, true, 1, st);
          } else {
            cuda::set_gemv_mma_config(variant == 2 ? 1 : 0, 0);
            cuda::launch_gemv(ga, true, 1, st);
          }
          CK(cudaStreamSynchronize(st));
          std::vector<float> v(static_cast<size_t>(T * sh.rows));
          CK(cudaMemcpy(v.data(), o32, v.size() * 4, cudaMemcpyDeviceToHost));
          return v;
        };
        const std::vector<float> ref = run_f32(0, o_ref), got_d = run_f32(1, o_new), got_s = run_f32(2, o_new);
        bool fin_d = true, fin_s = true;
        const double err_d = rel_l2(got_d, ref, fin_d), err_s = rel_l2(got_s, ref, fin_s);
        const bool pass = fin_d && fin_s && err_d < 1e-4 && err_s < 1e-4;
        ok = ok && pass;

        const int n = std::max(copies, 8);
        const double fma_ms = time_graph(st, n, reps, [&](int i) {
          cuda::launch_gemv_fma(gemv_args(ws[i % copies].d, x, o, T, true), true, 1, st);
        });
        // Variants: staged/direct x rows auto/1; [0] is the default.
        const int cfg[4][2] = {{1, 0}, {0, 0}, {1, 1}, {0, 1}};
        double mma_ms[4];
        for (int v = 0; v < 4; ++v) {
          cuda::set_gemv_mma_config(cfg[v][0], cfg[v][1]);
          mma_ms[v] = time_graph(st, n, reps, [&](int i) {
            cuda::launch_gemv(gemv_args(ws[i % copies].d, x, o, T, true), true, 1, st);
          });
        }
        cuda::set_gemv_mma_config(1, 0);
        const double best_ms = *std::min_element(mma_ms, mma_ms + 4);
        double cub_ms = 0;
        if (want_cublas) {
          // out[T, rows] = x[T, K] @ W^T: column-major C (rows x T) = W' (K x rows)^T * x' (K x T).
          const float alpha = 1.0f, beta = 0.0f;
          cub_ms = time_graph(st, n, reps, [&](int i) {
            CKB(cublasGemmEx(cub, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(sh.rows), static_cast<int>(T),
                             static_cast<int>(sh.k), &alpha, ws[i % copies].w, CUDA_R_16BF, static_cast<int>(sh.k), x,
                             CUDA_R_16BF, static_cast<int>(sh.k), &beta, o, CUDA_R_16BF, static_cast<int>(sh.rows),
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
          });
        }
        const double mb = first.bytes / 1e6;
        auto gbs = [&](double ms) { return first.bytes / (ms * 1e-3) / 1e9; };
        char cub[32] = "-";
        if (want_cublas) std::snprintf(cub, sizeof cub, "%.2f", cub_ms * 1e3);
        std::printf("%-6s %-5s %2lld %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %8.0f %8.0f %5.1f%% %5.2fx %8s %8.1e%s\n",
                    fm.name, sh.name, static_cast<long long>(T), mb, fma_ms * 1e3, mma_ms[0] * 1e3, mma_ms[1] * 1e3,
                    mma_ms[2] * 1e3, mma_ms[3] * 1e3, gbs(fma_ms), gbs(mma_ms[0]), 100.0 * gbs(mma_ms[0]) / copy_gbs,
                    fma_ms / mma_ms[0], cub, std::max(err_d, err_s), pass ? "" : "  CHECK FAILED");
        std::fflush(stdout);
        if (out_csv)
          std::fprintf(out_csv, "%s,%s,%lld,%lld,%lld,%lld,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.1f,%.1f,%.4f,%.1f,%.3e,%.3e\n",
                       fm.name, sh.name, static_cast<long long>(sh.rows), static_cast<long long>(sh.k),
                       static_cast<long long>(T), static_cast<long long>(first.bytes), fma_ms * 1e3, mma_ms[0] * 1e3,
                       mma_ms[1] * 1e3, mma_ms[2] * 1e3, mma_ms[3] * 1e3, cub_ms * 1e3, gbs(fma_ms), gbs(mma_ms[0]),
                       gbs(mma_ms[0]) / copy_gbs, gbs(best_ms), err_d, err_s);
        CK(cudaFree(x));
        CK(cudaFree(o));
        CK(cudaFree(o_ref));
        CK(cudaFree(o_new));
      }
      for (Weight& w : ws) free_weight(w);
    }
  }
  if (out_csv) std::fclose(out_csv);
  CKB(cublasDestroy(cub));
  CK(cudaStreamDestroy(st));
  std::printf("copy %.1f GB/s, empty launch %.2f us; checks %s\n", copy_gbs, empty_us, ok ? "passed" : "FAILED");
  return ok ? 0 : 1;
}
