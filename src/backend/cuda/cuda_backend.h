// The CUDA backend for Hopper (sm_90a): every op of ops::Backend on the GPU, weights kept in
// their checkpoint format (dequantized in registers inside the kernels), activations F32 or
// BF16, all memory from one arena taken at start. Plain C++ header: callers need no CUDA.
#pragma once

#include <cstddef>
#include <memory>

#include "ops/backend.h"

namespace clawmine::backend::cuda {

struct CudaOptions {
  int device = 0;
  double memory_fraction = 0.90;   // of the device's total memory, taken once (--gpu-memory-fraction)
  DType act_dtype = DType::kBF16;  // activations between ops: kBF16 (production) or kF32 (--act-dtype f32)
  // CUDA graphs for decode steps (--cuda-graphs on|off): a steady decode step is recorded once
  // and replayed unchanged (ops read per-step values on the device); results are bit-identical
  // to eager launches (tests), and faster (docs/PERFORMANCE.md).
  bool graphs = true;
  // A step recorded after its sequence's previous graph was retired (an entry store grew, a batch
  // changed members) updates that executable graph in place (cudaGraphExecUpdate) where the two
  // have the same topology, instead of instantiating a new one. Off until measured on a GPU; the
  // environment variable CLAWMINE_GRAPH_UPDATE=1 turns it on too.
  bool graph_update = false;
  // Redundant edges removed from each recorded step before it is instantiated (graph.cu: a node
  // with more than one predecessor is not launched early under PDL, and capture leaves a side
  // branch's first kernel after each fork with a redundant second one). The same ordering; off
  // until measured on a GPU; the environment variable CLAWMINE_GRAPH_REDUCE=1 turns it on too.
  bool graph_reduce = false;
  // join_branches_on_device (the attention's join after its key branches, the MoE's after the
  // shared expert) and branch_wait_on_device (the window copy's wait for kv) carried on the
  // device instead of as graph edges (branches.cu): 0 off; 1 a one-block kernel after each side
  // branch releases a flag once the branch has completed and one on the waiting stream waits for
  // them before the next kernel launches; 2 the same with the next kernel launched at once
  // (resident early, as after a kernel of its own stream). Off until measured on a GPU;
  // CLAWMINE_DEVICE_JOINS=1/2 sets it too.
  int device_joins = 0;
  size_t scratch_bytes = 0;        // scratch region inside the arena; 0 = a default share
};

// Throws clawmine::Error when no CUDA device is usable (naming the reason) or the arena cannot be taken.
std::unique_ptr<ops::Backend> make_cuda_backend(const CudaOptions& options = {});

// Memory in use by the arena, for `clawmine info --backend cuda` (0s for a non-CUDA backend).
struct ArenaUsage {
  size_t arena_bytes = 0;    // taken at start
  size_t allocated = 0;      // long-lived (weights, caches)
  size_t scratch_peak = 0;   // highest scratch use so far
  size_t scratch_bytes = 0;  // scratch region size
};
ArenaUsage arena_usage(const ops::Backend& backend);

// Decode-step graphs so far (0s for a non-CUDA backend).
struct GraphStats {
  int64_t instantiated = 0;  // new executable graphs
  int64_t updated = 0;       // recorded into a retired graph (CudaOptions::graph_update)
  int64_t edges_removed = 0;  // redundant edges removed (CudaOptions::graph_reduce)
  int64_t device_joins = 0;   // joins carried on the device (CudaOptions::device_joins)
};
GraphStats graph_stats(const ops::Backend& backend);

}  // namespace clawmine::backend::cuda
