// The CudaBackend's life cycle: device selection, the stream and cuBLAS handle, and the one
// arena taken at start ([long-lived part | scratch region], sizes below), the pinned staging
// ring for upload(), and the small shared helpers (CUDA error text, argument checks, usage).
// Nothing here allocates device memory after the constructor: allocate()/scratch() carve the
// arena (memory.cu).
#include <algorithm>
#include <string>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/linear_kernels.cuh"
#include "core/log.h"

namespace clawmine::backend::cuda {

namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kGiB = size_t{1} << 30;
// Left free beside the arena for the CUDA context, lazily loaded kernel modules and cuBLAS.
constexpr size_t kDeviceMargin = 1 * kGiB;
// The smallest arena worth starting with (a tiny test model needs a few MiB).
constexpr size_t kMinArena = 256 * kMiB;
// Default scratch share: a quarter of the arena, at most 16 GiB (prefill activations of a long
// chunk at V4-Flash width fit easily; the rest is for weights and caches).
constexpr size_t kMaxDefaultScratch = 16 * kGiB;
// cuBLAS gets a fixed workspace from the arena so it never calls cudaMalloc itself (which
// graph capture forbids); 32 MiB is what NVIDIA recommends for Hopper.
constexpr size_t kCublasWorkspace = 32 * kMiB;
// Pinned staging for uploads: 4 buffers of 64 MiB, pinned on first use.
constexpr size_t kStagingBuffers = 4;
constexpr size_t kStagingBytes = 64 * kMiB;

std::string gib(size_t bytes) { return str_cat(static_cast<double>(bytes) / static_cast<double>(kGiB), " GiB"); }

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Error(str_cat("cuBLAS error ", cublas_status_name(s), " in ", what));
}

}  // namespace

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw Error(str_cat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in ", what, " at ", file,
                      ":", line));
}

CudaBackend::CudaBackend(const CudaOptions& options) : options_(options) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no driver" error
    throw Error(str_cat("--backend cuda: no CUDA device is available (",
                        err != cudaSuccess ? cudaGetErrorString(err) : "the driver reports 0 devices", ")"));
  }
  if (options_.device < 0 || options_.device >= count)
    throw Error(str_cat("cuda: device index ", options_.device, " is out of range: ", count, " device(s) visible"));
  if (!(options_.memory_fraction > 0.0 && options_.memory_fraction <= 1.0))
    throw Error(str_cat("--gpu-memory-fraction must be in (0, 1], got ", options_.memory_fraction));
  // Read here, so a bad value is an error at start, never in the middle of a recorded step.
  options_.graph_update = options_.graph_update || env_switch("CLAWMINE_GRAPH_UPDATE", false);
  options_.graph_report = options_.graph_report || env_switch("CLAWMINE_GRAPH_REPORT", false);
  options_.early_forks = options_.early_forks && env_switch("CLAWMINE_EARLY_FORKS", true);
  if (options_.act_dtype != DType::kF32 && options_.act_dtype != DType::kBF16)
    throw Error(str_cat("--act-dtype: the CUDA backend computes activations in f32 or bf16, not ",
                        dtype_name(options_.act_dtype)));

  // Every later failure releases what was taken so far (the destructor does not run).
  try {
    CLAWMINE_CUDA_CHECK(cudaSetDevice(options_.device));
    CLAWMINE_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, options_.device));
    CLAWMINE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    main_stream_ = stream_;
    check_cublas(cublasCreate(&cublas_), "cublasCreate");
    check_cublas(cublasSetStream(cublas_, stream_), "cublasSetStream");

    // The arena: memory_fraction of the card, clamped to what is free now minus a margin.
    size_t free_bytes = 0, total_bytes = 0;
    CLAWMINE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const size_t wanted = static_cast<size_t>(options_.memory_fraction * static_cast<double>(total_bytes));
    const size_t usable = free_bytes > kDeviceMargin ? free_bytes - kDeviceMargin : 0;
    size_t arena = std::min(wanted, usable) / 256 * 256;
    if (arena < kMinArena)
      throw Error(str_cat("cuda: cannot take a device memory arena: --gpu-memory-fraction ", options_.memory_fraction,
                          " asks for ", gib(wanted), " of ", gib(total_bytes), " but only ", gib(free_bytes),
                          " is free (", gib(kDeviceMargin), " is kept for the CUDA context); the arena needs at least ",
                          gib(kMinArena)));
    if (arena < wanted / 256 * 256)
      log_warn("cuda", "--gpu-memory-fraction ", options_.memory_fraction, " asks for ", gib(wanted), " but only ",
               gib(free_bytes), " is free: taking ", gib(arena));
    const cudaError_t merr = cudaMalloc(reinterpret_cast<void**>(&arena_), arena);
    if (merr != cudaSuccess) {
      cudaGetLastError();
      arena_ = nullptr;
      throw Error(str_cat("cuda: cudaMalloc of a ", gib(arena), " arena failed (", cudaGetErrorString(merr),
                          "); lower --gpu-memory-fraction (now ", options_.memory_fraction, ")"));
    }
    arena_bytes_ = arena;

    // [long-lived | scratch]: the scratch region is the tail, 256-byte aligned.
    size_t scratch = options_.scratch_bytes ? options_.scratch_bytes : std::min(arena / 4, kMaxDefaultScratch);
    scratch = (scratch + 255) / 256 * 256;
    if (scratch + kCublasWorkspace + 256 > arena)
      throw Error(str_cat("cuda: a scratch region of ", scratch, " bytes leaves nothing for weights in a ", gib(arena),
                          " arena; raise --gpu-memory-fraction or ask for less scratch"));
    long_lived_bytes_ = arena - scratch;
    free_.emplace(0, long_lived_bytes_);

    const TensorView ws = allocate(DType::kU8, {static_cast<int64_t>(kCublasWorkspace)});
    check_cublas(cublasSetWorkspace(cublas_, ws.data, kCublasWorkspace), "cublasSetWorkspace");

    staging_.resize(kStagingBuffers);
    for (Staging& s : staging_) s.bytes = kStagingBytes;  // pinned on first use (upload/download)
    const int threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 8);
    copy_pool_ = std::make_unique<ThreadPool>(threads);
  } catch (...) {
    release_all();
    throw;
  }
  log_info("cuda", "device ", options_.device, " (", sm_count_, " SMs): arena ", gib(arena_bytes_), " (scratch ",
           gib(arena_bytes_ - long_lived_bytes_), "), activations ", dtype_name(options_.act_dtype), ", graphs ",
           options_.graphs ? "on" : "off");
}

