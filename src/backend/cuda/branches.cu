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
// Joins on the device (join_branches_on_device, branch_wait_on_device; CudaOptions::device_joins):
// a kernel node with two kernel predecessors is launched only once both have completed, ~1.5 us
// later than a kernel after one kernel (tools/join_probe). So the join before the attention, the
// one before the hc site after the MoE and the window copy's wait for kv can be carried on the
// device: each side stream waited for gets a one-block release kernel (once its branch's last
// kernel has completed, it adds 1 to a flag), the waiting stream a one-block wait kernel (after its
// own last kernel, it waits until the flag counts every side, clears it and only then lets the
// next kernel launch: mode 1), so the next kernel has one predecessor. A side stream closed this
// way stays in the capture until the next join_branches; end_step_graph removes its release
// kernel's out-edges, which order nothing the flag does not (graph.cu). Mode 2 lets the next
// kernel launch at the wait kernel's start, resident early; its blocks wait beside the branches'
// last kernels, which were launched before it.
#include <algorithm>
#include <cstdlib>
#include <cstring>

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

// The device-side join's two kernels (one block of 32 threads each), launched with PDL.
// Release: after the branch's last kernel has completed and its writes are visible (the wait),
// one atomic add, ordered after them by the fence.
__global__ void join_release_kernel(unsigned* flag) {
  pdl_wait();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(flag, 1u);
  }
  pdl_trigger();
}
// Wait: after the main stream's last kernel (the wait), until the flag counts `sides` releases
// (acquire: what the branches wrote is visible to this grid, and to the grids that wait for it);
// clears the flag for its next use. trigger_first (mode 2): the next kernel may launch at once.
__global__ void join_wait_kernel(unsigned* flag, unsigned sides, int trigger_first) {
  if (trigger_first) pdl_trigger();
  pdl_wait();
  if (threadIdx.x == 0) {
    unsigned v = 0;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
    } while (v < sides);
    *flag = 0;
  }
  __syncthreads();
  if (!trigger_first) pdl_trigger();
}

constexpr int64_t kJoinFlags = 256;  // reused in turn: a flag's wait kernel clears it before its next release

void launch_join_release(cudaStream_t stream, unsigned* flag) {
  launch_kernel(join_release_kernel, dim3(1), dim3(32), 0, stream, flag);
  CLAWMINE_CUDA_LAUNCHED("join_release");
}
// mode: CudaOptions::device_joins (2: the next kernel launches at the wait kernel's start).
void launch_join_wait(cudaStream_t stream, unsigned* flag, unsigned sides, int mode) {
  launch_kernel(join_wait_kernel, dim3(1), dim3(32), 0, stream, flag, sides, mode == 2 ? 1 : 0);
  CLAWMINE_CUDA_LAUNCHED("join_wait");
}

}  // namespace

void CudaBackend::branch(int b) {
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
      s.forked = true;
      s.released = false;  // its release kernel is behind the fork now (and after the wait kernel)
      ++n_forked_;
    }
    stream_ = s.stream;
  }
  // cuBLAS calls set their stream (be.stream()) themselves.
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
    if (!s.forked && !s.released) continue;
    if (s.forked) --n_forked_;
    s.forked = s.released = false;  // closed even if the join below fails (a device error)
    CLAWMINE_CUDA_CHECK(cudaEventRecord(s.join, s.stream));
    CLAWMINE_CUDA_CHECK(cudaStreamWaitEvent(main_stream_, s.join, 0));
  }
}

void CudaBackend::join_branches_on_device() {
  if (options_.device_joins == 0 || n_forked_ == 0) {
    join_branches();
    return;
  }
  unsigned* flag = next_join_flag();
  unsigned sides = 0;
  for (Side& s : side_) {
    if (!s.forked) continue;
    s.forked = false;
    s.released = true;
    --n_forked_;
    ++sides;
    launch_join_release(s.stream, flag);
    if (capturing_) {
      cudaStreamCaptureStatus status{};
      const cudaGraphNode_t* tail = nullptr;
      size_t n_tail = 0;
#if CUDART_VERSION >= 13000
      CLAWMINE_CUDA_CHECK(cudaStreamGetCaptureInfo(s.stream, &status, nullptr, nullptr, &tail, nullptr, &n_tail));
#else
      CLAWMINE_CUDA_CHECK(cudaStreamGetCaptureInfo_v3(s.stream, &status, nullptr, nullptr, &tail, nullptr, &n_tail));
#endif
      CLAWMINE_CHECK(status == cudaStreamCaptureStatusActive && n_tail == 1, "join_branches_on_device: the release "
                     "kernel is not the side stream's one capture tail (", n_tail, " nodes)");
      release_nodes_.push_back(tail[0]);
    }
  }
  stream_ = main_stream_;
  branch_ = 0;
  launch_join_wait(main_stream_, flag, sides, options_.device_joins);
  ++graph_stats_.device_joins;
}

// branch_wait(b) on the device: a release kernel after side b's last kernel, a wait kernel on the
// current branch's stream. Side b stays open (its later join orders the release kernel as any
// other), so no edge needs cutting.
void CudaBackend::branch_wait_on_device(int b) {
  CLAWMINE_CHECK(b >= 0 && b < kMaxBranches, "cuda branch_wait_on_device: ", b, " is not a branch (0 .. ",
                 kMaxBranches - 1, ")");
  if (options_.device_joins == 0 || b == 0 || !side_streams() || b == branch_ || !side_[b - 1].forked) {
    branch_wait(b);
    return;
  }
  unsigned* flag = next_join_flag();
  launch_join_release(side_[b - 1].stream, flag);
  launch_join_wait(stream_, flag, 1, options_.device_joins);
  ++graph_stats_.device_joins;
}

unsigned* CudaBackend::next_join_flag() {
  if (join_flags_ == nullptr) {
    const TensorView v = allocate(DType::kI32, {kJoinFlags});
    join_flags_ = static_cast<unsigned*>(v.data);  // never released: the arena goes with the backend
    CLAWMINE_CUDA_CHECK(cudaMemsetAsync(join_flags_, 0, kJoinFlags * sizeof(unsigned), main_stream_));
  }
  unsigned* flag = join_flags_ + next_join_flag_;
  next_join_flag_ = (next_join_flag_ + 1) % kJoinFlags;
  return flag;
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
