// The device side of op_errors.h: the record kernels write a data error into, and the host
// accessor that allocates it (from the arena, zeroed) on first use.
#pragma once

#include <cstdint>

#include "backend/cuda/op_errors.h"

namespace clawmine::backend::cuda {

enum OpErrorCode : unsigned long long {
  kOpErrorNone = 0,
  kOpErrorEmbedId = 1,      // v = {id, position, vocabulary size}
  kOpErrorRouteId = 2,      // v = {id, position, tid2eid rows}
  kOpErrorRouteExpert = 3,  // v = {table row (token id), slot k, entry, expert count}
  // 4: moe.cu's expert-id error, v = {expert id, token, slot, expert count} (its constant lives there)
  kOpErrorActStaticScale = 5,  // v = {bits of the input_scale as int32} (linear_act_quant.cu)
  kOpErrorCompressRows = 6, // v = {p0, T, rate, pooled rows given}
  kOpErrorScatterRow = 7,   // v = {key, divisor, source row, dst rows}
};

struct OpErrorRecord {
  unsigned long long code;
  long long v[4];
};

// Records an error unless one is recorded already (the first writer wins; its payload is
// complete once the kernel has finished).
__device__ __forceinline__ void report_op_error(OpErrorRecord* r, unsigned long long code, long long a, long long b,
                                                long long c, long long d = 0) {
  if (atomicCAS(&r->code, 0ull, code) == 0ull) {
    r->v[0] = a;
    r->v[1] = b;
    r->v[2] = c;
    r->v[3] = d;
  }
}

// The backend's record (device memory), allocated and zeroed on the stream at first use.
OpErrorRecord* op_error_record(CudaBackend& backend);

}  // namespace clawmine::backend::cuda
