#include "core/tensor.h"

#include <cstdlib>
#include <utility>

namespace clawmine {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

TensorView TensorView::slice0(int64_t begin, int64_t end) const {
  CLAWMINE_CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= shape[0], "bad slice [", begin,
                 ", ", end, ") of ", shape_str(shape));
  TensorView v = *this;
  v.shape[0] = end - begin;
  const size_t row_bytes = shape[0] ? nbytes() / static_cast<size_t>(shape[0]) : 0;
  v.data = static_cast<uint8_t*>(data) + static_cast<size_t>(begin) * row_bytes;
  return v;
}

TensorView TensorView::reshaped(Shape new_shape) const {
  CLAWMINE_CHECK(shape_numel(new_shape) == numel(), "cannot reshape ", shape_str(shape), " to ",
                 shape_str(new_shape));
  TensorView v = *this;
  v.shape = std::move(new_shape);
  return v;
}

Buffer::Buffer(DType dtype, Shape shape) {
  view_.dtype = dtype;
  view_.shape = std::move(shape);
  const size_t bytes = (view_.nbytes() + 63) / 64 * 64;
  view_.data = bytes ? std::aligned_alloc(64, bytes) : nullptr;
  CLAWMINE_CHECK(bytes == 0 || view_.data, "out of host memory allocating ", bytes, " bytes");
}

Buffer::Buffer(Buffer&& other) noexcept : view_(std::exchange(other.view_, TensorView{})) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    std::free(view_.data);
    view_ = std::exchange(other.view_, TensorView{});
  }
  return *this;
}

Buffer::~Buffer() { std::free(view_.data); }

}  // namespace clawmine
