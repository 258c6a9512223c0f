// The probes' timer (tools/gemv_probe, tools/stage_probe, tools/load_pattern): launches captured as one CUDA graph and
// replayed, so that per-launch times exclude the host and include what a decode step's graph pays.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace clawmine::probe {

inline void check_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "%s:%d: %s: %s\n", file, line, expr, cudaGetErrorString(e));
  std::exit(2);
}
#define CLAWMINE_PROBE_CK(expr) ::clawmine::probe::check_cuda((expr), #expr, __FILE__, __LINE__)

// Median milliseconds of one replay of `exec` on `st`, over `reps` replays after three warm-up
// replays.
inline double replay_median_ms(cudaGraphExec_t exec, cudaStream_t st, int reps) {
  cudaEvent_t e0, e1;
  CLAWMINE_PROBE_CK(cudaEventCreate(&e0));
  CLAWMINE_PROBE_CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) CLAWMINE_PROBE_CK(cudaGraphLaunch(exec, st));
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    CLAWMINE_PROBE_CK(cudaEventRecord(e0, st));
    CLAWMINE_PROBE_CK(cudaGraphLaunch(exec, st));
    CLAWMINE_PROBE_CK(cudaEventRecord(e1, st));
    CLAWMINE_PROBE_CK(cudaEventSynchronize(e1));
    float m = 0;
    CLAWMINE_PROBE_CK(cudaEventElapsedTime(&m, e0, e1));
    ms.push_back(m);
  }
  CLAWMINE_PROBE_CK(cudaEventDestroy(e0));
  CLAWMINE_PROBE_CK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Median milliseconds per launch of `launch(i)` (i = 0..n-1) captured as one graph, over `reps`
// replays after three warm-up replays.
template <typename Fn>
double time_graph(cudaStream_t st, int n, int reps, Fn&& launch) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CLAWMINE_PROBE_CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < n; ++i) launch(i);
  CLAWMINE_PROBE_CK(cudaStreamEndCapture(st, &graph));
  CLAWMINE_PROBE_CK(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = replay_median_ms(exec, st, reps) / n;
  CLAWMINE_PROBE_CK(cudaGraphExecDestroy(exec));
  CLAWMINE_PROBE_CK(cudaGraphDestroy(graph));
  return ms;
}

}  // namespace clawmine::probe
