#include "diag/host_read.h"

#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace clawmine::diag {

bool is_float_dtype(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

bool host_readable(const ops::Backend& be, const TensorView& v, const char* what) {
  if (be.device() != Device::kCpu) return false;
  CLAWMINE_CHECK(v.device == Device::kCpu, "diag: ", what, " is a device view but backend ", be.name(),
                 " computes on the CPU");
  return true;
}

HostF32::HostF32(ops::Backend& be, const TensorView& v, bool copy) : shape_(v.shape) {
  if (v.empty() || v.numel() == 0) return;
  CLAWMINE_CHECK(is_float_dtype(v.dtype), "diag: cannot read a ", dtype_name(v.dtype), " tensor as floats");
  n_ = v.numel();
  if (host_readable(be, v) && v.dtype == DType::kF32 && !copy) {
    data_ = static_cast<const float*>(v.data);
    return;
  }
  storage_.resize(static_cast<size_t>(n_));
  if (v.dtype == DType::kF32) {
    if (host_readable(be, v)) std::memcpy(storage_.data(), v.data, v.nbytes());
    else be.download(v, storage_.data());
  } else {
    std::vector<uint16_t> half(static_cast<size_t>(n_));
    if (host_readable(be, v)) std::memcpy(half.data(), v.data, v.nbytes());
    else be.download(v, half.data());
    for (int64_t i = 0; i < n_; ++i)
      storage_[i] = v.dtype == DType::kBF16 ? bf16_to_f32(half[i]) : f16_to_f32(half[i]);
  }
  data_ = storage_.data();
}

TensorView HostF32::view() const {
  TensorView v;
  v.dtype = DType::kF32;
  v.device = Device::kCpu;
  v.shape = shape_;
  v.data = const_cast<float*>(data_);
  return v;
}

std::vector<int32_t> host_i32(ops::Backend& be, const TensorView& v) {
  if (v.empty() || v.numel() == 0) return {};
  CLAWMINE_CHECK(v.dtype == DType::kI32, "diag: expected an I32 tensor, got ", dtype_name(v.dtype));
  std::vector<int32_t> out(static_cast<size_t>(v.numel()));
  if (host_readable(be, v)) std::memcpy(out.data(), v.data, v.nbytes());
  else be.download(v, out.data());
  return out;
}

namespace {

// A host Buffer holding v's bytes (downloaded through be); empty views stay empty.
TensorView download_into(ops::Backend& be, const TensorView& v, std::vector<Buffer>& keep) {
  if (v.empty()) return v;
  keep.emplace_back(v.dtype, v.shape);
  if (v.numel() > 0) be.download(v, keep.back().view().data);
  return keep.back().view();
}

}  // namespace

HostLinearWeight::HostLinearWeight(ops::Backend& be, const ops::LinearWeight& w) : w_(w) {
  if (w.weight.empty() || host_readable(be, w.weight, w.name.c_str())) return;
  copy_ = std::make_unique<ops::LinearWeight>(w);
  for (TensorView* t : {&copy_->weight, &copy_->scale, &copy_->weight_scale_2, &copy_->input_scale})
    *t = download_into(be, *t, buffers_);
}

TensorView WeightScalars::host(const TensorView& v) {
  if (v.empty()) return v;
  auto [it, fresh] = copies_.try_emplace(v.data, v.dtype, v.shape);
  if (fresh && v.numel() > 0) be_.download(v, it->second.view().data);
  return it->second.view();
}

const ops::LinearWeight& WeightScalars::with_host_scalars(const ops::LinearWeight& w) {
  if (w.weight.empty() || host_readable(be_, w.weight, w.name.c_str())) return w;
  tmp_ = w;
  tmp_.weight_scale_2 = host(w.weight_scale_2);
  tmp_.input_scale = host(w.input_scale);
  return tmp_;
}

std::vector<float> linear_on_host_rows(ops::Backend& be, const ops::LinearWeight& w, const float* x, int64_t rows) {
  std::vector<float> y(static_cast<size_t>(rows * w.out_features));
  if (rows == 0) return y;
  if (be.device() == Device::kCpu) {
    be.linear(TensorView{DType::kF32, Device::kCpu, {rows, w.in_features}, const_cast<float*>(x)}, w,
              TensorView{DType::kF32, Device::kCpu, {rows, w.out_features}, y.data()});
    return y;
  }
  ops::ScratchFrame frame(be);
  const TensorView xd = be.scratch(DType::kF32, {rows, w.in_features});
  const TensorView yd = be.scratch(DType::kF32, {rows, w.out_features});
  be.upload(x, xd);
  be.linear(xd, w, yd);
  be.download(yd, y.data());
  return y;
}

}  // namespace clawmine::diag
