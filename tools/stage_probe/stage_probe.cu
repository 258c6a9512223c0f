// bench_stage_probe: what a dependent step boundary of the decode step costs, as the step runs it
// (one launch per step, chained with programmatic dependent launch in a CUDA graph) and as a
// persistent kernel would (resident blocks taking units in step order, each unit waiting on a
// device counter for the step before it), on the same synthetic chain of streaming steps.
//
// The chain: one V4-Flash layer's critical path (docs/PERFORMANCE.md, thirtieth session), as
// (weight MB, blocks) per step: hc site (0, 64), wq_a (4, 64), q norm (0, 1), wq_b (32, 512),
// heads' norm/rope (0, 8), attention (1, 32), merge (0, 64), wo_a (32, 512), wo_b (32, 512),
// hc site (0, 64), router (0.5, 16), route (0, 1), routed gate/up (53.5, 768), down (26.8, 384),
// combine (0, 4); repeated over --layers distinct weight buffers (so nothing stays in L2).
// A step's block copies the first --prefetch-kb KB of its share of the step's weights into shared
// memory (cp.async) before its dependency, then reads all of the previous step's per-block
// partials (a real dependency), streams the rest of its share (16-byte loads, 4 in flight per
// thread, xor-folded) and writes one partial. Modes, the same arithmetic (the last step's partials
// are compared):
//   launch      a kernel per step launched with PDL; it triggers its dependents first (as the
//               decode GEMVs do), its dependency is griddepcontrol.wait; in a graph
//   persistent  one launch of the resident blocks taking units u = (step, block) in step order
//               from an atomic counter; the dependency: one thread spins (ld.acquire, __nanosleep
//               up to --spin-ns) until the step before counted all its blocks done (fence,
//               barrier, atomic add)
//   static      the same with block i taking units i, i + blocks, ... (no queue)
//   floor       one launch that reads every step's weights with no dependency: the bytes' cost
// Prints us per layer, GB/s, and (mode - floor) per step boundary; --per-step 1 also each step
// alone (its launches back to back, no chain): what its bytes cost at its grid.
// --desc 1: every block first reads its step's 8-byte descriptor (an offset, in a buffer written
// once at setup, as a GEMV reads its weight descriptor before its weights) and streams from the
// weights at that offset: a dependent read of data the step never writes. --l2-evict-first 1:
// the weight reads (and the copies before the dependency) carry an L2 evict-first policy
// (createpolicy + .L2::cache_hint), so that the weights stop pushing such data out of L2.
// --prefetch-regs R (8, 16, 24): a "launch regs" row too, the chain with each thread holding its first
// R 16-byte words in registers across the dependency instead of the shared-memory prefix (as the
// wgmma GEMVs hold their first k blocks; 24: 126 registers, wo_a's count).
//
//   bench_stage_probe [--layers 8] [--reps 20] [--threads 128] [--prefetch-kb 8] [--spin-ns 256]
//                     [--per-step 0] [--desc 0] [--l2-evict-first 0] [--prefetch-regs 0|8|16|24]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/weight_formats.cuh"  // ld_stream16: the decode GEMVs' weight load
#include "common/probe_timing.cuh"

#define CK(x)                                                                                \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

namespace {

using clawmine::backend::cuda::ld_stream16;

constexpr int kMaxBlocks = 1024;

struct Step {
  const uint4* w;    // this step's weights
  const int64_t* desc;  // --desc: its descriptor (an offset in 16-byte words, 0), else null
  int64_t n16;       // 16-byte words
  int blocks;
  const float* in;   // the previous step's partials (in_n of them), or null
  int in_n;
  float* out;        // blocks partials
};

// An L2 policy that marks every line it is used with evict-first (not volatile: computed once).
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t pol;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}

// The weight read: the decode GEMVs' (ld_stream16), or with an L2 evict-first policy.
template <bool kEF>
__device__ __forceinline__ uint4 ld_weight(const uint4* p) {
  if constexpr (!kEF) {
    return ld_stream16(p);
  } else {
    const uint64_t pol = evict_first_policy();
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(pol));
    return v;
  }
}
template <bool kEF>
__device__ __forceinline__ void copy_weight(uint32_t dst, const uint4* src) {
  if constexpr (!kEF) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
  } else {
    const uint64_t pol = evict_first_policy();
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "l"(pol)
                 : "memory");
  }
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) t += red[w];
  __syncthreads();
  return t;
}

