// The CUDA moe_route (route.cu) against the CPU reference on the same fresh random logits:
// indices must be exactly equal (routed top-k with and without bias, many exact ties, hash
// tables in I32 and I64), weights within 1e-6 (both compute them in double from identical
// float scores). E in {7, 64, 256, 2048}, K in {3, 6, 8}, T in {1, 3, 7, 300} (T <= 32 with
// E <= 256: the block-per-token kernel; else one warp per token). The two kernels agree bit for
// bit, NaN scores included. Out-of-range hash inputs are reported as op errors and never index
// out of bounds. The fused router (moe_router: the router GEMV and the route in one launch)
// computes logits within 1e-5 of the CPU's linear and routes them exactly as moe_route does.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/moe_tuning.h"
#include "core/error.h"
#include "unit/backend_cuda/linear_test_util.h"
#include "unit/backend_cuda/same_inputs.h"

namespace clawmine::test {
namespace {


class CudaRoute : public GpuTest {
 protected:
  // Runs both backends on the same inputs; expects equal indices and close weights.
  void expect_same_route(const std::vector<float>& logits, int64_t T, int64_t E, int64_t K, const OnBoth* bias,
                         const OnBoth* tid2eid, const std::vector<int32_t>& ids) {
    const OnBoth l = same_floats(*cpu, *cuda, logits, {T, E});
    const OnBoth id = same_ints(*cpu, *cuda, ids, {T});
    const OnBoth idx = poisoned_both(*cpu, *cuda, {T, K}, DType::kI32);
    const OnBoth w = poisoned_both(*cpu, *cuda, {T, K});
    const float scaling = 2.5f;
    cpu->moe_route(l.cpu.view(), bias ? bias->cpu.view() : TensorView{}, tid2eid ? tid2eid->cpu.view() : TensorView{},
                   id.cpu.view(), scaling, idx.cpu.view(), w.cpu.view());
    cuda->moe_route(l.gpu.view(), bias ? bias->gpu.view() : TensorView{}, tid2eid ? tid2eid->gpu.view() : TensorView{},
                    id.gpu.view(), scaling, idx.gpu.view(), w.gpu.view());
    const auto got = download_as<int32_t>(*cuda, idx.gpu.view()), want = download_as<int32_t>(*cpu, idx.cpu.view());
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < want.size(); ++i)
      if (got[i] != want[i] && bad++ == 0) first = i;
    EXPECT_EQ(bad, 0u) << "first differing slot " << first << " (token " << first / K << "): got " << got[first]
                       << ", want " << want[first];
    EXPECT_TRUE(within(download_f32(*cuda, w.gpu.view()), download_f32(*cpu, w.cpu.view()), 1e-6));
  }
};

std::vector<int32_t> random_ints(int64_t n, int64_t lo, int64_t hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<int32_t>(dist(rng));
  return v;
}

struct Shape3 {
  int64_t E, K;
};

TEST_F(CudaRoute, RoutedTopKMatchesCpu) {
  uint32_t seed = 4000;
  for (const Shape3 s : {Shape3{7, 3}, Shape3{64, 6}, Shape3{256, 6}, Shape3{256, 8}, Shape3{2048, 8}}) {
    for (const int64_t T : {1, 3, 7, 300}) {
      for (const bool with_bias : {false, true}) {
        SCOPED_TRACE(str_cat("E ", s.E, " K ", s.K, " T ", T, " bias ", with_bias));
        seed += 10;
        const OnBoth bias = same_floats(*cpu, *cuda, random_normal(s.E, seed + 1, 0.3f), {s.E});
        expect_same_route(random_normal(T * s.E, seed, 2.0f), T, s.E, s.K, with_bias ? &bias : nullptr, nullptr,
                          std::vector<int32_t>(static_cast<size_t>(T), 0));
      }
    }
  }
}

TEST_F(CudaRoute, RoutedTiesGoToTheLowerExpert) {
  uint32_t seed = 5000;
  for (const Shape3 s : {Shape3{7, 3}, Shape3{64, 6}, Shape3{256, 6}}) {
    for (const int64_t T : {1, 3, 7, 300}) {
      for (const int bias_kind : {0, 1, 2}) {  // none, zeros, three levels
        SCOPED_TRACE(str_cat("E ", s.E, " K ", s.K, " T ", T, " bias kind ", bias_kind));
        seed += 10;
        // Logits on a coarse grid: many exactly equal scores, and equal keys after the bias.
        std::vector<float> logits = random_normal(T * s.E, seed);
        for (float& v : logits) v = std::round(v * 2.0f) / 2.0f;
        for (int64_t e = 0; e < s.E; ++e) logits[e] = 0.25f;  // token 0: every expert ties
        std::vector<float> b(static_cast<size_t>(s.E), 0.0f);
        if (bias_kind == 2)
          for (int64_t e = 0; e < s.E; ++e) b[e] = 0.5f * static_cast<float>(e % 3) - 0.5f;
        const OnBoth bias = same_floats(*cpu, *cuda, b, {s.E});
        expect_same_route(logits, T, s.E, s.K, bias_kind ? &bias : nullptr, nullptr,
                          std::vector<int32_t>(static_cast<size_t>(T), 0));
      }
    }
  }
}

TEST_F(CudaRoute, HashRoutingMatchesCpu) {
  uint32_t seed = 6000;
  const int64_t V = 1000;
  for (const Shape3 s : {Shape3{7, 3}, Shape3{256, 6}, Shape3{64, 6}}) {
    for (const int64_t T : {1, 3, 7, 300}) {
      for (const bool wide : {false, true}) {  // I32 or I64 table
        SCOPED_TRACE(str_cat("E ", s.E, " K ", s.K, " T ", T, wide ? " I64" : " I32"));
        seed += 10;
        const std::vector<int32_t> table = random_ints(V * s.K, 0, s.E - 1, seed);
        const OnBoth tid2eid = wide ? same_ints(*cpu, *cuda, std::vector<int64_t>(table.begin(), table.end()), {V, s.K})
                                    : same_ints(*cpu, *cuda, table, {V, s.K});
        std::vector<int32_t> ids = random_ints(T, 0, V - 1, seed + 1);
        ids.front() = V - 1;
        expect_same_route(random_normal(T * s.E, seed + 2, 2.0f), T, s.E, s.K, nullptr, &tid2eid, ids);
      }
    }
  }
}

// The first 3 tokens of a 40-token batch (one warp per token) routed again on their own (T = 3:
// one block per token) give the same idx and weights bit for bit; token 1 has NaN logits (the
// block kernel's fallback to the warp's K rounds), token 2 all-equal scores.
TEST_F(CudaRoute, BlockAndWarpKernelsAgree) {
  uint32_t seed = 7000;
  for (const Shape3 s : {Shape3{64, 6}, Shape3{256, 8}, Shape3{7, 3}}) {
    for (const bool with_bias : {false, true}) {
      SCOPED_TRACE(str_cat("E ", s.E, " K ", s.K, " bias ", with_bias));
      seed += 10;
      const int64_t T = 40, E = s.E, K = s.K;
      std::vector<float> logits = random_normal(T * E, seed, 2.0f);
      logits[1 * E + 2] = std::nanf("");
      logits[1 * E + E - 1] = std::nanf("");
      for (int64_t e = 0; e < E; ++e) logits[2 * E + e] = 0.5f;
      const ops::DeviceBuffer bias = upload_f32(*cuda, random_normal(E, seed + 1, 0.3f), {E});
      const ops::DeviceBuffer all = upload_f32(*cuda, logits, {T, E});
      const ops::DeviceBuffer head = upload_f32(*cuda, std::vector<float>(logits.begin(), logits.begin() + 3 * E), {3, E});
      const TensorView b = with_bias ? bias.view() : TensorView{};
      const ops::DeviceBuffer idx40 = poisoned(*cuda, DType::kI32, {T, K}), w40 = poisoned(*cuda, DType::kF32, {T, K});
      const ops::DeviceBuffer idx3 = poisoned(*cuda, DType::kI32, {3, K}), w3 = poisoned(*cuda, DType::kF32, {3, K});
      cuda->moe_route(all.view(), b, TensorView{}, TensorView{}, 2.5f, idx40.view(), w40.view());
      cuda->moe_route(head.view(), b, TensorView{}, TensorView{}, 2.5f, idx3.view(), w3.view());
      const auto i40 = download_as<int32_t>(*cuda, idx40.view()), i3 = download_as<int32_t>(*cuda, idx3.view());
      EXPECT_EQ(std::vector<int32_t>(i40.begin(), i40.begin() + 3 * K), i3);
      for (int32_t e : i3) EXPECT_TRUE(e >= 0 && e < E) << e;
      const std::vector<float> f40 = download_f32(*cuda, w40.view());
      EXPECT_TRUE(same_bits(std::vector<float>(f40.begin(), f40.begin() + 3 * K), download_f32(*cuda, w3.view())));
    }
  }
}

// moe_router with the fused launch (set_moe_router_fused(1)) on fresh random x and gate: its
// logits within rel_l2 1e-5 of the CPU's linear on the same values, and its idx and weights
// exactly moe_route's on those logits (routed with and without bias, hash with an I64 table);
// twice in a row (the launch leaves its counter at 0 for the next); a shape outside the fused
// kernel's (T = 9) falls back to linear and moe_route.
TEST_F(CudaRoute, FusedRouterRoutesItsOwnLogits) {
  struct Reset {
    ~Reset() { backend::cuda::set_moe_router_fused(-1); }
  } reset;
  backend::cuda::set_moe_router_fused(1);
  uint32_t seed = 8000;
  const int64_t V = 500;
  struct Case {
    int64_t E, K, D, T;
    TestFormat w;
    DType x;
    int kind;  // 0 routed, 1 routed with bias, 2 hash
  };
  const Case cases[] = {{64, 6, 4096, 1, TestFormat::kBF16, DType::kBF16, 1}, {64, 6, 4096, 1, TestFormat::kBF16, DType::kBF16, 2},
                        {256, 8, 4096, 3, TestFormat::kBF16, DType::kBF16, 0}, {7, 3, 1032, 8, TestFormat::kBF16, DType::kF32, 1},
                        {200, 6, 2048, 2, TestFormat::kF32, DType::kBF16, 1}, {64, 6, 4096, 9, TestFormat::kBF16, DType::kBF16, 1}};
  for (const Case& c : cases) {
    SCOPED_TRACE(str_cat("E ", c.E, " K ", c.K, " D ", c.D, " T ", c.T, " ", format_label(c.w), " x ",
                         dtype_label(c.x), " kind ", c.kind));
    seed += 10;
    const auto gate = make_linear(*cuda, c.w, fast_normal(static_cast<size_t>(c.E * c.D), seed, 0.03f), c.E, c.D,
                                  "layers.3.ffn.gate");
    const OnBoth x = same_floats(*cpu, *cuda, random_normal(c.T * c.D, seed + 1), {c.T, c.D}, c.x);
    const OnBoth bias = same_floats(*cpu, *cuda, random_normal(c.E, seed + 2, 0.3f), {c.E});
    const std::vector<int32_t> table32 = random_ints(V * c.K, 0, c.E - 1, seed + 3);
    const OnBoth tid2eid = same_ints(*cpu, *cuda, std::vector<int64_t>(table32.begin(), table32.end()), {V, c.K});
    const OnBoth ids = same_ints(*cpu, *cuda, random_ints(c.T, 0, V - 1, seed + 4), {c.T});
    const TensorView b = c.kind == 1 ? bias.gpu.view() : TensorView{};
    const TensorView table = c.kind == 2 ? tid2eid.gpu.view() : TensorView{};

    const OnBoth ref_logits = poisoned_both(*cpu, *cuda, {c.T, c.E});
    cpu->linear(x.cpu.view(), gate->host, ref_logits.cpu.view());
    const std::vector<float> want = download_f32(*cpu, ref_logits.cpu.view());
    const bool fused = c.T <= 8;
    for (int round = 0; round < 2; ++round) {
      SCOPED_TRACE(str_cat("round ", round));
      const ops::DeviceBuffer logits = poisoned(*cuda, DType::kF32, {c.T, c.E});
      const ops::DeviceBuffer idx = poisoned(*cuda, DType::kI32, {c.T, c.K}), w = poisoned(*cuda, DType::kF32, {c.T, c.K});
      const int64_t before = backend::cuda::moe_router_fused_launches();
      cuda->moe_router(x.gpu.view(), gate->dev, b, table, ids.gpu.view(), 2.5f, logits.view(), idx.view(), w.view());
      EXPECT_EQ(backend::cuda::moe_router_fused_launches() - before, fused ? 1 : 0);
      const std::vector<float> got = download_f32(*cuda, logits.view());
      EXPECT_TRUE(within(got, want, 1e-5));
      // moe_route on the launch's own logits: the same slots and weights, bit for bit.
      const ops::DeviceBuffer idx2 = poisoned(*cuda, DType::kI32, {c.T, c.K}), w2 = poisoned(*cuda, DType::kF32, {c.T, c.K});
      cuda->moe_route(logits.view(), b, table, ids.gpu.view(), 2.5f, idx2.view(), w2.view());
      const auto i1 = download_as<int32_t>(*cuda, idx.view()), i2 = download_as<int32_t>(*cuda, idx2.view());
      EXPECT_EQ(i1, i2);
      for (int32_t e : i1) EXPECT_TRUE(e >= 0 && e < c.E) << e;
      const std::vector<float> w1 = download_f32(*cuda, w.view());
      for (float v : w1) EXPECT_TRUE(std::isfinite(v)) << v;  // written, not the poison
      EXPECT_TRUE(same_bits(w1, download_f32(*cuda, w2.view())));
    }
  }
}

TEST_F(CudaRoute, HashOutOfRangeInputsAreReportedAndNeverIndexOutside) {
  const int64_t V = 4, E = 8, K = 2, T = 3;
  for (const int bad_kind : {0, 1}) {  // 0: token id outside the table, 1: a table entry outside [0, E)
    SCOPED_TRACE(str_cat("bad kind ", bad_kind));
    std::vector<int32_t> table = {0, 1, 2, 3, 4, 5, 6, 7};
    std::vector<int32_t> ids = {0, 1, 2};
    if (bad_kind == 0) ids[1] = V;
    if (bad_kind == 1) table[1 * K + 1] = E;  // row of token 1
    const ops::DeviceBuffer l = upload_f32(*cuda, random_normal(T * E, 77), {T, E});
    const ops::DeviceBuffer t = upload_raw(*cuda, TensorView{DType::kI32, Device::kCpu, {V, K}, table.data()});
    const ops::DeviceBuffer id = upload_raw(*cuda, TensorView{DType::kI32, Device::kCpu, {T}, ids.data()});
    const ops::DeviceBuffer idx = poisoned(*cuda, DType::kI32, {T, K});
    const ops::DeviceBuffer w = poisoned(*cuda, DType::kF32, {T, K});
    cuda->moe_route(l.view(), TensorView{}, t.view(), id.view(), 1.0f, idx.view(), w.view());
    const std::string msg = reported_op_error(*cuda);
    EXPECT_NE(msg.find(bad_kind == 0 ? "token id 4 (position 1) is outside tid2eid's 4 rows"
                                     : "tid2eid[1, 1] = 8 is not an expert id in [0, 8)"),
              std::string::npos)
        << msg;
    const auto got = download_as<int32_t>(*cuda, idx.view());
    const std::vector<float> weights = download_f32(*cuda, w.view());
    EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 0, 0, 4, 5}));  // the bad token's slots are 0
    EXPECT_EQ(weights[2], 0.0f);
    EXPECT_EQ(weights[3], 0.0f);
    EXPECT_TRUE(std::isfinite(weights[0]) && std::isfinite(weights[5]));
  }
}

}  // namespace
}  // namespace clawmine::test
