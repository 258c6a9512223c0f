// linear_multi (ops/backend.h): projections of one x by several weights of the same shape (a
// compressor's wkv and wgate) as ONE GEMV launch: problem z = job z over a cached device table of
// their WeightDescs (GemmArgs descs, as swiglu_mlp runs w1 and w3), output z at
// out0 + z * out_z. Taken only where the launch computes every output element exactly as
// linear() does, so results are bit-identical to the jobs one by one:
//   - T <= 2 tokens and the FMA GEMV (launch_gemv sends F32 activations and dense F32/BF16/F16
//     weights at <= 2 tokens there under CLAWMINE_GEMV=auto or mma): its split of a row's k range
//     depends on K and the format alone, never on the number of rows or problems;
//   - no activation transform (W8A8/W4A4) on any weight, 16-byte aligned weight rows and x;
//   - equal out_features and in_features, one output dtype, each output contiguous [T, n] and
//     output z starting z * out_z elements after output 0.
// Anything else runs linear() per job.
#include <string>
#include <vector>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/linear_kernels.cuh"

namespace clawmine::backend::cuda {
namespace {

constexpr int64_t kMultiMaxRows = 2;  // tokens up to which every dense weight goes to the FMA GEMV
constexpr int64_t kMultiMaxJobs = 8;

// The device table of a group of weights, cached under the first job's weight address and
// rebuilt (uploaded) when any weight of the group changes.
struct MultiTable {
  std::vector<const void*> key;
  TensorView dev;
};

void fingerprint(const ops::Backend::LinearJob* jobs, int64_t n, std::vector<const void*>& key) {
  key.clear();
  auto value = [](uint64_t v) { return reinterpret_cast<const void*>(static_cast<uintptr_t>(v)); };
  for (int64_t i = 0; i < n; ++i) {
    const LinearWeight& w = *jobs[i].w;
    // Addresses alone are not enough: freed device memory is reused by the arena.
    key.push_back(value(static_cast<uint64_t>(w.format) | static_cast<uint64_t>(w.weight.dtype) << 8 |
                        static_cast<uint64_t>(w.scale.dtype) << 16));
    key.push_back(value(static_cast<uint64_t>(w.out_features)));
    key.push_back(value(static_cast<uint64_t>(w.in_features)));
    key.push_back(w.weight.data);
    key.push_back(w.scale.data);
    key.push_back(w.weight_scale_2.data);
    key.push_back(w.input_scale.data);
    key.push_back(value(static_cast<uint64_t>(w.input_scale_trusted) + 1));
  }
}

bool dense(WFmt f) { return f == WFmt::kF32 || f == WFmt::kBF16 || f == WFmt::kF16; }

}  // namespace

void CudaBackend::linear_multi(const TensorView& x, const LinearJob* jobs, int64_t n_jobs) {
  auto one_by_one = [&] {
    for (int64_t i = 0; i < n_jobs; ++i) linear(x, *jobs[i].w, jobs[i].out);
  };
  if (n_jobs < 2 || n_jobs > kMultiMaxJobs) return one_by_one();
  for (int64_t i = 0; i < n_jobs; ++i)
    CLAWMINE_CHECK(jobs[i].w != nullptr, "cuda linear_multi: job ", i, " has no weight");
  const LinearWeight& w0 = *jobs[0].w;
  const TensorView& out0 = jobs[0].out;
  const int64_t K = w0.in_features, N = w0.out_features;
  if (x.device != Device::kCuda || x.data == nullptr || (x.dtype != DType::kF32 && x.dtype != DType::kBF16) ||
      x.rank() < 1 || K <= 0 || N <= 0 || x.dim(-1) != K)
    return one_by_one();  // linear() reports what is wrong
  const int64_t T = x.numel() / K;
  if (T < 1 || T > kMultiMaxRows) return one_by_one();
  const GemvKernel kernel = gemv_kernel_in_use();
  if (kernel == GemvKernel::kStream) return one_by_one();  // shape-dependent streaming splits
  const ActPolicyDev pol = act_policy_dev(linear_policy());
  const size_t esize = dtype_size(out0.dtype);
  const auto* base = static_cast<const char*>(out0.data);
  int64_t out_z = 0;
  uint32_t fmt_mask = 0;
  for (int64_t i = 0; i < n_jobs; ++i) {
    const LinearWeight& w = *jobs[i].w;
    const TensorView& o = jobs[i].out;
    if (w.in_features != K || w.out_features != N || o.device != Device::kCuda || o.data == nullptr ||
        o.dtype != out0.dtype || (o.dtype != DType::kF32 && o.dtype != DType::kBF16) || o.numel() != T * N ||
        o.dim(-1) != N)
      return one_by_one();
    const WeightDesc d = make_weight_desc(w, "linear_multi");
    if (act_path(pol, d.fmt) != kActNone || !weight_rows_aligned(d)) return one_by_one();
    if (x.dtype == DType::kBF16 && !dense(static_cast<WFmt>(d.fmt))) return one_by_one();
    fmt_mask |= 1u << d.fmt;
    const std::ptrdiff_t off = static_cast<const char*>(o.data) - base;
    if (off % static_cast<std::ptrdiff_t>(esize) != 0) return one_by_one();
    const int64_t z_off = off / static_cast<std::ptrdiff_t>(esize);
    if (i == 1) out_z = z_off;
    if (i >= 1 && (out_z == 0 || z_off != i * out_z)) return one_by_one();
  }
  const size_t xsz = dtype_size(x.dtype);
  if (reinterpret_cast<uintptr_t>(x.data) % 16 != 0 || (K * static_cast<int64_t>(xsz)) % 16 != 0) return one_by_one();

  // The table: built on every eligible call's first use (eager decode steps precede captures).
  // Keyed one byte into the first weight: no other op keys state by a LinearWeight interior.
  MultiTable* tab = op_state<MultiTable>(reinterpret_cast<const char*>(jobs[0].w) + 1);
  std::vector<const void*> key;
  fingerprint(jobs, n_jobs, key);
  if (tab->key != key) {
    std::vector<WeightDesc> host(static_cast<size_t>(n_jobs));
    for (int64_t i = 0; i < n_jobs; ++i) host[i] = make_weight_desc(*jobs[i].w, "linear_multi");
    const int64_t bytes = n_jobs * static_cast<int64_t>(sizeof(WeightDesc));
    if (tab->dev.empty() || tab->dev.numel() != bytes) {
      if (!tab->dev.empty()) release(tab->dev);
      tab->dev = {};
      tab->dev = allocate(DType::kU8, {bytes});
    }
    upload(host.data(), tab->dev);
    tab->key = std::move(key);
  }

  GemmCall c;
  c.a.descs = static_cast<const WeightDesc*>(tab->dev.data);
  c.a.desc_stride = 0;
  c.a.desc_offset = 0;  // problem 0, z = job
  c.a.n_z = static_cast<int32_t>(n_jobs);
  c.a.n_rows = N;
  c.a.K = K;
  c.a.x = x.data;
  c.a.ldx = K;
  c.a.x_z = 0;  // every problem reads the same x
  c.a.out = out0.data;
  c.a.out_bf16 = out0.dtype == DType::kBF16;
  c.a.ldo = N;
  c.a.out_z = out_z;
  c.a.rows = T;
  c.a.tile_rows = gemv_tile_rows(T);
  c.x_dtype = x.dtype;
  c.fmt_mask = fmt_mask;
  c.w_vec = true;
  c.grid_tiles = static_cast<int>((T + c.a.tile_rows - 1) / c.a.tile_rows);
  run_gemm(*this, c);
}

}  // namespace clawmine::backend::cuda
