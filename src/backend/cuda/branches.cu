// Branches (ops/backend.h branch/join_branches): the ops of branch b > 0 run on a side stream
// that waits for the main stream at the branch's first op (a fork event) and that the main
// stream waits for at the join (a join event); branch_wait(b) records a mark event on branch b's
// stream that the current one waits for. Inside a stream capture the side stream joins the
// capture through the fork event, and the graph gets the two chains as parallel paths. Only
// stream_ changes: every op launches on stream_, so the ops need no change.
// Each branch b > 0 has its own side stream (kMaxBranches - 1 of them, created on first use):
// one-sequence decode uses branches 1-4 (attention's keys, the indexer's keys, the layer's
// compressor, CSA's top-k selection; the MoE's shared expert), batched decode up to
// kMaxBranches - 1 lanes of per-sequence attention. CLAWMINE_BRANCHES=1 (or
// 0) issues every branch on the main stream in issue order. Decode b=1 on the H100
// (docs/PERFORMANCE.md): 8.66/8.70 ms per token with the side stream, 9.54/9.68 without; a third
// stream for the compressors gained nothing (8.70/8.75).
// Early forks. Inside a capture, a side stream that waits for its fork event depends on the fork
// point and on its own last node (a kernel of the branch's previous use, which the main stream
// joined long before), so the branch's first kernel is a join: under PDL it is launched only ~1.8
// us after the later of the two ends, where a kernel with one predecessor is resident before and
// its wait returns ~0.26 us after (tools/join_probe). branch_early(b) sets the side stream's
// capture dependencies to the fork point alone (start_at_fork), which orders nothing less: the
// dropped node was joined before the fork point. Not for every branch: on the V4-Flash decode step
// (H200, thirty-sixth session) the attention's kv and key branches started early gain 0.09 ms per
// token, while the compressors' and the shared expert's, resident early beside the critical path's
// kernels, lose (every fork early: +0.15 ms).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {
namespace {

// CLAWMINE_BRANCHES: false when every branch runs on the main stream (read once; see the file
// comment).
bool side_streams() {
  static const bool on = [] {
    const char* env = std::getenv("CLAWMINE_BRANCHES");
    if (env == nullptr || *env == '\0' || std::strcmp(env, "on") == 0) return true;
    if (std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0 || std::strcmp(env, "off") == 0) return false;
    throw Error(str_cat("CLAWMINE_BRANCHES=", env, ": expected 1 or off (every branch on the main stream) or on"));
  }();
  return on;
}

}  // namespace

void CudaBackend::branch(int b) { to_branch(b, false); }
void CudaBackend::branch_early(int b) { to_branch(b, options_.early_forks); }

void CudaBackend::to_branch(int b, bool early) {
  CLAWMINE_CHECK(b >= 0 && b < kMaxBranches, "cuda branch: ", b, " is not a branch (0 .. ", kMaxBranches - 1, ")");
  if (!side_streams()) b = 0;
  branch_ = b;
  if (b == 0) {
    stream_ = main_stream_;
  } else {
    Side& s = side_[b - 1];
    if (s.stream == nullptr) {
      CLAWMINE_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
      CLAWMINE_CUDA_CHECK(cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming));
      CLAWMINE_CUDA_CHECK(cudaEventCreateWithFlags(&s.join, cudaEventDisableTiming));
      CLAWMINE_CUDA_CHECK(cudaEventCreateWithFlags(&s.mark, cudaEventDisableTiming));
    }
    if (!s.forked) {  // starts after everything the main stream has been given so far
      CLAWMINE_CUDA_CHECK(cudaEventRecord(s.fork, main_stream_));
      CLAWMINE_CUDA_CHECK(cudaStreamWaitEvent(s.stream, s.fork, 0));
      if (early && capturing_) start_at_fork(s.stream);
      s.forked = true;
      ++n_forked_;
    }
    stream_ = s.stream;
  }
  // cuBLAS calls set their stream (be.stream()) themselves.
}

