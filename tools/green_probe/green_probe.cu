// bench_green_probe (docs/PERFORMANCE.md, forty-first session): does a chain of small dependent
// kernels (the decode step's norms, ropes, copies, sites: one to 64 blocks, a few round trips to
// memory each) run faster when the SMs it runs on carry no weight-streaming kernel? The decode
// step's traces show its small kernels ending 3-20 us after their input while a GEMV streams beside
// them. Green contexts (cuGreenCtxCreate) split the device's SMs: the streaming kernel on one
// part, the chain on the other.
//
// The chain: --steps launches of chain_kernel (PDL: each triggers its dependent at once and waits
// with griddepcontrol.wait), --chain-blocks blocks of 256 threads; each block reads the previous
// step's 1 KB, sums it, and writes 1 KB; thread 0 of block 0 stamps %globaltimer and its SM.
// The stream: heavy_kernel reads --heavy-mb MB (16-byte loads, 8 in flight per thread, 128
// threads, --heavy-per-sm blocks per SM of its part), as a decode GEMV streams its weights.
// Cases (each a CUDA graph replayed; the chain's us per step is the median gap between
// consecutive steps' stamps while the stream still runs):
//   chain alone; stream alone (GB/s) on all SMs and on each part; both on all SMs (plain streams);
//   both split (chain on --light-sms SMs, stream on the rest), for each --light-sms value (0: none).
// --heavy-kind tma: the stream through bulk copies (heavy_tma_kernel: 4 x 16 KB in flight per
// block into shared memory) instead of 16-byte loads.
// Per split also the retarget chain: --pattern (default HTTHTTHHTT: H a GEMV-like step over
// --step-mb MB, T a one-block step) x --layers, launched with PDL on one plain stream and captured
// as the decode step is, then replayed as captured and with its H and / or T kernel nodes moved to
// the green contexts (cuGraphKernelNodeSetParams with the kernel's CUkernel and context): what
// moving the step's own kernels would cost (--retarget-only 1: only this).
// --floor-mb LIST: us per read of each size (8 launches back to back from buffers beyond L2) by
// 16-byte loads at 2, 3, 4, 8 blocks per SM and by bulk copies at 1, 2, 3, with the copy
// bandwidth of the same run; then exits. --carveout LIST (with --floor-mb): the loads' rows again
// at each preferred shared-memory carveout of heavy_kernel (percent, 0..100; -1 no preference, the
// driver's choice): whether a larger carveout, which leaves the L1 data cache less of the SRAM it
// shares with shared memory, caps a stream's bytes in flight. --floor-smem-kb K
// (0..48, default 0) gives those loads K KB of dynamic shared memory per block that they do not use,
// so that the carveout preference has something to apply to.
//
//   bench_green_probe [--steps 48] [--chain-blocks 1,8,32] [--heavy-mb 2048] [--heavy-per-sm 4]
//                     [--heavy-kind ld|tma] [--light-sms 8,16] [--reps 5] [--pattern HTTHTTHHTT]
//                     [--layers 8] [--step-mb 32] [--retarget-only 0|1] [--floor-mb 17.8,33.5]
//                     [--carveout -1,0,50,100] [--floor-smem-kb 0]
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/weight_formats.cuh"  // ld_stream16: the decode GEMVs' weight load
#include "common/probe_timing.cuh"

#define CK(x) CLAWMINE_PROBE_CK(x)
// A driver call that may fail where green contexts are not supported: reported, not fatal.
#define DK(x) dk((x), #x, __LINE__)

