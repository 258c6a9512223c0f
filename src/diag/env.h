// The one place clawmine reads diagnostic environment variables (docs/DIAGNOSTICS.md):
//   CLAWMINE_DEBUG=1        trace every op (diag/trace.h): human summary on stderr at the end;
//   CLAWMINE_TRACE=FILE     JSON lines of the trace go to FILE ("-": stderr); implies tracing.
// Command-line flags (--trace FILE) take precedence over these.
#pragma once

#include <string>

namespace clawmine::diag {

struct DiagEnv {
  bool trace = false;       // CLAWMINE_DEBUG set to anything but "" or "0", or CLAWMINE_TRACE set
  std::string trace_file;   // CLAWMINE_TRACE ("" when unset)
};

DiagEnv read_diag_env();

}  // namespace clawmine::diag
