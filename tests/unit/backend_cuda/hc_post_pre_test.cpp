// The fused hyper-connection site hc_post_pre (hyper_connection.cu: one kernel at decode, hc_post +
// mix + finish-with-norm at prefill) on fresh random inputs with every output poisoned first:
//   - against the composition on the same CUDA backend (hc_post_pre_unfused: hc_post, hc_pre,
//     rms_norm): bit for bit (X_out, x_in, post_out, comb_out) at decode (T <= 64), since the
//     fused kernel runs the parts' device code in the same order; at prefill (hc_post_mix_tile:
//     the mix partials summed in another order than hc_pre's) X_out bit for bit, x_in, post_out
//     and comb_out within the CPU budgets;
//   - against the CPU backend (the composition in double/float32 there): within the hc tests'
//     budgets;
//   - run twice: the same bits, with post_out/comb_out separate from and equal to post/comb (in
//     place); at decode, launches on new inputs one after another each match the composition (the
//     kernel's finisher takes each writer's partial by this launch's tag: a stale one would show);
//   - with y_add (the MoE's shared expert, added to y as add() does: in the decode kernel's loads,
//     before the prefill passes) against the composition add + hc_post + hc_pre + rms_norm, bit for
//     bit at decode, and against the CPU.
// T in {1, 2, 5, 300, 2048} (decode kernel up to 64 tokens, then hc_post_mix_tile), D = 4096
// (V4-Flash), 64 (a row of one warp in the norm) and 20 (not a multiple of 8: the composition).
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

using model::deepseek_v4::HyperConnectionWeights;

class CudaHcPostPre : public GpuTest {};

constexpr int64_t kHc = 4, kMix = (2 + kHc) * kHc;

struct SiteInputs {
  OnBoth y, X, post, comb, fn, base, scale, norm, y_add;
  HyperConnectionWeights cpu_w() const { return {fn.cpu.view(), base.cpu.view(), scale.cpu.view()}; }
  HyperConnectionWeights gpu_w() const { return {fn.gpu.view(), base.gpu.view(), scale.gpu.view()}; }
};

SiteInputs make_inputs(ops::Backend& cpu, ops::Backend& gpu, int64_t T, int64_t D, DType act, DType fn_t,
                       DType norm_t, uint32_t seed) {
  const int64_t n = kHc * D;
  std::vector<float> post = random_normal(T * kHc, seed + 2, 0.5f), comb = random_normal(T * kHc * kHc, seed + 3);
  for (float& v : post) v = 1.0f + v;
  for (float& v : comb) v = 0.05f + 0.3f * std::fabs(v);
  std::vector<float> scale = random_normal(3, seed + 6), norm = random_normal(D, seed + 7, 0.1f);
  for (float& s : scale) s = 1.0f + std::fabs(s);
  for (float& w : norm) w += 1.0f;
  return {same_floats(cpu, gpu, random_normal(T * D, seed), {T, D}, act),
          same_floats(cpu, gpu, random_normal(T * kHc * D, seed + 1, 2.0f), {T, kHc, D}),
          same_floats(cpu, gpu, post, {T, kHc}),
          same_floats(cpu, gpu, comb, {T, kHc, kHc}),
          same_floats(cpu, gpu, random_normal(kMix * n, seed + 4, 1.0f / std::sqrt(static_cast<float>(n))), {kMix, n},
                      fn_t),
          same_floats(cpu, gpu, random_normal(kMix, seed + 5), {kMix}),
          same_floats(cpu, gpu, scale, {3}),
          same_floats(cpu, gpu, norm, {D}, norm_t),
          same_floats(cpu, gpu, random_normal(T * D, seed + 8), {T, D}, act)};
}

struct SiteOutputs {
  std::vector<float> X_out, x_in, post, comb;
};