namespace {

using clawmine::backend::cuda::ld_stream16;

bool dk(CUresult r, const char* what, int line) {
  if (r == CUDA_SUCCESS) return true;
  const char* s = nullptr;
  cuGetErrorString(r, &s);
  std::printf("  driver call failed (line %d): %s: %s\n", line, what, s ? s : "?");
  return false;
}

__device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned smid() {
  unsigned s;
  asm volatile("mov.u32 %0, %smid;" : "=r"(s));
  return s;
}

struct Stamp {
  unsigned long long t;
  unsigned sm, pad;
};

// One chain step: trigger, wait for the previous step, read its 1 KB, sum, write 1 KB.
__global__ void chain_kernel(const float* in, float* out, Stamp* stamp) {
  __shared__ float red[8];
  asm volatile("griddepcontrol.launch_dependents;");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  float v = __ldcg(in + threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0.0f;
  for (int w = 0; w < 8; ++w) s += red[w];
  __stcg(out + blockIdx.x * 256 + threadIdx.x, 0.5f * __ldcg(in + threadIdx.x) + 1e-6f * s);
  __syncthreads();
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    __threadfence();
    stamp->t = now_ns();
    stamp->sm = smid();
  }
}

// A stream block's end: its SM into sms, and the last block's end time into *end (none when done
// is null: --floor-mb).
__device__ __forceinline__ void stamp_stream_end(unsigned* done, Stamp* end, unsigned* sms) {
  if (done == nullptr) return;
  __syncthreads();
  if (threadIdx.x == 0) {
    sms[blockIdx.x] = smid();
    __threadfence();
    if (atomicAdd(done, 1u) + 1 == gridDim.x) {
      end->t = now_ns();
      *done = 0;
    }
  }
}

// Loads [j, j + kN * stride) in steps of stride, all issued at once (words past n16 read as zeros);
// fold_group xor-folds them (waiting for them).
template <int kN>
__device__ __forceinline__ void load_group(uint4 (&v)[kN], const uint4* w, int64_t n16, int64_t j, int64_t stride) {
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    const int64_t k = j + i * stride;
    v[i] = k < n16 ? ld_stream16(w + k) : make_uint4(0u, 0u, 0u, 0u);
  }
}
template <int kN>
__device__ __forceinline__ uint32_t fold_group(const uint4 (&v)[kN]) {
  uint32_t fold = 0;
#pragma unroll
  for (int i = 0; i < kN; ++i) fold ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  return fold;
}
template <int kN>
__device__ __forceinline__ uint32_t fold_loads(const uint4* w, int64_t n16, int64_t j, int64_t stride) {
  uint4 v[kN];
  load_group(v, w, n16, j, stride);
  return fold_group(v);
}

// The stream: each thread reads its share with 8 loads in flight; block b stamps its SM and the
// last block to finish the end time.
__global__ void __launch_bounds__(128) heavy_kernel(const uint4* w, int64_t n16, unsigned* sink, unsigned* done,
                                                    Stamp* end, unsigned* sms) {
  uint32_t fold = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n16; j += 8 * stride)
    fold ^= fold_loads<8>(w, n16, j, stride);
  if (fold == 0x9e3779b9u) sink[0] = fold;
  stamp_stream_end(done, end, sms);
}

// A GEMV-like step of the retarget chain: triggers its dependent, issues its first loads, waits
// for the step before (griddepcontrol.wait) and reads its output, streams the rest of its bytes.
__global__ void __launch_bounds__(128) heavy_step(const uint4* w, int64_t n16, const float* in, float* out,
                                                  unsigned* sink) {
  asm volatile("griddepcontrol.launch_dependents;");
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t j0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  uint4 first[4];
  load_group(first, w, n16, j0, stride);
  asm volatile("griddepcontrol.wait;" ::: "memory");
  const float d = __ldcg(in + threadIdx.x);
  uint32_t fold = fold_group(first);
  for (int64_t j = j0 + 4 * stride; j < n16; j += 8 * stride) fold ^= fold_loads<8>(w, n16, j, stride);
  if (fold == 0x9e3779b9u) sink[0] = fold;
  if (blockIdx.x == 0) {
    __stcg(out + threadIdx.x, 0.5f * d + 1.0f);
    __stcg(out + 128 + threadIdx.x, 0.5f * d + 2.0f);
  }
}

