// CudaBackend memory ops over the one arena (backend.cu takes it):
//   long-lived part [0, long_lived_bytes_): first-fit free list with coalescing, 256-byte blocks;
//   scratch region [long_lived_bytes_, arena_bytes_): a bump pointer, reset to a mark, so equal
//     request sequences get equal addresses (CUDA graphs replay them);
//   upload: host -> pinned staging ring -> device, chunk by chunk on the stream; a buffer is
//     refilled only after its event says the previous copy out of it finished, so the caller's
//     source is free when upload returns and the host copy of chunk i+1 overlaps the DMA of i;
//   download: device -> staging -> caller, pipelined over the same ring, then returns;
//   copy (with F32/BF16/F16 conversion) and fill are grid-stride kernels on the stream.
// Not thread-safe: one thread drives a backend (as it drives its stream).
#include <algorithm>
#include <cstring>
#include <deque>
#include <iterator>

#include "backend/cuda/backend_impl.cuh"

namespace clawmine::backend::cuda {

namespace {

constexpr size_t kAlign = 256;
// Host copies at least this large are split over the copy pool's threads.
constexpr size_t kParallelCopyBytes = size_t{4} << 20;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Bytes of a tensor of this dtype and shape (at least 1, so every view gets a distinct address).
size_t request_bytes(DType dtype, const Shape& shape, const char* what) {
  size_t n = 1;
  for (const int64_t d : shape) {
    if (d < 0) throw Error(str_cat("cuda ", what, ": negative dimension in shape ", shape_str(shape)));
    const auto ud = static_cast<size_t>(d);
    if (ud != 0 && n > SIZE_MAX / ud) throw Error(str_cat("cuda ", what, ": shape ", shape_str(shape), " overflows"));
    n *= ud;
  }
  const size_t es = dtype_size(dtype);
  if (n > SIZE_MAX / es) throw Error(str_cat("cuda ", what, ": shape ", shape_str(shape), " overflows"));
  return n * es;
}

std::string mib(size_t bytes) { return str_cat(static_cast<double>(bytes) / (1 << 20), " MiB"); }

bool is_float(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

void host_copy(ThreadPool& pool, void* dst, const void* src, size_t n) {
  if (n < kParallelCopyBytes || pool.num_threads() == 1) {
    std::memcpy(dst, src, n);
    return;
  }
  pool.parallel_for(0, static_cast<int64_t>(n), [&](int64_t b, int64_t e) {
    std::memcpy(static_cast<char*>(dst) + b, static_cast<const char*>(src) + b, static_cast<size_t>(e - b));
  });
}

unsigned grid_for(int64_t n, int threads, int sm_count) {
  const unsigned cap = static_cast<unsigned>(std::max(1, sm_count) * 16);
  return std::max(1u, std::min(blocks_for(n, threads), cap));
}

// dst[i] = convert(src[i]) through float32 (exact widening, round-to-nearest-even narrowing).
template <typename S, typename D>
__global__ void convert_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  pdl_wait();
  pdl_trigger();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = from_f32<D>(to_f32(src[i]));
}

// dst = src in 16-byte words (both 16-byte aligned, a whole number of words).
__global__ void copy16_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
  pdl_wait();
  pdl_trigger();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = src[i];
}

template <typename T>
__global__ void fill_kernel(T* __restrict__ dst, int64_t n, float value) {
  pdl_wait();
  pdl_trigger();
  const T v = from_f32<T>(value);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = v;
}

}  // namespace

// ---- long-lived part -------------------------------------------------------------------------

TensorView CudaBackend::allocate(DType dtype, const Shape& shape) {
  const size_t bytes = request_bytes(dtype, shape, "allocate");
  const size_t need = align_up(std::max<size_t>(bytes, 1));
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const size_t off = it->first, size = it->second;
    free_.erase(it);
    if (size > need) free_.emplace(off + need, size - need);
    allocated_.emplace(off, need);
    allocated_total_ += need;
    return TensorView{dtype, Device::kCuda, shape, arena_ + off};
  }
  size_t free_total = 0, largest = 0;
  for (const auto& [off, size] : free_) {
    free_total += size;
    largest = std::max(largest, size);
  }
  throw Error(str_cat("cuda: out of device memory: cannot allocate ", mib(bytes), " for ", dtype_name(dtype), " ",
                      shape_str(shape), "; ", mib(free_total), " free in the arena's long-lived part (largest block ",
                      mib(largest), ", ", mib(allocated_total_), " in use, arena ", mib(arena_bytes_),
                      "); raise --gpu-memory-fraction (now ", options_.memory_fraction, ")"));
}

