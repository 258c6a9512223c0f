// Linear cases: ops::Backend::linear per weight format (BF16, FP8-block with E8M0 scales, MXFP4,
// NVFP4) at V4-Flash shapes, for decode (T = 1, 4, 16: the weight-streaming GEMV) and prefill
// (T = 2048, 8192: an exact BF16 copy of the weight and cuBLAS, linear_dequant.cu), with cuBLAS
// BF16 at the same shapes beside them; and the grouped wo_a (8 groups of [1024, 4096]). Each
// case first checks our output against cuBLAS on the BF16-decoded weight (relative L2, BF16
// budget 1e-2), then times it with the weights (and activations) rotated over several random
// copies whose total exceeds L2.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "bench/cuda/bench.h"
#include "core/error.h"

namespace clawmine::bench {
namespace {

using model::deepseek_v4::WeightFormat;

enum class Fmt { kBF16, kFp8, kMxfp4, kNvfp4 };
const char* fmt_name(Fmt f) {
  switch (f) {
    case Fmt::kBF16: return "bf16";
    case Fmt::kFp8: return "fp8";
    case Fmt::kMxfp4: return "mxfp4";
    case Fmt::kNvfp4: return "nvfp4";
  }
  return "?";
}

constexpr int64_t kTokens[] = {1, 4, 16, 2048, 8192};
constexpr double kCheckBudget = 1e-2;  // BF16 operands and outputs (METHOD.md: 1e-3 .. 1e-2)

// A random weight [out, in] of format f in device memory (what Model::place makes of a checkpoint).
struct DevLinear {
  ops::DeviceBuffer w, s, s2;
  ops::LinearWeight lw;
  double bytes() const {
    return static_cast<double>(w.view().nbytes() + s.view().nbytes() + s2.view().nbytes());
  }
};

std::unique_ptr<DevLinear> make_weight(ops::Backend& be, Fmt f, int64_t out, int64_t in, const std::string& name,
                                       uint64_t seed) {
  auto d = std::make_unique<DevLinear>();
  ops::LinearWeight& lw = d->lw;
  lw.name = name;
  lw.out_features = out;
  lw.in_features = in;
  switch (f) {
    case Fmt::kBF16:
      lw.format = WeightFormat::kDense;
      d->w = ops::DeviceBuffer(be, DType::kBF16, {out, in});
      fill_random(be, d->w.view(), Fill::kFloat, seed, 1.0f / std::sqrt(static_cast<float>(in)));
      break;
    case Fmt::kFp8:
      lw.format = WeightFormat::kFp8Block;
      d->w = ops::DeviceBuffer(be, DType::kF8E4M3, {out, in});
      d->s = ops::DeviceBuffer(be, DType::kF8E8M0, {(out + 127) / 128, (in + 127) / 128});
      fill_random(be, d->w.view(), Fill::kE4M3Weight, seed);
      fill_random(be, d->s.view(), Fill::kE8M0Scale, seed + 1);
      break;
    case Fmt::kMxfp4:
      lw.format = WeightFormat::kMxfp4;
      d->w = ops::DeviceBuffer(be, DType::kU8, {out, in / 2});
      d->s = ops::DeviceBuffer(be, DType::kF8E8M0, {out, in / 32});
      fill_random(be, d->w.view(), Fill::kBytes, seed);
      fill_random(be, d->s.view(), Fill::kE8M0Scale, seed + 1);
      break;
    case Fmt::kNvfp4: {
      lw.format = WeightFormat::kNvfp4;
      d->w = ops::DeviceBuffer(be, DType::kU8, {out, in / 2});
      d->s = ops::DeviceBuffer(be, DType::kF8E4M3, {out, in / 16});
      d->s2 = ops::DeviceBuffer(be, DType::kF32, {1});
      fill_random(be, d->w.view(), Fill::kBytes, seed);
      fill_random(be, d->s.view(), Fill::kE4M3Scale, seed + 1);
      const float scale2 = 1.0f / 64.0f;
      be.upload(&scale2, d->s2.view());
      break;
    }
  }
  lw.weight = d->w.view();
  lw.scale = d->s.view();
  lw.weight_scale_2 = d->s2.view();
  return d;
}

// Copies of one weight: enough that their total exceeds the rotation size (at most 32).
std::vector<std::unique_ptr<DevLinear>> make_weights(Env& env, Fmt f, int64_t out, int64_t in, const std::string& name,
                                                     uint64_t seed) {
  std::vector<std::unique_ptr<DevLinear>> v;
  v.push_back(make_weight(env.be, f, out, in, name, seed));
  const int64_t copies =
      std::clamp<int64_t>(static_cast<int64_t>(std::ceil(env.rotate_bytes() / v[0]->bytes())), 1, 32);
  for (int64_t i = 1; i < copies; ++i) v.push_back(make_weight(env.be, f, out, in, name, seed + 100 * i));
  return v;
}

// Activations x [T, G*in_g] and outputs [T, out] for `rotation` slots.
struct Acts {
  std::vector<ops::DeviceBuffer> x, y;
};
Acts make_acts(ops::Backend& be, int rotation, int64_t T, int64_t x_cols, int64_t out, uint64_t seed) {
  Acts a;
  for (int i = 0; i < rotation; ++i) {
    a.x.emplace_back(be, DType::kBF16, Shape{T, x_cols});
    a.y.emplace_back(be, DType::kBF16, Shape{T, out});
    fill_random(be, a.x.back().view(), Fill::kFloat, seed + i, 1.0f);
  }
  return a;
}

int rotation_for(Env& env, double bytes_per_call, size_t available) {
  const int r = static_cast<int>(std::ceil(static_cast<double>(env.rotate_bytes()) / bytes_per_call));
  return std::clamp(r, 1, static_cast<int>(available));
}

// One (weight set, T) case of our linear (groups == 0: Backend::linear; else grouped_linear).
void linear_case(Env& env, const std::string& group, const std::string& name, Fmt f,
                 const std::vector<std::unique_ptr<DevLinear>>& ws, int64_t groups, int64_t T) {
  ops::Backend& be = env.be;
  const ops::LinearWeight& w0 = ws[0]->lw;
  const int64_t G = std::max<int64_t>(groups, 1), out = w0.out_features, in_g = w0.in_features;
  Result r;
  r.group = group;
  r.name = name;
  r.format = fmt_name(f);
  r.impl = "clawmine";
  r.T = T;
  r.bytes = ws[0]->bytes() + 2.0 * T * G * in_g + 2.0 * T * out;
  r.flops = 2.0 * T * out * in_g;
  r.rotation = rotation_for(env, r.bytes, ws.size());
  Acts a = make_acts(be, r.rotation, T, G * in_g, out, 1000 + T);
  auto run = [&](int i) {
    const TensorView x = groups ? a.x[i].view().reshaped({T, G, in_g}) : a.x[i].view();
    const TensorView y = groups ? a.y[i].view().reshaped({T, G, out / G}) : a.y[i].view();
    if (groups) {
      be.grouped_linear(x, ws[i]->lw, G, y);
    } else {
      be.linear(x, ws[i]->lw, y);
    }
  };
  try {
    {  // check against cuBLAS on the decoded weight
      ops::ScratchFrame frame(be);
      const TensorView wref = be.scratch(DType::kBF16, {out, in_g});
      const TensorView ref = be.scratch(DType::kBF16, {T, out});
      dequantize_bf16(be, w0, wref);
      cublas_bf16(be, a.x[0].view(), wref, G, ref);
      be.fill(a.y[0].view(), std::nanf(""));
      run(0);
      const double rel = rel_l2(be, a.y[0].view(), ref);
      r.failed = !(rel <= kCheckBudget);
      r.check = str_cat(r.failed ? "FAIL " : "", "rel ", sci(rel), " vs cublas");
    }
    r.timing = time_op(be, r.rotation, run, env.opts.target_ms);
  } catch (const std::exception& e) {
    r.failed = true;
    r.check = str_cat("error: ", e.what());
  }
  env.rep.add(r);
}

// cuBLAS BF16 at the same shape (BF16 weight copies ws), the baseline a user would reach for.
void cublas_case(Env& env, const std::string& group, const std::string& name,
                 const std::vector<std::unique_ptr<DevLinear>>& ws, int64_t groups, int64_t T) {
  ops::Backend& be = env.be;
  const int64_t G = std::max<int64_t>(groups, 1), out = ws[0]->lw.out_features, in_g = ws[0]->lw.in_features;
  Result r;
  r.group = group;
  r.name = name;
  r.format = "bf16";
  r.impl = "cublas";
  r.T = T;
  r.bytes = ws[0]->bytes() + 2.0 * T * G * in_g + 2.0 * T * out;
  r.flops = 2.0 * T * out * in_g;
  r.rotation = rotation_for(env, r.bytes, ws.size());
  Acts a = make_acts(be, r.rotation, T, G * in_g, out, 1000 + T);
  try {
    r.timing = time_op(
        be, r.rotation, [&](int i) { cublas_bf16(be, a.x[i].view(), ws[i]->lw.weight, G, a.y[i].view()); },
        env.opts.target_ms);
    const int64_t bad = count_nonfinite(be, a.y[0].view());
    r.failed = bad != 0;
    r.check = bad ? str_cat("FAIL ", bad, " non-finite") : "finite";
  } catch (const std::exception& e) {
    r.failed = true;
    r.check = str_cat("error: ", e.what());
  }
  env.rep.add(r);
}

// Every format and T for one weight shape (groups 0: linear), cuBLAS first.
void shape_cases(Env& env, const std::string& group, const std::string& name, int64_t out, int64_t in,
                 int64_t groups, const std::vector<Fmt>& formats, uint64_t seed) {
  for (Fmt f : formats) {
    const auto ws = make_weights(env, f, out, in, name, seed);
    if (f == Fmt::kBF16)
      for (int64_t T : kTokens) cublas_case(env, group, name, ws, groups, T);
    for (int64_t T : kTokens) linear_case(env, group, name, f, ws, groups, T);
  }
}

}  // namespace

void run_linear_cases(Env& env) {
  const std::vector<Fmt> all = {Fmt::kBF16, Fmt::kFp8, Fmt::kMxfp4, Fmt::kNvfp4};
  if (env.opts.wants("linear")) {
    shape_cases(env, "linear", "wq_b [32768x1024]", 32768, 1024, 0, all, 1);
    shape_cases(env, "linear", "wo_b [4096x8192]", 4096, 8192, 0, all, 2);
    shape_cases(env, "linear", "w1 [2048x4096]", 2048, 4096, 0, all, 3);
  }
  if (env.opts.wants("grouped")) {
    // wo_a: o_groups 8 x o_lora 1024 rows, each over H*Dh/G = 4096 inputs.
    shape_cases(env, "grouped", "wo_a [8x1024x4096]", 8 * 1024, 4096, 8, all, 4);
  }
}

}  // namespace clawmine::bench
