// ActivationRecorder: forwards every op unchanged (bit-identical outputs, the policy reaches the
// inner backend) and records per linear the input amax, rows and static-scale saturation; routed
// experts per projection (w1/w3: the rows routed to the expert; w2: their SwiGLU hidden).
#include "diag/activation_recorder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "quant/act_quant.h"
#include "support/test_support.h"
#include "unit/diag/diag_test_util.h"

namespace clawmine::diag {
namespace {

using test::f32_view;

float amax_of(const std::vector<float>& v) {
  float a = 0;
  for (float x : v) a = std::max(a, std::fabs(x));
  return a;
}

TEST(ActivationRecorder, LinearForwardsAndRecords) {
  auto cpu = ops::make_cpu_backend(2);
  ActivationRecorder rec(*cpu);
  const int64_t T = 5, O = 32, I = 64;
  test::OwnedLinear w = test::nvfp4_linear("layers.0.attn.wq_a", O, I, 3, 0.5f / 2688.0f);
  w.lw.fused_name = "layers.0.attn.fused_wqa_wkv";
  std::vector<float> x = test::random_normal(T * I, 4), y1(T * O), y2(T * O);
  x[7] = 2.0f;  // amax16 of block 0 of row 0 is 2: 4x what input_scale allows
  test::poison(y1);
  test::poison(y2);
  rec.linear(f32_view(x, {T, I}), w.lw, f32_view(y1, {T, O}));
  cpu->linear(f32_view(x, {T, I}), w.lw, f32_view(y2, {T, O}));
  EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * 4), 0);
  rec.linear(f32_view(x, {T, I}), w.lw, f32_view(y1, {T, O}));
  const LinearActivationStats* s = rec.find("layers.0.attn.wq_a");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->calls, 2);
  EXPECT_EQ(s->rows, 2 * T);
  EXPECT_EQ(s->amax, amax_of(x));
  EXPECT_FLOAT_EQ(s->input_scale, 0.5f / 2688.0f);
  EXPECT_NEAR(s->overflow_ratio(), amax_of(x) / 0.5, 1e-5);
  int64_t sat = 0;
  for (int64_t b = 0; b < T * I; b += 16) {
    float m = 0;
    for (int64_t i = b; i < b + 16; ++i) m = std::max(m, std::fabs(x[i]));
    sat += m > 0.5f;
  }
  EXPECT_GT(sat, 0);
  EXPECT_EQ(s->blocks16, 2 * T * I / 16);
  EXPECT_EQ(s->saturating_blocks16, 2 * sat);
  EXPECT_EQ(s->display_name(), "layers.0.attn.fused_wqa_wkv (shard wq_a)");
  EXPECT_EQ(rec.find("nothing"), nullptr);
  rec.clear();
  EXPECT_TRUE(rec.stats().empty());
}

TEST(ActivationRecorder, PolicyReachesTheInnerBackend) {
  auto cpu = ops::make_cpu_backend(1);
  ActivationRecorder rec(*cpu);
  ops::LinearPolicy p;
  p.nvfp4 = ops::Nvfp4Path::kW4A4;
  p.act_scale = ops::ActScale::kDynamic;
  p.saturate = false;
  rec.set_linear_policy(p);
  EXPECT_EQ(cpu->linear_policy().nvfp4, ops::Nvfp4Path::kW4A4);
  EXPECT_EQ(cpu->linear_policy().act_scale, ops::ActScale::kDynamic);
  EXPECT_FALSE(cpu->linear_policy().saturate);
  EXPECT_EQ(rec.linear_policy().nvfp4, ops::Nvfp4Path::kW4A4);
}

