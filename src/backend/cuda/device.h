// CUDA device discovery. Built only when nvcc is present; every caller also works (and
// GPU tests skip) when no device is visible at run time.
#pragma once

#include <string>

namespace clawmine::backend::cuda {

int device_count();               // 0 when the driver or a device is missing
std::string device_summary(int device);  // "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"

}  // namespace clawmine::backend::cuda
