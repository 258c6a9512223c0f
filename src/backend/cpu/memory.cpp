// The CPU backend's memory ops. "Device" memory is host memory: allocate hands out 64-byte
// aligned blocks tracked until release; scratch blocks are kept on a stack whose height is the
// mark, and scratch_reset frees back down to it; upload/download are memcpy; copy converts
// between F32, BF16 and F16 (round to nearest even) and fill writes one value everywhere.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/op_checks.h"
#include "core/error.h"

namespace clawmine::backend::cpu {
namespace {

// A block of at least 64 bytes, so even a view of zero elements has an address (a view with
// a null pointer reads as "absent" in the op interface).
void* alloc_block(DType dtype, const Shape& shape, const char* what) {
  for (int64_t d : shape)
    if (d < 0) throw Error(str_cat("cpu ", what, ": negative dimension in shape ", shape_str(shape)));
  const size_t bytes = std::max<size_t>(64, (static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype) + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw Error(str_cat("cpu ", what, ": out of host memory allocating ", bytes, " bytes"));
  return p;
}

bool is_float(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

void store_f32(void* data, DType t, size_t i, float v) {
  switch (t) {
    case DType::kF32: static_cast<float*>(data)[i] = v; break;
    case DType::kBF16: static_cast<uint16_t*>(data)[i] = f32_to_bf16(v); break;
    case DType::kF16: static_cast<uint16_t*>(data)[i] = f32_to_f16(v); break;
    default: throw Error(str_cat("cpu: cannot store a float as ", dtype_name(t)));
  }
}

TensorView make_view(DType dtype, const Shape& shape, void* data) {
  TensorView v;
  v.dtype = dtype;
  v.device = Device::kCpu;
  v.shape = shape;
  v.data = data;
  return v;
}

}  // namespace

CpuBackend::~CpuBackend() {
  for (void* p : scratch_) std::free(p);
  for (auto& [p, bytes] : allocated_) std::free(p);
}

TensorView CpuBackend::allocate(DType dtype, const Shape& shape) {
  void* p = alloc_block(dtype, shape, "allocate");
  std::lock_guard lock(alloc_mutex_);
  allocated_.emplace(p, static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  return make_view(dtype, shape, p);
}

void CpuBackend::release(const TensorView& view) {
  {
    std::lock_guard lock(alloc_mutex_);
    auto it = allocated_.find(view.data);
    if (it == allocated_.end())
      throw Error(str_cat("cpu release: the view ", shape_str(view.shape), " at ", view.data,
                          " was not allocated by this backend (or was released already)"));
    allocated_.erase(it);
  }
  std::free(view.data);
}

TensorView CpuBackend::scratch(DType dtype, const Shape& shape) {
  void* p = alloc_block(dtype, shape, "scratch");
  scratch_.push_back(p);
  return make_view(dtype, shape, p);
}

void CpuBackend::scratch_reset(size_t mark) {
  if (mark > scratch_.size())
    throw Error(str_cat("cpu scratch_reset: mark ", mark, " is above the scratch stack height ", scratch_.size()));
  while (scratch_.size() > mark) {
    std::free(scratch_.back());
    scratch_.pop_back();
  }
}

void CpuBackend::upload(const void* src, const TensorView& dst) {
  void* d = host_arg(dst, "upload", "dst");
  if (dst.nbytes()) std::memcpy(d, src, dst.nbytes());
}

void CpuBackend::download(const TensorView& src, void* dst) {
  const void* s = host_arg(src, "download", "src");
  if (src.nbytes()) std::memcpy(dst, s, src.nbytes());
}

void CpuBackend::copy(const TensorView& src, const TensorView& dst) {
  const void* s = host_arg(src, "copy", "src");
  void* d = host_arg(dst, "copy", "dst");
  if (src.numel() != dst.numel())
    throw Error(str_cat("cpu copy: src ", shape_str(src.shape), " and dst ", shape_str(dst.shape),
                        " have different element counts"));
  const size_t n = static_cast<size_t>(src.numel());
  if (src.dtype == dst.dtype) {
    if (n) std::memmove(d, s, src.nbytes());
    return;
  }
  if (!is_float(src.dtype) || !is_float(dst.dtype))
    throw Error(str_cat("cpu copy: cannot convert ", dtype_name(src.dtype), " to ", dtype_name(dst.dtype),
                        " (conversions are between F32, BF16 and F16)"));
  for (size_t i = 0; i < n; ++i) store_f32(d, dst.dtype, i, load_as_f32(s, src.dtype, i));
}

void CpuBackend::fill(const TensorView& dst, float value) {
  void* d = host_arg(dst, "fill", "dst");
  if (!is_float(dst.dtype))
    throw Error(str_cat("cpu fill: dst has dtype ", dtype_name(dst.dtype), ", expected F32/BF16/F16"));
  const size_t n = static_cast<size_t>(dst.numel());
  for (size_t i = 0; i < n; ++i) store_f32(d, dst.dtype, i, value);
}

void CpuBackend::scatter_rows(const TensorView& src, const TensorView& keys, int64_t divisor, const TensorView& dst) {
  const char* op = "scatter_rows";
  const void* s = host_arg(src, op, "src");
  void* d = host_arg(dst, op, "dst");
  const int32_t* k = i32_arg(keys, op, "keys");
  if (src.rank() != 2 || dst.rank() != 2 || src.dim(1) != dst.dim(1) || keys.rank() != 1 || keys.dim(0) != src.dim(0))
    throw Error(str_cat("cpu scatter_rows: src ", shape_str(src.shape), ", keys ", shape_str(keys.shape), " and dst ",
                        shape_str(dst.shape), " must be [n, w], [n] and [N, w]"));
  if (divisor < 1) throw Error(str_cat("cpu scatter_rows: divisor ", divisor, " must be >= 1"));
  if (src.dtype != dst.dtype && (!is_float(src.dtype) || !is_float(dst.dtype)))
    throw Error(str_cat("cpu scatter_rows: cannot convert ", dtype_name(src.dtype), " to ", dtype_name(dst.dtype)));
  const int64_t n = src.dim(0), w = src.dim(1), N = dst.dim(0);
  for (int64_t i = 0; i < n; ++i) {
    if (k[i] < 0 || k[i] / divisor >= N)
      throw Error(str_cat("cpu scatter_rows: key ", k[i], " of row ", i, " / ", divisor, " is outside the ", N,
                          " rows of dst"));
    const int64_t r = k[i] / divisor;
    if (src.dtype == dst.dtype) {
      const size_t row = src.nbytes() / static_cast<size_t>(n);
      std::memcpy(static_cast<char*>(d) + r * row, static_cast<const char*>(s) + i * row, row);
      continue;
    }
    for (int64_t c = 0; c < w; ++c)
      store_f32(d, dst.dtype, static_cast<size_t>(r * w + c), load_as_f32(s, src.dtype, static_cast<size_t>(i * w + c)));
  }
}

}  // namespace clawmine::backend::cpu
