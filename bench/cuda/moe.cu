// MoE cases: ops::Backend::moe_experts at V4-Flash expert shapes (64 routed experts of width
// 2048 over hidden 4096, top-6, SwiGLU clamp) in MXFP4 (release) and NVFP4 (ModelOpt), at T = 1
// (decode), T = 32 and the prefill sizes T = 2048, 8192. Routing is rotated over random top-6
// sets (distinct experts per token), so successive calls read different experts, as successive
// layers do; the bytes a call must move are the distinct experts it selects (w1, w3, w2 with
// their scales) plus x and out. Prefill calls take the BF16-copy + cuBLAS path (moe.cu), which
// syncs the host once per call and so cannot be captured: they are timed eagerly (impl
// "clawmine": one grouped cuBLAS call per projection and chunk; "clawmine-loop": one cublasGemmEx
// per expert) and checked against the grouped-kernel path on the same inputs (a captured call
// keeps the kernels), relative L2, budget 1e-2.
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/backend_impl.cuh"
#include "backend/cuda/linear_dequant.cuh"
#include "bench/cuda/bench.h"
#include "core/error.h"

namespace clawmine::bench {
namespace {

using model::deepseek_v4::ExpertWeights;
using model::deepseek_v4::LinearWeight;
using model::deepseek_v4::WeightFormat;

constexpr int64_t kExperts = 64, kWidth = 2048, kHidden = 4096, kTopK = 6;
constexpr int kRoutings = 32;         // routing sets rotated through (decode sizes)
constexpr int kPrefillRoutings = 4;   // prefill sizes: each call's x alone exceeds L2
constexpr int64_t kPrefillT = 2048;   // from here: the prefill path, eager timing
constexpr double kCheckBudget = 1e-2;
constexpr float kSwigluLimit = 10.0f;

// All experts of one projection (w1, w3 or w2) in one buffer each: weight, scale, scale2.
struct Projection {
  int64_t out = 0, in = 0;
  ops::DeviceBuffer w, s, s2;
};

struct Experts {
  Projection p[3];  // w1 [I, D], w3 [I, D], w2 [D, I]
  std::vector<ExpertWeights> weights;
  double expert_bytes = 0;  // one expert's w1 + w3 + w2 with scales
};

void make_projection(ops::Backend& be, Projection& p, bool nvfp4, int64_t out, int64_t in, uint64_t seed) {
  const int64_t group = nvfp4 ? 16 : 32;
  p.out = out;
  p.in = in;
  p.w = ops::DeviceBuffer(be, DType::kU8, {kExperts * out, in / 2});
  p.s = ops::DeviceBuffer(be, nvfp4 ? DType::kF8E4M3 : DType::kF8E8M0, {kExperts * out, in / group});
  fill_random(be, p.w.view(), Fill::kBytes, seed);
  fill_random(be, p.s.view(), nvfp4 ? Fill::kE4M3Scale : Fill::kE8M0Scale, seed + 1);
  if (nvfp4) {
    p.s2 = ops::DeviceBuffer(be, DType::kF32, {kExperts});
    const std::vector<float> scale2(kExperts, 1.0f / 64.0f);
    be.upload(scale2.data(), p.s2.view());
  }
}

// Views of expert e of a projection, as Model::place makes them.
LinearWeight expert_view(const Projection& p, bool nvfp4, int64_t e, const std::string& name) {
  const int64_t group = nvfp4 ? 16 : 32;
  LinearWeight w;
  w.name = name;
  w.out_features = p.out;
  w.in_features = p.in;
  w.format = nvfp4 ? WeightFormat::kNvfp4 : WeightFormat::kMxfp4;
  w.weight = TensorView{DType::kU8, Device::kCuda, {p.out, p.in / 2},
                        static_cast<uint8_t*>(p.w.view().data) + e * p.out * (p.in / 2)};
  w.scale = TensorView{p.s.view().dtype, Device::kCuda, {p.out, p.in / group},
                       static_cast<uint8_t*>(p.s.view().data) + e * p.out * (p.in / group)};
  if (nvfp4) w.weight_scale_2 = TensorView{DType::kF32, Device::kCuda, {1}, static_cast<float*>(p.s2.view().data) + e};
  return w;
}

std::unique_ptr<Experts> make_experts(ops::Backend& be, bool nvfp4) {
  auto x = std::make_unique<Experts>();
  make_projection(be, x->p[0], nvfp4, kWidth, kHidden, 21);
  make_projection(be, x->p[1], nvfp4, kWidth, kHidden, 22);
  make_projection(be, x->p[2], nvfp4, kHidden, kWidth, 23);
  for (const Projection& p : x->p)
    x->expert_bytes += static_cast<double>(p.w.view().nbytes() + p.s.view().nbytes() + p.s2.view().nbytes()) / kExperts;
  for (int64_t e = 0; e < kExperts; ++e) {
    const std::string n = str_cat("layers.0.ffn.experts.", e, ".");
    x->weights.push_back(ExpertWeights{expert_view(x->p[0], nvfp4, e, n + "w1"), expert_view(x->p[1], nvfp4, e, n + "w3"),
                                       expert_view(x->p[2], nvfp4, e, n + "w2")});
  }
  return x;
}

// Runs op once inside a stream capture (moe_experts keeps its grouped kernels there) and replays
// the graph once: the kernel path's result, the reference of the prefill path.
void run_captured(ops::Backend& be, const std::function<void()>& op) {
  auto* cb = dynamic_cast<backend::cuda::CudaBackend*>(&be);
  CLAWMINE_CHECK(cb != nullptr, "kernel bench: the backend is not CUDA");
  const cudaStream_t s = cb->stream();
  be.synchronize();
  CLAWMINE_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    op();
  } catch (...) {
    cudaStreamEndCapture(s, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  CLAWMINE_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  CLAWMINE_CUDA_CHECK(inst);
  const cudaError_t launch = cudaGraphLaunch(exec, s);
  const cudaError_t sync = cudaStreamSynchronize(s);
  cudaGraphExecDestroy(exec);
  CLAWMINE_CUDA_CHECK(launch);
  CLAWMINE_CUDA_CHECK(sync);
}

// gemv_max > 0: moe_experts with set_moe_gemv_max_tokens(gemv_max) (GEMV tiles up to that many
// tokens; below T the path past the GEMV) and set_moe_gemv_tile_rows(tile_cap), checked against
// the default path's output on the same inputs.
void moe_case(Env& env, const Experts& ex, bool nvfp4, int64_t T, bool grouped = true, int64_t gemv_max = 0,
              int tile_cap = 0) {
  ops::Backend& be = env.be;
  const bool prefill = T >= kPrefillT;
  Result r;
  r.group = "moe";
  r.name = str_cat("experts 64x2048 top-6");
  r.format = nvfp4 ? "nvfp4" : "mxfp4";
  r.impl = gemv_max <= 0    ? (grouped ? "clawmine" : "clawmine-loop")
           : gemv_max < T ? std::string("clawmine-gemm-tiles")
                          : str_cat("clawmine-gemv-tiles<=", tile_cap > 0 ? tile_cap : 16);
  r.T = T;
  r.rotation = prefill ? kPrefillRoutings : kRoutings;
  // Routing sets: distinct experts per token, weights in (0.1, 1).
  std::mt19937 rng(static_cast<uint32_t>(7 + T));
  std::vector<ops::DeviceBuffer> idx, wt, x, y;
  double bytes = 0;
  for (int s = 0; s < r.rotation; ++s) {
    std::vector<int32_t> ids(static_cast<size_t>(T * kTopK));
    std::vector<float> w(ids.size());
    std::set<int32_t> used;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> perm(kExperts);
      for (int32_t e = 0; e < kExperts; ++e) perm[static_cast<size_t>(e)] = e;
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int64_t k = 0; k < kTopK; ++k) {
        ids[static_cast<size_t>(t * kTopK + k)] = perm[static_cast<size_t>(k)];
        used.insert(perm[static_cast<size_t>(k)]);
        w[static_cast<size_t>(t * kTopK + k)] = 0.1f + 0.9f * std::uniform_real_distribution<float>(0, 1)(rng);
      }
    }
    bytes += static_cast<double>(used.size()) * ex.expert_bytes;
    idx.emplace_back(be, DType::kI32, Shape{T, kTopK});
    wt.emplace_back(be, DType::kF32, Shape{T, kTopK});
    x.emplace_back(be, DType::kBF16, Shape{T, kHidden});
    y.emplace_back(be, DType::kBF16, Shape{T, kHidden});
    be.upload(ids.data(), idx.back().view());
    be.upload(w.data(), wt.back().view());
    fill_random(be, x.back().view(), Fill::kFloat, 300 + s, 1.0f);
  }
  r.bytes = bytes / r.rotation + 2.0 * 2 * T * kHidden + 8.0 * T * kTopK;
  r.flops = 2.0 * T * kTopK * 3 * kWidth * kHidden;
  auto run = [&](int i) {
    be.moe_experts(x[i].view(), ex.weights, idx[i].view(), wt[i].view(), kSwigluLimit, y[i].view());
  };
  const auto tune = [&](int64_t max_tokens, int cap) {
    backend::cuda::set_moe_gemv_max_tokens(max_tokens);
    backend::cuda::set_moe_gemv_tile_rows(cap);
  };
  backend::cuda::set_moe_prefill_grouped(grouped);
  tune(gemv_max, tile_cap);
  try {
    be.fill(y[0].view(), std::nanf(""));
    run(0);
    const int64_t bad = count_nonfinite(be, y[0].view());
    r.failed = bad != 0;
    r.check = bad ? str_cat("FAIL ", bad, " non-finite") : "finite";
    // The reference on the same inputs: the default path (GEMV-tile cases), or the kernels
    // (prefill: a capturing stream keeps them instead of the BF16 copies).
    const bool against_default = gemv_max > 0;
    if ((against_default || prefill) && !r.failed) {
      ops::DeviceBuffer ref(be, DType::kBF16, Shape{T, kHidden});
      be.fill(ref.view(), std::nanf(""));
      const auto reference = [&] {
        be.moe_experts(x[0].view(), ex.weights, idx[0].view(), wt[0].view(), kSwigluLimit, ref.view());
      };
      if (against_default) {
        tune(0, 0);
        reference();
        tune(gemv_max, tile_cap);
      } else {
        run_captured(be, reference);
      }
      const double rel = rel_l2(be, y[0].view(), ref.view());
      r.failed = !(rel <= kCheckBudget);
      r.check = str_cat(r.failed ? "FAIL " : "", "rel ", sci(rel),
                        against_default ? " vs the default path" : " vs kernels");
    }
    r.timing = time_op(be, r.rotation, run, env.opts.target_ms, /*allow_graph=*/!prefill);
  } catch (const std::exception& e) {
    r.failed = true;
    r.check = str_cat("error: ", e.what());
  }
  backend::cuda::set_moe_prefill_grouped(true);
  tune(0, 0);
  env.rep.add(r);
}

}  // namespace

