#include "cli/bench_trace.h"

#include <cxxabi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>
#include <vector>

#include "core/error.h"

#ifdef CLAWMINE_HAVE_CUDA
#include "backend/cuda/kernel_trace.h"
#endif

namespace clawmine::cli {
namespace {

std::string demangle(const std::string& name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status), std::free);
  return status == 0 && d ? std::string(d.get()) : name;
}

// A CSV field: quoted, with its quotes doubled (kernel names hold commas).
std::string quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

DecodeTraceFile::DecodeTraceFile(const std::string& path, std::string flag, std::string steps)
    : path_(path), flag_(std::move(flag)), steps_(std::move(steps)) {
  // Checked without truncating: a run that fails before it records leaves an existing file as it was.
  const bool existed = ::access(path.c_str(), F_OK) == 0;
  std::FILE* probe = std::fopen(path.c_str(), "a");
  if (!probe) throw Error(str_cat(flag_, ": cannot write '", path, "'"));
  std::fclose(probe);
  if (!existed) std::remove(path.c_str());
}

int64_t DecodeTraceFile::record(int warm, int steps, const std::string& what, const std::function<void(int)>& step) {
#ifdef CLAWMINE_HAVE_CUDA
  using backend::cuda::KernelRecord;
  backend::cuda::KernelTrace trace;
  trace.start();
  for (int i = 0; i < warm; ++i) step(i);
  std::vector<uint64_t> marks;
  for (int i = 0; i < steps; ++i) {
    marks.push_back(backend::cuda::kernel_trace_now());
    step(warm + i);
  }
  const std::vector<KernelRecord> kernels = trace.stop();
  if (marks.empty()) return 0;
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path_.c_str(), "w"), std::fclose);
  std::FILE* f = file.get();
  if (!f) throw Error(str_cat(flag_, ": cannot write '", path_, "'"));
  std::fprintf(f, "# clawmine kernel trace: %s; %d %s, GPU timestamps in ns from the first step's start\n",
               what.c_str(), steps, steps_.c_str());
  std::fprintf(f, "step,start_ns,end_ns,stream,graph,graph_node,grid,block,regs,smem,name\n");
  int64_t n = 0;
  int s = 0;  // the step of k (kernels come in start order)
  for (const KernelRecord& k : kernels) {
    if (k.start_ns < marks[0]) continue;  // before the first written step (the warm ones)
    while (s + 1 < static_cast<int>(marks.size()) && k.start_ns >= marks[static_cast<size_t>(s) + 1]) ++s;
    std::fprintf(f, "%d,%llu,%llu,%u,%u,%llu,%dx%dx%d,%dx%dx%d,%u,%u,%s\n", s,
                 static_cast<unsigned long long>(k.start_ns - marks[0]),
                 static_cast<unsigned long long>(k.end_ns - marks[0]), k.stream, k.graph_id,
                 static_cast<unsigned long long>(k.graph_node), k.grid[0], k.grid[1], k.grid[2], k.block[0], k.block[1],
                 k.block[2], k.regs, k.smem, quoted(demangle(k.name)).c_str());
    ++n;
  }
  if (std::fflush(f) != 0 || std::ferror(f)) throw Error(str_cat(flag_, ": writing '", path_, "' failed"));
  return n;
#else
  (void)warm, (void)steps, (void)what, (void)step;
  throw Error(str_cat(flag_, ": this build has no CUDA backend"));
#endif
}

}  // namespace clawmine::cli
