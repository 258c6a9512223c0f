// op_errors.h: one OpErrorRecord per backend, kept in op_state (freed with the arena).
#include <cstdint>
#include <cstring>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/op_errors.cuh"

namespace clawmine::backend::cuda {
namespace {

struct OpErrorState {
  OpErrorRecord* record = nullptr;
};
const char kOpErrorKey = 0;  // its address keys the state

float float_of_bits(long long v) {
  const auto bits = static_cast<uint32_t>(v);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::string describe(const OpErrorRecord& r) {
  switch (r.code) {
    case kOpErrorEmbedId:
      return str_cat("cuda embed: token id ", r.v[0], " (position ", r.v[1], ") is outside the vocabulary of size ",
                     r.v[2], " (its row was written as zeros)");
    case kOpErrorRouteId:
      return str_cat("cuda moe_route: token id ", r.v[0], " (position ", r.v[1], ") is outside tid2eid's ", r.v[2],
                     " rows");
    case kOpErrorRouteExpert:
      return str_cat("cuda moe_route: tid2eid[", r.v[0], ", ", r.v[1], "] = ", r.v[2], " is not an expert id in [0, ",
                     r.v[3], ")");
    case 4:  // moe.cu
      return str_cat("cuda moe_experts: expert id ", r.v[0], " (token ", r.v[1], ", slot ", r.v[2],
                     ") is not in [0, ", r.v[3], ") (the slot was skipped)");
    case kOpErrorActStaticScale:
      return str_cat("cuda linear: --act-scale static needs a finite, positive input_scale, but an NVFP4 "
                     "projection's is ", float_of_bits(r.v[0]),
                     " (its rows were written as NaN; the non-finite guard names the linear; use --act-scale "
                     "dynamic or auto)");
    case kOpErrorCompressRows:
      return str_cat("cuda compress_chunk: a chunk of ", r.v[1], " tokens at position ", r.v[0], " touches ",
                     (r.v[0] + r.v[1] - 1) / r.v[2] - r.v[0] / r.v[2] + 1, " windows of rate ", r.v[2],
                     " but pooled has ", r.v[3], " rows (nothing was pooled)");
    case kOpErrorScatterRow:
      return str_cat("cuda scatter_rows: key ", r.v[0], " of source row ", r.v[2], " / ", r.v[1],
                     " is outside the ", r.v[3], " rows of dst (the row was not written)");
    default:
      return str_cat("cuda: a kernel recorded an unknown data error (code ", r.code, ")");
  }
}

}  // namespace

OpErrorRecord* op_error_record(CudaBackend& be) {
  auto* st = be.op_state<OpErrorState>(&kOpErrorKey);
  if (st->record == nullptr) {
    const TensorView v = be.allocate(DType::kI64, {static_cast<int64_t>(sizeof(OpErrorRecord) / 8)});
    CLAWMINE_CUDA_CHECK(cudaMemsetAsync(v.data, 0, sizeof(OpErrorRecord), be.stream()));
    st->record = static_cast<OpErrorRecord*>(v.data);  // never released: the arena goes with the backend
  }
  return st->record;
}

void check_op_errors(CudaBackend& be) {
  auto* st = be.op_state<OpErrorState>(&kOpErrorKey);
  if (st->record == nullptr) return;
  OpErrorRecord host{};
  CLAWMINE_CUDA_CHECK(cudaMemcpyAsync(&host, st->record, sizeof host, cudaMemcpyDeviceToHost, be.stream()));
  CLAWMINE_CUDA_CHECK(cudaStreamSynchronize(be.stream()));
  if (host.code == kOpErrorNone) return;
  CLAWMINE_CUDA_CHECK(cudaMemsetAsync(st->record, 0, sizeof host, be.stream()));
  CLAWMINE_CUDA_CHECK(cudaStreamSynchronize(be.stream()));
  throw Error(describe(host));
}

void check_op_errors(ops::Backend& backend) {
  auto* be = dynamic_cast<CudaBackend*>(&backend);
  CLAWMINE_CHECK(be != nullptr, "check_op_errors: backend ", backend.name(), " is not the CUDA backend");
  check_op_errors(*be);
}

}  // namespace clawmine::backend::cuda