void run_moe_cases(Env& env) {
  if (!env.opts.wants("moe")) return;
  for (bool nvfp4 : {false, true}) {
    const auto ex = make_experts(env.be, nvfp4);
    for (int64_t T : {int64_t{1}, int64_t{32}, int64_t{2048}, int64_t{8192}}) moe_case(env, *ex, nvfp4, T);
    for (int64_t T : {int64_t{2048}, int64_t{8192}}) moe_case(env, *ex, nvfp4, T, /*grouped=*/false);
    // The prefill of short prompts (up to 1024 tokens: GEMV tiles of at most 16 rows by default, two
    // n tiles of the streaming GEMV from 9 rows), against 64-row GEMM tiles (the path past the
    // GEMV limit, up to 64 rows per expert, ~683 tokens) and GEMV tiles of at most 8 rows (more
    // tiles per expert).
    for (int64_t T : {int64_t{128}, int64_t{512}}) {
      moe_case(env, *ex, nvfp4, T);
      moe_case(env, *ex, nvfp4, T, /*grouped=*/true, /*gemv_max=*/32);
      moe_case(env, *ex, nvfp4, T, /*grouped=*/true, /*gemv_max=*/T, /*tile_cap=*/8);
    }
    // And where the copies run (192 rows per expert): 8-row GEMV tiles read each expert 24 times.
    moe_case(env, *ex, nvfp4, 2048, /*grouped=*/true, /*gemv_max=*/2048, /*tile_cap=*/8);
  }
}

}  // namespace clawmine::bench