TEST(ActivationRecorder, ExpertsRecordRoutedRowsAndTheirHidden) {
  auto cpu = ops::make_cpu_backend(2);
  ActivationRecorder rec(*cpu);
  const int64_t T = 6, D = 32, I = 48, E = 3, K = 2;
  std::vector<test::OwnedExpert> owned;
  std::vector<model::deepseek_v4::ExpertWeights> experts;
  for (int64_t e = 0; e < E; ++e) owned.push_back(test::nvfp4_expert(str_cat("layers.2.ffn.experts.", e), D, I, 10 + e));
  for (auto& o : owned) experts.push_back(o.w);
  std::vector<float> x = test::random_normal(T * D, 5), wt(T * K, 0.5f), y1(T * D), y2(T * D);
  // Expert 2 gets tokens 1 and 4 only; expert 1 every token; expert 0 the rest.
  std::vector<int32_t> idx(T * K);
  for (int64_t t = 0; t < T; ++t) idx[t * K] = 1, idx[t * K + 1] = (t == 1 || t == 4) ? 2 : 0;
  test::poison(y1);
  test::poison(y2);
  rec.moe_experts(f32_view(x, {T, D}), experts, test::i32_view(idx, {T, K}), f32_view(wt, {T, K}), 7.0f,
                  f32_view(y1, {T, D}));
  cpu->moe_experts(f32_view(x, {T, D}), experts, test::i32_view(idx, {T, K}), f32_view(wt, {T, K}), 7.0f,
                   f32_view(y2, {T, D}));
  EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * 4), 0);
  const LinearActivationStats* w1 = rec.find("layers.2.ffn.experts.2.w1");
  const LinearActivationStats* w3 = rec.find("layers.2.ffn.experts.2.w3");
  const LinearActivationStats* w2 = rec.find("layers.2.ffn.experts.2.w2");
  ASSERT_TRUE(w1 && w3 && w2);
  EXPECT_EQ(w1->rows, 2);
  EXPECT_EQ(w2->rows, 2);
  EXPECT_EQ(rec.find("layers.2.ffn.experts.1.w1")->rows, T);
  EXPECT_EQ(rec.find("layers.2.ffn.experts.0.w2")->rows, T - 2);
  std::vector<float> routed(x.begin() + D, x.begin() + 2 * D);
  routed.insert(routed.end(), x.begin() + 4 * D, x.begin() + 5 * D);
  EXPECT_EQ(w1->amax, amax_of(routed));
  EXPECT_EQ(w3->amax, amax_of(routed));
  // w2's input: silu(min(g, 7)) * clamp(u, -7, 7) of the routed rows, recomputed here.
  std::vector<float> g(2 * I), u(2 * I);
  cpu->linear(f32_view(routed, {2, D}), experts[2].w1, f32_view(g, {2, I}));
  cpu->linear(f32_view(routed, {2, D}), experts[2].w3, f32_view(u, {2, I}));
  float hmax = 0;
  for (int64_t i = 0; i < 2 * I; ++i) {
    const double a = std::min<double>(g[i], 7.0), b = std::clamp<double>(u[i], -7.0, 7.0);
    hmax = std::max(hmax, std::fabs(static_cast<float>(a / (1 + std::exp(-a)) * b)));
  }
  EXPECT_EQ(w2->amax, hmax);
  EXPECT_GT(hmax, 0.0f);
}

TEST(ActivationRecorder, SharedExpertRecordsAllRows) {
  auto cpu = ops::make_cpu_backend(1);
  ActivationRecorder rec(*cpu);
  const int64_t T = 3, D = 32, I = 16;
  test::OwnedExpert ex = test::nvfp4_expert("layers.0.ffn.shared_experts", D, I, 21);
  std::vector<float> x = test::random_normal(T * D, 22), y(T * D);
  rec.swiglu_mlp(f32_view(x, {T, D}), ex.w, 10.0f, f32_view(y, {T, D}));
  EXPECT_EQ(rec.find("layers.0.ffn.shared_experts.w1")->rows, T);
  EXPECT_EQ(rec.find("layers.0.ffn.shared_experts.w2")->rows, T);
  EXPECT_EQ(rec.find("layers.0.ffn.shared_experts.w2")->in_features, I);
}

TEST(ActivationRecorder, CalibratedInputScale) {
  EXPECT_FLOAT_EQ(calibrated_input_scale(5.376f, "x"), 0.002f);
  for (float bad : {0.0f, -1.0f, NAN, INFINITY}) {
    try {
      calibrated_input_scale(bad, "layers.1.ffn.experts.3.w2");
      FAIL() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("layers.1.ffn.experts.3.w2"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace clawmine::diag
