// The CUDA hyper-connection ops (hyper_connection.cu) against the CPU reference on the same fresh
// random inputs, outputs poisoned first: hc_pre (x_in, post, comb after 20 Sinkhorn rounds),
// hc_post and hc_head, for T in {1, 7, 300} (decode splits the mix over many blocks, prefill
// uses one block per token), D = 19 (unpacked) and V4-Flash's 4096 (hc = 4, so 24 dot products
// of 16384), F32 and BF16 fn, F32 and BF16 activations. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

using model::deepseek_v4::HyperConnectionWeights;

class CudaHyperConnection : public GpuTest {};

constexpr int64_t kHc = 4;

// fn [n_mix, hc*D] ~ N(0, 1/sqrt(hc*D)) so the mixes are O(1) and no gate saturates; base ~ N(0, 1);
// scale in [1, ~3].
struct HcWeights {
  OnBoth fn, base, scale;
  HyperConnectionWeights cpu() const { return {fn.cpu.view(), base.cpu.view(), scale.cpu.view()}; }
  HyperConnectionWeights gpu() const { return {fn.gpu.view(), base.gpu.view(), scale.gpu.view()}; }
};

HcWeights make_weights(ops::Backend& cpu, ops::Backend& gpu, int64_t n_mix, int64_t D, int64_t n_scale, DType fn_t,
                       uint32_t seed, int64_t hc = kHc) {
  const int64_t n = hc * D;
  std::vector<float> scale = random_normal(n_scale, seed + 3);
  for (float& s : scale) s = 1.0f + std::fabs(s);
  return {same_floats(cpu, gpu, random_normal(n_mix * n, seed + 1, 1.0f / std::sqrt(static_cast<float>(n))), {n_mix, n},
                      fn_t),
          same_floats(cpu, gpu, random_normal(n_mix, seed + 2), {n_mix}), same_floats(cpu, gpu, scale, {n_scale})};
}

TEST_F(CudaHyperConnection, PreMatchesCpu) {
  uint32_t seed = 1000;
  const int64_t n_mix = (2 + kHc) * kHc;
  for (const int64_t T : {1, 7, 300}) {
    for (const int64_t D : {19, 4096}) {
      for (const DType fn_t : {DType::kF32, DType::kBF16}) {
        for (const DType act : {DType::kF32, DType::kBF16}) {
          for (const int64_t iters : {20, 1}) {
            if (iters == 1 && (T != 7 || fn_t != DType::kF32)) continue;
            SCOPED_TRACE(
                str_cat("T ", T, " D ", D, " fn ", dtype_label(fn_t), " x_in ", dtype_label(act), " sinkhorn ", iters));
            seed += 10;
            const OnBoth X = same_floats(*cpu, *cuda, random_normal(T * kHc * D, seed, 2.0f), {T, kHc, D});
            const HcWeights w = make_weights(*cpu, *cuda, n_mix, D, 3, fn_t, seed);
            ops::HcParams p;
            p.sinkhorn_iters = iters;
            const OnBoth x_in = poisoned_both(*cpu, *cuda, {T, D}, act);
            const OnBoth post = poisoned_both(*cpu, *cuda, {T, kHc});
            const OnBoth comb = poisoned_both(*cpu, *cuda, {T, kHc, kHc});
            cpu->hc_pre(X.cpu.view(), w.cpu(), p, x_in.cpu.view(), post.cpu.view(), comb.cpu.view());
            cuda->hc_pre(X.gpu.view(), w.gpu(), p, x_in.gpu.view(), post.gpu.view(), comb.gpu.view());
            EXPECT_TRUE(within(download_f32(*cuda, x_in.gpu.view()), download_f32(*cpu, x_in.cpu.view()),
                               act == DType::kF32 ? kF32Budget : kBf16Budget))
                << "x_in";
            EXPECT_TRUE(within(download_f32(*cuda, post.gpu.view()), download_f32(*cpu, post.cpu.view()), kF32Budget))
                << "post";
            EXPECT_TRUE(within(download_f32(*cuda, comb.gpu.view()), download_f32(*cpu, comb.cpu.view()), kF32Budget))
                << "comb";
          }
        }
      }
    }
  }
}

