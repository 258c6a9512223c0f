// CUDA graphs for decode steps. The caller names a step by a key derived from everything that
// shapes its ops (ops/backend.h); per-step values live in device tensors uploaded before the
// step. A key seen before replays its executable graph as it is: one cudaGraphLaunch replaces the
// step's hundreds of kernel launches and the host issues nothing else. A new key is recorded by
// stream capture while its ops are issued, instantiated, and launched. Graphs are kept in a small
// LRU (one per live sequence and cache layout; a sequence's layout changes only when its
// compressed-entry stores grow). The first steps run eagerly so one-time uploads (per-op tables)
// never happen inside a capture. With CudaOptions::graph_update, a step captured after its
// sequence's previous graph was retired is written into that executable graph by
// cudaGraphExecUpdate when the topology matches (same kernels and edges, other arguments and
// grids), which costs less than an instantiation; otherwise it is instantiated as usual.
#include <algorithm>
#include <utility>

#include "backend/cuda/backend_impl.cuh"
#include "core/log.h"

namespace clawmine::backend::cuda {

namespace {
constexpr int64_t kEagerSteps = 2;
constexpr size_t kMaxStepGraphs = 64;  // a server's concurrent sequences each keep one

// The linear policy shapes the recorded kernels too (activation transforms): part of the key.
uint64_t with_policy(uint64_t key, const ops::LinearPolicy& p) {
  const uint64_t v = static_cast<uint64_t>(p.nvfp4) | static_cast<uint64_t>(p.fp8) << 2 |
                     static_cast<uint64_t>(p.act_scale) << 4 | static_cast<uint64_t>(p.saturate) << 6;
  return key ^ ((v + 1) * 0x9E3779B97F4A7C15ull);
}
}  // namespace

void CudaBackend::destroy_graphs() {
  for (StepGraph& g : graphs_)
    if (g.exec) cudaGraphExecDestroy(g.exec);
  graphs_.clear();
}

// A step that threw between begin_step_graph and end_step_graph leaves the stream capturing;
// its ops never ran (the forward failed and its sequence is abandoned). End the capture and
// drop it so the backend serves the next request.
void CudaBackend::discard_capture() {
  if (!capturing_) return;
  retired_key_ = 0;
  close_branches();  // side streams rejoin the capture before it ends
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream_, &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
  log_warn("cuda", "a captured decode step was abandoned (an op failed inside it); its graph is dropped");
}

void CudaBackend::refuse_inside_capture(const char* what) {
  if (!capturing_) return;
  discard_capture();  // the backend stays usable for the next request
  throw Error(str_cat("cuda ", what, " inside a captured decode step (host transfers belong outside "
                      "begin_step_graph/end_step_graph); the step is abandoned"));
}

void CudaBackend::retire_step_graph(uint64_t key) { retired_key_ = with_policy(key, policy_); }

bool CudaBackend::replay_step_graph(uint64_t key) {
  discard_capture();
  join_branches();
  key = with_policy(key, policy_);
  if (!options_.graphs) return false;
  auto it = std::find_if(graphs_.begin(), graphs_.end(), [&](const StepGraph& g) { return g.key == key; });
  if (it == graphs_.end()) return false;
  it->last_use = ++graph_clock_;
  CLAWMINE_CUDA_CHECK(cudaGraphLaunch(it->exec, stream_));
  return true;
}

void CudaBackend::begin_step_graph(uint64_t key) {
  discard_capture();
  join_branches();
  if (!options_.graphs || eager_steps_ < kEagerSteps) {
    ++eager_steps_;
    retired_key_ = 0;
    return;
  }
  CLAWMINE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  capture_key_ = with_policy(key, policy_);
}

void CudaBackend::end_step_graph() {
  join_branches();
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  CLAWMINE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  const uint64_t retired = std::exchange(retired_key_, 0);
  // The retired graph, updated in place to this capture.
  auto old = options_.graph_update && retired != 0 && retired != capture_key_
                 ? std::find_if(graphs_.begin(), graphs_.end(), [&](const StepGraph& g) { return g.key == retired; })
                 : graphs_.end();
  if (old != graphs_.end()) {
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(old->exec, graph, &info) == cudaSuccess) {
      cudaGraphDestroy(graph);
      const cudaGraphExec_t exec = old->exec;
      old->key = capture_key_;
      old->last_use = ++graph_clock_;
      // A graph kept under this key before (recorded, then left by its owner) is dropped.
      auto dup = std::find_if(graphs_.begin(), graphs_.end(),
                              [&](const StepGraph& g) { return g.key == capture_key_ && g.exec != exec; });
      if (dup != graphs_.end()) {
        cudaGraphExecDestroy(dup->exec);
        graphs_.erase(dup);
      }
      ++graph_stats_.updated;
      CLAWMINE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
      return;
    }
    cudaGetLastError();  // a topology mismatch is not an error: instantiate below
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) throw_cuda_error(err, "cudaGraphInstantiate", __FILE__, __LINE__);
  ++graph_stats_.instantiated;
  // A key recorded again (its earlier graph was evicted or the caller re-recorded it) replaces it.
  auto same = std::find_if(graphs_.begin(), graphs_.end(), [&](const StepGraph& g) { return g.key == capture_key_; });
  if (same == graphs_.end() && graphs_.size() >= kMaxStepGraphs) {
    same = std::min_element(graphs_.begin(), graphs_.end(),
                            [](const StepGraph& a, const StepGraph& b) { return a.last_use < b.last_use; });
  }
  if (same != graphs_.end()) {
    cudaGraphExecDestroy(same->exec);
    *same = StepGraph{capture_key_, exec, ++graph_clock_};
  } else {
    graphs_.push_back(StepGraph{capture_key_, exec, ++graph_clock_});
  }
  CLAWMINE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
}

}  // namespace clawmine::backend::cuda
