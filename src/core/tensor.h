// Non-owning tensor view: dtype, shape, device and a data pointer. Views are always
// contiguous row-major (the last dimension is densest); slicing along dimension 0 stays a
// view. Ownership lives elsewhere: mmapped checkpoint files, arenas, Buffer below.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace clawmine {

enum class Device : uint8_t { kCpu, kCuda };

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[4, 16384]"

struct TensorView {
  DType dtype = DType::kF32;
  Device device = Device::kCpu;
  Shape shape;
  void* data = nullptr;

  bool empty() const { return data == nullptr; }
  int rank() const { return static_cast<int>(shape.size()); }
  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape.at(static_cast<size_t>(i < 0 ? rank() + i : i)); }

  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  float* f32() const {
    CLAWMINE_CHECK(dtype == DType::kF32, "expected an F32 tensor, got ", dtype_name(dtype));
    return static_cast<float*>(data);
  }
  // Rows [begin, end) along dimension 0.
  TensorView slice0(int64_t begin, int64_t end) const;
  // Same bytes, another shape of equal element count.
  TensorView reshaped(Shape new_shape) const;
};

// An owning, 64-byte aligned host buffer that hands out a view of itself.
class Buffer {
 public:
  Buffer() = default;
  Buffer(DType dtype, Shape shape);
  Buffer(Buffer&&) noexcept;
  Buffer& operator=(Buffer&&) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  const TensorView& view() const { return view_; }
  float* f32() const { return view_.f32(); }

 private:
  TensorView view_;
};

}  // namespace clawmine
