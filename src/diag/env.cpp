#include "diag/env.h"

#include <cstdlib>
#include <string_view>

namespace clawmine::diag {

DiagEnv read_diag_env() {
  DiagEnv env;
  const char* debug = std::getenv("CLAWMINE_DEBUG");
  const char* file = std::getenv("CLAWMINE_TRACE");
  if (file && *file) env.trace_file = file;
  env.trace = (debug && std::string_view(debug) != "" && std::string_view(debug) != "0") || !env.trace_file.empty();
  return env;
}

}  // namespace clawmine::diag
