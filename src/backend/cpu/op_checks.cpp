// Argument checks for the CPU backend ops.
#include "backend/cpu/op_checks.h"

#include "core/error.h"

namespace clawmine::backend::cpu {

void* host_arg(const TensorView& t, const char* op, const char* arg) {
  if (t.data == nullptr && t.numel() != 0) throw Error(str_cat("cpu ", op, ": ", arg, " has no data"));
  if (t.device != Device::kCpu) throw Error(str_cat("cpu ", op, ": ", arg, " is not in host memory"));
  return t.data;
}

float* f32_arg(const TensorView& t, const char* op, const char* arg) {
  if (t.dtype != DType::kF32)
    throw Error(str_cat("cpu ", op, ": ", arg, " has dtype ", dtype_name(t.dtype), ", expected F32"));
  return static_cast<float*>(host_arg(t, op, arg));
}

int32_t* i32_arg(const TensorView& t, const char* op, const char* arg) {
  if (t.dtype != DType::kI32)
    throw Error(str_cat("cpu ", op, ": ", arg, " has dtype ", dtype_name(t.dtype), ", expected I32"));
  return static_cast<int32_t*>(host_arg(t, op, arg));
}

void expect_numel(const TensorView& t, int64_t expected, const char* op, const char* arg) {
  if (t.numel() != expected)
    throw Error(str_cat("cpu ", op, ": ", arg, " has shape ", shape_str(t.shape), " (", t.numel(),
                        " elements), expected ", expected, " elements"));
}

void expect_shape(const TensorView& t, const Shape& shape, const char* op, const char* arg) {
  if (t.shape != shape)
    throw Error(str_cat("cpu ", op, ": ", arg, " has shape ", shape_str(t.shape), ", expected ", shape_str(shape)));
}

void expect_rank(const TensorView& t, int rank, const char* op, const char* arg) {
  if (t.rank() != rank)
    throw Error(str_cat("cpu ", op, ": ", arg, " has shape ", shape_str(t.shape), ", expected rank ", rank));
}

}  // namespace clawmine::backend::cpu
