// bench_join_probe: does a kernel after a branch join launch early under programmatic dependent
// launch, as a kernel after one of the same stream does? (docs/PERFORMANCE.md, thirty-fifth
// session: a decode step's 1499 captured edges are all programmatic, yet the hc site after the
// MoE, whose inputs come from the main stream's combine and the shared expert's branch, starts
// only once the combine has ended, while the site after wo_b starts ~2.3 us early.)
//
// Kernels of one block that spin for a given time. Each records %globaltimer at entry (before
// griddepcontrol.wait), at the wait's return and at exit; it triggers its dependents
// (griddepcontrol.launch_dependents) at entry, as the decode GEMVs do, or after its wait with
// --trigger-after-wait 1, as every other kernel does. Every launch carries the PDL attribute and
// the scenarios are captured into graphs and replayed:
//   chain  A (main stream) -> C (main)
//   join   B (side, forked before A) and A (main) -> C (main, after an event wait on B), B shorter
//   late   the same with B longer than A: is C early relative to its side input?
//   single B (side) -> C (main), no A: C's only kernel input is on another stream
//   mixed  join with the edge B -> C made a full one after capture (A -> C stays programmatic)
//   mixedl late with the same change
//   flag   join without the edge B -> C: C (after A alone) waits on a device flag that B's block
//          releases at its exit (a device-side edge; B is launched before C, so it cannot be kept
//          from the SMs by C's waiting block)
//   flagl  the same with B longer than A
//   wflag  the device-side edge with the existing kernels unchanged: R (one block, after B on the
//          side stream) waits for B and releases the flag; W (one block, after A on the main stream)
//          waits for A and the flag and only then triggers C, so that nothing launched after it can
//          hold the SMs that B and R need (deadlock-free); C after W. (Slots: 3 = W, 4 = R.)
//   wflagl the same with B longer than A
//   wflage wflag with W triggering C at its entry, so that C is resident early as after a kernel of
//          its stream (deadlock-free only while C's waiting blocks leave room for B's and R's)
// For each: the captured edges by type, then the medians over --reps replays of C's entry and
// wait return relative to the end of its last input (negative: launched early), in us.
// H200, thirty-fifth session (docs/PERFORMANCE.md): chain and single enter early and return from
// the wait +0.26 us after their input's end; join, late, mixed and mixedl enter and return at
// +1.79 us, whichever input ends last and whatever the edges' types: a node with two kernel
// predecessors is launched only once both have completed. flag, flagl, wflag, wflagl and wflage: not yet run.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a tools/join_probe/join_probe.cu -o /tmp/jp && /tmp/jp
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "join_probe: %s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

namespace {

__device__ __forceinline__ uint64_t now_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// stamps[3 * slot + 0..2]: entry, wait return, exit. flag_role 1: at exit, release *flag (a
// device-side edge's producer); 2: after griddepcontrol.wait, wait until *flag is set (acquire)
// and clear it for the next replay (its consumer; the "wait return" stamp is after both waits).
__global__ void spin_kernel(long long cycles, int trigger_after_wait, unsigned long long* stamps, int slot,
                            unsigned* flag, int flag_role) {
  const uint64_t entry = now_ns();
  if (!trigger_after_wait) asm volatile("griddepcontrol.launch_dependents;");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  if (flag_role == 2) {
    if (threadIdx.x == 0) {
      unsigned v = 0;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
      } while (v == 0);
      *flag = 0;
    }
    __syncthreads();
  }
  const uint64_t waited = now_ns();
  if (trigger_after_wait) asm volatile("griddepcontrol.launch_dependents;");
  const long long c0 = clock64();
  while (clock64() - c0 < cycles) {
  }
  if (threadIdx.x == 0) {
    stamps[3 * slot + 0] = entry;
    stamps[3 * slot + 1] = waited;
    stamps[3 * slot + 2] = now_ns();
  }
  if (flag_role == 1) {
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flag), "r"(1u) : "memory");
    }
  }
}

struct Opts {
  int reps = 50;
  double a_us = 20, b_us = 5, late_b_us = 40, c_us = 2;
  int trigger_after_wait = 0;
  double ghz = 1.98;
};

// trigger: -1 as --trigger-after-wait says, 0 before the wait, 1 after it (and after a flag's wait).
void launch(const Opts& o, cudaStream_t s, double us, unsigned long long* stamps, int slot, unsigned* flag = nullptr,
            int flag_role = 0, int trigger = -1) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(1);
  cfg.blockDim = dim3(32);
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const long long cycles = static_cast<long long>(us * 1000.0 * o.ghz);
  CK(cudaLaunchKernelEx(&cfg, spin_kernel, cycles, trigger < 0 ? o.trigger_after_wait : trigger, stamps, slot, flag,
                        flag_role));
}

