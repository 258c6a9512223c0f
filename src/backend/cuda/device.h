// CUDA device discovery. Built only when nvcc is present; every caller also works (and
// GPU tests skip) when no device is visible at run time.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

namespace clawmine::backend::cuda {

int device_count();               // 0 when the driver or a device is missing
std::string device_summary(int device);  // "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB"

// Programmatic dependent launch (common.cuh, launch_kernel): every backend kernel may overlap its
// launch and prologue with the kernel before it. On unless the environment variable CLAWMINE_PDL
// is "0" (read once, at the first launch): with every kernel triggering its successor only after
// its own wait, a V4-Flash decode step on the H100 took 8.64 / 8.66 ms with it against 8.81 / 8.75
// without (docs/PERFORMANCE.md, tenth session). Results are identical either way.
bool pdl_enabled();
// Tests only: launches from now on use PDL or not (overrides CLAWMINE_PDL).
void set_pdl_enabled_for_tests(bool on);

// An on/off tuning switch from the environment (CLAWMINE_PDL, CLAWMINE_GEMV_PDL,
// CLAWMINE_MOE_OVERLAP, ...): "1" on, "0" off, unset or empty `fallback`; any other value is an
// error naming the variable (clawmine::Error).
bool env_switch(const char* name, bool fallback);
// A count from the environment (CLAWMINE_MOE_GEMV_MAX_TOKENS, ...): 0 when unset or empty, else a
// decimal integer in [lo, hi] (lo >= 1); any other value is an error naming the variable.
int64_t env_count(const char* name, int64_t lo, int64_t hi);
// A setting read from the environment on first use: `v` holds -1 until then, when read()'s value
// (>= 0) is stored once (a racing first use keeps the first store); tests store their own value
// in `v`, or -1 to go back to the environment. read() may throw (a bad value).
inline int env_setting(std::atomic<int>& v, int (*read)()) {
  int x = v.load(std::memory_order_relaxed);
  if (x < 0) {
    int expected = -1;
    v.compare_exchange_strong(expected, read(), std::memory_order_relaxed);
    x = v.load(std::memory_order_relaxed);
  }
  return x;
}

}  // namespace clawmine::backend::cuda