// One site on `be` (fused: the backend's hc_post_pre, else its composition) into poisoned
// outputs; in_place: post/comb are copied into the outputs first and passed as both.
// with_add: y_add = in.y_add.
SiteOutputs run_site(ops::Backend& be, bool gpu, bool fused, bool in_place, const SiteInputs& in, int64_t T,
                     int64_t D, DType act, bool with_add = false) {
  auto v = [&](const OnBoth& b) { return gpu ? b.gpu.view() : b.cpu.view(); };
  const ops::DeviceBuffer X_out = poisoned(be, DType::kF32, {T, kHc, D});
  const ops::DeviceBuffer x_in = poisoned(be, gpu ? act : DType::kF32, {T, D});
  const ops::DeviceBuffer post = poisoned(be, DType::kF32, {T, kHc});
  const ops::DeviceBuffer comb = poisoned(be, DType::kF32, {T, kHc, kHc});
  if (in_place) {
    be.copy(v(in.post), post.view());
    be.copy(v(in.comb), comb.view());
  }
  const TensorView post_in = in_place ? post.view() : v(in.post), comb_in = in_place ? comb.view() : v(in.comb);
  const HyperConnectionWeights w = gpu ? in.gpu_w() : in.cpu_w();
  const ops::HcParams p;
  const float eps = 1e-6f;
  const TensorView y_add = with_add ? v(in.y_add) : TensorView{};
  if (fused) {
    be.hc_post_pre(v(in.y), y_add, v(in.X), post_in, comb_in, X_out.view(), w, p, v(in.norm), eps, x_in.view(),
                   post.view(), comb.view());
  } else {
    be.hc_post_pre_unfused(v(in.y), y_add, v(in.X), post_in, comb_in, X_out.view(), w, p, v(in.norm), eps,
                           x_in.view(), post.view(), comb.view());
  }
  return {download_f32(be, X_out.view()), download_f32(be, x_in.view()), download_f32(be, post.view()),
          download_f32(be, comb.view())};
}

void expect_same_bits(const SiteOutputs& got, const SiteOutputs& ref, const char* what) {
  EXPECT_TRUE(same_bits(got.X_out, ref.X_out)) << what << ": X_out";
  EXPECT_TRUE(same_bits(got.x_in, ref.x_in)) << what << ": x_in";
  EXPECT_TRUE(same_bits(got.post, ref.post)) << what << ": post";
  EXPECT_TRUE(same_bits(got.comb, ref.comb)) << what << ": comb";
}

TEST_F(CudaHcPostPre, MatchesCompositionBitForBitAndCpu) {
  uint32_t seed = 5000;
  for (const int64_t T : {1, 2, 5, 300, 2048}) {
    for (const int64_t D : {4096, 64, 20}) {
      for (const DType act : {DType::kBF16, DType::kF32}) {
        for (const DType fn_t : {DType::kF32, DType::kBF16}) {
          // The large shapes once: F32 fn, BF16 activations (the model's), and a BF16 norm weight.
          if (T == 2048 && (D != 4096 || act != DType::kBF16 || fn_t != DType::kF32)) continue;
          if (D == 20 && T > 5) continue;
          const DType norm_t = fn_t == DType::kF32 ? DType::kBF16 : DType::kF32;
          SCOPED_TRACE(str_cat("T ", T, " D ", D, " act ", dtype_label(act), " fn ", dtype_label(fn_t), " norm ",
                               dtype_label(norm_t)));
          seed += 10;
          const SiteInputs in = make_inputs(*cpu, *cuda, T, D, act, fn_t, norm_t, seed);
          const SiteOutputs fused = run_site(*cuda, true, true, false, in, T, D, act);
          const SiteOutputs parts = run_site(*cuda, true, false, false, in, T, D, act);
          if (T <= 64) {
            expect_same_bits(fused, parts, "fused vs the three CUDA ops");
          } else {  // prefill: X_out as hc_post, the mix in another sum order
            EXPECT_TRUE(same_bits(fused.X_out, parts.X_out)) << "X_out vs hc_post";
            EXPECT_TRUE(within(fused.x_in, parts.x_in, act == DType::kF32 ? kF32Budget : kBf16Budget))
                << "x_in vs the composition";
            EXPECT_TRUE(within(fused.post, parts.post, kF32Budget)) << "post vs the composition";
            EXPECT_TRUE(within(fused.comb, parts.comb, kF32Budget)) << "comb vs the composition";
          }
          expect_same_bits(run_site(*cuda, true, true, false, in, T, D, act), fused, "fused run twice");
          expect_same_bits(run_site(*cuda, true, true, true, in, T, D, act), fused, "fused, post/comb in place");
          {  // y + y_add
            const SiteOutputs fa = run_site(*cuda, true, true, false, in, T, D, act, true);
            const SiteOutputs pa = run_site(*cuda, true, false, false, in, T, D, act, true);
            if (T <= 64) expect_same_bits(fa, pa, "fused with y_add vs add + the three CUDA ops");
            EXPECT_TRUE(same_bits(fa.X_out, pa.X_out)) << "X_out with y_add";
            // The CPU side holds the BF16 inputs as F32, so its y + y_add is not rounded to BF16 as
            // the GPU's (BF16 tensors, as in the model) is: the activation budget for X_out too.
            const SiteOutputs ra = run_site(*cpu, false, false, false, in, T, D, act, true);
            EXPECT_TRUE(within(fa.X_out, ra.X_out, act == DType::kF32 ? kF32Budget : kBf16Budget))
                << "X_out with y_add vs CPU";
            EXPECT_TRUE(within(fa.x_in, ra.x_in, act == DType::kF32 ? kF32Budget : kBf16Budget))
                << "x_in with y_add vs CPU";
          }
          const SiteOutputs ref = run_site(*cpu, false, false, false, in, T, D, act);
          EXPECT_TRUE(within(fused.X_out, ref.X_out, kF32Budget)) << "X_out vs CPU";
          EXPECT_TRUE(within(fused.x_in, ref.x_in, act == DType::kF32 ? kF32Budget : kBf16Budget)) << "x_in vs CPU";
          EXPECT_TRUE(within(fused.post, ref.post, kF32Budget)) << "post vs CPU";
          EXPECT_TRUE(within(fused.comb, ref.comb, kF32Budget)) << "comb vs CPU";
        }
      }
    }
  }
}

