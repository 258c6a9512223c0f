// Data errors found by CUDA kernels (a token id outside the vocabulary, a hash-routing table
// entry that is not an expert id). A kernel cannot throw: it records the first such error in a
// small device record, skips the bad item without reading or writing out of bounds (the
// kernel's comment says what it writes instead), and the next synchronizing call reports it.
// Plain C++ header: memory.cu's synchronize() and download() call check_op_errors (never inside
// a captured decode step), tests call it directly.
#pragma once

#include "ops/backend.h"

namespace clawmine::backend::cuda {

class CudaBackend;

// Waits for the backend's stream, then throws clawmine::Error describing the first data error
// recorded since the last check (clearing it, so it is reported once); returns when there is none.
// Cheap when no op that can record errors has run yet (nothing to read back).
void check_op_errors(CudaBackend& backend);
// The same for a Backend that must be a CUDA backend (Error otherwise).
void check_op_errors(ops::Backend& backend);

}  // namespace clawmine::backend::cuda
