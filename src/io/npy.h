// NumPy .npy files (format 1.0) for dumps and reference activations: float32 arrays are
// written little-endian in C order; reading accepts little-endian <f4/<f8 (as float32) and
// <i4/<i8 (as int64), C order only. Errors name the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace clawmine::io {

struct NpyArray {
  Shape shape;                // () for a scalar
  std::string descr;          // as stored: "<f4", "<f8", "<i4" or "<i8"
  std::vector<float> floats;  // for <f4 and <f8 (f8 rounded to nearest float), else empty
  std::vector<int64_t> ints;  // for <i4 and <i8, else empty

  bool is_int() const { return descr == "<i4" || descr == "<i8"; }
  int64_t numel() const { return shape_numel(shape); }
};

// data: shape_numel(shape) floats in C order.
void write_npy(const std::filesystem::path& path, const float* data, const Shape& shape);
NpyArray read_npy(const std::filesystem::path& path);

}  // namespace clawmine::io
