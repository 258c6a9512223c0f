// `clawmine bench --kernel-trace FILE` / `--prefill-trace FILE`: the GPU's kernel timeline of a few
// decode steps or of one prefill (CUPTI activity records, backend/cuda/kernel_trace.h), as CSV for
// tools/kernel_timeline.py.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace clawmine::cli {

// The trace's file: checked for writing first (so a bad path fails before the model loads, and an
// existing file is not truncated by a run that fails before it records), written by record().
class DecodeTraceFile {
 public:
  // Error naming `flag` and path if it cannot be written; `steps` names what a step is in the header.
  explicit DecodeTraceFile(const std::string& path, std::string flag = "--kernel-trace",
                           std::string steps = "decode steps");

  // Runs step(i) for i = 0 .. warm+steps-1 (each a whole decode step or prefill, synchronized: its
  // logits or token read back) with kernel records on, then writes one row per kernel of the last `steps`: the step
  // it started in, start and end in ns from that first step's start, stream, graph, grid, block,
  // demangled name. The `warm` steps first (not written) let a step graph be recorded while the
  // records are on. Returns the kernels written. `what` heads the file as a comment.
  int64_t record(int warm, int steps, const std::string& what, const std::function<void(int)>& step);

  const std::string& flag() const { return flag_; }

 private:
  std::string path_, flag_, steps_;
};

}  // namespace clawmine::cli