// Block b of step st. Its first `pre16` 16-byte words (a prefix of its share) are copied into
// shared memory (cp.async) before wait() (the dependency: griddepcontrol.wait, or the counter
// spin), the rest streamed after it, 4 loads in flight per thread.
template <bool kEF, typename Wait>
__device__ __forceinline__ void run_unit(const Step& st, int b, int pre16, Wait&& wait, float* red) {
  extern __shared__ uint4 pre[];
  const uint4* const w = st.desc != nullptr ? st.w + __ldcg(st.desc) : st.w;
  const int64_t per = (st.n16 + st.blocks - 1) / st.blocks, w0 = b * per, w1 = min(w0 + per, st.n16);
  const int T = blockDim.x;
  const int64_t p1 = min(w0 + pre16, w1);
  for (int64_t j = w0 + threadIdx.x; j < p1; j += T) {
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(pre + (j - w0)));
    copy_weight<kEF>(dst, w + j);
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
  wait();
  float d = 0.0f;
  if (st.in != nullptr)
    for (int i = threadIdx.x; i < st.in_n; i += T) d += __ldcg(st.in + i);
  d = block_sum(d, red);
  uint32_t fold = 0;
  for (int64_t j = p1 + threadIdx.x; j < w1; j += 4 * T) {
    uint4 v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t k = j + static_cast<int64_t>(i) * T;
      v[i] = k < w1 ? ld_weight<kEF>(w + k) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) fold ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  }
  asm volatile("cp.async.wait_all;" ::: "memory");
  for (int64_t j = w0 + threadIdx.x; j < p1; j += T) {  // this thread's own copies
    const uint4 v = pre[j - w0];
    fold ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  const float f = block_sum(static_cast<float>(fold & 0xffu), red);
  if (threadIdx.x == 0) st.out[b] = 0.5f * d / static_cast<float>(max(st.in_n, 1)) + 1e-30f * f;
  __syncthreads();  // the shared copies are read before the next unit overwrites them
}

// As the decode GEMVs (pdl_begin(early)): the next launch may start at once.
template <bool kEF>
__global__ void step_kernel(Step st, int pre16) {
  __shared__ float red[32];
  asm volatile("griddepcontrol.launch_dependents;");
  run_unit<kEF>(st, blockIdx.x, pre16, [] { asm volatile("griddepcontrol.wait;" ::: "memory"); }, red);
}

// --prefetch-regs R: as step_kernel, but each thread holds its first R 16-byte words (of its
// block's share, coalesced: word w0 + i * T + tid) in registers across the dependency instead of
// copying a prefix into shared memory, as the decode's wgmma GEMVs hold their first k blocks: the
// block's registers, not its shared memory, decide how many blocks (of this step and the next)
// are resident at once.
template <int R>
__global__ void step_kernel_regs(Step st) {
  __shared__ float red[32];
  asm volatile("griddepcontrol.launch_dependents;");
  const uint4* const w = st.desc != nullptr ? st.w + __ldcg(st.desc) : st.w;
  const int b = blockIdx.x, T = blockDim.x;
  const int64_t per = (st.n16 + st.blocks - 1) / st.blocks, w0 = b * per, w1 = min(w0 + per, st.n16);
  uint4 held[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int64_t k = w0 + static_cast<int64_t>(i) * T + threadIdx.x;
    held[i] = k < w1 ? ld_stream16(w + k) : make_uint4(0u, 0u, 0u, 0u);
  }
  asm volatile("griddepcontrol.wait;" ::: "memory");
  float d = 0.0f;
  if (st.in != nullptr)
    for (int i = threadIdx.x; i < st.in_n; i += T) d += __ldcg(st.in + i);
  d = block_sum(d, red);
  uint32_t fold = 0;
  const int64_t p1 = min(w0 + static_cast<int64_t>(R) * T, w1);
  for (int64_t j = p1 + threadIdx.x; j < w1; j += 4 * T) {
    uint4 v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t k = j + static_cast<int64_t>(i) * T;
      v[i] = k < w1 ? ld_stream16(w + k) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) fold ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  }
#pragma unroll
  for (int i = 0; i < R; ++i) fold ^= held[i].x ^ held[i].y ^ held[i].z ^ held[i].w;
  const float f = block_sum(static_cast<float>(fold & 0xffu), red);
  if (threadIdx.x == 0) st.out[b] = 0.5f * d / static_cast<float>(max(st.in_n, 1)) + 1e-30f * f;
}