CudaBackend::~CudaBackend() { release_all(); }

// Releases every resource; safe on a partly constructed backend. Never throws.
void CudaBackend::release_all() noexcept {
  op_state_.clear();  // states may hold arena views; drop them while the arena still exists
  close_branches();  // joins open branches (the stream below is the main one again)
  if (capturing_ && stream_) {
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(stream_, &g) == cudaSuccess && g) cudaGraphDestroy(g);
    capturing_ = false;
  }
  if (stream_) cudaStreamSynchronize(stream_);  // kernels may still use the arena and staging
  free_branches();
  destroy_graphs();
  for (Staging& s : staging_) {
    if (s.done) cudaEventDestroy(s.done);
    if (s.host) cudaFreeHost(s.host);
    s = Staging{};
  }
  staging_.clear();
  if (cublas_) cublasDestroy(cublas_);
  cublas_ = nullptr;
  if (arena_) cudaFree(arena_);
  arena_ = nullptr;
  if (stream_) release_gemv_workspace(stream_);
  if (stream_) cudaStreamDestroy(stream_);
  stream_ = main_stream_ = nullptr;
  cudaGetLastError();
}

ArenaUsage CudaBackend::usage() const {
  ArenaUsage u;
  u.arena_bytes = arena_bytes_;
  u.allocated = allocated_total_;
  u.scratch_peak = scratch_peak_;
  u.scratch_bytes = arena_bytes_ - long_lived_bytes_;
  return u;
}

void CudaBackend::expect_device(const TensorView& v, const char* op, const char* arg) const {
  if (v.device != Device::kCuda)
    throw Error(str_cat("cuda ", op, ": ", arg, " ", shape_str(v.shape), " is in host memory; ops take device tensors ",
                        "(Backend::allocate + upload, or Model::place for weights)"));
  if (v.data == nullptr) throw Error(str_cat("cuda ", op, ": ", arg, " ", shape_str(v.shape), " has no data"));
}

std::unique_ptr<ops::Backend> make_cuda_backend(const CudaOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

ArenaUsage arena_usage(const ops::Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda ? cuda->usage() : ArenaUsage{};
}

GraphStats graph_stats(const ops::Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda ? cuda->step_graph_stats() : GraphStats{};
}

}  // namespace clawmine::backend::cuda