TEST_F(CudaHyperConnection, HeadMatchesCpu) {
  uint32_t seed = 2000;
  for (const int64_t T : {1, 7, 300}) {
    for (const int64_t D : {19, 4096}) {
      for (const DType fn_t : {DType::kF32, DType::kBF16}) {
        for (const DType act : {DType::kF32, DType::kBF16}) {
          SCOPED_TRACE(str_cat("T ", T, " D ", D, " fn ", dtype_label(fn_t), " y ", dtype_label(act)));
          seed += 10;
          const OnBoth X = same_floats(*cpu, *cuda, random_normal(T * kHc * D, seed, 2.0f), {T, kHc, D});
          const HcWeights w = make_weights(*cpu, *cuda, kHc, D, 1, fn_t, seed);
          const OnBoth y = poisoned_both(*cpu, *cuda, {T, D}, act);
          cpu->hc_head(X.cpu.view(), w.cpu(), ops::HcParams{}, y.cpu.view());
          cuda->hc_head(X.gpu.view(), w.gpu(), ops::HcParams{}, y.gpu.view());
          EXPECT_TRUE(within(download_f32(*cuda, y.gpu.view()), download_f32(*cpu, y.cpu.view()),
                             act == DType::kF32 ? kF32Budget : kBf16Budget));
        }
      }
    }
  }
}

TEST_F(CudaHyperConnection, PostMatchesCpu) {
  uint32_t seed = 3000;
  for (const int64_t T : {1, 7, 300}) {
    for (const int64_t D : {19, 4096}) {
      for (const DType act : {DType::kF32, DType::kBF16}) {
        SCOPED_TRACE(str_cat("T ", T, " D ", D, " y ", dtype_label(act)));
        seed += 10;
        const OnBoth y = same_floats(*cpu, *cuda, random_normal(T * D, seed), {T, D}, act);
        const OnBoth X = same_floats(*cpu, *cuda, random_normal(T * kHc * D, seed + 1, 2.0f), {T, kHc, D});
        std::vector<float> post = random_normal(T * kHc, seed + 2, 0.5f), comb = random_normal(T * kHc * kHc, seed + 3);
        for (float& v : post) v = 1.0f + v;
        for (float& v : comb) v = 0.05f + 0.3f * std::fabs(v);
        const OnBoth pb = same_floats(*cpu, *cuda, post, {T, kHc});
        const OnBoth cb = same_floats(*cpu, *cuda, comb, {T, kHc, kHc});
        const OnBoth out = poisoned_both(*cpu, *cuda, {T, kHc, D});
        cpu->hc_post(y.cpu.view(), X.cpu.view(), pb.cpu.view(), cb.cpu.view(), out.cpu.view());
        cuda->hc_post(y.gpu.view(), X.gpu.view(), pb.gpu.view(), cb.gpu.view(), out.gpu.view());
        // X_out is F32 whatever y is: y enters exactly (the CPU got the same rounded values).
        EXPECT_TRUE(within(download_f32(*cuda, out.gpu.view()), download_f32(*cpu, out.cpu.view()), kF32Budget));
      }
    }
  }
}

TEST_F(CudaHyperConnection, ArgumentErrors) {
  const int64_t T = 2, D = 8;
  const ops::DeviceBuffer X = upload_f32(*cuda, random_normal(T * kHc * D, 1), {T, kHc, D});
  const ops::DeviceBuffer y = upload_f32(*cuda, random_normal(T * D, 2), {T, D});
  const ops::DeviceBuffer post = upload_f32(*cuda, random_normal(T * kHc, 3), {T, kHc});
  const ops::DeviceBuffer comb = upload_f32(*cuda, random_normal(T * kHc * kHc, 4), {T, kHc, kHc});
  EXPECT_THROW(cuda->hc_post(y.view(), X.view(), post.view(), comb.view(), X.view()), Error);  // X_out aliases X
  const ops::DeviceBuffer x3 = upload_f32(*cuda, random_normal(T * 3 * D, 5), {T, 3, D});
  const HcWeights w = make_weights(*cpu, *cuda, 15, D, 3, DType::kF32, 6, 3);
  ops::HcParams p;
  p.hc_mult = 3;
  const ops::DeviceBuffer x_in = poisoned(*cuda, DType::kF32, {T, D});
  const ops::DeviceBuffer post3 = poisoned(*cuda, DType::kF32, {T, 3});
  const ops::DeviceBuffer comb3 = poisoned(*cuda, DType::kF32, {T, 3, 3});
  // hc_mult 3 is not instantiated: a clear error, not a wrong answer.
  try {
    cuda->hc_pre(x3.view(), w.gpu(), p, x_in.view(), post3.view(), comb3.view());
    ADD_FAILURE() << "hc_mult 3 did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hc_mult 3 is not instantiated"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace clawmine::test
