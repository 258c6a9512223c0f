// --dequant: glob matching over release and fused names, the near-name error for a pattern that
// matches nothing, exact F32 decoding that the Model owns, and logits equal to the W4A16 path
// (which decodes the same weights exactly) when a fused NVFP4 module is dequantized.
#include "model/deepseek_v4/dequant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <vector>

#include "backend/cpu/weight_decode.h"
#include "core/error.h"
#include "model/deepseek_v4/model.h"
#include "support/test_support.h"
#include "support/tiny_checkpoint.h"

namespace clawmine::model::deepseek_v4 {
namespace {

using test::TinyCheckpointOptions;
using test::TinyQuant;


std::vector<float> logits(const Model& m) {
  auto be = ops::make_cpu_backend(2);
  SequenceCache cache = m.new_cache();
  ForwardOptions fo;
  fo.official_qdq = false;
  Buffer b = m.forward(*be, cache, {7, 1, 60, 22, 35, 9, 14, 48, 2, 31}, fo);
  return {b.f32(), b.f32() + b.view().numel()};
}

TEST(Dequant, GlobMatch) {
  EXPECT_TRUE(glob_match("layers.*.attn.wq_a", "layers.12.attn.wq_a"));
  EXPECT_TRUE(glob_match("*", "layers.0.ffn.experts.3.w1"));
  EXPECT_TRUE(glob_match("layers.*.w1", "layers.3.ffn.experts.5.w1"));  // `*` crosses dots
  EXPECT_TRUE(glob_match("layers.?.attn.wkv", "layers.7.attn.wkv"));
  EXPECT_FALSE(glob_match("layers.?.attn.wkv", "layers.17.attn.wkv"));
  EXPECT_FALSE(glob_match("layers.*.attn.wq_a", "layers.1.attn.wq_b"));
  EXPECT_FALSE(glob_match("layers.1.attn.wq", "layers.1.attn.wq_a"));
  EXPECT_TRUE(glob_match("*experts.*.w?", "mtp.0.ffn.experts.0.w3"));
  EXPECT_TRUE(glob_match("a**b", "ab"));
  EXPECT_FALSE(glob_match("", "a"));
}

TEST(Dequant, ParseList) {
  EXPECT_EQ(parse_dequant_list("layers.*.attn.wq_a, layers.0.ffn.*"),
            (std::vector<std::string>{"layers.*.attn.wq_a", "layers.0.ffn.*"}));
  EXPECT_THROW(parse_dequant_list("a,,b"), Error);
  EXPECT_THROW(parse_dequant_list(""), Error);
}

TEST(Dequant, PatternMatchingNothingIsAnErrorListingNearNames) {
  test::TempDir dir;
  test::write_tiny_checkpoint(dir.path(), test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed, .fused_wqa_wkv = true});
  LoadOptions lo;
  lo.dequant = {"layers.*.attn.wq_a", "layers.0.attn.fused_wqa_wkvv"};
  try {
    Model::load(dir.path(), lo);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("--dequant 'layers.0.attn.fused_wqa_wkvv' matches no linear module"), std::string::npos) << msg;
    EXPECT_NE(msg.find("nearest names: layers.0.attn.fused_wqa_wkv"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("'layers.*.attn.wq_a'"), std::string::npos) << msg;  // that one matched
  }
}

TEST(Dequant, FusedModuleDecodesBothShardsExactlyAndMatchesW4A16) {
  test::TempDir dir;
  test::write_tiny_checkpoint(dir.path(), test::tiny_nvfp4_attention_config(),
                              {.quant = TinyQuant::kSeed, .fused_wqa_wkv = true, .per_shard_scales = true});
  auto plain = Model::load(dir.path());
  LoadOptions lo;
  lo.dequant = {"layers.*.attn.fused_wqa_wkv"};
  auto deq = Model::load(dir.path(), lo);
  const int64_t layers = test::tiny_nvfp4_attention_config().num_hidden_layers;
  for (int64_t l = 0; l < layers; ++l) {
    const AttentionWeights& a = deq->weights().layers[static_cast<size_t>(l)].attn;
    const AttentionWeights& p = plain->weights().layers[static_cast<size_t>(l)].attn;
    for (auto [d, q] : {std::pair{&a.wq_a, &p.wq_a}, std::pair{&a.wkv, &p.wkv}}) {
      ASSERT_EQ(d->format, WeightFormat::kDense) << d->name;
      ASSERT_EQ(d->weight.dtype, DType::kF32) << d->name;
      EXPECT_EQ(d->fused_name, q->fused_name);
      std::vector<float> row(static_cast<size_t>(q->in_features));
      for (int64_t r = 0; r < q->out_features; ++r) {
        backend::cpu::decode_row(*q, r, row.data());
        const float* got = d->weight.as<const float>() + r * q->in_features;
        for (int64_t i = 0; i < q->in_features; ++i) ASSERT_EQ(got[i], row[static_cast<size_t>(i)]) << d->name;
      }
    }
    EXPECT_EQ(a.wq_b.format, WeightFormat::kNvfp4);  // not matched
  }
  EXPECT_EQ(deq->weights().mtp->block.attn.wq_a.format, WeightFormat::kNvfp4);  // `layers.*` is not `mtp.0`
  const std::vector<float> ld = logits(*deq), lp = logits(*plain);
  for (float v : ld) ASSERT_TRUE(std::isfinite(v));
  EXPECT_LE(test::max_rel_diff(ld, lp), 1e-6);
}

TEST(Dequant, ReleaseNamesOfExpertsAndSharedExperts) {
  test::TempDir dir;
  test::write_tiny_checkpoint(dir.path(), test::tiny_model_config(), {.quant = TinyQuant::kFp8Mxfp4});
  auto plain = Model::load(dir.path());
  LoadOptions lo;
  lo.dequant = parse_dequant_list("layers.3.ffn.experts.*,layers.*.ffn.shared_experts.w2");
  auto deq = Model::load(dir.path(), lo);
  const LayerWeights& l3 = deq->weights().layers[3];
  for (const ExpertWeights& e : l3.ffn.experts)
    for (const LinearWeight* lw : {&e.w1, &e.w2, &e.w3}) EXPECT_EQ(lw->format, WeightFormat::kDense) << lw->name;
  EXPECT_EQ(deq->weights().layers[2].ffn.experts[0].w1.format, WeightFormat::kMxfp4);
  for (const LayerWeights& l : deq->weights().layers) {
    EXPECT_EQ(l.ffn.shared_experts.w2.format, WeightFormat::kDense);
    EXPECT_EQ(l.ffn.shared_experts.w1.format, WeightFormat::kFp8Block);
  }
  EXPECT_LE(test::max_rel_diff(logits(*deq), logits(*plain)), 1e-6);
}

TEST(Dequant, DequantizedModuleDoesNotNeedItsInputScale) {
  test::TempDir dir;
  std::vector<test::TinyTensor> t = test::tiny_tensors(test::tiny_nvfp4_attention_config(), {.quant = TinyQuant::kSeed});
  for (test::TinyTensor& x : t)
    if (x.name == "layers.1.attn.wq_b.input_scale") x.bytes.assign(4, 0);  // 0.0f
  test::write_tiny_tensors(dir.path() / "model.safetensors", t);
  {
    std::ofstream f(dir.path() / "config.json");
    f << test::tiny_config_json(test::tiny_nvfp4_attention_config(), TinyQuant::kSeed);
  }
  LoadOptions lo;
  lo.policy.nvfp4 = ops::Nvfp4Path::kW4A4;
  lo.policy.act_scale = ops::ActScale::kStatic;
  EXPECT_THROW(Model::load(dir.path(), lo), Error);
  lo.dequant = {"layers.1.attn.wq_b"};
  testing::internal::CaptureStderr();
  EXPECT_NO_THROW(Model::load(dir.path(), lo));
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("not used: layers.1.attn.wq_b is dequantized by --dequant"), std::string::npos) << log;
}

}  // namespace
}  // namespace clawmine::model::deepseek_v4
