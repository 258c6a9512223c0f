// Tracing for a CLI command: inserts the Tracer between the model and the backend when --trace
// FILE is given or the environment asks (diag/env.h), and prints the per-layer summary with the
// first non-finite op on stderr when the command ends. Off, backend() is the backend itself.
#pragma once

#include <memory>
#include <string>

#include "diag/trace.h"

namespace clawmine::diag {

class TraceSession {
 public:
  // trace_flag: the --trace value ("" when not given).
  TraceSession(ops::Backend& inner, const std::string& trace_flag);
  ~TraceSession();
  TraceSession(const TraceSession&) = delete;
  TraceSession& operator=(const TraceSession&) = delete;

  ops::Backend& backend() { return tracer_ ? *tracer_ : inner_; }
  const Tracer* tracer() const { return tracer_.get(); }

 private:
  ops::Backend& inner_;
  std::unique_ptr<Tracer> tracer_;
};

}  // namespace clawmine::diag
