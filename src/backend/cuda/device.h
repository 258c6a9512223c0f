// CUDA device discovery. Built only when nvcc is present; every caller also works (and
// GPU tests skip) when no device is visible at run time.
#pragma once

#include <string>

namespace clawmine::backend::cuda {

int device_count();               // 0 when the driver or a device is missing
std::string device_summary(int device);  // "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"

// Programmatic dependent launch (common.cuh, launch_kernel): every backend kernel may overlap its
// launch and prologue with the tail of the kernel before it. Off unless the environment variable
// CLAWMINE_PDL is "1" (read once, at the first launch): on the H100 it made a V4-Flash decode step
// slower (18.9 vs 17.2 ms, docs/PERFORMANCE.md). Results are identical either way.
bool pdl_enabled();
// Tests only: launches from now on use PDL or not (overrides CLAWMINE_PDL).
void set_pdl_enabled_for_tests(bool on);

// An on/off tuning switch from the environment (CLAWMINE_PDL, CLAWMINE_GEMV_PDL,
// CLAWMINE_MOE_OVERLAP, ...): "1" on, "0" off, unset or empty `fallback`; any other value is an
// error naming the variable (clawmine::Error).
bool env_switch(const char* name, bool fallback);

}  // namespace clawmine::backend::cuda
