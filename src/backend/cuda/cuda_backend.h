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
  // Each recorded step's redundant edges counted (GraphStats::redundant_edges: an edge whose
  // successor is reachable through another path) and the first step's nodes, edges, redundant
  // edges and joins logged by kernel (graph.cu). CLAWMINE_GRAPH_REPORT=1 turns it on too.
  bool graph_report = false;
  // branch_early (ops/backend.h): a recorded side branch's first kernel has its fork point as its
  // only predecessor (branches.cu); off, it is a plain branch(). The environment variable
  // CLAWMINE_EARLY_FORKS=0 turns it off.
  bool early_forks = true;
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
  int64_t redundant_edges = 0;  // in the recorded steps, counted with CudaOptions::graph_report
  int64_t early_forks = 0;      // forks recorded from their fork point alone (branch_early)
};
GraphStats graph_stats(const ops::Backend& backend);

}  // namespace clawmine::backend::cuda
