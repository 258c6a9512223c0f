#include <cuda_runtime.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/device.h"
#include "core/error.h"

namespace clawmine::backend::cuda {

bool env_switch(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  if (std::strcmp(v, "1") == 0) return true;
  if (std::strcmp(v, "0") == 0) return false;
  throw Error(str_cat(name, "=", v, ": expected 0 or 1"));
}

int64_t env_count(const char* name, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(v, &end, 10);
  if (*end != '\0' || errno != 0 || n < lo || n > hi)
    throw Error(str_cat(name, "=", v, ": expected an integer from ", lo, " to ", hi));
  return static_cast<int64_t>(n);
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

namespace {
// -1: not read yet; 0 off; 1 on.
std::atomic<int> g_pdl{-1};
}  // namespace

bool pdl_enabled() {
  return env_setting(g_pdl, [] { return env_switch("CLAWMINE_PDL", true) ? 1 : 0; }) == 1;  // on unless turned off
}

void set_pdl_enabled_for_tests(bool on) { g_pdl.store(on ? 1 : 0, std::memory_order_relaxed); }

std::string device_summary(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "unavailable";
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s, sm_%d%d, %d SMs, %.1f GiB", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, static_cast<double>(prop.totalGlobalMem) / (1ull << 30));
  return buf;
}

}  // namespace clawmine::backend::cuda
