// Reading tensors back on the host for diagnostics, whatever device the backend computes on.
// On a CPU backend a tensor is read in place (zero copy, as before the device backends). On any
// other backend it is downloaded through the backend (Backend::download waits for every earlier
// op, so each read is one synchronization: acceptable in diagnostics, never on the serving path)
// and BF16/F16 are widened to F32. Weights of a placed model are device views too: their scalars
// (NVFP4 weight_scale_2, input_scale) and, on error paths only, whole tensors come back the same way.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "ops/backend.h"

namespace clawmine::diag {

// F32, BF16 or F16.
bool is_float_dtype(DType t);

// True when v can be read directly by the host: be computes on the CPU (and v is CPU memory,
// which a CPU backend requires: a device view there is an error naming `what`).
bool host_readable(const ops::Backend& be, const TensorView& v, const char* what = "tensor");

// The values of a float tensor (F32, BF16, F16) as F32 on the host: v's own memory when it is
// host readable F32 and `copy` is false, else a private copy. Take the copy when the next op may
// overwrite v (in-place ops, outputs that alias inputs). An empty view gives size 0.
class HostF32 {
 public:
  HostF32(ops::Backend& be, const TensorView& v, bool copy = false);
  HostF32(const HostF32&) = delete;
  HostF32& operator=(const HostF32&) = delete;
  const float* data() const { return data_; }
  int64_t size() const { return n_; }
  // A host F32 view of the values with v's shape.
  TensorView view() const;

 private:
  Shape shape_;
  const float* data_ = nullptr;
  int64_t n_ = 0;
  std::vector<float> storage_;
};

// The elements of an I32 tensor on the host (empty view: empty vector).
std::vector<int32_t> host_i32(ops::Backend& be, const TensorView& v);

// A LinearWeight the host can decode: w itself when host readable, else a copy whose weight,
// scale and scalars are downloaded through be (whole tensors: error paths and audits only).
class HostLinearWeight {
 public:
  HostLinearWeight(ops::Backend& be, const ops::LinearWeight& w);
  HostLinearWeight(const HostLinearWeight&) = delete;
  HostLinearWeight& operator=(const HostLinearWeight&) = delete;
  const ops::LinearWeight& get() const { return copy_ ? *copy_ : w_; }

 private:
  const ops::LinearWeight& w_;
  std::unique_ptr<ops::LinearWeight> copy_;
  std::vector<Buffer> buffers_;
};

// Host copies of LinearWeight scalars (weight_scale_2, input_scale), each downloaded once and
// kept by device address, so a decorator can label every linear's compute path (linear_path.h)
// without a synchronization per call. The weights must outlive the cache.
class WeightScalars {
 public:
  explicit WeightScalars(ops::Backend& be) : be_(be) {}
  // w itself when host readable; else a copy of w whose weight_scale_2 and input_scale views are
  // host memory (weight and scale stay device views: not for decoding), valid until the next call.
  const ops::LinearWeight& with_host_scalars(const ops::LinearWeight& w);

 private:
  TensorView host(const TensorView& v);
  ops::Backend& be_;
  std::unordered_map<const void*, Buffer> copies_;
  ops::LinearWeight tmp_;
};

// y = x @ W^T through be for host rows x [rows, w.in_features] F32; returns y [rows, out] F32.
// On a CPU backend it runs on the host memory directly; otherwise x goes up to scratch, the op
// runs there and y comes back (one synchronization).
std::vector<float> linear_on_host_rows(ops::Backend& be, const ops::LinearWeight& w, const float* x, int64_t rows);

}  // namespace clawmine::diag