void CudaBackend::release(const TensorView& view) {
  if (view.data == nullptr) return;
  const char* p = static_cast<const char*>(view.data);
  CLAWMINE_CHECK(view.device == Device::kCuda && p >= arena_ && p < arena_ + long_lived_bytes_, "cuda release: ",
                 shape_str(view.shape), " was not allocated by this backend");
  const size_t off = static_cast<size_t>(p - arena_);
  const auto it = allocated_.find(off);
  CLAWMINE_CHECK(it != allocated_.end(), "cuda release: ", shape_str(view.shape), " at arena offset ", off,
                 " is not a live allocation (released twice, or a view into one)");
  const size_t size = it->second;
  allocated_total_ -= size;
  allocated_.erase(it);
  // Coalesce with the free neighbours: the block after, then the block before.
  size_t start = off, len = size;
  auto next = free_.lower_bound(off);
  if (next != free_.end() && off + size == next->first) {
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    const auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      start = prev->first;
      len += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(start, len);
}

// ---- scratch region --------------------------------------------------------------------------

TensorView CudaBackend::scratch(DType dtype, const Shape& shape) {
  const size_t bytes = request_bytes(dtype, shape, "scratch");
  const size_t need = align_up(std::max<size_t>(bytes, 1));
  const size_t region = arena_bytes_ - long_lived_bytes_;
  if (need > region - scratch_top_)
    throw Error(str_cat("cuda: the scratch region is exhausted: ", mib(bytes), " for ", dtype_name(dtype), " ",
                        shape_str(shape), " with ", mib(scratch_top_), " of ", mib(region),
                        " in use; raise --gpu-memory-fraction (now ", options_.memory_fraction,
                        "; scratch is min(25% of the arena, 16 GiB)) or CudaOptions::scratch_bytes"));
  const size_t off = scratch_top_;
  scratch_top_ += need;
  scratch_peak_ = std::max(scratch_peak_, scratch_top_);
  return TensorView{dtype, Device::kCuda, shape, arena_ + long_lived_bytes_ + off};
}

void CudaBackend::scratch_reset(size_t mark) {
  CLAWMINE_CHECK(mark <= scratch_top_, "cuda scratch_reset: mark ", mark, " is above the scratch top ", scratch_top_,
                 " (frames must be reset innermost first)");
  if (branches_open()) return;  // a branch's ops may still read it (ops/backend.h branch)
  scratch_top_ = mark;
}

// ---- host <-> device -------------------------------------------------------------------------

CudaBackend::Staging& CudaBackend::staging_slot(size_t i) {
  Staging& s = staging_.at(i);
  if (!s.host) {
    CLAWMINE_CUDA_CHECK(cudaHostAlloc(&s.host, s.bytes, cudaHostAllocDefault));
    CLAWMINE_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  }
  return s;
}

void CudaBackend::upload(const void* src, const TensorView& dst) {
  expect_device(dst, "upload", "dst");
  refuse_inside_capture(__func__);
  const size_t n = dst.nbytes();
  if (n == 0) return;
  CLAWMINE_CHECK(src != nullptr, "cuda upload: null host source for ", shape_str(dst.shape));
  const char* from = static_cast<const char*>(src);
  char* to = static_cast<char*>(dst.data);
  for (size_t done = 0; done < n;) {
    Staging* s = &staging_slot(next_staging_);
    if (staging_offset_ >= s->bytes) {  // this buffer is full: move to the next one
      next_staging_ = (next_staging_ + 1) % staging_.size();
      staging_offset_ = 0;
      continue;
    }
    // Entering a buffer at its start: wait until the last copy out of it has finished (an
    // event never recorded returns at once). Later uploads into the rest of it need no wait.
    if (staging_offset_ == 0) CLAWMINE_CUDA_CHECK(cudaEventSynchronize(s->done));
    const size_t len = std::min(s->bytes - staging_offset_, n - done);
    char* stage = static_cast<char*>(s->host) + staging_offset_;
    host_copy(*copy_pool_, stage, from + done, len);
    CLAWMINE_CUDA_CHECK(cudaMemcpyAsync(to + done, stage, len, cudaMemcpyHostToDevice, stream_));
    CLAWMINE_CUDA_CHECK(cudaEventRecord(s->done, stream_));
    staging_offset_ = std::min(s->bytes, align_up(staging_offset_ + len));
    done += len;
  }
}

void CudaBackend::download(const TensorView& src, void* dst) {
  expect_device(src, "download", "src");
  refuse_inside_capture("download");
  join_branches();
  const size_t n = src.nbytes();
  if (n == 0) {
    synchronize();
    return;
  }
  CLAWMINE_CHECK(dst != nullptr, "cuda download: null host destination for ", shape_str(src.shape));
  // Take the whole ring: wait until earlier uploads have left every staging buffer.
  for (Staging& s : staging_)
    if (s.done) CLAWMINE_CUDA_CHECK(cudaEventSynchronize(s.done));
  struct Piece {
    size_t slot, offset, len;
  };
  std::deque<Piece> in_flight;
  const char* from = static_cast<const char*>(src.data);
  char* to = static_cast<char*>(dst);
  size_t issued = 0, slot = 0;
  while (issued < n || !in_flight.empty()) {
    if (issued < n && in_flight.size() < staging_.size()) {
      Staging& s = staging_slot(slot);
      const size_t len = std::min(s.bytes, n - issued);
      CLAWMINE_CUDA_CHECK(cudaMemcpyAsync(s.host, from + issued, len, cudaMemcpyDeviceToHost, stream_));
      CLAWMINE_CUDA_CHECK(cudaEventRecord(s.done, stream_));
      in_flight.push_back({slot, issued, len});
      issued += len;
      slot = (slot + 1) % staging_.size();
    } else {
      const Piece p = in_flight.front();
      in_flight.pop_front();
      CLAWMINE_CUDA_CHECK(cudaEventSynchronize(staging_[p.slot].done));
      host_copy(*copy_pool_, to + p.offset, staging_[p.slot].host, p.len);
    }
  }
  // The ring is idle now: the next upload starts at the beginning of a buffer.
  next_staging_ = slot;
  staging_offset_ = 0;
}

// ---- device ops ------------------------------------------------------------------------------

void CudaBackend::copy(const TensorView& src, const TensorView& dst) {
  expect_device(src, "copy", "src");
  expect_device(dst, "copy", "dst");
  CLAWMINE_CHECK(src.numel() == dst.numel(), "cuda copy: src ", shape_str(src.shape), " and dst ",
                 shape_str(dst.shape), " differ in element count");
  const int64_t n = src.numel();
  if (n == 0) return;
  if (src.dtype == dst.dtype) {
    // A kernel where it can move 16-byte words: inside a decode-step graph a memcpy node goes to
    // the copy engine, whose start costs more than a small kernel's (the window copies of every
    // layer), and a kernel joins the programmatic-launch chain.
    const size_t bytes = src.nbytes();
    const bool words = bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src.data) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(dst.data) % 16 == 0;
    if (words) {
      const int64_t n16 = static_cast<int64_t>(bytes / 16);
      launch_kernel(copy16_kernel, grid_for(n16, 256, sm_count_), 256, 0, stream_,
                    static_cast<const uint4*>(src.data), static_cast<uint4*>(dst.data), n16);
      CLAWMINE_CUDA_LAUNCHED("copy");
    } else {
      CLAWMINE_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, bytes, cudaMemcpyDeviceToDevice, stream_));
    }
    return;
  }
  if (!is_float(src.dtype) || !is_float(dst.dtype))
    throw Error(str_cat("cuda copy: cannot convert ", dtype_name(src.dtype), " to ", dtype_name(dst.dtype),
                        " (conversions are between F32, BF16 and F16)"));
  dispatch_float(src.dtype, "copy", "src", [&](auto s) {
    using S = decltype(s);
    dispatch_float(dst.dtype, "copy", "dst", [&](auto d) {
      using D = decltype(d);
      launch_kernel(convert_kernel<S, D>, grid_for(n, 256, sm_count_), 256, 0, stream_, src.as<const S>(), dst.as<D>(),
                    n);
      CLAWMINE_CUDA_LAUNCHED("copy");
    });
  });
}