TEST_F(CudaHcPostPre, EachDecodeLaunchTakesItsOwnPartials) {
  for (const int64_t T : {1, 3}) {
    for (int i = 0; i < 4; ++i) {
      SCOPED_TRACE(str_cat("T ", T, " launch ", i));
      const SiteInputs in = make_inputs(*cpu, *cuda, T, 4096, DType::kBF16, DType::kF32, DType::kBF16, 7000 + 10 * i);
      expect_same_bits(run_site(*cuda, true, true, false, in, T, 4096, DType::kBF16, i % 2 == 1),
                       run_site(*cuda, true, false, false, in, T, 4096, DType::kBF16, i % 2 == 1),
                       "fused vs the three CUDA ops");
    }
  }
}

TEST_F(CudaHcPostPre, ArgumentErrors) {
  const int64_t T = 2, D = 64;
  const SiteInputs in = make_inputs(*cpu, *cuda, T, D, DType::kF32, DType::kF32, DType::kF32, 77);
  const ops::DeviceBuffer x_in = poisoned(*cuda, DType::kF32, {T, D});
  const ops::DeviceBuffer post = poisoned(*cuda, DType::kF32, {T, kHc});
  const ops::DeviceBuffer comb = poisoned(*cuda, DType::kF32, {T, kHc, kHc});
  const ops::DeviceBuffer X_out = poisoned(*cuda, DType::kF32, {T, kHc, D});
  const ops::DeviceBuffer short_norm = poisoned(*cuda, DType::kF32, {D - 8});
  const ops::HcParams p;
  // X_out aliasing X: hc_post's error.
  EXPECT_THROW(cuda->hc_post_pre(in.y.gpu.view(), TensorView{}, in.X.gpu.view(), in.post.gpu.view(), in.comb.gpu.view(),
                                 in.X.gpu.view(), in.gpu_w(), p, in.norm.gpu.view(), 1e-6f, x_in.view(), post.view(),
                                 comb.view()),
               Error);
  // A norm weight of the wrong length names it.
  try {
    cuda->hc_post_pre(in.y.gpu.view(), TensorView{}, in.X.gpu.view(), in.post.gpu.view(), in.comb.gpu.view(),
                      X_out.view(), in.gpu_w(), p, short_norm.view(), 1e-6f, x_in.view(), post.view(), comb.view());
    ADD_FAILURE() << "a short norm weight did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("norm_weight"), std::string::npos) << e.what();
  }
  // A y_add that does not match y names it.
  try {
    cuda->hc_post_pre(in.y.gpu.view(), short_norm.view(), in.X.gpu.view(), in.post.gpu.view(), in.comb.gpu.view(),
                      X_out.view(), in.gpu_w(), p, in.norm.gpu.view(), 1e-6f, x_in.view(), post.view(), comb.view());
    ADD_FAILURE() << "a y_add of another shape did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("y_add"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace clawmine::test