// Units in step order: step s owns [first[s], first[s + 1]). queue: from an atomic counter;
// else block i takes units i, i + gridDim.x, ... in order (every block's units ascend, so the
// earliest unfinished unit can always run: no deadlock with every block resident). The spin
// backs off with __nanosleep up to max_ns (0: none).
template <bool kEF>
__global__ void persistent_kernel(const Step* steps, const int* first, int n_steps, unsigned* next, unsigned* done,
                                  int pre16, int queue, int max_ns) {
  __shared__ float red[32];
  __shared__ int unit;
  const int total = first[n_steps];
  int s = 0;
  for (int k = 0;; ++k) {
    if (queue) {
      if (threadIdx.x == 0) unit = static_cast<int>(atomicAdd(next, 1u));
      __syncthreads();
    }
    const int u = queue ? unit : static_cast<int>(blockIdx.x) + k * static_cast<int>(gridDim.x);
    if (queue) __syncthreads();
    if (u >= total) return;
    while (first[s + 1] <= u) ++s;  // units ascend per block
    const Step st = steps[s];
    const int b = u - first[s];
    run_unit<kEF>(st, b, pre16,
             [&] {
               if (threadIdx.x == 0 && s > 0) {
                 const unsigned want = static_cast<unsigned>(steps[s - 1].blocks);
                 unsigned ns = 32;
                 while (ld_acquire(done + s - 1) < want) {
                   if (max_ns > 0) {
                     __nanosleep(ns);
                     if (ns < static_cast<unsigned>(max_ns)) ns *= 2;
                   }
                 }
               }
               __syncthreads();
             },
             red);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(done + s, 1u);
  }
}

template <bool kEF>
__global__ void floor_kernel(const uint4* w, int64_t n16, unsigned* sink) {
  uint32_t fold = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n16; j += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t k = j + i * stride;
      v[i] = k < n16 ? ld_weight<kEF>(w + k) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) fold ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  }
  if (fold == 0x12345678u) atomicAdd(sink, 1u);
}

struct StepSpec {
  const char* name;
  double mb;
  int blocks;
};
const StepSpec kLayer[] = {
    {"hc site", 0, 64},  {"wq_a", 4, 64},    {"q norm", 0, 1},     {"wq_b", 32, 512},       {"heads norm", 0, 8},
    {"attention", 1, 32}, {"merge", 0, 64},  {"wo_a", 32, 512},    {"wo_b", 32, 512},       {"hc site", 0, 64},
    {"router", 0.5, 16}, {"route", 0, 1},    {"gate/up", 53.5, 768}, {"down", 26.8, 384}, {"combine", 0, 4},
};
constexpr int kPerLayer = sizeof(kLayer) / sizeof(kLayer[0]);

}  // namespace

