// A timeline of the kernels the GPU runs, from CUPTI's activity API (concurrent-kernel records: the
// GPU's own start and end stamps of every kernel, CUDA graph nodes included, without serializing
// them). Where ncu times each kernel alone with cold caches, this is the step as it runs: overlap
// between streams, the gaps between dependent kernels, programmatic launches starting early.
// `clawmine bench --kernel-trace FILE` writes it for decode steps; tools/kernel_timeline.py reads it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace clawmine::backend::cuda {

struct KernelRecord {
  std::string name;  // as CUPTI reports it (mangled)
  uint32_t stream = 0;
  uint64_t start_ns = 0, end_ns = 0;  // GPU timestamps (kernel_trace_now's clock)
  uint32_t graph_id = 0;              // 0 outside a graph
  uint64_t graph_node = 0;
  int32_t grid[3] = {0, 0, 0}, block[3] = {0, 0, 0};
  uint32_t regs = 0;  // registers per thread
  uint32_t smem = 0;  // shared memory per block, static + dynamic (bytes)
};

// One recording at a time per process. start() enables the records (an Error naming the CUPTI call
// and its message where CUPTI is missing or refuses, e.g. another profiler holds it); stop() flushes
// them and returns every kernel that ran in between, in start order.
class KernelTrace {
 public:
  static bool available();  // built with CUPTI's header and its library found (opened at run time)
  void start();
  std::vector<KernelRecord> stop();
  ~KernelTrace();

 private:
  bool on_ = false;
};

// The clock of KernelRecord's stamps, read on the host (to mark where steps begin).
uint64_t kernel_trace_now();

}  // namespace clawmine::backend::cuda
