// CUDA graphs for decode steps. A step's ops are recorded by stream capture; the first capture
// is instantiated, later ones update the executable graph in place (cudaGraphExecUpdate keeps
// the instantiation when only kernel arguments, copy addresses and sizes changed) and fall back
// to a fresh instantiation when the topology changed (for example a compressor window
// completing adds kernels). One graph launch replaces hundreds of kernel launches.
// The first steps run eagerly so one-time uploads (per-op tables) never happen inside a capture.
#include "backend/cuda/backend_impl.cuh"
#include "core/log.h"

namespace clawmine::backend::cuda {

namespace {
constexpr int64_t kEagerSteps = 2;
}

void CudaBackend::destroy_graph() {
  if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
  graph_exec_ = nullptr;
}

// A step that threw between begin_step_graph and end_step_graph leaves the stream capturing;
// its ops never ran (the forward failed and its sequence is abandoned). End the capture and
// drop it so the backend serves the next request.
void CudaBackend::discard_capture() {
  if (!capturing_) return;
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

void CudaBackend::begin_step_graph() {
  discard_capture();
  if (!options_.graphs || eager_steps_ < kEagerSteps) {
    ++eager_steps_;
    return;
  }
  CLAWMINE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
}

void CudaBackend::end_step_graph() {
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  CLAWMINE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  bool updated = false;
  if (graph_exec_) {
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(graph_exec_, graph, &info) == cudaSuccess) {
      updated = true;
      ++graph_updates_;
    } else {
      cudaGetLastError();  // clear the update failure; instantiate anew below
      destroy_graph();
    }
  }
  if (!updated) {
    const cudaError_t err = cudaGraphInstantiate(&graph_exec_, graph, 0);
    if (err != cudaSuccess) {
      cudaGraphDestroy(graph);
      throw_cuda_error(err, "cudaGraphInstantiate", __FILE__, __LINE__);
    }
    ++graph_instantiations_;
  }
  cudaGraphDestroy(graph);
  CLAWMINE_CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
}

}  // namespace clawmine::backend::cuda