int main(int argc, char** argv) {
  int layers = 8, reps = 20, threads = 128, pre_kb = 8, max_ns = 256, per_step = 0, desc = 0, ef = 0, pre_regs = 0;
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 == argc) {
      std::fprintf(stderr, "bench_stage_probe: %s needs a value\n", argv[i]);
      return 2;
    }
    if (a == "--layers") layers = std::atoi(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--prefetch-kb") pre_kb = std::atoi(argv[i + 1]);
    else if (a == "--spin-ns") max_ns = std::atoi(argv[i + 1]);
    else if (a == "--per-step") per_step = std::atoi(argv[i + 1]);
    else if (a == "--desc") desc = std::atoi(argv[i + 1]);
    else if (a == "--l2-evict-first") ef = std::atoi(argv[i + 1]);
    else if (a == "--prefetch-regs") pre_regs = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\nusage: bench_stage_probe [--layers N] [--reps N] [--threads N] [--prefetch-kb N] [--spin-ns N] [--per-step 0|1] [--desc 0|1] [--l2-evict-first 0|1] [--prefetch-regs 0|8|16|24]\n", argv[i]);
      return 2;
    }
  }
  auto flag01 = [](int v) { return v == 0 || v == 1; };
  if (layers < 1 || reps < 3 || threads < 32 || threads > 1024 || threads % 32 != 0 || pre_kb < 0 || pre_kb > 200 ||
      !flag01(per_step) || !flag01(desc) || !flag01(ef) || (pre_regs != 0 && pre_regs != 8 && pre_regs != 16 && pre_regs != 24)) {
    std::fprintf(stderr, "bench_stage_probe: --layers >= 1, --reps >= 3, --threads a multiple of 32 in [32, 1024], "
                         "--prefetch-kb in [0, 200], --per-step, --desc and --l2-evict-first 0 or 1, --prefetch-regs 0, 8, 16 or 24\n");
    return 2;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  const int n_steps = layers * kPerLayer;
  std::vector<Step> steps(n_steps);
  std::vector<int> first(n_steps + 1, 0);
  int64_t total16 = 0;
  for (int s = 0; s < n_steps; ++s) total16 += static_cast<int64_t>(kLayer[s % kPerLayer].mb * (1 << 20)) / 16;
  uint4* wbuf = nullptr;
  CK(cudaMalloc(&wbuf, std::max<int64_t>(total16, 1) * 16));
  CK(cudaMemset(wbuf, 0x3c, std::max<int64_t>(total16, 1) * 16));
  int64_t* descs = nullptr;  // --desc: one 8-byte offset (0) per step, each in its own 128-byte line
  CK(cudaMalloc(&descs, static_cast<size_t>(n_steps) * 16 * sizeof(int64_t)));
  CK(cudaMemset(descs, 0, static_cast<size_t>(n_steps) * 16 * sizeof(int64_t)));
  float* parts = nullptr;
  CK(cudaMalloc(&parts, static_cast<size_t>(n_steps) * kMaxBlocks * sizeof(float)));
  CK(cudaMemset(parts, 0, static_cast<size_t>(n_steps) * kMaxBlocks * sizeof(float)));
  int64_t off = 0;
  for (int s = 0; s < n_steps; ++s) {
    const StepSpec& sp = kLayer[s % kPerLayer];
    Step& st = steps[s];
    st.w = wbuf + off;
    st.desc = desc ? descs + static_cast<size_t>(s) * 16 : nullptr;
    st.n16 = static_cast<int64_t>(sp.mb * (1 << 20)) / 16;
    off += st.n16;
    st.blocks = sp.blocks;
    st.out = parts + static_cast<size_t>(s) * kMaxBlocks;
    st.in = s > 0 ? steps[s - 1].out : nullptr;
    st.in_n = s > 0 ? steps[s - 1].blocks : 0;
    first[s + 1] = first[s] + st.blocks;
  }
  Step* dsteps = nullptr;
  int* dfirst = nullptr;
  unsigned *next = nullptr, *done = nullptr, *sink = nullptr;
  CK(cudaMalloc(&dsteps, n_steps * sizeof(Step)));
  CK(cudaMalloc(&dfirst, (n_steps + 1) * sizeof(int)));
  CK(cudaMalloc(&next, sizeof(unsigned)));
  CK(cudaMalloc(&done, n_steps * sizeof(unsigned)));
  CK(cudaMalloc(&sink, sizeof(unsigned)));
  CK(cudaMemcpy(dsteps, steps.data(), n_steps * sizeof(Step), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dfirst, first.data(), (n_steps + 1) * sizeof(int), cudaMemcpyHostToDevice));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  const int pre16 = pre_kb * 1024 / 16;
  auto* const step_k = ef ? step_kernel<true> : step_kernel<false>;
  auto* const persistent_k = ef ? persistent_kernel<true> : persistent_kernel<false>;
  auto* const floor_k = ef ? floor_kernel<true> : floor_kernel<false>;
  const size_t smem = std::max<size_t>(static_cast<size_t>(pre16) * 16, 16);
  CK(cudaFuncSetAttribute(persistent_k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  CK(cudaFuncSetAttribute(step_k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persistent_k, threads, smem));
  const int resident = per_sm * prop.multiProcessorCount;

  // Milliseconds of one replay of what `record` captures.
  auto time_graph = [&](auto&& record) {
    return static_cast<float>(clawmine::probe::time_graph(st, 1, reps, [&](int) { record(); }));
  };

  // The chain as launches with PDL: kernel(steps[s], extra...) per step, smem bytes each.
  auto pdl_chain_ms = [&](auto* kernel, size_t smem_bytes, auto... extra) {
    return time_graph([&] {
      for (int s = 0; s < n_steps; ++s) {
        cudaLaunchConfig_t cfg{};
        cfg.gridDim = dim3(static_cast<unsigned>(steps[s].blocks));
        cfg.blockDim = dim3(static_cast<unsigned>(threads));
        cfg.dynamicSmemBytes = smem_bytes;
        cfg.stream = st;
        cudaLaunchAttribute attr{};
        attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr.val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        CK(cudaLaunchKernelEx(&cfg, kernel, steps[s], extra...));
      }
    });
  };
  const float launch_ms = pdl_chain_ms(step_k, smem, pre16);
  // --prefetch-regs: the same chain with the prefix held in registers (no shared memory).
  float regs_ms = 0.0f;
  if (pre_regs > 0) {
    auto* const regs_k = pre_regs == 8 ? step_kernel_regs<8> : pre_regs == 16 ? step_kernel_regs<16> : step_kernel_regs<24>;
    regs_ms = pdl_chain_ms(regs_k, 0);
    cudaFuncAttributes fa{};
    CK(cudaFuncGetAttributes(&fa, regs_k));
    int per_sm_regs = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_regs, regs_k, threads, 0));
    std::printf("prefetch in registers: %d words of 16 bytes per thread (%d KB per block), %d registers, %d blocks "
                "per SM\n", pre_regs, pre_regs * threads * 16 / 1024, fa.numRegs, per_sm_regs);
  }
  auto persistent = [&](int queue) {
    return time_graph([&] {
      CK(cudaMemsetAsync(next, 0, sizeof(unsigned), st));
      CK(cudaMemsetAsync(done, 0, n_steps * sizeof(unsigned), st));
      persistent_k<<<resident, threads, smem, st>>>(dsteps, dfirst, n_steps, next, done, pre16, queue, max_ns);
      CK(cudaGetLastError());
    });
  };
  const float persistent_ms = persistent(1), static_ms = persistent(0);
  const float memset_ms = time_graph([&] {
    CK(cudaMemsetAsync(next, 0, sizeof(unsigned), st));
    CK(cudaMemsetAsync(done, 0, n_steps * sizeof(unsigned), st));
  });
  const float floor_ms = time_graph([&] {
    floor_k<<<prop.multiProcessorCount * 8, 256, 0, st>>>(wbuf, total16, sink);
    CK(cudaGetLastError());
  });
  // The two chains must agree: the last step's partials.
  std::vector<float> a(steps.back().blocks), b(steps.back().blocks);
  CK(cudaMemset(parts, 0, static_cast<size_t>(n_steps) * kMaxBlocks * sizeof(float)));
  (void)time_graph([&] {
    for (int s = 0; s < n_steps; ++s) step_k<<<steps[s].blocks, threads, smem, st>>>(steps[s], pre16);
  });
  CK(cudaMemcpy(a.data(), steps.back().out, a.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CK(cudaMemset(parts, 0, static_cast<size_t>(n_steps) * kMaxBlocks * sizeof(float)));
  (void)time_graph([&] {
    CK(cudaMemsetAsync(next, 0, sizeof(unsigned), st));
    CK(cudaMemsetAsync(done, 0, n_steps * sizeof(unsigned), st));
    persistent_k<<<resident, threads, smem, st>>>(dsteps, dfirst, n_steps, next, done, pre16, 0, max_ns);
  });
  CK(cudaMemcpy(b.data(), steps.back().out, b.size() * sizeof(float), cudaMemcpyDeviceToHost));
  const bool same = std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;

  const double bytes = static_cast<double>(total16) * 16;
  const int boundaries = kPerLayer;  // per layer
  std::printf("bench_stage_probe: %s, %d SMs; %d layers x %d steps, %.1f MB per layer, %d threads per block, "
              "%d KB per block copied before the dependency; persistent: %d resident blocks (%d per SM); "
              "descriptor read first: %s; weights L2 evict-first: %s; chains agree: %s\n",
              prop.name, prop.multiProcessorCount, layers, kPerLayer, bytes / layers / 1e6, threads, pre_kb, resident,
              per_sm, desc ? "yes" : "no", ef ? "yes" : "no", same ? "yes" : "NO");
  auto row = [&](const char* name, float ms) {
    const double us = ms * 1e3 / layers;
    std::printf("%-12s %9.1f us per layer  %7.0f GB/s  (%+6.2f us per boundary over the floor)\n", name, us,
                bytes / (ms * 1e-3) / 1e9, (ms - floor_ms) * 1e3 / layers / boundaries);
  };
  row("launch", launch_ms);
  if (pre_regs > 0) row("launch regs", regs_ms);
  row("persistent", persistent_ms - memset_ms);
  row("static", static_ms - memset_ms);
  row("floor", floor_ms);
  std::printf("(persistent excludes its two counter memsets, %.1f us per graph)\n", memset_ms * 1e3);
  if (per_step) {
    // Each step of the layer alone: a graph of its launches over the layers' buffers (plain
    // launches, one after another), us per launch: the step's own cost at its grid and bytes.
    std::printf("\n%-12s %8s %8s %10s %9s\n", "step", "MB", "blocks", "us alone", "GB/s");
    for (int j = 0; j < kPerLayer; ++j) {
      const float ms = time_graph([&] {
        for (int l = 0; l < layers; ++l) {
          const Step& sj = steps[l * kPerLayer + j];
          step_k<<<sj.blocks, threads, smem, st>>>(sj, pre16);
        }
      });
      const double us = ms * 1e3 / layers;
      std::printf("%-12s %8.1f %8d %10.2f %9.0f\n", kLayer[j].name, kLayer[j].mb, kLayer[j].blocks, us,
                  kLayer[j].mb * (1 << 20) / (us * 1e-6) / 1e9);
    }
  }
  return same ? 0 : 1;
}
