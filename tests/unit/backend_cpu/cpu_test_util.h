// Helpers for the CPU backend tests: owning host tensors that hand out views, random fills,
// and dense F32 linear weights. References live in each test file as plain double loops.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/deepseek_v4/weights.h"
#include "support/test_support.h"

namespace clawmine::test {

// Host storage of any dtype with a view; the bytes live in a std::vector.
struct HostTensor {
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<uint8_t> bytes;

  HostTensor() = default;
  HostTensor(DType t, Shape s) : dtype(t), shape(std::move(s)), bytes(shape_numel(shape) * dtype_size(t)) {}
  TensorView view() const {
    TensorView v;
    v.dtype = dtype;
    v.shape = shape;
    v.data = const_cast<uint8_t*>(bytes.data());
    return v;
  }
  template <typename T>
  T* as() { return reinterpret_cast<T*>(bytes.data()); }
};

// A float vector viewed with a shape (the vector must outlive the view).
inline TensorView f32_view(std::vector<float>& v, Shape shape) {
  TensorView t;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  t.data = v.data();
  return t;
}
inline TensorView i32_view(std::vector<int32_t>& v, Shape shape) {
  TensorView t;
  t.dtype = DType::kI32;
  t.shape = std::move(shape);
  t.data = v.data();
  return t;
}

// A dense F32 LinearWeight over caller-owned storage.
inline model::deepseek_v4::LinearWeight dense_weight(std::vector<float>& w, int64_t out, int64_t in,
                                                     std::string name = "test.w") {
  model::deepseek_v4::LinearWeight lw;
  lw.name = std::move(name);
  lw.out_features = out;
  lw.in_features = in;
  lw.format = model::deepseek_v4::WeightFormat::kDense;
  lw.weight = f32_view(w, {out, in});
  return lw;
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Tolerance for float32 outputs of ops that accumulate in double and round once, against a
// double reference: a few float ulps relative to the largest output.
inline constexpr double kTightRel = 1e-6;

}  // namespace clawmine::test