void CudaBackend::start_at_fork(cudaStream_t side) {
  cudaStreamCaptureStatus status{};
  const cudaGraphNode_t* deps = nullptr;
  const cudaGraphEdgeData* data = nullptr;
  size_t n = 0;
#if CUDART_VERSION >= 13000
  CLAWMINE_CUDA_CHECK(cudaStreamGetCaptureInfo(main_stream_, &status, nullptr, nullptr, &deps, &data, &n));
#else
  CLAWMINE_CUDA_CHECK(cudaStreamGetCaptureInfo_v3(main_stream_, &status, nullptr, nullptr, &deps, &data, &n));
#endif
  if (status != cudaStreamCaptureStatusActive || n == 0) return;  // the fork point is the capture's start
  // Copies: the returned arrays live until the next call on the stream.
  std::vector<cudaGraphNode_t> nodes(deps, deps + n);
  std::vector<cudaGraphEdgeData> edges(n);
  if (data) std::copy(data, data + n, edges.begin());
#if CUDART_VERSION >= 13000
  CLAWMINE_CUDA_CHECK(cudaStreamUpdateCaptureDependencies(side, nodes.data(), edges.data(), n,
                                                          cudaStreamSetCaptureDependencies));
#else
  CLAWMINE_CUDA_CHECK(cudaStreamUpdateCaptureDependencies_v2(side, nodes.data(), edges.data(), n,
                                                             cudaStreamSetCaptureDependencies));
#endif
  ++graph_stats_.early_forks;
}

void CudaBackend::branch_wait(int b) {
  CLAWMINE_CHECK(b >= 0 && b < kMaxBranches, "cuda branch_wait: ", b, " is not a branch (0 .. ", kMaxBranches - 1, ")");
  if (!side_streams() || b == branch_) return;  // one stream, or the branch itself: in order already
  cudaStream_t from = main_stream_;
  cudaEvent_t* mark = &main_mark_;
  if (b > 0) {
    Side& s = side_[b - 1];
    if (!s.forked) return;  // nothing issued on it in this region
    from = s.stream;
    mark = &s.mark;
  } else if (main_mark_ == nullptr) {
    CLAWMINE_CUDA_CHECK(cudaEventCreateWithFlags(&main_mark_, cudaEventDisableTiming));
  }
  CLAWMINE_CUDA_CHECK(cudaEventRecord(*mark, from));
  CLAWMINE_CUDA_CHECK(cudaStreamWaitEvent(stream_, *mark, 0));
}

void CudaBackend::join_branches() {
  stream_ = main_stream_;
  branch_ = 0;
  for (Side& s : side_) {
    if (!s.forked) continue;
    s.forked = false;  // closed even if the join below fails (a device error)
    --n_forked_;
    CLAWMINE_CUDA_CHECK(cudaEventRecord(s.join, s.stream));
    CLAWMINE_CUDA_CHECK(cudaStreamWaitEvent(main_stream_, s.join, 0));
  }
}

// join_branches without throwing (a failed step, release_all): the error is left for later calls.
void CudaBackend::close_branches() noexcept {
  for (;;) {
    try {
      join_branches();
      break;
    } catch (...) {  // the side that failed is closed: join the rest
    }
  }
  cudaGetLastError();
}

void CudaBackend::free_branches() noexcept {
  close_branches();
  for (Side& s : side_) {
    if (s.stream) cudaStreamSynchronize(s.stream);
    if (s.fork) cudaEventDestroy(s.fork);
    if (s.join) cudaEventDestroy(s.join);
    if (s.mark) cudaEventDestroy(s.mark);
    if (s.stream) release_gemv_workspace(s.stream);
    if (s.stream) cudaStreamDestroy(s.stream);
    s = Side{};
  }
  if (main_mark_) cudaEventDestroy(main_mark_);
  main_mark_ = nullptr;
  cudaGetLastError();
}

}  // namespace clawmine::backend::cuda