void CudaBackend::fill(const TensorView& dst, float value) {
  expect_device(dst, "fill", "dst");
  const int64_t n = dst.numel();
  if (n == 0) return;
  dispatch_float(dst.dtype, "fill", "dst", [&](auto t) {
    using T = decltype(t);
    launch_kernel(fill_kernel<T>, grid_for(n, 256, sm_count_), 256, 0, stream_, dst.as<T>(), n, value);
    CLAWMINE_CUDA_LAUNCHED("fill");
  });
}

void CudaBackend::synchronize() {
  refuse_inside_capture(__func__);
  join_branches();
  CLAWMINE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

namespace {
struct ZeroedCounters {
  unsigned* data = nullptr;
  int64_t n = 0;
  bool cleared = false;
};
}  // namespace

unsigned* CudaBackend::zeroed_counters(const void* key, int64_t n) {
  auto* st = branch_op_state<ZeroedCounters>(key);
  if (st->data == nullptr) {
    const TensorView v = allocate(DType::kI32, {n});
    st->data = static_cast<unsigned*>(v.data);  // never released: the arena goes with the backend
    st->n = n;
  }
  CLAWMINE_CHECK(st->n == n, "zeroed_counters: asked for ", n, " counters under a key that holds ", st->n);
  if (!st->cleared) {
    CLAWMINE_CUDA_CHECK(cudaMemsetAsync(st->data, 0, static_cast<size_t>(n) * sizeof(unsigned), stream()));
    st->cleared = !capturing();
  }
  return st->data;
}

}  // namespace clawmine::backend::cuda
