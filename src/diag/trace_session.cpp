#include "diag/trace_session.h"

#include <cstdio>

#include "diag/env.h"

namespace clawmine::diag {

TraceSession::TraceSession(ops::Backend& inner, const std::string& trace_flag) : inner_(inner) {
  const DiagEnv env = read_diag_env();
  if (trace_flag.empty() && !env.trace) return;
  tracer_ = std::make_unique<Tracer>(inner, TraceOptions{trace_flag.empty() ? env.trace_file : trace_flag});
}

TraceSession::~TraceSession() {
  if (tracer_) std::fputs(tracer_->summary().c_str(), stderr);
}

}  // namespace clawmine::diag
