// CUPTI activity records of kernels (kernel_trace.h). CUPTI is opened at run time (dlopen: the
// binaries do not depend on it; CLAWMINE_CUPTI_LIB names the library where the usual places miss it)
// and hands out and takes back buffers through two callbacks; completed buffers are parsed into a
// process-wide list that stop() returns.
#include "backend/cuda/kernel_trace.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

#if __has_include(<cupti.h>)
#include <cupti.h>
#define CLAWMINE_HAVE_CUPTI_HEADER 1
#endif

namespace clawmine::backend::cuda {

#ifdef CLAWMINE_HAVE_CUPTI_HEADER
namespace {

// The CUPTI entry points this file calls, resolved once from the library.
struct Cupti {
  decltype(&cuptiActivityRegisterCallbacks) register_callbacks = nullptr;
  decltype(&cuptiActivityEnable) enable = nullptr;
  decltype(&cuptiActivityDisable) disable = nullptr;
  decltype(&cuptiActivityFlushAll) flush_all = nullptr;
  decltype(&cuptiActivityGetNextRecord) next_record = nullptr;
  decltype(&cuptiGetResultString) result_string = nullptr;
  decltype(&cuptiGetTimestamp) timestamp = nullptr;
  std::string error;  // why it could not be opened ("" when it was)
};

const Cupti& cupti() {
  static const Cupti c = [] {
    Cupti x;
    std::vector<std::string> names;
    if (const char* env = std::getenv("CLAWMINE_CUPTI_LIB"); env && *env) names.push_back(env);
    for (const char* n : {"libcupti.so.13", "libcupti.so", "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so",
                          "/usr/local/cuda/lib64/libcupti.so", "/usr/local/cuda/lib/libcupti.so"})
      names.push_back(n);
    void* h = nullptr;
    for (const std::string& n : names)
      if ((h = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    if (h == nullptr) {
      x.error = "libcupti (the CUDA toolkit's profiling library) was not found; set CLAWMINE_CUPTI_LIB to its path";
      return x;
    }
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (fn == nullptr && x.error.empty()) x.error = str_cat("libcupti lacks ", name);
    };
    sym(x.register_callbacks, "cuptiActivityRegisterCallbacks");
    sym(x.enable, "cuptiActivityEnable");
    sym(x.disable, "cuptiActivityDisable");
    sym(x.flush_all, "cuptiActivityFlushAll");
    sym(x.next_record, "cuptiActivityGetNextRecord");
    sym(x.result_string, "cuptiGetResultString");
    sym(x.timestamp, "cuptiGetTimestamp");
    return x;
  }();
  return c;
}

std::mutex g_mu;
std::vector<KernelRecord> g_records;
bool g_active = false;

void check(CUptiResult r, const char* call) {
  if (r == CUPTI_SUCCESS) return;
  const char* msg = nullptr;
  cupti().result_string(r, &msg);
  throw Error(str_cat("kernel trace: ", call, " failed: ", msg ? msg : "unknown CUPTI error",
                      " (is another profiler attached, e.g. ncu?)"));
}

constexpr size_t kBufferBytes = size_t{8} << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<KernelRecord> got;
  CUpti_Activity* rec = nullptr;
  while (cupti().next_record(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
    KernelRecord r;
    r.name = k->name ? k->name : "?";
    r.stream = k->streamId;
    r.start_ns = k->start;
    r.end_ns = k->end;
    r.graph_id = k->graphId;
    r.graph_node = k->graphNodeId;
    r.grid[0] = k->gridX, r.grid[1] = k->gridY, r.grid[2] = k->gridZ;
    r.block[0] = k->blockX, r.block[1] = k->blockY, r.block[2] = k->blockZ;
    r.regs = k->registersPerThread;
    r.smem = static_cast<uint32_t>(std::max(k->staticSharedMemory, 0) + std::max(k->dynamicSharedMemory, 0));
    got.push_back(std::move(r));
  }
  std::free(buffer);
  const std::lock_guard<std::mutex> lock(g_mu);
  g_records.insert(g_records.end(), std::make_move_iterator(got.begin()), std::make_move_iterator(got.end()));
}

}  // namespace

bool KernelTrace::available() { return cupti().error.empty(); }

void KernelTrace::start() {
  if (!available()) throw Error(str_cat("kernel trace: ", cupti().error));
  {
    const std::lock_guard<std::mutex> lock(g_mu);
    if (g_active) throw Error("kernel trace: a recording is already running in this process");
    g_active = true;
    g_records.clear();
  }
  try {
    check(cupti().register_callbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
    check(cupti().enable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable(CONCURRENT_KERNEL)");
  } catch (...) {
    const std::lock_guard<std::mutex> lock(g_mu);
    g_active = false;
    throw;
  }
  on_ = true;
}

std::vector<KernelRecord> KernelTrace::stop() {
  if (!on_) return {};
  on_ = false;
  const CUptiResult flushed = cupti().flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  const CUptiResult disabled = cupti().disable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  std::vector<KernelRecord> out;
  {  // the recording ends even where CUPTI failed: the next start() may try again
    const std::lock_guard<std::mutex> lock(g_mu);
    out.swap(g_records);
    g_active = false;
  }
  check(flushed, "cuptiActivityFlushAll");
  check(disabled, "cuptiActivityDisable");
  std::stable_sort(out.begin(), out.end(),
                   [](const KernelRecord& a, const KernelRecord& b) { return a.start_ns < b.start_ns; });
  return out;
}

KernelTrace::~KernelTrace() {
  if (!on_) return;
  try {
    stop();
  } catch (...) {  // a destructor reports nothing: the recording is dropped
  }
}

uint64_t kernel_trace_now() {
  uint64_t t = 0;
  if (cupti().timestamp) cupti().timestamp(&t);
  return t;
}

#else  // built without CUPTI's header

bool KernelTrace::available() { return false; }
void KernelTrace::start() {
  throw Error("kernel trace: this build has no CUPTI (the CUDA toolkit's cupti.h was not found when it was built)");
}
std::vector<KernelRecord> KernelTrace::stop() { return {}; }
KernelTrace::~KernelTrace() = default;
uint64_t kernel_trace_now() { return 0; }

#endif

}  // namespace clawmine::backend::cuda
