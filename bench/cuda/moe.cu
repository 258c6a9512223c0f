// MoE cases: ops::Backend::moe_experts at V4-Flash expert shapes (64 routed experts of width
// 2048 over hidden 4096, top-6, SwiGLU clamp) in MXFP4 (release) and NVFP4 (ModelOpt), at T = 1
// (decode) and T = 32. Routing is rotated over random top-6 sets (distinct experts per token),
// so successive calls read different experts, as successive layers do; the bytes a call must
// move are the distinct experts it selects (w1, w3, w2 with their scales) plus x and out.
#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "bench/cuda/bench.h"
#include "core/error.h"

namespace clawmine::bench {
namespace {

using model::deepseek_v4::ExpertWeights;
using model::deepseek_v4::LinearWeight;
using model::deepseek_v4::WeightFormat;

constexpr int64_t kExperts = 64, kWidth = 2048, kHidden = 4096, kTopK = 6;
constexpr int kRoutings = 32;  // routing sets rotated through
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

void moe_case(Env& env, const Experts& ex, bool nvfp4, int64_t T) {
  ops::Backend& be = env.be;
  Result r;
  r.group = "moe";
  r.name = str_cat("experts 64x2048 top-6");
  r.format = nvfp4 ? "nvfp4" : "mxfp4";
  r.impl = "clawmine";
  r.T = T;
  r.rotation = kRoutings;
  // Routing sets: distinct experts per token, weights in (0.1, 1).
  std::mt19937 rng(static_cast<uint32_t>(7 + T));
  std::vector<ops::DeviceBuffer> idx, wt, x, y;
  double bytes = 0;
  for (int s = 0; s < kRoutings; ++s) {
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
  r.bytes = bytes / kRoutings + 2.0 * 2 * T * kHidden + 8.0 * T * kTopK;
  r.flops = 2.0 * T * kTopK * 3 * kWidth * kHidden;
  auto run = [&](int i) {
    be.moe_experts(x[i].view(), ex.weights, idx[i].view(), wt[i].view(), kSwigluLimit, y[i].view());
  };
  try {
    be.fill(y[0].view(), std::nanf(""));
    run(0);
    const int64_t bad = count_nonfinite(be, y[0].view());
    r.failed = bad != 0;
    r.check = bad ? str_cat("FAIL ", bad, " non-finite") : "finite";
    r.timing = time_op(be, r.rotation, run, env.opts.target_ms);
  } catch (const std::exception& e) {
    r.failed = true;
    r.check = str_cat("error: ", e.what());
  }
  env.rep.add(r);
}

}  // namespace

void run_moe_cases(Env& env) {
  if (!env.opts.wants("moe")) return;
  for (bool nvfp4 : {false, true}) {
    const auto ex = make_experts(env.be, nvfp4);
    for (int64_t T : {int64_t{1}, int64_t{32}}) moe_case(env, *ex, nvfp4, T);
  }
}

}  // namespace clawmine::bench
