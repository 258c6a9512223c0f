// The fused CUDA norm_rope_qdq (norm_rope_qdq.cu: one kernel for rms_norm -> rope -> qdq on each
// vector of x [T, n_vec, dim]) against
//  - the three CUDA ops in sequence (norm_rope_qdq_unfused on the same backend): bit for bit, and
//  - the CPU backend's composition: within a budget (F32 x; BF16 x without qdq: the CPU keeps
//    F32 between the steps, so a BF16 rounding can move an FP8/FP4 grid point there),
// for every preparation the model runs (q: weightless norm + rope [T, 64, 512]; kv and the CSA
// compressor's entries: weighted norm + rope + FP8 on the nope dims [T, 1, 512]; the HCA/indexer
// compressor's entries: weighted norm + rope + Hadamard FP4 [T, 1, 128]; indexer queries: rope +
// Hadamard FP4 [T, 64, 128]) at T = 1, 3, 64 with F32 and BF16 x, plus shapes that take 64 and 256
// threads per vector (4 packs each), a partial FP8 block, and one the fused kernel leaves to the
// composition (dim 36). In place on fresh random x (nothing to poison). Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {

class CudaNormRopeQdq : public GpuTest {};

struct PrepCase {
  const char* name;
  int64_t n_vec, dim;
  bool norm, weighted;
  int64_t rope_dim;
  ops::Qdq qdq;
  int64_t n_nope;
};

TEST_F(CudaNormRopeQdq, FusedEqualsTheCompositionBitForBitAndMatchesCpu) {
  const PrepCase cases[] = {
      {"q", 64, 512, true, false, 64, ops::Qdq::kNone, 0},
      {"kv / CSA entry", 1, 512, true, true, 64, ops::Qdq::kFp8Nope, 448},
      {"HCA entry", 1, 128, true, true, 64, ops::Qdq::kHadamardFp4, 64},
      {"indexer q", 64, 128, false, false, 64, ops::Qdq::kHadamardFp4, 128},
      {"1024 wide, 64 threads", 3, 1024, true, true, 128, ops::Qdq::kFp8Nope, 896},
      {"8192 wide, 4 packs", 1, 8192, true, true, 64, ops::Qdq::kFp8Nope, 8128},
      {"partial FP8 block", 2, 40, true, true, 8, ops::Qdq::kFp8Nope, 32},
      {"Hadamard 512", 2, 512, true, false, 0, ops::Qdq::kHadamardFp4, 0},
      {"Hadamard 32, no norm", 5, 32, false, false, 8, ops::Qdq::kHadamardFp4, 0},
      {"unfused width 36", 2, 36, true, true, 4, ops::Qdq::kNone, 0},
  };
  uint32_t seed = 21000;
  for (const PrepCase& c : cases) {
    const int64_t half = c.rope_dim / 2;
    std::vector<float> inv_freq(static_cast<size_t>(std::max<int64_t>(half, 1)));
    for (int64_t i = 0; i < half; ++i)
      inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, static_cast<double>(2 * i) / c.rope_dim));
    for (const int64_t T : {1, 3, 64}) {
      if (c.dim >= 8192 && T > 3) continue;
      std::vector<int32_t> pos(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>((t * 7919 + 100000 + seed) % 200000);
      for (const DType x_t : {DType::kF32, DType::kBF16}) {
        SCOPED_TRACE(str_cat(c.name, ": T ", T, " n_vec ", c.n_vec, " dim ", c.dim, " x ", dtype_label(x_t)));
        const Shape shape{T, c.n_vec, c.dim};
        std::vector<float> xv = random_normal(T * c.n_vec * c.dim, ++seed, 2.0f);
        for (size_t i = 0; i < xv.size(); i += 7) xv[i] += 1.0f;
        OnBoth x = same_floats(*cpu, *cuda, xv, shape, x_t);
        const ops::DeviceBuffer x_ref = upload_f32(*cuda, rounded_to(xv, x_t), shape, x_t);
        std::vector<float> wv = random_normal(c.dim, ++seed, 0.5f);
        for (float& v : wv) v += 1.0f;
        const OnBoth w = same_floats(*cpu, *cuda, wv, {c.dim}, x_t == DType::kF32 ? DType::kF32 : DType::kBF16);
        const OnBoth p = same_ints(*cpu, *cuda, pos, {T});
        const OnBoth f = same_floats(*cpu, *cuda, inv_freq, {std::max<int64_t>(half, 1)});
        const TensorView wc = w.cpu.view(), wg = w.gpu.view();
        ops::Backend::VecPrep pc{.norm = c.norm,
                                 .norm_weight = c.weighted ? &wc : nullptr,
                                 .eps = 1e-6f,
                                 .rope_dim = c.rope_dim,
                                 .qdq = c.qdq,
                                 .n_nope = c.n_nope};
        ops::Backend::VecPrep pg = pc;
        pg.norm_weight = c.weighted ? &wg : nullptr;
        cuda->norm_rope_qdq(x.gpu.view(), pg, p.gpu.view(), f.gpu.view());
        cuda->norm_rope_qdq_unfused(x_ref.view(), pg, p.gpu.view(), f.gpu.view());
        cpu->norm_rope_qdq(x.cpu.view(), pc, p.cpu.view(), f.cpu.view());
        const std::vector<float> got = download_f32(*cuda, x.gpu.view());
        EXPECT_TRUE(same_bits(got, download_f32(*cuda, x_ref.view()))) << "fused vs the three CUDA ops";
        // An FP8 step is 2^-3 relative, FP4 up to 1/3: a missing or misplaced round trip moves
        // rel_l2 by 1e-2 or more, a grid point crossed by an F32 rounding difference by ~1e-5.
        if (x_t == DType::kF32) {
          EXPECT_TRUE(within(got, download_f32(*cpu, x.cpu.view()), c.qdq == ops::Qdq::kNone ? kF32Budget : 1e-3))
              << "vs the CPU";
        } else if (c.qdq == ops::Qdq::kNone) {
          EXPECT_TRUE(within(got, download_f32(*cpu, x.cpu.view()), kBf16Budget)) << "vs the CPU";
        }
      }
    }
  }
}

}  // namespace
}  // namespace clawmine::test