// The stream through the bulk-copy engine (TMA, cp.async.bulk): thread 0 keeps kStages copies of
// kChunk bytes in flight into shared memory, completed on mbarriers; the block's threads fold
// each chunk from shared memory, then thread 0 refills its stage. Same arguments as heavy_kernel:
// does a neighbour's latency depend on how the stream's bytes are requested?
constexpr int kTmaStages = 4, kTmaChunk = 16384;
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra W;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__global__ void __launch_bounds__(128) heavy_tma_kernel(const uint4* w, int64_t n16, unsigned* sink, unsigned* done,
                                                        Stamp* end, unsigned* sms) {
  extern __shared__ __align__(128) uint4 ring[];
  __shared__ __align__(8) unsigned long long bars[kTmaStages];
  const int64_t chunks = n16 * 16 / kTmaChunk;
  const int64_t per = (chunks + gridDim.x - 1) / gridDim.x, c0 = blockIdx.x * per, c1 = min(c0 + per, chunks);
  const int64_t n = c1 > c0 ? c1 - c0 : 0;
  const uint32_t ring_s = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
  const uint32_t bar_s = static_cast<uint32_t>(__cvta_generic_to_shared(bars));
  auto issue = [&](int64_t i) {
    const int st = static_cast<int>(i % kTmaStages);
    const uint32_t bar = bar_s + 8 * st, dst = ring_s + st * kTmaChunk;
    const char* src = reinterpret_cast<const char*>(w) + (c0 + i) * kTmaChunk;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(kTmaChunk) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(kTmaChunk), "r"(bar)
                 : "memory");
  };
  if (threadIdx.x == 0) {
    for (int st = 0; st < kTmaStages; ++st)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar_s + 8 * st) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    for (int64_t i = 0; i < n && i < kTmaStages; ++i) issue(i);
  }
  __syncthreads();
  uint32_t fold = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int st = static_cast<int>(i % kTmaStages);
    mbar_wait(bar_s + 8 * st, static_cast<uint32_t>((i / kTmaStages) & 1));
    const uint4* c = ring + st * (kTmaChunk / 16);
#pragma unroll
    for (int k = 0; k < kTmaChunk / 16 / 128; ++k) {
      const uint4 v = c[k * 128 + threadIdx.x];
      fold ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    __syncthreads();
    if (threadIdx.x == 0 && i + kTmaStages < n) issue(i + kTmaStages);
  }
  if (fold == 0x9e3779b9u) sink[0] = fold;
  stamp_stream_end(done, end, sms);
}

bool g_tma = false;

struct Bufs {
  uint4* w;
  int64_t n16;
  float* act;  // (steps + 1) * 32 blocks * 256 floats
  Stamp* stamps;  // steps + 1 (the last: the stream's end)
  unsigned *sink, *done, *sms;
};

CUkernel kernel_handle(const void* fn) {
  cudaKernel_t k;
  CK(cudaGetKernel(&k, fn));
  return reinterpret_cast<CUkernel>(k);
}

bool launch(CUstream s, CUkernel k, unsigned grid, unsigned block, void** args, bool pdl, unsigned smem = 0) {
  CUlaunchConfig cfg{};
  cfg.sharedMemBytes = smem;
  cfg.gridDimX = grid;
  cfg.gridDimY = cfg.gridDimZ = 1;
  cfg.blockDimX = block;
  cfg.blockDimY = cfg.blockDimZ = 1;
  cfg.hStream = s;
  CUlaunchAttribute at[1];
  at[0].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
  at[0].value.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = pdl ? 1 : 0;
  return DK(cuLaunchKernelEx(&cfg, reinterpret_cast<CUfunction>(k), args, nullptr));
}

struct Result {
  bool ok = false;
  double chain_us = 0, stream_us = 0, gbs = 0;
  int chain_during = 0;  // steps that ended before the stream did
  std::set<unsigned> chain_sms, stream_sms;
};