cudaError_t get_edges(cudaGraph_t g, cudaGraphNode_t* from, cudaGraphNode_t* to, cudaGraphEdgeData* data, size_t* n) {
#if CUDART_VERSION >= 13000
  return cudaGraphGetEdges(g, from, to, data, n);
#else
  return cudaGraphGetEdges_v2(g, from, to, data, n);
#endif
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Slots: 0 = A, 1 = B, 2 = C, 3 = W, 4 = R.
void scenario(const Opts& o, const std::string& name, cudaStream_t s1, cudaStream_t s2, unsigned long long* stamps,
              unsigned* flag) {
  cudaEvent_t fork, join;
  CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  const bool has_b = name != "chain";
  const bool mixed = name.rfind("mixed", 0) == 0;
  const bool by_flag = name.rfind("flag", 0) == 0;
  const bool by_kernels = name.rfind("wflag", 0) == 0;  // R after B releases, W before C waits
  const bool w_early = name == "wflage";                 // W triggers C at its entry
  const double b_us =
      name == "late" || name == "mixedl" || name == "flagl" || name == "wflagl" ? o.late_b_us : o.b_us;
  CK(cudaStreamBeginCapture(s1, cudaStreamCaptureModeThreadLocal));
  if (has_b) {
    CK(cudaEventRecord(fork, s1));
    CK(cudaStreamWaitEvent(s2, fork, 0));
    launch(o, s2, b_us, stamps, 1, flag, by_flag ? 1 : 0);
    if (by_kernels) launch(o, s2, 0, stamps, 4, flag, 1, 1);  // R: waits for B, then releases
    CK(cudaEventRecord(join, s2));
  }
  if (name != "single") launch(o, s1, o.a_us, stamps, 0);
  if (has_b && !by_flag && !by_kernels) CK(cudaStreamWaitEvent(s1, join, 0));
  if (by_kernels) launch(o, s1, 0, stamps, 3, flag, 2, w_early ? 0 : 1);  // W: A and the flag, then C
  launch(o, s1, o.c_us, stamps, 2, flag, by_flag ? 2 : 0);
  if (by_flag || by_kernels) CK(cudaStreamWaitEvent(s1, join, 0));  // the side rejoins after C: no edge into C
  cudaGraph_t g;
  CK(cudaStreamEndCapture(s1, &g));
  size_t n = 0;
  CK(get_edges(g, nullptr, nullptr, nullptr, &n));
  std::vector<cudaGraphNode_t> from(n), to(n);
  std::vector<cudaGraphEdgeData> data(n);
  CK(get_edges(g, from.data(), to.data(), data.data(), &n));
  int prog = 0;
  for (size_t i = 0; i < n; ++i) {
    // mixed: B's edge into C (B is the kernel whose slot argument is 1) becomes a full one.
    cudaGraphNodeType t{};
    CK(cudaGraphNodeGetType(from[i], &t));
    if (mixed && t == cudaGraphNodeTypeKernel) {
      cudaKernelNodeParams kp{};
      CK(cudaGraphKernelNodeGetParams(from[i], &kp));
      if (*static_cast<int*>(kp.kernelParams[3]) == 1) {
        cudaGraphEdgeData full{};
#if CUDART_VERSION >= 13000
        CK(cudaGraphRemoveDependencies(g, &from[i], &to[i], &data[i], 1));
        CK(cudaGraphAddDependencies(g, &from[i], &to[i], &full, 1));
#else
        CK(cudaGraphRemoveDependencies_v2(g, &from[i], &to[i], &data[i], 1));
        CK(cudaGraphAddDependencies_v2(g, &from[i], &to[i], &full, 1));
#endif
        data[i] = full;
      }
    }
    prog += data[i].type == cudaGraphDependencyTypeProgrammatic;
  }
  cudaGraphExec_t exec;
  CK(cudaGraphInstantiate(&exec, g, 0));
  std::vector<double> entry, waited, c_end;
  std::vector<unsigned long long> h(15);
  for (int r = 0; r < o.reps + 3; ++r) {
    CK(cudaMemsetAsync(stamps, 0, 15 * sizeof(unsigned long long), s1));
    CK(cudaGraphLaunch(exec, s1));
    CK(cudaStreamSynchronize(s1));
    CK(cudaMemcpy(h.data(), stamps, 15 * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
    if (r < 3) continue;  // warm-up
    const double last_in = static_cast<double>(std::max(h[2], has_b ? h[5] : 0ull));
    entry.push_back((static_cast<double>(h[6]) - last_in) / 1000.0);
    waited.push_back((static_cast<double>(h[7]) - last_in) / 1000.0);
    c_end.push_back((static_cast<double>(h[8]) - static_cast<double>(h[6])) / 1000.0);
  }
  std::printf("%-7s edges %zu (%d programmatic)  C entry %+7.2f us, wait return %+7.2f us after its last input's end"
              "  (C lasts %.2f)\n",
              name.c_str(), n, prog, median(entry), median(waited), median(c_end));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(g));
  CK(cudaEventDestroy(fork));
  CK(cudaEventDestroy(join));
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--reps") o.reps = std::atoi(v);
    else if (k == "--a-us") o.a_us = std::atof(v);
    else if (k == "--b-us") o.b_us = std::atof(v);
    else if (k == "--late-b-us") o.late_b_us = std::atof(v);
    else if (k == "--trigger-after-wait") o.trigger_after_wait = std::atoi(v);
    else if (k == "--ghz") o.ghz = std::atof(v);
    else {
      std::fprintf(stderr, "join_probe: unknown flag %s (flags: --reps --a-us --b-us --late-b-us "
                           "--trigger-after-wait --ghz)\n", k.c_str());
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "join_probe: flag %s has no value\n", argv[argc - 1]);
    return 2;
  }
  cudaStream_t s1, s2;
  CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  unsigned long long* stamps;
  CK(cudaMalloc(&stamps, 15 * sizeof(unsigned long long)));
  std::printf("join_probe: A %.1f us, B %.1f (late %.1f), C %.1f; trigger %s the wait; %d replays each\n", o.a_us,
              o.b_us, o.late_b_us, o.c_us, o.trigger_after_wait ? "after" : "before", o.reps);
  unsigned* flag;
  CK(cudaMalloc(&flag, sizeof(unsigned)));
  CK(cudaMemset(flag, 0, sizeof(unsigned)));
  for (const char* s : {"chain", "join", "late", "single", "mixed", "mixedl", "flag", "flagl", "wflag", "wflagl",
                        "wflage"})
    scenario(o, s, s1, s2, stamps, flag);
  CK(cudaFree(flag));
  CK(cudaFree(stamps));
  return 0;
}