// One case, captured as a graph: the stream (heavy_blocks > 0) on sh, the chain (steps > 0) on sc,
// forked from sh. Returns medians over reps replays.
Result run_case(const Bufs& b, CUstream sh, CUstream sc, int steps, int chain_blocks, int heavy_blocks, int reps) {
  Result r;
  static CUkernel kc = kernel_handle(reinterpret_cast<const void*>(chain_kernel));
  static CUkernel kh = kernel_handle(g_tma ? reinterpret_cast<const void*>(heavy_tma_kernel)
                                          : reinterpret_cast<const void*>(heavy_kernel));
  static const unsigned hsmem = g_tma ? kTmaStages * kTmaChunk : 0;
  CUevent fork, join;
  if (!DK(cuEventCreate(&fork, CU_EVENT_DISABLE_TIMING)) || !DK(cuEventCreate(&join, CU_EVENT_DISABLE_TIMING)))
    return r;
  if (!DK(cuStreamBeginCapture(sh, CU_STREAM_CAPTURE_MODE_RELAXED))) return r;
  bool ok = DK(cuEventRecord(fork, sh)) && DK(cuStreamWaitEvent(sc, fork, 0));
  if (ok && heavy_blocks > 0) {
    Stamp* end = b.stamps + steps;
    void* args[] = {(void*)&b.w, (void*)&b.n16, (void*)&b.sink, (void*)&b.done, (void*)&end, (void*)&b.sms};
    ok = launch(sh, kh, static_cast<unsigned>(heavy_blocks), 128, args, false, hsmem);
  }
  for (int i = 0; ok && i < steps; ++i) {
    const float* in = b.act + static_cast<size_t>(i) * 32 * 256;
    float* out = b.act + static_cast<size_t>(i + 1) * 32 * 256;
    Stamp* st = b.stamps + i;
    void* args[] = {(void*)&in, (void*)&out, (void*)&st};
    ok = launch(sc, kc, static_cast<unsigned>(chain_blocks), 256, args, i > 0);
  }
  ok = ok && DK(cuEventRecord(join, sc)) && DK(cuStreamWaitEvent(sh, join, 0));
  CUgraph g = nullptr;
  const bool ended = DK(cuStreamEndCapture(sh, &g));
  CUgraphExec ge = nullptr;
  if (!ok || !ended || !DK(cuGraphInstantiate(&ge, g, 0))) {
    if (g) cuGraphDestroy(g);
    return r;
  }
  std::vector<double> chain, stream, gbs;
  std::vector<int> during;
  std::vector<Stamp> st(steps + 1);
  std::vector<unsigned> sms(std::max(heavy_blocks, 1));
  for (int rep = 0; rep < reps + 1; ++rep) {
    CK(cudaMemset(b.stamps, 0, sizeof(Stamp) * (steps + 1)));
    CK(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    if (!DK(cuEventRecord(reinterpret_cast<CUevent>(e0), sh)) || !DK(cuGraphLaunch(ge, sh)) ||
        !DK(cuEventRecord(reinterpret_cast<CUevent>(e1), sh)) || !DK(cuStreamSynchronize(sh)))
      return r;
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    if (rep == 0) continue;  // warm-up
    CK(cudaMemcpy(st.data(), b.stamps, sizeof(Stamp) * (steps + 1), cudaMemcpyDeviceToHost));
    if (heavy_blocks > 0) {
      stream.push_back(ms * 1e3);
      CK(cudaMemcpy(sms.data(), b.sms, sizeof(unsigned) * heavy_blocks, cudaMemcpyDeviceToHost));
      for (unsigned s : sms) r.stream_sms.insert(s);
    }
    if (steps > 1) {
      const unsigned long long hend = heavy_blocks > 0 ? st[steps].t : ~0ull;
      std::vector<double> gaps;
      int d = 0;
      for (int i = 1; i < steps; ++i)
        if (st[i].t <= hend) {
          gaps.push_back((st[i].t - st[i - 1].t) * 1e-3);
          ++d;
        }
      for (int i = 0; i < steps; ++i) r.chain_sms.insert(st[i].sm);
      std::sort(gaps.begin(), gaps.end());
      if (!gaps.empty()) chain.push_back(gaps[gaps.size() / 2]);
      during.push_back(d);
    }
  }
  auto med = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  r.chain_us = med(chain);
  r.stream_us = med(stream);
  r.gbs = r.stream_us > 0 ? b.n16 * 16.0 / (r.stream_us * 1e3) : 0;
  r.chain_during = during.empty() ? 0 : *std::min_element(during.begin(), during.end());
  r.ok = true;
  cuGraphExecDestroy(ge);
  cuGraphDestroy(g);
  return r;
}

// The retarget chain: `pattern` (H: heavy_step over --step-mb MB at heavy_blocks blocks; T: a
// one-block chain_kernel) per layer, over `layers` layers of distinct buffers, launched with the
// runtime API and PDL on a plain stream and captured, as the decode step is. mode 0: as captured;
// bits 1: H nodes moved to context hb, 2: T nodes to context tb (cuGraphKernelNodeSetParams with the
// kernel's CUkernel and the green context). Returns us per layer (median of reps replays), or -1.
double retarget_chain(const Bufs& b, cudaStream_t s, const std::string& pattern, int layers, int64_t step16,
                      int heavy_blocks, int mode, CUcontext hb, CUcontext tb, int reps, std::set<unsigned>* tiny_sms) {
  const int per = static_cast<int>(pattern.size());
  CK(cudaMemset(b.stamps, 0, sizeof(Stamp) * 512));
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  int hi = 0, ti = 0;
  for (int l = 0; l < layers; ++l)
    for (int c = 0; c < per; ++c) {
      const int i = l * per + c;
      const float* in = b.act + static_cast<size_t>(i % 64) * 32 * 256;
      float* out = b.act + static_cast<size_t>((i + 1) % 64) * 32 * 256;
      cudaLaunchConfig_t cfg{};
      cudaLaunchAttribute at{};
      at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at.val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = &at;
      cfg.numAttrs = i > 0 ? 1 : 0;
      cfg.stream = s;
      if (pattern[c] == 'H') {
        const uint4* w = b.w + (hi++ * step16) % (b.n16 - step16);
        cfg.gridDim = dim3(static_cast<unsigned>(heavy_blocks));
        cfg.blockDim = dim3(128);
        CK(cudaLaunchKernelEx(&cfg, heavy_step, w, step16, in, out, b.sink));
      } else {
        cfg.gridDim = dim3(1);
        cfg.blockDim = dim3(256);
        Stamp* st = b.stamps + (ti++ % 512);
        CK(cudaLaunchKernelEx(&cfg, chain_kernel, in, out, st));
      }
    }
  cudaGraph_t g;
  CK(cudaStreamEndCapture(s, &g));
  size_t n = 0;
  CK(cudaGraphGetNodes(g, nullptr, &n));
  std::vector<cudaGraphNode_t> nodes(n);
  CK(cudaGraphGetNodes(g, nodes.data(), &n));
  static bool told = false;
  CUkernel kh = kernel_handle(reinterpret_cast<const void*>(heavy_step));
  CUkernel kt = kernel_handle(reinterpret_cast<const void*>(chain_kernel));
  cudaFunction_t fh, ft;
  CK(cudaGetFuncBySymbol(&fh, reinterpret_cast<const void*>(heavy_step)));
  CK(cudaGetFuncBySymbol(&ft, reinterpret_cast<const void*>(chain_kernel)));
  for (size_t i = 0; i < n; ++i) {
    CUDA_KERNEL_NODE_PARAMS p{};
    if (!DK(cuGraphKernelNodeGetParams(reinterpret_cast<CUgraphNode>(nodes[i]), &p))) return -1;
    if (!told) {
      std::printf("  captured node: func %p kern %p ctx %p (heavy func %p kern %p)\n", (void*)p.func, (void*)p.kern,
                  (void*)p.ctx, (void*)fh, (void*)kh);
      told = true;
    }
    const bool heavy = p.func == reinterpret_cast<CUfunction>(fh) || p.kern == kh;
    const bool tiny = p.func == reinterpret_cast<CUfunction>(ft) || p.kern == kt;
    CUcontext to = heavy && (mode & 1) ? hb : tiny && (mode & 2) ? tb : nullptr;
    if (to == nullptr) continue;
    p.func = nullptr;
    p.kern = heavy ? kh : kt;
    p.ctx = to;
    if (!DK(cuGraphKernelNodeSetParams(reinterpret_cast<CUgraphNode>(nodes[i]), &p))) return -1;
  }
  cudaGraphExec_t ge;
  if (cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) {
    std::printf("  instantiate failed: %s\n", cudaGetErrorString(cudaGetLastError()));
    return -1;
  }
  const double us = 1e3 * clawmine::probe::replay_median_ms(ge, s, reps) / layers;
  std::vector<Stamp> st(std::min(ti, 512));
  CK(cudaMemcpy(st.data(), b.stamps, sizeof(Stamp) * st.size(), cudaMemcpyDeviceToHost));
  for (const Stamp& x : st) tiny_sms->insert(x.sm);
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  return us;
}

// --floor-mb: us per read of `mb` MB by one launch, 8 launches from buffers 256 MB apart in a graph
// (back to back, no PDL: the ramp and tail included, as tools/gemv_probe's read floor), by 16-byte
// loads (heavy_kernel) or bulk copies (heavy_tma_kernel) at `per_sm` blocks per SM.
// `smem`: the loads' dynamic shared memory per block (--floor-smem-kb; unused by heavy_kernel): a
// carveout preference may not apply to a kernel that asks for none.
double floor_us(const Bufs& b, cudaStream_t s, bool tma, int per_sm, double mb, int sms, int reps, size_t smem = 0) {
  const int64_t n16 = static_cast<int64_t>(mb * (1 << 20) / kTmaChunk) * (kTmaChunk / 16);
  const int64_t gap16 = int64_t{256} << 16;
  if (8 * gap16 > b.n16 || n16 > gap16) return -1;
  Stamp* end = b.stamps;
  return 1e3 * clawmine::probe::time_graph(s, 8, reps, [&](int i) {
    const uint4* w = b.w + i * gap16;
    if (tma)
      heavy_tma_kernel<<<per_sm * sms, 128, kTmaStages * kTmaChunk, s>>>(w, n16, b.sink, nullptr, end, b.sms);
    else
      heavy_kernel<<<per_sm * sms, 128, smem, s>>>(w, n16, b.sink, nullptr, end, b.sms);
    CK(cudaGetLastError());
  });
}

std::vector<int> ints(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return v;
}

void print(const char* what, const Result& r) {
  if (!r.ok) {
    std::printf("| %s | failed | | | |\n", what);
    return;
  }
  std::printf("| %s | %s | %s | %d | %zu / %zu |\n", what,
              r.chain_us > 0 ? std::to_string(r.chain_us).substr(0, 5).c_str() : "-",
              r.stream_us > 0 ? (std::to_string(r.stream_us).substr(0, 6) + " (" + std::to_string(static_cast<int>(r.gbs)) + " GB/s)").c_str() : "-",
              r.chain_during, r.chain_sms.size(), r.stream_sms.size());
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 48, heavy_per_sm = 4, reps = 5;
  int64_t heavy_mb = 2048;
  std::vector<int> chain_blocks = {1, 8, 32}, light = {8, 16};
  std::string pattern = "HTTHTTHHTT";
  int layers = 8, step_mb = 32, retarget_only = 0;
  std::vector<double> floor_mb;
  std::vector<int> carveouts = {-1};
  int floor_smem_kb = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--steps") steps = std::atoi(argv[i + 1]);
    else if (k == "--chain-blocks") chain_blocks = ints(argv[i + 1]);
    else if (k == "--heavy-mb") heavy_mb = std::atoll(argv[i + 1]);
    else if (k == "--heavy-per-sm") heavy_per_sm = std::atoi(argv[i + 1]);
    else if (k == "--light-sms") light = ints(argv[i + 1]);
    else if (k == "--reps") reps = std::atoi(argv[i + 1]);
    else if (k == "--pattern") pattern = argv[i + 1];
    else if (k == "--layers") layers = std::atoi(argv[i + 1]);
    else if (k == "--step-mb") step_mb = std::atoi(argv[i + 1]);
    else if (k == "--retarget-only") retarget_only = std::atoi(argv[i + 1]);
    else if (k == "--heavy-kind") {
      const std::string v = argv[i + 1];
      if (v != "ld" && v != "tma") {
        std::fprintf(stderr, "green_probe: --heavy-kind %s: expected ld or tma\n", argv[i + 1]);
        return 2;
      }
      g_tma = v == "tma";
    }
    else if (k == "--carveout") carveouts = ints(argv[i + 1]);
    else if (k == "--floor-smem-kb") floor_smem_kb = std::atoi(argv[i + 1]);
    else if (k == "--floor-mb")
      for (const char* q = argv[i + 1]; *q;) {
        floor_mb.push_back(std::atof(q));
        while (*q && *q != ',') ++q;
        if (*q == ',') ++q;
      }
    else {
      std::fprintf(stderr, "green_probe: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (steps < 2 || steps > 512 || heavy_mb < 1 || heavy_per_sm < 1 || reps < 1 ||
      std::any_of(chain_blocks.begin(), chain_blocks.end(), [](int c) { return c < 1 || c > 32; }) ||
      layers < 1 || step_mb < 1 || pattern.empty() || pattern.find_first_not_of("HT") != std::string::npos ||
      std::any_of(floor_mb.begin(), floor_mb.end(), [](double m) { return !(m > 0.0 && m <= 256.0); }) ||
      carveouts.empty() || std::any_of(carveouts.begin(), carveouts.end(), [](int c) { return c < -1 || c > 100; }) ||
      floor_smem_kb < 0 || floor_smem_kb > 48) {
    std::fprintf(stderr, "green_probe: bad flag value (--steps 2..512, --chain-blocks 1..32, --pattern of H and T, "
                         "--floor-mb in (0, 256], --carveout in -1..100, --floor-smem-kb 0..48, the rest positive)\n");
    return 2;
  }
  CK(cudaFree(nullptr));
  if (g_tma) {
    CUdevice d0;
    cuDeviceGet(&d0, 0);
    DK(cuKernelSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kTmaStages * kTmaChunk,
                            kernel_handle(reinterpret_cast<const void*>(heavy_tma_kernel)), d0));
  }
  cudaDeviceProp p{};
  CK(cudaGetDeviceProperties(&p, 0));
  int drv = 0;
  CK(cudaDriverGetVersion(&drv));
  std::printf("green_probe: %s, %d SMs, driver %d; %d chain steps of 256 threads, stream %lld MB at %d blocks "
              "of 128 per SM (%s)\n",
              p.name, p.multiProcessorCount, drv, steps, static_cast<long long>(heavy_mb), heavy_per_sm,
              g_tma ? "bulk copies: 4 x 16 KB in flight per block" : "16-byte loads: 8 in flight per thread");
  Bufs b{};
  b.n16 = heavy_mb * (1 << 20) / 16;
  CK(cudaMalloc(&b.w, b.n16 * 16));
  CK(cudaMemset(b.w, 0x3c, b.n16 * 16));
  CK(cudaMalloc(&b.act, sizeof(float) * (steps + 1) * 32 * 256));
  CK(cudaMemset(b.act, 0, sizeof(float) * (steps + 1) * 32 * 256));
  CK(cudaMalloc(&b.stamps, sizeof(Stamp) * std::max(steps + 1, 512)));
  CK(cudaMalloc(&b.sink, 16));
  CK(cudaMalloc(&b.done, 16));
  CK(cudaMemset(b.done, 0, 16));
  CK(cudaMalloc(&b.sms, sizeof(unsigned) * 65536));
  CUstream s0, s1;
  CK(cudaStreamCreateWithFlags(reinterpret_cast<cudaStream_t*>(&s0), cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(reinterpret_cast<cudaStream_t*>(&s1), cudaStreamNonBlocking));
  const int all = p.multiProcessorCount;
  if (!floor_mb.empty()) {
    CK(cudaFuncSetAttribute(heavy_tma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kTmaStages * kTmaChunk));
    {
      const size_t n = size_t{1} << 30;
      cudaEvent_t e0, e1;
      CK(cudaEventCreate(&e0));
      CK(cudaEventCreate(&e1));
      std::vector<float> ms;
      for (int r = 0; r < 6; ++r) {
        CK(cudaEventRecord(e0, reinterpret_cast<cudaStream_t>(s0)));
        CK(cudaMemcpyAsync(b.w + (n / 16), b.w, n, cudaMemcpyDeviceToDevice, reinterpret_cast<cudaStream_t>(s0)));
        CK(cudaEventRecord(e1, reinterpret_cast<cudaStream_t>(s0)));
        CK(cudaEventSynchronize(e1));
        float m = 0;
        CK(cudaEventElapsedTime(&m, e0, e1));
        ms.push_back(m);
      }
      std::sort(ms.begin(), ms.end());
      std::printf("copy 1 GiB D2D: %.0f GB/s (read + write)\n", 2.0 * n / (ms[ms.size() / 2] * 1e6));
    }
    std::printf("\n| MB | loads' carveout | loads 2/SM | 3/SM | 4/SM | 8/SM | bulk 1/SM | 2/SM | 3/SM |  (us per read; GB/s)\n"
                "|---|---|---|---|---|---|---|---|---|\n");
    for (double mb : floor_mb)
      for (size_t c = 0; c < carveouts.size(); ++c) {
        CK(cudaFuncSetAttribute(heavy_kernel, cudaFuncAttributePreferredSharedMemoryCarveout, carveouts[c]));
        std::printf("| %.1f | %d |", mb, carveouts[c]);
        for (int k : {2, 3, 4, 8}) {
          const double us = floor_us(b, reinterpret_cast<cudaStream_t>(s0), false, k, mb, all, reps,
                                     static_cast<size_t>(floor_smem_kb) << 10);
          std::printf(" %.2f (%.0f) |", us, mb * (1 << 20) / (us * 1e3));
        }
        for (int k : {1, 2, 3}) {
          if (c > 0) {  // the bulk copies once per size: the carveout is the loads'
            std::printf(" |");
            continue;
          }
          const double us = floor_us(b, reinterpret_cast<cudaStream_t>(s0), true, k, mb, all, reps);
          std::printf(" %.2f (%.0f) |", us, mb * (1 << 20) / (us * 1e3));
        }
        std::printf("\n");
      }
    return 0;
  }

  std::printf("\n| case | chain us/step | stream us | chain steps during the stream (min) | SMs used: chain / stream |\n|---|---|---|---|---|\n");
  if (!retarget_only) {
  for (int cb : chain_blocks) {
    const std::string w = "chain alone, " + std::to_string(cb) + " blocks";
    print(w.c_str(), run_case(b, s0, s1, steps, cb, 0, reps));
  }
  print("stream alone, all SMs", run_case(b, s0, s1, 0, 1, heavy_per_sm * all, reps));
  for (int cb : chain_blocks) {
    const std::string w = "both, all SMs, chain " + std::to_string(cb) + " blocks";
    print(w.c_str(), run_case(b, s0, s1, steps, cb, heavy_per_sm * all, reps));
  }
  }

  CUdevice dev;
  if (!DK(cuCtxGetDevice(&dev))) return 0;
  CUdevResource sm_all{};
  if (!DK(cuDeviceGetDevResource(dev, &sm_all, CU_DEV_RESOURCE_TYPE_SM))) return 0;
  for (int n : light) {
    if (n <= 0) continue;  // --light-sms 0: no split
    CUdevResource part{}, rest{};
    unsigned groups = 1;
    if (!DK(cuDevSmResourceSplitByCount(&part, &groups, &sm_all, &rest, 0, static_cast<unsigned>(n)))) continue;
    CUdevResourceDesc da, db;
    CUgreenCtx ga, gb;
    CUstream sa, sb;
    if (!DK(cuDevResourceGenerateDesc(&da, &part, 1)) || !DK(cuDevResourceGenerateDesc(&db, &rest, 1)) ||
        !DK(cuGreenCtxCreate(&ga, da, dev, CU_GREEN_CTX_DEFAULT_STREAM)) ||
        !DK(cuGreenCtxCreate(&gb, db, dev, CU_GREEN_CTX_DEFAULT_STREAM)) ||
        !DK(cuGreenCtxStreamCreate(&sa, ga, CU_STREAM_NON_BLOCKING, 0)) ||
        !DK(cuGreenCtxStreamCreate(&sb, gb, CU_STREAM_NON_BLOCKING, 0)))
      continue;
    const int na = static_cast<int>(part.sm.smCount), nb = static_cast<int>(rest.sm.smCount);
    CUcontext ca, cb;
    if (!DK(cuCtxFromGreenCtx(&ca, ga)) || !DK(cuCtxFromGreenCtx(&cb, gb))) continue;
    const int64_t step16 = static_cast<int64_t>(step_mb) << 16;
    std::printf("retarget chain '%s' x %d layers, H = %d MB at %d blocks: us per layer\n", pattern.c_str(), layers,
                step_mb, heavy_per_sm * nb);
    const char* names[] = {"as captured", "H on the stream part", "T on the chain part", "both"};
    for (int mode = 0; mode < 4; ++mode) {
      std::set<unsigned> tsm;
      const double us = retarget_chain(b, reinterpret_cast<cudaStream_t>(s0), pattern, layers, step16,
                                       heavy_per_sm * nb, mode, cb, ca, reps, &tsm);
      std::printf("  %-22s %8.2f   (T on %zu SMs)\n", names[mode], us, tsm.size());
    }
    if (retarget_only) continue;
    std::printf("| split: chain part %d SMs, stream part %d SMs | | | | |\n", na, nb);
    const std::string s1n = "stream alone on its " + std::to_string(nb) + " SMs";
    print(s1n.c_str(), run_case(b, sb, sa, 0, 1, heavy_per_sm * nb, reps));
    const std::string s2n = "stream alone, plain, " + std::to_string(heavy_per_sm * nb) + " blocks";
    print(s2n.c_str(), run_case(b, s0, s1, 0, 1, heavy_per_sm * nb, reps));
    for (int cb : chain_blocks) {
      const std::string w = "split, chain " + std::to_string(cb) + " blocks";
      print(w.c_str(), run_case(b, sb, sa, steps, cb, heavy_per_sm * nb, reps));
    }
    const std::string c1 = "chain alone on its part, " + std::to_string(chain_blocks.back()) + " blocks";
    print(c1.c_str(), run_case(b, sb, sa, steps, chain_blocks.back(), 0, reps));
  }
  return 0;
}
